#pragma once
// Host-side contract of the vocab_divergence ops (SPEC §3.4): checked inputs, outputs, and the
// CPU / CUDA kernels they are handed to.
#include <optional>
#include <string>
#include <tuple>

#include <ATen/core/Tensor.h>

#include "objx/math/vocab_divergence.h"

namespace objx {

// One call's checked inputs: logits at unit vocabulary stride, mask contiguous (undefined if none).
struct DivInputs {
  std::string kind;
  double alpha;
  at::Tensor policy, ref, mask;
};

template <typename acc_t>
math::DivParams<acc_t> make_div_params(const DivInputs& in);

// Forward: per-row D (0 where masked out) and the [N, 4] row statistics of the backward.
using DivForward = std::tuple<at::Tensor, at::Tensor>;

// The kernels on checked inputs (CPU and CUDA bodies; the plain names pick by device).
DivForward vocab_divergence_rows(const DivInputs& in);
at::Tensor vocab_divergence_rows_backward(const DivInputs& in, const at::Tensor& grad_div, const at::Tensor& stats);
// A vocabulary shard's part of each row's sums, [N, 2] (agg, pa of math::DivRow), with log p and
// log q normalised by the whole vocabulary's log-sum-exps row_lse [N, 2] (policy's, reference's);
// 0 for rows the mask leaves out.
at::Tensor vocab_divergence_rows_shard_sums(const DivInputs& in, const at::Tensor& row_lse);
namespace cpu {
DivForward vocab_divergence_rows(const DivInputs& in);
at::Tensor vocab_divergence_rows_backward(const DivInputs& in, const at::Tensor& grad_div, const at::Tensor& stats);
at::Tensor vocab_divergence_rows_shard_sums(const DivInputs& in, const at::Tensor& row_lse);
}  // namespace cpu
namespace cuda {
DivForward vocab_divergence_rows(const DivInputs& in);
at::Tensor vocab_divergence_rows_backward(const DivInputs& in, const at::Tensor& grad_div, const at::Tensor& stats);
at::Tensor vocab_divergence_rows_shard_sums(const DivInputs& in, const at::Tensor& row_lse);
}  // namespace cuda

}  // namespace objx
