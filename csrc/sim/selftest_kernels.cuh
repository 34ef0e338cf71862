#pragma once
// Kernels that check the CUDA simulator itself: selftest.cu runs them as objx_sim ops for the test
// suite, sim_check.cpp runs them standalone.
#include <cstdint>

#include "sim/cuda_sim.h"

namespace objx::sim::selftest {

constexpr int kThreads = 256;
constexpr int kWarp = 32;

// Each thread sums a strided part of row blockIdx.x into partial[]; thread 0 adds the partial sums.
// Without the barrier thread 0 reads slots that threads scheduled after it have not written yet.
__global__ void block_sum_kernel(const float* __restrict__ x, int64_t cols, bool barrier, float* __restrict__ out) {
  __shared__ float partial[kThreads];
  const float* row = x + blockIdx.x * cols;
  float s = 0;
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) s += row[j];
  partial[threadIdx.x] = s;
  if (barrier) __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0;  // so that, with the barrier, the sum is exact to float rounding
    for (unsigned i = 0; i < blockDim.x; ++i) total += partial[i];
    out[blockIdx.x] = static_cast<float>(total);
  }
}

__device__ __forceinline__ float warp_butterfly_sum(float v) {
  for (int offset = kWarp / 2; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// A butterfly within each warp, then warp 0 over the warps' sums through shared memory.
__global__ void warp_sum_kernel(const float* __restrict__ x, int64_t cols, float* __restrict__ out) {
  __shared__ float warp_sums[kWarp];
  const float* row = x + blockIdx.x * cols;
  const unsigned lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  float s = 0;
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) s += row[j];
  s = warp_butterfly_sum(s);
  if (lane == 0) warp_sums[warp] = s;
  __syncthreads();
  if (warp == 0) {
    s = warp_butterfly_sum(lane < blockDim.x / kWarp ? warp_sums[lane] : 0.0f);
    if (lane == 0) out[blockIdx.x] = s;
  }
}

// Thread 0 copies x[index] to *out: an index past the end is a heap overflow AddressSanitizer reports.
__global__ void read_element_kernel(const float* x, int64_t index, float* out) {
  if (threadIdx.x == 0) *out = x[index];
}

// Every thread of every block lowers *slot to its value.
__global__ void atomic_min_kernel(const unsigned long long* __restrict__ values, int64_t n,
                                  unsigned long long* __restrict__ slot) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) atomicMin(slot, values[i]);
}

}  // namespace objx::sim::selftest
