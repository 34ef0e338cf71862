#pragma once
// The accumulation type of every kernel: float64 for float64 inputs, float32 for the rest (SPEC).
#include <type_traits>

namespace objx {

template <typename scalar_t>
using acc_type = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

}  // namespace objx
