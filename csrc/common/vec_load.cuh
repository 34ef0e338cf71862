#pragma once
// Block-strided loops over a row's columns that move 16 bytes per load and store (8 bf16/fp16, 4
// float, 2 double) where every row involved is 16-byte aligned, then a scalar tail; otherwise
// scalar throughout. Each thread visits a different subset of columns than a plain
// `j += blockDim.x` loop would, so sums change order (not value beyond rounding).
#include <cstdint>

namespace objx::cuda {

template <typename scalar_t>
struct alignas(16) Pack {
  static constexpr int kSize = 16 / sizeof(scalar_t);
  scalar_t v[kSize];
};

template <typename scalar_t>
__device__ __forceinline__ bool aligned16(const scalar_t* p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

// f(j, a[j]) for the columns of row `a` this thread owns.
template <typename scalar_t, typename F>
__device__ __forceinline__ void for_row(const scalar_t* __restrict__ a, int64_t cols, F&& f) {
  using P = Pack<scalar_t>;
  constexpr int K = P::kSize;
  int64_t done = 0;
  if (aligned16(a)) {
    const int64_t n = cols / K;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
      const P pa = reinterpret_cast<const P*>(a)[i];
#pragma unroll
      for (int k = 0; k < K; ++k) f(i * K + k, pa.v[k]);
    }
    done = n * K;
  }
  for (int64_t j = done + threadIdx.x; j < cols; j += blockDim.x) f(j, a[j]);
}

// f(j, a[j], b[j]) over two rows read together.
template <typename scalar_t, typename F>
__device__ __forceinline__ void for_rows(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b, int64_t cols,
                                         F&& f) {
  using P = Pack<scalar_t>;
  constexpr int K = P::kSize;
  int64_t done = 0;
  if (aligned16(a) && aligned16(b)) {
    const int64_t n = cols / K;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
      const P pa = reinterpret_cast<const P*>(a)[i];
      const P pb = reinterpret_cast<const P*>(b)[i];
#pragma unroll
      for (int k = 0; k < K; ++k) f(i * K + k, pa.v[k], pb.v[k]);
    }
    done = n * K;
  }
  for (int64_t j = done + threadIdx.x; j < cols; j += blockDim.x) f(j, a[j], b[j]);
}

// out[j] = f(j, a[j], b[j]) for the columns of the rows this thread owns.
template <typename scalar_t, typename F>
__device__ __forceinline__ void map_rows(scalar_t* __restrict__ out, const scalar_t* __restrict__ a,
                                         const scalar_t* __restrict__ b, int64_t cols, F&& f) {
  using P = Pack<scalar_t>;
  constexpr int K = P::kSize;
  int64_t done = 0;
  if (aligned16(out) && aligned16(a) && aligned16(b)) {
    const int64_t n = cols / K;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
      const P pa = reinterpret_cast<const P*>(a)[i];
      const P pb = reinterpret_cast<const P*>(b)[i];
      P po;
#pragma unroll
      for (int k = 0; k < K; ++k) po.v[k] = f(i * K + k, pa.v[k], pb.v[k]);
      reinterpret_cast<P*>(out)[i] = po;
    }
    done = n * K;
  }
  for (int64_t j = done + threadIdx.x; j < cols; j += blockDim.x) out[j] = f(j, a[j], b[j]);
}

// out[j] = 0 for the columns this thread owns.
template <typename scalar_t>
__device__ __forceinline__ void zero_row(scalar_t* __restrict__ out, int64_t cols) {
  using P = Pack<scalar_t>;
  constexpr int K = P::kSize;
  int64_t done = 0;
  if (aligned16(out)) {
    const int64_t n = cols / K;
    P zero;
#pragma unroll
    for (int k = 0; k < K; ++k) zero.v[k] = scalar_t(0);
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) reinterpret_cast<P*>(out)[i] = zero;
    done = n * K;
  }
  for (int64_t j = done + threadIdx.x; j < cols; j += blockDim.x) out[j] = scalar_t(0);
}

}  // namespace objx::cuda
