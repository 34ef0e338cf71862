"""SPEC §3.4's `wasserstein` divergence: entropic optimal transport (log-domain Sinkhorn) between the
policy's and the reference's next-token distributions restricted to the union of each row's top-k
tokens and renormalised, with cost 1 - cos(E_i, E_j) over token embeddings E. Batched over rows
(no Python loop over them); differentiable in the policy logits through the iterations."""

from typing import Optional

import torch
import torch.nn.functional as F

TOP_K = 64
EPSILON = 0.05
ITERATIONS = 50


def _support_weights(logits: torch.Tensor, index: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """softmax(logits) at index, 0 where not kept, renormalised over the kept entries."""
    logp = logits.float().gather(-1, index) - torch.logsumexp(logits.float(), -1, keepdim=True)
    w = torch.where(keep, logp.exp(), torch.zeros_like(logp))
    return w / w.sum(-1, keepdim=True).clamp(min=1e-30)


def wasserstein_divergence(policy_logits: torch.Tensor, ref_logits: torch.Tensor, token_embeddings: torch.Tensor, *,
                           k: int = TOP_K, epsilon: float = EPSILON, iterations: int = ITERATIONS,
                           mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Entropic OT cost per row of [N, V] logits -> [N] (0 where mask is False)."""
    if policy_logits.dim() != 2 or ref_logits.shape != policy_logits.shape:
        raise ValueError("objx.wasserstein_divergence: policy_logits and ref_logits must both be [N, V]")
    if not isinstance(token_embeddings, torch.Tensor) or token_embeddings.dim() != 2 or \
            token_embeddings.shape[0] != policy_logits.shape[1]:
        got = tuple(token_embeddings.shape) if isinstance(token_embeddings, torch.Tensor) else type(token_embeddings).__name__
        raise ValueError(f"objx.wasserstein_divergence: token_embeddings must be a [V, E] tensor with V = "
                         f"{policy_logits.shape[1]}, got {got}")
    for name, x in (("ref_logits", ref_logits), ("token_embeddings", token_embeddings), ("mask", mask)):
        if x is not None and x.device != policy_logits.device:
            raise ValueError(f"objx.wasserstein_divergence: {name} is on {x.device} but policy_logits is on "
                             f"{policy_logits.device}")
    ref_logits = ref_logits.detach()
    if mask is not None:
        # Masked-out rows run on zeros: a NaN there would otherwise come back through the
        # iterations as a NaN gradient, even though torch.where drops its value below.
        policy_logits = policy_logits.masked_fill(~mask[:, None], 0)
        ref_logits = ref_logits.masked_fill(~mask[:, None], 0)
    kk = min(k, policy_logits.shape[1])
    union = torch.cat([policy_logits.detach().topk(kk, -1).indices, ref_logits.topk(kk, -1).indices], -1).sort(-1).values
    keep = torch.ones_like(union, dtype=torch.bool)
    keep[:, 1:] = union[:, 1:] != union[:, :-1]  # the union: each token once
    a = _support_weights(policy_logits, union, keep)
    b = _support_weights(ref_logits, union, keep)
    emb = F.normalize(token_embeddings.detach().float()[union], dim=-1)  # [N, 2k, E]
    cost = 1 - emb @ emb.transpose(1, 2)  # [N, 2k, 2k]
    log_k = -cost / epsilon
    ninf = torch.tensor(float("-inf"), device=a.device)
    log_a = torch.where(a > 0, a.clamp(min=1e-38).log(), ninf)
    log_b = torch.where(b > 0, b.clamp(min=1e-38).log(), ninf)
    log_u = torch.zeros_like(log_a)
    log_v = torch.zeros_like(log_b)
    for _ in range(iterations):
        log_u = log_a - torch.logsumexp(log_k + log_v[:, None, :], -1)
        log_u = torch.where(torch.isfinite(log_a), log_u, ninf)
        log_v = log_b - torch.logsumexp(log_k + log_u[:, :, None], -2)
        log_v = torch.where(torch.isfinite(log_b), log_v, ninf)
    plan = torch.exp(log_u[:, :, None] + log_k + log_v[:, None, :])
    out = (plan * cost).sum((-1, -2))
    if mask is not None:
        out = torch.where(mask, out, torch.zeros_like(out))
    return out
