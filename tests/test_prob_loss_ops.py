"""The custom ops as torch sees them: opcheck, gradcheck, torch.compile."""

import pytest
import torch

import objx
from helpers import make_logits

CASES = [
    dict(objective="nll", objective_param=0.0, min_prob=None, max_prob=None, label_smoothing=0.1,
         z_loss=1e-3, softcap=None),
    dict(objective="power", objective_param=10.0, min_prob=0.01, max_prob=None, label_smoothing=0.0,
         z_loss=0.0, softcap=20.0),
    dict(objective="log1m", objective_param=1e-3, min_prob=None, max_prob=0.95, label_smoothing=0.0,
         z_loss=0.0, softcap=None),
]


def op_args(logits, target, case):
    return (logits, target, case["objective"], case["objective_param"], case["min_prob"],
            case["max_prob"], -100, case["label_smoothing"], case["z_loss"], case["softcap"])


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["objective"])
def test_opcheck_forward(device, case):
    logits, target = make_logits(16, 257, device=device)
    target[2] = -100
    torch.library.opcheck(torch.ops.objx.prob_loss_forward,
                          op_args(logits.requires_grad_(), target, case))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["objective"])
def test_opcheck_backward(device, case):
    logits, target = make_logits(16, 257, device=device)
    loss, lse, prob, counted, _correct = torch.ops.objx.prob_loss_forward(*op_args(logits, target, case))
    grad = torch.rand_like(loss)
    torch.library.opcheck(torch.ops.objx.prob_loss_backward,
                          (grad, logits, target, lse, prob, counted, case["objective"],
                           case["objective_param"], -100, case["label_smoothing"], case["z_loss"],
                           case["softcap"]))


@pytest.mark.parametrize("objective", ["nll", "-p", "-p^10", "log1m", "-log p·1[p≥0.2]"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradcheck_float64(device, objective, reduction):
    logits, target = make_logits(6, 37, dtype=torch.float64, device=device, scale=1.0)
    target[1] = -100
    logits.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x: objx.prob_loss(x, target, objective, reduction=reduction, z_loss=1e-2, softcap=8.0),
        (logits,))


def test_compile_fullgraph(device):
    module = objx.ProbLoss("-p", z_loss=1e-4)
    compiled = torch.compile(module, fullgraph=True)
    for rows in (8, 12):  # a second shape exercises a recompile / dynamic shapes
        logits, target = make_logits(rows, 301, device=device)
        a = logits.clone().requires_grad_()
        b = logits.clone().requires_grad_()
        compiled(a, target).backward()
        module(b, target).backward()
        assert torch.allclose(a.grad, b.grad, rtol=0, atol=0)


def test_compile_fullgraph_token_prob(device):
    fn = torch.compile(lambda x, y: objx.prob_loss(x, y, "nll", min_prob=0.1, return_token_prob=True),
                       fullgraph=True)
    logits, target = make_logits(8, 64, device=device)
    loss, prob = fn(logits, target)
    ref_loss, ref_prob = objx.prob_loss(logits, target, "nll", min_prob=0.1, return_token_prob=True)
    # the compiled graph may sum the rows in another order: equal up to float32 rounding
    assert torch.allclose(loss, ref_loss, rtol=1e-6, atol=0)
    assert torch.allclose(prob, ref_prob, rtol=1e-6, atol=0)
