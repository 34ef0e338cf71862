"""Rows in, reductions out: the argument checks every front door and the reference share. A row is
one token position; callers' [..., V] logits (or [..., D] hidden states) become [N, V] rows."""

from typing import Optional

import torch

REDUCTIONS = ("mean", "sum", "none")


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def rows(fn: str, x, name: str = "logits", last: str = "V", leading: Optional[torch.Size] = None) -> torch.Tensor:
    """x [..., last] -> [N, last] (a view when possible); `leading`: the shape x's leading dims must
    have (another input's, named in the error), or None for any."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(f"{fn}: {name} must be [..., {last}] with at least 2 dims, got shape {tuple(x.shape)}")
    if leading is not None and x.shape[:-1] != leading:
        raise ValueError(f"{fn}: {name} must have leading dims {tuple(leading)}, got shape {tuple(x.shape)}")
    return x.reshape(x.shape[:-1].numel(), x.shape[-1])


def flatten_rows(fn: str, rows_input, target, name: str = "logits", last: str = "V"):
    """rows_input [..., last] (logits or hidden states) and target [...] -> [N, last], [N] (views
    when possible)."""
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"{fn}: target must be a torch.Tensor, got {type(target).__name__}")
    x = rows(fn, rows_input, name, last)
    if target.shape != rows_input.shape[:-1]:
        raise ValueError(f"{fn}: target must have shape {tuple(rows_input.shape[:-1])} ({name}' leading dims), "
                         f"got {tuple(target.shape)}")
    return x, target.reshape(x.shape[0])


def rows_target(fn: str, target, shape: torch.Size, rows_name: str) -> Optional[torch.Tensor]:
    """An optional target [...] with the leading dims `shape` of input rows_name -> [N] or None."""
    if target is None:
        return None
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"{fn}: target must be a torch.Tensor, got {type(target).__name__}")
    if target.shape != shape:
        raise ValueError(f"{fn}: target must have shape {tuple(shape)} ({rows_name}' leading dims), "
                         f"got {tuple(target.shape)}")
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
