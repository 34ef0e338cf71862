"""vocab_divergence (SPEC §3.4) against the float64 reference, its identities, and its errors."""

import pytest
import torch

import objx
from helpers import TOLERANCES, assert_close, separate_ties

KINDS = [("kl", 0.5), ("reverse_kl", 0.5), ("js", 0.5), ("hellinger", 0.5), ("bhattacharyya", 0.5),
         ("renyi", 0.5), ("renyi", 2.0), ("alpha", 0.5), ("alpha", 2.0), ("alpha", -0.5), ("tv", 0.5)]


def make_pair(rows, vocab, *, dtype=torch.float32, device="cpu"):
    """Policy and reference logits that partly agree, as between a policy and its reference model."""
    g = torch.Generator().manual_seed(torch.seed() % 2**31)
    ref = torch.randn(rows, vocab, dtype=torch.float64, generator=g) * 2
    policy = 0.7 * ref + torch.randn(rows, vocab, dtype=torch.float64, generator=g)
    return policy.to(dtype).to(device), ref.to(dtype).to(device)


def check(policy, ref, kind, div_alpha, mask=None):
    loss_tol, grad_tol = TOLERANCES[policy.dtype]
    a = policy.detach().clone().requires_grad_()
    b = policy.detach().double().cpu().requires_grad_()
    ours = objx.vocab_divergence(a, ref, kind, div_alpha=div_alpha, mask=mask)
    expected = objx.reference.vocab_divergence(b, ref.double().cpu(), kind, div_alpha=div_alpha,
                                               mask=None if mask is None else mask.cpu())
    assert ours.dtype == (torch.float64 if policy.dtype == torch.float64 else torch.float32)
    assert_close(ours, expected, loss_tol, f"{kind}({div_alpha})")
    w = torch.rand(expected.shape, dtype=torch.float64) + 0.5
    (ours * w.to(ours)).sum().backward()
    (expected * w).sum().backward()
    assert a.grad.dtype == policy.dtype
    got, want = a.grad.double().cpu(), b.grad
    if kind == "tv" and policy.dtype != torch.float64:
        # TV's gradient steps at p_j = q_j: entries within rounding of a tie may take the other side
        # in low precision. Compare everywhere else (float64 checks every entry).
        p = torch.softmax(b.detach(), -1)
        q = torch.softmax(ref.double().cpu(), -1)
        away = (p - q).abs() > 1e-4 * torch.maximum(p, q)
        got, want = torch.where(away, got, 0.0), torch.where(away, want, 0.0)
    assert_close(got, want, grad_tol, f"grad {kind}({div_alpha})")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("kind, div_alpha", KINDS)
def test_matches_reference(device, kind, div_alpha, dtype):
    policy, ref = make_pair(16, 2500, dtype=dtype, device=device)
    if kind == "tv" and dtype != torch.float64:
        policy = separate_ties(policy, ref)
    mask = torch.ones(16, dtype=torch.bool, device=device)
    mask[[2, 9]] = False
    check(policy, ref, kind, div_alpha, mask)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_js_where_both_probabilities_underflow(device, dtype):
    """Most entries' p and q below the smallest normal number or exactly 0 (the mixture is then
    taken in log space): still the float64 reference."""
    from test_distill import sharp_pair

    policy, ref = sharp_pair(8, 600, 85.0 if dtype == torch.float32 else 700.0)
    for x in (policy, ref):
        assert (torch.softmax(x, -1) < torch.finfo(dtype).tiny).float().mean() > 0.9  # the regime tested
    check(policy.to(dtype).to(device), ref.to(dtype).to(device), "js", 0.5)


@pytest.mark.parametrize("kind, div_alpha", KINDS)
def test_equal_distributions_give_zero(device, kind, div_alpha):
    _, ref = make_pair(4, 300, dtype=torch.float64, device=device)
    policy = (ref + 3.0).requires_grad_()  # same softmax
    d = objx.vocab_divergence(policy, ref, kind, div_alpha=div_alpha)
    assert d.abs().max().item() < 1e-12
    d.sum().backward()
    if kind != "tv":  # tv's gradient is a subgradient at p = q
        assert policy.grad.abs().max().item() < 1e-12


@pytest.mark.parametrize("div_alpha", [1.01, 0.99, 1.001, 10.0, 20.0])
def test_renyi_float32_near_one_and_at_large_orders(device, div_alpha):
    """float32 Rényi against the float64 reference where S = Σ p^a q^(1-a) is no help: near a = 1, D =
    log S / (a - 1) is all in the digits of S - 1 that rounding S loses; at a >= 10, S overflows float32
    (log S > 88.7, one token 17 nats likelier under the policy) while D is ~17. (Not where that token
    also holds most of p: SPEC §5's floor of the gradient there.)"""
    policy, ref = make_pair(16, 3000, dtype=torch.float64)
    if div_alpha >= 10:
        policy[:, 7] += 3
        ref[:, 7] -= 14
        log_s = torch.logsumexp(div_alpha * policy.log_softmax(-1) + (1 - div_alpha) * ref.log_softmax(-1), -1)
        assert (log_s > 88.8).all()  # the regime tested: S itself is not a float32
    check(policy.float().to(device), ref.float().to(device), "renyi", div_alpha)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_renyi_is_infinite_where_the_reference_has_no_mass(device, dtype):
    """q_j = 0 < p_j: Rényi of order a > 1 is +inf (one such token or several), finite for a < 1."""
    policy, ref = make_pair(4, 200, dtype=dtype, device=device)
    ref[0, 3] = float("-inf")
    ref[1, 10:13] = float("-inf")
    d = objx.vocab_divergence(policy, ref, "renyi", div_alpha=2.0)
    assert torch.isposinf(d[:2]).all() and torch.isfinite(d[2:]).all(), d
    below = objx.vocab_divergence(policy, ref, "renyi", div_alpha=0.5)
    expected = objx.reference.vocab_divergence(policy.double().cpu(), ref.double().cpu(), "renyi", div_alpha=0.5)
    assert_close(below, expected, TOLERANCES[dtype][0], "renyi(0.5) with q = 0 on some tokens")


@pytest.mark.parametrize("kind", ["kl", "js", "renyi", "tv"])
@pytest.mark.parametrize("which", ["policy_logits", "ref_logits"])
def test_row_without_mass_is_an_error_unless_masked_out(device, kind, which):
    """A row whose logits are -inf everywhere is no distribution (D would be NaN): an error naming the
    argument and the row, unless the mask leaves the row out."""
    policy, ref = make_pair(6, 50, device=device)
    (policy if which == "policy_logits" else ref)[3] = float("-inf")
    with pytest.raises(ValueError, match=f"objx.vocab_divergence: {which} row 3 is -inf everywhere"):
        objx.vocab_divergence(policy, ref, kind, div_alpha=2.0)
    mask = torch.ones(6, dtype=torch.bool, device=device)
    mask[3] = False
    d = objx.vocab_divergence(policy.requires_grad_(), ref, kind, div_alpha=2.0, mask=mask)
    assert torch.isfinite(d).all() and d[3] == 0, d
    d.sum().backward()
    assert torch.isfinite(policy.grad).all()


def test_renyi_tends_to_kl(device):
    policy, ref = make_pair(5, 400, dtype=torch.float64, device=device)
    kl = objx.vocab_divergence(policy, ref, "kl")
    near = objx.vocab_divergence(policy, ref, "renyi", div_alpha=1 + 1e-6)
    assert_close(near, kl, 1e-5, "renyi(1 + 1e-6) vs kl")


def test_hellinger_in_unit_interval(device):
    policy, ref = make_pair(32, 200, device=device)
    policy = policy * 5  # sharpen to push distributions apart
    d = objx.vocab_divergence(policy, ref, "hellinger")
    assert (d >= -1e-6).all() and (d <= 1 + 1e-6).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("kind", ["hellinger", "bhattacharyya"])
def test_far_apart_rows(device, kind, dtype):
    """Rows where most of p sits where q has next to nothing (logits ~100 apart): the CPU's hellinger
    drops BC's terms whose product underflows, which must not show in 1 - BC, and bhattacharyya's
    -log BC (~50 here) must keep BC's relative precision."""
    policy, ref = make_pair(16, 300, dtype=torch.float64)
    far = torch.rand(16, 300, dtype=torch.float64) < 0.5
    policy, ref = policy + 100.0 * far, ref + 100.0 * ~far  # p lives on `far`, q off it
    policy, ref = policy.to(dtype).to(device), ref.to(dtype).to(device)
    check(policy, ref, kind, 0.5)
    if kind == "bhattacharyya":
        assert (objx.vocab_divergence(policy, ref, kind) > 40).all()


def test_leading_dims_and_masked_vocabulary(device):
    policy, ref = make_pair(6, 120, device=device)
    holes = torch.rand(6, 120, device=device) < 0.2
    ref = ref.masked_fill(holes, float("-inf"))
    policy = policy.masked_fill(holes, float("-inf"))
    for kind, a in KINDS:
        check(policy.view(2, 3, 120), ref.view(2, 3, 120), kind, a)


def test_gradcheck(device):
    policy, ref = make_pair(3, 11, dtype=torch.float64, device=device)
    for kind, a in KINDS:
        if kind == "tv":
            continue  # |p - q| has kinks; its gradient is checked against the reference above
        x = policy.clone().requires_grad_()
        assert torch.autograd.gradcheck(lambda t: objx.vocab_divergence(t, ref, kind, div_alpha=a), (x,)), kind


def test_opcheck(device):
    policy, ref = make_pair(5, 40, device=device)
    mask = torch.tensor([True, False, True, True, False], device=device)
    args = (policy.requires_grad_(), ref, "js", 0.5, mask)
    torch.library.opcheck(torch.ops.objx.vocab_divergence_forward, args)
    d, stats = torch.ops.objx.vocab_divergence_forward(*args)
    torch.library.opcheck(torch.ops.objx.vocab_divergence_backward,
                          (torch.rand_like(d), policy.detach(), ref, stats, "js", 0.5, mask))


def test_compile_fullgraph(device):
    fn = torch.compile(lambda p, r: objx.vocab_divergence(p, r, "bhattacharyya").mean(), fullgraph=True)
    policy, ref = make_pair(6, 64, device=device)
    a, b = policy.clone().requires_grad_(), policy.clone().requires_grad_()
    fn(a, ref).backward()
    objx.vocab_divergence(b, ref, "bhattacharyya").mean().backward()
    assert torch.allclose(a.grad, b.grad, rtol=1e-6, atol=0)


def test_reference_gets_no_gradient(device):
    policy, ref = make_pair(3, 20, device=device)
    r = ref.clone().requires_grad_()
    objx.vocab_divergence(policy.requires_grad_(), r, "kl").sum().backward()
    assert r.grad is None


def test_bad_inputs(device):
    policy, ref = make_pair(3, 10, device=device)
    with pytest.raises(ValueError, match="kind must be one of"):
        objx.vocab_divergence(policy, ref, "chi2")
    with pytest.raises(ValueError, match="ref_logits must be a tensor of policy_logits' shape"):
        objx.vocab_divergence(policy, ref[:, :9])
    with pytest.raises(ValueError, match="renyi needs div_alpha > 0 and != 1"):
        objx.vocab_divergence(policy, ref, "renyi", div_alpha=1.0)
    with pytest.raises(ValueError, match="alpha needs div_alpha not in"):
        objx.vocab_divergence(policy, ref, "alpha", div_alpha=0.0)
    with pytest.raises(TypeError, match="ref_logits is"):
        objx.vocab_divergence(policy, ref.double())
    with pytest.raises(ValueError, match="mask must have shape"):
        objx.vocab_divergence(policy, ref, mask=torch.ones(2, dtype=torch.bool))


def test_wasserstein(device):
    g = torch.Generator().manual_seed(5)
    emb = torch.randn(400, 16, generator=g).to(device)
    policy, ref = make_pair(6, 400, device=device)
    x = policy.clone().requires_grad_()
    d = objx.vocab_divergence(x, ref, "wasserstein", token_embeddings=emb)
    same = objx.vocab_divergence(ref.clone(), ref, "wasserstein", token_embeddings=emb)
    far = objx.vocab_divergence(-ref, ref, "wasserstein", token_embeddings=emb)
    assert (same < 1e-2).all() and (same < d).all() and (d < far).all()  # only the entropic bias at p = q
    # batched over rows: each row equals its own computation
    from objx.dpo.wasserstein import wasserstein_divergence
    rows = torch.stack([wasserstein_divergence(policy[i:i + 1], ref[i:i + 1], emb)[0] for i in range(6)])
    assert_close(d.detach(), rows, 1e-5, "batched vs per row")
    d.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    masked = objx.vocab_divergence(policy, ref, "wasserstein", token_embeddings=emb,
                                   mask=torch.tensor([True, False, True, True, True, False], device=device))
    assert masked[1] == 0 and masked[5] == 0 and torch.allclose(masked[0], d[0].detach())
    with pytest.raises(ValueError, match="needs token_embeddings"):
        objx.vocab_divergence(policy, ref, "wasserstein")
