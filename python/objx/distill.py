"""SPEC §2: transformed-teacher distillation (TTM, WTTM) and the KD / KL / JSD / TVD family on
logits (objx.distill_loss, objx.DistillLoss)."""

from typing import Optional

import torch

from . import sharded_losses
from ._args import check_reduction, flatten_rows, reduce_rows

METHODS = ("ttm", "wttm", "kd", "forward_kl", "reverse_kl", "jsd", "tvd")


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: Optional[torch.Tensor] = None,
                 *, method: str = "ttm", temperature: float = 1.0, beta: float = 0.5, hard_weight: float = 1.0,
                 soft_weight: float = 1.0, ignore_index: int = -100, reduction: str = "mean",
                 return_terms: bool = False, process_group=None):
    """Per row: hard_weight * CE(target, softmax(student)) + soft_weight * D(method), without the
    [N, V] softmaxes. student/teacher logits [..., V] (same V and dtype); target [...] or None
    (then every row counts and hard_weight must be 0). method: see SPEC §2 — "ttm" matches
    softmax(teacher / T) with the untempered student (the TTM paper's form: T = 1/gamma,
    soft_weight = its beta); "kd" is Hinton's T^2 * KL at temperature T on both.
    return_terms=True also returns a dict of per-row "soft", "hard" and "U" (WTTM's weight).
    process_group: both logits are this rank's vocabulary shard (SPEC §4; objx.sharded_losses).
    """
    check_reduction(reduction)
    if method not in METHODS:
        raise ValueError(f"objx.distill_loss: method must be one of {METHODS}, got {method!r}")
    if not isinstance(teacher_logits, torch.Tensor):
        raise TypeError(f"objx.distill_loss: teacher_logits must be a torch.Tensor, got "
                        f"{type(teacher_logits).__name__}")
    if teacher_logits.shape[-1:] != student_logits.shape[-1:]:
        raise ValueError(f"objx.distill_loss: vocabulary mismatch: student_logits has V = {student_logits.shape[-1]}, "
                         f"teacher_logits has V = {teacher_logits.shape[-1]}")
    shape_target = target if target is not None else torch.empty(student_logits.shape[:-1], dtype=torch.long,
                                                                   device="meta")
    s, t_rows = flatten_rows("objx.distill_loss", student_logits, shape_target, name="student_logits")
    t, _ = flatten_rows("objx.distill_loss", teacher_logits, shape_target, name="teacher_logits")
    rows_target = t_rows if target is not None else None
    if process_group is not None:
        return sharded_losses.distill_loss(
            "objx.distill_loss", s, t, rows_target, shape_target.shape, ignore_index=ignore_index,
            reduction=reduction, return_terms=return_terms, process_group=process_group, method=method,
            temperature=temperature, beta=beta, hard_weight=hard_weight, soft_weight=soft_weight)
    loss_rows, soft, hard, stats, counted = torch.ops.objx.distill_forward(
        s, t, rows_target, method, float(temperature), float(beta), float(hard_weight), float(soft_weight),
        int(ignore_index))
    loss = reduce_rows(loss_rows, counted, reduction, shape_target.shape)
    if not return_terms:
        return loss
    # U = exp(lse(t/T) - lse(t)/T), from the row statistics (columns: lse_s, lse_s/T, lse_t/T, lse_t, D, qa).
    u = torch.exp(stats[:, 2] - stats[:, 3] / float(temperature))
    terms = {name: v.reshape(shape_target.shape) for name, v in (("soft", soft), ("hard", hard), ("U", u))}
    return loss, terms


class DistillLoss(torch.nn.Module):
    """nn.Module form of objx.distill_loss; forward(student_logits, teacher_logits, target=None)."""

    def __init__(self, method: str = "ttm", *, temperature: float = 1.0, beta: float = 0.5, hard_weight: float = 1.0,
                 soft_weight: float = 1.0, ignore_index: int = -100, reduction: str = "mean", process_group=None):
        super().__init__()
        check_reduction(reduction)
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.kwargs = dict(method=method, temperature=temperature, beta=beta, hard_weight=hard_weight,
                           soft_weight=soft_weight, ignore_index=ignore_index, reduction=reduction,
                           process_group=process_group)

    def forward(self, student_logits, teacher_logits, target=None):
        return distill_loss(student_logits, teacher_logits, target, **self.kwargs)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
