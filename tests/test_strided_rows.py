"""Logits whose leading dims do not flatten (a slice such as logits[:, :-1], a transpose) are read in
place by the logits ops (SPEC §0): the values and gradients are the reference's on the same rows,
and the forward does not copy the logits."""

import os
import subprocess
import sys

import pytest
import torch

import objx
from helpers import TOLERANCES, assert_close
from test_causal_shift import sequences


def views(x):
    """Views of x [B, T, V] whose leading dims do not flatten into one."""
    return {"sliced": x[:, :-1], "strided": x[:, 1::2], "transposed": x.transpose(0, 1)}


def labels_for(labels, name):
    """The labels of views(logits)[name]'s rows, each position scored against the one before it."""
    return {"sliced": labels[:, 1:], "strided": labels[:, 0:-1:2], "transposed": labels.transpose(0, 1)}[name]


@pytest.mark.parametrize("view", ["sliced", "strided", "transposed"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", [dict(), dict(objective="-p^10", z_loss=1e-3),
                                  dict(label_smoothing=0.1, softcap=20.0)],
                         ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "nll")
def test_prob_loss_reads_views_in_place(device, view, dtype, case):
    logits, labels = sequences(3, 17, 500, device, dtype)
    logits.requires_grad_()
    x = views(logits)[view]
    copy = x.detach().contiguous()
    y = labels_for(labels, view).contiguous()
    y[1, 2] = -100
    loss = objx.prob_loss(x, y, reduction="sum", **case)
    leaf = copy.double().requires_grad_()
    ref = objx.reference.prob_loss(leaf, y, reduction="sum", **case)
    loss_tol, grad_tol = TOLERANCES[dtype]
    assert_close(loss, ref, loss_tol, "loss")
    grad, = torch.autograd.grad(loss, logits)
    expected, = torch.autograd.grad(ref, leaf)
    assert_close(views(grad)[view], expected, grad_tol, "grad")
    outside = {"sliced": grad[:, -1], "strided": grad[:, ::2], "transposed": grad[:0]}[view]
    assert torch.all(outside == 0)


@pytest.mark.parametrize("method", ["ttm", "jsd", "kd"])
def test_distill_reads_views_in_place(device, method):
    student, labels = sequences(2, 9, 300, device)
    teacher, _ = sequences(2, 9, 300, device)
    student.requires_grad_()
    loss = objx.distill_loss(student[:, 1:], teacher[:, :-1], labels[:, 1:], method=method)
    leaf = student.detach()[:, 1:].contiguous().double().requires_grad_()
    ref = objx.reference.distill_loss(leaf, teacher[:, :-1].contiguous().double(), labels[:, 1:], method=method)
    loss_tol, grad_tol = TOLERANCES[torch.float32]
    assert_close(loss, ref, loss_tol, "loss")
    grad, = torch.autograd.grad(loss, student)
    expected, = torch.autograd.grad(ref, leaf)
    assert_close(grad[:, 1:], expected, grad_tol, "grad")
    assert torch.all(grad[:, 0] == 0)


@pytest.mark.parametrize("kind", ["kl", "js", "hellinger"])
def test_vocab_divergence_reads_views_in_place(device, kind):
    policy, _ = sequences(2, 9, 300, device)
    ref, _ = sequences(2, 9, 300, device)
    policy.requires_grad_()
    div = objx.vocab_divergence(policy[:, :-1], ref[:, :-1], kind)
    leaf = policy.detach()[:, :-1].contiguous().double().requires_grad_()
    expected = objx.reference.vocab_divergence(leaf, ref[:, :-1].contiguous().double(), kind)
    loss_tol, grad_tol = TOLERANCES[torch.float32]
    assert_close(div, expected, loss_tol, "divergence")
    up = torch.rand_like(div)
    grad, = torch.autograd.grad((div * up).sum(), policy)
    want, = torch.autograd.grad((expected * up.double()).sum(), leaf)
    assert_close(grad[:, :-1], want, grad_tol, "grad")


def test_ops_take_three_dims(device):
    """The ops themselves take [B, T, V] (rows b * T + t) and refuse other ranks by name."""
    logits, labels = sequences(2, 5, 64, device)
    x = logits[:, :-1]
    y = labels[:, 1:].reshape(-1)
    args = ("nll", 1.0, None, None, -100, 0.0, 0.0, None)
    three = torch.ops.objx.prob_loss_forward(x, y, *args)
    two = torch.ops.objx.prob_loss_forward(x.reshape(-1, 64), y, *args)
    for a, b in zip(three, two):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="target must be 1-D with N = 8"):
        torch.ops.objx.prob_loss_forward(x, y[:-1], *args)
    with pytest.raises(ValueError, match=r"logits must be \[N, V\] or \[B, T, V\]"):
        torch.ops.objx.prob_loss_forward(logits[None], y, *args)


def test_compiled_sliced_call(device):
    logits, labels = sequences(2, 9, 300, device)
    fn = torch.compile(lambda z, y: objx.prob_loss(z[:, :-1], y[:, 1:]), fullgraph=True)
    expected = objx.reference.prob_loss(logits[:, :-1].double(), labels[:, 1:])
    assert_close(fn(logits, labels), expected, TOLERANCES[torch.float32][0], "compiled sliced call")


# In a fresh process: on CPU the peak is the process's resident set, which pages an earlier test
# freed but the allocator kept would hide.
_PEAK_SCRIPT = """
import sys, torch, objx
from objx.tools.memory import peak_extra_bytes
device = torch.device(sys.argv[1])
logits = torch.randn(4, 257, 16384, device=device).requires_grad_()
labels = torch.randint(0, 16384, (4, 257), device=device)
print(peak_extra_bytes(lambda: objx.prob_loss(logits[:, :-1], labels[:, 1:]), device) / (logits.numel() * 4))
"""


def test_sliced_forward_does_not_copy(device):
    out = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, device], capture_output=True, text=True, check=True,
                         env=os.environ)
    peak = float(out.stdout.split()[-1])
    assert peak < 0.25, f"forward of prob_loss(logits[:, :-1], ...): peak {peak:.2f} x the logits"
