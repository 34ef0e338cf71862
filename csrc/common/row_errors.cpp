#include "common/row_errors.h"

#include <algorithm>

#include <ATen/ops/full.h>

namespace objx {

RowErrors::RowErrors(const at::TensorOptions& device) : first(at::full({math::kRowErrorSlots}, kNone, device.dtype(at::kLong))) {}

void RowErrors::note(int kind, int64_t block_row) {
  int64_t& slot = first.mutable_data_ptr<int64_t>()[kind];
  slot = std::min(slot, row_offset + block_row);
}

RowErrors::Found RowErrors::read() const {
  const at::Tensor host = first.cpu();
  const int64_t* p = host.const_data_ptr<int64_t>();
  const auto row = [](int64_t r) { return r == kNone ? int64_t(-1) : r; };
  return {row(p[math::kBadTarget]), row(p[math::kEmptyRow]), row(p[math::kEmptyOther])};
}

}  // namespace objx
