"""objx losses with the contracts of TRL's trainers (TRL itself is not imported).

- generalized_jsd_loss: the signature and reductions of GKDTrainer.generalized_jsd_loss (Agarwal et
  al.'s generalized JSD at one temperature on both sides; beta = 0 is KL(teacher||student), beta = 1
  KL(student||teacher)), computed by objx.distill_loss(method="jsd") without the [B, T, V] softmaxes.
  Use: GKDTrainer.generalized_jsd_loss = staticmethod(objx.integrations.trl.generalized_jsd_loss).
- dpo_kernels_loss: a DPO-style loss from the four sequence log-probabilities (TRL's classic
  dpo_loss contract: per-pair losses, chosen rewards, rejected rewards), with objx's f-divergence
  scores, kernels and loss types (objx.dpo_kernel_loss).
"""

from typing import Optional

import torch

from ..distill.logits import distill_loss
from ..dpo.loss import dpo_kernel_loss


def generalized_jsd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                         labels: Optional[torch.Tensor] = None, beta: float = 0.5, temperature: float = 1.0,
                         reduction: str = "batchmean", num_items_in_batch=None) -> torch.Tensor:
    """Logits [B, T, V], labels [B, T] (-100 masks a position) -> scalar. reduction: "batchmean"
    (sum / unmasked positions, or / B without labels), "sum", "mean" (sum / elements, V included),
    or "none" (per position [B, T], 0 where masked); num_items_in_batch: sum / it."""
    if reduction not in ("batchmean", "sum", "mean", "none"):
        raise ValueError(f"objx.integrations.trl.generalized_jsd_loss: unknown reduction {reduction!r}")
    target = None if labels is None else labels.to(student_logits.device)
    rows = distill_loss(student_logits, teacher_logits, target, method="jsd", beta=float(beta),
                        temperature=float(temperature), hard_weight=0.0, reduction="none")
    if reduction == "none":
        return rows
    total = rows.sum()
    if num_items_in_batch is not None:
        if isinstance(num_items_in_batch, torch.Tensor):
            num_items_in_batch = num_items_in_batch.to(total.device)
        return total / num_items_in_batch
    positions = (labels != -100).sum() if labels is not None else torch.tensor(rows.numel(), device=total.device)
    if reduction == "batchmean":
        return total / (positions.clamp(min=1) if labels is not None else max(student_logits.shape[0], 1))
    if reduction == "sum":
        return total
    return total / (positions.clamp(min=1) * student_logits.shape[-1])


def dpo_kernels_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor,
                     ref_rejected_logps: torch.Tensor, **options):
    """(losses [B], chosen_rewards [B], rejected_rewards [B]) for B preference pairs; options are
    objx.dpo_kernel_loss's (beta, f_divergence, loss_type, label_smoothing, kernel, prompt_emb,
    chosen_emb, rejected_emb, kernel_weight). Their mean is dpo_kernel_loss's loss."""
    losses, metrics = dpo_kernel_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps,
                                      reduction="none", **options)
    return losses, metrics["chosen_rewards"], metrics["rejected_rewards"]
