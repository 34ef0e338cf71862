#pragma once
// SPEC §1: per-row loss f(p) and gradient weight s_f(p) = -f'(p) p of every probability-based
// objective, plus the row epilogue (thresholds, z-loss, label smoothing) shared by all kernels.
#include <cmath>
#include <limits>

#include "math/hd.h"
#include "math/online_lse.h"
#include "math/row_error.h"

namespace objx::math {

enum class ObjectiveKind : int { kNll = 0, kPower = 1, kLog1m = 2 };

// Everything a kernel needs to know about the objective, in the accumulation type.
template <typename acc_t>
struct ProbLossParams {
  ObjectiveKind kind;
  acc_t param;            // alpha for power, epsilon for log1m
  acc_t min_prob;         // -inf when unset
  acc_t max_prob;         // +inf when unset
  acc_t label_smoothing;  // only with nll
  acc_t z_loss;
  acc_t softcap;          // 0 when unset
  int64_t ignore_index;
  int64_t vocab;
  // Class weights [V] and their sum (one element), on the kernel's device; nullptr when unweighted.
  const acc_t* class_weight = nullptr;
  const acc_t* class_weight_sum = nullptr;
};

// weight[t] of a row whose target t is in [0, V); 1 when unweighted.
template <typename acc_t>
OBJX_HD acc_t target_weight(const ProbLossParams<acc_t>& prm, int64_t t) {
  return prm.class_weight != nullptr ? prm.class_weight[t] : acc_t(1);
}

// sum_j weight_j: V when unweighted, so that the weighted formulas reduce to the plain ones.
template <typename acc_t>
OBJX_HD acc_t weight_total(const ProbLossParams<acc_t>& prm) {
  return prm.class_weight != nullptr ? *prm.class_weight_sum : acc_t(prm.vocab);
}

// f(p) from log p. p^alpha is exp(alpha log p) (SPEC §1), and expm1/log1p keep small terms exact.
template <typename acc_t>
OBJX_HD acc_t objective_value(ObjectiveKind kind, acc_t param, acc_t logp) {
  using std::expm1;
  using std::exp;
  using std::log1p;
  switch (kind) {
    case ObjectiveKind::kPower: return -expm1(param * logp) / param;
    case ObjectiveKind::kLog1m: return log1p(param - exp(logp));
    default: return -logp;
  }
}

// s_f(p): every objective's logits gradient is s_f(p) times the cross-entropy gradient.
template <typename acc_t>
OBJX_HD acc_t objective_weight(ObjectiveKind kind, acc_t param, acc_t logp) {
  using std::exp;
  using std::expm1;
  switch (kind) {
    case ObjectiveKind::kPower: return exp(param * logp);
    case ObjectiveKind::kLog1m: return exp(logp) / (param - expm1(logp));  // 1 - p = -expm1(log p)
    default: return acc_t(1);
  }
}

// A row counts unless its gold probability is outside [min_prob, max_prob]; a NaN p counts,
// so NaN logits reach the loss instead of being filtered out.
template <typename acc_t>
OBJX_HD bool row_passes_thresholds(const ProbLossParams<acc_t>& prm, acc_t p) {
  return !(p < prm.min_prob) && !(p > prm.max_prob);
}

// Logit soft-capping c*tanh(z/c) (Gemma-2 style); its derivative is 1 - (capped/c)^2.
template <typename acc_t>
OBJX_HD acc_t softcap_value(acc_t z, acc_t cap) {
  using std::tanh;
  return cap > acc_t(0) ? cap * tanh(z / cap) : z;
}
template <typename acc_t>
OBJX_HD acc_t softcap_grad(acc_t capped, acc_t cap) {
  if (!(cap > acc_t(0))) return acc_t(1);
  const acc_t t = capped / cap;
  return acc_t(1) - t * t;
}

template <typename acc_t>
struct ProbRowForward {
  acc_t loss;  // 0 when the row does not count
  acc_t logp;  // log p_y (-inf for ignored rows)
  bool counted;
};

// Row epilogue of the forward pass for a row whose target is in [0, V), with class weight w_y.
// lse, logp = log p_y and sum_z (sum_j weight_j z_j, only used with label smoothing) are of the
// soft-capped logits. Smoothing follows F.cross_entropy: eps/V sum_j weight_j (-log p_j).
template <typename acc_t>
OBJX_HD ProbRowForward<acc_t> prob_row_forward(const ProbLossParams<acc_t>& prm, acc_t lse, acc_t logp, acc_t sum_z,
                                               acc_t w_y) {
  using std::exp;
  const acc_t p = exp(logp);
  if (!row_passes_thresholds(prm, p)) return {acc_t(0), logp, false};
  acc_t loss;
  if (prm.label_smoothing != acc_t(0)) {
    const acc_t eps = prm.label_smoothing;
    const acc_t v = acc_t(prm.vocab);
    loss = -(acc_t(1) - eps) * w_y * logp + eps * (lse * (weight_total(prm) / v) - sum_z / v);
  } else {
    loss = w_y * objective_value(prm.kind, prm.param, logp);
  }
  loss += w_y * prm.z_loss * lse * lse;
  return {loss, logp, true};
}

// Everything the forward reports for a row, from its reduction (online LSE of every logit but the
// target's, the target's logit z_gold, and the sum of the logits).
template <typename acc_t>
struct ProbRowResult {
  acc_t loss, lse, logp;
  bool counted;
  int error;     // 0, or kBadTarget / kEmptyRow
  bool correct;  // the row's first argmax is its target (false where ignored)
};

// max_before: the largest logit left of the target's column (-inf if none), for `correct`; the
// state's max covers every logit and z_gold, so z_gold is the first argmax when both agree.
template <typename acc_t>
OBJX_HD ProbRowResult<acc_t> prob_row_finish(const ProbLossParams<acc_t>& prm, int64_t t,
                                             LseState<acc_t> others, acc_t z_gold, acc_t sum_z, acc_t max_before) {
  if (t == prm.ignore_index)
    return {acc_t(0), lse_finish(others), -std::numeric_limits<acc_t>::infinity(), false, 0, false};
  if (t < 0 || t >= prm.vocab) return {acc_t(0), acc_t(0), acc_t(0), false, kBadTarget, false};
  const auto fin = finish_with_gold(others, z_gold);
  const auto out = prob_row_forward(prm, fin.lse, fin.logp, sum_z, target_weight(prm, t));
  const bool empty = out.counted && fin.lse == -std::numeric_limits<acc_t>::infinity();
  const bool correct = others.max == z_gold && max_before < z_gold;
  return {out.loss, fin.lse, out.logp, out.counted, empty ? kEmptyRow : 0, correct};
}

// prob_row_finish for a row reduced over vocabulary tiles, whose running sum of exponentials and of
// logits cross the tiles in float64 (rounding them to float32 once per tile drifts with the tile
// count: 2e-5 relative over 256000 one-column tiles, against SPEC's 1e-6 for any slicing): lse and
// log p_y are finished in float64 and rounded once, so the backward's z_j - lse on tiles without the
// target is off by at most half an ulp of lse (SPEC §5's floor).
template <typename acc_t>
OBJX_HD ProbRowResult<acc_t> prob_tiled_row_finish(const ProbLossParams<acc_t>& prm, int64_t t, acc_t max,
                                                   double sum, acc_t z_gold, double sum_z, acc_t max_before) {
  auto res = prob_row_finish(prm, t, LseState<acc_t>{max, static_cast<acc_t>(sum)}, z_gold,
                             static_cast<acc_t>(sum_z), max_before);
  if (t == prm.ignore_index || t < 0 || t >= prm.vocab) return res;
  const auto wide = finish_with_gold(LseState<double>{max, sum}, static_cast<double>(z_gold));
  const auto fwd = prob_row_forward(prm, static_cast<acc_t>(wide.lse), static_cast<acc_t>(wide.logp),
                                    static_cast<acc_t>(sum_z), target_weight(prm, t));
  res.loss = fwd.loss;
  res.lse = static_cast<acc_t>(wide.lse);
  res.logp = fwd.logp;
  res.counted = fwd.counted;
  res.error = fwd.counted && wide.lse == -std::numeric_limits<double>::infinity() ? kEmptyRow : 0;
  return res;
}

// Columns of a tile [offset, offset + cols) left of target t: all of them, some, or none.
OBJX_HD int64_t columns_before_target(int64_t t, int64_t ignore_index, int64_t offset, int64_t cols) {
  if (t == ignore_index) return 0;
  const int64_t c = t - offset;
  return c < 0 ? 0 : (c > cols ? cols : c);
}

// Column of the target inside a tile of columns [offset, offset + cols), or -1.
OBJX_HD int64_t gold_column(int64_t t, int64_t ignore_index, int64_t offset, int64_t cols) {
  const int64_t c = t - offset;
  return t != ignore_index && c >= 0 && c < cols ? c : -1;
}

// The softmax of a row's backward as p_j = exp((z_j - ref) + shift). With the whole row at hand,
// the target's (soft-capped) logit and the forward's log p_y, which is exact to float rounding of a
// small number (finish_with_gold's log1p): z_j - z_y is exact for nearby values, where z_j - lse
// would carry lse's own rounding, |lse| * 2^-24 (3e-5 relative in p_j for float32 logits near
// 1000). Otherwise (a vocabulary tile without the target, or p_y below e^-60) lse itself.
template <typename acc_t>
struct SoftmaxRef {
  acc_t ref, shift;
};
template <typename acc_t>
OBJX_HD SoftmaxRef<acc_t> softmax_ref(acc_t lse, acc_t logp, bool whole_row_with_target, acc_t z_target) {
  if (whole_row_with_target && logp > acc_t(-60)) return {z_target, logp};
  return {lse, acc_t(0)};
}

// Backward: for a counted row, d loss / d z_j = a * p_j - c * weight_j off the target and `gold`
// at j = y, with z the soft-capped logits (the caller multiplies by the soft-cap derivative) and
// weight_j = 1 when unweighted.
template <typename acc_t>
struct ProbRowGrad {
  acc_t a, c, gold;
};

template <typename acc_t>
OBJX_HD ProbRowGrad<acc_t> prob_row_grad(const ProbLossParams<acc_t>& prm, acc_t grad_row,
                                         acc_t lse, acc_t logp, acc_t w_y) {
  using std::expm1;
  const acc_t eps = prm.label_smoothing;
  const acc_t s = eps != acc_t(0) ? acc_t(1) : objective_weight(prm.kind, prm.param, logp);
  // The smoothing term eps/V sum_j weight_j (lse - z_j) adds eps W / V to a (W = sum_j weight_j).
  const acc_t smooth = eps != acc_t(0) ? eps * (weight_total(prm) / acc_t(prm.vocab)) : acc_t(0);
  const acc_t a = grad_row * (w_y * (s * (acc_t(1) - eps) + acc_t(2) * prm.z_loss * lse) + smooth);
  const acc_t c = grad_row * eps / acc_t(prm.vocab);
  // a p_y - w_y s (1 - eps) - c w_y, written with p_y - 1 = expm1(log p_y): exact when p_y is near
  // 1, where large s_f (log1m, z-loss) would amplify the rounding of p_y.
  const acc_t gold = a * expm1(logp) + grad_row * (smooth + acc_t(2) * prm.z_loss * w_y * lse) - c * w_y;
  return {a, c, gold};
}

}  // namespace objx::math
