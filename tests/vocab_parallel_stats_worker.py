"""Runs inside each rank of test_vocab_parallel.py's test_sharded_weights_and_stats_equal_unsharded (gloo):
class weights and return_stats with process_group, against the single-process objx call on the same inputs (itself tested against
F.cross_entropy(weight=...) and objx.reference). Failures go to `<out>/rank<r>.txt`, one per line."""

import os
import sys

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol

import objx

sys.path.insert(0, os.path.dirname(__file__))
from helpers import TOLERANCES, make_logits  # noqa: E402
from vocab_parallel_worker import Checker, _grad_of, _grad_local, _leaf  # noqa: E402


def equal(c: Checker, what, actual, expected):
    c.count += 1
    if actual.shape != expected.shape or not torch.equal(actual.cpu(), expected.cpu()):
        rows = (actual.cpu() != expected.cpu()).nonzero().flatten().tolist() if actual.shape == expected.shape else []
        c.failures.append(f"{what}: differs (rows {rows}): {actual.tolist()} != {expected.tolist()}")


def close_stats(c: Checker, what, stats, ref, tol):
    c.close(what + " stats.token_prob", stats.token_prob, ref.token_prob, tol)
    c.close(what + " stats.lse", stats.lse, ref.lse, tol)
    c.close(what + " stats.z_loss", stats.z_loss, ref.z_loss, tol)
    equal(c, what + " stats.correct", stats.correct, ref.correct)


def class_weights(g, vocab, device):
    """Fresh positive weights with a few zeros (rows whose weight is 0 count for nothing)."""
    w = 0.1 + 1.9 * torch.rand(vocab, generator=g, dtype=torch.float64)
    w[torch.randint(0, vocab, (3,), generator=g)] = 0.0
    return w.to(device, torch.float32)


def shard_starts(c: Checker, vocab):
    base, extra = divmod(vocab, c.world)
    sizes = [base + (r < extra) for r in range(c.world)]
    return [sum(sizes[:r]) for r in range(c.world)]


def with_ties(c: Checker, z, y, vocab, first_row):
    """Rows from first_row on get their maximum twice: across the first shard boundary, across the
    first and last shards, inside the last shard; the target on the first or the second of the
    pair (torch.argmax takes the first), and one such row ignored."""
    starts = shard_starts(c, vocab)
    pairs = [(starts[1] - 1, starts[1]), (1, vocab - 2), (starts[-1], starts[-1] + 2)]
    row = first_row
    for a, b in pairs:
        for target in (a, b):
            z[row, a] = z[row, b] = 30.0  # above every other logit, exact in bfloat16
            y[row] = target
            row += 1
    z[row, 0] = z[row, vocab - 1] = 30.0
    y[row] = -100
    return row + 1


def check_prob_loss(c: Checker, group):
    vocab = 37
    cases = [("nll", {}), ("nll", {"label_smoothing": 0.1}),
             ("nll", {"label_smoothing": 0.2, "softcap": 4.0, "z_loss": 1e-3}), ("-p", {"z_loss": 1e-3}),
             ("log1m", {"min_prob": 0.1}), ("-p^10", {"softcap": 5.0})]
    for dtype in (torch.float64, torch.float32, torch.bfloat16):
        tol_loss, tol_grad = TOLERANCES[dtype]
        for i, (objective, kw) in enumerate(cases):
            for weighted in (False, True):
                for reduction in ("mean", "sum", "none"):
                    g = c.generator(1000 + 10 * i + weighted)
                    z, y = make_logits(16, vocab, dtype=dtype, generator=g, device=c.dev)
                    y[3] = -100
                    with_ties(c, z, y, vocab, first_row=8)
                    weight = class_weights(g, vocab, c.dev) if weighted else None
                    part = c.split(vocab)
                    what = f"prob_loss {objective} {kw} weight={weighted} {reduction} {dtype}"

                    def one():
                        full = _leaf(z)
                        ref, ref_p, ref_stats = objx.prob_loss(full, y, objective, reduction=reduction, weight=weight,
                                                               return_token_prob=True, return_stats=True, **kw)
                        (g_ref,) = _grad_of(ref, [full])
                        shard = _leaf(z[:, part])
                        out, p, stats = objx.prob_loss(shard, y, objective, reduction=reduction, weight=weight,
                                                       return_token_prob=True, return_stats=True,
                                                       process_group=group, **kw)
                        (grad,) = _grad_local(c, what, out, [shard])
                        c.close(what + " loss", out, ref, tol_loss)
                        c.close(what + " token_prob", p, ref_p, tol_loss)
                        c.close(what + " grad", grad, g_ref[:, part], tol_grad)
                        close_stats(c, what, stats, ref_stats, tol_loss)
                        if dtype == torch.float64:  # the reference's correct is torch.argmax's
                            _, ref64 = objx.reference.prob_loss(z, y, objective, reduction=reduction, weight=weight,
                                                                return_stats=True, **kw)
                            equal(c, what + " stats.correct vs torch.argmax", stats.correct, ref64.correct)

                    c.run(what, one)

    def weight_only():
        # Without return_stats the loss alone is returned, and ProbLoss's buffer is the whole weight.
        g = c.generator(1100)
        z, y = make_logits(9, vocab, dtype=torch.float64, generator=g, device=c.dev)
        weight = class_weights(g, vocab, c.dev).double()
        part = c.split(vocab)
        module = objx.ProbLoss(weight=weight, label_smoothing=0.1, process_group=group)
        c.close("ProbLoss(weight=) sharded", module(z[:, part], y),
                objx.prob_loss(z, y, weight=weight, label_smoothing=0.1), 1e-10)
        zero = torch.zeros(vocab, dtype=torch.float64, device=c.dev)
        shard = _leaf(z[:, part])
        loss = objx.prob_loss(shard, y, weight=zero, process_group=group)
        (grad,) = _grad_of(loss, [shard])
        c.count += 1
        if loss.item() != 0.0 or bool(grad.any()):
            c.failures.append(f"zero weights: loss {loss.item()}, grad max {grad.abs().max().item()}")

    c.run("weight only", weight_only)

    def shifted():
        # shift=True: [B, T, V] shards and [B, T] labels; the per-row stats keep the [B, T] shape.
        g = c.generator(1150)
        z, y = make_logits(2 * 7, vocab, dtype=torch.float32, generator=g, device=c.dev)
        z, y = z.reshape(2, 7, vocab), y.reshape(2, 7)
        y[0, 4] = -100
        weight = class_weights(g, vocab, c.dev)
        part = c.split(vocab)
        full, shard = _leaf(z), _leaf(z[..., part])
        kw = dict(weight=weight, label_smoothing=0.1, z_loss=1e-3, return_stats=True, shift=True)
        ref, ref_stats = objx.prob_loss(full, y, **kw)
        out, stats = objx.prob_loss(shard, y, process_group=group, **kw)
        tol_loss, tol_grad = TOLERANCES[torch.float32]
        c.close("shift loss", out, ref, tol_loss)
        c.close("shift grad", _grad_local(c, "shift", out, [shard])[0], _grad_of(ref, [full])[0][..., part], tol_grad)
        close_stats(c, "shift", stats, ref_stats, tol_loss)

    c.run("shift", shifted)

    def empty_shard():
        # V = 2 < 3 ranks: one shard is empty; its rank still holds the whole weight.
        g = c.generator(1200)
        z, y = make_logits(6, 2, dtype=torch.float64, generator=g, device=c.dev)
        z[0] = 1.5  # a tie across the two columns
        weight = torch.tensor([0.3, 1.7], dtype=torch.float64, device=c.dev)
        part = c.split(2)
        full, shard = _leaf(z), _leaf(z[:, part])
        ref, ref_stats = objx.prob_loss(full, y, weight=weight, label_smoothing=0.2, z_loss=1e-2, return_stats=True)
        out, stats = objx.prob_loss(shard, y, weight=weight, label_smoothing=0.2, z_loss=1e-2, return_stats=True,
                                    process_group=group)
        c.close("V=2 weighted loss", out, ref, 1e-10)
        c.close("V=2 weighted grad", _grad_of(out, [shard])[0], _grad_of(ref, [full])[0][:, part], 1e-10)
        close_stats(c, "V=2", stats, ref_stats, 1e-10)

    c.run("empty shard", empty_shard)


def check_linear(c: Checker, group):
    vocab = 29
    cases = [("nll", {"label_smoothing": 0.1}), ("-p", {"z_loss": 1e-3}),
             ("nll", {"softcap": 3.0, "label_smoothing": 0.2})]
    for dtype in (torch.float64, torch.float32):
        tol_loss, tol_grad = TOLERANCES[dtype]
        for i, (objective, kw) in enumerate(cases):
            for weighted in (False, True):
                for reduction in ("mean", "sum", "none"):
                    g = c.generator(2000 + 10 * i + weighted)
                    h = c.randn(g, 11, 16, dtype=dtype)
                    w = c.randn(g, vocab, 16, scale=0.7, dtype=dtype)
                    b = c.randn(g, vocab, dtype=dtype)
                    y = c.randint(g, vocab, (11,))
                    y[0] = -100
                    y[1:4] = (h[1:4].double() @ w.double().T + b.double()).argmax(-1)  # rows whose target is correct
                    ce_weight = class_weights(g, vocab, c.dev) if weighted else None
                    part = c.split(vocab)
                    what = f"linear_prob_loss {objective} {kw} ce_weight={weighted} {reduction} {dtype}"

                    def one():
                        hf, wf, bf = _leaf(h), _leaf(w), _leaf(b)
                        ref, ref_stats = objx.linear_prob_loss(hf, wf, y, bf, objective, reduction=reduction,
                                                               ce_weight=ce_weight, return_stats=True, **kw)
                        g_ref = _grad_of(ref, [hf, wf, bf])
                        hs, ws, bs = _leaf(h), _leaf(w[part]), _leaf(b[part])
                        out, stats = objx.linear_prob_loss(hs, ws, y, bs, objective, reduction=reduction,
                                                           ce_weight=ce_weight, return_stats=True,
                                                           process_group=group, tile_size=11, **kw)  # three blocks
                        grads = _grad_of(out, [hs, ws, bs])
                        c.close(what + " loss", out, ref, tol_loss)
                        c.close(what + " grad_hidden", grads[0], g_ref[0], tol_grad)
                        c.close(what + " grad_weight", grads[1], g_ref[1][part], tol_grad)
                        c.close(what + " grad_bias", grads[2], g_ref[2][part], tol_grad)
                        close_stats(c, what, stats, ref_stats, tol_loss)

                    c.run(what, one)

    def module():
        g = c.generator(2100)
        h, w = c.randn(g, 7, 8), c.randn(g, vocab, 8)
        y = c.randint(g, vocab, (7,))
        ce_weight = class_weights(g, vocab, c.dev).double()
        part = c.split(vocab)
        loss = objx.LinearProbLoss(ce_weight=ce_weight, process_group=group)(h, w[part], y)
        c.close("LinearProbLoss(ce_weight=) sharded", loss, objx.linear_prob_loss(h, w, y, ce_weight=ce_weight), 1e-10)

    c.run("LinearProbLoss", module)


class CollectiveLog:
    """Records the forward's collectives of one call: the agreement's all-gathers and the all-reduces."""

    def __init__(self):
        self.calls = []

    def __enter__(self):
        self.reduce, self.gather = objx.parallel.vocab._all_reduce, funcol.all_gather_single

        def reduce(x, op, group):
            self.calls.append(op)
            return self.reduce(x, op, group)

        def gather(*args, **kwargs):
            self.calls.append("all_gather")
            return self.gather(*args, **kwargs)

        objx.parallel.vocab._all_reduce, funcol.all_gather_single = reduce, gather
        return self

    def __exit__(self, *exc):
        objx.parallel.vocab._all_reduce, funcol.all_gather_single = self.reduce, self.gather


def check_collectives(c: Checker, group):
    """Class weights and return_stats add no collective: one all-gather (the agreement), one MAX and
    one SUM all-reduce, whatever the options; the backward none (checked by _grad_local above)."""
    vocab = 37
    g = c.generator(3000)
    z, y = make_logits(10, vocab, dtype=torch.float32, generator=g, device=c.dev)
    weight = class_weights(g, vocab, c.dev)
    shard = z[:, c.split(vocab)]
    h, head = c.randn(g, 10, 8, dtype=torch.float32), c.randn(g, vocab, 8, dtype=torch.float32)
    expected = ["all_gather", "max", "sum"]
    for what, kw in (("no options", {}), ("label smoothing", {"label_smoothing": 0.1}),
                     ("weight", {"weight": weight}), ("return_stats", {"return_stats": True}),
                     ("weight, label smoothing, return_stats", {"weight": weight, "label_smoothing": 0.1,
                                                                "return_stats": True})):
        with CollectiveLog() as log:
            objx.prob_loss(shard, y, process_group=group, **kw)
        c.count += 1
        if log.calls != expected:
            c.failures.append(f"prob_loss {what}: collectives {log.calls}, expected {expected}")
        linear_kw = {("ce_weight" if k == "weight" else k): v for k, v in kw.items()}
        with CollectiveLog() as log:  # 10 rows: one row block
            objx.linear_prob_loss(h, head[c.split(vocab)], y, process_group=group, **linear_kw)
        c.count += 1
        if log.calls != expected:
            c.failures.append(f"linear_prob_loss {what}: collectives {log.calls}, expected {expected}")


def main(rank, world, port, seed, out, device="cpu"):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    c = Checker(rank, world, seed, device)
    group = dist.group.WORLD
    for check in (check_prob_loss, check_linear, check_collectives):
        c.run(check.__name__, lambda: check(c, group))
        dist.barrier()
    with open(os.path.join(out, f"rank{rank}.txt"), "w") as f:
        f.write(f"{c.count} checks on {c.dev}\n" + "\n".join(c.failures))
    dist.destroy_process_group()
