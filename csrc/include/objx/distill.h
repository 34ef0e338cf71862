#pragma once
// Host-side contract of the distill ops (SPEC §2): options, checks and outputs shared by the CPU
// and CUDA implementations.
#include <optional>
#include <string>
#include <tuple>

#include <ATen/core/Tensor.h>

#include "objx/math/distill.h"

namespace objx {

struct DistillOptions {
  std::string method;
  double temperature;
  double beta;
  double hard_weight;
  double soft_weight;
  int64_t ignore_index;
};

// Checks student/teacher logits [N, V] (same dtype, device and V), target [N] int64 or none, and
// the options; errors name the argument.
void check_distill_inputs(const at::Tensor& student, const at::Tensor& teacher,
                          const std::optional<at::Tensor>& target, const DistillOptions& opt);

// One call's checked inputs: logits at unit vocabulary stride, target contiguous (undefined if none).
struct DistillInputs {
  DistillOptions opt;
  at::Tensor student, teacher, target;
  bool has_target;
};
DistillInputs prepare_distill_inputs(const at::Tensor& student, const at::Tensor& teacher,
                                     const std::optional<at::Tensor>& target, DistillOptions opt);

// The backward's per-row inputs, checked; grad_loss in the accumulation dtype, all contiguous.
struct DistillSaved {
  at::Tensor grad_loss, stats, counted;
};
DistillSaved prepare_distill_saved(const at::Tensor& student, const at::Tensor& grad_loss, const at::Tensor& stats,
                                   const at::Tensor& counted);

template <typename acc_t>
math::DistillParams<acc_t> make_distill_params(const DistillOptions& opt, int64_t vocab, bool has_target);

// Forward outputs: per-row loss, soft term, hard term, the [N, 6] row statistics the backward
// needs (math::DistillRow), and the counted mask.
using DistillForward = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
DistillForward allocate_distill_forward(int64_t rows, const at::TensorOptions& acc_options);

// Raises for the first row with a bad target or a counted student row that is all -inf (-1: none).
void raise_distill_row_errors(const at::Tensor& target, int64_t vocab, int64_t ignore_index, int64_t bad_target_row,
                              int64_t empty_row);

// The kernels on checked inputs (CPU and CUDA bodies; the plain names pick by device), for the ops
// and for the fused LM-head distillation, which feeds them blocks of logits.
DistillForward distill_rows_forward(const DistillInputs& in);
at::Tensor distill_rows_backward(const DistillInputs& in, const DistillSaved& saved);
// A vocabulary shard's part of each row's divergence sums, [N, 2] (D, Σ q a), with log p and log q
// normalised by the whole vocabulary's log-sum-exps row_lse [N, 2] (the compared student's, the
// teacher's at T); the options' target fields are unused.
at::Tensor distill_rows_shard_sums(const DistillInputs& in, const at::Tensor& row_lse);
namespace cpu {
DistillForward distill_rows_forward(const DistillInputs& in);
at::Tensor distill_rows_backward(const DistillInputs& in, const DistillSaved& saved);
at::Tensor distill_rows_shard_sums(const DistillInputs& in, const at::Tensor& row_lse);
}  // namespace cpu
namespace cuda {
DistillForward distill_rows_forward(const DistillInputs& in);
at::Tensor distill_rows_backward(const DistillInputs& in, const DistillSaved& saved);
at::Tensor distill_rows_shard_sums(const DistillInputs& in, const at::Tensor& row_lse);
}  // namespace cuda

}  // namespace objx
