"""SPEC §3.1: per-token log-probabilities of the targets (objx.token_logprobs)."""

import torch

from .prob_loss import prob_loss


def token_logprobs(logits: torch.Tensor, target: torch.Tensor, *, ignore_index: int = -100,
                   process_group=None) -> torch.Tensor:
    """log p(target) per row of logits [..., V] -> [...], 0 where target == ignore_index;
    differentiable, the softmax never built (the nll kernels of prob_loss with reduction="none").
    process_group: logits are this rank's vocabulary shard (SPEC §4)."""
    return -prob_loss(logits, target, "nll", ignore_index=ignore_index, reduction="none",
                      process_group=process_group)
