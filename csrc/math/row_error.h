#pragma once
// The errors a forward kernel can find in a row, as slot numbers of common/row_errors.h (0: none).

namespace objx::math {

constexpr int kBadTarget = 1;  // a target outside [0, V) that is not ignore_index
constexpr int kEmptyRow = 2;   // a counted row whose logits are all -inf
constexpr int kEmptyOther = 3; // the same in the second logits of a pair (distillation's teacher)
constexpr int kRowErrorSlots = 4;

}  // namespace objx::math
