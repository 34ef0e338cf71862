// CPU kernels of the prob_loss ops: rows in parallel, each row one pass of online log-sum-exp over
// vocabulary chunks (forward) and one pass writing the gradient (backward).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>

#include <sys/mman.h>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "objx/math/online_lse.h"
#include "objx/math/prob_objective.h"
#include "objx/nvtx.h"
#include "objx/prob_loss.h"
#include "vec_row.h"

namespace objx::cpu {
namespace {

using math::LseState;
using math::ProbLossParams;

// A chunk fits in L1 beside its gradient, so each logit is read from memory once per pass.
constexpr int64_t kChunk = 2048;
// Rows per parallel task: enough work to amortise scheduling for small V.
int64_t row_grain(int64_t vocab) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(vocab, 1)); }

// Load a chunk as float (soft-capped if asked); float input without a cap is used in place.
template <typename scalar_t>
const float* load_chunk(const scalar_t* src, int64_t n, float cap, float* buf) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (cap == 0.0f) return src;
  }
  if (cap == 0.0f) {
    for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<float>(src[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) buf[i] = math::softcap_value(static_cast<float>(src[i]), cap);
  }
  return buf;
}

struct RowReduction {
  double lse;
  double logp;  // log p_y, when the target is in range
  double sum_z;
};

// Adds logits x[0, n) to the running state (float: vectorised chunk primitives).
void absorb(LseState<float>& st, double& sum_z, const float* x, int64_t n, bool want_sum) {
  if (n <= 0) return;
  const float cm = chunk_max(x, n);
  const float m = st.max > cm ? st.max : cm;
  const float shift = m == -std::numeric_limits<float>::infinity() ? 0.0f : m;
  st.sum = st.sum * math::exp_shifted(st.max, m) + chunk_sum_exp(x, n, shift);
  st.max = m;
  if (want_sum) sum_z += chunk_sum(x, n);
}

// float64: plain loops with exact std::exp.
void absorb(LseState<double>& st, double& sum_z, const double* x, int64_t n, bool /*want_sum*/) {
  if (n <= 0) return;
  LseState<double> chunk = math::lse_empty<double>();
  for (int64_t i = 0; i < n; ++i) chunk.max = x[i] > chunk.max ? x[i] : chunk.max;
  const double shift = chunk.max == -std::numeric_limits<double>::infinity() ? 0.0 : chunk.max;
  for (int64_t i = 0; i < n; ++i) {
    chunk.sum += std::exp(x[i] - shift);
    sum_z += x[i];
  }
  st = math::lse_merge(st, chunk);
}

const double* load_chunk(const double* src, int64_t n, double cap, double* buf) {
  if (cap == 0.0) return src;
  for (int64_t i = 0; i < n; ++i) buf[i] = math::softcap_value(src[i], cap);
  return buf;
}

// One pass over a row: lse, log p_y (target t, or none when t is out of range) and the sum of the
// logits. The target's logit is held out of the running sum (see math::finish_with_gold).
template <typename scalar_t, typename acc_t>
RowReduction reduce_row(const scalar_t* row, int64_t vocab, int64_t t, const ProbLossParams<acc_t>& prm) {
  acc_t buf[kChunk];
  const bool has_gold = t >= 0 && t < vocab;
  const acc_t z_y = has_gold ? math::softcap_value(static_cast<acc_t>(row[t]), prm.softcap) : acc_t(0);
  LseState<acc_t> st = has_gold ? math::gold_seed(z_y) : math::lse_empty<acc_t>();
  const bool want_sum = prm.label_smoothing != acc_t(0);
  double sum_z = has_gold ? static_cast<double>(z_y) : 0.0;
  for (int64_t start = 0; start < vocab; start += kChunk) {
    const int64_t n = std::min(kChunk, vocab - start);
    const acc_t* x = load_chunk(row + start, n, prm.softcap, buf);
    const int64_t g = has_gold ? t - start : -1;
    if (g >= 0 && g < n) {
      absorb(st, sum_z, x, g, want_sum);
      absorb(st, sum_z, x + g + 1, n - g - 1, want_sum);
    } else {
      absorb(st, sum_z, x, n, want_sum);
    }
  }
  if (!has_gold) return {math::lse_finish(st), 0.0, sum_z};
  const auto fin = math::finish_with_gold(st, z_y);
  return {fin.lse, fin.logp, sum_z};
}

template <typename scalar_t, typename acc_t>
void forward_impl(const at::Tensor& logits, const at::Tensor& target, const ProbLossParams<acc_t>& prm,
                  at::Tensor& loss, at::Tensor& lse, at::Tensor& logp, at::Tensor& counted) {
  const int64_t rows = logits.size(0), vocab = logits.size(1), stride = logits.stride(0);
  const scalar_t* z = logits.const_data_ptr<scalar_t>();
  const int64_t* y = target.const_data_ptr<int64_t>();
  acc_t* loss_p = loss.mutable_data_ptr<acc_t>();
  acc_t* lse_p = lse.mutable_data_ptr<acc_t>();
  acc_t* logp_p = logp.mutable_data_ptr<acc_t>();
  bool* counted_p = counted.mutable_data_ptr<bool>();
  std::atomic<int64_t> bad_target{rows}, empty_row{rows};
  auto keep_min = [](std::atomic<int64_t>& slot, int64_t v) {
    int64_t cur = slot.load();
    while (v < cur && !slot.compare_exchange_weak(cur, v)) {}
  };

  at::parallel_for(0, rows, row_grain(vocab), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const scalar_t* row = z + r * stride;
      const int64_t t = y[r];
      const bool ignored = t == prm.ignore_index;
      if (!ignored && (t < 0 || t >= vocab)) {
        keep_min(bad_target, r);
        loss_p[r] = lse_p[r] = logp_p[r] = acc_t(0);
        counted_p[r] = false;
        continue;
      }
      const RowReduction red = reduce_row(row, vocab, t, prm);
      const acc_t row_lse = static_cast<acc_t>(red.lse);
      const auto out = math::prob_row_forward(prm, ignored, row_lse, static_cast<acc_t>(red.logp),
                                              static_cast<acc_t>(red.sum_z));
      if (out.counted && row_lse == -std::numeric_limits<acc_t>::infinity()) keep_min(empty_row, r);
      loss_p[r] = out.loss;
      lse_p[r] = row_lse;
      logp_p[r] = out.logp;
      counted_p[r] = out.counted;
    }
  });
  raise_prob_loss_row_errors(logits, target, prm.ignore_index,
                             bad_target.load() < rows ? bad_target.load() : -1,
                             empty_row.load() < rows ? empty_row.load() : -1);
}

// The gradient is the one [N, V] buffer we write, usually freshly mapped: with 4 KiB pages the
// first-touch page faults cost more than the arithmetic. Ask for transparent huge pages (a hint;
// ignored where THP is off).
void advise_huge_pages(at::Tensor& t) {
#ifdef MADV_HUGEPAGE
  constexpr uintptr_t kHuge = 2u << 20;
  const auto begin = reinterpret_cast<uintptr_t>(t.data_ptr());
  const auto end = begin + t.nbytes();
  const uintptr_t first = (begin + kHuge - 1) & ~(kHuge - 1);
  if (end > first + kHuge) madvise(reinterpret_cast<void*>(first), (end - first) & ~(kHuge - 1), MADV_HUGEPAGE);
#endif
}

// Gradient of one counted row into out: a * p_j - b [j == y] - c, times the soft-cap derivative.
template <typename scalar_t>
void grad_row(const scalar_t* row, int64_t vocab, int64_t t, float lse, const math::ProbRowGrad<float>& g,
              float cap, scalar_t* out) {
  float buf[kChunk];
  float gbuf[kChunk];
  for (int64_t start = 0; start < vocab; start += kChunk) {
    const int64_t n = std::min(kChunk, vocab - start);
    const float* x = load_chunk(row + start, n, cap, buf);
    float* dst = gbuf;
    if constexpr (std::is_same_v<scalar_t, float>) dst = out + start;
    chunk_scaled_softmax(x, n, lse, g.a, g.c, dst);
    if (t >= start && t < start + n) dst[t - start] = g.gold;
    if (cap != 0.0f)
      for (int64_t i = 0; i < n; ++i) dst[i] *= math::softcap_grad(x[i], cap);
    if constexpr (!std::is_same_v<scalar_t, float>)
      for (int64_t i = 0; i < n; ++i) out[start + i] = static_cast<scalar_t>(dst[i]);
  }
}

void grad_row(const double* row, int64_t vocab, int64_t t, double lse, const math::ProbRowGrad<double>& g,
              double cap, double* out) {
  for (int64_t j = 0; j < vocab; ++j) {
    const double zc = math::softcap_value(row[j], cap);
    const double v = j == t ? g.gold : g.a * std::exp(zc - lse) - g.c;
    out[j] = v * math::softcap_grad(zc, cap);
  }
}

template <typename scalar_t, typename acc_t>
void backward_impl(const at::Tensor& grad_loss, const at::Tensor& logits, const at::Tensor& target,
                   const at::Tensor& lse, const at::Tensor& logp, const at::Tensor& counted,
                   const ProbLossParams<acc_t>& prm, at::Tensor& grad) {
  const int64_t rows = logits.size(0), vocab = logits.size(1), stride = logits.stride(0);
  const scalar_t* z = logits.const_data_ptr<scalar_t>();
  const int64_t* y = target.const_data_ptr<int64_t>();
  const acc_t* g_p = grad_loss.const_data_ptr<acc_t>();
  const acc_t* lse_p = lse.const_data_ptr<acc_t>();
  const acc_t* logp_p = logp.const_data_ptr<acc_t>();
  const bool* counted_p = counted.const_data_ptr<bool>();
  scalar_t* out = grad.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, rows, row_grain(vocab), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      scalar_t* dst = out + r * vocab;
      if (!counted_p[r]) {
        std::fill(dst, dst + vocab, scalar_t(0));
        continue;
      }
      const auto coef = math::prob_row_grad(prm, g_p[r], lse_p[r], logp_p[r]);
      grad_row(z + r * stride, vocab, y[r], lse_p[r], coef, prm.softcap, dst);
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> prob_loss_forward(
    const at::Tensor& logits_in, const at::Tensor& target_in, std::string objective, double param,
    std::optional<double> min_prob, std::optional<double> max_prob, int64_t ignore_index,
    double label_smoothing, double z_loss, std::optional<double> softcap) {
  NvtxRange range("objx::prob_loss_forward(cpu)");
  const auto in = prepare_prob_loss_inputs(
      logits_in, target_in,
      make_prob_loss_options(std::move(objective), param, min_prob, max_prob, ignore_index,
                             label_smoothing, z_loss, softcap));
  const at::Tensor& logits = in.logits;
  const at::Tensor& target = in.target;
  const ProbLossOptions& opt = in.opt;
  auto [loss, lse, logp, counted] = allocate_prob_loss_forward(logits);
  if (logits.size(0) == 0) return {loss, lse, logp, counted};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(), "objx_prob_loss_forward", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    forward_impl<scalar_t, acc_t>(logits, target, make_prob_loss_params<acc_t>(opt, logits.size(1)),
                                  loss, lse, logp, counted);
  });
  return {loss, lse, logp, counted};
}

at::Tensor prob_loss_backward(const at::Tensor& grad_loss, const at::Tensor& logits_in,
                              const at::Tensor& target_in, const at::Tensor& lse, const at::Tensor& logp,
                              const at::Tensor& counted, std::string objective, double param,
                              int64_t ignore_index, double label_smoothing, double z_loss,
                              std::optional<double> softcap) {
  NvtxRange range("objx::prob_loss_backward(cpu)");
  const auto in = prepare_prob_loss_inputs(
      logits_in, target_in,
      make_prob_loss_options(std::move(objective), param, std::nullopt, std::nullopt, ignore_index,
                             label_smoothing, z_loss, softcap));
  const at::Tensor& logits = in.logits;
  const at::Tensor& target = in.target;
  const ProbLossOptions& opt = in.opt;
  const ProbLossSaved saved = prepare_prob_loss_saved(logits, grad_loss, lse, logp, counted);
  auto grad = at::empty(logits.sizes(), logits.options().memory_format(at::MemoryFormat::Contiguous));
  if (logits.size(0) == 0) return grad;
  advise_huge_pages(grad);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(), "objx_prob_loss_backward", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    backward_impl<scalar_t, acc_t>(saved.grad_loss, logits, target, saved.lse, saved.logp, saved.counted,
                                   make_prob_loss_params<acc_t>(opt, logits.size(1)), grad);
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(objx, CPU, m) {
  m.impl("prob_loss_forward", &prob_loss_forward);
  m.impl("prob_loss_backward", &prob_loss_backward);
}

}  // namespace objx::cpu
