"""SPEC §2, fused linear variant: distillation from hidden states and both LM heads without building
either [N, V] logits tensor (objx.linear_distill_loss, objx.LinearDistillLoss)."""

from typing import Optional

import torch

from . import sharded_losses
from ._args import check_reduction, flatten_rows, reduce_rows
from ._dtensor import gathered_weight
from ._tiles import tile_budget_bytes
from .distill import METHODS

def auto_row_block(rows: int, vocab: int, device: torch.device) -> int:
    """Rows per block: each float32 logits tile (student, teacher, the student's gradient) within
    the tile budget; on CPU one tile takes the whole budget (see objx._tiles)."""
    tiles = 1 if device.type == "cpu" else 3
    return int(max(1, min(max(rows, 1), tile_budget_bytes(device) // (tiles * 4 * max(vocab, 1)))))


def linear_distill_loss(student_hidden: torch.Tensor, student_weight: torch.Tensor, teacher_hidden: torch.Tensor,
                        teacher_weight: torch.Tensor, target: Optional[torch.Tensor] = None, *,
                        student_bias: Optional[torch.Tensor] = None, teacher_bias: Optional[torch.Tensor] = None,
                        method: str = "ttm", temperature: float = 1.0, beta: float = 0.5, hard_weight: float = 1.0,
                        soft_weight: float = 1.0, ignore_index: int = -100, reduction: str = "mean",
                        chunk_size: Optional[int] = None, grad_in_forward: Optional[bool] = None,
                        return_terms: bool = False, process_group=None):
    """distill_loss(student_hidden @ student_weight.T + student_bias, teacher_hidden @ teacher_weight.T
    + teacher_bias, target, ...) without either [N, V] logits tensor.

    student_hidden [..., D_s], student_weight [V, D_s]; teacher_hidden [..., D_t], teacher_weight
    [V, D_t]. chunk_size: rows per block (from V and free memory when None). grad_in_forward: the
    student head's gradients are computed in the forward (default for "mean"/"sum" when needed;
    its backward runs once), else the backward recomputes both heads' logits block by block.
    process_group: both heads are this rank's vocabulary shard, the hidden states the same on every
    rank (SPEC §4); grad of student_hidden is summed over the group (objx.sharded_losses).
    """
    check_reduction(reduction)
    if method not in METHODS:
        raise ValueError(f"objx.linear_distill_loss: method must be one of {METHODS}, got {method!r}")
    for name, t in (("student_weight", student_weight), ("teacher_weight", teacher_weight),
                    ("teacher_hidden", teacher_hidden)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"objx.linear_distill_loss: {name} must be a torch.Tensor, got {type(t).__name__}")
    shape_target = target if target is not None else torch.empty(student_hidden.shape[:-1], dtype=torch.long,
                                                                   device="meta")
    hs, t_rows = flatten_rows("objx.linear_distill_loss", student_hidden, shape_target, name="student_hidden",
                              last="D")
    ht, _ = flatten_rows("objx.linear_distill_loss", teacher_hidden, shape_target, name="teacher_hidden", last="D")
    student_weight = gathered_weight(student_weight, "objx.linear_distill_loss", process_group)
    teacher_weight = gathered_weight(teacher_weight, "objx.linear_distill_loss", process_group)
    if process_group is not None:
        return sharded_losses.linear_distill_loss(
            "objx.linear_distill_loss", hs, student_weight, student_bias, ht, teacher_weight, teacher_bias,
            t_rows if target is not None else None, shape_target.shape, ignore_index=ignore_index,
            reduction=reduction, return_terms=return_terms, process_group=process_group, chunk_size=chunk_size,
            method=method, temperature=temperature, beta=beta, hard_weight=hard_weight, soft_weight=soft_weight)
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (student_hidden, student_weight, student_bias))
    if grad_in_forward is None:
        grad_in_forward = needs_grad and reduction != "none"
    if grad_in_forward and reduction == "none":
        raise ValueError("objx.linear_distill_loss: grad_in_forward needs reduction 'mean' or 'sum'")
    if chunk_size is None:
        chunk_size = auto_row_block(hs.shape[0], student_weight.shape[0], hs.device)
    loss_rows, soft, hard, stats, counted, *_grads = torch.ops.objx.linear_distill_forward(
        hs, student_weight, student_bias, ht, teacher_weight, teacher_bias,
        t_rows if target is not None else None, method, float(temperature), float(beta), float(hard_weight),
        float(soft_weight), int(ignore_index), int(chunk_size), bool(grad_in_forward))
    loss = reduce_rows(loss_rows, counted, reduction, shape_target.shape)
    if not return_terms:
        return loss
    u = torch.exp(stats[:, 2] - stats[:, 3] / float(temperature))
    return loss, {name: v.reshape(shape_target.shape) for name, v in (("soft", soft), ("hard", hard), ("U", u))}


class LinearDistillLoss(torch.nn.Module):
    """nn.Module form of objx.linear_distill_loss;
    forward(student_hidden, student_weight, teacher_hidden, teacher_weight, target=None)."""

    def __init__(self, method: str = "ttm", **kwargs):
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        check_reduction(kwargs.get("reduction", "mean"))
        self.kwargs = dict(method=method, **kwargs)

    def forward(self, student_hidden, student_weight, teacher_hidden, teacher_weight, target=None):
        return linear_distill_loss(student_hidden, student_weight, teacher_hidden, teacher_weight, target,
                                   **self.kwargs)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
