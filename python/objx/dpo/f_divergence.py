"""SPEC §3.2: f-divergence DPO scores of a log-ratio r = log pi - log rho (TRL's f_divergence_type)."""

import math

import torch

F_DIVERGENCES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")
# The exponent cap's margin below the dtype's overflow, in log space (1%): the cap, the exp and the
# quotient are each rounded to the dtype, which must not carry the result past its largest value.
_OVERFLOW_MARGIN = 0.01


def f_divergence_score(logratio: torch.Tensor, kind: str = "reverse_kl", *, f_alpha: float = 0.5) -> torch.Tensor:
    """score(r): reverse_kl -> r; forward_kl -> -exp(-r); js_divergence -> log sigmoid(r);
    alpha_divergence -> exp((f_alpha - 1) r) / (f_alpha - 1), its exponent clamped at 80 (11 for
    float16) and, where f_alpha - 1 is small, lower still so the quotient stays finite in the
    dtype; r itself when |f_alpha - 1| < 1e-6."""
    if kind not in F_DIVERGENCES:
        raise ValueError(f"objx.f_divergence_score: kind must be one of {F_DIVERGENCES}, got {kind!r}")
    if not isinstance(logratio, torch.Tensor):
        raise TypeError(f"objx.f_divergence_score: logratio must be a torch.Tensor, got {type(logratio).__name__}")
    if not logratio.is_floating_point():
        raise TypeError(f"objx.f_divergence_score: logratio must be a floating-point tensor, got {logratio.dtype}")
    if kind == "reverse_kl":
        return logratio
    if kind == "forward_kl":
        return -torch.exp(-logratio)
    if kind == "js_divergence":
        return torch.nn.functional.logsigmoid(logratio)
    if abs(f_alpha - 1.0) < 1e-6:
        return logratio
    scale = f_alpha - 1.0
    # exp(cap) / |scale| must stay below the dtype's largest value (fp16: exp(11) / 0.5 would not).
    finite_cap = math.log(torch.finfo(logratio.dtype).max * abs(scale)) - _OVERFLOW_MARGIN
    cap = min(11.0 if logratio.dtype == torch.float16 else 80.0, finite_cap)
    return torch.exp((scale * logratio).clamp(max=cap)) / scale
