"""Causal shift without a copy (CCE's shift=True): position t of a sequence predicts label t + 1.
Instead of slicing the [..., T, V] logits (whose flattening copies them), the targets move: row
(.., t) gets label t + 1 and the last position of every sequence gets ignore_index, so the kernels
read the logits where they are and the last position adds 0 to the loss and its gradient."""

import torch


def shift_labels(fn: str, target, ignore_index: int, shift: bool):
    """The targets the rows are scored against: `target` itself, or with shift=True labels [..., T]
    -> [..., T] holding label t + 1 at position t and ignore_index at T - 1."""
    if not shift:
        return target
    if target is None:
        raise ValueError(f"{fn}: shift=True needs target (the ignored last positions are marked there)")
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"{fn}: target must be a torch.Tensor, got {type(target).__name__}")
    if target.dim() < 1:
        raise ValueError(f"{fn}: shift=True needs targets [..., T] with a sequence dim, "
                         f"got shape {tuple(target.shape)}")
    last = torch.full_like(target[..., :1], ignore_index)
    return torch.cat([target[..., 1:], last], dim=-1)
