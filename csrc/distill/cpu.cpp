// CPU kernels of the distill ops (SPEC §2): rows in parallel; per row one pass for the log-sum-exps
// (vectorised; for the KL methods also the divergence sum), one for the divergence sum of the
// others, and one in the backward for the gradient.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include "common/acc_type.h"
#include "common/pair_piece.h"
#include "common/vec_row.h"
#include "distill/distill.h"
#include "math/distill.h"
#include "math/online_lse.h"

namespace objx {
namespace {

using math::DistillParams;
using math::DistillRow;

// Is the soft term's raw sum D = KL(p || q) (ttm, wttm, kd, forward_kl)? Then pass 1 reduces it too.
bool kl_method(math::DistillMethod m) {
  return m != math::DistillMethod::kReverseKl && m != math::DistillMethod::kJsd && m != math::DistillMethod::kTvd;
}

// Pass 1: log-sum-exp of s, s/T (the tempered methods only: TTM and WTTM leave it 0), t/T and t.
// For the KL methods also D, from the teacher's exponentials under its running maximum, rescaled as
// it moves:
//   D = sum_j e^(t_j/T - m) (t_j/T - s'_j) / sum_j e^(t_j/T - m) - (lse(t/T) - lse(s')),
// s' = s or s/T by method, so their rows are read once, with no pass 2 and its two exps per entry.
template <typename scalar_t, typename acc_t>
DistillRow<acc_t> reduce_lse(const scalar_t* s, const scalar_t* t, int64_t vocab, const DistillParams<acc_t>& prm) {
  acc_t buf[4][kPairPiece], ratio[kPairPiece];
  math::LseState<acc_t> st[4];
  for (auto& x : st) x = math::lse_empty<acc_t>();
  const bool untempered = math::distill_untempered_student(prm.method), kl = kl_method(prm.method);
  double weighted = 0.0;  // in float64 lanes, like pass 2's sum
  for (int64_t start = 0; start < vocab; start += kPairPiece) {
    const int64_t n = std::min(kPairPiece, vocab - start);
    for (int64_t i = 0; i < n; ++i) {
      const acc_t si = static_cast<acc_t>(s[start + i]), ti = static_cast<acc_t>(t[start + i]);
      buf[0][i] = si;
      buf[1][i] = si / prm.temperature;
      buf[2][i] = ti / prm.temperature;
      buf[3][i] = ti;
      ratio[i] = buf[2][i] - (untempered ? si : buf[1][i]);
    }
    lse_absorb(st[0].max, st[0].sum, buf[0], n);
    if (!untempered) lse_absorb(st[1].max, st[1].sum, buf[1], n);
    if (kl)
      lse_absorb_weighted(st[2].max, st[2].sum, weighted, buf[2], ratio, n);
    else
      lse_absorb(st[2].max, st[2].sum, buf[2], n);
    lse_absorb(st[3].max, st[3].sum, buf[3], n);
  }
  DistillRow<acc_t> row{math::lse_finish(st[0]), untempered ? acc_t(0) : math::lse_finish(st[1]),
                        math::lse_finish(st[2]), math::lse_finish(st[3]), acc_t(0), acc_t(0)};
  if (kl) {
    const double lse_q = untempered ? row.lse_s1 : row.lse_sT;
    row.div = static_cast<acc_t>(weighted / static_cast<double>(st[2].sum) - (double(row.lse_tT) - lse_q));
  }
  return row;
}

// The logs of entries [start, start + n) of a row into a piece, then their exps.
template <typename scalar_t, typename acc_t>
void load_piece(const scalar_t* s, const scalar_t* t, int64_t start, int64_t n, const DistillParams<acc_t>& prm,
                const DistillRow<acc_t>& row, PairPiece<acc_t>& piece) {
  for (int64_t i = 0; i < n; ++i)
    math::distill_logs(prm, row, static_cast<acc_t>(s[start + i]), static_cast<acc_t>(t[start + i]), piece.log_p[i],
                       piece.log_q[i]);
  piece.take_exps(n);
}

// Pass 2: the raw divergence sum D and sum_k q_k a_k.
template <typename scalar_t, typename acc_t>
void reduce_divergence(const scalar_t* s, const scalar_t* t, int64_t vocab, const DistillParams<acc_t>& prm,
                       DistillRow<acc_t>& row) {
  PairPiece<acc_t> piece;
  acc_t terms[PairPiece<acc_t>::kSize], qas[PairPiece<acc_t>::kSize];
  double div = 0.0, qa = 0.0;
  for (int64_t start = 0; start < vocab; start += PairPiece<acc_t>::kSize) {
    const int64_t n = std::min(PairPiece<acc_t>::kSize, vocab - start);
    load_piece(s, t, start, n, prm, row, piece);
    for (int64_t i = 0; i < n; ++i) math::distill_terms(prm, piece[i], terms[i], qas[i]);
    div += piece_sum(terms, n);
    qa += piece_sum(qas, n);
  }
  row.div = static_cast<acc_t>(div);
  row.qa = static_cast<acc_t>(qa);
}

template <typename scalar_t, typename acc_t>
void forward_impl(const DistillInputs& in, const int64_t* y, const DistillParams<acc_t>& prm, DistillForward& out,
                  RowErrors& errors) {
  auto& [loss, soft, hard, stats, counted] = out;
  const int64_t rows = in.rows, vocab = in.vocab;
  const scalar_t* s_base = in.student.const_data_ptr<scalar_t>();
  const scalar_t* t_base = in.teacher.const_data_ptr<scalar_t>();
  acc_t* loss_p = loss.mutable_data_ptr<acc_t>();
  acc_t* soft_p = soft.mutable_data_ptr<acc_t>();
  acc_t* hard_p = hard.mutable_data_ptr<acc_t>();
  acc_t* stats_p = stats.mutable_data_ptr<acc_t>();
  bool* counted_p = counted.mutable_data_ptr<bool>();
  std::atomic<int64_t> bad_target{rows}, empty_row{rows}, empty_teacher{rows};
  auto keep_min = [](std::atomic<int64_t>& slot, int64_t v) {
    int64_t cur = slot.load();
    while (v < cur && !slot.compare_exchange_weak(cur, v)) {}
  };
  at::parallel_for(0, rows, row_grain(vocab), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const scalar_t* s = s_base + in.s_rows.offset(r);
      const scalar_t* t = t_base + in.t_rows.offset(r);
      const int64_t yr = prm.has_target ? y[r] : 0;
      const bool counts = !prm.has_target || yr != prm.ignore_index;
      acc_t* row_stats = stats_p + r * math::kDistillRowStats;
      if (counts && prm.has_target && (yr < 0 || yr >= vocab)) keep_min(bad_target, r);
      if (!counts || (prm.has_target && (yr < 0 || yr >= vocab))) {
        loss_p[r] = soft_p[r] = hard_p[r] = acc_t(0);
        std::fill(row_stats, row_stats + math::kDistillRowStats, acc_t(0));
        counted_p[r] = false;
        continue;
      }
      DistillRow<acc_t> row = reduce_lse(s, t, vocab, prm);
      if (row.lse_s1 == -std::numeric_limits<acc_t>::infinity()) keep_min(empty_row, r);
      if (row.lse_t1 == -std::numeric_limits<acc_t>::infinity()) keep_min(empty_teacher, r);
      if (!kl_method(prm.method)) reduce_divergence(s, t, vocab, prm, row);
      const acc_t soft_r = math::distill_soft(prm, row);
      const acc_t hard_r = prm.has_target ? row.lse_s1 - static_cast<acc_t>(s[yr]) : acc_t(0);
      loss_p[r] = prm.hard_weight * hard_r + prm.soft_weight * soft_r;
      soft_p[r] = soft_r;
      hard_p[r] = hard_r;
      const acc_t values[math::kDistillRowStats] = {row.lse_s1, row.lse_sT, row.lse_tT, row.lse_t1, row.div, row.qa};
      std::copy(values, values + math::kDistillRowStats, row_stats);
      counted_p[r] = true;
    }
  });
  if (bad_target.load() < rows) errors.note(math::kBadTarget, bad_target.load());
  if (empty_row.load() < rows) errors.note(math::kEmptyRow, empty_row.load());
  if (empty_teacher.load() < rows) errors.note(math::kEmptyOther, empty_teacher.load());
}

// One piece's gradient of a KL method, g_soft (q - p) + g_hard (softmax(s) - [j = y]), in loops
// that vectorise; TTM and WTTM compare q = softmax(s) itself, so their hard term takes no exp.
template <typename scalar_t, typename acc_t>
void kl_piece_grad(const scalar_t* s, const scalar_t* t, int64_t start, int64_t n, const DistillParams<acc_t>& prm,
                   const DistillRow<acc_t>& row, acc_t g_hard, acc_t g_soft, PairPiece<acc_t>& piece, acc_t* out) {
  const bool untempered = math::distill_untempered_student(prm.method);
  const acc_t lse_q = untempered ? row.lse_s1 : row.lse_sT;
  for (int64_t i = 0; i < n; ++i) {
    const acc_t si = static_cast<acc_t>(s[start + i]);
    piece.log_p[i] = static_cast<acc_t>(t[start + i]) / prm.temperature - row.lse_tT;
    piece.log_q[i] = (untempered ? si : si / prm.temperature) - lse_q;
  }
  piece.take_exps(n);
  if (g_hard == acc_t(0)) {
    for (int64_t i = 0; i < n; ++i) out[i] = g_soft * (piece.q[i] - piece.p[i]);
    return;
  }
  acc_t* softmax_s = piece.q;
  if (!untempered) {  // piece.log_p is spent: it holds softmax(s) now
    for (int64_t i = 0; i < n; ++i) piece.log_p[i] = static_cast<acc_t>(s[start + i]) - row.lse_s1;
    vec_exp(piece.log_p, n, piece.log_p);
    softmax_s = piece.log_p;
  }
  for (int64_t i = 0; i < n; ++i) out[i] = g_soft * (piece.q[i] - piece.p[i]) + g_hard * softmax_s[i];
}

template <typename scalar_t, typename acc_t>
void backward_impl(const acc_t* grad_loss, const DistillInputs& in, const int64_t* y, const acc_t* stats,
                   const bool* counted, const DistillParams<acc_t>& prm, at::Tensor& grad) {
  const int64_t rows = in.rows, vocab = in.vocab;
  const scalar_t* s_base = in.student.const_data_ptr<scalar_t>();
  const scalar_t* t_base = in.teacher.const_data_ptr<scalar_t>();
  scalar_t* out_base = grad.mutable_data_ptr<scalar_t>();
  const bool kl = kl_method(prm.method);
  at::parallel_for(0, rows, row_grain(vocab), [&](int64_t begin, int64_t end) {
    PairPiece<acc_t> piece;
    acc_t softmax_s[PairPiece<acc_t>::kSize], values[PairPiece<acc_t>::kSize];
    for (int64_t r = begin; r < end; ++r) {
      scalar_t* out = out_base + r * vocab;
      const scalar_t* s = s_base + in.s_rows.offset(r);
      const scalar_t* t = t_base + in.t_rows.offset(r);
      if (!counted[r]) {
        std::fill(out, out + vocab, scalar_t(0));
        continue;
      }
      const DistillRow<acc_t> row = math::distill_row_from(stats + r * math::kDistillRowStats);
      const auto [g_hard, g_soft] = math::distill_grad_weights(prm, row, grad_loss[r]);
      const int64_t yr = prm.has_target ? y[r] : -1;
      for (int64_t start = 0; start < vocab; start += PairPiece<acc_t>::kSize) {
        const int64_t n = std::min(PairPiece<acc_t>::kSize, vocab - start);
        if (kl) {
          kl_piece_grad(s, t, start, n, prm, row, g_hard, g_soft, piece, values);
          if (g_hard != acc_t(0) && yr >= start && yr < start + n) {  // the target's - g_hard, as distill_grad_from
            const int64_t i = yr - start;
            const acc_t softmax_y = math::distill_untempered_student(prm.method)
                                        ? piece.q[i] : piece.log_p[i];
            values[i] = g_soft * (piece.q[i] - piece.p[i]) + g_hard * (softmax_y - acc_t(1));
          }
          for (int64_t i = 0; i < n; ++i) out[start + i] = static_cast<scalar_t>(values[i]);
          continue;
        }
        load_piece(s, t, start, n, prm, row, piece);
        if (g_hard != acc_t(0)) {  // the hard term's softmax(s)_j
          for (int64_t i = 0; i < n; ++i) softmax_s[i] = static_cast<acc_t>(s[start + i]) - row.lse_s1;
          vec_exp(softmax_s, n, softmax_s);
        } else {  // unused, but passed
          std::fill(softmax_s, softmax_s + n, acc_t(0));
        }
        for (int64_t i = 0; i < n; ++i)
          out[start + i] = static_cast<scalar_t>(
              math::distill_grad_from(prm, row, piece[i], softmax_s[i], start + i == yr, g_hard, g_soft));
      }
    }
  });
}

DistillForward forward(const DistillInputs& in, RowErrors& errors) {
  const auto acc = acc_dtype(in.student.scalar_type());
  auto out = allocate_distill_forward(in.rows, in.student.options().dtype(acc));
  if (in.rows == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, in.student.scalar_type(), "objx_distill_forward", [&] {
    using acc_t = acc_type<scalar_t>;
    const auto prm = make_distill_params<acc_t>(in.opt, in.vocab, in.has_target);
    forward_impl<scalar_t, acc_t>(in, in.has_target ? in.target.const_data_ptr<int64_t>() : nullptr, prm, out, errors);
  });
  return out;
}

at::Tensor backward(const DistillInputs& in, const DistillSaved& saved) {
  const int64_t rows = in.rows;
  auto grad = at::empty(in.student.sizes(), in.student.options().memory_format(at::MemoryFormat::Contiguous));
  if (rows == 0) return grad;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, in.student.scalar_type(), "objx_distill_backward", [&] {
    using acc_t = acc_type<scalar_t>;
    backward_impl<scalar_t, acc_t>(saved.grad_loss.const_data_ptr<acc_t>(), in,
                                   in.has_target ? in.target.const_data_ptr<int64_t>() : nullptr,
                                   saved.stats.const_data_ptr<acc_t>(), saved.counted.const_data_ptr<bool>(),
                                   make_distill_params<acc_t>(in.opt, in.vocab, in.has_target), grad);
  });
  return grad;
}

at::Tensor shard_sums(const DistillInputs& in, const at::Tensor& row_lse) {
  const int64_t rows = in.rows, vocab = in.vocab;
  auto sums = at::empty({rows, 2}, row_lse.options());
  if (rows == 0) return sums;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, in.student.scalar_type(), "objx_distill_shard_sums", [&] {
    using acc_t = acc_type<scalar_t>;
    const auto prm = make_distill_params<acc_t>(in.opt, vocab, false);
    const scalar_t* s_base = in.student.const_data_ptr<scalar_t>();
    const scalar_t* t_base = in.teacher.const_data_ptr<scalar_t>();
    const acc_t* lse = row_lse.const_data_ptr<acc_t>();
    acc_t* out = sums.mutable_data_ptr<acc_t>();
    at::parallel_for(0, rows, row_grain(vocab), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        // The compared student's normaliser serves as lse(s) and lse(s/T): distill_logs reads the one
        // the method compares. lse(t) (WTTM's weight) is not needed for the sums.
        DistillRow<acc_t> row{lse[2 * r], lse[2 * r], lse[2 * r + 1], acc_t(0), acc_t(0), acc_t(0)};
        reduce_divergence(s_base + in.s_rows.offset(r), t_base + in.t_rows.offset(r), vocab, prm, row);
        out[2 * r] = row.div;
        out[2 * r + 1] = row.qa;
      }
    });
  });
  return sums;
}

}  // namespace

extern const DistillKernels kCpuDistillKernels{&forward, &backward, &shard_sums};

}  // namespace objx
