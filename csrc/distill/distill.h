#pragma once
// The distill family's contract between its entry files (ops.cpp: the logits ops, linear.cpp: the
// ops fused with both LM heads) and its kernels (cpu.cpp, cuda.cu): options, checked inputs,
// outputs and the kernel table each device provides (SPEC §2).
#include <optional>
#include <string>
#include <tuple>

#include <ATen/core/Tensor.h>

#include "common/row_errors.h"
#include "common/row_layout.h"
#include "math/distill.h"

namespace objx {

struct DistillOptions {
  std::string method;
  double temperature;
  double beta;
  double hard_weight;
  double soft_weight;
  int64_t ignore_index;
};

// Checks the options, and the target for `rows` rows on `device` (int64 [rows], or none: then
// hard_weight must be 0); errors name the argument.
void check_distill_options(const DistillOptions& opt, const std::optional<at::Tensor>& target, int64_t rows,
                           const at::Device& device, const char* rows_name);

// One call's checked inputs: logits [N, V] or [B, T, V] at unit vocabulary stride, each read
// through its own layout (common/row_layout.h), target contiguous [rows] (undefined if none).
struct DistillInputs {
  DistillOptions opt;
  at::Tensor student, teacher, target;
  bool has_target;
  RowLayout s_rows = row_layout(student), t_rows = row_layout(teacher);
  int64_t rows = row_count(student), vocab = vocab_size(student);
};
DistillInputs prepare_distill_inputs(const at::Tensor& student, const at::Tensor& teacher,
                                     const std::optional<at::Tensor>& target, DistillOptions opt);

// The backward's per-row inputs, checked; grad_loss in the accumulation dtype, all contiguous.
struct DistillSaved {
  at::Tensor grad_loss, stats, counted;
};
// Checked against `rows_like`: the student logits, or the student's hidden states in the fused head.
DistillSaved prepare_distill_saved(const at::Tensor& rows_like, const at::Tensor& grad_loss, const at::Tensor& stats,
                                   const at::Tensor& counted);

template <typename acc_t>
math::DistillParams<acc_t> make_distill_params(const DistillOptions& opt, int64_t vocab, bool has_target);

// Forward outputs: per-row loss, soft term, hard term, the [N, 6] row statistics the backward
// needs (math::DistillRow), and the counted mask.
using DistillForward = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
DistillForward allocate_distill_forward(int64_t rows, const at::TensorOptions& acc_options);

// Raises for the first row with a bad target or a counted student row that is all -inf, from the
// errors an op's kernels found (one device-to-host read); `row_numbers` as for prob_loss.
void raise_distill_row_errors(const RowErrors& errors, const at::Tensor& target, int64_t vocab, int64_t ignore_index,
                              const at::Tensor& row_numbers = {});

struct DistillKernels {
  // Per-row outputs; rows with an error go to `errors` (the caller raises, after its last kernel).
  DistillForward (*forward)(const DistillInputs& in, RowErrors& errors);
  at::Tensor (*backward)(const DistillInputs& in, const DistillSaved& saved);
  // A vocabulary shard's part of each row's divergence sums, [N, 2] (D, Σ q a), with log p and
  // log q normalised by the whole vocabulary's log-sum-exps row_lse [N, 2] (the compared
  // student's, the teacher's at T); the options' target fields are unused.
  at::Tensor (*shard_sums)(const DistillInputs& in, const at::Tensor& row_lse);
};
extern const DistillKernels kCpuDistillKernels;   // distill/cpu.cpp
extern const DistillKernels kCudaDistillKernels;  // distill/cuda.cu

}  // namespace objx
