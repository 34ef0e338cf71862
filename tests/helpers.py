"""Inputs and tolerances shared by the tests (SPEC §5; SPEC is docs/SPEC.md throughout the suite)."""

import torch

# (loss relative tolerance, gradient max-abs error over max-abs gradient)
TOLERANCES = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-5, 1e-4),
    torch.bfloat16: (2e-2, 2e-2),
    torch.float16: (2e-2, 2e-2),
}


def make_logits(rows, vocab, *, dtype=torch.float32, device="cpu", generator=None, scale=2.0):
    """Random logits whose gold tokens span the whole probability range (from ~1/V up to ~1), so
    that every objective and threshold sees rows of every kind; fresh values on every call."""
    g = generator if generator is not None else torch.Generator().manual_seed(torch.seed() % 2**31)
    z = torch.randn(rows, vocab, dtype=torch.float64, generator=g) * scale
    y = torch.randint(0, vocab, (rows,), generator=g)
    if rows:
        z[torch.arange(rows), y] += torch.rand(rows, dtype=torch.float64, generator=g) * 16.0
    return z.to(dtype).to(device), y.to(device)


def rel_err(actual, expected):
    actual = actual.detach().double().cpu()
    expected = expected.detach().double().cpu()
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    if expected.numel() == 0:
        return 0.0
    scale = expected.abs().max().clamp(min=1e-300)
    return ((actual - expected).abs().max() / scale).item()


def assert_close(actual, expected, tol, what):
    err = rel_err(actual, expected)
    assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.1e}"


def separate_ties(policy, ref, margin=1e-3, temperature=1.0):
    """TV's gradient p_j (a_j - Σ_k p_k a_k), a_j = sign(p_j - q_j) / 2, moves on every entry when one
    entry within rounding of p_k = q_k takes the other side, so a low-precision comparison needs
    inputs without such entries: nudge the policy's logit wherever softmax(policy / T) and
    softmax(ref / T) are within `margin` (relative) until none is. (TVD distillation: the student
    is the policy, the teacher the reference.)"""
    policy = policy.clone()
    for _ in range(20):
        p = torch.softmax(policy.double() / temperature, -1)
        q = torch.softmax(ref.double() / temperature, -1)
        near = (p - q).abs() <= margin * torch.maximum(p, q)
        if not near.any():
            return policy
        policy = torch.where(near, policy + 0.05 + 0.02 * policy.abs(), policy)  # a step bf16 can represent
    raise AssertionError("could not separate p from q")
