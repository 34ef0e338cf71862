"""Argument checks shared by the functional API and the reference."""

import torch

REDUCTIONS = ("mean", "sum", "none")


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def flatten_rows(fn: str, rows_input: torch.Tensor, target: torch.Tensor, name: str = "logits", last: str = "V"):
    """rows_input [..., last] (logits or hidden states) and target [...] -> [N, last], [N] (views
    when possible)."""
    if not isinstance(rows_input, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(rows_input).__name__}")
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"{fn}: target must be a torch.Tensor, got {type(target).__name__}")
    if rows_input.dim() < 2:
        raise ValueError(f"{fn}: {name} must be [..., {last}] with at least 2 dims, got shape "
                         f"{tuple(rows_input.shape)}")
    if target.shape != rows_input.shape[:-1]:
        raise ValueError(f"{fn}: target must have shape {tuple(rows_input.shape[:-1])} ({name}' leading dims), "
                         f"got {tuple(target.shape)}")
    rows = target.numel()
    return rows_input.reshape(rows, rows_input.shape[-1]), target.reshape(rows)


def reduce_rows(rows: torch.Tensor, counted: torch.Tensor, reduction: str, shape) -> torch.Tensor:
    """Per-row losses (0 where a row does not count) -> the requested reduction; "mean" divides by
    the number of counted rows, and is 0 when there is none."""
    if reduction == "none":
        return rows.reshape(shape)
    total = rows.sum()
    if reduction == "sum":
        return total
    return total / counted.sum().clamp(min=1).to(rows.dtype)
