// Device dispatch of the prob_loss tile kernels (their CPU and CUDA bodies live beside the
// logits kernels of the same family).
#include <limits>

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include "objx/prob_loss_chunks.h"

namespace objx {
namespace {

[[noreturn]] void no_cuda() {
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

}  // namespace objx
