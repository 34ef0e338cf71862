"""SPEC §4 across processes: every vocabulary-parallel loss and gradient equals the single-process
one, on world sizes 2 and 3 (uneven shards included), gloo on CPU."""

import os
import random
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import objx


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank, world, port, seed, out, device):
    import vocab_parallel_worker

    vocab_parallel_worker.main(rank, world, port, seed, out, device)


@pytest.mark.parametrize("device", [pytest.param("cpu", marks=pytest.mark.cpu_only)]
                         + (["cuda"] if torch.cuda.is_available() else []))
@pytest.mark.parametrize("world", [2, 3])
def test_sharded_losses_equal_unsharded(world, device, tmp_path):
    # On a GPU machine the ranks share the one device (gloo carries CUDA tensors): the CUDA kernels' row
    # statistics are checked the same way.
    seed = random.randrange(2**31)
    mp.spawn(_rank, args=(world, _free_port(), seed, str(tmp_path), device), nprocs=world, join=True)
    report = []
    for rank in range(world):
        lines = (tmp_path / f"rank{rank}.txt").read_text().splitlines()
        assert int(lines[0].split()[0]) > 300 and lines[0].endswith(device), lines[0]  # every check ran, there
        report += [f"rank {rank}: {line}" for line in lines[1:] if line.strip()]
    assert not report, f"seed {seed}:\n" + "\n".join(report)


@pytest.mark.cpu_only
def test_process_group_without_distributed_is_a_clear_error():
    assert not dist.is_initialized()  # the ranks live in spawned processes; this one never joins a group
    z = torch.randn(3, 5)
    with pytest.raises(RuntimeError, match="objx.prob_loss: process_group was given but torch.distributed"):
        objx.prob_loss(z, torch.tensor([0, 1, 2]), process_group=object())
