#pragma once
// SPEC §3.4: per-token divergences between the policy p = softmax(z) and the reference
// q = softmax(r) over the vocabulary, each in log space, and their gradients w.r.t. the policy
// logits. A row is reduced in two passes (both log-sum-exps, then one sum) and differentiated in a
// third from the per-row scalars of DivRow.
#include <cmath>
#include <limits>

#include "math/distill.h"  // ProbPair, xlogratio, log_mixture_of, half_sign_diff
#include "math/hd.h"

namespace objx::math {

enum class DivKind : int { kKl = 0, kReverseKl, kJs, kHellinger, kBhattacharyya, kRenyi, kAlpha, kTv };

template <typename acc_t>
struct DivParams {
  DivKind kind;
  acc_t alpha;  // renyi / alpha order (div_alpha)
  int64_t vocab;
};

// Per-row scalars: lse of both logits, then the pass-2 sum `agg` (D for kl/reverse_kl; BC for
// hellinger/bhattacharyya; S = sum p^a q^(1-a) for alpha, log S for renyi; D for js/tv) and `pa`
// (sum_k p_k a_k for js/tv; S - 1 summed term by term for renyi, see renyi_log_sum).
template <typename acc_t>
struct DivRow {
  acc_t lse_p, lse_q, agg, pa;
};
constexpr int kDivRowStats = 4;

// p^a q^(1-a) in log space. An entry outside both supports contributes 0, as does one the policy
// gives probability 0 when a > 0 (the log-space form alone would give inf - inf there).
template <typename acc_t>
OBJX_HD acc_t div_power_mean(acc_t alpha, acc_t log_p, acc_t log_q) {
  using std::exp;
  constexpr acc_t ninf = -std::numeric_limits<acc_t>::infinity();
  if (log_p == ninf && (alpha > acc_t(0) || log_q == ninf)) return acc_t(0);
  return exp(alpha * log_p + (acc_t(1) - alpha) * log_q);
}

// Renyi's summand in log space, log(p^a q^(1-a)) (-inf where div_power_mean gives 0). +inf (q = 0 < p,
// a > 1: the divergence is infinite) is held at the largest finite value, so that a log-sum-exp over
// several such entries stays +inf instead of inf - inf.
template <typename acc_t>
OBJX_HD acc_t renyi_log_term(acc_t alpha, acc_t log_p, acc_t log_q) {
  constexpr acc_t ninf = -std::numeric_limits<acc_t>::infinity();
  if (log_p == ninf && (alpha > acc_t(0) || log_q == ninf)) return ninf;
  const acc_t t = alpha * log_p + (acc_t(1) - alpha) * log_q;
  return t > std::numeric_limits<acc_t>::max() ? std::numeric_limits<acc_t>::max() : t;
}

// p^a q^(1-a) - p = p expm1((a-1)(log p - log q)), 0 where p = 0: summed over the row, S - 1 without
// the cancellation of S's leading 1 (renyi_log_sum).
template <typename acc_t>
OBJX_HD acc_t renyi_excess(acc_t alpha, acc_t p, acc_t log_p, acc_t log_q) {
  using std::expm1;
  return p == acc_t(0) ? acc_t(0) : p * expm1((alpha - acc_t(1)) * (log_p - log_q));
}

// log S from the row's log-sum-exp of renyi_log_term (lse) and its sum of renyi_excess (excess): near
// S = 1, where D = log S / (a - 1) is small and a - 1 may be too, log1p of the excess keeps the digits
// that rounding S itself loses (1e-7 of S is all of D at a = 1.01 when D ~ 1e-5); elsewhere the log-sum-exp,
// which cannot overflow (S = e^171 at a = 10 is a finite D ~ 19). Each term of the excess is at most S,
// so none overflows inside the window.
// The excess is needed only for orders near 1: elsewhere 1 / (a - 1) amplifies log S's rounding at
// most twofold. A log-sum-exp that reached the largest finite value came from an infinite summand
// (renyi_log_term).
template <typename acc_t>
OBJX_HD bool renyi_near_one(acc_t alpha) {
  return alpha > acc_t(0.5) && alpha < acc_t(1.5);
}

template <typename acc_t>
OBJX_HD acc_t renyi_log_sum(acc_t alpha, acc_t lse, acc_t excess) {
  using std::log1p;
  if (renyi_near_one(alpha) && excess >= acc_t(-0.5) && excess <= acc_t(1)) return log1p(excess);
  return lse >= std::numeric_limits<acc_t>::max() ? std::numeric_limits<acc_t>::infinity() : lse;
}

// w_j / S - p_j of renyi's gradient, w_j = p_j^a q_j^(1-a), from log S: p_j expm1(y), y = (a-1)(log p_j -
// log q_j) - log S, where w_j / S is within a factor e^(1/2) of p_j (the difference of the two would
// cancel, and the gradient multiplies it by a / (a - 1)); the plain difference elsewhere.
template <typename acc_t>
OBJX_HD acc_t renyi_ratio_excess(acc_t alpha, acc_t log_s, acc_t p, acc_t log_p, acc_t log_q) {
  using std::exp;
  using std::expm1;
  using std::fabs;
  const acc_t y = (alpha - acc_t(1)) * (log_p - log_q) - log_s;
  if (fabs(y) < acc_t(0.5)) return p * expm1(y);  // false for a NaN y (p = 0 or q = 0 there)
  return exp(renyi_log_term(alpha, log_p, log_q) - log_s) - p;
}

// One entry's contribution to (agg, pa). hellinger, bhattacharyya, renyi and alpha take their
// power mean from the logs (a product of the exps could underflow where the mean does not).
template <typename acc_t>
OBJX_HD void div_terms(const DivParams<acc_t>& prm, const ProbPair<acc_t>& e, acc_t& agg, acc_t& pa) {
  using std::exp;
  using std::fabs;
  agg = pa = acc_t(0);
  switch (prm.kind) {
    case DivKind::kKl: agg = xlogratio(e.p, e.log_p, e.log_q); break;
    case DivKind::kReverseKl: agg = xlogratio(e.q, e.log_q, e.log_p); break;
    case DivKind::kJs: {
      const acc_t log_m = log_mixture_of(acc_t(0.5), e);
      const acc_t p_term = xlogratio(e.p, e.log_p, log_m);
      agg = acc_t(0.5) * (p_term + xlogratio(e.q, e.log_q, log_m));
      pa = acc_t(0.5) * p_term;
      break;
    }
    case DivKind::kHellinger:
    case DivKind::kBhattacharyya: agg = exp(acc_t(0.5) * (e.log_p + e.log_q)); break;
    case DivKind::kRenyi:  // its row sum is a log-sum-exp of these (the caller's), beside the excess
      agg = renyi_log_term(prm.alpha, e.log_p, e.log_q);
      pa = renyi_near_one(prm.alpha) ? renyi_excess(prm.alpha, e.p, e.log_p, e.log_q) : acc_t(0);
      break;
    case DivKind::kAlpha: agg = div_power_mean(prm.alpha, e.log_p, e.log_q); break;
    case DivKind::kTv:
      agg = acc_t(0.5) * fabs(e.p - e.q);
      pa = e.p * half_sign_diff(e.p, e.q);
      break;
  }
}

// D of SPEC §3.4's table from the row's sums.
template <typename acc_t>
OBJX_HD acc_t div_value(const DivParams<acc_t>& prm, const DivRow<acc_t>& row) {
  using std::log;
  switch (prm.kind) {
    case DivKind::kHellinger: return acc_t(1) - row.agg;
    case DivKind::kBhattacharyya: return -log(row.agg);
    case DivKind::kRenyi: return row.agg / (prm.alpha - acc_t(1));
    case DivKind::kAlpha: return (acc_t(1) - row.agg) / (prm.alpha * (acc_t(1) - prm.alpha));
    default: return row.agg;  // kl, reverse_kl, js, tv
  }
}

// d D / d z_j for one entry (SPEC §3.4's gradient column).
template <typename acc_t>
OBJX_HD acc_t div_grad(const DivParams<acc_t>& prm, const DivRow<acc_t>& row, const ProbPair<acc_t>& e) {
  using std::exp;
  const acc_t p = e.p;
  switch (prm.kind) {
    case DivKind::kKl: return p == acc_t(0) ? acc_t(0) : p * (e.log_p - e.log_q - row.agg);
    case DivKind::kReverseKl: return p - e.q;
    case DivKind::kJs:
      return p == acc_t(0) ? acc_t(0) : p * (acc_t(0.5) * (e.log_p - log_mixture_of(acc_t(0.5), e)) - row.pa);
    case DivKind::kHellinger: return acc_t(0.5) * p * row.agg - acc_t(0.5) * exp(acc_t(0.5) * (e.log_p + e.log_q));
    case DivKind::kBhattacharyya:
      return acc_t(0.5) * p - acc_t(0.5) * exp(acc_t(0.5) * (e.log_p + e.log_q)) / row.agg;
    case DivKind::kRenyi:  // row.agg = log S
      return prm.alpha / (prm.alpha - acc_t(1)) * renyi_ratio_excess(prm.alpha, row.agg, p, e.log_p, e.log_q);
    case DivKind::kAlpha: {
      const acc_t w = div_power_mean(prm.alpha, e.log_p, e.log_q);
      return (p * row.agg - w) / (acc_t(1) - prm.alpha);
    }
    case DivKind::kTv: return p * (half_sign_diff(p, e.q) - row.pa);
  }
  return acc_t(0);
}

}  // namespace objx::math
