"""Rows in, reductions out: the argument checks every front door and the reference share. A row is
one token position; callers' [..., V] logits (or [..., D] hidden states) become [N, V] rows."""

from typing import Optional

import torch

REDUCTIONS = ("mean", "sum", "none")
# The dtypes every kernel is built for; anything else (float8, integers) is refused by name here
# rather than by the dispatcher's "not implemented for" message.
FLOAT_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)
INT64_MIN, INT64_MAX = -2**63, 2**63 - 1


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def check_tensor(fn: str, x, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def check_float(fn: str, x: torch.Tensor, name: str) -> None:
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{fn}: {name} must be float64, float32, bfloat16 or float16, got {x.dtype}")


def check_devices(fn: str, anchor_name: str, anchor: torch.Tensor, **others: Optional[torch.Tensor]) -> None:
    """Every other tensor argument (None skipped) on anchor's device: mixed devices would otherwise
    reach a kernel that reads one of them as if it were on the other (a meta target gave garbage)."""
    for name, x in others.items():
        if x is not None and x.device != anchor.device:
            raise ValueError(f"{fn}: {name} is on {x.device} but {anchor_name} is on {anchor.device}")


def check_ignore_index(fn: str, ignore_index) -> int:
    """ignore_index as an int64: a float (-99.5) would be truncated by int() and 2**70 refused by
    the op's schema with a message that does not name it."""
    index = None if isinstance(ignore_index, bool) else getattr(ignore_index, "__index__", None)
    try:
        value = None if index is None else int(index())  # int, numpy and 0-d integer tensors; no float
    except (TypeError, RuntimeError):  # a tensor that is not one integer
        value = None
    if value is None:
        raise TypeError(f"{fn}: ignore_index must be an integer, got {ignore_index!r}")
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"{fn}: ignore_index must fit in int64, got {value}")
    return value


def rows(fn: str, x, name: str = "logits", last: str = "V", leading: Optional[torch.Size] = None,
         in_place: bool = False) -> torch.Tensor:
    """x [..., last] -> [N, last] (a view when possible); `leading`: the shape x's leading dims must
    have (another input's, named in the error), or None for any. in_place: for the logits ops, which
    also read [B, T, last] (SPEC §0): leading dims that do not flatten into one dim but do into two
    (a slice such as logits[:, :-1]) give that [B, T, last] view instead of a copy."""
    check_tensor(fn, x, name)
    if x.dim() < 2:
        raise ValueError(f"{fn}: {name} must be [..., {last}] with at least 2 dims, got shape {tuple(x.shape)}")
    check_float(fn, x, name)
    if leading is not None and x.shape[:-1] != leading:
        raise ValueError(f"{fn}: {name} must have leading dims {tuple(leading)}, got shape {tuple(x.shape)}")
    return sequence_rows(x) if in_place else flat(x)


def flat(x: torch.Tensor) -> torch.Tensor:
    """x [..., last] -> [N, last]: a view when the leading dims flatten, else a copy."""
    return x.reshape(x.shape[:-1].numel(), x.shape[-1])


def _one_dim(sizes, strides) -> bool:
    """Whether dims of these sizes and strides flatten into one dim without a copy."""
    dims = [(n, s) for n, s in zip(sizes, strides) if n != 1]
    return all(outer == inner * n for (_, outer), (n, inner) in zip(dims, dims[1:]))


def sequence_rows(x: torch.Tensor) -> torch.Tensor:
    """x [..., last] -> [N, last] when its leading dims flatten, else [B, T, last] when they flatten
    into two, both views; a copy [N, last] only when neither does."""
    lead, strides = x.shape[:-1], x.stride()[:-1]
    if x.numel() == 0 or _one_dim(lead, strides):
        return flat(x)
    for k in range(1, len(lead)):
        if _one_dim(lead[:k], strides[:k]) and _one_dim(lead[k:], strides[k:]):
            return x.reshape(lead[:k].numel(), lead[k:].numel(), x.shape[-1])
    return flat(x)


def flatten_rows(fn: str, rows_input, target, name: str = "logits", last: str = "V", in_place: bool = False):
    """rows_input [..., last] (logits or hidden states) and target [...] on its device -> [N, last]
    (or, in_place, rows' [B, T, last]) and [N] (views when possible)."""
    check_tensor(fn, target, "target")
    x = rows(fn, rows_input, name, last, in_place=in_place)
    if target.shape != rows_input.shape[:-1]:
        raise ValueError(f"{fn}: target must have shape {tuple(rows_input.shape[:-1])} ({name}' leading dims), "
                         f"got {tuple(target.shape)}")
    check_devices(fn, name, rows_input, target=target)
    return x, target.reshape(rows_input.shape[:-1].numel())


def rows_target(fn: str, target, shape: torch.Size, rows_name: str,
                device: Optional[torch.device] = None) -> Optional[torch.Tensor]:
    """An optional target [...] with the leading dims `shape` of input rows_name (and, given
    `device`, on rows_name's device) -> [N] or None."""
    if target is None:
        return None
    check_tensor(fn, target, "target")
    if target.shape != shape:
        raise ValueError(f"{fn}: target must have shape {tuple(shape)} ({rows_name}' leading dims), "
                         f"got {tuple(target.shape)}")
    if device is not None and target.device != torch.device(device):
        raise ValueError(f"{fn}: target is on {target.device} but {rows_name} is on {device}")
    return target.reshape(shape.numel())


def reduce_rows(loss_rows: torch.Tensor, counted: torch.Tensor, reduction: str, shape) -> torch.Tensor:
    """Per-row losses (0 where a row does not count) -> the requested reduction; "mean" divides by
    the number of counted rows, and is 0 when there is none."""
    if reduction == "none":
        return loss_rows.reshape(shape)
    total = loss_rows.sum()
    if reduction == "sum":
        return total
    return total / counted.sum().clamp(min=1).to(loss_rows.dtype)
