#pragma once
// Marks functions that compile for both the CPU kernels and the CUDA kernels.
#if defined(__CUDACC__)
#define OBJX_HD __host__ __device__ __forceinline__
#else
#define OBJX_HD inline
#endif
