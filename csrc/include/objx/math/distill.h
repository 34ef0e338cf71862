#pragma once
// SPEC §2: per-element terms and gradients of the distillation losses, shared by the CPU and
// CUDA kernels. A row is reduced in two passes (four log-sum-exps, then the divergence sum) and
// differentiated in a third from the per-row scalars of DistillRow.
#include <cmath>
#include <limits>

#include "objx/math/hd.h"

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
// sum_k q_k a_k of pass 2 (the backward's inputs).
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

// x * (log_x - log_y) with 0 * anything = 0 (an entry of probability 0 contributes nothing).
template <typename acc_t>
OBJX_HD acc_t xlogratio(acc_t log_x, acc_t log_y) {
  using std::exp;
  return log_x == -std::numeric_limits<acc_t>::infinity() ? acc_t(0) : exp(log_x) * (log_x - log_y);
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

// One entry's p, q and log m, m = beta p + (1 - beta) q. The log of the linear sum while it is a
// normal number: one log on top of the two exps every caller needs anyway, against log_mixture's
// exp, log1p and two logs, and no less accurate (the sum of two positives loses nothing). When
// both probabilities underflow, the log-space form keeps log m finite.
template <typename acc_t>
struct MixtureEntry {
  acc_t p, q, log_m;
};

template <typename acc_t>
OBJX_HD MixtureEntry<acc_t> mixture_entry(acc_t beta, acc_t log_p, acc_t log_q) {
  using std::exp;
  using std::log;
  const acc_t p = exp(log_p), q = exp(log_q);
  const acc_t m = beta * p + (acc_t(1) - beta) * q;
  return {p, q, m >= std::numeric_limits<acc_t>::min() ? log(m) : log_mixture(beta, log_p, log_q)};
}

// x (log_x - log_m) from x = e^{log_x}, 0 where x is exactly 0 (log_x = -inf).
template <typename acc_t>
OBJX_HD acc_t xlogratio_from(acc_t x, acc_t log_x, acc_t log_m) {
  return log_x == -std::numeric_limits<acc_t>::infinity() ? acc_t(0) : x * (log_x - log_m);
}

// The JSD entry: its divergence term beta p log(p/m) + (1 - beta) q log(q/m) and
// a = dD/dq = (1 - beta) log(q/m) (0 where q = 0).
template <typename acc_t>
struct JsdEntry {
  acc_t term, a, q;
};

template <typename acc_t>
OBJX_HD JsdEntry<acc_t> jsd_entry(acc_t beta, acc_t log_p, acc_t log_q) {
  const MixtureEntry<acc_t> e = mixture_entry(beta, log_p, log_q);
  const acc_t term = beta * xlogratio_from(e.p, log_p, e.log_m) + (acc_t(1) - beta) * xlogratio_from(e.q, log_q, e.log_m);
  const acc_t a = log_q == -std::numeric_limits<acc_t>::infinity() ? acc_t(0) : (acc_t(1) - beta) * (log_q - e.log_m);
  return {term, a, e.q};
}

// One entry's contributions to the raw divergence sum D and to sum_k q_k a_k, a_k = dD/dq_k for
// the methods differentiated by chaining through the softmax (jsd, tvd; 0 for the others).
template <typename acc_t>
OBJX_HD void distill_terms(const DistillParams<acc_t>& prm, acc_t log_p, acc_t log_q, acc_t& term, acc_t& qa) {
  using std::exp;
  using std::fabs;
  qa = acc_t(0);
  switch (prm.method) {
    case DistillMethod::kReverseKl: term = xlogratio(log_q, log_p); break;
    case DistillMethod::kJsd: {
      const JsdEntry<acc_t> e = jsd_entry(prm.beta, log_p, log_q);
      term = e.term;
      qa = e.q * e.a;
      break;
    }
    case DistillMethod::kTvd: {
      const acc_t p = exp(log_p), q = exp(log_q);
      term = acc_t(0.5) * fabs(p - q);
      qa = q * half_sign_diff(q, p);
      break;
    }
    default: term = xlogratio(log_p, log_q);  // KL(p || q): ttm, wttm, kd, forward_kl
  }
}

// One entry's contributions to (D, Σ q a) under the row's log-sum-exps: the body of pass 2.
template <typename acc_t>
OBJX_HD void distill_entry_sums(const DistillParams<acc_t>& prm, const DistillRow<acc_t>& row, acc_t s, acc_t t,
                                acc_t& term, acc_t& qa) {
  acc_t log_p, log_q;
  distill_logs(prm, row, s, t, log_p, log_q);
  distill_terms(prm, log_p, log_q, term, qa);
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

// d soft / d s_j for one entry.
template <typename acc_t>
OBJX_HD acc_t distill_soft_grad(const DistillParams<acc_t>& prm, const DistillRow<acc_t>& row, acc_t log_p,
                                acc_t log_q) {
  using std::exp;
  const acc_t T = prm.temperature;
  if (prm.method == DistillMethod::kJsd) {  // jsd_entry takes the exponentials itself
    const JsdEntry<acc_t> e = jsd_entry(prm.beta, log_p, log_q);
    return e.q * (e.a - row.qa) / T;
  }
  const acc_t p = exp(log_p), q = exp(log_q);
  switch (prm.method) {
    case DistillMethod::kTtm: return q - p;
    case DistillMethod::kWttm: return distill_wttm_weight(prm, row) * (q - p);
    case DistillMethod::kKd: return T * (q - p);
    case DistillMethod::kForwardKl: return (q - p) / T;
    case DistillMethod::kReverseKl:
      return q == acc_t(0) ? acc_t(0) : q * (log_q - log_p - row.div) / T;
    default: return q * (half_sign_diff(q, p) - row.qa) / T;  // tvd
  }
}

// The saved per-row scalars (a [N, kDistillRowStats] row) as a DistillRow.
template <typename acc_t>
OBJX_HD DistillRow<acc_t> distill_row_from(const acc_t* st) {
  return {st[0], st[1], st[2], st[3], st[4], st[5]};
}

// d loss / d s_j of one entry: g_soft * d soft / d s_j + g_hard * (softmax(s)_j - [j = y]).
template <typename acc_t>
OBJX_HD acc_t distill_entry_grad(const DistillParams<acc_t>& prm, const DistillRow<acc_t>& row, acc_t s, acc_t t,
                                 bool is_target, acc_t g_hard, acc_t g_soft) {
  using std::exp;
  acc_t log_p, log_q;
  distill_logs(prm, row, s, t, log_p, log_q);
  acc_t v = g_soft * distill_soft_grad(prm, row, log_p, log_q);
  if (g_hard != acc_t(0)) v += g_hard * (exp(s - row.lse_s1) - (is_target ? acc_t(1) : acc_t(0)));
  return v;
}

}  // namespace objx::math
