"""SPEC §3.3: embedding kernels for DPO-Kernels, as nn.Modules computed row-wise on [B, E] inputs:
k(x, y) -> K [B] and k.log_k(x, y) -> log K [B], the latter in log space for numerical safety."""

from typing import Optional, Sequence

import math

import torch
from torch import nn

# Polynomial kernels take the log of (x.y + c), clamped here: a base at or below 0 (possible for
# unnormalised embeddings) is treated as this tiny positive number instead of giving -inf / NaN.
POLY_LOG_CLAMP = 1e-12


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    for name, v in (("x", x), ("y", y)):
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"objx.kernels: {name} must be a torch.Tensor, got {type(v).__name__}")
    if x.dim() != 2 or x.shape != y.shape:
        raise ValueError(f"objx.kernels: inputs must both be [B, E], got {tuple(x.shape)} and {tuple(y.shape)}")


def _check_degree(where: str, degree) -> None:
    # (x.y + c)^d with a base below 0 is real only for an integer d; d = 0 would be the constant 1.
    if isinstance(degree, bool) or not hasattr(degree, "__index__") or degree < 1:
        raise ValueError(f"objx.kernels.{where}: degree must be an integer >= 1, got {degree!r}")


def _sq_dist(x, y):
    return (x - y).pow(2).sum(-1)


def _check_precision(precision) -> None:
    where = "objx.kernels.MahalanobisKernel"
    if not isinstance(precision, torch.Tensor):
        raise TypeError(f"{where}: precision must be a torch.Tensor, got {type(precision).__name__}")
    if precision.dim() != 2 or precision.shape[0] != precision.shape[1] or precision.shape[0] < 1:
        raise ValueError(f"{where}: precision must be a square [E, E] matrix, got shape {tuple(precision.shape)}")
    if not precision.is_floating_point():
        raise TypeError(f"{where}: precision must be a floating-point tensor, got {precision.dtype}")
    # Only the symmetric part enters (x - y)^T P (x - y); it must be positive definite for exp(-.../2)
    # to be a kernel (an indefinite P gives K > 1 and grows without bound).
    sym = precision.detach().double().cpu()
    sym = (sym + sym.T) / 2
    if not torch.isfinite(sym).all():
        raise ValueError(f"{where}: precision must be finite")
    smallest = torch.linalg.eigvalsh(sym)[0].item()
    if not smallest > 0:
        raise ValueError(f"{where}: precision must be positive definite, got smallest eigenvalue {smallest:.3g}")


class _Kernel(nn.Module):
    def log_k(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.log_k(x, y).exp()


class PolynomialKernel(_Kernel):
    """K = (x.y + c)^d; log K = d log(max(x.y + c, 1e-12))."""

    def __init__(self, degree: int = 2, c: float = 1.0):
        super().__init__()
        _check_degree("PolynomialKernel", degree)
        if not (c >= 0 and math.isfinite(c)):
            raise ValueError(f"objx.kernels.PolynomialKernel: c must be a finite number >= 0, got {c}")
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
        if not (sigma > 0 and math.isfinite(sigma)):
            raise ValueError(f"objx.kernels.RBFKernel: sigma must be a finite number > 0, got {sigma}")
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
            if isinstance(dim, bool) or not hasattr(dim, "__index__") or dim < 1:
                raise ValueError(f"objx.kernels.MahalanobisKernel: learnable=True needs dim, an integer >= 1, "
                                 f"got {dim!r}")
            self.chol = nn.Parameter(torch.eye(dim))
            self.register_buffer("fixed_precision", None)
        else:
            self.chol = None
            if precision is not None:
                _check_precision(precision)
            self.register_buffer("fixed_precision", precision)

    @torch.no_grad()
    def fit(self, embeddings: torch.Tensor, shrinkage: float = 0.1, eps: float = 1e-4) -> "MahalanobisKernel":
        """Shrinkage covariance (1 - s) S + s tr(S)/E I + eps I of a [B, E] batch, inverted by Cholesky."""
        where = "objx.kernels.MahalanobisKernel.fit"
        if not isinstance(embeddings, torch.Tensor):
            raise TypeError(f"{where}: embeddings must be a torch.Tensor, got {type(embeddings).__name__}")
        if not embeddings.is_floating_point():  # the precision is stored in their dtype
            raise TypeError(f"{where}: embeddings must be a floating-point tensor, got {embeddings.dtype}")
        if embeddings.dim() != 2 or embeddings.shape[0] < 2 or embeddings.shape[1] < 1:
            raise ValueError(f"{where}: embeddings must be [B, E] with B >= 2 and E >= 1, got shape "
                             f"{tuple(embeddings.shape)}")
        if not torch.isfinite(embeddings).all():
            raise ValueError(f"{where}: embeddings must be finite (found NaN or inf)")
        if not 0 <= shrinkage <= 1:
            raise ValueError(f"{where}: shrinkage must be in [0, 1], got {shrinkage}")
        if not (eps >= 0 and math.isfinite(eps)):
            raise ValueError(f"{where}: eps must be a finite number >= 0, got {eps}")
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
        precision = self.precision()
        if precision.shape[0] != x.shape[1]:
            raise ValueError(f"objx.kernels.MahalanobisKernel: the precision is {tuple(precision.shape)} but the "
                             f"inputs are [B, E] with E = {x.shape[1]}")
        d = x - y
        return -0.5 * ((d @ precision.to(d)) * d).sum(-1)


class SpectralKernel(_Kernel):
    """K = sum_k lambda_k exp(-a_k |x - y|^2), lambda_k > 0; log K by logsumexp."""

    def __init__(self, weights: Sequence[float] = (1.0, 0.5), scales: Sequence[float] = (1.0, 0.1)):
        super().__init__()
        if len(weights) == 0 or len(weights) != len(scales):
            raise ValueError(f"objx.kernels.SpectralKernel: weights and scales must be non-empty and of one length, "
                             f"got {len(weights)} weights and {len(scales)} scales")
        if not all(w > 0 and math.isfinite(w) for w in weights):
            raise ValueError(f"objx.kernels.SpectralKernel: weights must be finite and > 0, got {tuple(weights)}")
        if not all(a > 0 and math.isfinite(a) for a in scales):  # a_k <= 0 makes a term that never decays
            raise ValueError(f"objx.kernels.SpectralKernel: scales must be finite and > 0, got {tuple(scales)}")
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
        _check_degree("HierarchicalMixtureKernel", degree)
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
