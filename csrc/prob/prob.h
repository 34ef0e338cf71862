#pragma once
// The prob_loss family's contract between its entry files (ops.cpp: the logits ops, linear.cpp:
// the fused LM-head ops) and its kernels (cpu.cpp, cuda.cu): options, checked inputs, outputs, and
// the kernel table each device provides (SPEC §1).
#include <optional>
#include <string>
#include <tuple>

#include <ATen/core/Tensor.h>

#include "common/row_errors.h"
#include "common/row_layout.h"
#include "math/prob_objective.h"

namespace objx {

struct ProbLossOptions {
  std::string objective;
  double objective_param;
  std::optional<double> min_prob;
  std::optional<double> max_prob;
  int64_t ignore_index;
  double label_smoothing;
  double z_loss;
  std::optional<double> softcap;
  // Class weights (SPEC §1): [V] in the accumulation dtype, contiguous, on the inputs' device, and
  // their sum as a one-element tensor (no host sync); undefined when unweighted.
  at::Tensor class_weight;
  at::Tensor class_weight_sum;
};

// Checks the class weights a caller passed under the name `name` (fn: the user-facing function)
// and stores them in opt in the accumulation dtype of `rows_like`.
void set_prob_class_weight(ProbLossOptions& opt, const std::optional<at::Tensor>& weight, const at::Tensor& rows_like,
                           int64_t vocab, const char* fn, const char* name);

// Checks the objective and its options; throws a ValueError naming the offending argument.
void check_prob_loss_options(const ProbLossOptions& opt);

// Parameters for the kernels, in the accumulation type (class-weight pointers included).
template <typename acc_t>
math::ProbLossParams<acc_t> make_prob_loss_params(const ProbLossOptions& opt, int64_t vocab);

// One call's inputs, checked and kernel-ready: logits [N, V] or [B, T, V] with the vocabulary at
// unit stride, read through `layout` (common/row_layout.h); target contiguous [rows].
struct ProbLossInputs {
  ProbLossOptions opt;
  at::Tensor logits;
  at::Tensor target;
  RowLayout layout;
  int64_t rows, vocab;
};
ProbLossInputs prepare_prob_loss_inputs(const at::Tensor& logits, const at::Tensor& target, ProbLossOptions opt);

// The backward's per-row inputs, checked against `rows_like` (the logits, or the hidden states of
// the fused head), contiguous, grad_loss in the accumulation dtype.
struct ProbLossSaved {
  at::Tensor grad_loss;
  at::Tensor lse;
  at::Tensor logp;
  at::Tensor counted;
};
ProbLossSaved prepare_prob_loss_saved(const at::Tensor& rows_like, const at::Tensor& grad_loss, const at::Tensor& lse,
                                      const at::Tensor& logp, const at::Tensor& counted);

// Forward outputs: per-row loss, lse, gold log-probability (accumulation dtype), the counted mask
// and `correct` (the row's first argmax is its target).
using ProbLossForward = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
ProbLossForward allocate_prob_loss_forward(int64_t rows, const at::TensorOptions& acc_options);

// Turns the error rows an op's kernels found into the user-facing message (one device-to-host read);
// `target` holds the op's rows, `row_numbers` (if defined) the caller's number of each.
void raise_prob_loss_row_errors(const RowErrors& errors, const at::Tensor& target, int64_t vocab,
                                int64_t ignore_index, const at::Tensor& row_numbers = {});

// Per-row running reduction of the fused head across vocabulary tiles (accumulation dtype): online
// LSE of every logit except the target's, the target's logit once seen, the (class-weighted) sum
// of the logits (label smoothing) and the largest logit left of the target's column (`correct`).
struct ProbTileState {
  at::Tensor max, sum, z_gold, sum_z, max_before;
};
ProbTileState prob_tile_state(int64_t rows, const at::TensorOptions& acc_options);

// What each device provides.
struct ProbKernels {
  // Per-row outputs; rows with an error go to `errors` (the caller raises, after its last kernel).
  ProbLossForward (*forward)(const ProbLossInputs& in, RowErrors& errors);
  // d(sum_r grad_loss[r] loss[r]) / d logits, a new contiguous tensor.
  at::Tensor (*backward)(const ProbLossInputs& in, const ProbLossSaved& saved);
  // Folds a tile holding columns [col_offset, col_offset + tile.size(1)) into the state.
  void (*tile_reduce)(const at::Tensor& tile, const at::Tensor& target, int64_t col_offset,
                      const ProbLossOptions& opt, ProbTileState& state);
  // Per-row loss, lse, log p_y and counted mask from the finished state; errors as forward's.
  ProbLossForward (*tile_finish)(const ProbTileState& state, const at::Tensor& target, const ProbLossOptions& opt,
                                 int64_t vocab, RowErrors& errors);
  // Overwrites a logits tile with the gradient of its columns.
  void (*tile_grad)(at::Tensor& tile, const at::Tensor& target, int64_t col_offset, const ProbLossSaved& saved,
                    const ProbLossOptions& opt, int64_t vocab);
};
extern const ProbKernels kCpuProbKernels;   // prob/cpu.cpp
extern const ProbKernels kCudaProbKernels;  // prob/cuda.cu

}  // namespace objx
