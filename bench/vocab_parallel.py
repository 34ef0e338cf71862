"""Overhead of objx's vocabulary-parallel path (process_group=...) on CPU with gloo.

For each loss, forward + backward, median of --repeats:
  kernel      single process, the whole vocabulary, objx's kernels (the unsharded path);
  sharded/1   one rank holding the whole vocabulary through the sharded path (its PyTorch formulas
              and collectives on a world of one: the cost of the path itself);
  sharded/P   P ranks, V/P columns each (communication included), time of the slowest rank.
Every run uses one thread per process, so P ranks use P cores. Also prints the bytes all-reduced
per token (counted from the collectives the path issues), an estimate for 8 ranks, and what the
ranks' agreement check costs each call (objx.parallel.agreement: its all-gather's calls and
bytes, and the time from its first field to the end of its exchange, fingerprints included).

    python bench/vocab_parallel.py --rows 2048 --vocab 32000 --world 2 --out bench/results/...json
"""

import argparse
import json
import os
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import objx


def _cases(rows, vocab, hidden_dim, g):
    z = torch.randn(rows, vocab, generator=g) * 2
    t = torch.randn(rows, vocab, generator=g) * 2
    y = torch.randint(0, vocab, (rows,), generator=g)
    h = torch.randn(rows, hidden_dim, generator=g).requires_grad_(True)  # as in training: grad_hidden is all-reduced
    w = torch.randn(vocab, hidden_dim, generator=g) * 0.05
    return {
        "prob_loss nll": (lambda zz, pg: objx.prob_loss(zz, y, process_group=pg), z),
        "prob_loss -p": (lambda zz, pg: objx.prob_loss(zz, y, "-p", process_group=pg), z),
        "distill_loss ttm": (lambda zz, pg, tt=t: objx.distill_loss(zz, tt if pg is None else tt[:, _part(pg, vocab)],
                                                                    y, method="ttm", temperature=2.0,
                                                                    process_group=pg), z),
        "distill_loss jsd": (lambda zz, pg, tt=t: objx.distill_loss(zz, tt if pg is None else tt[:, _part(pg, vocab)],
                                                                    y, method="jsd", temperature=2.0,
                                                                    process_group=pg), z),
        "vocab_divergence kl": (lambda zz, pg, tt=t: objx.vocab_divergence(
            zz, tt if pg is None else tt[:, _part(pg, vocab)], "kl", process_group=pg).mean(), z),
        "vocab_divergence js": (lambda zz, pg, tt=t: objx.vocab_divergence(
            zz, tt if pg is None else tt[:, _part(pg, vocab)], "js", process_group=pg).mean(), z),
        "linear_prob_loss nll": (lambda ww, pg: objx.linear_prob_loss(h, ww, y, process_group=pg), w),
    }


def _part(pg, vocab):
    world, rank = dist.get_world_size(pg), dist.get_rank(pg)
    base, extra = divmod(vocab, world)
    sizes = [base + (r < extra) for r in range(world)]
    start = sum(sizes[:rank])
    return slice(start, start + sizes[rank])


def _time(fn, arg, pg, repeats):
    times = []
    for _ in range(repeats + 1):
        leaf = arg.detach().clone().requires_grad_(True)
        if pg is not None:
            dist.barrier(pg)
        start = time.perf_counter()
        fn(leaf, pg).backward()
        elapsed = time.perf_counter() - start
        if pg is not None:  # the slowest rank's time
            slowest = torch.tensor([elapsed], dtype=torch.float64)
            dist.all_reduce(slowest, op=dist.ReduceOp.MAX, group=pg)
            elapsed = slowest.item()
        times.append(elapsed)
    return statistics.median(times[1:])  # the first run warms up


class _CountBytes:
    """Counts the bytes of every all-reduce objx issues (functional collectives) and of the
    agreement's all-gathers (sent per rank), and times each agreement, while active."""

    def __init__(self):
        import torch.distributed._functional_collectives as funcol

        from objx.parallel import agreement

        self.funcol, self.agreement = funcol, agreement.Agreement
        self.original = (funcol.all_reduce, funcol.all_gather_single, self.agreement.__init__,
                         self.agreement.exchange)
        self.bytes, self.calls = 0, 0
        self.gather_bytes, self.gather_calls, self.agreement_seconds = 0, 0, 0.0

    def __enter__(self):
        all_reduce, all_gather, init, exchange = self.original

        def counting(t, op, group, tag=""):
            self.bytes += t.numel() * t.element_size()
            self.calls += 1
            return all_reduce(t, op, group, tag)

        def gathering(t, gather_dim, group, tag=""):
            self.gather_bytes += t.numel() * t.element_size()
            self.gather_calls += 1
            return all_gather(t, gather_dim, group, tag)

        def timed_init(agreement, *args, **kwargs):
            agreement._bench_start = time.perf_counter()
            init(agreement, *args, **kwargs)

        def timed_exchange(agreement, *args, **kwargs):
            try:
                return exchange(agreement, *args, **kwargs)
            finally:
                self.agreement_seconds += time.perf_counter() - agreement._bench_start

        self.funcol.all_reduce, self.funcol.all_gather_single = counting, gathering
        self.agreement.__init__, self.agreement.exchange = timed_init, timed_exchange
        return self

    def __exit__(self, *exc):
        (self.funcol.all_reduce, self.funcol.all_gather_single, self.agreement.__init__,
         self.agreement.exchange) = self.original


def _rank(rank, world, port, args, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    cases = _cases(args.rows, args.vocab, args.hidden, torch.Generator().manual_seed(0))
    result = {}
    for name, (fn, full) in cases.items():
        shard = full[_part(dist.group.WORLD, args.vocab)]
        shard = shard if name.startswith("linear") else full[:, _part(dist.group.WORLD, args.vocab)]
        seconds = _time(fn, shard, dist.group.WORLD, args.repeats)
        with _CountBytes() as count:
            leaf = shard.detach().clone().requires_grad_(True)
            fn(leaf, dist.group.WORLD).backward()
        slowest = torch.tensor([count.agreement_seconds], dtype=torch.float64)
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
        result[name] = {"seconds": seconds, "allreduce_calls": count.calls, "allreduce_bytes": count.bytes,
                        "agreement_calls": count.gather_calls, "agreement_bytes_sent": count.gather_bytes,
                        "agreement_seconds": slowest.item()}
    if rank == 0:
        with open(out, "w") as f:
            json.dump(result, f)
    dist.barrier()  # no rank tears the group down while another still has a collective in flight
    dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--hidden", type=int, default=512, help="D for linear_prob_loss")
    parser.add_argument("--world", type=int, action="append", help="ranks, repeatable (default: 1 and 2)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    worlds = args.world or [1, 2]
    torch.set_num_threads(1)
    cases = _cases(args.rows, args.vocab, args.hidden, torch.Generator().manual_seed(0))
    results = {name: {"kernel": _time(fn, full, None, args.repeats)} for name, (fn, full) in cases.items()}
    comm, agreement = {}, {}
    for world in worlds:
        path = f"/tmp/objx-vp-{os.getpid()}-{world}.json"
        mp.spawn(_rank, args=(world, _free_port(), args, path), nprocs=world, join=True)
        with open(path) as f:
            for name, r in json.load(f).items():
                results[name][f"sharded/{world}"] = r["seconds"]
                comm.setdefault(name, {})[world] = (r["allreduce_calls"], r["allreduce_bytes"])
                agreement.setdefault(name, {})[world] = (r["agreement_calls"], r["agreement_bytes_sent"],
                                                         r["agreement_seconds"])
    print(f"CPU, one thread per rank, N={args.rows} V={args.vocab} (D={args.hidden} for linear), float32, "
          f"forward+backward, median of {args.repeats}")
    columns = ["kernel"] + [f"sharded/{w}" for w in worlds]
    print(f"{'loss':<22}" + "".join(f"{c:>14}" for c in columns) + "".join(
        f"{f'/{w} ÷ kernel':>16}" for w in worlds) + f"{'all-reduce B/token':>22}")
    for name, r in results.items():
        calls, nbytes = comm[name][max(worlds)]
        print(f"{name:<22}" + "".join(f"{r[c] * 1e3:>12.1f}ms" for c in columns)
              + "".join(f"{r[f'sharded/{w}'] / r['kernel']:>16.2f}" for w in worlds)
              + f"{nbytes / args.rows:>14.0f} ({calls} calls)")
    print("\nEstimate for 8 ranks, per token (ring all-reduce: each rank sends 2·(P-1)/P of the payload; the row "
          "statistics do not depend on V), against all-gathering Llama-3's V=128256 bf16 logits:")
    gather = 7 / 8 * 128256 * 2
    for name in results:
        _calls, nbytes = comm[name][max(worlds)]
        per_token = nbytes / args.rows
        if name.startswith("linear"):
            note = f"(all but {per_token - 4 * args.hidden:.0f} B of it is grad_hidden, D × 4 B, as in any tensor-parallel head)"
        else:
            note = f"vs {gather / 1024:.0f} KiB to all-gather the logits instead ({gather / (2 * 7 / 8 * per_token):.0f}x)"
        print(f"  {name:<22} {2 * 7 / 8 * per_token:>8.0f} B sent per rank {note}")
    print("\nThe ranks' agreement check per call (one all-gather; it also carries the shard sizes, which were an "
          "all-reduce of their own before), slowest rank:")
    for name in results:
        parts = []
        for world in worlds:
            calls, sent, seconds = agreement[name][world]
            share = seconds / results[name][f"sharded/{world}"]
            parts.append(f"/{world}: {calls} all-gather, {sent} B sent, {seconds * 1e3:.2f} ms "
                         f"({share:.1%} of the call)")
        print(f"  {name:<22} " + "; ".join(parts))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"rows": args.rows, "vocab": args.vocab, "hidden": args.hidden, "worlds": worlds,
                       "seconds": results, "allreduce": {n: {str(w): c for w, c in v.items()} for n, v in comm.items()},
                       "agreement": {n: {str(w): c for w, c in v.items()} for n, v in agreement.items()}},
                      f, indent=1)


if __name__ == "__main__":
    main()
