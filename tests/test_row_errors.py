"""Row errors of the fused heads, which launch their kernels once per row block or tile and read
the kernels' error slots back once, after the last launch: the error names the caller's row (not
its place among the kept rows or within its block), whichever block it is in."""

import pytest
import torch

import objx


def _head(n, d, v, device, dtype=torch.float32):
    g = torch.Generator().manual_seed(torch.seed() % 2**31)
    hidden = torch.randn(n, d, generator=g, dtype=dtype).to(device)
    weight = torch.randn(v, d, generator=g, dtype=dtype).div_(d ** 0.5).to(device)
    target = torch.randint(0, v, (n,), generator=g).to(device)
    return hidden, weight, target


@pytest.mark.parametrize("grad_in_forward", [False, True])
def test_linear_prob_loss_names_the_callers_row(device, grad_in_forward):
    n, v = 37, 96
    hidden, weight, target = _head(n, 16, v, device)
    target[:9] = -100  # ignored rows before the bad one: kept-row numbers are shifted by 9
    target[31] = v + 3  # kept row 22: with grad_in_forward, row block 5 of 4-row blocks (tile_size 16 / V 96)
    with pytest.raises(IndexError, match=rf"target\[31\] = {v + 3} is outside \[0, {v}\)"):
        objx.linear_prob_loss(hidden.requires_grad_(), weight, target, tile_size=16, grad_in_forward=grad_in_forward)


@pytest.mark.parametrize("grad_in_forward", [False, True])
def test_linear_distill_loss_names_the_callers_row(device, grad_in_forward):
    n, v = 41, 80
    hidden, weight, target = _head(n, 16, v, device)
    teacher_hidden, teacher_weight, _ = _head(n, 16, v, device)
    target[:5] = -100
    target[38] = -7
    with pytest.raises(IndexError, match=rf"target\[38\] = -7 is outside \[0, {v}\)"):
        objx.linear_distill_loss(hidden.requires_grad_(), weight, teacher_hidden, teacher_weight, target,
                                 row_block=8, grad_in_forward=grad_in_forward)


def test_distill_loss_reports_the_first_bad_row(device):
    g = torch.Generator().manual_seed(torch.seed() % 2**31)
    student = torch.randn(12, 50, generator=g).to(device)
    teacher = torch.randn(12, 50, generator=g).to(device)
    target = torch.randint(0, 50, (12,), generator=g).to(device)
    target[7], target[10] = 50, 99
    with pytest.raises(IndexError, match=r"target\[7\] = 50 is outside \[0, 50\)"):
        objx.distill_loss(student, teacher, target)


def test_linear_prob_loss_empty_row_names_the_callers_row(device):
    # A row whose logits are all -inf: hidden zero and a bias of -inf everywhere makes every row empty;
    # only the first counted row (after the ignored ones) is named.
    hidden, weight, target = _head(12, 8, 40, device)
    bias = torch.full((40,), float("-inf"), device=device)
    target[:4] = -100
    with pytest.raises(ValueError, match=r"logits row 4 is -inf everywhere"):
        objx.linear_prob_loss(hidden, weight, target, bias, tile_size=8, grad_in_forward=False)


@pytest.mark.parametrize("method", ["ttm", "kd", "jsd"])
def test_distill_loss_refuses_an_empty_teacher_row(device, method):
    g = torch.Generator().manual_seed(torch.seed() % 2**31)
    student = torch.randn(9, 30, generator=g).to(device)
    teacher = torch.randn(9, 30, generator=g)
    teacher[6] = float("-inf")  # before: NaN loss, no error
    with pytest.raises(ValueError, match=r"teacher_logits row 6 is -inf everywhere"):
        objx.distill_loss(student, teacher.to(device), method=method, hard_weight=0.0)
    target = torch.randint(0, 30, (9,), generator=g)
    target[6] = -100  # an ignored row may be empty
    objx.distill_loss(student, teacher.to(device), target.to(device), method=method).item()

