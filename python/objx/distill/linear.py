"""SPEC §2.1: distillation from hidden states and both LM heads without building either [N, V]
logits tensor (objx.linear_distill_loss, objx.LinearDistillLoss), with the ops' register_fake and
register_autograd."""

from typing import Optional

import torch

from .. import _autograd as ag
from .._rows import check_ignore_index, check_reduction, reduce_rows, rows, rows_target
from .._shift import shift_labels
from .._tiles import slicing, tile_budget_bytes
from ..parallel import losses as sharded
from ..parallel.agreement import checked_on_every_rank
from ..parallel.dtensor import gathered_weight
from ..sft.linear import check_head
from .logits import METHODS, row_terms

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
                        row_block: Optional[int] = None, grad_in_forward: Optional[bool] = None,
                        return_terms: bool = False, shift: bool = False, process_group=None,
                        chunk_size: Optional[int] = None):
    """distill_loss(student_hidden @ student_weight.T + student_bias, teacher_hidden @ teacher_weight.T
    + teacher_bias, target, ...) without either [N, V] logits tensor.

    student_hidden [..., D_s], student_weight [V, D_s]; teacher_hidden [..., D_t], teacher_weight
    [V, D_t]. row_block: rows per block (from V and free memory when None); chunk_size: its
    deprecated alias. grad_in_forward: the student head's gradients are computed in the forward
    (default for "mean"/"sum" when needed; its backward runs once), else the backward recomputes
    both heads' logits block by block.
    shift: as distill_loss's (hidden states [..., T, D], labels [..., T]).
    process_group: both heads are this rank's vocabulary shard, the hidden states the same on every
    rank (SPEC §4); grad of student_hidden is summed over the group (objx.parallel.losses).
    """
    fn = "objx.linear_distill_loss"

    def check():
        ag.refuse_function_transforms(fn)
        check_reduction(reduction)
        block = slicing(fn, "row_block", row_block, chunk_size)
        if method not in METHODS:
            raise ValueError(f"{fn}: method must be one of {METHODS}, got {method!r}")
        index = check_ignore_index(fn, ignore_index)
        labels = shift_labels(fn, target, index, shift)
        hs = rows(fn, student_hidden, "student_hidden", last="D")
        shape = student_hidden.shape[:-1]
        ht = rows(fn, teacher_hidden, "teacher_hidden", last="D", leading=shape)
        check_head(fn, hs, student_weight, student_bias, hidden_name="student_hidden", weight_name="student_weight",
                   bias_name="student_bias")
        check_head(fn, ht, teacher_weight, teacher_bias, hidden_name="teacher_hidden", weight_name="teacher_weight",
                   bias_name="teacher_bias")
        if teacher_weight.shape[0] != student_weight.shape[0]:
            raise ValueError(f"{fn}: vocabulary mismatch: student_weight has V = {student_weight.shape[0]}, "
                             f"teacher_weight has V = {teacher_weight.shape[0]}")
        t_rows = rows_target(fn, labels, shape, "student_hidden", student_hidden.device)
        return (block, hs, ht, shape, t_rows, gathered_weight(student_weight, fn, process_group),
                gathered_weight(teacher_weight, fn, process_group))

    # With a process_group an argument error is raised on every rank, none left waiting for it.
    row_block, hs, ht, shape, t_rows, student_weight, teacher_weight = checked_on_every_rank(
        fn, process_group, getattr(student_hidden, "device", None), check)
    if process_group is not None:
        return sharded.linear_distill_loss(
            fn, hs, student_weight, student_bias, ht, teacher_weight, teacher_bias, t_rows, shape,
            ignore_index=ignore_index, reduction=reduction, return_terms=return_terms, process_group=process_group,
            row_block=row_block, method=method, temperature=temperature, beta=beta, hard_weight=hard_weight,
            soft_weight=soft_weight)
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (student_hidden, student_weight, student_bias))
    if grad_in_forward is None:
        grad_in_forward = needs_grad and reduction != "none"
    if grad_in_forward and reduction == "none":
        raise ValueError(f"{fn}: grad_in_forward needs reduction 'mean' or 'sum'")
    if row_block is None:
        row_block = auto_row_block(hs.shape[0], student_weight.shape[0], hs.device)
    loss_rows, soft, hard, stats, counted, *_grads = torch.ops.objx.linear_distill_forward(
        hs, student_weight, student_bias, ht, teacher_weight, teacher_bias, t_rows, method, float(temperature),
        float(beta), float(hard_weight), float(soft_weight), int(ignore_index), row_block, bool(grad_in_forward))
    loss = reduce_rows(loss_rows, counted, reduction, shape)
    return (loss, row_terms(soft, hard, stats, temperature, shape)) if return_terms else loss


class LinearDistillLoss(torch.nn.Module):
    """nn.Module form of objx.linear_distill_loss;
    forward(student_hidden, student_weight, teacher_hidden, teacher_weight, target=None)."""

    def __init__(self, method: str = "ttm", **kwargs):
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        check_reduction(kwargs.get("reduction", "mean"))
        if "chunk_size" in kwargs:
            kwargs["row_block"] = slicing("objx.LinearDistillLoss", "row_block", kwargs.get("row_block"),
                                          kwargs.pop("chunk_size"))
        self.kwargs = dict(method=method, **kwargs)

    def forward(self, student_hidden, student_weight, teacher_hidden, teacher_weight, target=None):
        return linear_distill_loss(student_hidden, student_weight, teacher_hidden, teacher_weight, target,
                                   **self.kwargs)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())


# --- the ops as torch sees them ---------------------------------------------------------------

ag.register_head_fakes("linear_distill_forward", "linear_distill_backward",
                       head=("student_hidden", "student_weight", "student_bias"),
                       row_outputs=((), (), (), (6,), bool))  # loss, soft, hard, stats, counted
# the teacher never receives a gradient
ag.register_head_autograd("objx.linear_distill_loss", "linear_distill_forward", "linear_distill_backward",
                          head=("student_hidden", "student_weight", "student_bias"))
ag.register_head_autocast("linear_distill_forward")
