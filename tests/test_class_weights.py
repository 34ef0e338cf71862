"""Class weights (SPEC §1): prob_loss(weight=) against F.cross_entropy(weight=) for nll, and against
the float64 reference for every objective, on logits and fused with the LM head."""

import pytest
import torch
import torch.nn.functional as F

import objx
from helpers import TOLERANCES, assert_close, make_logits
from test_linear_prob_loss import make_head


def make_weight(vocab, device, dtype=torch.float32):
    """Fresh positive class weights spanning two orders of magnitude."""
    g = torch.Generator().manual_seed(torch.seed() % 2**31)
    return (torch.rand(vocab, dtype=torch.float64, generator=g) * 4 + 0.04).to(dtype).to(device)


def leaf(t):
    return t.detach().clone().requires_grad_()


def grads_against(ours_fn, ref_fn, x, reduction):
    """(ours, ref, our grad, ref grad) of x, with random upstream weights for reduction 'none'."""
    mine, theirs = leaf(x), leaf(x.double().cpu())
    ours, ref = ours_fn(mine), ref_fn(theirs)
    up = torch.rand(ref.shape, dtype=torch.float64) + 0.5 if reduction == "none" else torch.ones(())
    (ours * up.to(ours)).sum().backward()
    (ref * up).sum().backward()
    return ours, ref, mine.grad, theirs.grad


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_nll_matches_cross_entropy(device, dtype, reduction, label_smoothing):
    logits, target = make_logits(48, 3001, dtype=dtype, device=device)
    target[[3, 17]] = -100
    weight = make_weight(3001, device)
    loss_tol, grad_tol = TOLERANCES[dtype]
    ours, ref, g_ours, g_ref = grads_against(
        lambda z: objx.prob_loss(z, target, weight=weight, reduction=reduction, label_smoothing=label_smoothing),
        lambda z: F.cross_entropy(z, target.cpu(), weight=weight.double().cpu(), reduction=reduction,
                                  label_smoothing=label_smoothing),
        logits, reduction)
    assert_close(ours, ref, loss_tol, f"loss {reduction} eps={label_smoothing}")
    assert_close(g_ours, g_ref, grad_tol, f"grad {reduction} eps={label_smoothing}")


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("case", [
    dict(objective="-p"), dict(objective="-p^10", z_loss=1e-2), dict(objective="log1m", softcap=20.0),
    dict(objective="-log p·1[p≥0.2]"), dict(objective="nll", label_smoothing=0.2, z_loss=1e-3, softcap=15.0),
], ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_objectives_match_reference(device, case, reduction):
    logits, target = make_logits(40, 2500, device=device)
    target[5] = -100
    weight = make_weight(2500, device)
    loss_tol, grad_tol = TOLERANCES[torch.float32]
    ours, ref, g_ours, g_ref = grads_against(
        lambda z: objx.prob_loss(z, target, weight=weight, reduction=reduction, **case),
        lambda z: objx.reference.prob_loss(z, target.cpu(), weight=weight.cpu(), reduction=reduction, **case),
        logits, reduction)
    assert_close(ours, ref, loss_tol, f"loss {case}")
    assert_close(g_ours, g_ref, grad_tol, f"grad {case}")


def test_reference_matches_cross_entropy():
    """The reference's weighted formulas are F.cross_entropy's (the other tests lean on it)."""
    logits, target = make_logits(20, 300, dtype=torch.float64)
    target[2] = -100
    weight = make_weight(300, "cpu", torch.float64)
    for reduction in ("mean", "sum", "none"):
        ref = objx.reference.prob_loss(logits, target, weight=weight, reduction=reduction, label_smoothing=0.3)
        expected = F.cross_entropy(logits, target, weight=weight, reduction=reduction, label_smoothing=0.3)
        assert_close(ref, expected, 1e-12, reduction)


@pytest.mark.parametrize("grad_in_forward", [False, True])
@pytest.mark.parametrize("case", [dict(objective="nll"), dict(objective="nll", label_smoothing=0.1),
                                  dict(objective="-p^10", z_loss=1e-3), dict(objective="log1m")],
                         ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_linear_matches_reference(device, dtype, case, grad_in_forward):
    hidden, head, target, bias = make_head(40, 48, 1500, dtype=dtype, device=device, bias=True)
    target[7] = -100
    ce_weight = make_weight(1500, device)
    loss_tol, grad_tol = TOLERANCES[dtype]
    ours_in = [leaf(t) for t in (hidden, head, bias)]
    ref_in = [leaf(t.double().cpu()) for t in (hidden, head, bias)]
    objective = case["objective"]
    kw = {k: v for k, v in case.items() if k != "objective"}
    ours = objx.linear_prob_loss(ours_in[0], ours_in[1], target, ours_in[2], objective, ce_weight=ce_weight,
                                 tile_size=384, grad_in_forward=grad_in_forward, **kw)
    ref = objx.reference.linear_prob_loss(ref_in[0], ref_in[1], target.cpu(), ref_in[2], objective,
                                          ce_weight=ce_weight.cpu(), **kw)
    ours.backward()
    ref.backward()
    assert_close(ours, ref, loss_tol, f"loss {case}")
    for name, a, b in zip(("hidden", "weight", "bias"), ours_in, ref_in):
        assert_close(a.grad, b.grad, grad_tol, f"grad_{name} {case}")


def test_linear_nll_matches_cross_entropy(device):
    hidden, head, target, _ = make_head(30, 32, 700, device=device)
    target[0] = -100
    ce_weight = make_weight(700, device)
    for reduction in ("mean", "sum", "none"):
        ours = objx.linear_prob_loss(hidden, head, target, ce_weight=ce_weight, reduction=reduction,
                                     label_smoothing=0.05, tile_size=256)
        expected = F.cross_entropy(hidden.double() @ head.double().T, target, weight=ce_weight.double(),
                                   reduction=reduction, label_smoothing=0.05)
        assert_close(ours, expected, TOLERANCES[torch.float32][0], reduction)


def test_gradcheck_float64(device):
    logits, target = make_logits(6, 37, dtype=torch.float64, device=device)
    target[1] = -100
    weight = make_weight(37, device, torch.float64)
    assert torch.autograd.gradcheck(
        lambda z: objx.prob_loss(z, target, weight=weight, label_smoothing=0.2, z_loss=1e-2), (leaf(logits),))
    hidden, head, target, bias = make_head(6, 5, 37, dtype=torch.float64, device=device, bias=True)
    assert torch.autograd.gradcheck(
        lambda h, w, b: objx.linear_prob_loss(h, w, target, b, "-p^10", ce_weight=weight, label_smoothing=0.0,
                                              tile_size=16, reduction="none", grad_in_forward=False),
        tuple(leaf(t) for t in (hidden, head, bias)))


def test_modules_and_compile(device):
    logits, target = make_logits(12, 300, device=device)
    weight = make_weight(300, device)
    module = objx.ProbLoss(weight=weight, label_smoothing=0.1)
    compiled = torch.compile(module, fullgraph=True)
    expected = F.cross_entropy(logits.double(), target, weight=weight.double(), label_smoothing=0.1)
    for fn in (module, compiled):
        assert_close(fn(logits, target), expected, TOLERANCES[torch.float32][0], "ProbLoss(weight=)")
    hidden, head, target, _ = make_head(10, 8, 200, device=device)
    ce_weight = make_weight(200, device)
    linear = objx.LinearProbLoss(ce_weight=ce_weight, tile_size=64)
    expected = F.cross_entropy(hidden.double() @ head.double().T, target, weight=ce_weight.double())
    for fn in (linear, torch.compile(linear, fullgraph=True)):
        assert_close(fn(hidden, head, target), expected, TOLERANCES[torch.float32][0], "LinearProbLoss(ce_weight=)")


def test_mean_of_zero_weights_is_zero(device):
    logits, target = make_logits(4, 50, device=device)
    weight = torch.zeros(50, device=device)
    z = leaf(logits)
    loss = objx.prob_loss(z, target, weight=weight)
    loss.backward()
    assert loss.item() == 0.0 and torch.all(z.grad == 0)


@pytest.mark.parametrize("fn", ["prob_loss", "linear_prob_loss"])
def test_bad_weight_is_named(device, fn):
    logits, target = make_logits(4, 50, device=device)
    hidden, head, _, _ = make_head(4, 8, 50, device=device)
    name = "weight" if fn == "prob_loss" else "ce_weight"

    def call(w, **kw):
        if fn == "prob_loss":
            return objx.prob_loss(logits, target, weight=w, **kw)
        return objx.linear_prob_loss(hidden, head, target, ce_weight=w, **kw)

    with pytest.raises(ValueError, match=rf"objx.{fn}: {name} must be 1-D \[V\] with V = 50"):
        call(torch.ones(49, device=device))
    with pytest.raises(TypeError, match=rf"objx.{fn}: {name} must be a floating-point tensor"):
        call(torch.ones(50, dtype=torch.long, device=device))
    with pytest.raises(TypeError, match=rf"objx.{fn}: {name} must be a torch.Tensor"):
        call([1.0] * 50)
    with pytest.raises(ValueError, match=rf"objx.{fn}: {name} requires grad"):
        call(torch.ones(50, device=device, requires_grad=True))
    # A real group (one rank): the front doors check their arguments on every rank of it, and the
    # sharded loss the whole vocabulary's length once the shard sizes are known.
    import datetime
    import tempfile

    import torch.distributed as dist

    with tempfile.TemporaryDirectory() as store:
        dist.init_process_group("gloo", init_method=f"file://{store}/store", rank=0, world_size=1,
                                timeout=datetime.timedelta(seconds=30))
        try:
            group = dist.group.WORLD
            with pytest.raises(ValueError, match=rf"objx.{fn}: {name} must be the whole vocabulary's class weights "
                                                 rf"\[V\] with V = 50 \(the ranks' shard sizes \[50\] summed\), got "
                                                 rf"shape \(49,\)"):
                call(torch.ones(49, device=device), process_group=group)
            with pytest.raises(ValueError, match=rf"objx.{fn}: rank 0 of 1: {name} must be 1-D \[V\] \(the whole "
                                                 rf"vocabulary\), got shape \(5, 10\)"):
                call(torch.ones(5, 10, device=device), process_group=group)
            with pytest.raises(TypeError, match=rf"objx.{fn}: rank 0 of 1: {name} must be a floating-point tensor"):
                call(torch.ones(50, dtype=torch.long, device=device), process_group=group)
        finally:
            dist.destroy_process_group()


def test_op_checks_the_weight(device):
    logits, target = make_logits(4, 50, device=device)
    with pytest.raises(ValueError, match=r"objx.prob_loss: weight must be 1-D \[V\] with V = 50"):
        torch.ops.objx.prob_loss_forward(logits, target, "nll", 0.0, None, None, -100, 0.0, 0.0, None,
                                         torch.ones(3, device=device))


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_opcheck(device, label_smoothing):
    logits, target = make_logits(16, 257, device=device)
    target[2] = -100
    weight = make_weight(257, device)
    args = (logits, target, "nll", 0.0, None, None, -100, label_smoothing, 1e-3, None, weight)
    torch.library.opcheck(torch.ops.objx.prob_loss_forward, (leaf(logits),) + args[1:])
    loss, lse, logp, counted, _correct = torch.ops.objx.prob_loss_forward(*args)
    torch.library.opcheck(torch.ops.objx.prob_loss_backward,
                          (torch.rand_like(loss), logits, target, lse, logp, counted, "nll", 0.0, -100,
                           label_smoothing, 1e-3, None, weight))
    hidden, head, target, bias = make_head(8, 8, 100, device=device, bias=True)
    ce_weight = make_weight(100, device)
    for grad_in_forward in (False, True):
        torch.library.opcheck(torch.ops.objx.linear_prob_loss_forward,
                              (leaf(hidden), leaf(head), leaf(bias), target, "nll", 0.0, None, None, -100,
                               label_smoothing, 1e-3, None, 32, grad_in_forward, ce_weight))
    out = torch.ops.objx.linear_prob_loss_forward(hidden, head, bias, target, "nll", 0.0, None, None, -100,
                                                  label_smoothing, 1e-3, None, 32, False, ce_weight)
    torch.library.opcheck(torch.ops.objx.linear_prob_loss_backward,
                          (torch.rand_like(out[0]), hidden, head, bias, target, out[1], out[2], out[3], "nll", 0.0,
                           -100, label_smoothing, 1e-3, None, 32, ce_weight))
