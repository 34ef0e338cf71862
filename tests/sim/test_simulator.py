"""The simulator runs CUDA's semantics, strictly enough to expose a missing barrier: its test
kernels (csrc/sim/selftest.cu) against the sums they must give."""

import torch


def rows(n=6, cols=1000):
    return torch.rand(n, cols, dtype=torch.float32) + 0.5  # fresh positive values, never zeros


def test_block_reduction_with_its_barrier_is_exact():
    x = rows()
    got = torch.ops.objx_sim.block_sum(x, True)
    torch.testing.assert_close(got.double(), x.double().sum(1), rtol=1e-6, atol=0)


def test_a_missing_barrier_gives_a_wrong_result():
    # Thread 0 adds the shared slots without __syncthreads(): the scheduler runs it before threads
    # that have not written theirs yet, on every run.
    x = rows()
    got = torch.ops.objx_sim.block_sum(x, False)
    err = ((got.double() - x.double().sum(1)).abs() / x.double().sum(1)).max().item()
    assert err > 1e-3, f"a missing barrier went unseen (relative error {err:.1e})"


def test_warp_shuffles_reduce_like_a_serial_sum():
    x = rows(5, 777)
    torch.testing.assert_close(torch.ops.objx_sim.warp_sum(x).double(), x.double().sum(1), rtol=1e-6, atol=0)


def test_atomics_are_atomic_across_blocks():
    values = torch.randint(1, 2**40, (4096,), dtype=torch.int64)
    assert torch.ops.objx_sim.atomic_min(values).item() == values.min().item()
