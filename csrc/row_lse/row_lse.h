#pragma once
// row_logsumexp: log Σ_j exp(x_ij / temperature) per row, in the accumulation dtype. The
// vocabulary-parallel losses take each shard's log-sum-exps with it before merging them across
// ranks (SPEC §4); this header is the contract between its entry file and its kernels.
#include <ATen/core/Tensor.h>

namespace objx {

// The whole vocabulary's log-sum-exps handed to a shard-sums op: [N, 2] in the accumulation dtype of
// the logits, on their device; errors name row_lse.
void check_shard_row_lse(const char* fn, const at::Tensor& logits, const at::Tensor& row_lse);

struct RowLseKernels {
  // x: [N, V] or [B, T, V] at unit vocabulary stride (common/row_layout.h) -> [rows]; -inf for a
  // row with no mass (or V = 0).
  at::Tensor (*logsumexp)(const at::Tensor& x, double temperature);
};
extern const RowLseKernels kCpuRowLseKernels;   // row_lse/cpu.cpp
extern const RowLseKernels kCudaRowLseKernels;  // row_lse/cuda.cu

}  // namespace objx
