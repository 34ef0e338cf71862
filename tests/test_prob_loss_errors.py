"""Bad input gets a clear error naming the argument, on every device; nothing crashes."""

import pytest
import torch

import objx
from helpers import make_logits


def raises(exc, match, fn):
    with pytest.raises(exc, match=match):
        fn()


def test_out_of_range_target(device):
    logits, target = make_logits(5, 10, device=device)
    for bad in (10, -1, -101):
        t = target.clone()
        t[3] = bad
        raises(IndexError, rf"target\[3\] = {bad} is outside \[0, 10\)", lambda: objx.prob_loss(logits, t))
    # the process and the device are still usable afterwards
    assert torch.isfinite(objx.prob_loss(logits, target))


def test_custom_ignore_index(device):
    logits, target = make_logits(5, 10, device=device)
    target[0] = -1
    raises(IndexError, "ignore_index", lambda: objx.prob_loss(logits, target))
    assert torch.isfinite(objx.prob_loss(logits, target, ignore_index=-1))


def test_counted_all_minus_inf_row(device):
    logits, target = make_logits(3, 10, device=device)
    logits[1] = float("-inf")
    raises(ValueError, "row 1 is -inf everywhere", lambda: objx.prob_loss(logits, target))


def test_shapes(device):
    logits, target = make_logits(5, 10, device=device)
    raises(ValueError, "target must have shape", lambda: objx.prob_loss(logits, target[:4]))
    raises(ValueError, "logits must be", lambda: objx.prob_loss(logits[0], target[0]))
    raises(ValueError, r"logits must be \[N, V\] or \[B, T, V\]", lambda: torch.ops.objx.prob_loss_forward(
        logits[None, None], target, "nll", 0.0, None, None, -100, 0.0, 0.0, None))
    raises(ValueError, r"logits must be \[N, V\] or \[B, T, V\]", lambda: torch.ops.objx.prob_loss_forward(
        logits[0], target, "nll", 0.0, None, None, -100, 0.0, 0.0, None))
    raises(ValueError, "target must be 1-D", lambda: torch.ops.objx.prob_loss_forward(
        logits, target[:3], "nll", 0.0, None, None, -100, 0.0, 0.0, None))
    raises(ValueError, "empty vocabulary", lambda: objx.prob_loss(logits[:, :0], target))


def test_dtypes(device):
    logits, target = make_logits(5, 10, device=device)
    raises(TypeError, "target must be int64", lambda: objx.prob_loss(logits, target.int()))
    raises(TypeError, "logits must be float", lambda: objx.prob_loss(logits.long(), target))
    raises(TypeError, "logits must be a torch.Tensor", lambda: objx.prob_loss([1.0], target))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device to mix devices")
def test_devices():
    logits, target = make_logits(5, 10, device="cuda")
    raises(ValueError, "target is on cpu but logits is on cuda", lambda: objx.prob_loss(logits, target.cpu()))


def test_options(device):
    logits, target = make_logits(5, 10, device=device)
    raises(ValueError, "reduction must be one of", lambda: objx.prob_loss(logits, target, reduction="avg"))
    raises(ValueError, "cannot parse objective", lambda: objx.prob_loss(logits, target, "focal"))
    raises(ValueError, "label_smoothing is only defined for objective 'nll'",
           lambda: objx.prob_loss(logits, target, "-p", label_smoothing=0.1))
    raises(ValueError, "label_smoothing must be in", lambda: objx.prob_loss(logits, target, label_smoothing=2.0))
    raises(ValueError, "alpha must be", lambda: objx.prob_loss(logits, target, "power", alpha=-1.0))
    raises(ValueError, "min_prob must be in", lambda: objx.prob_loss(logits, target, min_prob=1.5))
    raises(ValueError, "min_prob .* must not exceed max_prob",
           lambda: objx.prob_loss(logits, target, min_prob=0.5, max_prob=0.1))
    raises(ValueError, "softcap must be", lambda: objx.prob_loss(logits, target, softcap=0.0))
    raises(ValueError, "z_loss must be", lambda: objx.prob_loss(logits, target, z_loss=-1.0))
    raises(ValueError, "objective must be one of", lambda: torch.ops.objx.prob_loss_forward(
        logits, target, "focal", 0.0, None, None, -100, 0.0, 0.0, None))


def test_backward_op_checks_saved_rows(device):
    logits, target = make_logits(5, 10, device=device)
    loss, lse, prob, counted, _correct = torch.ops.objx.prob_loss_forward(logits, target, "nll", 0.0, None, None,
                                                                -100, 0.0, 0.0, None)
    raises(ValueError, r"grad_loss must have shape \[5\]", lambda: torch.ops.objx.prob_loss_backward(
        loss[:4], logits, target, lse, prob, counted, "nll", 0.0, -100, 0.0, 0.0, None))
