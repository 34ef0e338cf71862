"""Pure-PyTorch reference of every objx loss, written straight from SPEC.md for tests and for
debugging: slow, materialises the full softmax, float64 by default, differentiable by autograd."""

from typing import Optional, Union

import torch

from ._args import check_reduction, flatten_rows, reduce_rows
from .objective import Objective, resolve_objective


def _objective_value(obj: Objective, logp: torch.Tensor) -> torch.Tensor:
    if obj.kind == "power" and obj.alpha != 0:
        # (1 - p^a)/a with the value from expm1 (exact when p^a is near 1) and the gradient from
        # exp (autograd's expm1 backward forms 1 + expm1, which loses p^a when it is tiny).
        a = obj.alpha * logp
        a_const = a.detach()
        return (-torch.expm1(a_const) - (torch.exp(a) - torch.exp(a_const))) / obj.alpha
    if obj.kind == "log1m":
        return torch.log1p(obj.eps - logp.exp())
    return -logp


def prob_loss(logits: torch.Tensor, target: torch.Tensor, objective: Union[str, Objective] = "nll", *,
              alpha: float = 1.0, min_prob: Optional[float] = None, max_prob: Optional[float] = None,
              ignore_index: int = -100, reduction: str = "mean", label_smoothing: float = 0.0,
              z_loss: float = 0.0, softcap: Optional[float] = None, return_token_prob: bool = False,
              dtype: torch.dtype = torch.float64):
    """SPEC §1 in plain PyTorch, computed in `dtype` (float64 by default)."""
    check_reduction(reduction)
    obj = resolve_objective(objective, alpha, min_prob, max_prob)
    if label_smoothing and obj.kind != "nll":
        raise ValueError("label_smoothing is only defined for objective 'nll'")
    z, y = flatten_rows("objx.reference.prob_loss", logits, target)
    z = z.to(dtype)
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    valid = y != ignore_index
    y_safe = torch.where(valid, y, torch.zeros_like(y))

    # Which rows count is a constant of this step (SPEC §1): find it without autograd, then keep
    # uncounted rows out of the graph so that their -inf/NaN cannot leak into gradients.
    with torch.no_grad():
        p_all = (z.gather(1, y_safe[:, None]).squeeze(1) - torch.logsumexp(z, dim=1)).exp()
        counted = valid.clone()
        if obj.min_prob is not None:
            counted &= ~(p_all < obj.min_prob)
        if obj.max_prob is not None:
            counted &= ~(p_all > obj.max_prob)
    zc = torch.where(counted[:, None], z, torch.zeros_like(z))
    lse = torch.logsumexp(zc, dim=1)
    # log_softmax keeps log p exact near p = 1, where lse - z_y would cancel.
    logp = torch.log_softmax(zc, dim=1).gather(1, y_safe[:, None]).squeeze(1)
    if label_smoothing:
        f = (1 - label_smoothing) * (-logp) + label_smoothing * (lse - zc.mean(dim=1))
    else:
        f = _objective_value(obj, logp)
    f = f + z_loss * lse * lse
    rows = torch.where(counted, f, torch.zeros_like(f))
    loss = reduce_rows(rows, counted, reduction, target.shape)
    if return_token_prob:
        return loss, torch.where(valid, p_all, torch.zeros_like(p_all)).reshape(target.shape)
    return loss


def linear_prob_loss(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
                     bias: Optional[torch.Tensor] = None, objective: Union[str, Objective] = "nll", *,
                     dtype: torch.dtype = torch.float64, **kwargs):
    """SPEC §1 fused linear variant: prob_loss(hidden @ weight.T + bias) with the logits built whole."""
    logits = hidden.to(dtype) @ weight.to(dtype).T
    if bias is not None:
        logits = logits + bias.to(dtype)
    return prob_loss(logits, target, objective, dtype=dtype, **kwargs)
