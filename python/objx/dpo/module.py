"""objx.DPOKernelLoss: the DPO-Kernels objective (SPEC §3) assembled from policy and reference
logits of chosen/rejected responses, with the chunked ops for every per-token quantity."""

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from .loss import REFERENCE_FREE, _check_label_smoothing, dpo_kernel_loss, resolve_nll_coef
from .kernels import _Kernel
from ..sft.linear import linear_token_logprobs
from ..sft.logits import token_logprobs
from .divergence import vocab_divergence


def _pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of hidden [B, T, D] over positions where mask [B, T] is true, L2-normalised."""
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return F.normalize((hidden * m).sum(1) / m.sum(1).clamp(min=1), dim=-1)


class DPOKernelLoss(nn.Module):
    """forward(policy_chosen_logits, policy_rejected_logits, ref_chosen_logits, ref_rejected_logits,
    chosen_labels, rejected_labels, *, chosen_hidden=None, rejected_hidden=None, prompt_emb=None,
    chosen_emb=None, rejected_emb=None, policy_weight=None, ref_weight=None) -> (loss, metrics).

    Logits [B, T, V] (already shifted to predict labels), labels [B, T] with ignore_index on prompt
    and padding. Sequence scores are summed token log-probabilities, passed to dpo_kernel_loss with
    the response lengths so that the length-normalised loss types (ipo, sigmoid_norm, simpo, orpo)
    use per-token averages; with average_log_prob=True every score is averaged already and no
    lengths are passed. The reference-free loss types (simpo, cpo, orpo, sft) take None for the
    reference logits (unless a divergence term needs them); cpo and orpo add the chosen NLL with
    nll_coef=1 unless nll_coef is given. `divergence` names a vocab_divergence kind, averaged over
    chosen response tokens (and rejected ones with divergence_on="both"; 0 when there are none).
    With a kernel and kernel_weight != 0, embeddings are taken as given or pooled from the policy's
    last hidden states [B, T, D] (SPEC §3.3: mean over prompt positions and over response positions,
    L2-normalised). loss_weights, simpo_gamma, discopop_tau: as in objx.dpo_kernel_loss.
    """

    def __init__(self, *, beta: float = 0.1, f_divergence: str = "reverse_kl", f_alpha: float = 0.5,
                 loss_type: Union[str, Sequence[str]] = "sigmoid", loss_weights: Optional[Sequence[float]] = None,
                 label_smoothing: float = 0.0, simpo_gamma: float = 0.5, discopop_tau: float = 0.05,
                 kernel: Optional[_Kernel] = None, kernel_weight: float = 0.0, divergence: Optional[str] = None,
                 div_alpha: float = 0.5, divergence_coef: float = 0.0, divergence_on: str = "chosen",
                 nll_coef: Optional[float] = None, average_log_prob: bool = False, ignore_index: int = -100,
                 token_embeddings: Optional[torch.Tensor] = None):
        super().__init__()
        if divergence_on not in ("chosen", "both"):
            raise ValueError(f"objx.DPOKernelLoss: divergence_on must be 'chosen' or 'both', got {divergence_on!r}")
        if divergence_coef != 0 and divergence is None:
            raise ValueError("objx.DPOKernelLoss: divergence_coef != 0 needs divergence (a vocab_divergence kind)")
        types = (loss_type,) if isinstance(loss_type, str) else tuple(loss_type)
        self.nll_coef = resolve_nll_coef(types, nll_coef)  # also rejects an unknown loss_type here
        if not beta > 0:
            raise ValueError(f"objx.DPOKernelLoss: beta must be > 0, got {beta}")
        _check_label_smoothing(types, label_smoothing)  # at construction, not first at the first batch
        self.reference_free = all(t in REFERENCE_FREE for t in types)
        self.needs_nll = self.nll_coef != 0 or "sft" in types
        self.kernel = kernel
        self.options = dict(beta=beta, f_divergence=f_divergence, f_alpha=f_alpha, loss_type=loss_type,
                            loss_weights=loss_weights, label_smoothing=label_smoothing, simpo_gamma=simpo_gamma,
                            discopop_tau=discopop_tau, kernel_weight=kernel_weight)
        self.divergence, self.div_alpha, self.divergence_coef = divergence, div_alpha, divergence_coef
        self.divergence_on = divergence_on
        self.average_log_prob, self.ignore_index = average_log_prob, ignore_index
        self.token_embeddings = token_embeddings

    def _scores(self, logits, labels, weight=None):
        if weight is None:
            logp = token_logprobs(logits, labels, ignore_index=self.ignore_index)
        else:  # logits is a hidden state [B, T, D] and weight its LM head: the fused path
            logp = linear_token_logprobs(logits, weight, labels, ignore_index=self.ignore_index)
        counted = labels != self.ignore_index
        total = logp.sum(-1)
        return (total / counted.sum(-1).clamp(min=1) if self.average_log_prob else total), logp, counted

    def _divergence(self, policy, ref, labels):
        mask = labels != self.ignore_index
        d = vocab_divergence(policy, ref.detach(), self.divergence, div_alpha=self.div_alpha, mask=mask,
                             token_embeddings=self.token_embeddings)
        return d[mask]

    def forward(self, policy_chosen_logits, policy_rejected_logits, ref_chosen_logits, ref_rejected_logits,
                chosen_labels, rejected_labels, *, chosen_hidden=None, rejected_hidden=None, prompt_emb=None,
                chosen_emb=None, rejected_emb=None, policy_weight=None, ref_weight=None):
        """With policy_weight (and ref_weight, unless the loss type is reference-free), the LM heads
        [V, D], the four first arguments are last hidden states [B, T, D] and every log-probability
        goes through the fused path (the logits are never built); the vocabulary-divergence term
        needs logits and is unavailable there. The policy's chosen/rejected hidden states then also
        serve for the kernel embeddings. Reference-free loss types take None for the reference
        logits (or hidden states) and for ref_weight."""
        fused = policy_weight is not None
        has_ref = ref_chosen_logits is not None and ref_rejected_logits is not None
        if (ref_chosen_logits is None) != (ref_rejected_logits is None):
            raise ValueError("objx.DPOKernelLoss: give both ref_chosen_logits and ref_rejected_logits, or neither")
        if not has_ref and not self.reference_free:
            raise ValueError(f"objx.DPOKernelLoss: loss_type {self.options['loss_type']!r} needs ref_chosen_logits "
                             f"and ref_rejected_logits (only {REFERENCE_FREE} are reference-free)")
        if not fused and ref_weight is not None:
            raise ValueError("objx.DPOKernelLoss: ref_weight needs policy_weight (the fused path)")
        if fused and has_ref and ref_weight is None:
            raise ValueError("objx.DPOKernelLoss: give both policy_weight and ref_weight, or neither")
        if fused and self.divergence_coef != 0:
            raise ValueError("objx.DPOKernelLoss: the divergence term needs logits; use divergence_coef=0 "
                             "with hidden states and LM heads")
        if self.divergence_coef != 0 and not has_ref:
            raise ValueError("objx.DPOKernelLoss: the divergence term compares the policy with the reference, so "
                             "it needs ref_chosen_logits and ref_rejected_logits")
        if fused and chosen_hidden is None:
            chosen_hidden, rejected_hidden = policy_chosen_logits, policy_rejected_logits
        pw, logp_w, counted_w = self._scores(policy_chosen_logits, chosen_labels, policy_weight)
        pl, _, counted_l = self._scores(policy_rejected_logits, rejected_labels, policy_weight)
        rw = rl = None
        if has_ref and not self.reference_free:
            with torch.no_grad():
                rw, _, _ = self._scores(ref_chosen_logits, chosen_labels, ref_weight)
                rl, _, _ = self._scores(ref_rejected_logits, rejected_labels, ref_weight)
        if self.kernel is not None and self.options["kernel_weight"] != 0 and chosen_emb is None:
            if chosen_hidden is None or rejected_hidden is None:
                raise ValueError("objx.DPOKernelLoss: a kernel term needs embeddings or chosen/rejected hidden states")
            prompt_emb = _pool(chosen_hidden, ~counted_w) if prompt_emb is None else prompt_emb
            chosen_emb = _pool(chosen_hidden, counted_w)
            rejected_emb = _pool(rejected_hidden, counted_l)
        divergence = None
        if self.divergence_coef != 0:
            divergence = self._divergence(policy_chosen_logits, ref_chosen_logits, chosen_labels)
            if self.divergence_on == "both":
                divergence = torch.cat([divergence, self._divergence(policy_rejected_logits, ref_rejected_logits,
                                                                     rejected_labels)])
        nll = -(logp_w.sum() / counted_w.sum().clamp(min=1)) if self.needs_nll else None
        lengths = {} if self.average_log_prob else dict(chosen_lengths=counted_w.sum(-1),
                                                        rejected_lengths=counted_l.sum(-1))
        return dpo_kernel_loss(pw, pl, rw, rl, kernel=self.kernel, prompt_emb=prompt_emb, chosen_emb=chosen_emb,
                               rejected_emb=rejected_emb, divergence=divergence,
                               divergence_coef=self.divergence_coef, nll=nll, nll_coef=self.nll_coef, **lengths,
                               **self.options)
