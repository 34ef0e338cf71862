// CPU kernels of the prob_loss family: rows in parallel; a row is one pass of online log-sum-exp
// over L1-sized pieces of the vocabulary (forward) and one pass writing the gradient (backward).
// The same row functions serve the logits ops and the fused LM-head tiles.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <string>

#include <sys/mman.h>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include "common/acc_type.h"
#include "common/vec_row.h"
#include "math/online_lse.h"
#include "math/prob_objective.h"
#include "prob/prob.h"

namespace objx {
namespace {

using math::LseState;
using math::ProbLossParams;

// A piece fits in L1 beside its gradient, so each logit is read from memory once per pass.
constexpr int64_t kPiece = 2048;
// Logits per parallel task: one pass over a row is cheap, so tasks take more of them.
constexpr int64_t kTaskLogits = 32768;

// Load a piece in the accumulation type (soft-capped if asked); used in place when it already is.
template <typename scalar_t, typename acc_t>
const acc_t* load_piece(const scalar_t* src, int64_t n, acc_t cap, acc_t* buf) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    if (cap == acc_t(0)) return src;
  }
  for (int64_t i = 0; i < n; ++i) buf[i] = math::softcap_value(static_cast<acc_t>(src[i]), cap);
  return buf;
}

// Adds logits x[0, n) to a running state (and their sum, weighted by w[0, n) when w is given, for
// label smoothing); returns the piece's max.
template <typename acc_t>
acc_t absorb(LseState<acc_t>& st, double& sum_z, const acc_t* x, int64_t n, bool want_sum, const acc_t* w) {
  if (n <= 0) return -std::numeric_limits<acc_t>::infinity();
  const acc_t piece_max = lse_absorb(st.max, st.sum, x, n);
  if (!want_sum) return piece_max;
  if (w != nullptr) {
    for (int64_t i = 0; i < n; ++i) sum_z += static_cast<double>(w[i]) * x[i];
  } else if constexpr (std::is_same_v<acc_t, float>) {
    sum_z += vec_sum(x, n);
  } else {
    for (int64_t i = 0; i < n; ++i) sum_z += x[i];
  }
  return piece_max;
}

template <typename acc_t>
struct RowState {
  LseState<acc_t> others;  // online LSE of every logit but the target's
  acc_t z_gold;            // the target's (soft-capped) logit, once seen
  double sum_z;            // sum of the logits (class-weighted when weighted)
  acc_t max_before;        // the largest logit left of the target's column
};

// Folds cols logits of one row into s; column `gold` (or -1) is the target, held out of the sum
// (see math::finish_with_gold) but seeding the max; the first `before` columns lie left of the
// target (all of them when it comes in a later tile). w: the class weights of these columns, or
// nullptr.
template <typename scalar_t, typename acc_t>
void reduce_row(const scalar_t* row, int64_t cols, int64_t gold, int64_t before, const ProbLossParams<acc_t>& prm,
                const acc_t* w, RowState<acc_t>& s) {
  acc_t buf[kPiece];
  const bool want_sum = prm.label_smoothing != acc_t(0);
  if (gold >= 0) {
    s.z_gold = math::softcap_value(static_cast<acc_t>(row[gold]), prm.softcap);
    s.others = math::lse_merge(s.others, math::gold_seed(s.z_gold));
    s.sum_z += (w != nullptr ? static_cast<double>(w[gold]) : 1.0) * s.z_gold;
  }
  for (int64_t start = 0; start < cols; start += kPiece) {
    const int64_t n = std::min(kPiece, cols - start);
    const acc_t* x = load_piece(row + start, n, prm.softcap, buf);
    const acc_t* wp = w != nullptr ? w + start : nullptr;
    const int64_t g = gold - start;
    if (g >= 0 && g < n) {
      const acc_t left = absorb(s.others, s.sum_z, x, g, want_sum, wp);
      s.max_before = std::max(s.max_before, left);
      absorb(s.others, s.sum_z, x + g + 1, n - g - 1, want_sum, wp != nullptr ? wp + g + 1 : nullptr);
    } else {
      const acc_t piece_max = absorb(s.others, s.sum_z, x, n, want_sum, wp);
      if (start + n <= before) s.max_before = std::max(s.max_before, piece_max);
    }
  }
}

// Writes each row's result and raises for the first bad row, after all rows are done.
template <typename acc_t, typename RowFn>
void finish_rows(int64_t rows, int64_t grain, ProbLossForward& out, RowErrors& errors, RowFn&& row_result) {
  auto& [loss, lse, logp, counted, correct] = out;
  acc_t* loss_p = loss.mutable_data_ptr<acc_t>();
  acc_t* lse_p = lse.mutable_data_ptr<acc_t>();
  acc_t* logp_p = logp.mutable_data_ptr<acc_t>();
  bool* counted_p = counted.mutable_data_ptr<bool>();
  bool* correct_p = correct.mutable_data_ptr<bool>();
  std::atomic<int64_t> first_error[3] = {rows, rows, rows};
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const math::ProbRowResult<acc_t> res = row_result(r);
      loss_p[r] = res.loss;
      lse_p[r] = res.lse;
      logp_p[r] = res.logp;
      counted_p[r] = res.counted;
      correct_p[r] = res.correct;
      if (res.error) {
        int64_t cur = first_error[res.error].load();
        while (r < cur && !first_error[res.error].compare_exchange_weak(cur, r)) {}
      }
    }
  });
  for (int kind : {math::kBadTarget, math::kEmptyRow})
    if (first_error[kind].load() < rows) errors.note(kind, first_error[kind].load());
}

template <typename scalar_t, typename acc_t>
void forward_impl(const ProbLossInputs& in, const ProbLossParams<acc_t>& prm, ProbLossForward& out,
                  RowErrors& errors) {
  const int64_t vocab = in.vocab;
  const scalar_t* z = in.logits.const_data_ptr<scalar_t>();
  const int64_t* y = in.target.const_data_ptr<int64_t>();
  finish_rows<acc_t>(in.rows, row_grain(vocab, kTaskLogits), out, errors, [&](int64_t r) {
    RowState<acc_t> s{math::lse_empty<acc_t>(), acc_t(0), 0.0, -std::numeric_limits<acc_t>::infinity()};
    reduce_row(z + in.layout.offset(r), vocab, math::gold_column(y[r], prm.ignore_index, 0, vocab),
               math::columns_before_target(y[r], prm.ignore_index, 0, vocab), prm, prm.class_weight, s);
    return math::prob_row_finish(prm, y[r], s.others, s.z_gold, static_cast<acc_t>(s.sum_z), s.max_before);
  });
}

// The gradient is the one [N, V] buffer we write, usually freshly mapped: with 4 KiB pages the
// first-touch page faults cost more than the arithmetic (~75 of ~100 ms at 2048 x 32000 fp32 on
// the development machine). OBJX_CPU_HUGE_PAGES=1 asks for transparent huge pages (~25 ms), but
// where the kernel compacts memory on such faults (THP defrag "madvise") single calls were seen to
// stall for ~250 ms, so it is opt-in.
bool huge_pages_requested() {
  static const bool on = [] {
    const char* v = std::getenv("OBJX_CPU_HUGE_PAGES");
    return v != nullptr && std::string(v) == "1";
  }();
  return on;
}

void advise_huge_pages(at::Tensor& t) {
#ifdef MADV_HUGEPAGE
  if (!huge_pages_requested()) return;
  constexpr uintptr_t kHuge = 2u << 20;
  const auto begin = reinterpret_cast<uintptr_t>(t.data_ptr());
  const auto end = begin + t.nbytes();
  const uintptr_t first = (begin + kHuge - 1) & ~(kHuge - 1);
  if (end > first + kHuge) madvise(reinterpret_cast<void*>(first), (end - first) & ~(kHuge - 1), MADV_HUGEPAGE);
#endif
}

// Gradient of one counted row: a p_j - c w_j (w_j = 1 when w is nullptr), `gold` at column t,
// times the soft-cap derivative. out may alias row (a tile overwritten with its gradient): each
// element is read before written.
template <typename scalar_t>
void grad_row(const scalar_t* row, int64_t cols, int64_t t, math::SoftmaxRef<float> sm,
              const math::ProbRowGrad<float>& g, float cap, const float* w, scalar_t* out) {
  float buf[kPiece];
  float gbuf[kPiece];
  for (int64_t start = 0; start < cols; start += kPiece) {
    const int64_t n = std::min(kPiece, cols - start);
    const float* x = load_piece(row + start, n, cap, buf);
    float* dst = gbuf;
    if constexpr (std::is_same_v<scalar_t, float>) dst = out + start;
    if (w != nullptr && g.c != 0.0f) {
      vec_scaled_softmax(x, n, sm.ref, sm.shift, g.a, 0.0f, dst);
      for (int64_t i = 0; i < n; ++i) dst[i] -= g.c * w[start + i];
    } else {
      vec_scaled_softmax(x, n, sm.ref, sm.shift, g.a, g.c, dst);
    }
    if (t >= start && t < start + n) dst[t - start] = g.gold;
    if (cap != 0.0f)
      for (int64_t i = 0; i < n; ++i) dst[i] *= math::softcap_grad(x[i], cap);
    if constexpr (!std::is_same_v<scalar_t, float>)
      for (int64_t i = 0; i < n; ++i) out[start + i] = static_cast<scalar_t>(dst[i]);
  }
}

void grad_row(const double* row, int64_t cols, int64_t t, math::SoftmaxRef<double> sm,
              const math::ProbRowGrad<double>& g, double cap, const double* w, double* out) {
  for (int64_t j = 0; j < cols; ++j) {
    const double zc = math::softcap_value(row[j], cap);
    const double v = j == t ? g.gold : g.a * std::exp((zc - sm.ref) + sm.shift) - g.c * (w != nullptr ? w[j] : 1.0);
    out[j] = v * math::softcap_grad(zc, cap);
  }
}

// Gradient of logits columns [col_offset, col_offset + cols) into out (row stride out_stride).
template <typename scalar_t, typename acc_t>
void backward_impl(const scalar_t* z, int64_t rows, int64_t cols, RowLayout layout, const at::Tensor& target,
                   int64_t col_offset, const ProbLossSaved& saved, const ProbLossParams<acc_t>& prm,
                   scalar_t* out, int64_t out_stride) {
  const int64_t* y = target.const_data_ptr<int64_t>();
  const acc_t* g_p = saved.grad_loss.const_data_ptr<acc_t>();
  const acc_t* lse_p = saved.lse.const_data_ptr<acc_t>();
  const acc_t* logp_p = saved.logp.const_data_ptr<acc_t>();
  const bool* counted_p = saved.counted.const_data_ptr<bool>();
  at::parallel_for(0, rows, row_grain(cols, kTaskLogits), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      scalar_t* dst = out + r * out_stride;
      if (!counted_p[r]) {
        std::fill(dst, dst + cols, scalar_t(0));
        continue;
      }
      const auto coef = math::prob_row_grad(prm, g_p[r], lse_p[r], logp_p[r], math::target_weight(prm, y[r]));
      const acc_t* w = prm.class_weight != nullptr ? prm.class_weight + col_offset : nullptr;
      const int64_t t = y[r] - col_offset;
      const bool whole = col_offset == 0 && cols == prm.vocab && t >= 0 && t < cols;
      const scalar_t* row = z + layout.offset(r);
      const auto sm = math::softmax_ref(
          lse_p[r], logp_p[r], whole, whole ? math::softcap_value(static_cast<acc_t>(row[t]), prm.softcap) : acc_t(0));
      grad_row(row, cols, t, sm, coef, prm.softcap, w, dst);
    }
  });
}

ProbLossForward forward(const ProbLossInputs& in, RowErrors& errors) {
  auto out = allocate_prob_loss_forward(in.rows, in.logits.options().dtype(acc_dtype(in.logits.scalar_type())));
  if (in.rows == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, in.logits.scalar_type(), "objx_prob_loss_forward", [&] {
    using acc_t = acc_type<scalar_t>;
    forward_impl<scalar_t, acc_t>(in, make_prob_loss_params<acc_t>(in.opt, in.vocab), out, errors);
  });
  return out;
}

at::Tensor backward(const ProbLossInputs& in, const ProbLossSaved& saved) {
  const at::Tensor& logits = in.logits;
  auto grad = at::empty(logits.sizes(), logits.options().memory_format(at::MemoryFormat::Contiguous));
  if (in.rows == 0) return grad;
  advise_huge_pages(grad);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(), "objx_prob_loss_backward", [&] {
    using acc_t = acc_type<scalar_t>;
    backward_impl<scalar_t, acc_t>(logits.const_data_ptr<scalar_t>(), in.rows, in.vocab, in.layout, in.target, 0,
                                   saved, make_prob_loss_params<acc_t>(in.opt, in.vocab),
                                   grad.mutable_data_ptr<scalar_t>(), in.vocab);
  });
  return grad;
}

// ---- tiles of the fused LM-head loss --------------------------------------------------------

// The running sums cross tiles in float64 (prob_tile_state; math::prob_tiled_row_finish says why);
// within a tile the reduction stays float32.
void tile_reduce(const at::Tensor& tile, const at::Tensor& target, int64_t col_offset,
                      const ProbLossOptions& opt, ProbTileState& state) {
  const int64_t cols = tile.size(1), stride = tile.stride(0);
  // Tiles come from the head's GEMMs in the accumulation dtype (common/head_gemms.h).
  AT_DISPATCH_FLOATING_TYPES(tile.scalar_type(), "objx_prob_tile_reduce", [&] {
    using acc_t = acc_type<scalar_t>;
    const auto prm = make_prob_loss_params<acc_t>(opt, cols);
    const scalar_t* z = tile.const_data_ptr<scalar_t>();
    const int64_t* y = target.const_data_ptr<int64_t>();
    acc_t* mx = state.max.mutable_data_ptr<acc_t>();
    double* sm = state.sum.mutable_data_ptr<double>();
    acc_t* zg = state.z_gold.mutable_data_ptr<acc_t>();
    double* sz = state.sum_z.mutable_data_ptr<double>();
    acc_t* mb = state.max_before.mutable_data_ptr<acc_t>();
    const acc_t* w = prm.class_weight != nullptr ? prm.class_weight + col_offset : nullptr;
    at::parallel_for(0, tile.size(0), row_grain(cols, kTaskLogits), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        // This tile's own online LSE, merged into the row's float64 one after.
        RowState<acc_t> s{math::lse_empty<acc_t>(), zg[r], sz[r], mb[r]};
        reduce_row(z + r * stride, cols, math::gold_column(y[r], opt.ignore_index, col_offset, cols),
                   math::columns_before_target(y[r], opt.ignore_index, col_offset, cols), prm, w, s);
        const auto merged = math::lse_merge(math::LseState<double>{mx[r], sm[r]},
                                            math::LseState<double>{s.others.max, s.others.sum});
        mx[r] = static_cast<acc_t>(merged.max);  // one of the two maxima: exact in acc_t
        sm[r] = merged.sum;
        zg[r] = s.z_gold;
        sz[r] = s.sum_z;
        mb[r] = s.max_before;
      }
    });
  });
}

ProbLossForward tile_finish(const ProbTileState& state, const at::Tensor& target, const ProbLossOptions& opt,
                            int64_t vocab, RowErrors& errors) {
  ProbLossForward out = allocate_prob_loss_forward(target.size(0), state.max.options());
  AT_DISPATCH_FLOATING_TYPES(state.max.scalar_type(), "objx_prob_tile_finish", [&] {
    using acc_t = scalar_t;
    const auto prm = make_prob_loss_params<acc_t>(opt, vocab);
    const acc_t* mx = state.max.const_data_ptr<acc_t>();
    const double* sm = state.sum.const_data_ptr<double>();
    const acc_t* zg = state.z_gold.const_data_ptr<acc_t>();
    const double* sz = state.sum_z.const_data_ptr<double>();
    const acc_t* mb = state.max_before.const_data_ptr<acc_t>();
    const int64_t* y = target.const_data_ptr<int64_t>();
    finish_rows<acc_t>(target.size(0), 4096, out, errors, [&](int64_t r) {
      return math::prob_tiled_row_finish(prm, y[r], mx[r], sm[r], zg[r], sz[r], mb[r]);
    });
  });
  return out;
}

void tile_grad(at::Tensor& tile, const at::Tensor& target, int64_t col_offset,
                    const ProbLossSaved& saved, const ProbLossOptions& opt, int64_t vocab) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, tile.scalar_type(), "objx_prob_tile_grad", [&] {
    using acc_t = acc_type<scalar_t>;
    scalar_t* z = tile.mutable_data_ptr<scalar_t>();
    backward_impl<scalar_t, acc_t>(z, tile.size(0), tile.size(1), RowLayout{tile.stride(0)}, target, col_offset, saved,
                                   make_prob_loss_params<acc_t>(opt, vocab), z, tile.stride(0));
  });
}

}  // namespace

extern const ProbKernels kCpuProbKernels{&forward, &backward, &tile_reduce, &tile_finish, &tile_grad};

}  // namespace objx
