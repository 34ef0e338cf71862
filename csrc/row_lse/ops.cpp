// The row_logsumexp op's entry file: argument checks, then the device's kernel (row_lse/cpu.cpp,
// row_lse/cuda.cu).
#include "row_lse/row_lse.h"

#include <cmath>

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include "common/acc_type.h"
#include "common/kernels.h"
#include "common/nvtx.h"
#include "common/row_layout.h"

namespace objx {
namespace {

template <const RowLseKernels& K>
at::Tensor row_logsumexp(const at::Tensor& x, double temperature) {
  NvtxRange range("objx::row_logsumexp");
  TORCH_CHECK_TYPE(kernel_dtype(x.scalar_type()), "objx.row_logsumexp: x must be float64, float32, bfloat16 "
                   "or float16, got ", x.scalar_type());
  TORCH_CHECK_VALUE(std::isfinite(temperature) && temperature > 0,
                    "objx.row_logsumexp: temperature must be finite and > 0, got ", temperature);
  return K.logsumexp(kernel_rows(x, "objx.row_logsumexp", "x"), temperature);
}

template <const RowLseKernels& K>
void register_ops(torch::Library& m) {
  m.impl("row_logsumexp", &row_logsumexp<K>);
}

}  // namespace

void check_shard_row_lse(const char* fn, const at::Tensor& logits, const at::Tensor& row_lse) {
  const auto acc = acc_dtype(logits.scalar_type());
  const int64_t rows = row_count(logits);
  TORCH_CHECK_VALUE(row_lse.dim() == 2 && row_lse.size(0) == rows && row_lse.size(1) == 2, fn,
                    ": row_lse must be [", rows, ", 2], got shape ", row_lse.sizes());
  TORCH_CHECK_TYPE(row_lse.scalar_type() == acc, fn, ": row_lse must be ", acc, ", got ", row_lse.scalar_type());
  TORCH_CHECK_VALUE(row_lse.device() == logits.device(), fn, ": row_lse is on ", row_lse.device(),
                    " but the logits are on ", logits.device());
}

OBJX_REGISTER(register_ops, kCpuRowLseKernels, kCudaRowLseKernels)

}  // namespace objx
