"""SPEC §6 selection heuristics."""

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import objx
from objx import kernels, select


@pytest.mark.parametrize("mean_p, regime, kind", [
    (0.80, "strong", "power"), (0.65, "strong", "power"), (0.6499, "intermediate", "nll"),
    (0.50, "intermediate", "nll"), (0.25, "intermediate", "nll"), (0.2499, "weak", "nll"), (0.01, "weak", "nll"),
])
def test_regimes_at_and_around_cutoffs(mean_p, regime, kind):
    probs = torch.full((1000,), mean_p, dtype=torch.float64)
    report = select.measure_capability(probs)
    assert abs(report.mean_p - mean_p) < 1e-12 and report.regime == regime
    objective = select.recommend_objective(report)
    assert objective.kind == kind and f"{mean_p:.3f}" in objective.reason
    if regime == "strong":
        assert objective.name == "-p" and "min_prob=0.2" in objective.reason


def test_configurable_cutoffs_quantiles_and_streaming():
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(20000, generator=g, dtype=torch.float64) ** 2
    report = select.measure_capability(probs, weak_below=0.1, strong_at=0.3)
    assert report.regime == "strong"  # mean of u^2 is 1/3
    for q, v in report.quantiles.items():
        assert abs(v - torch.quantile(probs, q).item()) < 2e-4
    meter = select.CapabilityMeter()
    for chunk in probs.split(3000):
        meter.update(chunk)
    streamed = meter.report()
    assert abs(streamed.mean_p - probs.mean().item()) < 1e-12 and streamed.quantiles == select.measure_capability(
        probs).quantiles
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        select.measure_capability(torch.tensor([1.5]))


def test_capability_from_prob_loss_and_a_model():
    logits = torch.randn(4, 6, 50)
    labels = torch.randint(0, 50, (4, 6))
    labels[:, :2] = -100
    _, p = objx.prob_loss(logits, labels, return_token_prob=True)
    report = select.measure_capability(p, mask=labels != -100)
    assert report.count == 16

    class Toy(torch.nn.Module):
        def forward(self, ids):
            return logits

    model_report = select.measure_model_capability(Toy(), [{"input_ids": None, "labels": labels}])
    assert abs(model_report.mean_p - report.mean_p) < 1e-6


def test_select_kernel_picks_the_separating_kernel():
    # Chosen responses differ from the prompt only along a noisy, irrelevant direction (dim 0);
    # rejected ones differ a little along the others. Euclidean kernels see chosen as farther; a
    # Mahalanobis kernel that discounts dim 0 sees them as nearer, so only it separates correctly.
    g = torch.Generator().manual_seed(1)
    b, e = 64, 6
    prompt = torch.randn(b, e, generator=g, dtype=torch.float64)
    chosen = prompt.clone()
    chosen[:, 0] += 3 * torch.randn(b, generator=g, dtype=torch.float64)
    rejected = prompt + 0.3 * torch.randn(b, e, generator=g, dtype=torch.float64)
    rejected[:, 0] = prompt[:, 0]
    precision = torch.diag(torch.tensor([1e-4] + [1.0] * (e - 1), dtype=torch.float64))
    cands = {"rbf": kernels.RBFKernel(2.0), "mahalanobis": kernels.MahalanobisKernel(precision)}
    report = select.select_kernel(prompt, chosen, rejected, cands)
    assert report.best == "mahalanobis"
    assert report.metrics["mahalanobis"]["NAG"] > 0 > report.metrics["rbf"]["NAG"]
    k = cands["mahalanobis"]
    d = lambda a, c: torch.sqrt((k(a, a) + k(c, c) - 2 * k(a, c)).clamp(min=0))  # noqa: E731
    m = report.metrics["mahalanobis"]
    assert abs(m["PNC"] - d(prompt, chosen).mean().item()) < 1e-12
    assert abs(m["PND"] - d(chosen, rejected).mean().item()) < 1e-12
    assert abs(m["TAT"] - (d(prompt, chosen) - d(prompt, rejected)).mean().item()) < 1e-12
    default = select.select_kernel(prompt, chosen, rejected)
    assert set(default.metrics) == {"rbf", "polynomial", "mahalanobis", "spectral"}


def test_select_kernel_tie_order():
    x = torch.zeros(4, 3, dtype=torch.float64)
    report = select.select_kernel(x, x, x, {"spectral": kernels.SpectralKernel(), "rbf": kernels.RBFKernel()})
    assert report.best == "rbf"


def _dists(n, v, *, sharp=1.0, shift=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    ref = torch.randn(n, v, generator=g) * sharp
    return ref + shift * torch.randn(n, v, generator=g), ref, torch.randint(0, v, (n,), generator=g)


def test_select_divergence_rules():
    emb = torch.randn(200, 8)
    z, r, y = _dists(64, 200, sharp=6.0, shift=6.0)  # sharp, disagreeing: little overlap
    low = select.select_divergence(z, r, y, token_embeddings=emb)
    assert low.metrics["support_overlap"] < 0.5 and low.best == "wasserstein"
    assert select.select_divergence(z, r, y).best == "js"
    z, r, y = _dists(64, 200, sharp=0.5, shift=0.05)  # nearly equal: overlap high, drift small
    same = select.select_divergence(z, r, y)
    assert same.metrics["support_overlap"] > 0.9 and same.metrics["drift"] < 1 and same.best in ("kl", "renyi")
    # heavy-tailed gold log-ratios: a few positions where the policy moved a lot
    z, r, y = _dists(400, 100, sharp=0.5, shift=0.02, seed=3)
    z[torch.arange(0, 400, 50), y[::50]] += 8.0
    heavy = select.select_divergence(z, r, y)
    assert heavy.metrics["excess_kurtosis"] > 3 and heavy.best == "renyi" and heavy.div_alpha == 0.5


def test_cli(tmp_path):
    probs = tmp_path / "p.pt"
    torch.save(torch.full((100,), 0.9), probs)
    out = subprocess.run([sys.executable, "-m", "objx", "select", "capability", "--probs", str(probs)],
                         capture_output=True, text=True, check=True).stdout
    assert "strong" in out and "-p" in out
    emb = tmp_path / "e.pt"
    torch.save({"prompt": torch.randn(8, 4), "chosen": torch.randn(8, 4), "rejected": torch.randn(8, 4)}, emb)
    out = subprocess.run([sys.executable, "-m", "objx", "select", "dpo", "--embeddings", str(emb)],
                         capture_output=True, text=True, check=True).stdout
    assert "<- best" in out and "NAG" in out


# ---- issue 15: no confident answer from bad data ----------------------------------------------------

def test_select_divergence_refuses_non_finite_logits():
    z, r, y = _dists(32, 50, seed=torch.seed() % 2**31)
    for bad in (float("nan"), float("inf")):
        poisoned = z.clone()
        poisoned[5, 7] = bad
        # it used to pick 'kl' with NaN metrics
        with pytest.raises(ValueError, match="policy_logits has NaN or \\+inf entries"):
            select.select_divergence(poisoned, r, y)
        with pytest.raises(ValueError, match="ref_logits has NaN or \\+inf entries"):
            select.select_divergence(r, poisoned, y)
    dead = z.clone()
    dead[3] = float("-inf")  # a row with no probability mass anywhere
    with pytest.raises(ValueError, match="row 3 is -inf everywhere"):
        select.select_divergence(dead, r, y)
    y[5] = -100  # an ignored position's logits do not matter
    poisoned = z.clone()
    poisoned[5] = float("nan")
    assert select.select_divergence(poisoned, r, y).metrics == select.select_divergence(z, r, y).metrics


def test_select_divergence_argument_errors():
    z, r, y = _dists(8, 20)
    with pytest.raises(TypeError, match="policy_logits must be a torch.Tensor, got list"):
        select.select_divergence(z.tolist(), r, y)
    with pytest.raises(ValueError, match="of one shape"):
        select.select_divergence(z, r[:, :10], y)


def test_select_kernel_refuses_empty_or_non_finite_embeddings():
    g = torch.Generator().manual_seed(torch.seed() % 2**31)
    x, w, l_ = (torch.randn(6, 4, generator=g, dtype=torch.float64) for _ in range(3))
    empty = torch.zeros(0, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"needs at least one pair with E >= 1, got \[B, E\] = \(0, 4\)"):
        select.select_kernel(empty, empty, empty)  # it used to pick 'rbf'
    bad = w.clone()
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match="chosen_emb has NaN or inf entries"):
        select.select_kernel(x, bad, l_)
    with pytest.raises(TypeError, match="rejected_emb must be a floating-point tensor"):
        select.select_kernel(x, w, l_.long())
    with pytest.raises(ValueError, match=r"embeddings must all be \[B, E\], got prompt_emb \(6, 4\)"):
        select.select_kernel(x, w, l_[:3])
    with pytest.raises(ValueError, match="rbf PND, .* came out non-finite"):  # a candidate that makes NaN
        select.select_kernel(x, w, l_, {"rbf": kernels.RBFKernel(1e-200)})
