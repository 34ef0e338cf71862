"""What every family's register_fake / register_autograd / autocast rule shares: the op's arguments
by their schema names (so setup_context and backward never unpack positional tuples, and a new
keyword needs no edit here), the accumulation dtype, the fused heads' gradients computed in the
forward, the refusal of double backward, and autocast for the fused heads."""

import functools

import torch

from . import _library  # noqa: F401  (importing registers torch.ops.objx.*)


@functools.cache
def _schema(op_name: str):
    """(name, is_tensor) for each argument of torch.ops.objx.<op_name>, in schema order."""
    def is_tensor(t) -> bool:
        return isinstance(t, torch.TensorType) or (isinstance(t, torch.OptionalType)
                                                   and isinstance(t.getElementType(), torch.TensorType))

    args = getattr(torch.ops.objx, op_name).default._schema.arguments
    return tuple((a.name, is_tensor(a.type)) for a in args)


def arguments(op_name: str, inputs) -> dict:
    """An op call's inputs by schema name."""
    return {name: v for (name, _), v in zip(_schema(op_name), inputs)}


def options(op_name: str, inputs) -> dict:
    """The call's non-tensor arguments: what ctx keeps (tensors go through save_for_backward)."""
    return {name: v for (name, is_tensor), v in zip(_schema(op_name), inputs) if not is_tensor}


def call(op_name: str, **values):
    """torch.ops.objx.<op_name> with each schema argument taken by name from values (extra names
    are ignored), passed positionally as the schema orders them."""
    return getattr(torch.ops.objx, op_name)(*[values[name] for name, _ in _schema(op_name)])


def input_grads(op_name: str, **grads) -> tuple:
    """The backward's return value: one entry per input of op_name, None where not named."""
    return tuple(grads.get(name) for name, _ in _schema(op_name))


@functools.cache
def _returns(op_name: str) -> tuple:
    return tuple(r.name for r in getattr(torch.ops.objx, op_name).default._schema.returns)


def _save_for(ctx, backward_op: str, values: dict) -> None:
    """Saves every tensor argument of backward_op found by name in values (the forward's inputs and
    named outputs); the rest of the backward's arguments are the forward's options."""
    save(ctx, **{name: values[name] for name, is_tensor in _schema(backward_op) if is_tensor and name in values})


def register_logits_autograd(forward_op: str, backward_op: str, grad_of: str) -> None:
    """register_autograd for an op on logits: the backward op gets its tensors by name from the
    forward's inputs and outputs, its upstream gradient (its first argument) from the forward's
    first output, and returns the gradient of input grad_of; every other input gets none (the
    teacher and the reference never do)."""
    index = [name for name, _ in _schema(forward_op)].index(grad_of)
    grad_name = _schema(backward_op)[0][0]

    def setup_context(ctx, inputs, output):
        _save_for(ctx, backward_op, {**arguments(forward_op, inputs), **dict(zip(_returns(forward_op), output))})
        ctx.options = options(forward_op, inputs)
        ctx.mark_non_differentiable(*output[1:])
        ctx.set_materialize_grads(False)

    def backward(ctx, grad, *_unused):
        result = None
        if ctx.needs_input_grad[index] and grad is not None:
            result = call(backward_op, **{grad_name: grad}, **saved(ctx), **ctx.options)
        return input_grads(forward_op, **dict(zip([grad_of], first_order_only(f"objx.{forward_op}", result))))

    torch.library.register_autograd(f"objx::{forward_op}", backward, setup_context=setup_context)


def register_head_fakes(forward_op: str, backward_op: str, head: tuple, row_outputs: tuple) -> None:
    """The fakes of an op fused with an LM head and of its backward. row_outputs: the per-row
    outputs before the head's three gradients, each () or (k,) for [N] or [N, k] in the
    accumulation dtype, or bool for a [N] mask."""
    hidden, weight, bias = head

    def forward_fake(*inputs):
        a = arguments(forward_op, inputs)
        h, w = a[hidden], a[weight]
        torch._check(h.dim() == 2 and w.dim() == 2 and w.shape[1] == h.shape[1],
                     lambda: f"objx.{forward_op}: hidden [N, D] and weight [V, D]")
        rows, vocab, dim, acc = h.shape[0], w.shape[0], w.shape[1], acc_dtype(h.dtype)
        outs = [h.new_empty(rows, dtype=torch.bool) if kind is bool else h.new_empty(rows, *kind, dtype=acc)
                for kind in row_outputs]
        if a["grad_in_forward"]:
            outs += [h.new_empty(rows, dim, dtype=acc), h.new_empty(vocab, dim, dtype=acc),
                     h.new_empty(vocab if a[bias] is not None else 0, dtype=acc)]
        else:
            outs += [h.new_empty(0, dtype=acc) for _ in range(3)]
        return tuple(outs)

    def backward_fake(*inputs):
        a = arguments(backward_op, inputs)
        w = a[weight]
        return torch.empty_like(a[hidden]), torch.empty_like(w), w.new_empty(w.shape[0] if a[bias] is not None else 0)

    torch.library.register_fake(f"objx::{forward_op}")(forward_fake)
    torch.library.register_fake(f"objx::{backward_op}")(backward_fake)


def register_head_autograd(fn: str, forward_op: str, backward_op: str, head: tuple) -> None:
    """register_autograd for an op fused with an LM head whose last three outputs are the head's
    (hidden, weight, bias) gradients when grad_in_forward (see keep_forward_grads), else computed
    by backward_op; head names those three inputs."""
    hidden, weight, bias = head

    def setup_context(ctx, inputs, output):
        a = arguments(forward_op, inputs)
        ctx.grad_in_forward, ctx.has_bias = a["grad_in_forward"], a[bias] is not None
        if ctx.grad_in_forward:
            keep_forward_grads(ctx, output[-3:], (a[hidden].dtype, a[weight].dtype), ctx.has_bias)
        else:
            _save_for(ctx, backward_op, {**a, **dict(zip(_returns(forward_op), output))})
        ctx.options = options(forward_op, inputs)
        ctx.mark_non_differentiable(*output[1:])
        # Unused outputs' gradients stay None: materialised zeros would cost a [V, D] buffer here.
        ctx.set_materialize_grads(False)

    def backward(ctx, grad_loss, *_unused):
        if grad_loss is None:  # the loss itself does not reach the differentiated output
            return input_grads(forward_op)
        if ctx.grad_in_forward:
            if torch.is_grad_enabled():  # create_graph: these gradients have no graph to differentiate
                raise RuntimeError(f"{fn}: double backward (create_graph=True) is not supported: with "
                                   "grad_in_forward the gradients were computed in the forward by a fused kernel "
                                   "that is not differentiable")
            grads = scale_forward_grads(ctx, grad_loss, fn)
        else:
            grads = call(backward_op, grad_loss=grad_loss, **saved(ctx), **ctx.options)
            grads = (grads[0], grads[1], grads[2] if ctx.has_bias else None)
        return input_grads(forward_op, **dict(zip(head, first_order_only(fn, *grads))))

    torch.library.register_autograd(f"objx::{forward_op}", backward, setup_context=setup_context)


class _FirstOrderOnly(torch.autograd.Function):
    """Identity on a backward's gradients; differentiating them raises. The ops' backward kernels
    are not differentiable, so without this a double backward would silently miss their
    second-order terms."""

    @staticmethod
    def forward(ctx, fn, _anchor, *grads):
        ctx.fn = fn
        return tuple(g.view_as(g) for g in grads)

    @staticmethod
    def backward(ctx, *_grads):
        raise RuntimeError(f"{ctx.fn}: double backward is not supported (the gradient is computed by a fused "
                           "kernel that is not itself differentiable); differentiate once, or use "
                           "objx.reference for higher-order derivatives")


def first_order_only(fn: str, *grads) -> tuple:
    """A backward's gradients as they are, except under create_graph (double backward requested),
    where they become outputs of _FirstOrderOnly: requiring grad, so that differentiating them
    reaches its clear error instead of an unrelated one or a silently wrong result."""
    if not torch.is_grad_enabled() or all(g is None for g in grads):
        return grads
    present = [g for g in grads if g is not None]
    anchor = torch.zeros((), device=present[0].device, requires_grad=True)  # makes the outputs differentiable
    wrapped = iter(_FirstOrderOnly.apply(fn, anchor, *present))
    return tuple(None if g is None else next(wrapped) for g in grads)


def refuse_function_transforms(fn: str) -> None:
    """torch.func's differentiating transforms (grad, vjp, jacrev, jacfwd, hessian, jvp) need every
    autograd.Function to define setup_context; torch.library's generated ones for objx's ops do
    not, and torch then fails with a message about autograd.Function internals. Say what it means
    instead. torch.vmap alone is left alone: it runs the ops one batch entry at a time."""
    if torch.compiler.is_compiling():  # dynamo does not trace these queries; torch.func's tensors never reach it
        return
    from torch._C._functorch import TransformType
    from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

    if any(i.key() in (TransformType.Grad, TransformType.Jvp) for i in retrieve_all_functorch_interpreters()):
        raise RuntimeError(f"{fn}: torch.func's differentiating transforms (grad, vjp, jacrev, jacfwd, hessian, "
                           "jvp) are not supported: objx's ops have autograd formulas for torch.autograd only; "
                           "use torch.autograd.grad or loss.backward()")


# Holds the autocast kernels' registrations for the life of the process.
_AUTOCAST_LIBRARY = torch.library.Library("objx", "IMPL")


def register_head_autocast(forward_op: str) -> None:
    """Under torch.autocast, an op fused with an LM head runs its GEMMs in the autocast dtype, as
    F.linear does: its float32 / float16 / bfloat16 tensor inputs are cast to that dtype (float64
    stays, as autocast leaves it) and the op runs with autocast off, so the kernels see one dtype.
    The casts are ordinary differentiable ops: each gradient returns in its input's dtype. Both
    the dispatcher (eager) and the Python dispatcher (torch.compile's tracing) get the rule, so
    compiled and eager code compute the same thing."""
    op = getattr(torch.ops.objx, forward_op).default
    castable = (torch.float32, torch.float16, torch.bfloat16)
    for device_type in ("cpu", "cuda"):
        key = getattr(torch._C.DispatchKey, "Autocast" + torch._C._dispatch_key_for_device(device_type))

        def run(*args, key=key, device_type=device_type):
            dtype = torch.get_autocast_dtype(device_type)
            cast = [a.to(dtype) if isinstance(a, torch.Tensor) and a.dtype in castable and a.device.type == device_type
                    else a for a in args]
            with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(key)):
                return op(*cast)

        if op.has_kernel_for_dispatch_key(key):
            op.py_kernels.pop(key, None)
        op.py_impl(key)(run)
        _AUTOCAST_LIBRARY.impl(forward_op, lambda _keys, *args, run=run: run(*args), key.name, with_keyset=True)


def save(ctx, **tensors) -> None:
    ctx.save_for_backward(*tensors.values())
    ctx.saved_names = tuple(tensors)


def saved(ctx) -> dict:
    return dict(zip(ctx.saved_names, ctx.saved_tensors))


def fake_rows(fn: str, x: torch.Tensor, name: str):
    """The rows of a logits input [N, V] or [B, T, V] in a fake (common/row_layout.h's row_count)."""
    torch._check(x.dim() in (2, 3), lambda: f"{fn}: {name} must be [N, V] or [B, T, V]")
    return x.shape[0] if x.dim() == 2 else x.shape[0] * x.shape[1]


def register_grad_fake(op_name: str, like: str) -> None:
    """The fake of a backward op that returns the gradient of its input `like`, contiguous."""
    torch.library.register_fake(f"objx::{op_name}")(
        lambda *inputs: torch.empty_like(arguments(op_name, inputs)[like], memory_format=torch.contiguous_format))


def register_row_sums_fake(op_name: str) -> None:
    """The fake of a shard-sums op: [N, 2] in the accumulation dtype of its first input, [N, V] or
    [B, T, V]."""
    def fake(*inputs):
        x = inputs[0]
        return x.new_empty(fake_rows(f"objx.{op_name}", x, "the logits"), 2, dtype=acc_dtype(x.dtype))

    torch.library.register_fake(f"objx::{op_name}")(fake)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def is_traced(t: torch.Tensor) -> bool:
    """True while torch.compile / AOTAutograd trace (fake or functional tensors), where in-place
    updates of saved tensors are not allowed."""
    from torch._subclasses.fake_tensor import FakeTensor
    from torch._subclasses.functional_tensor import FunctionalTensor

    return (torch.compiler.is_compiling() or isinstance(t, (FakeTensor, FunctionalTensor))
            or torch._is_functional_tensor(t))


def keep_forward_grads(ctx, grads, dtypes, has_bias: bool) -> None:
    """Holds the gradients a fused forward computed for sum_r loss[r] (hidden, weight, bias) until
    the backward. Eagerly they stay on ctx, not saved, so the backward can let go of them: autograd
    then moves them into .grad instead of copying a [V, D] buffer something else still references.
    A traced graph saves them."""
    ctx.dtypes, ctx.has_bias = dtypes, has_bias
    grads = tuple(grads)
    if not is_traced(grads[1]):
        ctx.forward_grads = list(grads)
    else:
        save(ctx, grad_hidden=grads[0], grad_weight=grads[1], grad_bias=grads[2])


def scale_forward_grads(ctx, grad_loss, fn: str):
    """The kept gradients scaled by the upstream gradient: a "mean"/"sum" reduction hands every row
    the same upstream gradient, so the weight's and bias' scale by one number. Eagerly scaled in
    place and handed over, so the backward can run only once."""
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
        kept = saved(ctx)
        grad_hidden = kept["grad_hidden"] * grad_loss[:, None]
        grad_weight, grad_bias = kept["grad_weight"] * scale, kept["grad_bias"] * scale
    return (rounded_to(grad_hidden, hidden_dtype), rounded_to(grad_weight, weight_dtype),
            rounded_to(grad_bias, weight_dtype) if ctx.has_bias else None)


@torch.library.custom_op("objx::cast_gradient", mutates_args=())
def _cast_gradient(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return x.to(dtype)


@_cast_gradient.register_fake
def _(x, dtype):
    return torch.empty_like(x, dtype=dtype)


def rounded_to(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """x.to(dtype), rounded in compiled code too. Under autocast a float32 weight's bfloat16 copy
    gets its gradient in bfloat16, then back in float32: eager rounds there, but inductor drops
    such a pair of casts. Traced, the cast is an opaque op, so both give the same gradient."""
    if x.dtype == dtype or not is_traced(x):
        return x.to(dtype)
    return _cast_gradient(x, dtype)
