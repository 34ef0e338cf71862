"""distill_loss (SPEC §2) against the float64 reference, its identities, and its errors."""

import math

import pytest
import torch

import objx
from helpers import TOLERANCES, assert_close, separate_ties

METHODS = ["ttm", "wttm", "kd", "forward_kl", "reverse_kl", "jsd", "tvd"]


def make_pair(rows, vocab, *, dtype=torch.float32, device="cpu", scale=2.0):
    """Student and teacher logits that agree in part (as after some training), with targets."""
    g = torch.Generator().manual_seed(torch.seed() % 2**31)
    teacher = torch.randn(rows, vocab, dtype=torch.float64, generator=g) * scale
    student = 0.6 * teacher + torch.randn(rows, vocab, dtype=torch.float64, generator=g) * scale * 0.8
    target = teacher.argmax(-1)
    flip = torch.rand(rows, generator=g) < 0.3
    target[flip] = torch.randint(0, vocab, (int(flip.sum()),), generator=g)
    conv = lambda t: t.to(dtype).to(device)  # noqa: E731
    return conv(student), conv(teacher), target.to(device)


def check(student, teacher, target, reduction="mean", **kw):
    loss_tol, grad_tol = TOLERANCES[student.dtype]
    if kw.get("method") == "tvd" and student.dtype != torch.float64:
        student = separate_ties(student, teacher, temperature=kw.get("temperature", 1.0))
    a = student.detach().clone().requires_grad_()
    b = student.detach().double().cpu().requires_grad_()
    ours = objx.distill_loss(a, teacher, target, reduction=reduction, **kw)
    ref = objx.reference.distill_loss(b, teacher.double().cpu(), None if target is None else target.cpu(),
                                      reduction=reduction, **kw)
    assert_close(ours, ref, loss_tol, f"loss {kw}")
    up = torch.rand(ref.shape, dtype=torch.float64) + 0.5
    (ours * up.to(ours)).sum().backward()
    (ref * up).sum().backward()
    assert a.grad.dtype == student.dtype
    assert_close(a.grad, b.grad, grad_tol, f"grad {kw}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("temperature", [1.0, 4.0])
@pytest.mark.parametrize("method", METHODS)
def test_matches_reference(device, method, temperature, dtype):
    student, teacher, target = make_pair(24, 1500, dtype=dtype, device=device)
    target[3] = -100
    check(student, teacher, target, method=method, temperature=temperature, hard_weight=0.5, soft_weight=2.0)


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_jsd_betas(device, beta):
    student, teacher, target = make_pair(16, 700, device=device)
    check(student, teacher, None, method="jsd", beta=beta, temperature=2.0, hard_weight=0.0)


def test_jsd_beta_ends_are_forward_and_reverse_kl(device):
    student, teacher, _ = make_pair(8, 300, dtype=torch.float64, device=device)
    kw = dict(temperature=3.0, hard_weight=0.0, reduction="none")
    jsd0 = objx.distill_loss(student, teacher, method="jsd", beta=0.0, **kw)
    jsd1 = objx.distill_loss(student, teacher, method="jsd", beta=1.0, **kw)
    assert torch.equal(jsd0, objx.distill_loss(student, teacher, method="forward_kl", **kw))
    assert torch.equal(jsd1, objx.distill_loss(student, teacher, method="reverse_kl", **kw))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_reductions_and_no_target(device, reduction):
    student, teacher, target = make_pair(20, 400, device=device)
    target[::5] = -100
    check(student, teacher, target, reduction=reduction, method="wttm", temperature=2.0, soft_weight=2.0)
    check(student, teacher, None, reduction=reduction, method="tvd", hard_weight=0.0)


def test_ttm_at_temperature_one_is_forward_kl(device):
    student, teacher, _ = make_pair(10, 500, dtype=torch.float64, device=device)
    kw = dict(temperature=1.0, hard_weight=0.0, reduction="none")
    assert_close(objx.distill_loss(student, teacher, method="ttm", **kw),
                 objx.distill_loss(student, teacher, method="forward_kl", **kw), 1e-12, "ttm(T=1) = forward_kl")


def test_renyi_identity(device):
    # SPEC §2: KL(p̂‖q) = T·KL(p̂‖q_T) − (T−1)·H_{1/T}(q) + (T−1)·H(p̂), per row.
    student, teacher, _ = make_pair(6, 400, dtype=torch.float64, device=device)
    T = 3.0
    kw = dict(hard_weight=0.0, reduction="none", temperature=T)
    ttm = objx.distill_loss(student, teacher, method="ttm", **kw)
    kl_t = objx.distill_loss(student, teacher, method="forward_kl", **kw)
    q = torch.softmax(student.double(), -1)
    p_hat = torch.softmax(teacher.double() / T, -1)
    alpha = 1.0 / T
    renyi = torch.log((q ** alpha).sum(-1)) / (1 - alpha)
    shannon = -(p_hat * torch.log(p_hat)).sum(-1)
    assert_close(ttm, T * kl_t - (T - 1) * renyi + (T - 1) * shannon, 1e-10, "Rényi identity")


@pytest.mark.parametrize("temperature", [1.0, 2.0, 10.0])
def test_wttm_weight_range(device, temperature):
    student, teacher, target = make_pair(32, 256, dtype=torch.float64, device=device, scale=4.0)
    _, terms = objx.distill_loss(student, teacher, target, method="wttm", temperature=temperature,
                                 reduction="none", return_terms=True)
    upper = 256 ** (1 - 1 / temperature)
    assert (terms["U"] >= 1 - 1e-12).all() and (terms["U"] <= upper * (1 + 1e-12)).all()
    expected = torch.exp(torch.logsumexp(teacher / temperature, -1) - torch.logsumexp(teacher, -1) / temperature)
    assert_close(terms["U"], expected, 1e-12, "U")
    assert_close(terms["soft"] * 1.0 + terms["hard"], objx.distill_loss(
        student, teacher, target, method="wttm", temperature=temperature, reduction="none"), 1e-12, "terms")


def test_equal_distributions_give_zero(device):
    _, teacher, _ = make_pair(5, 100, dtype=torch.float64, device=device)
    for method in ["kd", "forward_kl", "reverse_kl", "jsd", "tvd"]:
        loss = objx.distill_loss(teacher.clone(), teacher, method=method, temperature=2.0, hard_weight=0.0)
        assert abs(loss.item()) < 1e-12, method


def sharp_pair(rows, vocab, depth, *, top=30):
    """Teacher and student logits with `top` competitive entries per row (the student's near the
    teacher's) and every other entry `depth` to 1.6 `depth` nats below them: with depth near the
    exponent range, most probabilities are subnormal or exactly 0."""
    g = torch.Generator().manual_seed(torch.seed() % 2**31)
    def logits():
        return -depth * (1 + 0.6 * torch.rand(rows, vocab, dtype=torch.float64, generator=g))
    teacher, student = logits(), logits()
    cols = torch.stack([torch.randperm(vocab, generator=g)[:top] for _ in range(rows)])
    head = torch.randn(rows, top, dtype=torch.float64, generator=g) * 2
    teacher.scatter_(1, cols, head)
    student.scatter_(1, cols, head + torch.randn(rows, top, dtype=torch.float64, generator=g))
    return student, teacher


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_jsd_where_both_probabilities_underflow(device, dtype, beta):
    """Most entries' p and q below the smallest normal number or exactly 0, where the kernels take
    the mixture m = beta p + (1 - beta) q in log space: loss and gradients still match the float64
    reference."""
    student, teacher = sharp_pair(8, 600, 170.0 if dtype == torch.float32 else 1400.0)
    for x in (teacher, student):
        assert (torch.softmax(x / 2.0, -1) < torch.finfo(dtype).tiny).float().mean() > 0.9  # the regime tested
    check(student.to(dtype).to(device), teacher.to(dtype).to(device), None, method="jsd", beta=beta,
          temperature=2.0, hard_weight=0.0)


def test_teacher_gets_no_gradient(device):
    student, teacher, target = make_pair(4, 50, device=device)
    s = student.clone().requires_grad_()
    t = teacher.clone().requires_grad_()
    objx.distill_loss(s, t, target, method="kd", temperature=2.0).backward()
    assert t.grad is None and s.grad is not None


def test_masked_entries_and_leading_dims(device):
    student, teacher, target = make_pair(12, 200, device=device)
    mask = torch.rand(12, 200, device=device) < 0.3
    mask[torch.arange(12), target] = False
    teacher = teacher.masked_fill(mask, float("-inf"))
    for method in ["ttm", "forward_kl", "jsd", "tvd"]:
        check(student.view(3, 4, 200), teacher.view(3, 4, 200), target.view(3, 4), method=method, temperature=2.0)


def test_gradcheck(device):
    student, teacher, target = make_pair(4, 9, dtype=torch.float64, device=device)
    target[1] = -100
    for method in METHODS:
        s = student.clone().requires_grad_()
        assert torch.autograd.gradcheck(
            lambda x: objx.distill_loss(x, teacher, target, method=method, temperature=2.0, beta=0.3,
                                        reduction="none"), (s,)), method


@pytest.mark.parametrize("has_target", [True, False])
def test_opcheck(device, has_target):
    student, teacher, target = make_pair(6, 40, device=device)
    args = (student.requires_grad_(), teacher, target if has_target else None, "jsd", 2.0, 0.3,
            0.5 if has_target else 0.0, 1.0, -100)
    torch.library.opcheck(torch.ops.objx.distill_forward, args)
    loss, soft, hard, stats, counted = torch.ops.objx.distill_forward(*args)
    torch.library.opcheck(torch.ops.objx.distill_backward,
                          (torch.rand_like(loss), student.detach(), teacher, args[2], stats, counted, *args[3:]))


def test_compile_fullgraph(device):
    module = objx.DistillLoss("wttm", temperature=2.0, soft_weight=2.0)
    compiled = torch.compile(module, fullgraph=True)
    student, teacher, target = make_pair(8, 64, device=device)
    a, b = student.clone().requires_grad_(), student.clone().requires_grad_()
    compiled(a, teacher, target).backward()
    module(b, teacher, target).backward()
    assert torch.allclose(a.grad, b.grad, rtol=1e-6, atol=0)


def test_same_bits_on_two_runs(device):
    student, teacher, target = make_pair(33, 3001, device=device)
    runs = []
    for _ in range(2):
        s = student.clone().requires_grad_()
        loss = objx.distill_loss(s, teacher, target, method="jsd", temperature=2.0)
        loss.backward()
        runs.append((loss, s.grad))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


def test_bad_inputs(device):
    student, teacher, target = make_pair(4, 10, device=device)
    cases = [
        (dict(teacher_logits=teacher[:, :9]), ValueError, "vocabulary mismatch"),
        (dict(temperature=0.0), ValueError, "temperature must be"),
        (dict(temperature=-1.0), ValueError, "temperature must be"),
        (dict(beta=1.5, method="jsd"), ValueError, r"beta must be in \[0, 1\]"),
        (dict(target=None), ValueError, "hard_weight is 1 but no target"),
        (dict(method="skl"), ValueError, "method must be one of"),
        (dict(teacher_logits=teacher.double()), TypeError, "teacher_logits is"),
        (dict(target=target.int()), TypeError, "target must be int64"),
    ]
    for change, exc, match in cases:
        kw = dict(student_logits=student, teacher_logits=teacher, target=target)
        kw.update(change)
        with pytest.raises(exc, match=match):
            objx.distill_loss(**kw)
    bad = target.clone()
    bad[2] = 10
    with pytest.raises(IndexError, match=r"target\[2\] = 10 is outside \[0, 10\)"):
        objx.distill_loss(student, teacher, bad)
    assert math.isfinite(objx.distill_loss(student, teacher, target).item())
