// The one schema registry of objx: every op's signature, for every device.
#include <torch/library.h>

TORCH_LIBRARY(objx, m) {
  // SPEC §1. Per-row loss (0 for rows that do not count), lse, log p of the target (-inf where ignored) and counted mask.
  m.def(
      "prob_loss_forward(Tensor logits, Tensor target, str objective, float objective_param, "
      "float? min_prob, float? max_prob, int ignore_index, float label_smoothing, float z_loss, "
      "float? softcap) -> (Tensor loss, Tensor lse, Tensor token_logprob, Tensor counted)");
  // Gradient of sum_r grad_loss[r] * loss[r] with respect to the logits.
  m.def(
      "prob_loss_backward(Tensor grad_loss, Tensor logits, Tensor target, Tensor lse, "
      "Tensor token_logprob, Tensor counted, str objective, float objective_param, int ignore_index, "
      "float label_smoothing, float z_loss, float? softcap) -> Tensor");
}
