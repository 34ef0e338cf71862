// The one schema registry of objx: every op's signature, for every device.
#include <torch/library.h>

TORCH_LIBRARY(objx, m) {
  // SPEC §1. Per-row loss (0 for rows that do not count; scaled by the class weights when given),
  // lse, log p of the target (-inf where ignored), counted mask, and whether the row's first argmax
  // is its target.
  m.def(
      "prob_loss_forward(Tensor logits, Tensor target, str objective, float objective_param, "
      "float? min_prob, float? max_prob, int ignore_index, float label_smoothing, float z_loss, "
      "float? softcap, Tensor? class_weight=None) -> (Tensor loss, Tensor lse, Tensor token_logprob, "
      "Tensor counted, Tensor correct)");
  // Gradient of sum_r grad_loss[r] * loss[r] with respect to the logits.
  m.def(
      "prob_loss_backward(Tensor grad_loss, Tensor logits, Tensor target, Tensor lse, "
      "Tensor token_logprob, Tensor counted, str objective, float objective_param, int ignore_index, "
      "float label_smoothing, float z_loss, float? softcap, Tensor? class_weight=None) -> Tensor");
  // SPEC §1.1, fused linear variant: logits = hidden @ weight.T + bias, built one vocabulary tile of
  // vocab_chunk columns at a time (the Python keyword tile_size). With grad_in_forward the gradients
  // of sum_r loss[r] (for hidden, weight in float32/64 and bias) come out of the forward (empty
  // otherwise).
  m.def(
      "linear_prob_loss_forward(Tensor hidden, Tensor weight, Tensor? bias, Tensor target, str objective, "
      "float objective_param, float? min_prob, float? max_prob, int ignore_index, float label_smoothing, "
      "float z_loss, float? softcap, int vocab_chunk, bool grad_in_forward, Tensor? class_weight=None) -> "
      "(Tensor loss, Tensor lse, Tensor token_logprob, Tensor counted, Tensor correct, Tensor grad_hidden, "
      "Tensor grad_weight, Tensor grad_bias)");
  m.def(
      "linear_prob_loss_backward(Tensor grad_loss, Tensor hidden, Tensor weight, Tensor? bias, Tensor target, "
      "Tensor lse, Tensor token_logprob, Tensor counted, str objective, float objective_param, int ignore_index, "
      "float label_smoothing, float z_loss, float? softcap, int vocab_chunk, Tensor? class_weight=None) -> "
      "(Tensor grad_hidden, Tensor grad_weight, Tensor grad_bias)");
  // SPEC §2. Per-row loss = hard_weight * CE(y, softmax(s)) + soft_weight * D, the soft and hard
  // terms, the [N, 6] row statistics of the backward, and the counted mask. No target: every row
  // counts and hard_weight must be 0. The teacher gets no gradient.
  m.def(
      "distill_forward(Tensor student_logits, Tensor teacher_logits, Tensor? target, str method, "
      "float temperature, float beta, float hard_weight, float soft_weight, int ignore_index) -> (Tensor loss, "
      "Tensor soft, Tensor hard, Tensor stats, Tensor counted)");
  m.def(
      "distill_backward(Tensor grad_loss, Tensor student_logits, Tensor teacher_logits, Tensor? target, "
      "Tensor stats, Tensor counted, str method, float temperature, float beta, float hard_weight, "
      "float soft_weight, int ignore_index) -> Tensor");
  // SPEC §2.1, fused linear variant: blocks of row_block rows get their student and teacher logits from
  // the two LM heads; the outputs are distill_forward's, plus (grad_in_forward) the student head's
  // gradients of sum_r loss[r] in the accumulation dtype (empty otherwise).
  m.def(
      "linear_distill_forward(Tensor student_hidden, Tensor student_weight, Tensor? student_bias, "
      "Tensor teacher_hidden, Tensor teacher_weight, Tensor? teacher_bias, Tensor? target, str method, "
      "float temperature, float beta, float hard_weight, float soft_weight, int ignore_index, int row_block, "
      "bool grad_in_forward) -> (Tensor loss, Tensor soft, Tensor hard, Tensor stats, Tensor counted, "
      "Tensor grad_hidden, Tensor grad_weight, Tensor grad_bias)");
  m.def(
      "linear_distill_backward(Tensor grad_loss, Tensor student_hidden, Tensor student_weight, "
      "Tensor? student_bias, Tensor teacher_hidden, Tensor teacher_weight, Tensor? teacher_bias, Tensor? target, "
      "Tensor stats, Tensor counted, str method, float temperature, float beta, float hard_weight, "
      "float soft_weight, int ignore_index, int row_block) -> (Tensor grad_hidden, Tensor grad_weight, "
      "Tensor grad_bias)");
  // SPEC §3.4: per-row divergence D(softmax(policy) || softmax(ref)) (0 where mask is false) and
  // the [N, 4] row statistics of the backward; the reference gets no gradient. whole_rows: the
  // logits are whole rows, so one with no mass (-inf everywhere) that mask keeps is an error; false
  // for a vocabulary shard, whose rows may hold none.
  m.def(
      "vocab_divergence_forward(Tensor policy_logits, Tensor ref_logits, str kind, float div_alpha, "
      "Tensor? mask, bool whole_rows=True) -> (Tensor div, Tensor stats)");
  m.def(
      "vocab_divergence_backward(Tensor grad_div, Tensor policy_logits, Tensor ref_logits, Tensor stats, "
      "str kind, float div_alpha, Tensor? mask) -> Tensor");
  // SPEC §4, vocabulary parallelism. Per-row log-sum-exp of logits / temperature (accumulation dtype).
  m.def("row_logsumexp(Tensor x, float temperature) -> Tensor");
  // A vocabulary shard's part of the row sums of distill_forward's stats[:, 4:6] (D, Σ q a) and of
  // vocab_divergence_forward's stats[:, 2:4], with the logs normalised by the whole vocabulary's
  // log-sum-exps row_lse [N, 2] (distill: the compared student's, the teacher's at T; divergence:
  // the policy's, the reference's). Summed over the shards they are the unsharded row statistics.
  m.def(
      "distill_shard_sums(Tensor student_logits, Tensor teacher_logits, Tensor row_lse, str method, "
      "float temperature, float beta) -> Tensor");
  m.def(
      "vocab_divergence_shard_sums(Tensor policy_logits, Tensor ref_logits, Tensor row_lse, str kind, "
      "float div_alpha, Tensor? mask) -> Tensor");
}
