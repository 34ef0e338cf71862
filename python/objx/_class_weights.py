"""Class weights of the SFT losses (SPEC §1, F.cross_entropy's `weight`): the argument checks every
front door shares, each row's weight weight[target], and the weighted "mean" reduction."""

from typing import Optional

import torch


def check_class_weight(fn: str, name: str, weight, vocab: Optional[int],
                       device: torch.device) -> Optional[torch.Tensor]:
    """weight as the kernels take it ([V], floating point, on `device`), or None; `name` is the
    keyword the caller used (weight, or ce_weight where weight is the LM head). vocab None: the
    inputs hold a vocabulary shard, and the sharded loss checks V once the shard sizes are known."""
    if weight is None:
        return None
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(weight).__name__}")
    if vocab is None and weight.dim() != 1:
        raise ValueError(f"{fn}: {name} must be 1-D [V] (the whole vocabulary), got shape {tuple(weight.shape)}")
    if vocab is not None and (weight.dim() != 1 or weight.shape[0] != vocab):
        raise ValueError(f"{fn}: {name} must be 1-D [V] with V = {vocab}, got shape {tuple(weight.shape)}")
    if not weight.dtype.is_floating_point:
        raise TypeError(f"{fn}: {name} must be a floating-point tensor, got {weight.dtype}")
    if weight.device != device:
        raise ValueError(f"{fn}: {name} is on {weight.device} but the inputs are on {device}")
    # The kernels treat the weights as constants; a gradient for them would silently stay None.
    if weight.requires_grad and torch.is_grad_enabled():
        raise ValueError(f"{fn}: {name} requires grad, but objx does not differentiate class weights; "
                         f"pass {name}.detach()")
    return weight


def target_weights(weight: Optional[torch.Tensor], target: torch.Tensor, counted: torch.Tensor,
                   dtype: torch.dtype) -> torch.Tensor:
    """weight[target] on counted rows and 0 elsewhere, in `dtype` (counted as `dtype` when unweighted)."""
    if weight is None:
        return counted.to(dtype)
    safe = torch.where(counted, target, torch.zeros_like(target))
    picked = weight.to(dtype).gather(0, safe)
    return torch.where(counted, picked, torch.zeros_like(picked))


def reduce_weighted_rows(loss_rows: torch.Tensor, row_weight: torch.Tensor, reduction: str, shape) -> torch.Tensor:
    """Per-row losses (already scaled by their weights, 0 where a row does not count) -> the
    reduction; "mean" divides by the sum of the counted rows' weights, and is 0 when that is 0."""
    if reduction == "none":
        return loss_rows.reshape(shape)
    total = loss_rows.sum()
    if reduction == "sum":
        return total
    denominator = row_weight.sum()
    return total / torch.where(denominator != 0, denominator, torch.ones_like(denominator))
