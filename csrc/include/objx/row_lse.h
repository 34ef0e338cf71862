#pragma once
// row_logsumexp: log Σ_j exp(x_ij / temperature) per row, in the accumulation dtype. The vocabulary-parallel
// losses take each shard's log-sum-exps with it before merging them across ranks.
#include <ATen/core/Tensor.h>

namespace objx {

// The whole vocabulary's log-sum-exps handed to a shard-sums op: [N, 2] in the accumulation dtype of
// the logits, on their device; errors name row_lse.
void check_shard_row_lse(const char* fn, const at::Tensor& logits, const at::Tensor& row_lse);

// x: [N, V] at unit vocabulary stride; -inf for a row with no mass (or V = 0).
at::Tensor row_logsumexp_rows(const at::Tensor& x, double temperature);
namespace cpu {
at::Tensor row_logsumexp_rows(const at::Tensor& x, double temperature);
}  // namespace cpu
namespace cuda {
at::Tensor row_logsumexp_rows(const at::Tensor& x, double temperature);
}  // namespace cuda

}  // namespace objx
