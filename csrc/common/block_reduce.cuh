#pragma once
// Block-wide reductions for the CUDA kernels, in a fixed order so that a row's result is
// bit-identical from run to run: a butterfly within each warp, then warp 0 over the warps' results.
#include <cstring>

#include "common/cuda_api.cuh"
#include "math/online_lse.h"

namespace objx::cuda {

constexpr int kWarp = 32;

// A value of any trivially copyable type, exchanged across lanes 4 bytes at a time.
template <typename T>
__device__ __forceinline__ T shfl_xor(T v, int lane_mask) {
  static_assert(sizeof(T) % 4 == 0, "shfl_xor moves 4-byte words");
  int words[sizeof(T) / 4];
  memcpy(words, &v, sizeof(T));
#pragma unroll
  for (int i = 0; i < static_cast<int>(sizeof(T) / 4); ++i) words[i] = __shfl_xor_sync(0xffffffffu, words[i], lane_mask);
  memcpy(&v, words, sizeof(T));
  return v;
}

template <typename T, typename Merge>
__device__ __forceinline__ T warp_reduce(T v, Merge merge) {
#pragma unroll
  for (int off = kWarp / 2; off > 0; off >>= 1) v = merge(v, shfl_xor(v, off));
  return v;
}

// merge(v, empty) == v. Every thread of the block gets the result; blockDim.x must be a multiple
// of 32 and at most 1024. Safe to call repeatedly (the shared slots are free again on return).
template <typename T, typename Merge>
__device__ T block_reduce(T v, T empty, Merge merge) {
  __shared__ T slots[kWarp];
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, warps = blockDim.x / kWarp;
  v = warp_reduce(v, merge);
  if (lane == 0) slots[warp] = v;
  __syncthreads();
  if (warp == 0) {
    T w = warp_reduce(lane < warps ? slots[lane] : empty, merge);
    if (lane == 0) slots[0] = w;
  }
  __syncthreads();
  const T out = slots[0];
  __syncthreads();  // everyone has read the result before the slots are reused
  return out;
}

template <typename acc_t>
__device__ acc_t block_sum(acc_t v) {
  return block_reduce(v, acc_t(0), [](acc_t a, acc_t b) { return a + b; });
}

template <typename acc_t>
__device__ math::LseState<acc_t> block_lse(math::LseState<acc_t> s) {
  return block_reduce(s, math::lse_empty<acc_t>(), [](math::LseState<acc_t> a, math::LseState<acc_t> b) {
    return math::lse_merge(a, b);
  });
}

// An online log-sum-exp state together with a plain sum (the prob kernels' sum of the logits).
template <typename acc_t>
struct LseSum {
  math::LseState<acc_t> lse;
  acc_t sum;
};

template <typename acc_t>
__device__ LseSum<acc_t> block_lse_sum(LseSum<acc_t> s) {
  return block_reduce(s, LseSum<acc_t>{math::lse_empty<acc_t>(), acc_t(0)}, [](LseSum<acc_t> a, LseSum<acc_t> b) {
    return LseSum<acc_t>{math::lse_merge(a.lse, b.lse), a.sum + b.sum};
  });
}

}  // namespace objx::cuda
