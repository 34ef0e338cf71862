"""SPEC §3.3: embedding kernels for DPO-Kernels, as nn.Modules computed row-wise on [B, E] inputs:
k(x, y) -> K [B] and k.log_k(x, y) -> log K [B], the latter in log space for numerical safety."""

from typing import Optional, Sequence

import torch
from torch import nn

# Polynomial kernels take the log of (x.y + c), clamped here: a base at or below 0 (possible for
# unnormalised embeddings) is treated as this tiny positive number instead of giving -inf / NaN.
POLY_LOG_CLAMP = 1e-12


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.dim() != 2 or x.shape != y.shape:
        raise ValueError(f"objx.kernels: inputs must both be [B, E], got {tuple(x.shape)} and {tuple(y.shape)}")


def _sq_dist(x, y):
    return (x - y).pow(2).sum(-1)


class _Kernel(nn.Module):
    def log_k(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.log_k(x, y).exp()


class PolynomialKernel(_Kernel):
    """K = (x.y + c)^d; log K = d log(max(x.y + c, 1e-12))."""

    def __init__(self, degree: int = 2, c: float = 1.0):
        super().__init__()
        self.degree, self.c = degree, c

    def forward(self, x, y):
        _check_pair(x, y)
        return ((x * y).sum(-1) + self.c).pow(self.degree)

    def log_k(self, x, y):
        _check_pair(x, y)
        return self.degree * torch.log(((x * y).sum(-1) + self.c).clamp(min=POLY_LOG_CLAMP))


class RBFKernel(_Kernel):
    """K = exp(-|x - y|^2 / (2 sigma^2))."""

    def __init__(self, sigma: float = 1.0):
        super().__init__()
        if not sigma > 0:
            raise ValueError(f"objx.kernels.RBFKernel: sigma must be > 0, got {sigma}")
        self.sigma = sigma

    def log_k(self, x, y):
        _check_pair(x, y)
        return -_sq_dist(x, y) / (2 * self.sigma ** 2)


class MahalanobisKernel(_Kernel):
    """K = exp(-(x - y)^T P (x - y) / 2) with P = Sigma^-1 given, estimated by .fit(embeddings), or
    learned as L L^T (L lower-triangular, learnable=True, initialised to the identity)."""

    def __init__(self, precision: Optional[torch.Tensor] = None, *, dim: Optional[int] = None, learnable: bool = False):
        super().__init__()
        if learnable:
            if dim is None:
                raise ValueError("objx.kernels.MahalanobisKernel: learnable=True needs dim")
            self.chol = nn.Parameter(torch.eye(dim))
            self.register_buffer("fixed_precision", None)
        else:
            self.chol = None
            if precision is not None and (precision.dim() != 2 or precision.shape[0] != precision.shape[1]):
                raise ValueError("objx.kernels.MahalanobisKernel: precision must be a square [E, E] matrix")
            self.register_buffer("fixed_precision", precision)

    @torch.no_grad()
    def fit(self, embeddings: torch.Tensor, shrinkage: float = 0.1, eps: float = 1e-4) -> "MahalanobisKernel":
        """Shrinkage covariance (1 - s) S + s tr(S)/E I + eps I of a [B, E] batch, inverted by Cholesky."""
        if embeddings.dim() != 2 or embeddings.shape[0] < 2:
            raise ValueError("objx.kernels.MahalanobisKernel.fit: embeddings must be [B, E] with B >= 2")
        x = embeddings.double()
        cov = torch.cov(x.T)
        e = cov.shape[0]
        cov = (1 - shrinkage) * cov + shrinkage * cov.diagonal().mean() * torch.eye(e, dtype=x.dtype, device=x.device)
        cov = cov + eps * torch.eye(e, dtype=x.dtype, device=x.device)
        chol = torch.linalg.cholesky(cov)
        self.fixed_precision = torch.cholesky_inverse(chol).to(embeddings.dtype)
        self.chol = None
        return self

    def precision(self) -> torch.Tensor:
        if self.chol is not None:
            lower = torch.tril(self.chol)
            return lower @ lower.T
        if self.fixed_precision is None:
            raise ValueError("objx.kernels.MahalanobisKernel: give a precision, call .fit(embeddings), "
                             "or use learnable=True")
        return self.fixed_precision

    def log_k(self, x, y):
        _check_pair(x, y)
        d = x - y
        return -0.5 * ((d @ self.precision().to(d)) * d).sum(-1)


class SpectralKernel(_Kernel):
    """K = sum_k lambda_k exp(-a_k |x - y|^2), lambda_k > 0; log K by logsumexp."""

    def __init__(self, weights: Sequence[float] = (1.0, 0.5), scales: Sequence[float] = (1.0, 0.1)):
        super().__init__()
        if len(weights) != len(scales) or not all(w > 0 for w in weights):
            raise ValueError("objx.kernels.SpectralKernel: weights must be > 0 and match scales in length")
        self.register_buffer("log_weights", torch.log(torch.tensor(weights, dtype=torch.float64)))
        self.register_buffer("scales", torch.tensor(scales, dtype=torch.float64))

    def log_k(self, x, y):
        _check_pair(x, y)
        d2 = _sq_dist(x, y)[:, None]
        return torch.logsumexp(self.log_weights.to(d2) - self.scales.to(d2) * d2, dim=-1)


class HierarchicalMixtureKernel(_Kernel):
    """SPEC §3.3's HMK: K = tau_L (w_rbf K_rbf + w_poly K_poly) + tau_G (w_spec K_spec + w_maha K_maha),
    each pair of weights the softmax of its own learnable logits; the components' parameters are
    learnable (RBF sigma, polynomial c, spectral weights and scales, Mahalanobis Cholesky factor).
    entropy_bonus() = -entropy_weight * sum of the three groups' entropies (add it to the loss)."""

    GROUPS = ("scale", "local", "global")  # (tau_L, tau_G), (w_rbf, w_poly), (w_spec, w_maha)

    def __init__(self, dim: int, *, entropy_weight: float = 0.0, degree: int = 2):
        super().__init__()
        self.entropy_weight = entropy_weight
        self.degree = degree
        self.logits = nn.ParameterDict({g: nn.Parameter(torch.zeros(2)) for g in self.GROUPS})
        self.log_sigma = nn.Parameter(torch.zeros(()))
        self.log_c = nn.Parameter(torch.zeros(()))
        self.spec_log_weights = nn.Parameter(torch.log(torch.tensor([1.0, 0.5])))
        self.spec_log_scales = nn.Parameter(torch.log(torch.tensor([1.0, 0.1])))
        self.maha = MahalanobisKernel(dim=dim, learnable=True)

    def weights(self) -> dict:
        return {g: torch.softmax(self.logits[g], 0) for g in self.GROUPS}

    def component_log_k(self, x, y) -> dict:
        _check_pair(x, y)
        d2 = _sq_dist(x, y)
        base = ((x * y).sum(-1) + self.log_c.exp()).clamp(min=POLY_LOG_CLAMP)
        spec = torch.logsumexp(self.spec_log_weights[None] - self.spec_log_scales.exp()[None] * d2[:, None], -1)
        return {"rbf": -d2 / (2 * torch.exp(2 * self.log_sigma)), "poly": self.degree * torch.log(base),
                "spec": spec, "maha": self.maha.log_k(x, y)}

    def log_k(self, x, y):
        comp = self.component_log_k(x, y)
        logw = {g: torch.log_softmax(self.logits[g], 0) for g in self.GROUPS}
        local = torch.logsumexp(torch.stack([logw["local"][0] + comp["rbf"], logw["local"][1] + comp["poly"]]), 0)
        glob = torch.logsumexp(torch.stack([logw["global"][0] + comp["spec"], logw["global"][1] + comp["maha"]]), 0)
        return torch.logsumexp(torch.stack([logw["scale"][0] + local, logw["scale"][1] + glob]), 0)

    def entropy_bonus(self) -> torch.Tensor:
        total = sum(-(w * w.clamp(min=1e-30).log()).sum() for w in self.weights().values())
        return -self.entropy_weight * total


__all__ = ["HierarchicalMixtureKernel", "MahalanobisKernel", "PolynomialKernel", "RBFKernel", "SpectralKernel",
           "POLY_LOG_CLAMP"]
