"""SPEC §1's class weights and return_stats under vocabulary parallelism (SPEC §4): on world sizes 2
and 3 (uneven shards, an empty one), gloo, the sharded loss, gradients and every LossStats field
equal the single-process call's, argmax ties across shard boundaries included, and the options add
no collective."""

import random
import socket

import pytest
import torch
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank, world, port, seed, out, device):
    import vocab_parallel_stats_worker

    vocab_parallel_stats_worker.main(rank, world, port, seed, out, device)


@pytest.mark.parametrize("device", [pytest.param("cpu", marks=pytest.mark.cpu_only)]
                         + (["cuda"] if torch.cuda.is_available() else []))
@pytest.mark.parametrize("world", [2, 3])
def test_sharded_weights_and_stats_equal_unsharded(world, device, tmp_path):
    seed = random.randrange(2**31)
    mp.spawn(_rank, args=(world, _free_port(), seed, str(tmp_path), device), nprocs=world, join=True)
    report = []
    for rank in range(world):
        lines = (tmp_path / f"rank{rank}.txt").read_text().splitlines()
        assert int(lines[0].split()[0]) > 1000 and lines[0].endswith(device), lines[0]  # every check ran, there
        report += [f"rank {rank}: {line}" for line in lines[1:] if line.strip()]
    assert not report, f"seed {seed}:\n" + "\n".join(report)
