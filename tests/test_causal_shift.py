"""shift=True (causal shift without a copy): equal to the sliced call logits[:, :-1] with labels[:, 1:],
per-row outputs aligned to the input positions (0 at the last one), and no copy of the logits."""

import os
import subprocess
import sys

import pytest
import torch

import objx
from helpers import TOLERANCES, assert_close, make_logits
from objx.tools.memory import peak_extra_bytes
from test_linear_prob_loss import make_head


def sequences(batch, steps, vocab, device, dtype=torch.float32):
    logits, labels = make_logits(batch * steps, vocab, dtype=dtype, device=device)
    return logits.reshape(batch, steps, vocab), labels.reshape(batch, steps)


def leaf(t):
    return t.detach().clone().requires_grad_()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("case", [dict(), dict(objective="-p^10", z_loss=1e-3),
                                  dict(label_smoothing=0.1, softcap=20.0)],
                         ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "nll")
def test_prob_loss_equals_sliced(device, reduction, case):
    logits, labels = sequences(3, 17, 500, device)
    labels[1, 5] = -100
    shifted, sliced = leaf(logits), leaf(logits)
    ours = objx.prob_loss(shifted, labels, reduction=reduction, shift=True, **case)
    ref = objx.prob_loss(sliced[:, :-1], labels[:, 1:], reduction=reduction, **case)
    loss_tol, grad_tol = TOLERANCES[torch.float32]
    if reduction == "none":
        assert ours.shape == labels.shape and torch.all(ours[:, -1] == 0)
        assert_close(ours[:, :-1], ref, loss_tol, "rows")
        up = torch.rand_like(ours)
        (ours * up).sum().backward()
        (ref * up[:, :-1]).sum().backward()
    else:
        assert_close(ours, ref, loss_tol, "loss")
        ours.backward()
        ref.backward()
    assert torch.all(shifted.grad[:, -1] == 0)
    assert_close(shifted.grad, sliced.grad, grad_tol, "grad")


def test_stats_and_weights_with_shift(device):
    logits, labels = sequences(2, 9, 300, device)
    weight = torch.rand(300, device=device) + 0.5
    loss, stats = objx.prob_loss(logits, labels, weight=weight, z_loss=1e-3, shift=True, return_stats=True)
    ref, ref_stats = objx.prob_loss(logits[:, :-1], labels[:, 1:], weight=weight, z_loss=1e-3, return_stats=True)
    assert_close(loss, ref, TOLERANCES[torch.float32][0], "loss")
    assert_close(stats.z_loss, ref_stats.z_loss, TOLERANCES[torch.float32][0], "z_loss")
    assert torch.equal(stats.correct[:, :-1], ref_stats.correct) and not stats.correct[:, -1].any()
    assert torch.equal(stats.token_prob[:, :-1], ref_stats.token_prob) and torch.all(stats.token_prob[:, -1] == 0)


def test_token_logprobs(device):
    logits, labels = sequences(2, 11, 400, device)
    ours = objx.token_logprobs(logits, labels, shift=True)
    ref = objx.token_logprobs(logits[:, :-1], labels[:, 1:])
    assert ours.shape == labels.shape and torch.all(ours[:, -1] == 0)
    assert_close(ours[:, :-1], ref, TOLERANCES[torch.float32][0], "token_logprobs")


@pytest.mark.parametrize("grad_in_forward", [False, True])
def test_linear_equals_sliced(device, grad_in_forward):
    hidden, head, labels, _ = make_head(3 * 13, 16, 700, device=device)
    hidden, labels = hidden.reshape(3, 13, 16), labels.reshape(3, 13)
    shifted, sliced = leaf(hidden), leaf(hidden)
    ours = objx.linear_prob_loss(shifted, head, labels, shift=True, tile_size=256, grad_in_forward=grad_in_forward)
    ref = objx.linear_prob_loss(sliced[:, :-1], head, labels[:, 1:], tile_size=256, grad_in_forward=grad_in_forward)
    ours.backward()
    ref.backward()
    loss_tol, grad_tol = TOLERANCES[torch.float32]
    assert_close(ours, ref, loss_tol, "loss")
    assert torch.all(shifted.grad[:, -1] == 0)
    assert_close(shifted.grad, sliced.grad, grad_tol, "grad_hidden")
    rows = objx.linear_token_logprobs(hidden, head, labels, shift=True, tile_size=256)
    ref_rows = objx.linear_token_logprobs(hidden[:, :-1], head, labels[:, 1:], tile_size=256)
    assert torch.all(rows[:, -1] == 0)
    assert_close(rows[:, :-1], ref_rows, loss_tol, "linear_token_logprobs")


def test_distill_equals_sliced(device):
    student, labels = sequences(2, 10, 300, device)
    teacher, _ = sequences(2, 10, 300, device)
    ours = objx.distill_loss(student, teacher, labels, method="jsd", shift=True)
    ref = objx.distill_loss(student[:, :-1], teacher[:, :-1], labels[:, 1:], method="jsd")
    assert_close(ours, ref, TOLERANCES[torch.float32][0], "distill_loss")
    with pytest.raises(ValueError, match="objx.distill_loss: shift=True needs target"):
        objx.distill_loss(student, teacher, None, hard_weight=0.0, shift=True)
    hs, ws, _, _ = make_head(2 * 10, 16, 300, device=device)
    ht, wt, _, _ = make_head(2 * 10, 8, 300, device=device)
    hs, ht = hs.reshape(2, 10, 16), ht.reshape(2, 10, 8)
    ours = objx.linear_distill_loss(hs, ws, ht, wt, labels, shift=True)
    ref = objx.linear_distill_loss(hs[:, :-1], ws, ht[:, :-1], wt, labels[:, 1:])
    assert_close(ours, ref, TOLERANCES[torch.float32][0], "linear_distill_loss")


# Run in a fresh process: on CPU the peak is the process's resident set, which pages an earlier
# test freed but the allocator kept would hide.
_PEAK_SCRIPT = """
import sys, torch, objx
from objx.tools.memory import peak_extra_bytes
mode, device = sys.argv[1], torch.device(sys.argv[2])
logits = torch.randn(4, 257, 16384, device=device).requires_grad_()
labels = torch.randint(0, 16384, (4, 257), device=device)
call = {"shift": lambda: objx.prob_loss(logits, labels, shift=True),
        "sliced": lambda: objx.prob_loss(logits[:, :-1], labels[:, 1:])}[mode]
print(peak_extra_bytes(lambda: call().backward(), device) / (logits.numel() * 4))
"""


def peak_over_logits(mode: str, device: str) -> float:
    out = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, mode, device], capture_output=True, text=True,
                         check=True, env=os.environ)
    return float(out.stdout.split()[-1])


def test_shift_does_not_copy_the_logits(device):
    """Forward and backward of shift=True hold the gradient and little else; the sliced call's
    backward pads the gradient of logits[:, :-1] into another buffer (torch's slice backward)."""
    shift, sliced = peak_over_logits("shift", device), peak_over_logits("sliced", device)
    assert 0.9 < shift < 1.25, f"shift=True: peak {shift:.2f} x the logits"
    assert sliced > 1.75, f"sliced call: peak {sliced:.2f} x the logits (the measurement must see the copy)"


def test_module_and_compile(device):
    logits, labels = sequences(2, 9, 300, device)
    module = objx.ProbLoss(shift=True, z_loss=1e-3)
    expected = objx.prob_loss(logits[:, :-1], labels[:, 1:], z_loss=1e-3)
    for fn in (module, torch.compile(module, fullgraph=True)):
        assert_close(fn(logits, labels), expected, TOLERANCES[torch.float32][0], "ProbLoss(shift=True)")
