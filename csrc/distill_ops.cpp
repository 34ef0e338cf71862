// The distill ops' entry points: checked inputs handed to the device's kernels (csrc/cpu/distill.cpp,
// csrc/cuda/distill.cu), registered once for both devices.
#include <torch/library.h>

#include "objx/distill.h"
#include "objx/nvtx.h"
#include "objx/row_lse.h"

namespace objx {
namespace {

DistillForward distill_forward(const at::Tensor& student, const at::Tensor& teacher,
                               const std::optional<at::Tensor>& target, std::string method, double temperature,
                               double beta, double hard_weight, double soft_weight, int64_t ignore_index) {
  NvtxRange range("objx::distill_forward");
  return distill_rows_forward(prepare_distill_inputs(
      student, teacher, target, {std::move(method), temperature, beta, hard_weight, soft_weight, ignore_index}));
}

at::Tensor distill_backward(const at::Tensor& grad_loss, const at::Tensor& student, const at::Tensor& teacher,
                            const std::optional<at::Tensor>& target, const at::Tensor& stats, const at::Tensor& counted,
                            std::string method, double temperature, double beta, double hard_weight,
                            double soft_weight, int64_t ignore_index) {
  NvtxRange range("objx::distill_backward");
  const auto in = prepare_distill_inputs(
      student, teacher, target, {std::move(method), temperature, beta, hard_weight, soft_weight, ignore_index});
  return distill_rows_backward(in, prepare_distill_saved(in.student, grad_loss, stats, counted));
}

at::Tensor distill_shard_sums(const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& row_lse,
                              std::string method, double temperature, double beta) {
  NvtxRange range("objx::distill_shard_sums");
  const auto in = prepare_distill_inputs(student, teacher, std::nullopt,
                                         {std::move(method), temperature, beta, 0.0, 1.0, -100});
  check_shard_row_lse("objx.distill_shard_sums", in.student, row_lse);
  return distill_rows_shard_sums(in, row_lse.contiguous());
}

}  // namespace

TORCH_LIBRARY_IMPL(objx, CPU, m) {
  m.impl("distill_forward", &distill_forward);
  m.impl("distill_backward", &distill_backward);
  m.impl("distill_shard_sums", &distill_shard_sums);
}

TORCH_LIBRARY_IMPL(objx, CUDA, m) {
  m.impl("distill_forward", &distill_forward);
  m.impl("distill_backward", &distill_backward);
  m.impl("distill_shard_sums", &distill_shard_sums);
}

}  // namespace objx
