"""SPEC §1.1: the SFT objectives on hidden states and an LM head, without ever building the [N, V]
logits (objx.linear_prob_loss, objx.LinearProbLoss, objx.linear_token_logprobs), with the ops'
register_fake and register_autograd."""

from typing import Optional, Union

import torch

from .. import _autograd as ag
from .._class_weights import check_class_weight
from .._rows import check_ignore_index, check_reduction, flatten_rows
from .._shift import shift_labels
from .._tiles import slicing, tile_budget_bytes
from ..parallel import losses as sharded
from ..parallel.agreement import checked_on_every_rank
from ..parallel.dtensor import gathered_weight
from .logits import prob_loss_outputs
from .objective import Objective, check_extras, resolve_objective


def check_head(fn: str, hidden: torch.Tensor, weight, bias: Optional[torch.Tensor], *, hidden_name: str = "hidden",
               weight_name: str = "weight", bias_name: str = "bias") -> None:
    """The fused heads' own checks (objx.linear_distill_loss uses it too), each naming its argument:
    hidden [N, D] (already rows), weight [V, D], bias None or [V], all floating point."""
    for name, t in ((hidden_name, hidden), (weight_name, weight), (bias_name, bias)):
        if t is None and name == bias_name:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{fn}: {name} must be a floating-point tensor, got {t.dtype}")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"{fn}: {weight_name} must be [V, D] with D = {hidden.shape[-1]} ({hidden_name}'s last dim), "
                         f"got shape {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"{fn}: {bias_name} must be [V] with V = {weight.shape[0]} ({weight_name}'s rows), got "
                         f"shape {tuple(bias.shape)}")


def auto_tile_size(rows: int, vocab: int, dtype: torch.dtype, device: torch.device) -> int:
    """Vocabulary columns per tile, from N, V and (on CUDA) free memory."""
    # A tile of logits plus its gradient in place, and the per-row float32 state.
    per_column = max(rows, 1) * max(torch.finfo(dtype).bits // 8, 4)
    columns = max(tile_budget_bytes(device) // per_column, 256)
    columns = columns // 256 * 256
    return int(min(columns, vocab))


def linear_prob_loss(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
                     bias: Optional[torch.Tensor] = None, objective: Union[str, Objective] = "nll", *,
                     alpha: float = 1.0, min_prob: Optional[float] = None, max_prob: Optional[float] = None,
                     ignore_index: int = -100, reduction: str = "mean", label_smoothing: float = 0.0,
                     z_loss: float = 0.0, softcap: Optional[float] = None, return_token_prob: bool = False,
                     tile_size: Optional[int] = None, grad_in_forward: Optional[bool] = None,
                     ce_weight: Optional[torch.Tensor] = None, return_stats: bool = False, shift: bool = False,
                     process_group=None, chunk_size: Optional[int] = None):
    """prob_loss(hidden @ weight.T + bias, target, objective, ...) without the [N, V] logits.

    hidden [..., D], weight [V, D], bias [V] or None, target [...]. tile_size: vocabulary columns
    per logits tile (chosen from the shapes and free memory when None); the logits are made one
    [N, tile_size] tile at a time, or, with grad_in_forward, one row block with every column and
    as many logits (tile_size · N / V rows) at a time. grad_in_forward=True computes the gradients
    during the forward (one GEMM pass fewer; needs reduction "mean" or "sum"); by default it is on
    for those reductions when a gradient will be needed. chunk_size: deprecated alias of tile_size.
    ce_weight: class weights [V], as prob_loss's weight (Liger's name: weight is the LM head here).
    return_stats: also return an objx.LossStats, as prob_loss. shift: as prob_loss's (hidden
    [..., T, D], labels [..., T]; the last positions are dropped before any GEMM).
    process_group: weight (and bias) are this rank's vocabulary shard of the LM head and hidden is
    the same on every rank (SPEC §4); grad_hidden is summed over the group; ce_weight is the whole
    vocabulary's [V] on every rank. That path runs in PyTorch, in row blocks holding as many logits
    as a tile (objx.parallel.losses).
    """
    fn = "objx.linear_prob_loss"

    def check():
        ag.refuse_function_transforms(fn)
        check_reduction(reduction)
        tiles = slicing(fn, "tile_size", tile_size, chunk_size)
        obj = resolve_objective(objective, alpha, min_prob, max_prob, fn=fn)
        check_extras(fn, obj, label_smoothing, z_loss, softcap)
        index = check_ignore_index(fn, ignore_index)
        labels = shift_labels(fn, target, index, shift)
        rows_hidden, rows_target = flatten_rows(fn, hidden, labels, name="hidden", last="D")
        check_head(fn, rows_hidden, weight, bias)
        head = gathered_weight(weight, fn, process_group)
        # With a process_group the head holds a shard and ce_weight the whole vocabulary (its V is checked there).
        class_weight = check_class_weight(fn, "ce_weight", ce_weight, None if process_group is not None else
                                          head.shape[0], rows_hidden.device)
        return tiles, obj, index, labels, rows_hidden, rows_target, head, class_weight

    # With a process_group an argument error is raised on every rank, none left waiting for it.
    tile_size, obj, ignore_index, target, rows_hidden, rows_target, weight, ce_weight = checked_on_every_rank(
        fn, process_group, getattr(hidden, "device", None), check)
    if process_group is not None:
        loss_rows, lse, token_logprob, counted, correct = sharded.linear_prob_loss_rows(
            fn, rows_hidden, weight, bias, rows_target, obj, ignore_index=ignore_index, reduction=reduction,
            label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap, return_token_prob=return_token_prob,
            ce_weight=ce_weight, return_stats=return_stats, process_group=process_group, tile_size=tile_size)
        return prob_loss_outputs(loss_rows, lse, token_logprob, counted, correct, rows_target, target.shape,
                                 weight=ce_weight, ignore_index=ignore_index, reduction=reduction, z_loss=z_loss,
                                 return_token_prob=return_token_prob, return_stats=return_stats)
    needs_grad = torch.is_grad_enabled() and (
        hidden.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad))
    if grad_in_forward is None:
        grad_in_forward = needs_grad and reduction != "none"
    if grad_in_forward and reduction == "none":
        raise ValueError(f"{fn}: grad_in_forward needs reduction 'mean' or 'sum' "
                         "(per-row upstream gradients are unknown in the forward)")
    if tile_size is None:
        tile_size = auto_tile_size(rows_hidden.shape[0], weight.shape[0], hidden.dtype, hidden.device)
    loss_rows, lse, token_logprob, counted, correct, *_grads = torch.ops.objx.linear_prob_loss_forward(
        rows_hidden, weight, bias, rows_target, obj.kind, float(obj.param), obj.min_prob, obj.max_prob,
        int(ignore_index), float(label_smoothing), float(z_loss), None if softcap is None else float(softcap),
        tile_size, bool(grad_in_forward), ce_weight)
    return prob_loss_outputs(loss_rows, lse, token_logprob, counted, correct, rows_target, target.shape,
                             weight=ce_weight, ignore_index=ignore_index, reduction=reduction, z_loss=z_loss,
                             return_token_prob=return_token_prob, return_stats=return_stats)


def linear_token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
                          bias: Optional[torch.Tensor] = None, *, ignore_index: int = -100,
                          tile_size: Optional[int] = None, shift: bool = False, process_group=None,
                          chunk_size: Optional[int] = None) -> torch.Tensor:
    """log p(target) per row of hidden @ weight.T + bias (SPEC §3.1), 0 for ignored rows;
    differentiable in hidden, weight and bias; the logits are never built. shift, process_group: as
    in linear_prob_loss; chunk_size: deprecated alias of tile_size."""
    tile_size = slicing("objx.linear_token_logprobs", "tile_size", tile_size, chunk_size)
    return -linear_prob_loss(hidden, weight, target, bias, "nll", ignore_index=ignore_index,
                             reduction="none", tile_size=tile_size, grad_in_forward=False, shift=shift,
                             process_group=process_group)


class LinearProbLoss(torch.nn.Module):
    """nn.Module form of objx.linear_prob_loss; forward(hidden, weight, target, bias=None)."""

    def __init__(self, objective: Union[str, Objective] = "nll", *, alpha: float = 1.0,
                 min_prob: Optional[float] = None, max_prob: Optional[float] = None, ignore_index: int = -100,
                 reduction: str = "mean", label_smoothing: float = 0.0, z_loss: float = 0.0,
                 softcap: Optional[float] = None, return_token_prob: bool = False,
                 tile_size: Optional[int] = None, grad_in_forward: Optional[bool] = None,
                 ce_weight: Optional[torch.Tensor] = None, return_stats: bool = False, shift: bool = False,
                 process_group=None, chunk_size: Optional[int] = None):
        super().__init__()
        check_reduction(reduction)
        tile_size = slicing("objx.LinearProbLoss", "tile_size", tile_size, chunk_size)
        self.objective = resolve_objective(objective, alpha, min_prob, max_prob)
        self.kwargs = dict(ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing,
                           z_loss=z_loss, softcap=softcap, return_token_prob=return_token_prob,
                           tile_size=tile_size, grad_in_forward=grad_in_forward, return_stats=return_stats,
                           shift=shift, process_group=process_group)
        self.register_buffer("ce_weight", ce_weight)  # follows the module's .to(device)

    def forward(self, hidden, weight, target, bias=None):
        return linear_prob_loss(hidden, weight, target, bias, self.objective, ce_weight=self.ce_weight, **self.kwargs)

    def extra_repr(self) -> str:
        return f"objective={self.objective.name!r}, reduction={self.kwargs['reduction']!r}"


# --- the ops as torch sees them ---------------------------------------------------------------

ag.register_head_fakes("linear_prob_loss_forward", "linear_prob_loss_backward", head=("hidden", "weight", "bias"),
                       row_outputs=((), (), (), bool, bool))  # loss, lse, token_logprob, counted, correct
ag.register_head_autograd("objx.linear_prob_loss", "linear_prob_loss_forward", "linear_prob_loss_backward",
                          head=("hidden", "weight", "bias"))
ag.register_head_autocast("linear_prob_loss_forward")
