"""SPEC §3.5: the DPO-Kernels loss from sequence log-probabilities, with f-divergence scores, an
optional embedding-kernel term, a vocabulary-divergence regulariser and an NLL term."""

from typing import Optional

import torch
import torch.nn.functional as F

from .f_divergence import f_divergence_score
from .kernels import _Kernel

LOSS_TYPES = ("sigmoid", "hinge", "ipo")


def dpo_kernel_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
                    ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, *, beta: float = 0.1,
                    f_divergence: str = "reverse_kl", f_alpha: float = 0.5, loss_type: str = "sigmoid",
                    label_smoothing: float = 0.0, kernel: Optional[_Kernel] = None,
                    prompt_emb: Optional[torch.Tensor] = None, chosen_emb: Optional[torch.Tensor] = None,
                    rejected_emb: Optional[torch.Tensor] = None, kernel_weight: float = 0.0,
                    divergence: Optional[torch.Tensor] = None, divergence_coef: float = 0.0,
                    nll: Optional[torch.Tensor] = None, nll_coef: float = 0.0, reduction: str = "mean"):
    """(loss, metrics) for a batch of B preference pairs; the *_logps are sequence scores [B].

    z = beta * (score(r_w) - score(r_l)) + kernel_weight * (log K(e_x, e_w) - log K(e_x, e_l)),
    r = log pi - log rho (the reference is detached). loss_type: "sigmoid" (with label_smoothing),
    "hinge", or "ipo" ((r_w - r_l - 1/(2 beta))^2). Total = mean(pref) + divergence_coef *
    mean(divergence) + nll_coef * mean(nll), where `divergence` holds per-token vocabulary
    divergences over response tokens (objx.vocab_divergence) and `nll` the chosen responses' NLL.
    metrics: chosen_rewards, rejected_rewards (beta * r), reward_accuracy, reward_margin (detached).
    reduction="none" returns the per-pair preference losses [B] (no divergence or NLL term then:
    those are per-token batch terms).
    """
    if reduction not in ("mean", "none"):
        raise ValueError(f"objx.dpo_kernel_loss: reduction must be 'mean' or 'none', got {reduction!r}")
    if reduction == "none" and (divergence_coef != 0 or nll_coef != 0):
        raise ValueError("objx.dpo_kernel_loss: reduction='none' gives per-pair losses; the divergence and NLL "
                         "terms are per-token batch terms, so they need reduction='mean'")
    logps = (policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    if any(not isinstance(t, torch.Tensor) or t.shape != policy_chosen_logps.shape for t in logps):
        raise ValueError("objx.dpo_kernel_loss: the four log-probability tensors must share one shape [B]")
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"objx.dpo_kernel_loss: loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    if not beta > 0:
        raise ValueError(f"objx.dpo_kernel_loss: beta must be > 0, got {beta}")
    r_w = policy_chosen_logps - ref_chosen_logps.detach()
    r_l = policy_rejected_logps - ref_rejected_logps.detach()
    delta = f_divergence_score(r_w, f_divergence, f_alpha=f_alpha) - f_divergence_score(r_l, f_divergence,
                                                                                          f_alpha=f_alpha)
    z = beta * delta
    if kernel_weight != 0:
        if kernel is None or prompt_emb is None or chosen_emb is None or rejected_emb is None:
            raise ValueError("objx.dpo_kernel_loss: kernel_weight != 0 needs kernel, prompt_emb, chosen_emb "
                             "and rejected_emb")
        z = z + kernel_weight * (kernel.log_k(prompt_emb, chosen_emb) - kernel.log_k(prompt_emb, rejected_emb))
    if loss_type == "sigmoid":
        pref = -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
    elif loss_type == "hinge":
        pref = torch.relu(1 - z)
    else:
        pref = (r_w - r_l - 1 / (2 * beta)) ** 2
    loss = pref.mean() if reduction == "mean" else pref
    if divergence_coef != 0:
        if divergence is None:
            raise ValueError("objx.dpo_kernel_loss: divergence_coef != 0 needs divergence (per-token values)")
        loss = loss + divergence_coef * divergence.mean()
    if nll_coef != 0:
        if nll is None:
            raise ValueError("objx.dpo_kernel_loss: nll_coef != 0 needs nll")
        loss = loss + nll_coef * nll.mean()
    with torch.no_grad():
        metrics = {"chosen_rewards": beta * r_w.detach(), "rejected_rewards": beta * r_l.detach(),
                   "reward_accuracy": (r_w > r_l).float().mean(), "reward_margin": (beta * (r_w - r_l)).mean()}
    return loss, metrics
