"""SPEC §4 across processes: every vocabulary-parallel loss and gradient equals the single-process
one, on world sizes 2 and 3 (uneven shards included), gloo on CPU."""

import importlib
import os
import re
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


def _rank(rank, worker, world, port, seed, out, device):
    importlib.import_module(worker).main(rank, world, port, seed, out, device)


def _sharded_equal_unsharded(worker: str, world: int, device: str, tmp_path, min_checks: int):
    """Runs `worker`.main on every rank; each writes its check count and failures (see
    vocab_parallel_worker), all of which must pass."""
    seed = random.randrange(2**31)
    mp.spawn(_rank, args=(worker, world, _free_port(), seed, str(tmp_path), device), nprocs=world, join=True)
    report = []
    for rank in range(world):
        lines = (tmp_path / f"rank{rank}.txt").read_text().splitlines()
        assert int(lines[0].split()[0]) > min_checks and lines[0].endswith(device), lines[0]  # every check ran, there
        report += [f"rank {rank}: {line}" for line in lines[1:] if line.strip()]
    assert not report, f"seed {seed}:\n" + "\n".join(report)


@pytest.mark.parametrize("device", [pytest.param("cpu", marks=pytest.mark.cpu_only)]
                         + (["cuda"] if torch.cuda.is_available() else []))
@pytest.mark.parametrize("world", [2, 3])
def test_sharded_losses_equal_unsharded(world, device, tmp_path):
    # On a GPU machine the ranks share the one device (gloo carries CUDA tensors): the CUDA kernels' row
    # statistics are checked the same way.
    _sharded_equal_unsharded("vocab_parallel_worker", world, device, tmp_path, 300)


@pytest.mark.parametrize("device", [pytest.param("cpu", marks=pytest.mark.cpu_only)]
                         + (["cuda"] if torch.cuda.is_available() else []))
@pytest.mark.parametrize("world", [2, 3])
def test_sharded_weights_and_stats_equal_unsharded(world, device, tmp_path):
    """SPEC §1's class weights and return_stats under vocabulary parallelism (uneven shards, an empty
    one): the sharded loss, gradients and every LossStats field equal the single-process call's, argmax
    ties across shard boundaries included, and the options add no collective."""
    _sharded_equal_unsharded("vocab_parallel_stats_worker", world, device, tmp_path, 1000)


@pytest.mark.cpu_only
def test_process_group_without_distributed_is_a_clear_error():
    assert not dist.is_initialized()  # the ranks live in spawned processes; this one never joins a group
    z = torch.randn(3, 5)
    with pytest.raises(RuntimeError, match="objx.prob_loss: process_group was given but torch.distributed"):
        objx.prob_loss(z, torch.tensor([0, 1, 2]), process_group=object())


def _disagreeing_rank(rank, world, port, seed, out, device):
    import vocab_parallel_worker

    vocab_parallel_worker.disagreement_main(rank, world, port, seed, out, device)


# Case name -> what every rank's error must say.
DISAGREEMENTS = {
    "targets": r"objx\.prob_loss: the ranks of process_group disagree on target \(",
    "rows": r"disagree on the number of rows \(rank 0: 6, rank 1: 5\)",
    "dtype": r"disagree on the dtype of logits \(rank 0: torch\.float64, rank 1: torch\.float32\)",
    "objective": r"disagree on objective \(rank 0: 'nll', rank 1: 'power'\)",
    "min_prob": r"disagree on min_prob \(rank 0: None, rank 1: 0\.2\)",
    "reduction": r"disagree on reduction \(rank 0: 'mean', rank 1: 'sum'\)",
    "bad target on one rank": r"objx\.prob_loss: target out of range on rank 1 of 2: row 1 has 20, the sharded "
                              r"vocabulary has 20 entries",
    "method": r"objx\.distill_loss: the ranks of process_group disagree on method \(rank 0: 'ttm', rank 1: 'kd'\)",
    "temperature": r"disagree on temperature \(rank 0: 1\.0, rank 1: 2\.0\)",
    "distill targets": r"objx\.distill_loss: the ranks of process_group disagree on target",
    "divergence kind": r"objx\.vocab_divergence: the ranks of process_group disagree on kind \(rank 0: 'kl', "
                       r"rank 1: 'js'\)",
    "mask": r"objx\.vocab_divergence: the ranks of process_group disagree on mask",
    "policy row without mass": r"objx\.vocab_divergence: policy_logits row 3 is -inf everywhere",
    "reference row without mass": r"objx\.vocab_divergence: ref_logits row 3 is -inf everywhere",
    "hidden": r"objx\.linear_prob_loss: the ranks of process_group disagree on hidden",
    "linear targets": r"objx\.linear_prob_loss: target out of range on rank 1 of 2: row 1 has 20",
    "linear hidden dtype": r"disagree on the dtype of hidden \(rank 0: torch\.float64, rank 1: torch\.float32\)",
    "integer hidden on one rank": r"objx\.linear_prob_loss: rank 1 of 2: hidden must be .*float.*got torch\.int64",
    "head width on one rank": r"objx\.linear_prob_loss: rank 1 of 2: weight must be \[V, D\] with D = 8",
    "teacher hidden": r"objx\.linear_distill_loss: the ranks of process_group disagree on teacher_hidden",
    "distill row_block": r"disagree on row_block \(rank 0: 3, rank 1: 2\)",
    "weight of the wrong length": r"objx\.prob_loss: weight must be the whole vocabulary's class weights \[V\] with "
                                  r"V = 20 \(the ranks' shard sizes \[10, 10\] summed\), got shape \(19,\); with "
                                  r"process_group every rank passes the full weight",
    "shard of the weight on one rank": r"objx\.prob_loss: the ranks of process_group disagree on the length of weight "
                                       r"\(rank 0: 20, rank 1: 10\)",
    "weight on one rank only": r"disagree on the length of weight \(rank 0: 20, rank 1: None\)",
    "weight values": r"objx\.prob_loss: the ranks of process_group disagree on weight \(rank 0 and rank 1 pass "
                     r"different values\)",
    "weight dtype": r"disagree on the dtype of weight \(rank 0: torch\.float32, rank 1: torch\.float64\)",
    "integer weight on one rank": r"objx\.prob_loss: rank 1 of 2: weight must be a floating-point tensor, got "
                                  r"torch\.int64",
    "return_stats": r"objx\.prob_loss: the ranks of process_group disagree on return_stats \(rank 0: False, rank 1: True\)",
    "ce_weight of the wrong length": r"objx\.linear_prob_loss: ce_weight must be the whole vocabulary's class weights "
                                     r"\[V\] with V = 20",
    "ce_weight values": r"objx\.linear_prob_loss: the ranks of process_group disagree on ce_weight \(rank 0 and rank 1 "
                        r"pass different values\)",
    "linear return_stats": r"objx\.linear_prob_loss: the ranks of process_group disagree on return_stats \(rank 0: "
                           r"False, rank 1: True\)",
}


@pytest.mark.parametrize("device", [pytest.param("cpu", marks=pytest.mark.cpu_only)]
                         + (["cuda"] if torch.cuda.is_available() else []))
def test_disagreeing_ranks_all_raise_the_same_error(device, tmp_path):
    """Ranks whose arguments differ (targets, rows, dtypes, options, masks, hidden states) or that are wrong on
    one rank only: every rank raises the same error, naming the argument (and the rank), within seconds; no
    rank is left waiting in a collective (the group's timeout is 20 s, so a regression fails instead of
    hanging)."""
    seed = random.randrange(2**31)
    mp.spawn(_disagreeing_rank, args=(2, _free_port(), seed, str(tmp_path), device), nprocs=2, join=True)
    ranks = [[line.split("\t") for line in (tmp_path / f"rank{r}.txt").read_text().splitlines()] for r in range(2)]
    problems = []
    for r, lines in enumerate(ranks):
        problems += [f"rank {r}: case {name!r}: left in a collective: {msg}" for name, t, _kind, msg in lines
                     if t == "barrier"]
    assert not problems, "\n".join(problems)
    assert [line[0] for line in ranks[0]] == list(DISAGREEMENTS), [line[0] for line in ranks[0]]
    for (name, t0, kind0, msg0), (_, t1, kind1, msg1) in zip(*ranks):
        if kind0 == "none" or kind1 == "none":
            problems.append(f"{name}: rank 0 raised {kind0}, rank 1 {kind1}: {msg0 or msg1}")
        elif (kind0, msg0) != (kind1, msg1):
            problems.append(f"{name}: the ranks raised different errors:\n  {kind0}: {msg0}\n  {kind1}: {msg1}")
        elif not re.search(DISAGREEMENTS[name], msg0):
            problems.append(f"{name}: {kind0}: {msg0!r} does not match {DISAGREEMENTS[name]!r}")
        elif max(float(t0), float(t1)) > 5.0:
            problems.append(f"{name}: took {max(float(t0), float(t1)):.1f} s")
    assert not problems, f"seed {seed}:\n" + "\n".join(problems)
