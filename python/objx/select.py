"""SPEC §6: selection heuristics. Every choice returns its numbers and its reason.

- measure_capability / CapabilityMeter: where the model sits on the capability continuum, from its
  gold-token probabilities (free from prob_loss(..., return_token_prob=True)).
- recommend_objective: the SFT objective the "Beyond Log Likelihood" findings suggest there.
- select_kernel / select_divergence: DPO-Kernels' data-driven kernel and divergence choice.
The cut-offs are heuristics taken from the papers' reported ranges, configurable.
"""

import math
from dataclasses import dataclass, field
from typing import Iterable, Optional

import torch

from .dpo import kernels as K
from .sft.objective import Objective
from .sft.logits import token_logprobs
from .dpo.divergence import vocab_divergence

QUANTILES = (0.05, 0.10, 0.25, 0.50, 0.75, 0.90)
STRONG_AT, WEAK_BELOW = 0.65, 0.25


def _check_tensor(fn: str, x, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def _check_finite(fn: str, metrics: dict, inputs: str) -> None:
    """A selection made from NaN metrics would look confident and mean nothing: refuse it."""
    bad = [name for name, v in metrics.items() if not math.isfinite(v)]
    if bad:
        raise ValueError(f"{fn}: {', '.join(bad)} came out non-finite; check {inputs} for NaN or inf")


@dataclass
class CapabilityReport:
    mean_p: float
    quantiles: dict
    count: int
    regime: str
    cutoffs: tuple = (WEAK_BELOW, STRONG_AT)


def _regime(mean_p: float, weak_below: float, strong_at: float) -> str:
    return "strong" if mean_p >= strong_at else ("weak" if mean_p < weak_below else "intermediate")


class CapabilityMeter:
    """Streaming capability measure: update() with batches of gold-token probabilities (ignored
    positions excluded by `mask`), report() at any time. Quantiles come from a 10,000-bin histogram
    of [0, 1] (error under 1e-4); the mean is exact."""

    BINS = 10_000

    def __init__(self, *, weak_below: float = WEAK_BELOW, strong_at: float = STRONG_AT):
        self.weak_below, self.strong_at = weak_below, strong_at
        self.hist = torch.zeros(self.BINS, dtype=torch.float64)
        self.total = 0.0
        self.count = 0

    @torch.no_grad()
    def update(self, token_probs: torch.Tensor, mask: Optional[torch.Tensor] = None) -> "CapabilityMeter":
        _check_tensor("objx.select", token_probs, "token_probs")
        p = token_probs.detach().double().reshape(-1)
        if mask is not None:
            p = p[mask.reshape(-1).to(p.device)]
        if p.numel() and (not torch.isfinite(p).all() or p.min() < 0 or p.max() > 1):
            raise ValueError("objx.select: token probabilities must be finite and in [0, 1]")
        self.hist += torch.histc(p.cpu(), bins=self.BINS, min=0.0, max=1.0)
        self.total += p.sum().item()
        self.count += p.numel()
        return self

    def report(self) -> CapabilityReport:
        if self.count == 0:
            raise ValueError("objx.select: no token probabilities measured")
        cdf = self.hist.cumsum(0) / self.count
        edges = torch.linspace(0, 1, self.BINS + 1, dtype=torch.float64)[1:]
        qs = {q: edges[torch.searchsorted(cdf, torch.tensor(q, dtype=torch.float64)).clamp(max=self.BINS - 1)].item()
              for q in QUANTILES}
        mean_p = self.total / self.count
        return CapabilityReport(mean_p, qs, self.count, _regime(mean_p, self.weak_below, self.strong_at),
                                (self.weak_below, self.strong_at))


def measure_capability(token_probs: torch.Tensor, *, mask: Optional[torch.Tensor] = None,
                       weak_below: float = WEAK_BELOW, strong_at: float = STRONG_AT) -> CapabilityReport:
    """mean_p, quantiles (5..90%) and regime of a set of gold-token probabilities."""
    return CapabilityMeter(weak_below=weak_below, strong_at=strong_at).update(token_probs, mask).report()


@torch.no_grad()
def measure_model_capability(model, batches: Iterable, *, ignore_index: int = -100, **cutoffs) -> CapabilityReport:
    """Runs model(input_ids) -> logits [B, T, V] (or an object with .logits) over batches of
    {"input_ids", "labels"} without gradients and measures p(label) on every non-ignored position
    (labels already aligned with the logits)."""
    meter = CapabilityMeter(**cutoffs)
    for batch in batches:
        out = model(batch["input_ids"])
        logits = out.logits if hasattr(out, "logits") else out
        labels = batch["labels"].to(logits.device)
        p = token_logprobs(logits, labels, ignore_index=ignore_index).exp()
        meter.update(p, labels != ignore_index)
    return meter.report()


def recommend_objective(report: CapabilityReport) -> Objective:
    """strong -> -p (alternative: nll with min_prob=0.2); weak -> nll; intermediate -> nll, noting
    that no objective dominates there (SPEC §6)."""
    weak, strong = report.cutoffs
    numbers = f"mean gold-token probability {report.mean_p:.3f} (median {report.quantiles[0.5]:.3f}, n={report.count})"
    if report.regime == "strong":
        why = (f"{numbers} >= {strong}: model-strong end, where prior-leaning objectives beat NLL; "
               "alternative: nll with min_prob=0.2")
        return Objective("power", alpha=1.0, reason=why)
    if report.regime == "weak":
        return Objective("nll", reason=f"{numbers} < {weak}: model-weak end, where NLL dominates")
    return Objective("nll", reason=f"{numbers} in [{weak}, {strong}): intermediate, where no objective "
                                   "dominates; NLL as the default, try -p as well")


# ---- DPO-Kernels: kernel choice -----------------------------------------------------------------

@dataclass
class KernelReport:
    best: str
    metrics: dict = field(default_factory=dict)  # kernel name -> {"PND", "PNC", "TAT", "NAG"}
    reason: str = ""


TIE_ORDER = ("rbf", "polynomial", "mahalanobis", "spectral")


def _default_kernels(prompt_emb, chosen_emb, rejected_emb) -> dict:
    data = torch.cat([prompt_emb, chosen_emb, rejected_emb]).detach()
    maha = K.MahalanobisKernel().fit(data) if data.shape[0] > 1 else K.MahalanobisKernel(torch.eye(data.shape[1]))
    return {"rbf": K.RBFKernel(), "polynomial": K.PolynomialKernel(), "mahalanobis": maha,
            "spectral": K.SpectralKernel()}


@torch.no_grad()
def select_kernel(prompt_emb: torch.Tensor, chosen_emb: torch.Tensor, rejected_emb: torch.Tensor,
                  kernels: Optional[dict] = None) -> KernelReport:
    """PND, PNC, TAT and NAG per candidate kernel (SPEC §6) with kernel distance
    d_K(a, b) = sqrt(max(K(a,a) + K(b,b) - 2 K(a,b), 0)); picks the largest NAG
    (ties: rbf, polynomial, mahalanobis, spectral)."""
    fn = "objx.select.select_kernel"
    embeddings = {"prompt_emb": prompt_emb, "chosen_emb": chosen_emb, "rejected_emb": rejected_emb}
    for name, x in embeddings.items():
        _check_tensor(fn, x, name)
    if not (prompt_emb.shape == chosen_emb.shape == rejected_emb.shape) or prompt_emb.dim() != 2:
        raise ValueError(f"{fn}: embeddings must all be [B, E], got " +
                         ", ".join(f"{name} {tuple(x.shape)}" for name, x in embeddings.items()))
    if prompt_emb.shape[0] == 0 or prompt_emb.shape[1] == 0:
        raise ValueError(f"{fn}: needs at least one pair with E >= 1, got [B, E] = {tuple(prompt_emb.shape)}")
    for name, x in embeddings.items():
        if not x.is_floating_point():
            raise TypeError(f"{fn}: {name} must be a floating-point tensor, got {x.dtype}")
        if not torch.isfinite(x).all():
            raise ValueError(f"{fn}: {name} has NaN or inf entries")
    kernels = kernels or _default_kernels(prompt_emb, chosen_emb, rejected_emb)

    def dist(k, a, b):
        return torch.sqrt((k(a, a) + k(b, b) - 2 * k(a, b)).clamp(min=0))

    metrics = {}
    for name, k in kernels.items():
        d_wl, d_xw, d_xl = dist(k, chosen_emb, rejected_emb), dist(k, prompt_emb, chosen_emb), dist(k, prompt_emb,
                                                                                                      rejected_emb)
        denom = (d_xl.mean() + d_xw.mean()).item()
        metrics[name] = {"PND": d_wl.mean().item(), "PNC": d_xw.mean().item(), "TAT": (d_xw - d_xl).mean().item(),
                         "NAG": (d_xl.mean() - d_xw.mean()).item() / denom if denom > 0 else 0.0}
    for name, m in metrics.items():
        _check_finite(fn, {f"{name} {k}": v for k, v in m.items()}, "the embeddings and the kernel's parameters")
    rank = {n: i for i, n in enumerate(TIE_ORDER)}
    best = max(metrics, key=lambda n: (metrics[n]["NAG"], -rank.get(n, len(rank))))
    return KernelReport(best, metrics, f"largest NAG {metrics[best]['NAG']:.4f} among {', '.join(metrics)}")


# ---- DPO-Kernels: divergence choice ---------------------------------------------------------------

@dataclass
class DivergenceReport:
    best: str
    div_alpha: Optional[float]
    metrics: dict
    reason: str


@torch.no_grad()
def select_divergence(policy_logits: torch.Tensor, ref_logits: torch.Tensor, target: torch.Tensor, *,
                      token_embeddings: Optional[torch.Tensor] = None, ignore_index: int = -100) -> DivergenceReport:
    """From a warm-up sample of per-token distributions (SPEC §6): support overlap
    SO = mean sum_j min(p_j, q_j), drift = mean KL(p || q), and the excess kurtosis of the gold-token
    log-ratios. SO < 0.5 -> wasserstein (js without token_embeddings); drift > 1 -> hellinger;
    kurtosis > 3 -> renyi(0.5); else kl."""
    fn = "objx.select.select_divergence"
    for name, x in (("policy_logits", policy_logits), ("ref_logits", ref_logits), ("target", target)):
        _check_tensor(fn, x, name)
    if policy_logits.dim() < 2 or ref_logits.shape != policy_logits.shape or target.shape != policy_logits.shape[:-1]:
        raise ValueError(f"{fn}: needs policy_logits and ref_logits [..., V] of one shape and target [...], got "
                         f"{tuple(policy_logits.shape)}, {tuple(ref_logits.shape)} and {tuple(target.shape)}")
    v = policy_logits.shape[-1]
    z, r, y = policy_logits.reshape(-1, v), ref_logits.reshape(-1, v), target.reshape(-1)
    keep = y != ignore_index
    z, r, y = z[keep], r[keep], y[keep]
    if y.numel() < 2:
        raise ValueError(f"{fn}: needs at least two non-ignored positions")
    for name, x in (("policy_logits", z), ("ref_logits", r)):
        # -inf is a legitimate logit (a banned token); NaN and +inf make every metric NaN.
        if x.isnan().any() or x.isposinf().any():
            raise ValueError(f"{fn}: {name} has NaN or +inf entries at non-ignored positions")
    overlap = torch.cat([torch.minimum(torch.softmax(zc.float(), -1), torch.softmax(rc.float(), -1)).sum(-1)
                         for zc, rc in zip(z.split(1024), r.split(1024))]).mean().item()
    drift = vocab_divergence(z, r, "kl").mean().item()
    ratio = (token_logprobs(z, y) - token_logprobs(r, y)).double()
    centred = ratio - ratio.mean()
    var = centred.pow(2).mean()
    kurtosis = (centred.pow(4).mean() / var.pow(2) - 3).item() if var > 0 else 0.0
    metrics = {"support_overlap": overlap, "drift": drift, "excess_kurtosis": kurtosis}
    _check_finite(fn, metrics, "policy_logits and ref_logits")
    if overlap < 0.5:
        best = "wasserstein" if token_embeddings is not None else "js"
        why = f"support overlap {overlap:.3f} < 0.5" + ("" if token_embeddings is not None else
                                                         " (no token embeddings for wasserstein)")
        return DivergenceReport(best, None, metrics, why)
    if drift > 1:
        return DivergenceReport("hellinger", None, metrics, f"drift KL {drift:.3f} > 1")
    if kurtosis > 3:
        return DivergenceReport("renyi", 0.5, metrics, f"log-ratio excess kurtosis {kurtosis:.2f} > 3")
    return DivergenceReport("kl", None, metrics, f"overlap {overlap:.3f}, drift {drift:.3f}, kurtosis {kurtosis:.2f}: "
                                               "no rule fired")
