"""Issue 15: a bad argument on one rank of a process_group, at the logits front doors (prob_loss,
distill_loss, vocab_divergence), raises the same clear error on every rank within seconds; no rank
is left waiting in the call's collective (gloo on CPU, two processes)."""

import datetime
import os
import random
import re
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

# Case name -> what every rank's error must say (rank 1 holds the bad argument).
CASES = {
    "integer logits": r"objx\.prob_loss: rank 1 of 2: logits must be float64, float32, bfloat16 or float16, "
                      r"got torch\.int64",
    "label_smoothing": r"objx\.prob_loss: rank 1 of 2: label_smoothing must be in \[0, 1\], got 1\.5",
    "alpha without power": r"objx\.prob_loss: rank 1 of 2: alpha=3 is not used by objective '-log p'",
    "ignore_index": r"objx\.distill_loss: rank 1 of 2: ignore_index must be an integer, got -99\.5",
    "teacher on meta": r"objx\.distill_loss: rank 1 of 2: teacher_logits is on meta but student_logits is on cpu",
    "mask shape": r"objx\.vocab_divergence: rank 1 of 2: mask must have shape \(6,\)",
    "ref as a list": r"objx\.vocab_divergence: rank 1 of 2: ref_logits must be a torch\.Tensor, got list",
}
TIMEOUT_S = 15.0  # the group's: a rank left in a collective fails the case instead of hanging the suite


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cases(rank: int, seed: int):
    import objx
    from helpers import make_logits

    g = torch.Generator().manual_seed(seed)  # the same inputs on both ranks
    z, y = make_logits(6, 20, dtype=torch.float64, generator=g)
    t, _ = make_logits(6, 20, dtype=torch.float64, generator=g)
    mask = torch.rand(6, generator=g) > 0.3
    part = slice(0, 10) if rank == 0 else slice(10, 20)
    bad = rank == 1
    group = dist.group.WORLD
    zs, ts = z[:, part], t[:, part]
    return [
        ("integer logits", lambda: objx.prob_loss(zs.long() if bad else zs, y, process_group=group)),
        ("label_smoothing", lambda: objx.prob_loss(zs, y, label_smoothing=1.5 if bad else 0.1, process_group=group)),
        ("alpha without power", lambda: objx.prob_loss(zs, y, "nll", alpha=3.0 if bad else 1.0, process_group=group)),
        ("ignore_index", lambda: objx.distill_loss(zs, ts, y, ignore_index=-99.5 if bad else -100,
                                                   process_group=group)),
        ("teacher on meta", lambda: objx.distill_loss(zs, ts.to("meta") if bad else ts, y, process_group=group)),
        ("mask shape", lambda: objx.vocab_divergence(zs, ts, mask=mask[:5] if bad else mask, process_group=group)),
        ("ref as a list", lambda: objx.vocab_divergence(zs, ts.tolist() if bad else ts, process_group=group)),
    ]


def _rank(rank, world, port, seed, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=TIMEOUT_S))
    cases = _cases(rank, seed)
    # An agreeing call first: the first collective's one-time costs stay out of the timings.
    import objx

    z = torch.randn(4, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    objx.prob_loss(z[:, :5] if rank == 0 else z[:, 5:], torch.arange(4), process_group=dist.group.WORLD)
    dist.barrier()
    lines = []
    for name, call in cases:
        start = time.perf_counter()
        try:
            call()
            kind, message = "none", ""
        except Exception as e:  # what each rank raised is the result
            kind, message = type(e).__name__, str(e).replace("\n", " ")
        lines.append(f"{name}\t{time.perf_counter() - start:.3f}\t{kind}\t{message}")
        try:
            dist.barrier()
        except Exception as e:  # a rank left behind in a collective: the group is gone
            lines.append(f"{name}\tbarrier\t{type(e).__name__}\t{str(e)[:200]}")
            break
    with open(os.path.join(out, f"rank{rank}.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="needs torch.distributed")
def test_a_bad_argument_on_one_rank_raises_on_every_rank(tmp_path):
    seed = random.randrange(2**31)
    mp.spawn(_rank, args=(2, _free_port(), seed, str(tmp_path)), nprocs=2, join=True)
    ranks = [[line.split("\t") for line in (tmp_path / f"rank{r}.txt").read_text().splitlines()] for r in range(2)]
    problems = [f"rank {r}: case {name!r}: left in a collective: {msg}" for r, lines in enumerate(ranks)
                for name, t, _kind, msg in lines if t == "barrier"]
    assert not problems, "\n".join(problems)
    assert [line[0] for line in ranks[0]] == list(CASES)
    for (name, t0, kind0, msg0), (_, t1, kind1, msg1) in zip(*ranks):
        if (kind0, msg0) != (kind1, msg1):
            problems.append(f"{name}: the ranks raised different errors:\n  {kind0}: {msg0}\n  {kind1}: {msg1}")
        elif not re.search(CASES[name], msg0):
            problems.append(f"{name}: {kind0}: {msg0!r} does not match {CASES[name]!r}")
        elif max(float(t0), float(t1)) > 5.0:
            problems.append(f"{name}: took {max(float(t0), float(t1)):.1f} s")
    assert not problems, f"seed {seed}:\n" + "\n".join(problems)
