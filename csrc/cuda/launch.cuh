#pragma once
// Launch-shape checks shared by the CUDA kernels: they run one block per row on gridDim.x.
#include <cstdint>
#include <limits>

#include <c10/util/Exception.h>

namespace objx::cuda {

inline void check_grid_rows(const char* fn, int64_t rows) {
  TORCH_CHECK_VALUE(rows <= std::numeric_limits<int32_t>::max(), fn, ": too many rows (", rows, ")");
}

}  // namespace objx::cuda
