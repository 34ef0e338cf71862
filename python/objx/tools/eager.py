"""What a user writes today without objx: plain PyTorch versions of the losses, materialising the
log-softmax. The benchmarks time them eagerly and under torch.compile."""

import torch
import torch.nn.functional as F

from ..sft.objective import Objective


def prob_loss(logits: torch.Tensor, target: torch.Tensor, objective: Objective,
              ignore_index: int = -100) -> torch.Tensor:
    """Mean of f(p_y) over counted rows, through log_softmax in float32."""
    if objective.kind == "nll" and objective.min_prob is None and objective.max_prob is None:
        return F.cross_entropy(logits.float(), target, ignore_index=ignore_index)
    logp_all = torch.log_softmax(logits.float(), dim=-1)
    valid = target != ignore_index
    logp = logp_all.gather(1, torch.where(valid, target, 0)[:, None]).squeeze(1)
    p = logp.exp()
    keep = valid
    if objective.min_prob is not None:
        keep = keep & (p.detach() >= objective.min_prob)
    if objective.max_prob is not None:
        keep = keep & (p.detach() <= objective.max_prob)
    if objective.kind == "power":
        f = (1 - p.pow(objective.alpha)) / objective.alpha
    elif objective.kind == "log1m":
        f = torch.log(1 - p + objective.eps)
    else:
        f = -logp
    return (f * keep).sum() / keep.sum().clamp(min=1)
