#pragma once
// A piece of a row as math::ProbPair entries for the CPU kernels: the caller fills the logs, then one
// vectorised exp call per array turns them into probabilities (the scalar libm exp per entry was
// most of the divergence and gradient passes' time).
#include <cstdint>

#include "math/distill.h"
#include "common/vec_row.h"

namespace objx {

// Entries per piece: four arrays of them stay in L1 beside the row.
constexpr int64_t kPairPiece = 1024;

template <typename acc_t>
struct PairPiece {
  static constexpr int64_t kSize = kPairPiece;
  acc_t log_p[kSize], log_q[kSize], p[kSize], q[kSize];

  void take_exps(int64_t n) {
    vec_exp(log_p, n, p);
    vec_exp(log_q, n, q);
  }
  math::ProbPair<acc_t> operator[](int64_t i) const { return {log_p[i], log_q[i], p[i], q[i]}; }
};

// sum_i x_i in float64 over eight lanes in a fixed order: the same result on every run, without
// the one-add-at-a-time dependency chain of a single accumulator.
template <typename acc_t>
double piece_sum(const acc_t* x, int64_t n) {
  constexpr int kLanes = 8;
  double lane[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int k = 0; k < kLanes; ++k) lane[k] += static_cast<double>(x[i + k]);
  double tail = 0.0;
  for (; i < n; ++i) tail += static_cast<double>(x[i]);
  return ((lane[0] + lane[4]) + (lane[1] + lane[5])) + ((lane[2] + lane[6]) + (lane[3] + lane[7])) + tail;
}

}  // namespace objx
