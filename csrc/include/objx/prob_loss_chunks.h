#pragma once
// Tile kernels of the fused (LM-head) prob_loss: the host code produces the logits one
// [rows, V_chunk] tile at a time with a GEMM and hands each tile to these. Each has a CPU and a
// CUDA implementation; the functions outside the device namespaces pick by the tile's device.
#include <ATen/core/Tensor.h>

#include "objx/prob_loss.h"

namespace objx {

// Per-row running reduction across tiles (accumulation dtype): online LSE of every logit except
// the target's, the target's logit once seen, and the sum of the logits (label smoothing).
struct ProbTileState {
  at::Tensor max, sum, z_gold, sum_z;
};
ProbTileState prob_tile_state(int64_t rows, const at::TensorOptions& acc_options);

// Folds a tile holding columns [col_offset, col_offset + tile.size(1)) into the state.
void prob_tile_reduce(const at::Tensor& tile, const at::Tensor& target, int64_t col_offset,
                      const ProbLossOptions& opt, ProbTileState& state);
// Per-row loss, lse, log p_y and counted mask from the finished state (raises on bad targets).
ProbLossForward prob_tile_finish(const ProbTileState& state, const at::Tensor& target,
                                 const ProbLossOptions& opt, int64_t vocab);
// Overwrites a logits tile with d(sum_r grad_loss[r] loss[r]) / d logits for its columns.
void prob_tile_grad(at::Tensor& tile, const at::Tensor& target, int64_t col_offset,
                    const ProbLossSaved& saved, const ProbLossOptions& opt, int64_t vocab);

namespace cpu {
void prob_tile_reduce(const at::Tensor&, const at::Tensor&, int64_t, const ProbLossOptions&, ProbTileState&);
ProbLossForward prob_tile_finish(const ProbTileState&, const at::Tensor&, const ProbLossOptions&, int64_t);
void prob_tile_grad(at::Tensor&, const at::Tensor&, int64_t, const ProbLossSaved&, const ProbLossOptions&, int64_t);
}  // namespace cpu

namespace cuda {
void prob_tile_reduce(const at::Tensor&, const at::Tensor&, int64_t, const ProbLossOptions&, ProbTileState&);
ProbLossForward prob_tile_finish(const ProbTileState&, const at::Tensor&, const ProbLossOptions&, int64_t);
void prob_tile_grad(at::Tensor&, const at::Tensor&, int64_t, const ProbLossSaved&, const ProbLossOptions&, int64_t);
}  // namespace cuda

}  // namespace objx
