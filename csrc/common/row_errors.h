#pragma once
// The first row of each error kind (math/row_error.h) that an op's kernels find, kept on their
// device: an op that launches its kernels once per row block or tile reads it back once, after the
// last launch, instead of synchronising with the host after each.
#include <cstdint>
#include <limits>

#include <ATen/core/Tensor.h>

#include "math/row_error.h"

namespace objx {

struct RowErrors {
  static constexpr int64_t kNone = std::numeric_limits<int64_t>::max();

  at::Tensor first;        // int64 [kRowErrorSlots] on the kernels' device, kNone where no row has it
  int64_t row_offset = 0;  // the op's number of the first row given to the next kernel (its row block)

  explicit RowErrors(const at::TensorOptions& device);
  // CUDA kernels: atomicMin(slots() + kind, row_offset + r).
  unsigned long long* slots() { return reinterpret_cast<unsigned long long*>(first.mutable_data_ptr<int64_t>()); }
  // CPU kernels, after their loop over rows: the first row (of the block) with the error.
  void note(int kind, int64_t block_row);

  struct Found {
    int64_t empty_row, empty_other;  // the caller's row numbers, -1 where none
  };
  // The one device-to-host read of the op; `row_numbers` (if defined) maps the op's rows to the
  // caller's (the fused heads' kept rows). Raises the bad-target IndexError itself, naming `fn` and
  // the value `target` holds at the op's row.
  Found read(const char* fn, const at::Tensor& target, int64_t vocab, int64_t ignore_index,
             const at::Tensor& row_numbers = {}) const;
};

}  // namespace objx
