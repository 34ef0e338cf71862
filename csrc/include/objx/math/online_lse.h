#pragma once
// Online log-sum-exp over vocabulary chunks: a row is a running (max, sum of exp(z - max)).
// Merging two partial states is associative, so chunks can be combined in any fixed order.
#include <cmath>
#include <limits>

#include "objx/math/hd.h"

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

template <typename acc_t>
OBJX_HD LseState<acc_t> lse_push(LseState<acc_t> s, acc_t x) {
  return lse_merge(s, LseState<acc_t>{x, acc_t(1)});
}

template <typename acc_t>
OBJX_HD acc_t lse_finish(LseState<acc_t> s) {
  using std::log;
  if (s.max == -std::numeric_limits<acc_t>::infinity()) return s.max + s.sum;  // -inf, or NaN if a NaN was seen
  return s.max + log(s.sum);
}

}  // namespace objx::math
