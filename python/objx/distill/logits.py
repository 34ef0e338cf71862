"""SPEC §2: transformed-teacher distillation (TTM, WTTM) and the KD / KL / JSD / TVD family on
logits (objx.distill_loss, objx.DistillLoss), with the ops' register_fake and register_autograd."""

from typing import Optional

import torch

from .. import _autograd as ag
from .._rows import check_devices, check_ignore_index, check_reduction, reduce_rows, rows, rows_target
from .._shift import shift_labels
from ..parallel import losses as sharded
from ..parallel.agreement import checked_on_every_rank

METHODS = ("ttm", "wttm", "kd", "forward_kl", "reverse_kl", "jsd", "tvd")


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: Optional[torch.Tensor] = None,
                 *, method: str = "ttm", temperature: float = 1.0, beta: float = 0.5, hard_weight: float = 1.0,
                 soft_weight: float = 1.0, ignore_index: int = -100, reduction: str = "mean",
                 return_terms: bool = False, shift: bool = False, process_group=None):
    """Per row: hard_weight * CE(target, softmax(student)) + soft_weight * D(method), without the
    [N, V] softmaxes. student/teacher logits [..., V] (same V and dtype); target [...] or None
    (then every row counts and hard_weight must be 0). method: see SPEC §2 — "ttm" matches
    softmax(teacher / T) with the untempered student (the TTM paper's form: T = 1/gamma,
    soft_weight = its beta); "kd" is Hinton's T^2 * KL at temperature T on both.
    return_terms=True also returns a dict of per-row "soft", "hard" and "U" (WTTM's weight).
    shift=True: [..., T, V] logits and labels [..., T] of whole sequences; position t is scored
    against label t + 1 and the last position is ignored, without copying the logits (needs target).
    process_group: both logits are this rank's vocabulary shard (SPEC §4; objx.parallel.losses).
    """
    fn = "objx.distill_loss"

    def check():
        ag.refuse_function_transforms(fn)
        check_reduction(reduction)
        if method not in METHODS:
            raise ValueError(f"{fn}: method must be one of {METHODS}, got {method!r}")
        index = check_ignore_index(fn, ignore_index)
        labels = shift_labels(fn, target, index, shift)
        # The kernels read slices such as logits[:, :-1] in place; the sharded path takes [N, V].
        s = rows(fn, student_logits, "student_logits", in_place=process_group is None)
        t = rows(fn, teacher_logits, "teacher_logits", in_place=process_group is None)
        if t.shape[-1] != s.shape[-1]:
            raise ValueError(f"{fn}: vocabulary mismatch: student_logits has V = {s.shape[-1]}, "
                             f"teacher_logits has V = {t.shape[-1]}")
        if teacher_logits.shape[:-1] != student_logits.shape[:-1]:
            raise ValueError(f"{fn}: teacher_logits must have student_logits' leading dims "
                             f"{tuple(student_logits.shape[:-1])}, got {tuple(teacher_logits.shape)}")
        check_devices(fn, "student_logits", student_logits, teacher_logits=teacher_logits)
        target_rows = rows_target(fn, labels, student_logits.shape[:-1], "student_logits", student_logits.device)
        return index, s, t, target_rows

    # With a process_group an argument error is raised on every rank, none left waiting for it.
    ignore_index, s, t, target_rows = checked_on_every_rank(
        fn, process_group, getattr(student_logits, "device", None), check)
    shape = student_logits.shape[:-1]
    if process_group is not None:
        return sharded.distill_loss(
            fn, s, t, target_rows, shape, ignore_index=ignore_index, reduction=reduction, return_terms=return_terms,
            process_group=process_group, method=method, temperature=temperature, beta=beta, hard_weight=hard_weight,
            soft_weight=soft_weight)
    loss_rows, soft, hard, stats, counted = torch.ops.objx.distill_forward(
        s, t, target_rows, method, float(temperature), float(beta), float(hard_weight), float(soft_weight),
        int(ignore_index))
    loss = reduce_rows(loss_rows, counted, reduction, shape)
    return (loss, row_terms(soft, hard, stats, temperature, shape)) if return_terms else loss


def row_terms(soft, hard, stats, temperature, shape) -> dict:
    """return_terms' per-row soft and hard terms and WTTM's U = exp(lse(t/T) - lse(t)/T), from the
    row statistics (columns: lse_s, lse_s/T, lse_t/T, lse_t, D, Σ q a)."""
    u = torch.exp(stats[:, 2] - stats[:, 3] / float(temperature))
    return {name: v.reshape(shape) for name, v in (("soft", soft), ("hard", hard), ("U", u))}


class DistillLoss(torch.nn.Module):
    """nn.Module form of objx.distill_loss; forward(student_logits, teacher_logits, target=None)."""

    def __init__(self, method: str = "ttm", *, temperature: float = 1.0, beta: float = 0.5, hard_weight: float = 1.0,
                 soft_weight: float = 1.0, ignore_index: int = -100, reduction: str = "mean", process_group=None):
        super().__init__()
        check_reduction(reduction)
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        ignore_index = check_ignore_index("objx.DistillLoss", ignore_index)
        self.kwargs = dict(method=method, temperature=temperature, beta=beta, hard_weight=hard_weight,
                           soft_weight=soft_weight, ignore_index=ignore_index, reduction=reduction,
                           process_group=process_group)

    def forward(self, student_logits, teacher_logits, target=None):
        return distill_loss(student_logits, teacher_logits, target, **self.kwargs)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())


# --- the ops as torch sees them ---------------------------------------------------------------

@torch.library.register_fake("objx::distill_forward")
def _forward_fake(*inputs):
    student, teacher = inputs[:2]
    rows_ = ag.fake_rows("objx.distill_loss", student, "student_logits")
    torch._check(ag.fake_rows("objx.distill_loss", teacher, "teacher_logits") == rows_ and
                 teacher.shape[-1] == student.shape[-1], lambda: "objx.distill_loss: shape mismatch")
    # Mixed devices dispatch here (meta outranks cpu), where no kernel would have refused them.
    for name, x in (("teacher_logits", teacher), ("target", inputs[2])):
        torch._check_value(x is None or x.device == student.device, lambda: f"objx.distill_loss: {name} is on "
                           f"{x.device} but student_logits is on {student.device}")
    acc, new = ag.acc_dtype(student.dtype), student.new_empty
    return (new(rows_, dtype=acc), new(rows_, dtype=acc), new(rows_, dtype=acc), new(rows_, 6, dtype=acc),
            new(rows_, dtype=torch.bool))


ag.register_grad_fake("distill_backward", "student_logits")
ag.register_row_sums_fake("distill_shard_sums")


ag.register_logits_autograd("distill_forward", "distill_backward", grad_of="student_logits")
