"""The per-shard statistics ops behind the vocabulary-parallel jsd / tvd / js / tv losses (SPEC §4):
row_logsumexp, distill_shard_sums, vocab_divergence_shard_sums. Summed over any split of the
vocabulary, the shard sums are the unsharded kernels' row statistics; the losses built on them are
tested across processes in test_vocab_parallel.py."""

import pytest
import torch

import objx  # noqa: F401  (loads the ops)

from helpers import TOLERANCES, assert_close

ops = torch.ops.objx
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


def logits(rows, vocab, dtype, device, scale=3.0):
    g = torch.Generator().manual_seed(torch.seed() % 2**31)
    return (torch.randn(rows, vocab, dtype=torch.float64, generator=g) * scale).to(dtype).to(device)


def splits(vocab):
    """Uneven column ranges covering [0, vocab), one of them a single column."""
    cuts = [0, 1, vocab // 3, vocab // 3 + 7, vocab]
    return [slice(a, b) for a, b in zip(cuts, cuts[1:])]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_row_logsumexp(device, dtype, temperature):
    x = logits(6, 700, dtype, device)
    x[2, ::3] = float("-inf")
    x[4] = float("-inf")  # a row with no mass
    got = ops.row_logsumexp(x, temperature)
    assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    want = torch.logsumexp(x.double().cpu() / temperature, -1)
    assert torch.isneginf(got[4]) and torch.isneginf(want[4])
    keep = torch.tensor([0, 1, 2, 3, 5])
    assert_close(got.cpu()[keep], want[keep], TOLERANCES[torch.float32 if dtype != torch.float64 else dtype][0],
                 "row_logsumexp")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("method", ["jsd", "tvd", "ttm", "kd", "reverse_kl"])
def test_distill_shard_sums_add_up_to_the_row_statistics(device, dtype, method):
    s, t = logits(7, 300, dtype, device), logits(7, 300, dtype, device)
    if method != "reverse_kl":  # (where KL(q || p) is infinite)
        t[1, :150] = float("-inf")  # a teacher with no mass on the first shards of this row
    T, beta = 2.0, 0.3
    _loss, _soft, _hard, stats, _counted = ops.distill_forward(s, t, None, method, T, beta, 0.0, 1.0, -100)
    compared = 0 if method == "ttm" else 1  # TTM compares the untempered student
    row_lse = torch.stack([stats[:, compared], stats[:, 2]], 1).contiguous()
    total = sum(ops.distill_shard_sums(s[:, part], t[:, part], row_lse, method, T, beta) for part in splits(300))
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    assert_close(total[:, 0], stats[:, 4], tol, f"{method} D")
    if method in ("jsd", "tvd"):
        assert_close(total[:, 1], stats[:, 5], tol, f"{method} sum q a")
    # The KL methods' forward reduces D in its log-sum-exp pass (CPU), the shard sums in a pass of
    # their own: one shard then agrees to rounding; the others run the same pass, bit for bit.
    one_pass = method in ("ttm", "kd") and device == "cpu"
    assert_close(ops.distill_shard_sums(s, t, row_lse, method, T, beta), stats[:, 4:], tol if one_pass else 0.0,
                 "one shard")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", ["js", "tv", "kl", "hellinger"])
def test_vocab_divergence_shard_sums_add_up_to_the_row_statistics(device, dtype, kind):
    z, r = logits(6, 300, dtype, device), logits(6, 300, dtype, device)
    mask = torch.tensor([True, True, False, True, True, True], device=device)
    _div, stats = ops.vocab_divergence_forward(z, r, kind, 0.5, mask)
    row_lse = ops.vocab_divergence_forward(z, r, kind, 0.5, None)[1][:, :2].contiguous()
    total = sum(ops.vocab_divergence_shard_sums(z[:, part], r[:, part], row_lse, kind, 0.5, mask)
                for part in splits(300))
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    assert_close(total, stats[:, 2:], tol, kind)
    assert (total[2] == 0).all()  # masked out


def test_bad_row_lse(device):
    s, t = logits(4, 20, torch.float32, device), logits(4, 20, torch.float32, device)
    good = torch.zeros(4, 2, device=device)
    for bad, err, msg in ((torch.zeros(4, 3, device=device), ValueError, r"row_lse must be \[4, 2\]"),
                          (torch.zeros(3, 2, device=device), ValueError, r"row_lse must be \[4, 2\]"),
                          (good.double(), TypeError, "row_lse must be Float")):
        with pytest.raises(err, match=msg):
            ops.distill_shard_sums(s, t, bad, "jsd", 1.0, 0.5)
        with pytest.raises(err, match=msg):
            ops.vocab_divergence_shard_sums(s, t, bad, "js", 0.5, None)
    with pytest.raises(ValueError, match="teacher_logits"):
        ops.distill_shard_sums(s, t[:, :10], good, "jsd", 1.0, 0.5)
    with pytest.raises(ValueError, match="method"):
        ops.distill_shard_sums(s, t, good, "jsdx", 1.0, 0.5)
    with pytest.raises(ValueError, match="temperature must be finite and > 0"):
        ops.row_logsumexp(s, 0.0)
    with pytest.raises(ValueError, match=r"x must be \[N, V\] or \[B, T, V\]"):
        ops.row_logsumexp(s[0], 1.0)
    with pytest.raises(ValueError, match=r"x must be \[N, V\] or \[B, T, V\]"):
        ops.row_logsumexp(s[None, None], 1.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device to mix devices")
def test_row_lse_on_another_device():
    s = logits(4, 20, torch.float32, "cuda")
    with pytest.raises(ValueError, match="row_lse is on cpu"):
        ops.distill_shard_sums(s, s, torch.zeros(4, 2), "jsd", 1.0, 0.5)


def test_opcheck(device):
    s, t = logits(5, 40, torch.float32, device), logits(5, 40, torch.float32, device)
    row_lse = torch.stack([ops.row_logsumexp(s, 2.0), ops.row_logsumexp(t, 2.0)], 1)
    mask = torch.tensor([True, False, True, True, False], device=device)
    torch.library.opcheck(ops.row_logsumexp, (s, 2.0))
    torch.library.opcheck(ops.distill_shard_sums, (s, t, row_lse, "jsd", 2.0, 0.5))
    torch.library.opcheck(ops.vocab_divergence_shard_sums, (s, t, row_lse, "tv", 0.5, mask))
