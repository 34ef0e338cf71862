// CUDA kernels of the prob_loss ops: one block per row; the forward makes one pass of online
// log-sum-exp over the row with 16-byte loads, the backward one pass writing the gradient.
#include <cstdint>
#include <limits>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "block_reduce.cuh"
#include "objx/math/online_lse.h"
#include "objx/math/prob_objective.h"
#include "objx/nvtx.h"
#include "objx/prob_loss.h"

namespace objx::cuda {
namespace {

using math::LseState;
using math::ProbLossParams;

constexpr int kThreads = 256;

template <typename scalar_t>
struct alignas(16) Pack {
  static constexpr int kSize = 16 / sizeof(scalar_t);
  scalar_t v[kSize];
};

template <typename scalar_t>
__device__ __forceinline__ bool aligned16(const scalar_t* p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

// Adds a group of logits to a thread's running state with one rescale for the whole group;
// element `held_out` (the target, if in this group) joins the max and sum_z but not the exp-sum.
template <typename acc_t, int K>
__device__ __forceinline__ void push_group(LseState<acc_t>& st, acc_t& sum_z, const acc_t (&x)[K],
                                           int held_out) {
  acc_t m = st.max;
#pragma unroll
  for (int k = 0; k < K; ++k) m = x[k] > m ? x[k] : m;
  const acc_t shift = m == -std::numeric_limits<acc_t>::infinity() ? acc_t(0) : m;
  acc_t s = st.sum * math::exp_shifted(st.max, m);
#pragma unroll
  for (int k = 0; k < K; ++k) {
    if (k != held_out) s += exp(x[k] - shift);
    sum_z += x[k];
  }
  st = {m, s};
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) prob_loss_forward_kernel(
    const scalar_t* __restrict__ logits, int64_t stride, const int64_t* __restrict__ target,
    ProbLossParams<acc_t> prm, acc_t* __restrict__ loss, acc_t* __restrict__ lse_out,
    acc_t* __restrict__ logp_out, bool* __restrict__ counted_out, unsigned long long* __restrict__ errors) {
  using P = Pack<scalar_t>;
  constexpr int K = P::kSize;
  const int64_t r = blockIdx.x;
  const int64_t vocab = prm.vocab;
  const scalar_t* row = logits + r * stride;
  const int64_t t = target[r];
  const bool ignored = t == prm.ignore_index;
  if (!ignored && (t < 0 || t >= vocab)) {  // uniform over the block: report and leave the row
    if (threadIdx.x == 0) {
      atomicMin(errors, static_cast<unsigned long long>(r));
      loss[r] = lse_out[r] = logp_out[r] = acc_t(0);
      counted_out[r] = false;
    }
    return;
  }

  // The target's logit is held out of the running sum (math::finish_with_gold); thread 0 seeds it.
  constexpr acc_t kNegInf = -std::numeric_limits<acc_t>::infinity();
  const int64_t gold = ignored ? -1 : t;
  const acc_t z_y = ignored ? acc_t(0) : math::softcap_value(static_cast<acc_t>(row[t]), prm.softcap);
  LseState<acc_t> st = threadIdx.x == 0 && !ignored ? math::gold_seed(z_y) : math::lse_empty<acc_t>();
  acc_t sum_z = 0;
  int64_t done = 0;
  if (aligned16(row)) {
    const P* packs = reinterpret_cast<const P*>(row);
    const int64_t n_packs = vocab / K;
    for (int64_t i = threadIdx.x; i < n_packs; i += blockDim.x) {
      const P pk = packs[i];
      acc_t x[K];
#pragma unroll
      for (int k = 0; k < K; ++k) x[k] = math::softcap_value(static_cast<acc_t>(pk.v[k]), prm.softcap);
      const int64_t held = gold - i * K;
      push_group(st, sum_z, x, held >= 0 && held < K ? static_cast<int>(held) : -1);
    }
    done = n_packs * K;
  }
  for (int64_t j = done + threadIdx.x; j < vocab; j += blockDim.x) {
    const acc_t x[1] = {math::softcap_value(static_cast<acc_t>(row[j]), prm.softcap)};
    push_group(st, sum_z, x, j == gold ? 0 : -1);
  }
  st = block_lse(st, sum_z);

  if (threadIdx.x == 0) {
    acc_t row_lse = math::lse_finish(st), logp = kNegInf;
    if (!ignored) {
      const auto fin = math::finish_with_gold(st, z_y);
      row_lse = fin.lse;
      logp = fin.logp;
    }
    const auto out = math::prob_row_forward(prm, ignored, row_lse, logp, sum_z);
    if (out.counted && row_lse == -std::numeric_limits<acc_t>::infinity())
      atomicMin(errors + 1, static_cast<unsigned long long>(r));
    loss[r] = out.loss;
    lse_out[r] = row_lse;
    logp_out[r] = out.logp;
    counted_out[r] = out.counted;
  }
}

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ scalar_t grad_value(acc_t z, int64_t j, int64_t t, acc_t lse,
                                               const math::ProbRowGrad<acc_t>& g, acc_t cap) {
  const acc_t zc = math::softcap_value(z, cap);
  const acc_t v = j == t ? g.gold : g.a * exp(zc - lse) - g.c;
  return static_cast<scalar_t>(v * math::softcap_grad(zc, cap));
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) prob_loss_backward_kernel(
    const acc_t* __restrict__ grad_loss, const scalar_t* __restrict__ logits,
    int64_t stride, const int64_t* __restrict__ target, const acc_t* __restrict__ lse,
    const acc_t* __restrict__ logp, const bool* __restrict__ counted, ProbLossParams<acc_t> prm,
    scalar_t* __restrict__ grad) {
  using P = Pack<scalar_t>;
  constexpr int K = P::kSize;
  const int64_t r = blockIdx.x;
  const int64_t vocab = prm.vocab;
  const scalar_t* row = logits + r * stride;
  scalar_t* out = grad + r * vocab;
  const bool live = counted[r];
  const int64_t t = target[r];
  const acc_t row_lse = lse[r];
  const auto g = live ? math::prob_row_grad(prm, grad_loss[r], row_lse, logp[r])
                      : math::ProbRowGrad<acc_t>{0, 0, 0};
  int64_t done = 0;
  if (aligned16(row) && aligned16(out)) {
    const P* in_packs = reinterpret_cast<const P*>(row);
    P* out_packs = reinterpret_cast<P*>(out);
    const int64_t n_packs = vocab / K;
    for (int64_t i = threadIdx.x; i < n_packs; i += blockDim.x) {
      P res;
      if (live) {
        const P pk = in_packs[i];
#pragma unroll
        for (int k = 0; k < K; ++k)
          res.v[k] = grad_value<scalar_t>(static_cast<acc_t>(pk.v[k]), i * K + k, t, row_lse, g, prm.softcap);
      } else {
#pragma unroll
        for (int k = 0; k < K; ++k) res.v[k] = scalar_t(0);
      }
      out_packs[i] = res;
    }
    done = n_packs * K;
  }
  for (int64_t j = done + threadIdx.x; j < vocab; j += blockDim.x)
    out[j] = live ? grad_value<scalar_t>(static_cast<acc_t>(row[j]), j, t, row_lse, g, prm.softcap)
                  : scalar_t(0);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> prob_loss_forward(
    const at::Tensor& logits_in, const at::Tensor& target_in, std::string objective, double param,
    std::optional<double> min_prob, std::optional<double> max_prob, int64_t ignore_index,
    double label_smoothing, double z_loss, std::optional<double> softcap) {
  NvtxRange range("objx::prob_loss_forward(cuda)");
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const auto in = prepare_prob_loss_inputs(
      logits_in, target_in,
      make_prob_loss_options(std::move(objective), param, min_prob, max_prob, ignore_index,
                             label_smoothing, z_loss, softcap));
  const at::Tensor& logits = in.logits;
  const at::Tensor& target = in.target;
  const ProbLossOptions& opt = in.opt;
  auto [loss, lse, logp, counted] = allocate_prob_loss_forward(logits);
  const int64_t rows = logits.size(0);
  if (rows == 0) return {loss, lse, logp, counted};
  TORCH_CHECK_VALUE(rows <= std::numeric_limits<int32_t>::max(), "objx.prob_loss: too many rows (", rows, ")");
  // Rows with a bad target or an all -inf counted row; N means none. Read back once per call.
  auto errors = at::full({2}, rows, target.options());
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(), "objx_prob_loss_forward", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    prob_loss_forward_kernel<scalar_t, acc_t><<<rows, kThreads, 0, stream>>>(
        logits.const_data_ptr<scalar_t>(), logits.stride(0), target.const_data_ptr<int64_t>(),
        make_prob_loss_params<acc_t>(opt, logits.size(1)), loss.mutable_data_ptr<acc_t>(),
        lse.mutable_data_ptr<acc_t>(), logp.mutable_data_ptr<acc_t>(), counted.mutable_data_ptr<bool>(),
        reinterpret_cast<unsigned long long*>(errors.mutable_data_ptr<int64_t>()));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  const auto host = errors.cpu();
  const int64_t bad_target = host[0].item<int64_t>(), empty_row = host[1].item<int64_t>();
  raise_prob_loss_row_errors(logits, target, ignore_index, bad_target < rows ? bad_target : -1,
                             empty_row < rows ? empty_row : -1);
  return {loss, lse, logp, counted};
}

at::Tensor prob_loss_backward(const at::Tensor& grad_loss, const at::Tensor& logits_in,
                              const at::Tensor& target_in, const at::Tensor& lse, const at::Tensor& logp,
                              const at::Tensor& counted, std::string objective, double param,
                              int64_t ignore_index, double label_smoothing, double z_loss,
                              std::optional<double> softcap) {
  NvtxRange range("objx::prob_loss_backward(cuda)");
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const auto in = prepare_prob_loss_inputs(
      logits_in, target_in,
      make_prob_loss_options(std::move(objective), param, std::nullopt, std::nullopt, ignore_index,
                             label_smoothing, z_loss, softcap));
  const at::Tensor& logits = in.logits;
  const at::Tensor& target = in.target;
  const ProbLossOptions& opt = in.opt;
  const ProbLossSaved saved = prepare_prob_loss_saved(logits, grad_loss, lse, logp, counted);
  auto grad = at::empty(logits.sizes(), logits.options().memory_format(at::MemoryFormat::Contiguous));
  const int64_t rows = logits.size(0);
  if (rows == 0) return grad;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(), "objx_prob_loss_backward", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    prob_loss_backward_kernel<scalar_t, acc_t><<<rows, kThreads, 0, stream>>>(
        saved.grad_loss.const_data_ptr<acc_t>(), logits.const_data_ptr<scalar_t>(), logits.stride(0),
        target.const_data_ptr<int64_t>(), saved.lse.const_data_ptr<acc_t>(), saved.logp.const_data_ptr<acc_t>(),
        saved.counted.const_data_ptr<bool>(), make_prob_loss_params<acc_t>(opt, logits.size(1)),
        grad.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(objx, CUDA, m) {
  m.impl("prob_loss_forward", &prob_loss_forward);
  m.impl("prob_loss_backward", &prob_loss_backward);
}

}  // namespace objx::cuda
