"""prob_loss values and gradients against the float64 reference of SPEC §1."""

import pytest
import torch

import objx
from helpers import TOLERANCES, assert_close, make_logits

OBJECTIVES = ["nll", "-p", "-p^10", "power", "log1m", "-log p·1[p≥0.2]"]
OPTIONS = [
    {},
    {"z_loss": 1e-3},
    {"softcap": 15.0},
    {"min_prob": 0.05, "max_prob": 0.9},
]
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


def check_against_reference(logits, target, objective, reduction="mean", **kw):
    dtype = logits.dtype
    loss_tol, grad_tol = TOLERANCES[dtype]
    ours_in = logits.detach().clone().requires_grad_()
    ref_in = logits.detach().double().cpu().requires_grad_()
    ours = objx.prob_loss(ours_in, target, objective, reduction=reduction, **kw)
    ref = objx.reference.prob_loss(ref_in, target.cpu(), objective, reduction=reduction, **kw)
    assert ours.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert ours.device == logits.device
    assert_close(ours, ref, loss_tol, f"loss {objective} {kw} {dtype}")
    weights = torch.rand(ref.shape, dtype=torch.float64) + 0.5  # distinct per-row upstream grads
    (ours * weights.to(ours)).sum().backward()
    (ref * weights).sum().backward()
    assert ours_in.grad.dtype == dtype
    assert_close(ours_in.grad, ref_in.grad, grad_tol, f"grad {objective} {kw} {dtype}")
    return ours, ref


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(o) or "plain")
@pytest.mark.parametrize("objective", OBJECTIVES)
def test_matches_reference(device, objective, options, dtype):
    logits, target = make_logits(48, 3001, dtype=dtype, device=device)
    target[5] = -100
    check_against_reference(logits, target, objective, **options)


# alpha belongs to "power" alone (any other objective given a non-default alpha raises).
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("alpha", [0.5, 3.0])
def test_power_alpha_matches_reference(device, alpha, dtype):
    logits, target = make_logits(48, 3001, dtype=dtype, device=device)
    target[5] = -100
    check_against_reference(logits, target, "power", alpha=alpha, z_loss=1e-3)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("epsilon", [0.1, 1.0])
def test_label_smoothing(device, dtype, epsilon):
    logits, target = make_logits(32, 2500, dtype=dtype, device=device)
    target[0] = -100
    check_against_reference(logits, target, "nll", label_smoothing=epsilon, z_loss=1e-4)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_reductions_with_per_row_gradients(device, reduction):
    logits, target = make_logits(40, 1000, device=device)
    target[::7] = -100
    check_against_reference(logits, target, "-p", reduction=reduction, min_prob=0.01)


def test_leading_dims_are_flattened(device):
    logits, target = make_logits(2 * 7, 300, device=device)
    ours, ref = check_against_reference(logits.view(2, 7, 300), target.view(2, 7), "nll", reduction="none")
    assert ours.shape == (2, 7)


@pytest.mark.parametrize("vocab", [1, 2047, 2048, 2049, 4097])
def test_vocab_sizes_around_the_chunk(device, vocab):
    logits, target = make_logits(9, vocab, device=device)
    check_against_reference(logits, target, "-p^10", z_loss=1e-3)


def test_large_vocab(device):
    logits, target = make_logits(3, 128_256 + 5, device=device)
    check_against_reference(logits, target, "nll")
    check_against_reference(logits.double(), target, "log1m")


def test_empty_batch(device):
    logits = torch.randn(0, 50, device=device, requires_grad=True)
    target = torch.zeros(0, dtype=torch.long, device=device)
    for reduction, shape in [("mean", ()), ("sum", ()), ("none", (0,))]:
        loss = objx.prob_loss(logits, target, reduction=reduction)
        assert loss.shape == shape
        assert not torch.isnan(loss).any()
    objx.prob_loss(logits, target).backward()
    assert logits.grad.shape == (0, 50)


def test_all_rows_ignored_gives_zero_not_nan(device):
    logits, target = make_logits(6, 100, device=device)
    logits.requires_grad_()
    target = torch.full_like(target, -100)
    loss = objx.prob_loss(logits, target)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_threshold_selecting_no_row(device):
    logits, target = make_logits(6, 100, device=device)
    logits.requires_grad_()
    loss, prob = objx.prob_loss(logits, target, "nll", min_prob=1.0, max_prob=1.0, return_token_prob=True)
    loss.backward()
    assert loss.item() == 0.0 and (prob < 1).all()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_threshold_mean_divides_by_passing_rows(device):
    logits, target = make_logits(64, 500, device=device, dtype=torch.float64)
    logp = torch.log_softmax(logits, -1).gather(1, target[:, None]).squeeze(1)
    passing = logp.exp() >= 0.2
    assert 0 < passing.sum() < 64, "inputs should put rows on both sides of the threshold"
    loss = objx.prob_loss(logits, target, "nll", min_prob=0.2)
    expected = -logp[passing].mean()
    assert_close(loss, expected, 1e-10, "thresholded mean")


def test_token_prob_output(device):
    logits, target = make_logits(20, 700, device=device, dtype=torch.float64)
    target[3] = -100
    _, prob = objx.prob_loss(logits, target, return_token_prob=True)
    expected = torch.softmax(logits, -1).gather(1, target.clamp(min=0)[:, None]).squeeze(1)
    expected[3] = 0
    assert not prob.requires_grad and prob.dtype == torch.float32  # SPEC §1: float32 [N]
    assert_close(prob, expected, 1e-6, "token_prob")


def test_non_contiguous_inputs(device):
    logits, target = make_logits(30, 2 * 1500, device=device)
    check_against_reference(logits[::2, ::2], target[::2].clamp(max=1499), "-p")  # strided vocab
    wide, _ = make_logits(15, 2100, device=device)
    check_against_reference(wide[:, 50:2050], target[::2].clamp(max=1999), "log1m")  # row stride != V
    check_against_reference(logits.t().contiguous().t(), target, "nll")  # column-major


def test_masked_vocabulary_entries(device):
    logits, target = make_logits(10, 400, device=device)
    mask = torch.rand(10, 400, device=device) < 0.5
    mask[torch.arange(10), target] = False
    logits = logits.masked_fill(mask, float("-inf"))
    ours, _ = check_against_reference(logits, target, "-p^10")
    grad_in = logits.clone().requires_grad_()
    objx.prob_loss(grad_in, target).backward()
    assert torch.isfinite(ours) and torch.isfinite(grad_in.grad).all()
    assert (grad_in.grad[mask] == 0).all()


def test_all_minus_inf_row_is_legal_when_ignored(device):
    logits, target = make_logits(4, 64, device=device)
    logits[1] = float("-inf")
    target[1] = -100
    check_against_reference(logits, target, "nll")


def test_nan_propagates(device):
    logits, target = make_logits(4, 64, device=device)
    logits[2, 10] = float("nan")
    for objective in ["nll", "-p", "log1m", "-log p·1[p≥0.2]"]:
        assert torch.isnan(objx.prob_loss(logits, target, objective)), objective
    logits.requires_grad_()
    objx.prob_loss(logits, target).backward()
    assert torch.isnan(logits.grad[2]).all() and torch.isfinite(logits.grad[[0, 1, 3]]).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_same_bits_on_two_runs(device, dtype):
    logits, target = make_logits(257, 5003, dtype=dtype, device=device)
    results = []
    for _ in range(2):
        x = logits.clone().requires_grad_()
        loss = objx.prob_loss(x, target, "-p", z_loss=1e-4)
        loss.backward()
        results.append((loss, x.grad))
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])


def test_chunking_does_not_change_results(device):
    # Rows computed at two vocabulary sizes that differ only by -inf padding must agree: the padding
    # adds chunks but no probability mass.
    logits, target = make_logits(16, 3000, device=device)
    padded = torch.cat([logits, torch.full((16, 5000), float("-inf"), device=device)], dim=1)
    a = objx.prob_loss(logits, target, reduction="none")
    b = objx.prob_loss(padded, target, reduction="none")
    assert_close(b, a, 1e-6, "padding")


def test_module_matches_functional(device):
    logits, target = make_logits(12, 333, device=device)
    module = objx.ProbLoss("-p^10", min_prob=0.01, z_loss=1e-4)
    assert "p^10" in repr(module)
    expected = objx.prob_loss(logits, target, "-p^10", min_prob=0.01, z_loss=1e-4)
    assert torch.equal(module(logits, target), expected)
