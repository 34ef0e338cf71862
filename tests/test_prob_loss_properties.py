"""Property tests over random shapes and options: objx equals the float64 reference."""

import torch
from hypothesis import given, settings, strategies as st

import objx
from helpers import assert_close, make_logits

OBJECTIVES = ["nll", "-p", "-p^10", "-p^0.5", "log1m", "-log p·1[p≥0.2]", "-p·1[p≤0.9]"]


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(0, 6), vocab=st.integers(1, 5000), objective=st.sampled_from(OBJECTIVES),
       z_loss=st.sampled_from([0.0, 1e-3]), softcap=st.sampled_from([None, 5.0, 30.0]),
       reduction=st.sampled_from(["mean", "sum", "none"]), ignored=st.integers(0, 6),
       seed=st.integers(0, 2**31 - 1))
def test_prob_loss_matches_reference(rows, vocab, objective, z_loss, softcap, reduction, ignored, seed):
    logits, target = make_logits(rows, vocab, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    target[:min(ignored, rows)] = -100
    ours_in = logits.clone().requires_grad_()
    ref_in = logits.clone().requires_grad_()
    kw = dict(reduction=reduction, z_loss=z_loss, softcap=softcap)
    ours = objx.prob_loss(ours_in, target, objective, **kw)
    ref = objx.reference.prob_loss(ref_in, target, objective, **kw)
    assert_close(ours, ref, 1e-10, "loss")
    ours.sum().backward()
    ref.sum().backward()
    assert_close(ours_in.grad, ref_in.grad, 1e-10, "grad")


@settings(max_examples=20, deadline=None)
@given(rows=st.integers(0, 5), dim=st.integers(1, 12), vocab=st.integers(1, 700), chunk=st.integers(1, 800),
       objective=st.sampled_from(OBJECTIVES), bias=st.booleans(), grad_in_forward=st.booleans(),
       seed=st.integers(0, 2**31 - 1))
def test_linear_prob_loss_matches_reference(rows, dim, vocab, chunk, objective, bias, grad_in_forward, seed):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(rows, dim, dtype=torch.float64, generator=g, requires_grad=True)
    weight = torch.randn(vocab, dim, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(vocab, dtype=torch.float64, generator=g, requires_grad=True) if bias else None
    target = torch.randint(0, vocab, (rows,), generator=g)
    ours = objx.linear_prob_loss(hidden, weight, target, b, objective, tile_size=chunk,
                                 grad_in_forward=grad_in_forward)
    leaves = [t for t in (hidden, weight, b) if t is not None]
    ours_grads = torch.autograd.grad(ours, leaves)
    ref = objx.reference.linear_prob_loss(hidden, weight, target, b, objective)
    ref_grads = torch.autograd.grad(ref, leaves)
    assert_close(ours, ref, 1e-10, "loss")
    for a, r in zip(ours_grads, ref_grads):
        assert_close(a, r, 1e-10, "grad")
