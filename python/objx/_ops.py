"""Loads the compiled ops and teaches torch how to trace (register_fake) and differentiate
(register_autograd) each of them."""

import torch

from . import _C  # noqa: F401  (importing registers torch.ops.objx.*)

_lib = torch.ops.objx


def _is_traced(t: torch.Tensor) -> bool:
    """True while torch.compile / AOTAutograd trace (fake or functional tensors), where in-place
    updates of saved tensors are not allowed."""
    from torch._subclasses.fake_tensor import FakeTensor
    from torch._subclasses.functional_tensor import FunctionalTensor

    return (torch.compiler.is_compiling() or isinstance(t, (FakeTensor, FunctionalTensor))
            or torch._is_functional_tensor(t))


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
    ctx.set_materialize_grads(False)


def _prob_loss_backward(ctx, grad_loss, _grad_lse, _grad_logprob, _grad_counted):
    logits, target, lse, token_logprob, counted = ctx.saved_tensors
    grad_logits = None
    if ctx.needs_input_grad[0] and grad_loss is not None:
        grad_logits = _lib.prob_loss_backward(grad_loss, logits, target, lse, token_logprob, counted,
                                              *ctx.options)
    return grad_logits, None, None, None, None, None, None, None, None, None


torch.library.register_autograd("objx::prob_loss_forward", _prob_loss_backward,
                                setup_context=_prob_loss_setup_context)


def _scale_forward_grads(ctx, grad_loss, fn):
    """The gradients a fused forward computed for sum_r loss[r], scaled by the upstream gradient.

    A "mean"/"sum" reduction hands every row the same upstream gradient, so the weight's and bias'
    scale by one number. Eagerly they are scaled in place and handed over (no second [V, D]
    buffer), so the backward can run only once; a traced graph (torch.compile) scales its saved
    copies out of place.
    """
    hidden_dtype, weight_dtype = ctx.dtypes
    scale = grad_loss[:1].sum()  # 0 for an empty batch, no device sync
    if hasattr(ctx, "forward_grads"):
        if ctx.forward_grads is None:
            raise RuntimeError(f"{fn}: with grad_in_forward=True the backward can run only once "
                               "(retain_graph); pass grad_in_forward=False to differentiate twice")
        grad_hidden, grad_weight, grad_bias = ctx.forward_grads
        ctx.forward_grads = None
        grad_hidden, grad_weight, grad_bias = (grad_hidden.mul_(grad_loss[:, None]), grad_weight.mul_(scale),
                                               grad_bias.mul_(scale))
    else:
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        grad_hidden, grad_weight, grad_bias = grad_hidden * grad_loss[:, None], grad_weight * scale, grad_bias * scale
    return (grad_hidden.to(hidden_dtype), grad_weight.to(weight_dtype),
            grad_bias.to(weight_dtype) if ctx.has_bias else None)


# --- linear_prob_loss (fused LM head) -------------------------------------------------------

@torch.library.register_fake("objx::linear_prob_loss_forward")
def _linear_prob_loss_forward_fake(hidden, weight, bias, target, objective, objective_param, min_prob,
                                   max_prob, ignore_index, label_smoothing, z_loss, softcap, vocab_chunk,
                                   grad_in_forward):
    torch._check(hidden.dim() == 2 and weight.dim() == 2, lambda: "objx.linear_prob_loss: 2-D inputs")
    torch._check(weight.shape[1] == hidden.shape[1], lambda: "objx.linear_prob_loss: D mismatch")
    rows, vocab, dim = hidden.shape[0], weight.shape[0], weight.shape[1]
    acc = _acc_dtype(hidden.dtype)
    per_row = [hidden.new_empty(rows, dtype=acc) for _ in range(3)] + [hidden.new_empty(rows, dtype=torch.bool)]
    if grad_in_forward:
        grads = [hidden.new_empty(rows, dim, dtype=acc), hidden.new_empty(vocab, dim, dtype=acc),
                 hidden.new_empty(vocab if bias is not None else 0, dtype=acc)]
    else:
        grads = [hidden.new_empty(0, dtype=acc) for _ in range(3)]
    return tuple(per_row + grads)


@torch.library.register_fake("objx::linear_prob_loss_backward")
def _linear_prob_loss_backward_fake(grad_loss, hidden, weight, bias, target, lse, token_logprob, counted,
                                    objective, objective_param, ignore_index, label_smoothing, z_loss,
                                    softcap, vocab_chunk):
    return (torch.empty_like(hidden), torch.empty_like(weight),
            weight.new_empty(weight.shape[0] if bias is not None else 0))


def _linear_prob_loss_setup_context(ctx, inputs, output):
    (hidden, weight, bias, target, objective, objective_param, _min_prob, _max_prob, ignore_index,
     label_smoothing, z_loss, softcap, vocab_chunk, grad_in_forward) = inputs
    _loss, lse, token_logprob, counted, grad_hidden, grad_weight, grad_bias = output
    ctx.grad_in_forward = grad_in_forward
    ctx.has_bias = bias is not None
    ctx.dtypes = (hidden.dtype, weight.dtype)
    if grad_in_forward and not _is_traced(grad_weight):
        # Held on ctx (not saved) so the backward can let go of them: autograd then moves them into
        # .grad instead of copying a [V, D] buffer that something else still references.
        ctx.forward_grads = [grad_hidden, grad_weight, grad_bias]
    elif grad_in_forward:
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
    else:
        ctx.save_for_backward(hidden, weight, bias, target, lse, token_logprob, counted)
    ctx.options = (objective, objective_param, ignore_index, label_smoothing, z_loss, softcap, vocab_chunk)
    ctx.mark_non_differentiable(lse, token_logprob, counted, grad_hidden, grad_weight, grad_bias)
    # Unused outputs' gradients stay None: materialised zeros would cost a [V, D] buffer here.
    ctx.set_materialize_grads(False)


def _linear_prob_loss_backward(ctx, grad_loss, *_unused):
    if grad_loss is None:  # the loss itself does not reach the differentiated output
        return (None,) * 14
    if ctx.grad_in_forward:
        grad_hidden, grad_weight, grad_bias = _scale_forward_grads(ctx, grad_loss, "objx.linear_prob_loss")
    else:
        hidden, weight, bias, target, lse, token_logprob, counted = ctx.saved_tensors
        grad_hidden, grad_weight, grad_bias = _lib.linear_prob_loss_backward(
            grad_loss, hidden, weight, bias, target, lse, token_logprob, counted, *ctx.options)
        if not ctx.has_bias:
            grad_bias = None
    return (grad_hidden, grad_weight, grad_bias) + (None,) * 11


torch.library.register_autograd("objx::linear_prob_loss_forward", _linear_prob_loss_backward,
                                setup_context=_linear_prob_loss_setup_context)


# --- distill (SPEC §2) ------------------------------------------------------------------------

@torch.library.register_fake("objx::distill_forward")
def _distill_forward_fake(student_logits, teacher_logits, target, method, temperature, beta, hard_weight,
                          soft_weight, ignore_index):
    torch._check(student_logits.dim() == 2, lambda: "objx.distill_loss: student_logits must be 2-D [N, V]")
    torch._check(teacher_logits.shape == student_logits.shape, lambda: "objx.distill_loss: shape mismatch")
    rows = student_logits.shape[0]
    acc = _acc_dtype(student_logits.dtype)
    new = student_logits.new_empty
    return (new(rows, dtype=acc), new(rows, dtype=acc), new(rows, dtype=acc), new(rows, 6, dtype=acc),
            new(rows, dtype=torch.bool))


@torch.library.register_fake("objx::distill_backward")
def _distill_backward_fake(grad_loss, student_logits, teacher_logits, target, stats, counted, method, temperature,
                           beta, hard_weight, soft_weight, ignore_index):
    return torch.empty_like(student_logits, memory_format=torch.contiguous_format)


def _distill_setup_context(ctx, inputs, output):
    student, teacher, target, *options = inputs
    _loss, soft, hard, stats, counted = output
    ctx.save_for_backward(student, teacher, target, stats, counted)
    ctx.options = tuple(options)
    ctx.mark_non_differentiable(soft, hard, stats, counted)
    ctx.set_materialize_grads(False)


def _distill_backward(ctx, grad_loss, *_unused):
    student, teacher, target, stats, counted = ctx.saved_tensors
    grad_student = None
    if ctx.needs_input_grad[0] and grad_loss is not None:
        grad_student = _lib.distill_backward(grad_loss, student, teacher, target, stats, counted, *ctx.options)
    return (grad_student,) + (None,) * 8  # the teacher never receives a gradient


torch.library.register_autograd("objx::distill_forward", _distill_backward, setup_context=_distill_setup_context)


# --- linear_distill (distillation fused with both LM heads) ---------------------------------

@torch.library.register_fake("objx::linear_distill_forward")
def _linear_distill_forward_fake(student_hidden, student_weight, student_bias, teacher_hidden, teacher_weight,
                                 teacher_bias, target, method, temperature, beta, hard_weight, soft_weight,
                                 ignore_index, row_block, grad_in_forward):
    rows, vocab, dim = student_hidden.shape[0], student_weight.shape[0], student_weight.shape[1]
    acc = _acc_dtype(student_hidden.dtype)
    new = student_hidden.new_empty
    outs = [new(rows, dtype=acc), new(rows, dtype=acc), new(rows, dtype=acc), new(rows, 6, dtype=acc),
            new(rows, dtype=torch.bool)]
    if grad_in_forward:
        outs += [new(rows, dim, dtype=acc), new(vocab, dim, dtype=acc),
                 new(vocab if student_bias is not None else 0, dtype=acc)]
    else:
        outs += [new(0, dtype=acc) for _ in range(3)]
    return tuple(outs)


@torch.library.register_fake("objx::linear_distill_backward")
def _linear_distill_backward_fake(grad_loss, student_hidden, student_weight, student_bias, *_rest):
    return (torch.empty_like(student_hidden), torch.empty_like(student_weight),
            student_weight.new_empty(student_weight.shape[0] if student_bias is not None else 0))


def _linear_distill_setup_context(ctx, inputs, output):
    (student_hidden, student_weight, student_bias, teacher_hidden, teacher_weight, teacher_bias, target,
     *options) = inputs
    _loss, soft, hard, stats, counted, grad_hidden, grad_weight, grad_bias = output
    grad_in_forward = options[-1]
    ctx.grad_in_forward = grad_in_forward
    ctx.has_bias = student_bias is not None
    ctx.dtypes = (student_hidden.dtype, student_weight.dtype)
    if grad_in_forward and not _is_traced(grad_weight):
        ctx.forward_grads = [grad_hidden, grad_weight, grad_bias]  # handed to .grad in the backward
    elif grad_in_forward:
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
    else:
        ctx.save_for_backward(student_hidden, student_weight, student_bias, teacher_hidden, teacher_weight,
                              teacher_bias, target, stats, counted)
    ctx.options = tuple(options[:-1])
    ctx.mark_non_differentiable(soft, hard, stats, counted, grad_hidden, grad_weight, grad_bias)
    ctx.set_materialize_grads(False)


def _linear_distill_backward(ctx, grad_loss, *_unused):
    if grad_loss is None:
        return (None,) * 15
    if ctx.grad_in_forward:
        grads = _scale_forward_grads(ctx, grad_loss, "objx.linear_distill_loss")
    else:
        saved = ctx.saved_tensors
        grads = _lib.linear_distill_backward(grad_loss, *saved, *ctx.options)
        if not ctx.has_bias:
            grads = (grads[0], grads[1], None)
    return tuple(grads) + (None,) * 12  # the teacher never receives a gradient


torch.library.register_autograd("objx::linear_distill_forward", _linear_distill_backward,
                                setup_context=_linear_distill_setup_context)


# --- vocab_divergence (SPEC §3.4) -------------------------------------------------------------

@torch.library.register_fake("objx::vocab_divergence_forward")
def _vocab_divergence_forward_fake(policy_logits, ref_logits, kind, div_alpha, mask):
    torch._check(policy_logits.dim() == 2, lambda: "objx.vocab_divergence: policy_logits must be 2-D [N, V]")
    rows = policy_logits.shape[0]
    acc = _acc_dtype(policy_logits.dtype)
    return policy_logits.new_empty(rows, dtype=acc), policy_logits.new_empty(rows, 4, dtype=acc)


@torch.library.register_fake("objx::vocab_divergence_backward")
def _vocab_divergence_backward_fake(grad_div, policy_logits, ref_logits, stats, kind, div_alpha, mask):
    return torch.empty_like(policy_logits, memory_format=torch.contiguous_format)


def _vocab_divergence_setup_context(ctx, inputs, output):
    policy, ref, kind, div_alpha, mask = inputs
    _div, stats = output
    ctx.save_for_backward(policy, ref, stats, mask)
    ctx.options = (kind, div_alpha)
    ctx.mark_non_differentiable(stats)
    ctx.set_materialize_grads(False)


def _vocab_divergence_backward(ctx, grad_div, _grad_stats):
    policy, ref, stats, mask = ctx.saved_tensors
    grad = None
    if ctx.needs_input_grad[0] and grad_div is not None:
        grad = _lib.vocab_divergence_backward(grad_div, policy, ref, stats, *ctx.options, mask)
    return grad, None, None, None, None  # the reference never receives a gradient


torch.library.register_autograd("objx::vocab_divergence_forward", _vocab_divergence_backward,
                                setup_context=_vocab_divergence_setup_context)


# --- vocabulary parallelism (SPEC §4): per-shard row statistics ----------------------------------
# Statistics only, never differentiated: the sharded losses (objx.vocab_parallel) wrap them in their
# own autograd functions whose backward is distill_backward / vocab_divergence_backward.

@torch.library.register_fake("objx::row_logsumexp")
def _row_logsumexp_fake(x, temperature):
    torch._check(x.dim() == 2, lambda: "objx.row_logsumexp: x must be 2-D [N, V]")
    return x.new_empty(x.shape[0], dtype=_acc_dtype(x.dtype))


@torch.library.register_fake("objx::distill_shard_sums")
def _distill_shard_sums_fake(student_logits, teacher_logits, row_lse, method, temperature, beta):
    torch._check(student_logits.dim() == 2, lambda: "objx.distill_shard_sums: student_logits must be 2-D [N, V]")
    return student_logits.new_empty(student_logits.shape[0], 2, dtype=_acc_dtype(student_logits.dtype))


@torch.library.register_fake("objx::vocab_divergence_shard_sums")
def _vocab_divergence_shard_sums_fake(policy_logits, ref_logits, row_lse, kind, div_alpha, mask):
    torch._check(policy_logits.dim() == 2, lambda: "objx.vocab_divergence_shard_sums: policy_logits must be 2-D")
    return policy_logits.new_empty(policy_logits.shape[0], 2, dtype=_acc_dtype(policy_logits.dtype))
