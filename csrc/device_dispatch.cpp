// Device dispatch of the kernels that host code (op entry points, the fused LM-head losses) calls; their
// CPU and CUDA bodies live beside the logits kernels of the same family.
#include <limits>

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include "objx/distill.h"
#include "objx/prob_loss_chunks.h"
#include "objx/row_lse.h"
#include "objx/vocab_divergence.h"

namespace objx {
namespace {

[[noreturn, maybe_unused]] void no_cuda() {
  TORCH_CHECK(false, "objx was built without CUDA kernels (objx.build_info()); rebuild with nvcc available");
}

}  // namespace

ProbTileState prob_tile_state(int64_t rows, const at::TensorOptions& acc_options) {
  return {at::full({rows}, -std::numeric_limits<double>::infinity(), acc_options),
          at::zeros({rows}, acc_options), at::zeros({rows}, acc_options), at::zeros({rows}, acc_options)};
}

void prob_tile_reduce(const at::Tensor& tile, const at::Tensor& target, int64_t col_offset,
                      const ProbLossOptions& opt, ProbTileState& state) {
  if (!tile.is_cuda()) return cpu::prob_tile_reduce(tile, target, col_offset, opt, state);
#ifdef OBJX_WITH_CUDA
  cuda::prob_tile_reduce(tile, target, col_offset, opt, state);
#else
  no_cuda();
#endif
}

ProbLossForward prob_tile_finish(const ProbTileState& state, const at::Tensor& target,
                                 const ProbLossOptions& opt, int64_t vocab) {
  if (!target.is_cuda()) return cpu::prob_tile_finish(state, target, opt, vocab);
#ifdef OBJX_WITH_CUDA
  return cuda::prob_tile_finish(state, target, opt, vocab);
#else
  no_cuda();
#endif
}

void prob_tile_grad(at::Tensor& tile, const at::Tensor& target, int64_t col_offset,
                    const ProbLossSaved& saved, const ProbLossOptions& opt, int64_t vocab) {
  if (!tile.is_cuda()) return cpu::prob_tile_grad(tile, target, col_offset, saved, opt, vocab);
#ifdef OBJX_WITH_CUDA
  cuda::prob_tile_grad(tile, target, col_offset, saved, opt, vocab);
#else
  no_cuda();
#endif
}

DistillForward distill_rows_forward(const DistillInputs& in) {
  if (!in.student.is_cuda()) return cpu::distill_rows_forward(in);
#ifdef OBJX_WITH_CUDA
  return cuda::distill_rows_forward(in);
#else
  no_cuda();
#endif
}

at::Tensor distill_rows_backward(const DistillInputs& in, const DistillSaved& saved) {
  if (!in.student.is_cuda()) return cpu::distill_rows_backward(in, saved);
#ifdef OBJX_WITH_CUDA
  return cuda::distill_rows_backward(in, saved);
#else
  no_cuda();
#endif
}

DivForward vocab_divergence_rows(const DivInputs& in) {
  if (!in.policy.is_cuda()) return cpu::vocab_divergence_rows(in);
#ifdef OBJX_WITH_CUDA
  return cuda::vocab_divergence_rows(in);
#else
  no_cuda();
#endif
}

at::Tensor vocab_divergence_rows_backward(const DivInputs& in, const at::Tensor& grad_div, const at::Tensor& stats) {
  if (!in.policy.is_cuda()) return cpu::vocab_divergence_rows_backward(in, grad_div, stats);
#ifdef OBJX_WITH_CUDA
  return cuda::vocab_divergence_rows_backward(in, grad_div, stats);
#else
  no_cuda();
#endif
}

at::Tensor distill_rows_shard_sums(const DistillInputs& in, const at::Tensor& row_lse) {
  if (!in.student.is_cuda()) return cpu::distill_rows_shard_sums(in, row_lse);
#ifdef OBJX_WITH_CUDA
  return cuda::distill_rows_shard_sums(in, row_lse);
#else
  no_cuda();
#endif
}

at::Tensor vocab_divergence_rows_shard_sums(const DivInputs& in, const at::Tensor& row_lse) {
  if (!in.policy.is_cuda()) return cpu::vocab_divergence_rows_shard_sums(in, row_lse);
#ifdef OBJX_WITH_CUDA
  return cuda::vocab_divergence_rows_shard_sums(in, row_lse);
#else
  no_cuda();
#endif
}

at::Tensor row_logsumexp_rows(const at::Tensor& x, double temperature) {
  if (!x.is_cuda()) return cpu::row_logsumexp_rows(x, temperature);
#ifdef OBJX_WITH_CUDA
  return cuda::row_logsumexp_rows(x, temperature);
#else
  no_cuda();
#endif
}

}  // namespace objx
