// CUDA kernels of vocab_divergence (SPEC §3.4): one block per row; a pass for both log-sum-exps,
// a pass for the divergence sums, and one in the backward for the gradient.
#include <cstdint>
#include <limits>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/Dispatch.h>

#include "common/acc_type.h"
#include "common/block_reduce.cuh"
#include "common/cuda_api.cuh"
#include "common/vec_load.cuh"
#include "divergence/divergence.h"
#include "math/divergence.h"
#include "math/online_lse.h"

namespace objx::cuda {
namespace {

using math::DivParams;
using math::DivRow;

constexpr int kThreads = 256;

// Pass 2 over one row by the whole block: row.agg and row.pa from row's log-sum-exps (for renyi a
// log-sum-exp of its log-space summands beside their excess, math::renyi_log_sum).
template <typename scalar_t, typename acc_t>
__device__ void block_div_sums(const scalar_t* z, const scalar_t* r, const DivParams<acc_t>& prm, DivRow<acc_t>& row) {
  acc_t agg = 0, pa = 0;
  math::LseState<acc_t> log_s = math::lse_empty<acc_t>();
  const bool renyi = prm.kind == math::DivKind::kRenyi;  // uniform over the block
  for_rows(z, r, prm.vocab, [&](int64_t, scalar_t zj, scalar_t rj) {
    acc_t a, b;
    math::div_terms(prm, math::prob_pair(static_cast<acc_t>(zj) - row.lse_p, static_cast<acc_t>(rj) - row.lse_q),
                    a, b);
    if (renyi)
      math::lse_add(log_s, a);
    else
      agg += a;
    pa += b;
  });
  row.pa = block_sum(pa);
  row.agg = renyi ? math::renyi_log_sum(prm.alpha, math::lse_finish(block_lse(log_s)), row.pa) : block_sum(agg);
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) vocab_divergence_kernel(
    const scalar_t* __restrict__ policy, RowLayout p_rows, const scalar_t* __restrict__ ref, RowLayout r_rows,
    const bool* __restrict__ mask, DivParams<acc_t> prm, acc_t* __restrict__ div, acc_t* __restrict__ stats) {
  const int64_t i = blockIdx.x;
  acc_t* out = stats + i * math::kDivRowStats;
  if (mask && !mask[i]) {  // uniform over the block
    if (threadIdx.x == 0) {
      div[i] = acc_t(0);
      for (int k = 0; k < math::kDivRowStats; ++k) out[k] = acc_t(0);
    }
    return;
  }
  const scalar_t* z = policy + p_rows.offset(i);
  const scalar_t* r = ref + r_rows.offset(i);
  math::LseState<acc_t> sp = math::lse_empty<acc_t>(), sq = math::lse_empty<acc_t>();
  for_rows(z, r, prm.vocab, [&](int64_t, scalar_t zj, scalar_t rj) {
    math::lse_add(sp, static_cast<acc_t>(zj));
    math::lse_add(sq, static_cast<acc_t>(rj));
  });
  DivRow<acc_t> row{math::lse_finish(block_lse(sp)), math::lse_finish(block_lse(sq)), acc_t(0), acc_t(0)};
  block_div_sums(z, r, prm, row);
  if (threadIdx.x == 0) {
    div[i] = math::div_value(prm, row);
    out[0] = row.lse_p;
    out[1] = row.lse_q;
    out[2] = row.agg;
    out[3] = row.pa;
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) vocab_divergence_backward_kernel(
    const acc_t* __restrict__ grad_div, const scalar_t* __restrict__ policy, RowLayout p_rows,
    const scalar_t* __restrict__ ref, RowLayout r_rows, const bool* __restrict__ mask, const acc_t* __restrict__ stats,
    DivParams<acc_t> prm, scalar_t* __restrict__ grad) {
  const int64_t i = blockIdx.x;
  scalar_t* out = grad + i * prm.vocab;
  if (mask && !mask[i]) {
    zero_row(out, prm.vocab);
    return;
  }
  const acc_t* s = stats + i * math::kDivRowStats;
  const DivRow<acc_t> row{s[0], s[1], s[2], s[3]};
  const scalar_t* z = policy + p_rows.offset(i);
  const scalar_t* r = ref + r_rows.offset(i);
  const acc_t g = grad_div[i];
  map_rows(out, z, r, prm.vocab, [&](int64_t, scalar_t zj, scalar_t rj) {
    const acc_t log_p = static_cast<acc_t>(zj) - row.lse_p, log_q = static_cast<acc_t>(rj) - row.lse_q;
    return static_cast<scalar_t>(g * math::div_grad(prm, row, math::prob_pair(log_p, log_q)));
  });
}

// A shard's sums: the row's log-sum-exps come from row_lse (see DivKernels::shard_sums).
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) vocab_divergence_shard_sums_kernel(
    const scalar_t* __restrict__ policy, RowLayout p_rows, const scalar_t* __restrict__ ref, RowLayout r_rows,
    const bool* __restrict__ mask, const acc_t* __restrict__ row_lse, DivParams<acc_t> prm,
    acc_t* __restrict__ sums) {
  const int64_t i = blockIdx.x;
  DivRow<acc_t> row{row_lse[2 * i], row_lse[2 * i + 1], acc_t(0), acc_t(0)};
  if (!mask || mask[i]) block_div_sums(policy + p_rows.offset(i), ref + r_rows.offset(i), prm, row);  // uniform over the block
  if (threadIdx.x == 0) {
    sums[2 * i] = row.agg;
    sums[2 * i + 1] = row.pa;
  }
}

DivForward forward(const DivInputs& in) {
  const DeviceGuard guard(in.policy.device());
  const int64_t rows = in.rows;
  const auto acc_opts = in.policy.options().dtype(acc_dtype(in.policy.scalar_type()));
  auto div = at::empty({rows}, acc_opts);
  auto stats = at::empty({rows, math::kDivRowStats}, acc_opts);
  if (rows == 0) return {div, stats};
  check_grid_rows("objx.vocab_divergence", rows);
  const auto stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, in.policy.scalar_type(), "objx_vocab_divergence", [&] {
    using acc_t = acc_type<scalar_t>;
    OBJX_LAUNCH(rows, kThreads, 0, stream, vocab_divergence_kernel<scalar_t, acc_t>)(
        in.policy.const_data_ptr<scalar_t>(), in.p_rows, in.ref.const_data_ptr<scalar_t>(),
        in.r_rows, in.mask.defined() ? in.mask.const_data_ptr<bool>() : nullptr, make_div_params<acc_t>(in),
        div.mutable_data_ptr<acc_t>(), stats.mutable_data_ptr<acc_t>());
    OBJX_LAUNCH_CHECK();
  });
  return {div, stats};
}

at::Tensor backward(const DivInputs& in, const at::Tensor& grad_div, const at::Tensor& stats) {
  const DeviceGuard guard(in.policy.device());
  const int64_t rows = in.rows;
  auto grad = at::empty(in.policy.sizes(), in.policy.options().memory_format(at::MemoryFormat::Contiguous));
  if (rows == 0) return grad;
  check_grid_rows("objx.vocab_divergence", rows);
  const auto stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, in.policy.scalar_type(), "objx_vocab_divergence_bwd", [&] {
    using acc_t = acc_type<scalar_t>;
    OBJX_LAUNCH(rows, kThreads, 0, stream, vocab_divergence_backward_kernel<scalar_t, acc_t>)(
        grad_div.const_data_ptr<acc_t>(), in.policy.const_data_ptr<scalar_t>(), in.p_rows,
        in.ref.const_data_ptr<scalar_t>(), in.r_rows, in.mask.defined() ? in.mask.const_data_ptr<bool>() : nullptr,
        stats.const_data_ptr<acc_t>(), make_div_params<acc_t>(in), grad.mutable_data_ptr<scalar_t>());
    OBJX_LAUNCH_CHECK();
  });
  return grad;
}

at::Tensor shard_sums(const DivInputs& in, const at::Tensor& row_lse) {
  const DeviceGuard guard(in.policy.device());
  const int64_t rows = in.rows;
  auto sums = at::empty({rows, 2}, row_lse.options());
  if (rows == 0) return sums;
  check_grid_rows("objx.vocab_divergence", rows);
  const auto stream = current_stream();
  const auto dtype = in.policy.scalar_type();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dtype, "objx_div_shard_sums", [&] {
    using acc_t = acc_type<scalar_t>;
    OBJX_LAUNCH(rows, kThreads, 0, stream, vocab_divergence_shard_sums_kernel<scalar_t, acc_t>)(
        in.policy.const_data_ptr<scalar_t>(), in.p_rows, in.ref.const_data_ptr<scalar_t>(),
        in.r_rows, in.mask.defined() ? in.mask.const_data_ptr<bool>() : nullptr,
        row_lse.const_data_ptr<acc_t>(), make_div_params<acc_t>(in), sums.mutable_data_ptr<acc_t>());
    OBJX_LAUNCH_CHECK();
  });
  return sums;
}

}  // namespace
}  // namespace objx::cuda

namespace objx {
extern const DivKernels kCudaDivKernels{&cuda::forward, &cuda::backward, &cuda::shard_sums};
}  // namespace objx
