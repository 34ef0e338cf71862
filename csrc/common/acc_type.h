#pragma once
// The accumulation type of every kernel: float64 for float64 inputs, float32 for the rest (SPEC §0).
#include <type_traits>

#include <c10/core/ScalarType.h>

namespace objx {

template <typename scalar_t>
using acc_type = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

inline at::ScalarType acc_dtype(at::ScalarType input) { return input == at::kDouble ? at::kDouble : at::kFloat; }

// The dtypes the kernels are built for (float8 and other floating types are refused by name).
inline bool kernel_dtype(at::ScalarType t) {
  return t == at::kDouble || t == at::kFloat || t == at::kBFloat16 || t == at::kHalf;
}

}  // namespace objx
