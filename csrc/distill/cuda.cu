// CUDA kernels of the distill ops (SPEC §2): one block per row; the forward makes a pass for the
// four log-sum-exps and a pass for the divergence sum, the backward one pass for the gradient.
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
#include "distill/distill.h"
#include "math/distill.h"
#include "math/online_lse.h"

namespace objx::cuda {
namespace {

using math::DistillParams;
using math::DistillRow;
using math::LseState;

constexpr int kThreads = 256;

template <typename acc_t>
struct DistillOutputs {
  acc_t* loss;
  acc_t* soft;
  acc_t* hard;
  acc_t* stats;
  bool* counted;
  unsigned long long* first_error;  // RowErrors::slots(): first bad-target row, first empty counted row
  int64_t row_offset;               // the op's number of this launch's row 0
};

// Pass 2 over one row by the whole block: row.div and row.qa from row's log-sum-exps.
template <typename scalar_t, typename acc_t>
__device__ void block_divergence(const scalar_t* s, const scalar_t* t, const DistillParams<acc_t>& prm,
                                 DistillRow<acc_t>& row) {
  acc_t div = 0, qa = 0;
  for_rows(s, t, prm.vocab, [&](int64_t, scalar_t sj, scalar_t tj) {
    acc_t term, qa_j;
    math::distill_entry_sums(prm, row, static_cast<acc_t>(sj), static_cast<acc_t>(tj), term, qa_j);
    div += term;
    qa += qa_j;
  });
  row.div = block_sum(div);
  row.qa = block_sum(qa);
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) distill_forward_kernel(
    const scalar_t* __restrict__ student, RowLayout s_rows, const scalar_t* __restrict__ teacher, RowLayout t_rows,
    const int64_t* __restrict__ target, DistillParams<acc_t> prm, DistillOutputs<acc_t> out) {
  const int64_t r = blockIdx.x;
  const int64_t vocab = prm.vocab;
  const scalar_t* s = student + s_rows.offset(r);
  const scalar_t* t = teacher + t_rows.offset(r);
  const int64_t y = prm.has_target ? target[r] : 0;
  const bool counts = !prm.has_target || y != prm.ignore_index;
  const bool bad = counts && prm.has_target && (y < 0 || y >= vocab);
  acc_t* row_stats = out.stats + r * math::kDistillRowStats;
  if (!counts || bad) {  // uniform over the block
    if (threadIdx.x == 0) {
      if (bad) atomicMin(out.first_error + math::kBadTarget, static_cast<unsigned long long>(out.row_offset + r));
      out.loss[r] = out.soft[r] = out.hard[r] = acc_t(0);
      for (int k = 0; k < math::kDistillRowStats; ++k) row_stats[k] = acc_t(0);
      out.counted[r] = false;
    }
    return;
  }
  const acc_t T = prm.temperature;
  LseState<acc_t> st[4];
#pragma unroll
  for (int k = 0; k < 4; ++k) st[k] = math::lse_empty<acc_t>();
  for_rows(s, t, vocab, [&](int64_t, scalar_t s_raw, scalar_t t_raw) {
    const acc_t sj = static_cast<acc_t>(s_raw), tj = static_cast<acc_t>(t_raw);
    math::lse_add(st[0], sj);
    math::lse_add(st[1], sj / T);
    math::lse_add(st[2], tj / T);
    math::lse_add(st[3], tj);
  });
  DistillRow<acc_t> row;
  row.lse_s1 = math::lse_finish(block_lse(st[0]));
  row.lse_sT = math::lse_finish(block_lse(st[1]));
  row.lse_tT = math::lse_finish(block_lse(st[2]));
  row.lse_t1 = math::lse_finish(block_lse(st[3]));
  row.div = row.qa = acc_t(0);

  block_divergence(s, t, prm, row);

  if (threadIdx.x == 0) {
    if (row.lse_s1 == -std::numeric_limits<acc_t>::infinity())
      atomicMin(out.first_error + math::kEmptyRow, static_cast<unsigned long long>(out.row_offset + r));
    if (row.lse_t1 == -std::numeric_limits<acc_t>::infinity())
      atomicMin(out.first_error + math::kEmptyOther, static_cast<unsigned long long>(out.row_offset + r));
    const acc_t soft = math::distill_soft(prm, row);
    const acc_t hard = prm.has_target ? row.lse_s1 - static_cast<acc_t>(s[y]) : acc_t(0);
    out.loss[r] = prm.hard_weight * hard + prm.soft_weight * soft;
    out.soft[r] = soft;
    out.hard[r] = hard;
    const acc_t values[math::kDistillRowStats] = {row.lse_s1, row.lse_sT, row.lse_tT, row.lse_t1, row.div, row.qa};
    for (int k = 0; k < math::kDistillRowStats; ++k) row_stats[k] = values[k];
    out.counted[r] = true;
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) distill_backward_kernel(
    const acc_t* __restrict__ grad_loss, const scalar_t* __restrict__ student, RowLayout s_rows,
    const scalar_t* __restrict__ teacher, RowLayout t_rows, const int64_t* __restrict__ target,
    const acc_t* __restrict__ stats, const bool* __restrict__ counted, DistillParams<acc_t> prm,
    scalar_t* __restrict__ grad) {
  const int64_t r = blockIdx.x;
  const int64_t vocab = prm.vocab;
  scalar_t* out = grad + r * vocab;
  if (!counted[r]) {
    zero_row(out, vocab);
    return;
  }
  const DistillRow<acc_t> row = math::distill_row_from(stats + r * math::kDistillRowStats);
  const scalar_t* s = student + s_rows.offset(r);
  const scalar_t* t = teacher + t_rows.offset(r);
  const int64_t y = prm.has_target ? target[r] : -1;
  const auto g = math::distill_grad_weights(prm, row, grad_loss[r]);
  map_rows(out, s, t, vocab, [&](int64_t j, scalar_t sj, scalar_t tj) {
    return static_cast<scalar_t>(math::distill_entry_grad(prm, row, static_cast<acc_t>(sj), static_cast<acc_t>(tj),
                                                          j == y, g.hard, g.soft));
  });
}

// A shard's sums: the row's log-sum-exps come from row_lse (see DistillKernels::shard_sums).
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) distill_shard_sums_kernel(
    const scalar_t* __restrict__ student, RowLayout s_rows, const scalar_t* __restrict__ teacher, RowLayout t_rows,
    const acc_t* __restrict__ row_lse, DistillParams<acc_t> prm, acc_t* __restrict__ sums) {
  const int64_t r = blockIdx.x;
  const acc_t lse_s = row_lse[2 * r], lse_t = row_lse[2 * r + 1];
  DistillRow<acc_t> row{lse_s, lse_s, lse_t, acc_t(0), acc_t(0), acc_t(0)};
  block_divergence(student + s_rows.offset(r), teacher + t_rows.offset(r), prm, row);
  if (threadIdx.x == 0) {
    sums[2 * r] = row.div;
    sums[2 * r + 1] = row.qa;
  }
}

DistillForward forward(const DistillInputs& in, RowErrors& errors) {
  const DeviceGuard guard(in.student.device());
  const int64_t rows = in.rows, vocab = in.vocab;
  const auto acc = acc_dtype(in.student.scalar_type());
  auto out = allocate_distill_forward(rows, in.student.options().dtype(acc));
  if (rows == 0) return out;
  check_grid_rows("objx.distill_loss", rows);
  const auto stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, in.student.scalar_type(), "objx_distill_forward", [&] {
    using acc_t = acc_type<scalar_t>;
    auto& [loss, soft, hard, stats, counted] = out;
    OBJX_LAUNCH(rows, kThreads, 0, stream, distill_forward_kernel<scalar_t, acc_t>)(
        in.student.const_data_ptr<scalar_t>(), in.s_rows, in.teacher.const_data_ptr<scalar_t>(),
        in.t_rows, in.has_target ? in.target.const_data_ptr<int64_t>() : nullptr,
        make_distill_params<acc_t>(in.opt, vocab, in.has_target),
        DistillOutputs<acc_t>{loss.mutable_data_ptr<acc_t>(), soft.mutable_data_ptr<acc_t>(),
                              hard.mutable_data_ptr<acc_t>(), stats.mutable_data_ptr<acc_t>(),
                              counted.mutable_data_ptr<bool>(),
                              errors.slots(), errors.row_offset});
    OBJX_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor backward(const DistillInputs& in, const DistillSaved& saved) {
  const DeviceGuard guard(in.student.device());
  const int64_t rows = in.rows, vocab = in.vocab;
  auto grad = at::empty(in.student.sizes(), in.student.options().memory_format(at::MemoryFormat::Contiguous));
  if (rows == 0) return grad;
  check_grid_rows("objx.distill_loss", rows);
  const auto stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, in.student.scalar_type(), "objx_distill_backward", [&] {
    using acc_t = acc_type<scalar_t>;
    OBJX_LAUNCH(rows, kThreads, 0, stream, distill_backward_kernel<scalar_t, acc_t>)(
        saved.grad_loss.const_data_ptr<acc_t>(), in.student.const_data_ptr<scalar_t>(), in.s_rows,
        in.teacher.const_data_ptr<scalar_t>(), in.t_rows,
        in.has_target ? in.target.const_data_ptr<int64_t>() : nullptr, saved.stats.const_data_ptr<acc_t>(),
        saved.counted.const_data_ptr<bool>(), make_distill_params<acc_t>(in.opt, vocab, in.has_target),
        grad.mutable_data_ptr<scalar_t>());
    OBJX_LAUNCH_CHECK();
  });
  return grad;
}

at::Tensor shard_sums(const DistillInputs& in, const at::Tensor& row_lse) {
  const DeviceGuard guard(in.student.device());
  const int64_t rows = in.rows, vocab = in.vocab;
  auto sums = at::empty({rows, 2}, row_lse.options());
  if (rows == 0) return sums;
  check_grid_rows("objx.distill_shard_sums", rows);
  const auto stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, in.student.scalar_type(), "objx_distill_shard_sums", [&] {
    using acc_t = acc_type<scalar_t>;
    OBJX_LAUNCH(rows, kThreads, 0, stream, distill_shard_sums_kernel<scalar_t, acc_t>)(
        in.student.const_data_ptr<scalar_t>(), in.s_rows, in.teacher.const_data_ptr<scalar_t>(),
        in.t_rows, row_lse.const_data_ptr<acc_t>(), make_distill_params<acc_t>(in.opt, vocab, false),
        sums.mutable_data_ptr<acc_t>());
    OBJX_LAUNCH_CHECK();
  });
  return sums;
}

}  // namespace
}  // namespace objx::cuda

namespace objx {
extern const DistillKernels kCudaDistillKernels{&cuda::forward, &cuda::backward, &cuda::shard_sums};
}  // namespace objx
