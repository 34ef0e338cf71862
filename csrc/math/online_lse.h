#pragma once
// Online log-sum-exp over pieces or tiles of a row: a running (max, sum of exp(z - max)).
// Merging two partial states is associative, so parts can be combined in any fixed order.
#include <cmath>
#include <limits>

#include "math/hd.h"

namespace objx::math {

template <typename acc_t>
struct LseState {
  acc_t max;  // running maximum (-inf when empty)
  acc_t sum;  // sum of exp(z - max)
};

template <typename acc_t>
OBJX_HD LseState<acc_t> lse_empty() {
  return {-std::numeric_limits<acc_t>::infinity(), acc_t(0)};
}

// exp(x - m) where m is a running maximum; an all -inf prefix (m = -inf) contributes 0,
// while a NaN x still yields NaN so that it reaches the loss.
template <typename acc_t>
OBJX_HD acc_t exp_shifted(acc_t x, acc_t m) {
  using std::exp;
  const acc_t shift = m == -std::numeric_limits<acc_t>::infinity() ? acc_t(0) : m;
  return exp(x - shift);
}

template <typename acc_t>
OBJX_HD LseState<acc_t> lse_merge(LseState<acc_t> a, LseState<acc_t> b) {
  const acc_t m = a.max > b.max ? a.max : b.max;
  return {m, a.sum * exp_shifted(a.max, m) + b.sum * exp_shifted(b.max, m)};
}

// Adds one logit with a single exp: rescale only when the maximum moves.
template <typename acc_t>
OBJX_HD void lse_add(LseState<acc_t>& s, acc_t x) {
  using std::exp;
  if (x > s.max) {
    s.sum = s.sum * exp_shifted(s.max, x) + acc_t(1);
    s.max = x;
  } else if (x != -std::numeric_limits<acc_t>::infinity()) {
    s.sum += exp(x - s.max);  // NaN x (or a NaN max) lands here and poisons the sum
  }
}

template <typename acc_t>
OBJX_HD acc_t lse_finish(LseState<acc_t> s) {
  using std::log;
  if (s.max == -std::numeric_limits<acc_t>::infinity()) return s.max + s.sum;  // -inf, or NaN if a NaN was seen
  return s.max + log(s.sum);
}

// A row reduced with its target logit z_y held out of the sum: the state starts as
// gold_seed(z_y) (so the max covers z_y) and never adds exp(z_y - max). Keeping the large gold term
// out of the running sum leaves the sum of the other terms exact to float rounding, which 1 - p
// needs when p is near 1 (log1m, -p^K and z-loss amplify it by up to 1/eps).
template <typename acc_t>
OBJX_HD LseState<acc_t> gold_seed(acc_t z_y) {
  return {z_y, acc_t(0)};
}

template <typename acc_t>
struct GoldLse {
  acc_t lse;   // log sum_j exp(z_j)
  acc_t logp;  // z_y - lse
};

template <typename acc_t>
OBJX_HD GoldLse<acc_t> finish_with_gold(LseState<acc_t> others, acc_t z_y) {
  using std::exp;
  using std::log;
  using std::log1p;
  const acc_t m = others.max;
  const acc_t gold = exp_shifted(z_y, m);
  const acc_t lse = m + log(others.sum + gold);
  // log p = -log(1 + sum_others / exp(z_y - m)); the direct form when that ratio would overflow.
  const acc_t gap = m - z_y;
  const acc_t logp = gap < acc_t(60) ? -log1p(others.sum * exp(gap)) : z_y - lse;
  return {lse, logp};
}

}  // namespace objx::math
