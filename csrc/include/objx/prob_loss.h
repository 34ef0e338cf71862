#pragma once
// Host-side contract of the prob_loss ops (SPEC §1): argument validation and parameter parsing
// shared by the CPU and CUDA implementations, so both reject bad input with the same message.
#include <optional>
#include <string>
#include <tuple>

#include <ATen/core/Tensor.h>

#include "objx/math/prob_objective.h"

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
};

inline ProbLossOptions make_prob_loss_options(std::string objective, double param,
                                              std::optional<double> min_prob,
                                              std::optional<double> max_prob, int64_t ignore_index,
                                              double label_smoothing, double z_loss,
                                              std::optional<double> softcap) {
  return {std::move(objective), param, min_prob, max_prob, ignore_index, label_smoothing, z_loss, softcap};
}

// Checks logits [N, V] (floating), target [N] (int64, same device) and the options; throws a
// ValueError/TypeError naming the offending argument.
void check_prob_loss_inputs(const at::Tensor& logits, const at::Tensor& target,
                            const ProbLossOptions& opt);

// Checks the objective and its options alone (shared with the fused LM-head ops).
void check_prob_loss_options(const ProbLossOptions& opt);

// Parameters for the kernels, in the accumulation type.
template <typename acc_t>
math::ProbLossParams<acc_t> make_prob_loss_params(const ProbLossOptions& opt, int64_t vocab);

// One call's inputs, checked and kernel-ready: vocabulary at unit stride, target contiguous.
struct ProbLossInputs {
  ProbLossOptions opt;
  at::Tensor logits;
  at::Tensor target;
};
ProbLossInputs prepare_prob_loss_inputs(const at::Tensor& logits, const at::Tensor& target,
                                        ProbLossOptions opt);

// The backward's per-row inputs, checked, contiguous, grad_loss in the accumulation dtype.
struct ProbLossSaved {
  at::Tensor grad_loss;
  at::Tensor lse;
  at::Tensor logp;
  at::Tensor counted;
};
ProbLossSaved prepare_prob_loss_saved(const at::Tensor& logits, const at::Tensor& grad_loss,
                                      const at::Tensor& lse, const at::Tensor& logp,
                                      const at::Tensor& counted);

// Kernels accumulate in float64 for float64 inputs and in float32 for every other dtype.
inline at::ScalarType prob_acc_dtype(at::ScalarType input) {
  return input == at::kDouble ? at::kDouble : at::kFloat;
}

// Forward outputs: per-row loss, lse, gold log-probability (accumulation dtype) and the counted mask.
using ProbLossForward = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
ProbLossForward allocate_prob_loss_forward(int64_t rows, const at::TensorOptions& acc_options);

// Turns the error rows a kernel found into the user-facing message. bad_target_row and
// empty_row are -1 when there is none.
void raise_prob_loss_row_errors(const at::Tensor& target, int64_t vocab, int64_t ignore_index,
                                int64_t bad_target_row, int64_t empty_row);


}  // namespace objx
