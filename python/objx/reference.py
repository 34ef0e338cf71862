"""Pure-PyTorch reference of every objx loss, written straight from docs/SPEC.md for tests and for
debugging: slow, materialises the full softmax, float64 by default, differentiable by autograd."""

from typing import Optional, Union

import torch

from ._class_weights import reduce_weighted_rows
from ._rows import check_reduction, flatten_rows, reduce_rows
from ._vocabulary import WHOLE, target_logprob_from
from .sft.objective import Objective, check_extras, resolve_objective


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
              weight: Optional[torch.Tensor] = None, return_stats: bool = False,
              dtype: torch.dtype = torch.float64, vocab=WHOLE):
    """SPEC §1 in plain PyTorch, computed in `dtype` (float64 by default). `vocab` says how sums over
    the vocabulary are taken: whole rows, or a vocabulary-parallel shard (objx.parallel.vocab).
    weight: class weights [V] (SPEC §1, whole rows only); return_stats: also an objx.LossStats
    (SPEC §1.2), its argmax from torch.argmax."""
    check_reduction(reduction)
    obj = resolve_objective(objective, alpha, min_prob, max_prob, fn="objx.reference.prob_loss")
    check_extras("objx.reference.prob_loss", obj, label_smoothing, z_loss, softcap)
    z, y = flatten_rows("objx.reference.prob_loss", logits, target)
    if weight is None:
        rows, counted, token_prob = prob_loss_rows(z, y, obj, ignore_index=ignore_index,
                                                   label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap,
                                                   dtype=dtype, vocab=vocab)
        loss = reduce_rows(rows, counted, reduction, target.shape)
        row_weight = counted.to(dtype)
    else:
        if vocab is not WHOLE:
            raise ValueError("objx.reference.prob_loss: weight needs whole rows")
        rows, counted, token_prob, row_weight = weighted_prob_loss_rows(
            z, y, obj, weight, ignore_index=ignore_index, label_smoothing=label_smoothing, z_loss=z_loss,
            softcap=softcap, dtype=dtype)
        loss = reduce_weighted_rows(rows, row_weight, reduction, target.shape)
    out = (loss,)
    if return_token_prob:
        out += (token_prob.reshape(target.shape),)
    if return_stats:
        out += (_loss_stats(z, y, row_weight, ignore_index=ignore_index, z_loss=z_loss, softcap=softcap,
                            reduction=reduction, dtype=dtype, shape=target.shape),)
    return out[0] if len(out) == 1 else out


def weighted_prob_loss_rows(z: torch.Tensor, y: torch.Tensor, obj: Objective, weight: torch.Tensor, *,
                            ignore_index: int = -100, label_smoothing: float = 0.0, z_loss: float = 0.0,
                            softcap: Optional[float] = None, dtype: torch.dtype = torch.float64):
    """prob_loss_rows with class weights (F.cross_entropy's): a counted row's f(p_y) and z-loss
    scaled by w_y, label smoothing as eps/V Σ_j w_j (-log p_j). Also returns the rows' weights in the
    reduction (w_y where counted, else 0)."""
    w = weight.to(dtype).detach()
    rows, counted, token_prob = prob_loss_rows(z, y, obj, ignore_index=ignore_index, label_smoothing=0.0,
                                               z_loss=z_loss, softcap=softcap, dtype=dtype)
    y_safe = torch.where(counted, y, torch.zeros_like(y))
    row_weight = torch.where(counted, w[y_safe], torch.zeros_like(rows))
    rows = rows * row_weight
    if label_smoothing:
        zs = z.to(dtype)
        if softcap is not None:
            zs = softcap * torch.tanh(zs / softcap)
        zs = torch.where(counted[:, None], zs, torch.zeros_like(zs))
        log_p = torch.log_softmax(zs, -1)
        nll = -log_p.gather(1, y_safe[:, None]).squeeze(1)
        smooth = -(log_p * w).sum(-1) / zs.shape[1]
        # rows holds w_y (nll + z-loss); trade eps of its nll for the weighted smoothing term.
        extra = label_smoothing * (smooth - row_weight * nll)
        rows = rows + torch.where(counted, extra, torch.zeros_like(extra))
    return rows, counted, token_prob, row_weight


def _loss_stats(z, y, row_weight, *, ignore_index, z_loss, softcap, reduction, dtype, shape):
    """objx.LossStats from the full logits (SPEC §1.2)."""
    from ._loss_stats import LossStats

    with torch.no_grad():
        zs = z.to(dtype)
        if softcap is not None:
            zs = softcap * torch.tanh(zs / softcap)
        valid = y != ignore_index
        y_safe = torch.where(valid, y, torch.zeros_like(y))
        lse = torch.where(valid, torch.logsumexp(zs, -1), torch.zeros(1, dtype=dtype, device=z.device))
        p = torch.where(valid, (zs.gather(1, y_safe[:, None]).squeeze(1) - torch.logsumexp(zs, -1)).exp(),
                        torch.zeros(1, dtype=dtype, device=z.device))
        correct = valid & (zs.argmax(-1) == y_safe)
        z_rows = z_loss * lse * lse * row_weight
        return LossStats(token_prob=p.to(torch.float32).reshape(shape), lse=lse.to(torch.float32).reshape(shape),
                         correct=correct.reshape(shape),
                         z_loss=reduce_weighted_rows(z_rows, row_weight, reduction, shape))


def prob_loss_rows(z: torch.Tensor, y: torch.Tensor, obj: Objective, *, ignore_index: int = -100,
                   label_smoothing: float = 0.0, z_loss: float = 0.0, softcap: Optional[float] = None,
                   dtype: torch.dtype = torch.float64, vocab=WHOLE):
    """Rows of logits [N, V] and targets [N] -> (per-row loss, 0 where not counted; counted; p_y, 0
    where ignored), computed in `dtype`."""
    if label_smoothing and obj.kind != "nll":
        raise ValueError("label_smoothing is only defined for objective 'nll'")
    z = z.to(dtype)
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    valid = y != ignore_index
    y_safe = torch.where(valid, y, torch.zeros_like(y))

    # Which rows count is a constant of this step (SPEC §1): find it without autograd, then keep
    # uncounted rows out of the graph so that their -inf/NaN cannot leak into gradients.
    thresholds = obj.min_prob is not None or obj.max_prob is not None
    counted = valid.clone()
    if thresholds:
        with torch.no_grad():
            p_all = vocab.target_logprob(z, y_safe).exp()
            if obj.min_prob is not None:
                counted &= ~(p_all < obj.min_prob)
            if obj.max_prob is not None:
                counted &= ~(p_all > obj.max_prob)
    zc = torch.where(counted[:, None], z, torch.zeros_like(z))
    # log p from the other tokens' LSE, not lse - z_y: that cancels near p = 1.
    others, z_y = vocab.others_lse(zc, y_safe), vocab.target_logit(zc, y_safe)
    logp = target_logprob_from(others, z_y)
    lse = torch.logaddexp(others, z_y)
    if not thresholds:
        p_all = logp.detach().exp()  # every valid row counts, and zc = z on them
    mean_z = vocab.mean(zc) if label_smoothing else None
    rows = torch.where(counted, row_loss(obj, logp, lse, mean_z, label_smoothing, z_loss), torch.zeros_like(logp))
    return rows, counted, torch.where(valid, p_all, torch.zeros_like(p_all))


def row_loss(obj: Objective, logp: torch.Tensor, lse: torch.Tensor, mean_z: Optional[torch.Tensor],
             label_smoothing: float, z_loss: float) -> torch.Tensor:
    """SPEC §1 per row from log p_y, the row's LSE and (for label smoothing) its mean logit."""
    if label_smoothing:
        f = (1 - label_smoothing) * (-logp) + label_smoothing * (lse - mean_z)
    else:
        f = _objective_value(obj, logp)
    return f + z_loss * lse * lse


def linear_prob_loss(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
                     bias: Optional[torch.Tensor] = None, objective: Union[str, Objective] = "nll", *,
                     ce_weight: Optional[torch.Tensor] = None, dtype: torch.dtype = torch.float64, **kwargs):
    """SPEC §1 fused linear variant: prob_loss(hidden @ weight.T + bias) with the logits built whole;
    ce_weight: the class weights (prob_loss's weight)."""
    logits = hidden.to(dtype) @ weight.to(dtype).T
    if bias is not None:
        logits = logits + bias.to(dtype)
    return prob_loss(logits, target, objective, dtype=dtype, weight=ce_weight, **kwargs)


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: Optional[torch.Tensor] = None,
                 *, method: str = "ttm", temperature: float = 1.0, beta: float = 0.5, hard_weight: float = 1.0,
                 soft_weight: float = 1.0, ignore_index: int = -100, reduction: str = "mean",
                 dtype: torch.dtype = torch.float64, vocab=WHOLE):
    """SPEC §2 in plain PyTorch (full softmaxes), computed in `dtype`; `vocab` as in prob_loss."""
    check_reduction(reduction)
    shape = student_logits.shape[:-1]
    rows, counted, _terms = distill_rows(
        student_logits.reshape(-1, student_logits.shape[-1]), teacher_logits.reshape(-1, teacher_logits.shape[-1]),
        None if target is None else target.reshape(-1), method=method, temperature=temperature, beta=beta,
        hard_weight=hard_weight, soft_weight=soft_weight, ignore_index=ignore_index, dtype=dtype, vocab=vocab)
    return reduce_rows(rows, counted, reduction, shape)


def distill_rows(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: Optional[torch.Tensor], *,
                 method: str = "ttm", temperature: float = 1.0, beta: float = 0.5, hard_weight: float = 1.0,
                 soft_weight: float = 1.0, ignore_index: int = -100, dtype: torch.dtype = torch.float64, vocab=WHOLE):
    """Rows [N, V] (and targets [N] or None) -> (per-row loss, 0 where not counted; counted;
    {"soft", "hard", "U"} per row), computed in `dtype`."""
    s = student_logits.to(dtype)
    t = teacher_logits.to(dtype).detach()
    T = float(temperature)
    log_q1 = vocab.log_softmax(s)
    log_qT = vocab.log_softmax(s / T)
    log_pT = vocab.log_softmax(t / T)
    u = torch.exp(vocab.lse(t / T) - vocab.lse(t) / T)  # WTTM's weight; a constant (the teacher is detached)

    def kl(log_a, log_b):  # sum a (log a - log b), with 0 log 0 = 0
        return vocab.sum(torch.where(log_a == float("-inf"), torch.zeros_like(log_a), log_a.exp() * (log_a - log_b)))

    if method == "jsd" and beta == 0:
        method = "forward_kl"
    if method == "jsd" and beta == 1:
        method = "reverse_kl"
    if method in ("ttm", "wttm"):
        soft = kl(log_pT, log_q1)
        if method == "wttm":
            soft = u * soft
    elif method == "kd":
        soft = T * T * kl(log_pT, log_qT)
    elif method == "forward_kl":
        soft = kl(log_pT, log_qT)
    elif method == "reverse_kl":
        soft = kl(log_qT, log_pT)
    elif method == "jsd":
        log_m = torch.logaddexp(log_pT + torch.log(torch.tensor(beta, dtype=dtype)),
                                log_qT + torch.log(torch.tensor(1 - beta, dtype=dtype)))
        soft = beta * kl(log_pT, log_m) + (1 - beta) * kl(log_qT, log_m)
    elif method == "tvd":
        soft = 0.5 * vocab.sum((log_pT.exp() - log_qT.exp()).abs())
    else:
        raise ValueError(f"unknown method {method!r}")
    if target is not None:
        y = target
        counted = y != ignore_index
        hard = -vocab.target_logprob(s, torch.where(counted, y, 0))
    else:
        counted = torch.ones(s.shape[0], dtype=torch.bool, device=s.device)
        hard = torch.zeros_like(soft)
    rows = torch.where(counted, hard_weight * hard + soft_weight * soft, torch.zeros_like(soft))
    return rows, counted, {"soft": soft, "hard": hard, "U": u}


def linear_distill_loss(student_hidden, student_weight, teacher_hidden, teacher_weight, target=None, *,
                        student_bias=None, teacher_bias=None, dtype: torch.dtype = torch.float64, **kwargs):
    """SPEC §2 fused linear variant with both logits tensors built whole."""
    s = student_hidden.to(dtype) @ student_weight.to(dtype).T
    t = teacher_hidden.to(dtype) @ teacher_weight.to(dtype).T
    if student_bias is not None:
        s = s + student_bias.to(dtype)
    if teacher_bias is not None:
        t = t + teacher_bias.to(dtype)
    return distill_loss(s, t, target, dtype=dtype, **kwargs)


def vocab_divergence(policy_logits: torch.Tensor, ref_logits: torch.Tensor, kind: str = "kl", *,
                     div_alpha: float = 0.5, mask: Optional[torch.Tensor] = None, dtype: torch.dtype = torch.float64,
                     vocab=WHOLE):
    """SPEC §3.4 with full softmaxes, in `dtype`; the reference is detached; `vocab` as in prob_loss."""
    lp = vocab.log_softmax(policy_logits.to(dtype))
    lq = vocab.log_softmax(ref_logits.to(dtype).detach())
    ninf = float("-inf")

    # Entries where x = 0 contribute 0; their logs are replaced by 0 before the arithmetic so that
    # no inf - inf reaches autograd through the branch torch.where discards.
    def xlog(log_x, log_y):  # sum x (log x - log y), 0 log 0 = 0
        zero = log_x == ninf
        lx, ly = torch.where(zero, 0.0, log_x), torch.where(zero, 0.0, log_y)
        return vocab.sum(torch.where(zero, torch.zeros_like(lx), lx.exp() * (lx - ly)))

    def power_mean(a):  # sum p^a q^(1-a); 0 outside both supports, and where p = 0 for a > 0
        zero = (lp == ninf) & ((lq == ninf) | (a > 0))
        lx, ly = torch.where(zero, 0.0, lp), torch.where(zero, 0.0, lq)
        return vocab.sum(torch.where(zero, torch.zeros_like(lx), torch.exp(a * lx + (1 - a) * ly)))

    if kind == "kl":
        d = xlog(lp, lq)
    elif kind == "reverse_kl":
        d = xlog(lq, lp)
    elif kind == "js":
        both = (lp == ninf) & (lq == ninf)  # m = 0 there; keep logaddexp's backward away from -inf, -inf
        lm = torch.logaddexp(torch.where(both, 0.0, lp), torch.where(both, 0.0, lq)) - torch.log(
            torch.tensor(2.0, dtype=dtype))
        lm = torch.where(both, ninf, lm)
        d = 0.5 * xlog(lp, lm) + 0.5 * xlog(lq, lm)
    elif kind in ("hellinger", "bhattacharyya"):
        bc = vocab.sum(torch.exp(0.5 * (lp + lq)))
        d = 1 - bc if kind == "hellinger" else -torch.log(bc)
    elif kind == "renyi":
        d = torch.log(power_mean(div_alpha)) / (div_alpha - 1)
    elif kind == "alpha":
        d = (1 - power_mean(div_alpha)) / (div_alpha * (1 - div_alpha))
    elif kind == "tv":
        d = 0.5 * vocab.sum((lp.exp() - lq.exp()).abs())
    else:
        raise ValueError(f"unknown kind {kind!r}")
    if mask is not None:
        d = torch.where(mask, d, torch.zeros_like(d))
    return d
