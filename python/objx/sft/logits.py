"""SPEC §1: probability-based SFT objectives on logits (objx.prob_loss, objx.ProbLoss) and the
per-token log-probabilities built on them (objx.token_logprobs, SPEC §3.1), with the ops'
register_fake and register_autograd."""

from typing import Optional, Union

import torch

from .. import _autograd as ag
from .._class_weights import check_class_weight, reduce_weighted_rows, target_weights
from .._loss_stats import loss_stats
from .._rows import check_ignore_index, check_reduction, flatten_rows, reduce_rows
from .._shift import shift_labels
from ..parallel import losses as sharded
from ..parallel.agreement import checked_on_every_rank
from .objective import Objective, check_extras, resolve_objective


def prob_loss(logits: torch.Tensor, target: torch.Tensor, objective: Union[str, Objective] = "nll", *,
              alpha: float = 1.0, min_prob: Optional[float] = None, max_prob: Optional[float] = None,
              ignore_index: int = -100, reduction: str = "mean", label_smoothing: float = 0.0,
              z_loss: float = 0.0, softcap: Optional[float] = None, return_token_prob: bool = False,
              weight: Optional[torch.Tensor] = None, return_stats: bool = False, shift: bool = False,
              process_group=None):
    """Loss of a probability-based objective f(p_y) over rows of logits [..., V] with targets [...].

    objective: "nll" | "power" | "log1m", the paper's "-p" / "-p^K", or an objx.Objective.
    Rows whose target is ignore_index, or whose p_y is outside [min_prob, max_prob], count as 0;
    "mean" divides by the number of counted rows. The full softmax is never materialised.
    weight: class weights [V] with F.cross_entropy's semantics: a counted row's loss is scaled by
    weight[target] (label smoothing weighs each token's term by its own weight) and "mean" divides
    by the sum of the counted rows' weights. No gradient flows to weight. With process_group every
    rank passes the whole vocabulary's weight [V], not its shard.
    With return_token_prob=True also returns p_y per row (float32, no gradient; 0 where ignored);
    with return_stats=True also returns an objx.LossStats (per-row token_prob, lse, correct, and
    the loss's z-loss part), computed in the same pass. Both: (loss, token_prob, stats).
    shift=True: logits [..., T, V] and labels [..., T] of whole sequences; position t predicts
    label t + 1 and the last position is ignored (as logits[..., :-1, :] with labels[..., 1:], but
    without copying the logits); per-row outputs keep the [..., T] shape, 0 at the last position.
    process_group: logits are this rank's vocabulary shard (SPEC §4; objx.parallel.losses); the
    loss is the unsharded one, the gradient this shard's.
    """
    fn = "objx.prob_loss"

    def check():
        ag.refuse_function_transforms(fn)
        check_reduction(reduction)
        obj = resolve_objective(objective, alpha, min_prob, max_prob, fn=fn)
        check_extras(fn, obj, label_smoothing, z_loss, softcap)
        index = check_ignore_index(fn, ignore_index)
        labels = shift_labels(fn, target, index, shift)
        # The kernels read a slice such as logits[:, :-1] in place; the sharded path takes [N, V].
        rows_logits, rows_target = flatten_rows(fn, logits, labels, in_place=process_group is None)
        # With a process_group the logits hold a shard and weight the whole vocabulary (its V is checked there).
        class_weight = check_class_weight(fn, "weight", weight, None if process_group is not None else
                                          rows_logits.shape[-1], rows_logits.device)
        return obj, index, labels, rows_logits, rows_target, class_weight

    # With a process_group an argument error is raised on every rank, none left waiting for it.
    obj, ignore_index, target, rows_logits, rows_target, weight = checked_on_every_rank(
        fn, process_group, getattr(logits, "device", None), check)
    if process_group is not None:
        loss_rows, lse, token_logprob, counted, correct = sharded.prob_loss_rows(
            fn, rows_logits, rows_target, obj, ignore_index=ignore_index, reduction=reduction,
            label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap, return_token_prob=return_token_prob,
            weight=weight, return_stats=return_stats, process_group=process_group)
    else:
        loss_rows, lse, token_logprob, counted, correct = torch.ops.objx.prob_loss_forward(
            rows_logits, rows_target, obj.kind, float(obj.param), obj.min_prob, obj.max_prob,
            int(ignore_index), float(label_smoothing), float(z_loss),
            None if softcap is None else float(softcap), weight)
    return prob_loss_outputs(loss_rows, lse, token_logprob, counted, correct, rows_target, target.shape,
                              weight=weight, ignore_index=ignore_index, reduction=reduction, z_loss=z_loss,
                              return_token_prob=return_token_prob, return_stats=return_stats)


def prob_loss_outputs(loss_rows, lse, token_logprob, counted, correct, rows_target, shape, *, weight,
                       ignore_index, reduction, z_loss, return_token_prob, return_stats):
    """The forward op's rows -> what prob_loss / linear_prob_loss return."""
    if weight is None:
        loss = reduce_rows(loss_rows, counted, reduction, shape)
    else:
        row_weight = target_weights(weight, rows_target, counted, loss_rows.dtype)
        loss = reduce_weighted_rows(loss_rows, row_weight, reduction, shape)
    if not (return_token_prob or return_stats):
        return loss
    out = (loss,)
    if return_token_prob:
        out += (token_logprob.exp().to(torch.float32).reshape(shape),)
    if return_stats:
        row_weight = target_weights(weight, rows_target, counted, loss_rows.dtype)
        out += (loss_stats(token_logprob, lse, correct, rows_target != ignore_index, row_weight, z_loss,
                           reduction, shape),)
    return out


class ProbLoss(torch.nn.Module):
    """nn.Module form of objx.prob_loss; forward(logits, target)."""

    def __init__(self, objective: Union[str, Objective] = "nll", *, alpha: float = 1.0,
                 min_prob: Optional[float] = None, max_prob: Optional[float] = None,
                 ignore_index: int = -100, reduction: str = "mean", label_smoothing: float = 0.0,
                 z_loss: float = 0.0, softcap: Optional[float] = None, return_token_prob: bool = False,
                 weight: Optional[torch.Tensor] = None, return_stats: bool = False, shift: bool = False,
                 process_group=None):
        super().__init__()
        check_reduction(reduction)
        self.objective = resolve_objective(objective, alpha, min_prob, max_prob, fn="objx.ProbLoss")
        check_extras("objx.ProbLoss", self.objective, label_smoothing, z_loss, softcap)
        self.ignore_index = check_ignore_index("objx.ProbLoss", ignore_index)
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self.z_loss = z_loss
        self.softcap = softcap
        self.return_token_prob = return_token_prob
        self.return_stats = return_stats
        self.shift = shift
        self.process_group = process_group
        # A buffer, as torch.nn.CrossEntropyLoss's: it follows the module's .to(device).
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor):
        return prob_loss(logits, target, self.objective, ignore_index=self.ignore_index,
                         reduction=self.reduction, label_smoothing=self.label_smoothing,
                         z_loss=self.z_loss, softcap=self.softcap,
                         return_token_prob=self.return_token_prob, weight=self.weight,
                         return_stats=self.return_stats, shift=self.shift, process_group=self.process_group)

    def extra_repr(self) -> str:
        return f"objective={self.objective.name!r}, reduction={self.reduction!r}"


def token_logprobs(logits: torch.Tensor, target: torch.Tensor, *, ignore_index: int = -100, shift: bool = False,
                   process_group=None) -> torch.Tensor:
    """log p(target) per row of logits [..., V] -> [...], 0 where target == ignore_index;
    differentiable, the softmax never built (the nll kernels of prob_loss with reduction="none").
    shift: as prob_loss's (position t scores label t + 1; 0 at the last position).
    process_group: logits are this rank's vocabulary shard (SPEC §4)."""
    return -prob_loss(logits, target, "nll", ignore_index=ignore_index, reduction="none", shift=shift,
                      process_group=process_group)


# --- the ops as torch sees them ---------------------------------------------------------------

@torch.library.register_fake("objx::prob_loss_forward")
def _forward_fake(*inputs):
    logits, target = inputs[:2]
    rows = ag.fake_rows("objx.prob_loss", logits, "logits")
    torch._check(target.dim() == 1 and target.shape[0] == rows, lambda: "objx.prob_loss: target must be [N]")
    # Mixed devices dispatch here (meta outranks cpu), where no kernel would have refused them.
    torch._check_value(target.device == logits.device,
                       lambda: f"objx.prob_loss: target is on {target.device} but logits is on {logits.device}")
    acc = ag.acc_dtype(logits.dtype)
    return (logits.new_empty(rows, dtype=acc), logits.new_empty(rows, dtype=acc),
            logits.new_empty(rows, dtype=acc), logits.new_empty(rows, dtype=torch.bool),
            logits.new_empty(rows, dtype=torch.bool))


ag.register_grad_fake("prob_loss_backward", "logits")


ag.register_logits_autograd("prob_loss_forward", "prob_loss_backward", grad_of="logits")
