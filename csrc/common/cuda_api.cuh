#pragma once
// The CUDA API objx's kernel files use, in one place: the real one under nvcc, the thread-level
// simulator (sim/cuda_sim.h) in the simulation build, where the host compiler builds the same
// sources. Launches are written OBJX_LAUNCH(grid, block, shared_bytes, stream, kernel<...>)(args).
#include <cstdint>
#include <limits>

#include <c10/core/Device.h>
#include <c10/util/Exception.h>

#if defined(OBJX_CUDA_SIM)
#include "sim/cuda_sim.h"

namespace objx::cuda {
struct DeviceGuard {  // the simulated device is the host: nothing to switch
  explicit DeviceGuard(const c10::Device&) {}
};
inline cudaStream_t current_stream() { return cudaStream_t{}; }
}  // namespace objx::cuda
#define OBJX_LAUNCH_CHECK()

#else
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

namespace objx::cuda {
using DeviceGuard = c10::cuda::CUDAGuard;
inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream(); }
}  // namespace objx::cuda
#define OBJX_LAUNCH(grid, block, shared_bytes, stream, ...) __VA_ARGS__<<<grid, block, shared_bytes, stream>>>
#define OBJX_LAUNCH_CHECK() C10_CUDA_KERNEL_LAUNCH_CHECK()
#endif

namespace objx::cuda {

// The kernels run one block per row on gridDim.x.
inline void check_grid_rows(const char* fn, int64_t rows) {
  TORCH_CHECK_VALUE(rows <= std::numeric_limits<int32_t>::max(), fn, ": too many rows (", rows, ")");
}

}  // namespace objx::cuda
