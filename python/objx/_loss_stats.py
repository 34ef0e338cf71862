"""objx.LossStats: what an SFT loss reports beside its value (SPEC §1.2), from the per-row outputs
of the forward kernels (no second pass over the vocabulary)."""

from typing import NamedTuple

import torch

from ._class_weights import reduce_weighted_rows


class LossStats(NamedTuple):
    """Per-row statistics (shaped like the target) and the loss's z-loss part, all without gradient.

    token_prob: p(target), float32, 0 where ignored.
    lse:        log-sum-exp of the row's (soft-capped) logits, float32, 0 where ignored.
    correct:    bool, the row's argmax (first index on ties, as torch.argmax) is its target;
                False where ignored.
    z_loss:     the z-loss term's part of the loss (z_loss · lse² per counted row, times its class
                weight), reduced like the loss.
    """

    token_prob: torch.Tensor
    lse: torch.Tensor
    correct: torch.Tensor
    z_loss: torch.Tensor


def loss_stats(token_logprob: torch.Tensor, lse: torch.Tensor, correct: torch.Tensor, valid: torch.Tensor,
               row_weight: torch.Tensor, z_loss: float, reduction: str, shape) -> LossStats:
    """LossStats from the forward's rows: valid marks rows whose target is not ignore_index;
    row_weight is each row's weight in the loss's reduction (0 where it does not count)."""
    with torch.no_grad():
        lse = torch.where(valid, lse, torch.zeros_like(lse))
        z_rows = (float(z_loss) * lse * lse) * row_weight
        return LossStats(token_prob=token_logprob.exp().to(torch.float32).reshape(shape),
                         lse=lse.to(torch.float32).reshape(shape),
                         correct=(correct & valid).reshape(shape),
                         z_loss=reduce_weighted_rows(z_rows, row_weight, reduction, shape))
