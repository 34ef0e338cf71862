// CUDA kernels of the prob_loss family: one block per row; the forward makes one pass of online
// log-sum-exp over the row with 16-byte loads, the backward one pass writing the gradient. The same
// device code serves the logits ops and the fused LM-head tiles.
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
#include "math/online_lse.h"
#include "math/prob_objective.h"
#include "prob/prob.h"

namespace objx::cuda {
namespace {

using math::LseState;
using math::ProbLossParams;

constexpr int kThreads = 256;

// A thread's (and, reduced, the row's) running state: online LSE, the (class-weighted) sum of the
// logits, and the largest logit left of the target's column (`correct`).
template <typename acc_t>
struct RowReduce {
  LseState<acc_t> lse;
  acc_t sum_z;
  acc_t max_before;
};

// Adds a group of logits (columns col0 .. col0 + K - 1) to a thread's running state with one
// rescale for the whole group; element `held_out` (the target, if in this group) joins the max and
// sum_z but not the exp-sum. w: the class weights of the row's columns (for sum_z), or nullptr;
// columns below `before` are left of the target.
template <typename acc_t, int K>
__device__ __forceinline__ void push_group(RowReduce<acc_t>& st, const acc_t (&x)[K], int held_out, int64_t col0,
                                           int64_t before, const acc_t* w) {
  acc_t m = st.lse.max;
#pragma unroll
  for (int k = 0; k < K; ++k) m = x[k] > m ? x[k] : m;
  const acc_t shift = m == -std::numeric_limits<acc_t>::infinity() ? acc_t(0) : m;
  acc_t s = st.lse.sum * math::exp_shifted(st.lse.max, m);
#pragma unroll
  for (int k = 0; k < K; ++k) {
    if (k != held_out) s += exp(x[k] - shift);
    st.sum_z += w != nullptr ? w[col0 + k] * x[k] : x[k];
    if (col0 + k < before && x[k] > st.max_before) st.max_before = x[k];
  }
  st.lse = {m, s};
}

template <typename acc_t>
__device__ RowReduce<acc_t> block_row_reduce(RowReduce<acc_t> s) {
  const RowReduce<acc_t> empty{math::lse_empty<acc_t>(), acc_t(0), -std::numeric_limits<acc_t>::infinity()};
  return block_reduce(s, empty, [](RowReduce<acc_t> a, RowReduce<acc_t> b) {
    return RowReduce<acc_t>{math::lse_merge(a.lse, b.lse), a.sum_z + b.sum_z,
                            a.max_before > b.max_before ? a.max_before : b.max_before};
  });
}

// Block-wide reduction of one row of cols logits, starting from each thread's state; column `gold`
// (or -1) is held out of the exp-sum (math::finish_with_gold), the first `before` columns are left
// of the target. Every thread gets the result.
template <typename scalar_t, typename acc_t>
__device__ RowReduce<acc_t> block_reduce_row(const scalar_t* row, int64_t cols, int64_t gold, int64_t before,
                                             acc_t cap, const acc_t* w, RowReduce<acc_t> st) {
  using P = Pack<scalar_t>;
  constexpr int K = P::kSize;
  int64_t done = 0;
  if (aligned16(row)) {
    const P* packs = reinterpret_cast<const P*>(row);
    const int64_t n_packs = cols / K;
    for (int64_t i = threadIdx.x; i < n_packs; i += blockDim.x) {
      const P pk = packs[i];
      acc_t x[K];
#pragma unroll
      for (int k = 0; k < K; ++k) x[k] = math::softcap_value(static_cast<acc_t>(pk.v[k]), cap);
      const int64_t held = gold - i * K;
      push_group(st, x, held >= 0 && held < K ? static_cast<int>(held) : -1, i * K, before, w);
    }
    done = n_packs * K;
  }
  for (int64_t j = done + threadIdx.x; j < cols; j += blockDim.x) {
    const acc_t x[1] = {math::softcap_value(static_cast<acc_t>(row[j]), cap)};
    push_group(st, x, j == gold ? 0 : -1, j, before, w);
  }
  return block_row_reduce(st);
}

template <typename acc_t>
struct RowOutputs {
  acc_t* loss;
  acc_t* lse;
  acc_t* logp;
  bool* counted;
  bool* correct;
  unsigned long long* first_error;  // RowErrors::slots(): first row per math error kind
  int64_t row_offset;               // the op's number of this launch's row 0
};

template <typename acc_t>
__device__ __forceinline__ void write_row(const RowOutputs<acc_t>& out, int64_t r,
                                          const math::ProbRowResult<acc_t>& res) {
  out.loss[r] = res.loss;
  out.lse[r] = res.lse;
  out.logp[r] = res.logp;
  out.counted[r] = res.counted;
  out.correct[r] = res.correct;
  if (res.error) atomicMin(out.first_error + res.error, static_cast<unsigned long long>(out.row_offset + r));
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) prob_loss_forward_kernel(
    const scalar_t* __restrict__ logits, RowLayout layout, const int64_t* __restrict__ target,
    ProbLossParams<acc_t> prm, RowOutputs<acc_t> out) {
  const int64_t r = blockIdx.x;
  const int64_t t = target[r];
  const int64_t gold = math::gold_column(t, prm.ignore_index, 0, prm.vocab);
  const scalar_t* row = logits + layout.offset(r);
  const acc_t z_gold = gold >= 0 ? math::softcap_value(static_cast<acc_t>(row[gold]), prm.softcap) : acc_t(0);
  // Thread 0 seeds the target's logit into the max (it stays out of the exp-sum).
  RowReduce<acc_t> st{threadIdx.x == 0 && gold >= 0 ? math::gold_seed(z_gold) : math::lse_empty<acc_t>(), acc_t(0),
                      -std::numeric_limits<acc_t>::infinity()};
  const acc_t* w = prm.label_smoothing != acc_t(0) ? prm.class_weight : nullptr;
  st = block_reduce_row(row, prm.vocab, gold, math::columns_before_target(t, prm.ignore_index, 0, prm.vocab),
                        prm.softcap, w, st);
  if (threadIdx.x == 0) write_row(out, r, math::prob_row_finish(prm, t, st.lse, z_gold, st.sum_z, st.max_before));
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) prob_tile_reduce_kernel(
    const scalar_t* __restrict__ tile, int64_t cols, int64_t stride, const int64_t* __restrict__ target,
    int64_t col_offset, int64_t ignore_index, acc_t cap, const acc_t* __restrict__ col_weight,
    acc_t* __restrict__ state_max, double* __restrict__ state_sum, acc_t* __restrict__ z_gold,
    double* __restrict__ state_sum_z, acc_t* __restrict__ state_max_before) {
  const int64_t r = blockIdx.x;
  const int64_t gold = math::gold_column(target[r], ignore_index, col_offset, cols);
  const scalar_t* row = tile + r * stride;
  RowReduce<acc_t> st{math::lse_empty<acc_t>(), acc_t(0), -std::numeric_limits<acc_t>::infinity()};
  acc_t zg = 0;
  if (threadIdx.x == 0) {  // this tile's own reduction, seeded with the target if it is here
    st.max_before = state_max_before[r];
    if (gold >= 0) {
      zg = math::softcap_value(static_cast<acc_t>(row[gold]), cap);
      st.lse = math::gold_seed(zg);
    }
  }
  st = block_reduce_row(row, cols, gold, math::columns_before_target(target[r], ignore_index, col_offset, cols), cap,
                        col_weight, st);
  if (threadIdx.x == 0) {  // merged into the row's float64 sums (math::prob_tiled_row_finish)
    const auto merged = math::lse_merge(math::LseState<double>{state_max[r], state_sum[r]},
                                        math::LseState<double>{st.lse.max, st.lse.sum});
    state_max[r] = static_cast<acc_t>(merged.max);  // one of the two maxima: exact in acc_t
    state_sum[r] = merged.sum;
    state_sum_z[r] += static_cast<double>(st.sum_z);
    state_max_before[r] = st.max_before;
    if (gold >= 0) z_gold[r] = zg;
  }
}

template <typename acc_t>
__global__ void prob_tile_finish_kernel(int64_t rows, const int64_t* __restrict__ target,
                                        const acc_t* __restrict__ state_max, const double* __restrict__ state_sum,
                                        const acc_t* __restrict__ z_gold, const double* __restrict__ state_sum_z,
                                        const acc_t* __restrict__ state_max_before, ProbLossParams<acc_t> prm,
                                        RowOutputs<acc_t> out) {
  const int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (r >= rows) return;
  write_row(out, r, math::prob_tiled_row_finish(prm, target[r], state_max[r], state_sum[r], z_gold[r],
                                                state_sum_z[r], state_max_before[r]));
}

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ scalar_t grad_value(acc_t z, int64_t j, int64_t t, math::SoftmaxRef<acc_t> sm,
                                               const math::ProbRowGrad<acc_t>& g, acc_t cap, const acc_t* w) {
  const acc_t zc = math::softcap_value(z, cap);
  const acc_t v = j == t ? g.gold : g.a * exp((zc - sm.ref) + sm.shift) - g.c * (w != nullptr ? w[j] : acc_t(1));
  return static_cast<scalar_t>(v * math::softcap_grad(zc, cap));
}

// Gradient of logits columns [col_offset, col_offset + cols) into out; out may alias logits (a
// tile overwritten with its gradient: each element is read by the thread that writes it).
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) prob_loss_backward_kernel(
    const acc_t* __restrict__ grad_loss, const scalar_t* logits, int64_t cols, RowLayout layout,
    const int64_t* __restrict__ target, int64_t col_offset, const acc_t* __restrict__ lse,
    const acc_t* __restrict__ logp, const bool* __restrict__ counted, ProbLossParams<acc_t> prm,
    scalar_t* out_base, int64_t out_stride) {
  using P = Pack<scalar_t>;
  constexpr int K = P::kSize;
  const int64_t r = blockIdx.x;
  const scalar_t* row = logits + layout.offset(r);
  scalar_t* out = out_base + r * out_stride;
  const bool live = counted[r];
  const int64_t t = target[r] - col_offset;
  const acc_t row_lse = lse[r];
  const auto g = live ? math::prob_row_grad(prm, grad_loss[r], row_lse, logp[r], math::target_weight(prm, target[r]))
                      : math::ProbRowGrad<acc_t>{0, 0, 0};
  const bool whole = live && col_offset == 0 && cols == prm.vocab && t >= 0 && t < cols;
  const auto sm = math::softmax_ref(row_lse, live ? logp[r] : acc_t(0), whole,
                                    whole ? math::softcap_value(static_cast<acc_t>(row[t]), prm.softcap) : acc_t(0));
  // out may alias the row: every thread has read the target's logit before any thread writes.
  __syncthreads();
  // Column weights enter only through label smoothing's c (0 otherwise).
  const acc_t* w = prm.class_weight != nullptr && prm.label_smoothing != acc_t(0) ? prm.class_weight + col_offset
                                                                                : nullptr;
  int64_t done = 0;
  if (aligned16(row) && aligned16(out)) {
    const P* in_packs = reinterpret_cast<const P*>(row);
    P* out_packs = reinterpret_cast<P*>(out);
    const int64_t n_packs = cols / K;
    for (int64_t i = threadIdx.x; i < n_packs; i += blockDim.x) {
      P res;
      if (live) {
        const P pk = in_packs[i];
#pragma unroll
        for (int k = 0; k < K; ++k)
          res.v[k] = grad_value<scalar_t>(static_cast<acc_t>(pk.v[k]), i * K + k, t, sm, g, prm.softcap, w);
      } else {
#pragma unroll
        for (int k = 0; k < K; ++k) res.v[k] = scalar_t(0);
      }
      out_packs[i] = res;
    }
    done = n_packs * K;
  }
  for (int64_t j = done + threadIdx.x; j < cols; j += blockDim.x)
    out[j] = live ? grad_value<scalar_t>(static_cast<acc_t>(row[j]), j, t, sm, g, prm.softcap, w) : scalar_t(0);
}

// ---- host side -------------------------------------------------------------------------------

template <typename acc_t>
RowOutputs<acc_t> row_outputs(ProbLossForward& out, RowErrors& errors) {
  auto& [loss, lse, logp, counted, correct] = out;
  return {loss.mutable_data_ptr<acc_t>(), lse.mutable_data_ptr<acc_t>(), logp.mutable_data_ptr<acc_t>(),
          counted.mutable_data_ptr<bool>(), correct.mutable_data_ptr<bool>(), errors.slots(), errors.row_offset};
}

ProbLossForward forward(const ProbLossInputs& in, RowErrors& errors) {
  const DeviceGuard guard(in.logits.device());
  const at::Tensor& logits = in.logits;
  const int64_t rows = in.rows, vocab = in.vocab;
  auto out = allocate_prob_loss_forward(rows, logits.options().dtype(acc_dtype(logits.scalar_type())));
  if (rows == 0) return out;
  check_grid_rows("objx.prob_loss", rows);
  const auto stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(), "objx_prob_loss_forward", [&] {
    using acc_t = acc_type<scalar_t>;
    OBJX_LAUNCH(rows, kThreads, 0, stream, prob_loss_forward_kernel<scalar_t, acc_t>)(
        logits.const_data_ptr<scalar_t>(), in.layout, in.target.const_data_ptr<int64_t>(),
        make_prob_loss_params<acc_t>(in.opt, vocab), row_outputs<acc_t>(out, errors));
    OBJX_LAUNCH_CHECK();
  });
  return out;
}

// logits: rows read through layout, cols = vocab_size(logits) columns; out: [rows, cols] rows.
void launch_backward(const at::Tensor& logits, RowLayout layout, int64_t rows, const at::Tensor& target,
                     int64_t col_offset, const ProbLossSaved& saved, const ProbLossOptions& opt, int64_t vocab,
                     at::Tensor& out, int64_t out_stride) {
  if (rows == 0) return;
  check_grid_rows("objx.prob_loss", rows);
  const auto stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(), "objx_prob_loss_backward", [&] {
    using acc_t = acc_type<scalar_t>;
    OBJX_LAUNCH(rows, kThreads, 0, stream, prob_loss_backward_kernel<scalar_t, acc_t>)(
        saved.grad_loss.const_data_ptr<acc_t>(), logits.const_data_ptr<scalar_t>(), vocab_size(logits),
        layout, target.const_data_ptr<int64_t>(), col_offset, saved.lse.const_data_ptr<acc_t>(),
        saved.logp.const_data_ptr<acc_t>(), saved.counted.const_data_ptr<bool>(),
        make_prob_loss_params<acc_t>(opt, vocab), out.mutable_data_ptr<scalar_t>(), out_stride);
    OBJX_LAUNCH_CHECK();
  });
}

at::Tensor backward(const ProbLossInputs& in, const ProbLossSaved& saved) {
  const DeviceGuard guard(in.logits.device());
  auto grad = at::empty(in.logits.sizes(), in.logits.options().memory_format(at::MemoryFormat::Contiguous));
  launch_backward(in.logits, in.layout, in.rows, in.target, 0, saved, in.opt, in.vocab, grad, in.vocab);
  return grad;
}

// ---- tiles of the fused LM-head loss --------------------------------------------------------

void tile_reduce(const at::Tensor& tile, const at::Tensor& target, int64_t col_offset,
                      const ProbLossOptions& opt, ProbTileState& state) {
  const int64_t rows = tile.size(0);
  if (rows == 0) return;
  check_grid_rows("objx.prob_loss", rows);
  const DeviceGuard guard(tile.device());
  const auto stream = current_stream();
  // Tiles come from the head's GEMMs in the accumulation dtype (common/head_gemms.h).
  AT_DISPATCH_FLOATING_TYPES(tile.scalar_type(), "objx_prob_tile_reduce", [&] {
    using acc_t = acc_type<scalar_t>;
    const acc_t cap = opt.softcap ? static_cast<acc_t>(*opt.softcap) : acc_t(0);
    // The class weights enter the sum of the logits, which only label smoothing uses.
    const acc_t* w = opt.class_weight.defined() && opt.label_smoothing != 0
                         ? opt.class_weight.const_data_ptr<acc_t>() + col_offset
                         : nullptr;
    OBJX_LAUNCH(rows, kThreads, 0, stream, prob_tile_reduce_kernel<scalar_t, acc_t>)(
        tile.const_data_ptr<scalar_t>(), tile.size(1), tile.stride(0), target.const_data_ptr<int64_t>(),
        col_offset, opt.ignore_index, cap, w, state.max.mutable_data_ptr<acc_t>(),
        state.sum.mutable_data_ptr<double>(), state.z_gold.mutable_data_ptr<acc_t>(),
        state.sum_z.mutable_data_ptr<double>(), state.max_before.mutable_data_ptr<acc_t>());
    OBJX_LAUNCH_CHECK();
  });
}

ProbLossForward tile_finish(const ProbTileState& state, const at::Tensor& target, const ProbLossOptions& opt,
                            int64_t vocab, RowErrors& errors) {
  const int64_t rows = target.size(0);
  auto out = allocate_prob_loss_forward(rows, state.max.options());
  if (rows == 0) return out;
  const DeviceGuard guard(target.device());
  const auto stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES(state.max.scalar_type(), "objx_prob_tile_finish", [&] {
    using acc_t = scalar_t;
    constexpr int threads = 256;
    OBJX_LAUNCH((rows + threads - 1) / threads, threads, 0, stream, prob_tile_finish_kernel<acc_t>)(
        rows, target.const_data_ptr<int64_t>(), state.max.const_data_ptr<acc_t>(),
        state.sum.const_data_ptr<double>(), state.z_gold.const_data_ptr<acc_t>(),
        state.sum_z.const_data_ptr<double>(), state.max_before.const_data_ptr<acc_t>(),
        make_prob_loss_params<acc_t>(opt, vocab), row_outputs<acc_t>(out, errors));
    OBJX_LAUNCH_CHECK();
  });
  return out;
}

void tile_grad(at::Tensor& tile, const at::Tensor& target, int64_t col_offset,
                    const ProbLossSaved& saved, const ProbLossOptions& opt, int64_t vocab) {
  const DeviceGuard guard(tile.device());
  launch_backward(tile, RowLayout{tile.stride(0)}, tile.size(0), target, col_offset, saved, opt, vocab, tile,
                  tile.stride(0));
}

}  // namespace
}  // namespace objx::cuda

namespace objx {
extern const ProbKernels kCudaProbKernels{&cuda::forward, &cuda::backward, &cuda::tile_reduce, &cuda::tile_finish,
                                          &cuda::tile_grad};
}  // namespace objx
