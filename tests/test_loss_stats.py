"""return_stats (SPEC §1.2): objx.LossStats from the forward's own pass, against the float64 reference
and torch.argmax, on logits and fused with the LM head."""

import pytest
import torch

import objx
from helpers import TOLERANCES, assert_close, make_logits
from test_linear_prob_loss import make_head


def check_stats(stats, expected, dtype, what):
    loss_tol = TOLERANCES[dtype][0]
    assert isinstance(stats, objx.LossStats)
    assert stats.token_prob.dtype == torch.float32 and stats.lse.dtype == torch.float32
    assert stats.correct.dtype == torch.bool
    assert stats.token_prob.shape == expected.token_prob.shape
    assert_close(stats.token_prob, expected.token_prob, loss_tol, f"token_prob {what}")
    assert_close(stats.lse, expected.lse, loss_tol, f"lse {what}")
    assert_close(stats.z_loss, expected.z_loss, loss_tol, f"z_loss {what}")
    assert torch.equal(stats.correct.cpu(), expected.correct.cpu()), f"correct {what}"


def with_ties(logits, target):
    """Rows whose target's logit is tied with an earlier column (argmax is that column: not correct)
    and with a later one (argmax is the target: correct), plus rows where the target is the max."""
    z = logits.clone()
    vocab = z.shape[1]
    for r, other in ((0, 3), (1, vocab - 2), (2, 0)):
        t = (max(int(target[r]), 4), min(int(target[r]), vocab - 3), vocab - 1)[r]
        target[r] = t
        top = z[r].max() + 1
        z[r, t] = top
        z[r, other] = top if other != t else z[r, other]
    target[3] = int(z[3].argmax())
    return z, target


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", [dict(), dict(z_loss=1e-2, softcap=20.0), dict(objective="-p", z_loss=1e-3),
                                  dict(objective="nll", label_smoothing=0.1, z_loss=1e-3, weighted=True)],
                         ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "plain")
def test_prob_loss_stats(device, dtype, reduction, case):
    case = dict(case)
    logits, target = make_logits(64, 5000, dtype=dtype, device=device)
    logits, target = with_ties(logits, target)
    target[10] = -100
    weight = (torch.rand(5000, device=device) + 0.5) if case.pop("weighted", False) else None
    loss, stats = objx.prob_loss(logits, target, reduction=reduction, weight=weight, return_stats=True, **case)
    ref_loss, expected = objx.reference.prob_loss(logits, target, reduction=reduction, weight=weight,
                                                  return_stats=True, **case)
    assert_close(loss, ref_loss, TOLERANCES[dtype][0], "loss")
    check_stats(stats, expected, dtype, f"{case} {reduction}")
    assert not stats.correct[10] and stats.token_prob[10] == 0 and stats.lse[10] == 0
    # the ties: column 3 < target on row 0, the last column-but-one > target on row 1, column 0 on row 2
    assert stats.correct[:4].tolist() == [False, True, False, True]


def test_correct_is_first_argmax(device):
    logits, target = make_logits(200, 777, device=device)
    logits[:, 5] = logits.max(-1).values  # a tie with the max on every row, at an early column
    target[::2] = logits[::2].argmax(-1)
    target[1::4] = 5
    _, stats = objx.prob_loss(logits, target, reduction="none", return_stats=True)
    assert torch.equal(stats.correct, logits.argmax(-1) == target)


def test_token_prob_and_stats_together(device):
    logits, target = make_logits(16, 300, device=device)
    loss, token_prob, stats = objx.prob_loss(logits, target, return_token_prob=True, return_stats=True)
    assert torch.equal(token_prob, stats.token_prob)
    assert_close(loss, objx.prob_loss(logits, target), 0.0, "loss")


def test_z_loss_part(device):
    """z_loss is the part of the loss the z-loss term adds."""
    logits, target = make_logits(32, 400, device=device)
    target[0] = -100
    for reduction in ("mean", "sum", "none"):
        loss, stats = objx.prob_loss(logits, target, z_loss=1e-2, reduction=reduction, return_stats=True)
        plain = objx.prob_loss(logits, target, reduction=reduction)
        assert_close(stats.z_loss, loss - plain, 1e-4, reduction)


@pytest.mark.parametrize("grad_in_forward", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_linear_stats(device, dtype, grad_in_forward):
    hidden, head, target, bias = make_head(48, 32, 1100, dtype=dtype, device=device, bias=True)
    # exact ties in the logits: duplicated head rows on both sides of a target, across tiles
    target[0], target[1] = 700, 300
    head[100] = head[700]
    head[1000] = head[300]
    bias[100], bias[1000] = bias[700], bias[300]
    hidden[0] = head[700] * 40
    hidden[1] = head[300] * 40
    target[9] = -100
    h = hidden.clone().requires_grad_()
    loss, stats = objx.linear_prob_loss(h, head, target, bias, z_loss=1e-3, tile_size=256, return_stats=True,
                                        grad_in_forward=grad_in_forward)
    loss.backward()
    logits = hidden.double() @ head.double().T + bias.double()
    ref_loss, expected = objx.reference.prob_loss(logits.to(dtype) if dtype == torch.float32 else logits, target,
                                                  z_loss=1e-3, return_stats=True)
    check_stats(stats, expected, dtype, "linear")
    assert stats.correct[0].item() is False and stats.correct[1].item() is True
    assert not stats.correct[9]


def test_modules_and_compile(device):
    logits, target = make_logits(12, 300, device=device)
    module = objx.ProbLoss(return_stats=True, z_loss=1e-3)
    expected = objx.reference.prob_loss(logits, target, return_stats=True, z_loss=1e-3)[1]
    for fn in (module, torch.compile(module, fullgraph=True)):
        loss, stats = fn(logits, target)
        check_stats(stats, expected, torch.float32, "ProbLoss")
    hidden, head, target, _ = make_head(10, 8, 200, device=device)
    linear = objx.LinearProbLoss(return_stats=True, tile_size=64)
    expected = objx.reference.linear_prob_loss(hidden, head, target, return_stats=True)[1]
    for fn in (linear, torch.compile(linear, fullgraph=True)):
        loss, stats = fn(hidden, head, target)
        check_stats(stats, expected, torch.float32, "LinearProbLoss")
