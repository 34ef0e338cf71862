#pragma once
// Block-wide reductions of online log-sum-exp states and plain sums, in a fixed order so that a
// row's result is bit-identical from run to run.
#include "objx/math/online_lse.h"

namespace objx::cuda {

constexpr int kWarp = 32;

template <typename acc_t>
__device__ __forceinline__ math::LseState<acc_t> warp_lse(math::LseState<acc_t> s) {
#pragma unroll
  for (int off = kWarp / 2; off > 0; off >>= 1) {
    const math::LseState<acc_t> o{__shfl_xor_sync(0xffffffffu, s.max, off),
                                  __shfl_xor_sync(0xffffffffu, s.sum, off)};
    s = math::lse_merge(s, o);
  }
  return s;
}

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t v) {
#pragma unroll
  for (int off = kWarp / 2; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Every thread of the block gets the merged state. blockDim.x must be a multiple of 32, <= 1024.
template <typename acc_t>
__device__ math::LseState<acc_t> block_lse(math::LseState<acc_t> s, acc_t& sum) {
  __shared__ acc_t s_max[kWarp], s_sum[kWarp], s_lin[kWarp];
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, warps = blockDim.x / kWarp;
  s = warp_lse(s);
  sum = warp_sum(sum);
  if (lane == 0) {
    s_max[warp] = s.max;
    s_sum[warp] = s.sum;
    s_lin[warp] = sum;
  }
  __syncthreads();
  if (warp == 0) {
    math::LseState<acc_t> w = lane < warps ? math::LseState<acc_t>{s_max[lane], s_sum[lane]}
                                           : math::lse_empty<acc_t>();
    acc_t lin = lane < warps ? s_lin[lane] : acc_t(0);
    w = warp_lse(w);
    lin = warp_sum(lin);
    if (lane == 0) {
      s_max[0] = w.max;
      s_sum[0] = w.sum;
      s_lin[0] = lin;
    }
  }
  __syncthreads();
  sum = s_lin[0];
  const math::LseState<acc_t> out{s_max[0], s_sum[0]};
  __syncthreads();  // everyone has read the result: the shared slots may be reused by a next call
  return out;
}

// Block-wide sum; every thread gets the result. Safe to call repeatedly.
template <typename acc_t>
__device__ acc_t block_sum(acc_t v) {
  __shared__ acc_t s_part[kWarp];
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, warps = blockDim.x / kWarp;
  v = warp_sum(v);
  if (lane == 0) s_part[warp] = v;
  __syncthreads();
  if (warp == 0) {
    acc_t w = lane < warps ? s_part[lane] : acc_t(0);
    w = warp_sum(w);
    if (lane == 0) s_part[0] = w;
  }
  __syncthreads();
  const acc_t out = s_part[0];
  __syncthreads();
  return out;
}

}  // namespace objx::cuda
