#pragma once
// Where each row of a logits input starts (SPEC §0): the ops take [N, V], or [B, T, V] whose two
// leading dims need not flatten (a slice such as logits[:, :-1]). Their rows are read where they
// are, so the slice is not copied; only the vocabulary must be at unit stride.
#include <cstdint>

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "math/hd.h"

namespace objx {

struct RowLayout {
  int64_t stride = 0;  // between consecutive rows of one sequence
  int64_t inner = 0;   // rows per sequence ([B, T, V]: T); 0: a single run of rows ([N, V])
  int64_t outer = 0;   // between sequences

  // Element offset of row r (rows numbered b * T + t).
  OBJX_HD int64_t offset(int64_t r) const { return inner == 0 ? r * stride : (r / inner) * outer + (r % inner) * stride; }
};

// x: [N, V] or [B, T, V].
inline RowLayout row_layout(const at::Tensor& x) {
  if (x.dim() == 2) return {x.stride(0), 0, 0};
  if (x.size(1) <= 1 || x.stride(0) == x.size(1) * x.stride(1)) return {x.size(1) <= 1 ? x.stride(0) : x.stride(1), 0, 0};
  return {x.stride(1), x.size(1), x.stride(0)};
}

// Rows of x ([N, V] or [B, T, V]) and its vocabulary.
inline int64_t row_count(const at::Tensor& x) { return x.dim() == 3 ? x.size(0) * x.size(1) : x.size(0); }
inline int64_t vocab_size(const at::Tensor& x) { return x.size(-1); }

// x as the kernels read it: 2-D or 3-D (else a ValueError naming `name` of `fn`), the vocabulary
// at unit stride (copied only when it is not).
inline at::Tensor kernel_rows(const at::Tensor& x, const char* fn, const char* name) {
  TORCH_CHECK_VALUE(x.dim() == 2 || x.dim() == 3, fn, ": ", name, " must be [N, V] or [B, T, V], got shape ",
                    x.sizes());
  return x.stride(-1) == 1 || x.size(-1) <= 1 ? x : x.contiguous();
}

}  // namespace objx
