"""Argument checks shared by the functional API and the reference."""

import torch

REDUCTIONS = ("mean", "sum", "none")


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def flatten_rows(fn: str, logits: torch.Tensor, target: torch.Tensor):
    """logits [..., V] and target [...] -> [N, V], [N] (views when possible)."""
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"{fn}: logits must be a torch.Tensor, got {type(logits).__name__}")
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"{fn}: target must be a torch.Tensor, got {type(target).__name__}")
    if logits.dim() < 2:
        raise ValueError(f"{fn}: logits must be [..., V] with at least 2 dims, got shape {tuple(logits.shape)}")
    if target.shape != logits.shape[:-1]:
        raise ValueError(f"{fn}: target must have shape {tuple(logits.shape[:-1])} (logits' leading dims), "
                         f"got {tuple(target.shape)}")
    rows = target.numel()
    return logits.reshape(rows, logits.shape[-1]), target.reshape(rows)


def reduce_rows(rows: torch.Tensor, counted: torch.Tensor, reduction: str, shape) -> torch.Tensor:
    """Per-row losses (0 where a row does not count) -> the requested reduction; "mean" divides by
    the number of counted rows, and is 0 when there is none."""
    if reduction == "none":
        return rows.reshape(shape)
    total = rows.sum()
    if reduction == "sum":
        return total
    return total / counted.sum().clamp(min=1).to(rows.dtype)
