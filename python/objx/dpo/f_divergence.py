"""SPEC §3.2: f-divergence DPO scores of a log-ratio r = log pi - log rho (TRL's f_divergence_type)."""

import torch

F_DIVERGENCES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")


def f_divergence_score(logratio: torch.Tensor, kind: str = "reverse_kl", *, f_alpha: float = 0.5) -> torch.Tensor:
    """score(r): reverse_kl -> r; forward_kl -> -exp(-r); js_divergence -> log sigmoid(r);
    alpha_divergence -> exp((f_alpha - 1) r) / (f_alpha - 1), its exponent clamped at 80 (11 for
    float16), and r itself when |f_alpha - 1| < 1e-6."""
    if kind == "reverse_kl":
        return logratio
    if kind == "forward_kl":
        return -torch.exp(-logratio)
    if kind == "js_divergence":
        return torch.nn.functional.logsigmoid(logratio)
    if kind == "alpha_divergence":
        if abs(f_alpha - 1.0) < 1e-6:
            return logratio
        cap = 11.0 if logratio.dtype == torch.float16 else 80.0
        return torch.exp(((f_alpha - 1.0) * logratio).clamp(max=cap)) / (f_alpha - 1.0)
    raise ValueError(f"objx.f_divergence_score: kind must be one of {F_DIVERGENCES}, got {kind!r}")
