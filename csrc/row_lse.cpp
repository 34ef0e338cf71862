// The row_logsumexp op's entry point: argument checks, then the device's kernel
// (csrc/cpu/row_lse.cpp, csrc/cuda/row_lse.cu), registered once for both devices.
#include "objx/row_lse.h"

#include <cmath>

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include "objx/nvtx.h"
#include "objx/prob_loss.h"

namespace objx {
namespace {

at::Tensor row_logsumexp(const at::Tensor& x, double temperature) {
  NvtxRange range("objx::row_logsumexp");
  TORCH_CHECK_VALUE(x.dim() == 2, "objx.row_logsumexp: x must be 2-D [N, V], got shape ", x.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), "objx.row_logsumexp: x must be float64, float32, bfloat16 "
                   "or float16, got ", x.scalar_type());
  TORCH_CHECK_VALUE(std::isfinite(temperature) && temperature > 0,
                    "objx.row_logsumexp: temperature must be finite and > 0, got ", temperature);
  return row_logsumexp_rows(x.stride(1) == 1 || x.size(1) <= 1 ? x : x.contiguous(), temperature);
}

}  // namespace

void check_shard_row_lse(const char* fn, const at::Tensor& logits, const at::Tensor& row_lse) {
  const auto acc = prob_acc_dtype(logits.scalar_type());
  TORCH_CHECK_VALUE(row_lse.dim() == 2 && row_lse.size(0) == logits.size(0) && row_lse.size(1) == 2, fn,
                    ": row_lse must be [", logits.size(0), ", 2], got shape ", row_lse.sizes());
  TORCH_CHECK_TYPE(row_lse.scalar_type() == acc, fn, ": row_lse must be ", acc, ", got ", row_lse.scalar_type());
  TORCH_CHECK_VALUE(row_lse.device() == logits.device(), fn, ": row_lse is on ", row_lse.device(),
                    " but the logits are on ", logits.device());
}

TORCH_LIBRARY_IMPL(objx, CPU, m) { m.impl("row_logsumexp", &row_logsumexp); }

TORCH_LIBRARY_IMPL(objx, CUDA, m) { m.impl("row_logsumexp", &row_logsumexp); }

}  // namespace objx
