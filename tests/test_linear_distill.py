"""Distillation fused with both LM heads against the float64 reference."""

import pytest
import torch

import objx
from helpers import TOLERANCES, assert_close


def make_heads(rows, d_s, d_t, vocab, *, dtype=torch.float32, device="cpu", bias=True):
    g = torch.Generator().manual_seed(torch.seed() % 2**31)
    f = lambda *shape, s=1.0: (torch.randn(*shape, dtype=torch.float64, generator=g) * s).to(dtype).to(device)  # noqa: E731
    hs, ws = f(rows, d_s), f(vocab, d_s, s=d_s ** -0.5 * 2)
    ht, wt = f(rows, d_t), f(vocab, d_t, s=d_t ** -0.5 * 2)
    bs, bt = (f(vocab, s=0.3), f(vocab, s=0.3)) if bias else (None, None)
    target = torch.randint(0, vocab, (rows,), generator=g).to(device)
    return hs, ws, bs, ht, wt, bt, target


def check(hs, ws, bs, ht, wt, bt, target, reduction="mean", **kw):
    loss_tol, grad_tol = TOLERANCES[hs.dtype]
    ours_in = [t.detach().clone().requires_grad_() if t is not None else None for t in (hs, ws, bs)]
    ref_in = [t.detach().double().cpu().requires_grad_() if t is not None else None for t in (hs, ws, bs)]
    ours = objx.linear_distill_loss(ours_in[0], ours_in[1], ht, wt, target, student_bias=ours_in[2],
                                    teacher_bias=bt, reduction=reduction, **kw)
    ref_kw = {k: v for k, v in kw.items() if k not in ("row_block", "grad_in_forward")}
    cpu = lambda t: None if t is None else t.double().cpu()  # noqa: E731
    ref = objx.reference.linear_distill_loss(ref_in[0], ref_in[1], cpu(ht), cpu(wt), target.cpu() if target is not None
                                             else None, student_bias=ref_in[2], teacher_bias=cpu(bt),
                                             reduction=reduction, **ref_kw)
    assert_close(ours, ref, loss_tol, f"loss {kw}")
    up = torch.rand(ref.shape, dtype=torch.float64) + 0.5 if reduction == "none" else torch.ones(())
    (ours * up.to(ours)).sum().backward()
    (ref * up).sum().backward()
    for name, a, b in zip(("hidden", "weight", "bias"), ours_in, ref_in):
        if a is not None:
            assert a.grad.dtype == a.dtype
            assert_close(a.grad, b.grad, grad_tol, f"grad_{name} {kw}")


@pytest.mark.parametrize("grad_in_forward", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("method", ["ttm", "wttm", "kd", "forward_kl", "reverse_kl", "jsd", "tvd"])
def test_matches_reference(device, method, dtype, grad_in_forward):
    hs, ws, bs, ht, wt, bt, target = make_heads(20, 16, 24, 700, dtype=dtype, device=device)
    target[3] = -100
    check(hs, ws, bs, ht, wt, bt, target, method=method, temperature=2.0, beta=0.3, hard_weight=0.5,
          soft_weight=1.5, row_block=6, grad_in_forward=grad_in_forward)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_reductions_no_target_no_bias(device, reduction):
    hs, ws, _, ht, wt, _, _ = make_heads(9, 8, 8, 300, device=device, bias=False)
    check(hs, ws, None, ht, wt, None, None, reduction=reduction, method="jsd", temperature=1.5, hard_weight=0.0,
          row_block=4)


def test_matches_logits_version(device):
    hs, ws, bs, ht, wt, bt, target = make_heads(12, 8, 8, 400, dtype=torch.float64, device=device)
    fused = objx.linear_distill_loss(hs, ws, ht, wt, target, student_bias=bs, teacher_bias=bt, method="wttm",
                                     temperature=3.0, reduction="none", row_block=5)
    plain = objx.distill_loss(hs @ ws.T + bs, ht @ wt.T + bt, target, method="wttm", temperature=3.0,
                              reduction="none")
    assert_close(fused, plain, 1e-12, "fused vs logits")


def test_empty_and_all_ignored(device):
    hs, ws, bs, ht, wt, bt, target = make_heads(5, 4, 4, 30, device=device)
    target[:] = -100
    h = hs.clone().requires_grad_()
    loss = objx.linear_distill_loss(h, ws, ht, wt, target, method="kd", temperature=2.0)
    loss.backward()
    assert loss.item() == 0.0 and not h.grad.any()
    e = torch.zeros(0, 4, device=device, requires_grad=True)
    loss = objx.linear_distill_loss(e, ws, e.detach(), wt, target[:0], method="ttm")
    loss.backward()
    assert loss.item() == 0.0 and e.grad.shape == (0, 4)


def test_gradcheck(device):
    hs, ws, bs, ht, wt, bt, target = make_heads(4, 3, 5, 11, dtype=torch.float64, device=device)
    inputs = tuple(t.clone().requires_grad_() for t in (hs, ws, bs))
    assert torch.autograd.gradcheck(
        lambda h, w, b: objx.linear_distill_loss(h, w, ht, wt, target, student_bias=b, teacher_bias=bt,
                                                 method="jsd", temperature=2.0, row_block=3,
                                                 grad_in_forward=False), inputs)


@pytest.mark.parametrize("grad_in_forward", [False, True])
def test_opcheck(device, grad_in_forward):
    hs, ws, bs, ht, wt, bt, target = make_heads(6, 4, 4, 50, device=device)
    args = (hs.requires_grad_(), ws.requires_grad_(), bs, ht, wt, bt, target, "wttm", 2.0, 0.5, 1.0, 1.0, -100, 4,
            grad_in_forward)
    torch.library.opcheck(torch.ops.objx.linear_distill_forward, args)
    out = torch.ops.objx.linear_distill_forward(*args)
    torch.library.opcheck(torch.ops.objx.linear_distill_backward,
                          (torch.rand_like(out[0]), hs.detach(), ws.detach(), bs, ht, wt, bt, target, out[3], out[4],
                           "wttm", 2.0, 0.5, 1.0, 1.0, -100, 4))


def test_compile_fullgraph(device):
    module = objx.LinearDistillLoss("ttm", temperature=2.0, row_block=4)
    compiled = torch.compile(module, fullgraph=True)
    hs, ws, _, ht, wt, _, target = make_heads(8, 4, 4, 64, device=device, bias=False)
    grads = []
    for fn in (compiled, module):
        h = hs.clone().requires_grad_()
        fn(h, ws, ht, wt, target).backward()
        grads.append(h.grad)
    assert torch.allclose(grads[0], grads[1], rtol=1e-6, atol=0)


def test_bad_inputs(device):
    hs, ws, bs, ht, wt, bt, target = make_heads(4, 4, 6, 20, device=device)
    with pytest.raises(ValueError, match="vocabulary mismatch"):
        objx.linear_distill_loss(hs, ws, ht, wt[:19], target)
    with pytest.raises(ValueError, match=r"student_weight must be \[V, D\] with D = 4"):
        objx.linear_distill_loss(hs, ws[:, :3], ht, wt, target)
    with pytest.raises(ValueError, match=r"teacher_bias must be \[V\]"):
        objx.linear_distill_loss(hs, ws, ht, wt, target, teacher_bias=bt[:3])
    with pytest.raises(ValueError, match="hard_weight is 1 but no target"):
        objx.linear_distill_loss(hs, ws, ht, wt)
    with pytest.raises(ValueError, match="temperature must be"):
        objx.linear_distill_loss(hs, ws, ht, wt, target, temperature=0.0)
    bad = target.clone()
    bad[1] = 20
    with pytest.raises(IndexError, match=r"target\[1\] = 20 is outside"):
        objx.linear_distill_loss(hs, ws, ht, wt, bad, row_block=2)


def test_chunk_size_is_a_deprecated_alias_of_row_block(device):
    hs, ws, _, ht, wt, _, _ = make_heads(10, 6, 5, 40, device=device, bias=False)
    expected = objx.linear_distill_loss(hs, ws, ht, wt, hard_weight=0.0, reduction="none", row_block=3)
    with pytest.warns(DeprecationWarning, match="pass row_block=3"):
        got = objx.linear_distill_loss(hs, ws, ht, wt, hard_weight=0.0, reduction="none", chunk_size=3)
    assert torch.equal(got, expected)
    with pytest.raises(ValueError, match="row_block must be an integer > 0"):
        objx.linear_distill_loss(hs, ws, ht, wt, hard_weight=0.0, row_block=0)


# ---- autocast, double backward, torch.func, argument types (issue 15) ---------------------------

def _distill_under_autocast(fn, hs, ws, bs, ht, wt, bt, target, device):
    leaves = [t.detach().clone().requires_grad_() for t in (hs, ws, bs)]
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
        loss = fn(leaves[0], leaves[1], leaves[2], ht, wt, bt, target)
    loss.backward()
    return loss.detach(), [t.grad for t in leaves]


def test_autocast_mixed_heads_follow_f_linear_eager_and_compiled(device):
    """bfloat16 hidden states and float32 heads under autocast: both heads' GEMMs in bfloat16, eager and
    compiled alike, against the reference on the bfloat16-rounded inputs."""
    hs, ws, bs, ht, wt, bt, target = make_heads(20, 16, 12, 200, dtype=torch.float32, device=device)
    hs, ht = hs.bfloat16(), ht.bfloat16()
    fn = lambda hs_, ws_, bs_, ht_, wt_, bt_, y: objx.linear_distill_loss(  # noqa: E731
        hs_, ws_, ht_, wt_, y, student_bias=bs_, teacher_bias=bt_, method="kd", temperature=2.0, row_block=8)
    eager, eager_grads = _distill_under_autocast(fn, hs, ws, bs, ht, wt, bt, target, device)
    # Compiled afresh: inductor's caches key on the graph, not on the Python of objx's backward formulas.
    with torch._inductor.config.patch(force_disable_caches=True):
        compiled, compiled_grads = _distill_under_autocast(torch.compile(fn), hs, ws, bs, ht, wt, bt, target, device)
    tol_loss, tol_grad = TOLERANCES[torch.float32]
    assert_close(compiled, eager, tol_loss, "compiled vs eager loss")
    for name, c, e in zip(("hidden", "weight", "bias"), compiled_grads, eager_grads):
        assert_close(c, e, tol_grad, f"compiled vs eager grad of student_{name}")
    assert [g.dtype for g in eager_grads] == [torch.bfloat16, torch.float32, torch.float32]
    rounded = lambda t: t.detach().bfloat16().double().cpu()  # noqa: E731
    ref_in = [rounded(t).requires_grad_() for t in (hs, ws, bs)]
    ref = objx.reference.linear_distill_loss(ref_in[0], ref_in[1], rounded(ht), rounded(wt), target.cpu(),
                                             student_bias=ref_in[2], teacher_bias=rounded(bt), method="kd",
                                             temperature=2.0)
    ref.backward()
    tol_loss, tol_grad = TOLERANCES[torch.bfloat16]
    assert_close(eager, ref, tol_loss, "loss vs reference on bfloat16 inputs")
    for name, e, r in zip(("hidden", "weight", "bias"), eager_grads, ref_in):
        assert_close(e, r.grad, tol_grad, f"grad of student_{name} vs reference on bfloat16 inputs")


@pytest.mark.parametrize("grad_in_forward", [True, False])
def test_double_backward_is_a_clear_error(grad_in_forward, device):
    hs, ws, bs, ht, wt, bt, target = make_heads(6, 8, 5, 30, dtype=torch.float64, device=device)
    h, w = hs.clone().requires_grad_(), ws.clone().requires_grad_()
    loss = objx.linear_distill_loss(h, w, ht, wt, target, method="jsd", grad_in_forward=grad_in_forward)
    with pytest.raises(RuntimeError, match=r"objx\.linear_distill_loss: double backward .*not supported"):
        grad_h, grad_w = torch.autograd.grad(loss, (h, w), create_graph=True)
        torch.autograd.grad(grad_h.pow(2).sum() + grad_w.pow(2).sum(), (h, w))


def test_function_transforms_and_non_floating_arguments_are_named(device):
    hs, ws, bs, ht, wt, bt, target = make_heads(5, 8, 6, 30, device=device)
    with pytest.raises(RuntimeError, match=r"objx\.linear_distill_loss: torch\.func's differentiating transforms .*not supported"):
        torch.func.grad(lambda h: objx.linear_distill_loss(h, ws, ht, wt, target))(hs)
    for kw, name in ((dict(hs=hs.long()), "student_hidden"), (dict(ws=ws.int()), "student_weight"),
                     (dict(ht=ht.long()), "teacher_hidden"), (dict(wt=wt.long()), "teacher_weight")):
        a = {"hs": hs, "ws": ws, "ht": ht, "wt": wt, **kw}
        with pytest.raises(TypeError, match=rf"objx\.linear_distill_loss: {name} must be .*float.*, got torch\.int"):
            objx.linear_distill_loss(a["hs"], a["ws"], a["ht"], a["wt"], target)
