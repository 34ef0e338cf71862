"""SPEC §3.5: the DPO-Kernels loss from sequence log-probabilities, with f-divergence scores, an
optional embedding-kernel term, a vocabulary-divergence regulariser and an NLL term, over the
preference-loss family of TRL's DPOTrainer plus the reference-free SimPO, CPO and ORPO."""

import math
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F

from .f_divergence import F_DIVERGENCES, f_divergence_score
from .kernels import _Kernel

# TRL's DPOTrainer loss types (trl 1.16), then the reference-free ones users bring from Liger / TRL's
# CPOTrainer and ORPOTrainer.
TRL_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
                  "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")
LOSS_TYPES = TRL_LOSS_TYPES + ("simpo", "cpo", "orpo")
# Types that use no reference log-probabilities ("sft" is the chosen NLL alone).
REFERENCE_FREE = ("simpo", "cpo", "orpo", "sft")
# Types whose scores are divided by the response lengths (when lengths are given).
LENGTH_NORMALISED = ("ipo", "sigmoid_norm", "simpo", "orpo")
# Types defined on one chosen-minus-rejected margin: the kernel term is added to it.
MARGIN_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "robust", "discopop", "sigmoid_norm", "simpo", "cpo", "orpo")
# Types where a non-default f-divergence is defined (TRL's list: the f-DPO reparameterisation's
# log Z(x) term only cancels in the chosen-rejected score difference).
F_DIVERGENCE_TYPES = ("sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "robust", "discopop", "sft")
# Types that read label_smoothing.
SMOOTHED_TYPES = ("sigmoid", "robust", "exo_pair", "aot", "aot_unpaired", "simpo", "cpo")
# The chosen-NLL weight a loss type carries when nll_coef is not given (TRL's cpo_alpha = 1; ORPO's
# loss is NLL + lambda * odds-ratio term).
DEFAULT_NLL_COEF = {"cpo": 1.0, "orpo": 1.0}

# f_divergence_score drops f'(t)'s constant (it cancels in score(r_w) - score(r_l)); the
# length-normalised types divide each score by its own length first, where it does not cancel, so
# they add it back to match TRL's f'(t) = 1 - 1/t, log 2 + log sigmoid(r), (t^(a-1) - 1)/(a-1).
_F_PRIME_CONSTANT = {"reverse_kl": lambda a: 0.0, "forward_kl": lambda a: 1.0,
                     "js_divergence": lambda a: math.log(2.0),
                     "alpha_divergence": lambda a: 0.0 if abs(a - 1.0) < 1e-6 else -1.0 / (a - 1.0)}

_LN2 = math.log(2.0)
ORPO_MAX_LOGP = -1e-30  # the largest averaged log-prob ORPO's log odds take (a normal float32)


def _loss_types(loss_type: Union[str, Sequence[str]]) -> tuple:
    types = (loss_type,) if isinstance(loss_type, str) else tuple(loss_type)
    unknown = [t for t in types if t not in LOSS_TYPES]
    if not types or unknown:
        raise ValueError(f"objx.dpo_kernel_loss: loss_type must be one of {LOSS_TYPES} (or a list of them), "
                         f"got {loss_type!r}")
    return types


def resolve_nll_coef(loss_type: Union[str, Sequence[str]], nll_coef: Optional[float]) -> float:
    """nll_coef as given, or the default of the loss type(s): 1 for "cpo" and "orpo", else 0."""
    if nll_coef is not None:
        return float(nll_coef)
    return max(DEFAULT_NLL_COEF.get(t, 0.0) for t in _loss_types(loss_type))


def _mean(x: torch.Tensor) -> torch.Tensor:
    """The mean, 0 (with a zero gradient) for an empty tensor: SPEC §0's mean over no counted rows."""
    return x.sum() / max(x.numel(), 1)


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0: log(-expm1(x)) near 0 (no cancellation), log1p(-exp(x)) below -ln 2;
    each branch gets only inputs that are safe for it, so the unused one gives no NaN gradient."""
    near = x > -_LN2
    return torch.where(near, torch.log(-torch.expm1(torch.where(near, x, -1.0))),
                       torch.log1p(-torch.exp(torch.where(near, -1.0, x))))


def _check_label_smoothing(types: tuple, eps: float) -> None:
    if not 0.0 <= eps <= 1.0:  # NaN fails too
        raise ValueError(f"objx.dpo_kernel_loss: label_smoothing must be in [0, 1], got {eps}")
    if eps != 0 and not any(t in SMOOTHED_TYPES for t in types):
        raise ValueError(f"objx.dpo_kernel_loss: label_smoothing is read only by loss types {SMOOTHED_TYPES}; "
                         f"loss_type {types if len(types) > 1 else types[0]!r} ignores it, so set it to 0")
    if "robust" in types and not eps < 0.5:
        raise ValueError(f"objx.dpo_kernel_loss: label_smoothing must be in [0, 0.5) for loss_type 'robust' "
                         f"(the probability that a label is flipped), got {eps}")
    if "exo_pair" in types and not 0.0 < eps < 1.0:
        raise ValueError(f"objx.dpo_kernel_loss: label_smoothing must be in (0, 1) for loss_type 'exo_pair' "
                         f"(EXO's epsilon; the paper uses 1e-3), got {eps}")


def _smoothed_sigmoid(z: torch.Tensor, eps: float) -> torch.Tensor:
    return -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)


def dpo_kernel_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
                    ref_chosen_logps: Optional[torch.Tensor] = None, ref_rejected_logps: Optional[torch.Tensor] = None,
                    *, beta: float = 0.1, f_divergence: str = "reverse_kl", f_alpha: float = 0.5,
                    loss_type: Union[str, Sequence[str]] = "sigmoid", loss_weights: Optional[Sequence[float]] = None,
                    label_smoothing: float = 0.0, simpo_gamma: float = 0.5, discopop_tau: float = 0.05,
                    chosen_lengths: Optional[torch.Tensor] = None, rejected_lengths: Optional[torch.Tensor] = None,
                    kernel: Optional[_Kernel] = None, prompt_emb: Optional[torch.Tensor] = None,
                    chosen_emb: Optional[torch.Tensor] = None, rejected_emb: Optional[torch.Tensor] = None,
                    kernel_weight: float = 0.0, divergence: Optional[torch.Tensor] = None,
                    divergence_coef: float = 0.0, nll: Optional[torch.Tensor] = None,
                    nll_coef: Optional[float] = None, reduction: str = "mean"):
    """(loss, metrics) for a batch of B preference pairs; the *_logps are sequence scores [B]
    (summed token log-probabilities, TRL's convention).

    r = log pi - log rho (the reference is detached), s = f_divergence's score(r), Delta = s_w - s_l,
    kappa = kernel_weight * (log K(e_x, e_w) - log K(e_x, e_l)) (0 without a kernel), eps =
    label_smoothing, n_w, n_l = chosen_lengths, rejected_lengths (token counts, clamped at 1; when
    they are None the length-normalised types take the scores as already averaged).
    Per pair, by loss_type (TRL's DPOTrainer formulas; sig = sigmoid):
      sigmoid       -(1-eps) log sig(z) - eps log sig(-z),  z = beta Delta + kappa
      hinge         relu(1 - z);  robust: (-(1-eps) log sig(z) + eps log sig(-z)) / (1 - 2 eps), eps < 0.5
      exo_pair      sig(z) (log sig(z) - log(1-eps)) + sig(-z) (log sig(-z) - log eps), 0 < eps < 1
      discopop      -log sig(z) (1 - m) + exp(-z) m,  m = sig(z / discopop_tau)
      sigmoid_norm  -log sig(z),  z = beta (s_w/n_w - s_l/n_l) + kappa   (s here is TRL's f'(t), constant kept)
      ipo           ((z - 1/2) / beta)^2 with that z, i.e. (s_w/n_w - s_l/n_l + kappa/beta - 1/(2 beta))^2
      nca_pair, bco_pair, sppo_hard, apo_zero, apo_down, aot, aot_unpaired: TRL's formulas on
                    beta r_w and beta r_l (aot: sorted over the batch); no kernel, reverse_kl only
      sft           the chosen NLL (`nll`) for every pair
    Reference-free (ref_*_logps may be None; lp = policy log-prob, a = lp / n):
      simpo         -(1-eps) log sig(z) - eps log sig(-z),  z = beta (a_w - a_l) - simpo_gamma + kappa
      cpo           the same with z = beta (lp_w - lp_l) + kappa, plus nll_coef (default 1) * NLL
      orpo          -beta log sig(z), z = log odds(a_w) - log odds(a_l) + kappa (beta is ORPO's lambda),
                    log odds(a) = a - log(1 - exp(a)) (a capped at -1e-30), plus nll_coef (default 1) * NLL
    How the DPO-Kernels terms combine: the kernel term kappa enters the margin z of the margin types
    (MARGIN_TYPES; an error elsewhere), a non-default f_divergence only the types of
    F_DIVERGENCE_TYPES (TRL's rule), and the divergence and NLL terms are added to any type:
    Total = sum_i loss_weights[i] * mean(pref_i) + divergence_coef * mean(divergence) + nll_coef *
    mean(nll), `divergence` holding per-token vocabulary divergences over response tokens
    (objx.vocab_divergence) and `nll` the chosen responses' NLL; loss_type may be a list of types
    (TRL's multi-loss form, loss_weights default 1 each). Means over nothing are 0 (SPEC §0): an empty
    batch (B = 0) gives loss 0 with a zero gradient, as an empty micro-batch on one data-parallel rank
    must still join the collective backward.
    metrics: chosen_rewards, rejected_rewards (beta * r; reference-free: beta * lp, per token for
    simpo/orpo), reward_accuracy, reward_margin (detached). reduction="none" returns the per-pair
    preference losses [B] (no divergence or NLL term then: those are per-token batch terms).
    """
    types = _loss_types(loss_type)
    if reduction not in ("mean", "none"):
        raise ValueError(f"objx.dpo_kernel_loss: reduction must be 'mean' or 'none', got {reduction!r}")
    nll_coef = resolve_nll_coef(types, nll_coef)
    if reduction == "none" and (divergence_coef != 0 or nll_coef != 0):
        raise ValueError("objx.dpo_kernel_loss: reduction='none' gives per-pair losses; the divergence and NLL "
                         "terms are per-token batch terms, so they need reduction='mean' (or their coefficients 0; "
                         "cpo and orpo default to nll_coef=1)")
    if loss_weights is None:
        loss_weights = [1.0] * len(types)
    elif len(loss_weights) != len(types):
        raise ValueError(f"objx.dpo_kernel_loss: loss_weights must have one weight per loss type ({len(types)}), "
                         f"got {len(loss_weights)}")
    needs_ref = [t for t in types if t not in REFERENCE_FREE]
    shape = policy_chosen_logps.shape if isinstance(policy_chosen_logps, torch.Tensor) else None
    given = [policy_chosen_logps, policy_rejected_logps] + [t for t in (ref_chosen_logps, ref_rejected_logps)
                                                            if t is not None]
    if any(not isinstance(t, torch.Tensor) or t.shape != shape or t.dim() != 1 for t in given):
        raise ValueError("objx.dpo_kernel_loss: the log-probability tensors must share one shape [B]")
    has_ref = ref_chosen_logps is not None and ref_rejected_logps is not None
    if needs_ref and not has_ref:
        raise ValueError(f"objx.dpo_kernel_loss: loss_type {needs_ref[0]!r} needs ref_chosen_logps and "
                         f"ref_rejected_logps (only {REFERENCE_FREE} are reference-free)")
    if (chosen_lengths is None) != (rejected_lengths is None):
        raise ValueError("objx.dpo_kernel_loss: give both chosen_lengths and rejected_lengths, or neither")
    for name, n in (("chosen_lengths", chosen_lengths), ("rejected_lengths", rejected_lengths)):
        if n is not None and (not isinstance(n, torch.Tensor) or n.shape != shape):
            raise ValueError(f"objx.dpo_kernel_loss: {name} must be a tensor of token counts of shape {tuple(shape)}")
    if not beta > 0:
        raise ValueError(f"objx.dpo_kernel_loss: beta must be > 0, got {beta}")
    if "discopop" in types and not discopop_tau > 0:
        raise ValueError(f"objx.dpo_kernel_loss: discopop_tau must be > 0, got {discopop_tau}")
    if "simpo" in types and not math.isfinite(simpo_gamma):
        raise ValueError(f"objx.dpo_kernel_loss: simpo_gamma must be finite, got {simpo_gamma}")
    _check_label_smoothing(types, label_smoothing)
    if f_divergence not in F_DIVERGENCES:
        raise ValueError(f"objx.dpo_kernel_loss: f_divergence must be one of {F_DIVERGENCES}, got {f_divergence!r}")
    if f_divergence != "reverse_kl":
        off = [t for t in types if t not in F_DIVERGENCE_TYPES]
        if off:
            raise ValueError(f"objx.dpo_kernel_loss: f_divergence={f_divergence!r} is defined only for loss types "
                             f"{F_DIVERGENCE_TYPES}; use 'reverse_kl' with {off[0]!r}")
    kappa = 0.0
    if kernel_weight != 0:
        if kernel is None or prompt_emb is None or chosen_emb is None or rejected_emb is None:
            raise ValueError("objx.dpo_kernel_loss: kernel_weight != 0 needs kernel, prompt_emb, chosen_emb "
                             "and rejected_emb")
        off = [t for t in types if t not in MARGIN_TYPES]
        if off:
            raise ValueError(f"objx.dpo_kernel_loss: the kernel term adds to a chosen-minus-rejected margin, which "
                             f"loss_type {off[0]!r} does not have; kernel_weight != 0 needs one of {MARGIN_TYPES}")
        kappa = kernel_weight * (kernel.log_k(prompt_emb, chosen_emb) - kernel.log_k(prompt_emb, rejected_emb))

    lp_w, lp_l = policy_chosen_logps, policy_rejected_logps
    n_w = None if chosen_lengths is None else chosen_lengths.to(lp_w.dtype).clamp(min=1)
    n_l = None if rejected_lengths is None else rejected_lengths.to(lp_w.dtype).clamp(min=1)
    per_token = lambda x, n: x if n is None else x / n  # noqa: E731
    eps = label_smoothing
    r_w = r_l = None
    if has_ref:
        r_w = lp_w - ref_chosen_logps.detach()
        r_l = lp_l - ref_rejected_logps.detach()

    def pair_losses(kind: str) -> torch.Tensor:
        if kind in ("sigmoid_norm", "ipo"):
            const = _F_PRIME_CONSTANT[f_divergence](f_alpha)
            s_w = f_divergence_score(r_w, f_divergence, f_alpha=f_alpha) + const
            s_l = f_divergence_score(r_l, f_divergence, f_alpha=f_alpha) + const
            z = beta * (per_token(s_w, n_w) - per_token(s_l, n_l)) + kappa
            return -F.logsigmoid(z) if kind == "sigmoid_norm" else ((z - 0.5) / beta) ** 2
        if kind in ("sigmoid", "hinge", "robust", "exo_pair", "discopop"):
            delta = f_divergence_score(r_w, f_divergence, f_alpha=f_alpha) - f_divergence_score(
                r_l, f_divergence, f_alpha=f_alpha)
            z = beta * delta + kappa
            if kind == "sigmoid":
                return _smoothed_sigmoid(z, eps)
            if kind == "hinge":
                return torch.relu(1 - z)
            if kind == "robust":
                return (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)
            if kind == "exo_pair":
                log_q_w, log_q_l = F.logsigmoid(z), F.logsigmoid(-z)
                return log_q_w.exp() * (log_q_w - math.log1p(-eps)) + log_q_l.exp() * (log_q_l - math.log(eps))
            mix = torch.sigmoid(z / discopop_tau)
            return -F.logsigmoid(z) * (1 - mix) + torch.exp(-z) * mix
        if kind == "nca_pair":
            return -F.logsigmoid(beta * r_w) - 0.5 * F.logsigmoid(-beta * r_w) - 0.5 * F.logsigmoid(-beta * r_l)
        if kind == "bco_pair":
            return -F.logsigmoid(beta * r_w) - F.logsigmoid(-beta * r_l)
        if kind == "sppo_hard":
            return (r_w - 0.5 / beta) ** 2 + (r_l + 0.5 / beta) ** 2
        if kind in ("aot", "aot_unpaired"):
            if kind == "aot":  # sorted policy and reference margins matched by rank
                gap = (lp_w - lp_l).sort(0).values - (ref_chosen_logps - ref_rejected_logps).detach().sort(0).values
            else:
                gap = r_w.sort(0).values - r_l.sort(0).values
            return _smoothed_sigmoid(beta * gap, eps)
        if kind == "apo_zero":
            return 1 - torch.sigmoid(beta * r_w) + torch.sigmoid(beta * r_l)
        if kind == "apo_down":
            return torch.sigmoid(beta * r_w) + 1 - torch.sigmoid(beta * (r_w - r_l))
        if kind == "sft":
            if nll is None:
                raise ValueError("objx.dpo_kernel_loss: loss_type 'sft' needs nll (the chosen responses' NLL)")
            return _mean(nll).expand(lp_w.shape)
        if kind == "simpo":
            return _smoothed_sigmoid(beta * (per_token(lp_w, n_w) - per_token(lp_l, n_l)) - simpo_gamma + kappa, eps)
        if kind == "cpo":
            return _smoothed_sigmoid(beta * (lp_w - lp_l) + kappa, eps)
        # orpo, in at least float32 (exp(a) rounds to 1 in half precision long before a reaches 0). A
        # log-prob of 0 (probability 1, e.g. a response with no counted token) has infinite odds: it
        # is capped at a = ORPO_MAX_LOGP (log odds ~ 69), which keeps the loss and gradients finite.
        wide = torch.promote_types(lp_w.dtype, torch.float32)
        a_w = per_token(lp_w, n_w).to(wide).clamp(max=ORPO_MAX_LOGP)
        a_l = per_token(lp_l, n_l).to(wide).clamp(max=ORPO_MAX_LOGP)
        log_odds = (a_w - a_l) - (_log1mexp(a_w) - _log1mexp(a_l))
        return -beta * F.logsigmoid(log_odds + kappa)

    prefs = [pair_losses(t) for t in types]
    if reduction == "mean":
        loss = sum(w * _mean(p) for w, p in zip(loss_weights, prefs))
    else:
        loss = sum(w * p for w, p in zip(loss_weights, prefs))
    if divergence_coef != 0:
        if divergence is None:
            raise ValueError("objx.dpo_kernel_loss: divergence_coef != 0 needs divergence (per-token values)")
        loss = loss + divergence_coef * _mean(divergence)
    if nll_coef != 0:
        if nll is None:
            raise ValueError(f"objx.dpo_kernel_loss: nll_coef={nll_coef} needs nll (the chosen responses' NLL; "
                             "cpo and orpo default to nll_coef=1: pass nll_coef=0 to leave it out)")
        loss = loss + nll_coef * _mean(nll)
    with torch.no_grad():
        if has_ref:
            reward_w, reward_l = beta * r_w.detach(), beta * r_l.detach()
        else:  # TRL's CPOTrainer / ORPOTrainer report beta times the policy's (averaged) log-probs
            averaged = any(t in ("simpo", "orpo") for t in types)
            reward_w = beta * (per_token(lp_w, n_w) if averaged else lp_w).detach()
            reward_l = beta * (per_token(lp_l, n_l) if averaged else lp_l).detach()
        metrics = {"chosen_rewards": reward_w, "rejected_rewards": reward_l,
                   "reward_accuracy": _mean((reward_w > reward_l).float()),
                   "reward_margin": _mean(reward_w - reward_l)}
    return loss, metrics
