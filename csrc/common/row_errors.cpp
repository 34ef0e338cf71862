#include "common/row_errors.h"

#include <algorithm>

#include <ATen/ops/full.h>
#include <c10/util/Exception.h>

namespace objx {

RowErrors::RowErrors(const at::TensorOptions& device) : first(at::full({math::kRowErrorSlots}, kNone, device.dtype(at::kLong))) {}

void RowErrors::note(int kind, int64_t block_row) {
  int64_t& slot = first.mutable_data_ptr<int64_t>()[kind];
  slot = std::min(slot, row_offset + block_row);
}

RowErrors::Found RowErrors::read(const char* fn, const at::Tensor& target, int64_t vocab, int64_t ignore_index,
                                 const at::Tensor& row_numbers) const {
  const at::Tensor host = first.cpu();
  const int64_t* p = host.const_data_ptr<int64_t>();
  const auto row = [&](int64_t r) {
    if (r == kNone) return int64_t(-1);
    return row_numbers.defined() ? row_numbers[r].item<int64_t>() : r;
  };
  const int64_t bad = p[math::kBadTarget];
  TORCH_CHECK_INDEX(bad == kNone, fn, ": target[", row(bad), "] = ", target[bad].item<int64_t>(),
                    " is outside [0, ", vocab, ") and is not ignore_index (", ignore_index, ")");
  return {row(p[math::kEmptyRow]), row(p[math::kEmptyOther])};
}

}  // namespace objx
