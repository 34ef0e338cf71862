"""DPO-Kernels' Python pieces (SPEC §3.1–3.3, 3.5): token log-probs, f-divergence scores, embedding
kernels, and the loss."""

import math

import pytest
import torch
import torch.nn.functional as F

import objx
from helpers import TOLERANCES, assert_close, make_logits
from objx import kernels


def test_token_logprobs(device):
    logits, target = make_logits(20, 900, dtype=torch.float64, device=device)
    target[4] = -100
    x = logits.clone().requires_grad_()
    got = objx.token_logprobs(x, target)
    expected = torch.log_softmax(logits, -1).gather(1, target.clamp(min=0)[:, None]).squeeze(1)
    expected[4] = 0
    assert_close(got, expected, 1e-12, "token_logprobs")
    got.sum().backward()
    y = logits.clone().requires_grad_()
    (torch.log_softmax(y, -1).gather(1, target.clamp(min=0)[:, None]).squeeze(1) * (target != -100)).sum().backward()
    assert_close(x.grad, y.grad, 1e-10, "token_logprobs grad")


@pytest.mark.parametrize("f_alpha", [0.5, 1.0, 1.5])
def test_f_divergence_scores_match_trl_formulas(f_alpha):
    r = torch.linspace(-5, 5, 41, dtype=torch.float64)
    assert torch.equal(objx.f_divergence_score(r, "reverse_kl"), r)
    assert_close(objx.f_divergence_score(r, "forward_kl"), -torch.exp(-r), 1e-15, "forward_kl")
    assert_close(objx.f_divergence_score(r, "js_divergence"), torch.log(torch.sigmoid(r)), 1e-12, "js")
    alpha = objx.f_divergence_score(r, "alpha_divergence", f_alpha=f_alpha)
    expected = r if f_alpha == 1.0 else torch.exp((f_alpha - 1) * r) / (f_alpha - 1)
    assert_close(alpha, expected, 1e-15, "alpha")


def test_alpha_divergence_clamp():
    r = torch.tensor([1000.0], dtype=torch.float64)
    assert objx.f_divergence_score(r, "alpha_divergence", f_alpha=2.0).item() == pytest.approx(math.exp(80.0))
    r16 = torch.tensor([1000.0], dtype=torch.float16)
    assert torch.isfinite(objx.f_divergence_score(r16, "alpha_divergence", f_alpha=2.0)).all()
    with pytest.raises(ValueError, match="kind must be one of"):
        objx.f_divergence_score(r, "hellinger")


def _embs(b=6, e=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [F.normalize(torch.randn(b, e, dtype=torch.float64, generator=g), dim=-1) for _ in range(3)]


@pytest.mark.parametrize("make", [
    lambda e: kernels.PolynomialKernel(3, 1.0),
    lambda e: kernels.RBFKernel(0.7),
    lambda e: kernels.MahalanobisKernel(torch.eye(e, dtype=torch.float64) * 2),
    lambda e: kernels.MahalanobisKernel(dim=e, learnable=True).double(),
    lambda e: kernels.SpectralKernel((1.0, 0.5, 0.2), (1.0, 0.1, 3.0)),
    lambda e: kernels.HierarchicalMixtureKernel(e).double(),
], ids=["poly", "rbf", "maha", "maha-learned", "spectral", "hmk"])
def test_log_k_equals_log_of_k(make):
    x, y, _ = _embs()
    k = make(x.shape[1])
    assert_close(k.log_k(x, y), torch.log(k(x, y)), 1e-12, type(k).__name__)


def test_kernel_values():
    x, y, _ = _embs()
    d2 = (x - y).pow(2).sum(-1)
    assert_close(kernels.RBFKernel(0.5)(x, y), torch.exp(-d2 / 0.5), 1e-14, "rbf")
    assert_close(kernels.PolynomialKernel(2, 1.0)(x, y), ((x * y).sum(-1) + 1) ** 2, 1e-14, "poly")
    spec = kernels.SpectralKernel((1.0, 0.5), (1.0, 0.1))(x, y)
    assert_close(spec, torch.exp(-d2) + 0.5 * torch.exp(-0.1 * d2), 1e-14, "spectral")


def test_mahalanobis_fit_and_errors():
    g = torch.Generator().manual_seed(3)
    data = torch.randn(200, 4, dtype=torch.float64, generator=g) * torch.tensor([1.0, 2.0, 0.5, 1.0],
                                                                              dtype=torch.float64)
    k = kernels.MahalanobisKernel().fit(data, shrinkage=0.0, eps=0.0)
    assert_close(k.precision(), torch.linalg.inv(torch.cov(data.T)), 1e-8, "fitted precision")
    with pytest.raises(ValueError, match="give a precision"):
        kernels.MahalanobisKernel().log_k(data[:2], data[2:4])
    with pytest.raises(ValueError, match="inputs must both be"):
        kernels.RBFKernel()(data[:2], data[:3])


def test_hmk_weights_and_entropy_bonus():
    hmk = kernels.HierarchicalMixtureKernel(5, entropy_weight=0.1).double()
    with torch.no_grad():
        for logits in hmk.logits.values():
            logits.copy_(torch.randn(2))
    for name, w in hmk.weights().items():
        assert abs(w.sum().item() - 1) < 1e-12, name
    ent = sum(-(w * w.log()).sum() for w in hmk.weights().values())
    assert_close(hmk.entropy_bonus(), -0.1 * ent, 1e-12, "entropy bonus")
    x, y, _ = _embs()
    hmk.log_k(x, y).sum().backward()
    assert all(p.grad is not None for p in hmk.parameters())


def _logps(b=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, dtype=torch.float64, generator=g) * 3 - 20 for _ in range(4)]


def test_dpo_kernel_loss_is_standard_dpo():
    pw, pl, rw, rl = _logps()
    pw.requires_grad_()
    loss, metrics = objx.dpo_kernel_loss(pw, pl, rw, rl, beta=0.1)
    expected = -F.logsigmoid(0.1 * ((pw - rw) - (pl - rl))).mean()
    assert_close(loss, expected, 1e-14, "standard DPO")
    assert_close(metrics["chosen_rewards"], 0.1 * (pw - rw), 1e-14, "chosen rewards")
    assert metrics["reward_accuracy"].item() == ((pw - rw) > (pl - rl)).double().mean().item()
    assert not metrics["reward_margin"].requires_grad
    loss.backward()
    assert pw.grad is not None


def test_dpo_kernel_loss_variants():
    pw, pl, rw, rl = _logps(seed=1)
    r_w, r_l = pw - rw, pl - rl
    hinge, _ = objx.dpo_kernel_loss(pw, pl, rw, rl, beta=0.5, loss_type="hinge")
    assert_close(hinge, torch.relu(1 - 0.5 * (r_w - r_l)).mean(), 1e-14, "hinge")
    ipo, _ = objx.dpo_kernel_loss(pw, pl, rw, rl, beta=0.5, loss_type="ipo")
    assert_close(ipo, ((r_w - r_l - 1.0) ** 2).mean(), 1e-14, "ipo")
    smooth, _ = objx.dpo_kernel_loss(pw, pl, rw, rl, beta=0.2, label_smoothing=0.1, f_divergence="js_divergence")
    z = 0.2 * (F.logsigmoid(r_w) - F.logsigmoid(r_l))
    assert_close(smooth, (-(0.9) * F.logsigmoid(z) - 0.1 * F.logsigmoid(-z)).mean(), 1e-14, "smoothed js")
    x, w, l_ = _embs(8)
    k = kernels.RBFKernel(0.8)
    kern, _ = objx.dpo_kernel_loss(pw, pl, rw, rl, beta=0.1, kernel=k, prompt_emb=x, chosen_emb=w,
                                   rejected_emb=l_, kernel_weight=0.3, divergence=torch.tensor([0.2, 0.4], dtype=torch.float64),
                                   divergence_coef=0.5, nll=torch.tensor([2.0], dtype=torch.float64), nll_coef=0.1)
    z = 0.1 * (r_w - r_l) + 0.3 * (k.log_k(x, w) - k.log_k(x, l_))
    assert_close(kern, -F.logsigmoid(z).mean() + 0.5 * 0.3 + 0.1 * 2.0, 1e-14, "hybrid")


def test_dpo_kernel_loss_errors():
    pw, pl, rw, rl = _logps()
    with pytest.raises(ValueError, match="loss_type must be one of"):
        objx.dpo_kernel_loss(pw, pl, rw, rl, loss_type="focal")  # "robust" is a TRL type now
    with pytest.raises(ValueError, match="must share one shape"):
        objx.dpo_kernel_loss(pw, pl[:3], rw, rl)
    with pytest.raises(ValueError, match="kernel_weight != 0 needs"):
        objx.dpo_kernel_loss(pw, pl, rw, rl, kernel_weight=0.1)
    with pytest.raises(ValueError, match="divergence_coef != 0 needs"):
        objx.dpo_kernel_loss(pw, pl, rw, rl, divergence_coef=0.1)


def _pairs(device, b=3, t=7, v=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda: torch.randn(b, t, v, dtype=torch.float64, generator=g).to(device)  # noqa: E731
    labels = [torch.randint(0, v, (b, t), generator=g).to(device) for _ in range(2)]
    for lab in labels:
        lab[:, :2] = -100  # prompt positions
    return mk(), mk(), mk(), mk(), labels[0], labels[1]


def _seq(logits, labels):
    lp = torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)
    return (lp * (labels != -100)).sum(-1)


def test_dpo_kernel_module_is_standard_dpo(device):
    pw, pl, rw, rl, yw, yl = _pairs(device)
    pw.requires_grad_()
    loss, metrics = objx.DPOKernelLoss(beta=0.2)(pw, pl, rw, rl, yw, yl)
    z = 0.2 * ((_seq(pw, yw) - _seq(rw, yw)) - (_seq(pl, yl) - _seq(rl, yl)))
    assert_close(loss, -F.logsigmoid(z).mean(), 1e-12, "module DPO")
    loss.backward()
    assert pw.grad is not None and torch.isfinite(pw.grad).all()


def test_dpo_kernel_module_terms(device):
    pw, pl, rw, rl, yw, yl = _pairs(device, seed=1)
    hw = torch.randn(3, 7, 4, dtype=torch.float64, device=device)
    hl = torch.randn(3, 7, 4, dtype=torch.float64, device=device)
    k = kernels.RBFKernel(0.9)
    module = objx.DPOKernelLoss(beta=0.1, kernel=k, kernel_weight=0.2, divergence="kl", divergence_coef=0.3,
                                nll_coef=0.05)
    loss, _ = module(pw, pl, rw, rl, yw, yl, chosen_hidden=hw, rejected_hidden=hl)
    cw, cl = yw != -100, yl != -100
    pool = lambda h, m: F.normalize((h * m[..., None]).sum(1) / m.sum(1, keepdim=True), dim=-1)  # noqa: E731
    ex, ew, el = pool(hw, ~cw), pool(hw, cw), pool(hl, cl)
    r_w, r_l = _seq(pw, yw) - _seq(rw, yw), _seq(pl, yl) - _seq(rl, yl)
    z = 0.1 * (r_w - r_l) + 0.2 * (k.log_k(ex, ew) - k.log_k(ex, el))
    kl = objx.reference.vocab_divergence(pw, rw, "kl")[cw].mean()
    nll = -_seq(pw, yw).sum() / cw.sum()
    assert_close(loss, -F.logsigmoid(z).mean() + 0.3 * kl + 0.05 * nll, 1e-10, "module hybrid")
    with pytest.raises(ValueError, match="needs embeddings or chosen/rejected hidden"):
        module(pw, pl, rw, rl, yw, yl)


def test_dpo_kernel_module_fused_heads(device):
    g = torch.Generator().manual_seed(7)
    b, t, d, v = 3, 6, 8, 40
    mk = lambda *s: torch.randn(*s, dtype=torch.float64, generator=g).to(device)  # noqa: E731
    hw, hl, rhw, rhl = mk(b, t, d), mk(b, t, d), mk(b, t, d), mk(b, t, d)
    w_pol, w_ref = mk(v, d), mk(v, d)
    yw, yl = [torch.randint(0, v, (b, t), generator=g).to(device) for _ in range(2)]
    yw[:, :2] = -100
    yl[:, :2] = -100
    module = objx.DPOKernelLoss(beta=0.1, kernel=kernels.RBFKernel(), kernel_weight=0.1, nll_coef=0.1)
    fused, _ = module(hw, hl, rhw, rhl, yw, yl, policy_weight=w_pol, ref_weight=w_ref)
    plain, _ = module(hw @ w_pol.T, hl @ w_pol.T, rhw @ w_ref.T, rhl @ w_ref.T, yw, yl, chosen_hidden=hw,
                      rejected_hidden=hl)
    assert_close(fused, plain, 1e-12, "fused heads vs logits")
    with pytest.raises(ValueError, match="divergence term needs logits"):
        objx.DPOKernelLoss(divergence="kl", divergence_coef=0.1)(hw, hl, rhw, rhl, yw, yl, policy_weight=w_pol,
                                                                 ref_weight=w_ref)


# ---- issue 15: numerics and parameters of the DPO-Kernels pieces ----------------------------------

@pytest.mark.parametrize("dtype, f_alpha", [(torch.float16, 0.5), (torch.float16, 0.9), (torch.float16, 1.5),
                                            (torch.bfloat16, 1 + 2e-6),
                                            (torch.float32, 1 + 2e-6), (torch.float32, 1 - 2e-6)])
def test_alpha_divergence_stays_finite_after_the_division(dtype, f_alpha):
    # The exponent cap held exp() finite, but dividing by f_alpha - 1 then overflowed (fp16 at
    # f_alpha = 0.5: exp(11) / -0.5 = -inf); below the caps the value is still the formula.
    g = torch.Generator().manual_seed(torch.seed() % 2**31)
    big = torch.finfo(dtype).max / 2
    r = torch.cat([torch.randn(64, generator=g, dtype=torch.float64) * 3,
                   torch.tensor([-big, -1e4, -60.0, 60.0, 1e4, big], dtype=torch.float64)])
    score = objx.f_divergence_score(r.to(dtype), "alpha_divergence", f_alpha=f_alpha)
    assert torch.isfinite(score).all(), f"non-finite alpha_divergence score in {dtype} at f_alpha={f_alpha}"
    a = f_alpha - 1
    expected = torch.exp(a * r.to(dtype).double()) / a
    # below every cap, above underflow, and representable (fp16 cannot hold 1/(f_alpha - 1) = 5e5)
    inside = ((a * r).abs() <= 8.0) & (expected.abs() < torch.finfo(dtype).max / 2)
    tol = TOLERANCES[dtype][0]
    err = ((score.double() - expected).abs() / expected.abs())[inside].max().item() if inside.any() else 0.0
    assert err <= tol, f"alpha_divergence relative error {err:.2e} > {tol:.0e}"
    capped = score.double()[a * r > 8.0]  # at the cap: the sign of 1/(f_alpha - 1), the largest magnitude
    assert (capped.sign() == math.copysign(1, a)).all()
    largest_inside = score.double()[inside].abs().amax() if inside.any() else 0.0
    assert (capped.abs() >= largest_inside).all()


def test_wasserstein_nan_in_a_masked_out_row_gives_a_zero_gradient(device):
    g = torch.Generator().manual_seed(torch.seed() % 2**31)
    emb = torch.randn(40, 6, generator=g, dtype=torch.float64).to(device)
    policy, _ = make_logits(5, 40, dtype=torch.float64, device=device, generator=g)
    ref, _ = make_logits(5, 40, dtype=torch.float64, device=device, generator=g)
    mask = torch.tensor([True, False, True, True, False], device=device)
    poisoned = policy.clone()
    poisoned[1] = float("nan")
    poisoned[4, 3] = float("inf")
    x = poisoned.requires_grad_()
    d = objx.vocab_divergence(x, ref, "wasserstein", token_embeddings=emb, mask=mask)
    d.sum().backward()
    clean = policy.clone().requires_grad_()
    expected = objx.vocab_divergence(clean, ref, "wasserstein", token_embeddings=emb, mask=mask)
    expected.sum().backward()
    assert torch.isfinite(x.grad).all(), "NaN gradient from a masked-out row"
    assert torch.equal(x.grad[~mask], torch.zeros_like(x.grad[~mask]))
    assert_close(d, expected, 1e-12, "wasserstein with poisoned masked-out rows")
    assert_close(x.grad, clean.grad, 1e-12, "its gradient")


def test_kernel_parameters_are_validated():
    with pytest.raises(ValueError, match="PolynomialKernel: degree must be an integer >= 1, got -1"):
        kernels.PolynomialKernel(degree=-1)
    with pytest.raises(ValueError, match="degree must be an integer >= 1, got 1.5"):
        kernels.PolynomialKernel(degree=1.5)
    with pytest.raises(ValueError, match="c must be a finite number >= 0"):
        kernels.PolynomialKernel(c=-1.0)
    with pytest.raises(ValueError, match="HierarchicalMixtureKernel: degree must be an integer >= 1"):
        kernels.HierarchicalMixtureKernel(4, degree=0)
    with pytest.raises(ValueError, match="weights and scales must be non-empty"):
        kernels.SpectralKernel(weights=(), scales=())
    with pytest.raises(ValueError, match="weights and scales must be non-empty and of one length"):
        kernels.SpectralKernel(weights=(1.0,), scales=(1.0, 0.5))
    with pytest.raises(ValueError, match="scales must be finite and > 0"):
        kernels.SpectralKernel(scales=(-1.0, 0.1))
    with pytest.raises(ValueError, match="weights must be finite and > 0"):
        kernels.SpectralKernel(weights=(1.0, float("inf")))
    with pytest.raises(ValueError, match="precision must be positive definite, got smallest eigenvalue -1"):
        kernels.MahalanobisKernel(-torch.eye(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="precision must be positive definite"):
        kernels.MahalanobisKernel(torch.tensor([[1.0, 2.0], [2.0, 1.0]]))  # eigenvalues 3 and -1
    with pytest.raises(TypeError, match="precision must be a floating-point tensor"):
        kernels.MahalanobisKernel(torch.eye(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="learnable=True needs dim"):
        kernels.MahalanobisKernel(learnable=True, dim=0)


def test_mahalanobis_fit_refuses_integer_embeddings():
    # It used to fit them and store an int64 precision matrix.
    g = torch.Generator().manual_seed(torch.seed() % 2**31)
    ints = torch.randint(0, 5, (20, 3), generator=g)
    with pytest.raises(TypeError, match=r"fit: embeddings must be a floating-point tensor, got torch.int64"):
        kernels.MahalanobisKernel().fit(ints)
    with pytest.raises(ValueError, match="fit: embeddings must be finite"):
        kernels.MahalanobisKernel().fit(torch.full((4, 3), float("nan")))
    with pytest.raises(ValueError, match=r"fit: shrinkage must be in \[0, 1\]"):
        kernels.MahalanobisKernel().fit(ints.double(), shrinkage=2.0)
    fitted = kernels.MahalanobisKernel().fit(ints.double())
    assert fitted.precision().dtype == torch.float64


def test_mahalanobis_dimension_mismatch_names_the_precision():
    x, y, _ = _embs(e=4)
    with pytest.raises(ValueError, match=r"MahalanobisKernel: the precision is \(3, 3\) but the inputs are "
                                         r"\[B, E\] with E = 4"):
        kernels.MahalanobisKernel(torch.eye(3, dtype=torch.float64)).log_k(x, y)
    with pytest.raises(ValueError, match="the precision is"):
        kernels.HierarchicalMixtureKernel(3).double().log_k(x, y)


@pytest.mark.cpu_only
@pytest.mark.parametrize("kwargs, message", [
    (dict(label_smoothing=1.5), "label_smoothing must be in \\[0, 1\\], got 1.5"),
    (dict(loss_type="robust", label_smoothing=0.7), "label_smoothing must be in \\[0, 0.5\\)"),
    (dict(beta=0.0), "objx.DPOKernelLoss: beta must be > 0, got 0.0"),
])
def test_module_options_are_checked_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        objx.DPOKernelLoss(**kwargs)
