#pragma once
// The vocab_divergence family's contract between its entry file (ops.cpp) and its kernels (cpu.cpp,
// cuda.cu): checked inputs, outputs and the kernel table each device provides (SPEC §3.4).
#include <optional>
#include <string>
#include <tuple>

#include <ATen/core/Tensor.h>

#include "common/row_layout.h"
#include "math/divergence.h"

namespace objx {

// One call's checked inputs: logits [N, V] or [B, T, V] at unit vocabulary stride, each read through
// its own layout (common/row_layout.h); mask contiguous [rows] or undefined.
struct DivInputs {
  std::string kind;
  double alpha;
  at::Tensor policy, ref, mask;
  RowLayout p_rows = row_layout(policy), r_rows = row_layout(ref);
  int64_t rows = row_count(policy), vocab = vocab_size(policy);
};

template <typename acc_t>
math::DivParams<acc_t> make_div_params(const DivInputs& in);

// Forward: per-row D (0 where masked out) and the [N, 4] row statistics of the backward.
using DivForward = std::tuple<at::Tensor, at::Tensor>;

struct DivKernels {
  DivForward (*forward)(const DivInputs& in);
  at::Tensor (*backward)(const DivInputs& in, const at::Tensor& grad_div, const at::Tensor& stats);
  // A vocabulary shard's part of each row's sums, [N, 2] (agg, pa of math::DivRow), with log p and
  // log q normalised by the whole vocabulary's log-sum-exps row_lse [N, 2] (policy's, reference's);
  // 0 for rows the mask leaves out.
  at::Tensor (*shard_sums)(const DivInputs& in, const at::Tensor& row_lse);
};
extern const DivKernels kCpuDivKernels;   // divergence/cpu.cpp
extern const DivKernels kCudaDivKernels;  // divergence/cuda.cu

}  // namespace objx
