#pragma once
// SPEC §2: per-element terms and gradients of the distillation losses, shared by the CPU and
// CUDA kernels. A row is reduced in two passes (four log-sum-exps, then the divergence sum) and
// differentiated in a third from the per-row scalars of DistillRow.
#include <cmath>
#include <limits>

#include "math/hd.h"

namespace objx::math {

enum class DistillMethod : int { kTtm = 0, kWttm, kKd, kForwardKl, kReverseKl, kJsd, kTvd };

template <typename acc_t>
struct DistillParams {
  DistillMethod method;
  acc_t temperature;
  acc_t beta;  // jsd only; 0 and 1 are mapped to forward_kl / reverse_kl on the host
  acc_t hard_weight;
  acc_t soft_weight;
  int64_t ignore_index;
  int64_t vocab;
  bool has_target;
};

// Per-row scalars: the four log-sum-exps of pass 1, then the raw divergence sum D and
// sum_k q_k a_k of pass 2 (the backward's inputs). The CPU kernels leave lse_sT at 0 for TTM and
// WTTM, which compare the untempered student and never read it.
template <typename acc_t>
struct DistillRow {
  acc_t lse_s1, lse_sT, lse_tT, lse_t1, div, qa;
};
constexpr int kDistillRowStats = 6;

// Does the method compare the untempered student q = softmax(s) (TTM, WTTM) rather than softmax(s/T)?
OBJX_HD bool distill_untempered_student(DistillMethod m) {
  return m == DistillMethod::kTtm || m == DistillMethod::kWttm;
}

// log p (teacher at T) and log q (student, at T or 1 by method) of one vocabulary entry.
template <typename acc_t>
OBJX_HD void distill_logs(const DistillParams<acc_t>& prm, const DistillRow<acc_t>& row, acc_t s, acc_t t,
                          acc_t& log_p, acc_t& log_q) {
  log_p = t / prm.temperature - row.lse_tT;
  log_q = distill_untempered_student(prm.method) ? s - row.lse_s1 : s / prm.temperature - row.lse_sT;
}

// One vocabulary entry: log p, log q and their exponentials. The caller takes the exponentials
// (inline on CUDA; on CPU a vectorised piece of a row at a time), the terms below only combine them.
template <typename acc_t>
struct ProbPair {
  acc_t log_p, log_q, p, q;
};

template <typename acc_t>
OBJX_HD ProbPair<acc_t> prob_pair(acc_t log_p, acc_t log_q) {
  using std::exp;
  return {log_p, log_q, exp(log_p), exp(log_q)};
}

// x (log_x - log_y) from x = e^{log_x}, 0 where x is exactly 0 (log_x = -inf): an entry of
// probability 0 contributes nothing.
template <typename acc_t>
OBJX_HD acc_t xlogratio(acc_t x, acc_t log_x, acc_t log_y) {
  return log_x == -std::numeric_limits<acc_t>::infinity() ? acc_t(0) : x * (log_x - log_y);
}

// log(beta e^{log_p} + (1 - beta) e^{log_q}), the JSD mixture, in log space throughout.
template <typename acc_t>
OBJX_HD acc_t log_mixture(acc_t beta, acc_t log_p, acc_t log_q) {
  using std::exp;
  using std::log;
  using std::log1p;
  const acc_t a = log(beta) + log_p, b = log(acc_t(1) - beta) + log_q;
  const acc_t hi = a > b ? a : b, lo = a > b ? b : a;
  if (hi == -std::numeric_limits<acc_t>::infinity()) return hi;
  return hi + log1p(exp(lo - hi));
}

// sign(x - y) / 2, TVD's subgradient, 0 at a tie, written to compile branch-free,
// since p > q is a coin flip per entry and a mispredicted branch cost more than the exps (CPU).
template <typename acc_t>
OBJX_HD acc_t half_sign_diff(acc_t x, acc_t y) {
  using std::copysign;
  const acc_t d = x - y, h = copysign(acc_t(0.5), d);  // a sign-bit copy; one select for the tie
  return d == acc_t(0) ? acc_t(0) : h;
}

// log m, m = beta p + (1 - beta) q: the log of the linear sum while it is a normal number (one log
// beyond the exps every caller has, against log_mixture's exp, log1p and two logs, and no less
// accurate: a sum of two positives loses nothing); where both probabilities underflow, the
// log-space form keeps log m finite.
template <typename acc_t>
OBJX_HD acc_t log_mixture_of(acc_t beta, const ProbPair<acc_t>& e) {
  using std::log;
  const acc_t m = beta * e.p + (acc_t(1) - beta) * e.q;
  return m >= std::numeric_limits<acc_t>::min() ? log(m) : log_mixture(beta, e.log_p, e.log_q);
}

// The JSD entry: its divergence term beta p log(p/m) + (1 - beta) q log(q/m) and
// a = dD/dq = (1 - beta) log(q/m) (0 where q = 0).
template <typename acc_t>
struct JsdEntry {
  acc_t term, a;
};

template <typename acc_t>
OBJX_HD JsdEntry<acc_t> jsd_entry(acc_t beta, const ProbPair<acc_t>& e) {
  const acc_t log_m = log_mixture_of(beta, e);
  const acc_t term =
      beta * xlogratio(e.p, e.log_p, log_m) + (acc_t(1) - beta) * xlogratio(e.q, e.log_q, log_m);
  const acc_t a = e.log_q == -std::numeric_limits<acc_t>::infinity() ? acc_t(0) : (acc_t(1) - beta) * (e.log_q - log_m);
  return {term, a};
}

// One entry's contributions to the raw divergence sum D and to sum_k q_k a_k, a_k = dD/dq_k for
// the methods differentiated by chaining through the softmax (jsd, tvd; 0 for the others).
template <typename acc_t>
OBJX_HD void distill_terms(const DistillParams<acc_t>& prm, const ProbPair<acc_t>& e, acc_t& term, acc_t& qa) {
  using std::fabs;
  qa = acc_t(0);
  switch (prm.method) {
    case DistillMethod::kReverseKl: term = xlogratio(e.q, e.log_q, e.log_p); break;
    case DistillMethod::kJsd: {
      const JsdEntry<acc_t> j = jsd_entry(prm.beta, e);
      term = j.term;
      qa = e.q * j.a;
      break;
    }
    case DistillMethod::kTvd:
      term = acc_t(0.5) * fabs(e.p - e.q);
      qa = e.q * half_sign_diff(e.q, e.p);
      break;
    default: term = xlogratio(e.p, e.log_p, e.log_q);  // KL(p || q): ttm, wttm, kd, forward_kl
  }
}

// One entry's contributions to (D, Σ q a) under the row's log-sum-exps: the body of pass 2.
template <typename acc_t>
OBJX_HD void distill_entry_sums(const DistillParams<acc_t>& prm, const DistillRow<acc_t>& row, acc_t s, acc_t t,
                                acc_t& term, acc_t& qa) {
  acc_t log_p, log_q;
  distill_logs(prm, row, s, t, log_p, log_q);
  distill_terms(prm, prob_pair(log_p, log_q), term, qa);
}

// WTTM's sample weight U = sum_j softmax(t)_j^(1/T) = exp(lse(t/T) - lse(t)/T).
template <typename acc_t>
OBJX_HD acc_t distill_wttm_weight(const DistillParams<acc_t>& prm, const DistillRow<acc_t>& row) {
  using std::exp;
  return exp(row.lse_tT - row.lse_t1 / prm.temperature);
}

// The soft loss D of SPEC §2's table from the raw sum: U·KL for wttm, T²·KL for kd.
template <typename acc_t>
OBJX_HD acc_t distill_soft(const DistillParams<acc_t>& prm, const DistillRow<acc_t>& row) {
  switch (prm.method) {
    case DistillMethod::kWttm: return distill_wttm_weight(prm, row) * row.div;
    case DistillMethod::kKd: return prm.temperature * prm.temperature * row.div;
    default: return row.div;
  }
}

// d soft / d s_j for one entry, divided by the row's factor soft_grad_scale (kept out of the
// per-entry work: WTTM's U is an exp).
template <typename acc_t>
OBJX_HD acc_t distill_soft_grad(const DistillParams<acc_t>& prm, const DistillRow<acc_t>& row,
                                const ProbPair<acc_t>& e) {
  switch (prm.method) {
    case DistillMethod::kTtm:
    case DistillMethod::kWttm:
    case DistillMethod::kKd:
    case DistillMethod::kForwardKl: return e.q - e.p;
    case DistillMethod::kReverseKl: return e.q == acc_t(0) ? acc_t(0) : e.q * (e.log_q - e.log_p - row.div);
    case DistillMethod::kJsd: return e.q * (jsd_entry(prm.beta, e).a - row.qa);
    default: return e.q * (half_sign_diff(e.q, e.p) - row.qa);  // tvd
  }
}

// The row's factor of d soft / d s: U for wttm, T for kd, 1 for ttm, 1/T for the methods that
// compare softmax(s/T).
template <typename acc_t>
OBJX_HD acc_t soft_grad_scale(const DistillParams<acc_t>& prm, const DistillRow<acc_t>& row) {
  switch (prm.method) {
    case DistillMethod::kTtm: return acc_t(1);
    case DistillMethod::kWttm: return distill_wttm_weight(prm, row);
    case DistillMethod::kKd: return prm.temperature;
    default: return acc_t(1) / prm.temperature;
  }
}

// A counted row's upstream gradient split into the hard term's and the soft term's weights; the
// soft one carries soft_grad_scale.
template <typename acc_t>
struct DistillGradWeights {
  acc_t hard, soft;
};

template <typename acc_t>
OBJX_HD DistillGradWeights<acc_t> distill_grad_weights(const DistillParams<acc_t>& prm, const DistillRow<acc_t>& row,
                                                       acc_t grad_loss) {
  return {grad_loss * prm.hard_weight, grad_loss * prm.soft_weight * soft_grad_scale(prm, row)};
}

// The saved per-row scalars (a [N, kDistillRowStats] row) as a DistillRow.
template <typename acc_t>
OBJX_HD DistillRow<acc_t> distill_row_from(const acc_t* st) {
  return {st[0], st[1], st[2], st[3], st[4], st[5]};
}

// d loss / d s_j of one entry from its pair and softmax(s)_j (= exp(s_j - lse(s))):
// g_soft * d soft / d s_j + g_hard * (softmax(s)_j - [j = y]). g_soft carries soft_grad_scale.
template <typename acc_t>
OBJX_HD acc_t distill_grad_from(const DistillParams<acc_t>& prm, const DistillRow<acc_t>& row,
                                const ProbPair<acc_t>& e, acc_t softmax_s, bool is_target, acc_t g_hard,
                                acc_t g_soft_scaled) {
  acc_t v = g_soft_scaled * distill_soft_grad(prm, row, e);
  if (g_hard != acc_t(0)) v += g_hard * (softmax_s - (is_target ? acc_t(1) : acc_t(0)));
  return v;
}

// The same from the logits (the exps taken here): the body of the CUDA backward.
template <typename acc_t>
OBJX_HD acc_t distill_entry_grad(const DistillParams<acc_t>& prm, const DistillRow<acc_t>& row, acc_t s, acc_t t,
                                 bool is_target, acc_t g_hard, acc_t g_soft_scaled) {
  using std::exp;
  acc_t log_p, log_q;
  distill_logs(prm, row, s, t, log_p, log_q);
  const acc_t softmax_s = g_hard != acc_t(0) ? exp(s - row.lse_s1) : acc_t(0);
  return distill_grad_from(prm, row, prob_pair(log_p, log_q), softmax_s, is_target, g_hard, g_soft_scaled);
}

}  // namespace objx::math
