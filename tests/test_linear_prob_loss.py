"""The fused LM-head loss against prob_loss on materialised logits and the float64 reference."""

import pytest
import torch

import objx
from helpers import TOLERANCES, assert_close


def make_head(rows, dim, vocab, *, dtype=torch.float32, device="cpu", bias=False):
    """Hidden states and an LM head whose logits put gold tokens anywhere from unlikely to certain."""
    g = torch.Generator().manual_seed(torch.seed() % 2**31)
    hidden = torch.randn(rows, dim, dtype=torch.float64, generator=g)
    weight = torch.randn(vocab, dim, dtype=torch.float64, generator=g) / dim**0.5
    target = torch.randint(0, vocab, (rows,), generator=g)
    # pull each row's hidden state towards its target's embedding by a random amount
    hidden += weight[target] * torch.rand(rows, 1, dtype=torch.float64, generator=g) * 10
    b = torch.randn(vocab, dtype=torch.float64, generator=g) * 0.5 if bias else None
    conv = lambda t: None if t is None else t.to(dtype).to(device)  # noqa: E731
    return conv(hidden), conv(weight), target.to(device), conv(b)


def run_both(hidden, weight, target, bias, objective, reduction="mean", **kw):
    """objx fused vs the float64 reference: (loss, grads) for each, upstream weights per row."""
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (hidden, weight, bias)]
    refs = [t.detach().double().cpu().requires_grad_() if t is not None else None for t in (hidden, weight, bias)]
    ours = objx.linear_prob_loss(leaves[0], leaves[1], target, leaves[2], objective, reduction=reduction, **kw)
    ref_kw = {k: v for k, v in kw.items() if k not in ("tile_size", "grad_in_forward")}
    ref = objx.reference.linear_prob_loss(refs[0], refs[1], target.cpu(), refs[2], objective,
                                          reduction=reduction, **ref_kw)
    up = torch.rand(ref.shape, dtype=torch.float64) + 0.5 if reduction == "none" else torch.ones(())
    (ours * up.to(ours)).sum().backward()
    (ref * up).sum().backward()
    return ours, ref, leaves, refs


def check(hidden, weight, target, bias, objective, reduction="mean", **kw):
    loss_tol, grad_tol = TOLERANCES[hidden.dtype]
    ours, ref, leaves, refs = run_both(hidden, weight, target, bias, objective, reduction, **kw)
    assert_close(ours, ref, loss_tol, f"loss {objective} {kw}")
    for name, a, b in zip(("hidden", "weight", "bias"), leaves, refs):
        if a is not None:
            assert a.grad.dtype == a.dtype
            assert_close(a.grad, b.grad, grad_tol, f"grad_{name} {objective} {kw}")


@pytest.mark.parametrize("grad_in_forward", [False, True])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("objective", ["nll", "-p", "-p^10", "log1m", "-log p·1[p≥0.2]"])
def test_matches_reference(device, objective, dtype, bias, grad_in_forward):
    hidden, weight, target, b = make_head(40, 48, 1500, dtype=dtype, device=device, bias=bias)
    target[7] = -100
    if "1[p" in objective and dtype == torch.bfloat16:
        # The threshold is a step in p: bf16 logits (the GEMM's output) move p by ~1%, which may
        # flip a row lying right at the cut. Leave out rows within 5% of it; the rest must agree.
        logits = hidden.double() @ weight.double().T + (0 if b is None else b.double())
        p = torch.softmax(logits, -1).gather(1, target.clamp(min=0)[:, None]).squeeze(1)
        target[(p - 0.2).abs() < 0.05] = -100
    check(hidden, weight, target, b, objective, tile_size=384, grad_in_forward=grad_in_forward, z_loss=1e-3)


@pytest.mark.parametrize("options", [{"label_smoothing": 0.1}, {"softcap": 10.0}, {"max_prob": 0.9}])
def test_options(device, options):
    hidden, weight, target, b = make_head(24, 16, 700, device=device, bias=True)
    check(hidden, weight, target, b, "nll", tile_size=256, **options)


def test_reduction_none_gives_per_row_gradients(device):
    hidden, weight, target, b = make_head(30, 16, 900, device=device, bias=True)
    target[::4] = -100
    check(hidden, weight, target, b, "-p", reduction="none", tile_size=256)
    with pytest.raises(ValueError, match="grad_in_forward needs reduction"):
        objx.linear_prob_loss(hidden.requires_grad_(), weight, target, reduction="none", grad_in_forward=True)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("tile_size", [1, 255, 256, 1000, 5000])
def test_tile_sizes_including_not_dividing_v(device, tile_size, reduction):
    hidden, weight, target, b = make_head(12, 8, 1000, device=device, bias=True)
    check(hidden, weight, target, b, "log1m", reduction=reduction, tile_size=tile_size)
    check(hidden, weight, target, b, "log1m", reduction=reduction, tile_size=tile_size, grad_in_forward=True)


def test_parity_with_materialised_logits(device):
    hidden, weight, target, b = make_head(33, 24, 2000, device=device, bias=True)
    target[0] = -100
    fused = objx.linear_prob_loss(hidden, weight, target, b, "-p^10", reduction="none", tile_size=512)
    plain = objx.prob_loss(hidden @ weight.T + b, target, "-p^10", reduction="none")
    assert_close(fused, plain, 1e-5, "fused vs materialised")


def test_all_rows_ignored(device):
    hidden, weight, target, _ = make_head(5, 8, 50, device=device)
    target[:] = -100
    for gif in (False, True):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        loss = objx.linear_prob_loss(h, w, target, grad_in_forward=gif)
        loss.backward()
        assert loss.item() == 0.0
        assert not h.grad.any() and not w.grad.any()


def test_empty_batch(device):
    hidden = torch.randn(0, 8, device=device, requires_grad=True)
    weight = torch.randn(50, 8, device=device, requires_grad=True)
    target = torch.zeros(0, dtype=torch.long, device=device)
    loss = objx.linear_prob_loss(hidden, weight, target)
    loss.backward()
    assert loss.item() == 0.0 and hidden.grad.shape == (0, 8) and not weight.grad.any()


def test_leading_dims_and_token_prob(device):
    hidden, weight, target, _ = make_head(12, 8, 300, device=device)
    loss, prob = objx.linear_prob_loss(hidden.view(3, 4, 8), weight, target.view(3, 4), reduction="none",
                                       return_token_prob=True)
    ref = torch.softmax((hidden @ weight.T).double(), -1).gather(1, target[:, None]).squeeze(1)
    assert loss.shape == (3, 4) and prob.shape == (3, 4)
    assert_close(prob.reshape(-1), ref, 1e-5, "token_prob")


def test_linear_token_logprobs(device):
    hidden, weight, target, b = make_head(20, 16, 500, dtype=torch.float64, device=device, bias=True)
    target[2] = -100
    h = hidden.clone().requires_grad_()
    got = objx.linear_token_logprobs(h, weight, target, b, tile_size=128)
    logits = hidden @ weight.T + b
    expected = torch.log_softmax(logits, -1).gather(1, target.clamp(min=0)[:, None]).squeeze(1)
    expected[2] = 0
    assert_close(got, expected, 1e-12, "token logprobs")
    got.sum().backward()
    href = hidden.clone().requires_grad_()
    ref = torch.log_softmax(href @ weight.T + b, -1).gather(1, target.clamp(min=0)[:, None]).squeeze(1)
    (ref * (target != -100)).sum().backward()
    assert_close(h.grad, href.grad, 1e-10, "token logprobs grad")


def test_gradcheck(device):
    hidden, weight, target, b = make_head(5, 4, 40, dtype=torch.float64, device=device, bias=True)
    target[1] = -100
    inputs = tuple(t.clone().requires_grad_() for t in (hidden, weight, b))
    assert torch.autograd.gradcheck(
        lambda h, w, bb: objx.linear_prob_loss(h, w, target, bb, "-p^10", tile_size=16, z_loss=1e-2,
                                               reduction="none"), inputs)
    # grad_in_forward=True runs its backward once (gradcheck calls it repeatedly); its gradients are
    # checked against the float64 reference in test_matches_reference.
    assert torch.autograd.gradcheck(
        lambda h, w, bb: objx.linear_prob_loss(h, w, target, bb, "log1m", tile_size=16, grad_in_forward=False),
        inputs)


@pytest.mark.parametrize("grad_in_forward", [False, True])
def test_opcheck(device, grad_in_forward):
    hidden, weight, target, b = make_head(8, 8, 100, device=device, bias=True)
    args = (hidden.requires_grad_(), weight.requires_grad_(), b.requires_grad_(), target, "power", 2.0, None,
            None, -100, 0.0, 1e-3, None, 32, grad_in_forward)
    torch.library.opcheck(torch.ops.objx.linear_prob_loss_forward, args)
    out = torch.ops.objx.linear_prob_loss_forward(*args)
    hidden, weight, b = hidden.detach(), weight.detach(), b.detach()  # the backward op is not differentiable
    torch.library.opcheck(torch.ops.objx.linear_prob_loss_backward,
                          (torch.rand_like(out[0]), hidden, weight, b, target, out[1], out[2], out[3], "power",
                           2.0, -100, 0.0, 1e-3, None, 32))


def test_compile_fullgraph(device):
    module = objx.LinearProbLoss("-p", tile_size=64)
    compiled = torch.compile(module, fullgraph=True)
    hidden, weight, target, _ = make_head(10, 8, 200, device=device)
    grads = []
    for fn in (compiled, module):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        fn(h, w, target).backward()
        grads.append((h.grad, w.grad))
    assert torch.allclose(grads[0][0], grads[1][0], rtol=1e-6, atol=0)
    assert torch.allclose(grads[0][1], grads[1][1], rtol=1e-6, atol=0)


def test_bad_inputs(device):
    hidden, weight, target, b = make_head(6, 8, 20, device=device, bias=True)
    cases = [
        (dict(weight=weight[:, :7]), ValueError, r"weight must be \[V, D\] with D = 8"),
        (dict(bias=b[:5]), ValueError, r"bias must be \[V\] with V = 20"),
        (dict(weight=weight.double()), TypeError, "weight is torch.float64|weight is Double"),
        (dict(target=target[:3]), ValueError, "target must have shape"),
        (dict(target=target.int()), TypeError, "target must be int64"),
        (dict(tile_size=0), ValueError, "tile_size must be an integer > 0"),
        (dict(tile_size=2.5), ValueError, "tile_size must be an integer > 0"),
    ]
    for change, exc, match in cases:
        kw = dict(hidden=hidden, weight=weight, target=target, bias=b)
        kw.update(change)
        tile = kw.pop("tile_size", None)
        with pytest.raises(exc, match=match):
            objx.linear_prob_loss(kw["hidden"], kw["weight"], kw["target"], kw["bias"], tile_size=tile)
    bad = target.clone()
    bad[4] = 20
    with pytest.raises(IndexError, match=r"target\[4\] = 20 is outside \[0, 20\)"):
        objx.linear_prob_loss(hidden, weight, bad)


def test_grad_in_forward_backward_runs_once(device):
    hidden, weight, target, _ = make_head(6, 8, 40, device=device)
    h = hidden.clone().requires_grad_()
    loss = objx.linear_prob_loss(h, weight, target, grad_in_forward=True)
    loss.backward(retain_graph=True)
    first = h.grad.clone()
    with pytest.raises(RuntimeError, match="can run only once"):
        loss.backward()
    assert torch.equal(h.grad, first)  # the failed second call added nothing
    h2 = hidden.clone().requires_grad_()
    loss2 = objx.linear_prob_loss(h2, weight, target, grad_in_forward=False)
    loss2.backward(retain_graph=True)
    loss2.backward()
    assert_close(h2.grad, 2 * first, 1e-5, "recompute mode differentiates twice")


def test_chunk_size_is_a_deprecated_alias_of_tile_size(device):
    hidden, weight, target, b = make_head(12, 8, 300, device=device, bias=True)
    expected = objx.linear_prob_loss(hidden, weight, target, b, "-p", reduction="none", tile_size=64)
    with pytest.warns(DeprecationWarning, match="pass tile_size=64"):
        got = objx.linear_prob_loss(hidden, weight, target, b, "-p", reduction="none", chunk_size=64)
    assert torch.equal(got, expected)
    with pytest.raises(ValueError, match="pass tile_size only"):
        objx.linear_prob_loss(hidden, weight, target, b, tile_size=64, chunk_size=64)


# ---- autocast, double backward, torch.func, argument types (issue 15) ---------------------------

def _autocast_run(fn, hidden, weight, bias, target, device):
    """loss and (hidden, weight, bias) gradients of fn under torch.autocast(bfloat16) on device."""
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (hidden, weight, bias)]
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
        loss = fn(leaves[0], leaves[1], target, leaves[2])
    loss.backward()
    return loss.detach(), [t.grad if t is not None else None for t in leaves]


@pytest.mark.parametrize("objective", ["nll", "-p"])
def test_autocast_mixed_head_follows_f_linear_eager_and_compiled(objective, device):
    """bfloat16 activations and a float32 head under autocast (the common mixed case): the head's GEMMs run in
    bfloat16 as F.linear's would, the same eager and compiled, each gradient in its input's dtype."""
    hidden, weight, target, bias = make_head(24, 16, 300, dtype=torch.float32, device=device, bias=True)
    hidden = hidden.bfloat16()
    fn = lambda h, w, y, b: objx.linear_prob_loss(h, w, y, b, objective, tile_size=128)  # noqa: E731
    eager, eager_grads = _autocast_run(fn, hidden, weight, bias, target, device)
    # Compiled afresh: inductor's caches key on the graph, not on the Python of objx's backward formulas.
    with torch._inductor.config.patch(force_disable_caches=True):
        compiled, compiled_grads = _autocast_run(torch.compile(fn), hidden, weight, bias, target, device)
    tol_loss, tol_grad = TOLERANCES[torch.float32]
    assert_close(compiled, eager, tol_loss, "compiled vs eager loss")
    for name, c, e in zip(("hidden", "weight", "bias"), compiled_grads, eager_grads):
        assert_close(c, e, tol_grad, f"compiled vs eager grad_{name}")
    assert [g.dtype for g in eager_grads] == [torch.bfloat16, torch.float32, torch.float32]
    # The reference on the inputs autocast hands the GEMM: everything rounded to bfloat16.
    ref_in = [t.detach().bfloat16().double().cpu().requires_grad_() for t in (hidden, weight, bias)]
    ref = objx.reference.linear_prob_loss(ref_in[0], ref_in[1], target.cpu(), ref_in[2], objective)
    ref.backward()
    tol_loss, tol_grad = TOLERANCES[torch.bfloat16]
    assert_close(eager, ref, tol_loss, "loss vs reference on bfloat16 inputs")
    for name, e, r in zip(("hidden", "weight", "bias"), eager_grads, ref_in):
        assert_close(e, r.grad, tol_grad, f"grad_{name} vs reference on bfloat16 inputs")


@pytest.mark.parametrize("grad_in_forward", [True, False])
def test_double_backward_is_a_clear_error(grad_in_forward, device):
    """The backward kernels are not differentiable: asking for a second derivative raises instead of silently
    dropping its second-order terms (with grad_in_forward, as soon as create_graph asks for one)."""
    hidden, weight, target, bias = make_head(6, 8, 40, dtype=torch.float64, device=device, bias=True)
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss = objx.linear_prob_loss(h, w, target, bias, "-p", grad_in_forward=grad_in_forward)
    with pytest.raises(RuntimeError, match=r"objx\.linear_prob_loss: double backward .*not supported"):
        grad_h, grad_w = torch.autograd.grad(loss, (h, w), create_graph=True)
        torch.autograd.grad((grad_h.pow(2).sum() + grad_w.pow(2).sum()), (h, w))
    with pytest.raises(RuntimeError, match=r"objx\.linear_prob_loss: double backward .*not supported"):
        torch.autograd.gradgradcheck(lambda hh: objx.linear_prob_loss(hh, w.detach(), target, bias, "-p",
                                                                      grad_in_forward=grad_in_forward), (h,))
    # A first derivative is still what it was.
    (grad_h,) = torch.autograd.grad(objx.linear_prob_loss(h, w, target, bias, "-p"), h)
    ref_h = hidden.detach().cpu().requires_grad_()
    objx.reference.linear_prob_loss(ref_h, weight.cpu(), target.cpu(), bias.cpu(), "-p").backward()
    assert_close(grad_h, ref_h.grad, TOLERANCES[torch.float64][1], "first-order grad_hidden")


def test_function_transforms_are_refused_with_the_reason(device):
    hidden, weight, target, _ = make_head(5, 8, 30, device=device)
    with pytest.raises(RuntimeError, match=r"objx\.linear_prob_loss: torch\.func's differentiating transforms .*not supported"):
        torch.func.grad(lambda h: objx.linear_prob_loss(h, weight, target))(hidden)
    # torch.vmap alone does not differentiate: it still runs, one batch entry at a time.
    batch = torch.stack([hidden, hidden.flip(0)])
    mapped = torch.vmap(lambda h: objx.linear_prob_loss(h, weight, target))(batch)
    looped = torch.stack([objx.reference.linear_prob_loss(h.cpu(), weight.cpu(), target.cpu()) for h in batch])
    assert_close(mapped, looped, TOLERANCES[torch.float32][0], "vmap of linear_prob_loss")


def test_non_floating_head_arguments_are_named(device):
    hidden, weight, target, bias = make_head(5, 8, 30, device=device, bias=True)
    for kw, name in ((dict(hidden=hidden.long()), "hidden"), (dict(weight=weight.int()), "weight"),
                     (dict(bias=bias.long()), "bias")):
        args = {"hidden": hidden, "weight": weight, "bias": bias, **kw}
        with pytest.raises(TypeError, match=rf"objx\.linear_prob_loss: {name} must be .*float.*, got torch\.int"):
            objx.linear_prob_loss(args["hidden"], args["weight"], target, args["bias"])
