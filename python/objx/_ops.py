"""Loads the compiled ops and teaches torch how to trace (register_fake) and differentiate
(register_autograd) each of them."""

import torch

from . import _C  # noqa: F401  (importing registers torch.ops.objx.*)

_lib = torch.ops.objx


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# --- prob_loss ------------------------------------------------------------------------------

@torch.library.register_fake("objx::prob_loss_forward")
def _prob_loss_forward_fake(logits, target, objective, objective_param, min_prob, max_prob,
                            ignore_index, label_smoothing, z_loss, softcap):
    torch._check(logits.dim() == 2, lambda: "objx.prob_loss: logits must be 2-D [N, V]")
    torch._check(target.shape == logits.shape[:1], lambda: "objx.prob_loss: target must be [N]")
    rows = logits.shape[0]
    acc = _acc_dtype(logits.dtype)
    return (logits.new_empty(rows, dtype=acc), logits.new_empty(rows, dtype=acc),
            logits.new_empty(rows, dtype=acc), logits.new_empty(rows, dtype=torch.bool))


@torch.library.register_fake("objx::prob_loss_backward")
def _prob_loss_backward_fake(grad_loss, logits, target, lse, token_logprob, counted, objective,
                             objective_param, ignore_index, label_smoothing, z_loss, softcap):
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def _prob_loss_setup_context(ctx, inputs, output):
    (logits, target, objective, objective_param, _min_prob, _max_prob, ignore_index,
     label_smoothing, z_loss, softcap) = inputs
    _loss, lse, token_logprob, counted = output
    ctx.save_for_backward(logits, target, lse, token_logprob, counted)
    ctx.options = (objective, objective_param, ignore_index, label_smoothing, z_loss, softcap)
    ctx.mark_non_differentiable(lse, token_logprob, counted)


def _prob_loss_backward(ctx, grad_loss, _grad_lse, _grad_logprob, _grad_counted):
    logits, target, lse, token_logprob, counted = ctx.saved_tensors
    grad_logits = None
    if ctx.needs_input_grad[0]:
        grad_logits = _lib.prob_loss_backward(grad_loss, logits, target, lse, token_logprob, counted,
                                              *ctx.options)
    return grad_logits, None, None, None, None, None, None, None, None, None


torch.library.register_autograd("objx::prob_loss_forward", _prob_loss_backward,
                                setup_context=_prob_loss_setup_context)
