"""Runs inside each rank of the multi-process tests (gloo, CPU): every vocabulary-parallel loss and
its gradient against the single-process objx result on the same inputs. Failures are written to
`<out>/rank<r>.txt`, one per line, so that the parent test can show them all."""

import os
import sys
import traceback

import torch
import torch.distributed as dist

import objx

sys.path.insert(0, os.path.dirname(__file__))
from helpers import TOLERANCES, make_logits, rel_err  # noqa: E402


class Checker:
    def __init__(self, rank, world, seed, device):
        self.rank, self.world, self.seed, self.dev = rank, world, seed, torch.device(device)
        self.failures = []
        self.count = 0

    def generator(self, case):
        # Same inputs on every rank: the seed is the parent's, the stream the case's.
        return torch.Generator().manual_seed(self.seed * 1009 + case)

    def randn(self, g, *shape, scale=1.0, dtype=torch.float64):
        return (torch.randn(*shape, dtype=torch.float64, generator=g) * scale).to(self.dev, dtype)

    def randint(self, g, high, shape):
        return torch.randint(0, high, shape, generator=g).to(self.dev)

    def split(self, vocab):
        """Uneven when world does not divide vocab: the first vocab % world ranks get one more."""
        base, extra = divmod(vocab, self.world)
        sizes = [base + (r < extra) for r in range(self.world)]
        start = sum(sizes[: self.rank])
        return slice(start, start + sizes[self.rank])

    def close(self, what, actual, expected, tol):
        self.count += 1
        try:
            err = rel_err(actual, expected)
        except AssertionError as e:
            self.failures.append(f"{what}: {e}")
            return
        if not err <= tol:
            self.failures.append(f"{what}: relative error {err:.3e} > {tol:.1e}")

    def run(self, what, fn):
        try:
            fn()
        except Exception:
            self.failures.append(f"{what}: raised\n{traceback.format_exc()}")


def _leaf(t):
    return t.detach().clone().requires_grad_(True)


def _grad_of(out, inputs):
    out = out if out.dim() == 0 else (out * torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype, device=out.device).reshape(
        out.shape)).sum()  # weighted, so that reduction="none" checks every row's gradient
    return torch.autograd.grad(out, inputs, allow_unused=True)


def _grad_local(c: Checker, what, out, inputs):
    """_grad_of, checking SPEC §4's "the backward of a logits-input loss has no collective": no
    all-reduce while autograd runs the sharded loss's backward."""
    real, calls = objx.parallel.vocab._all_reduce, []

    def counting(*args, **kwargs):
        calls.append(args[1])
        return real(*args, **kwargs)

    objx.parallel.vocab._all_reduce = counting
    try:
        grads = _grad_of(out, inputs)
    finally:
        objx.parallel.vocab._all_reduce = real
    c.count += 1
    if calls:
        c.failures.append(f"{what}: the backward issued all-reduces {calls}")
    return grads


def check_prob_loss(c: Checker, group):
    cases = [("nll", {}), ("-p", {}), ("-p^10", {}), ("log1m", {}), ("nll", {"min_prob": 0.2}),
             ("-p", {"max_prob": 0.9}), ("nll", {"label_smoothing": 0.1}), ("nll", {"z_loss": 1e-3}),
             ("-p", {"softcap": 5.0})]
    for dtype in (torch.float64, torch.float32, torch.bfloat16):
        tol_loss, tol_grad = TOLERANCES[dtype]
        for i, (objective, kw) in enumerate(cases):
            for reduction in ("mean", "sum", "none"):
                z, y = make_logits(13, 37, dtype=dtype, generator=c.generator(100 + i), device=c.dev)
                y[3] = -100
                part = c.split(37)
                what = f"prob_loss {objective} {kw} {reduction} {dtype}"

                def one():
                    full = _leaf(z)
                    ref, ref_p = objx.prob_loss(full, y, objective, reduction=reduction, return_token_prob=True, **kw)
                    (g_ref,) = _grad_of(ref, [full])
                    shard = _leaf(z[:, part])
                    out, p = objx.prob_loss(shard, y, objective, reduction=reduction, return_token_prob=True,
                                            process_group=group, **kw)
                    (g,) = _grad_local(c, what, out, [shard])
                    c.close(what + " loss", out, ref, tol_loss)
                    c.close(what + " token_prob", p, ref_p, tol_loss)
                    c.close(what + " grad", g, g_ref[:, part], tol_grad)

                c.run(what, one)
    # Fewer columns than ranks: with 3 ranks one shard is empty.
    for what, kw in (("nll", {}), ("-p label smoothing", {"label_smoothing": 0.2}), ("softcap", {"softcap": 3.0})):
        z2, y2 = make_logits(6, 2, dtype=torch.float64, generator=c.generator(140), device=c.dev)
        part2 = c.split(2)

        def tiny():
            objective = "-p" if what.startswith("-p") and not kw.get("label_smoothing") else "nll"
            full, shard = _leaf(z2), _leaf(z2[:, part2])
            ref = objx.prob_loss(full, y2, objective, **kw)
            out = objx.prob_loss(shard, y2, objective, process_group=group, **kw)
            c.close(f"prob_loss V=2 {what}", out, ref, 1e-10)
            c.close(f"prob_loss V=2 {what} grad", _grad_of(out, [shard])[0], _grad_of(ref, [full])[0][:, part2], 1e-10)

        c.run(f"prob_loss V=2 {what}", tiny)
    z, y = make_logits(9, 23, dtype=torch.float64, generator=c.generator(150), device=c.dev)
    part = c.split(23)

    def logprobs():
        full, shard = _leaf(z), _leaf(z[:, part])
        ref = objx.token_logprobs(full, y)
        out = objx.token_logprobs(shard, y, process_group=group)
        c.close("token_logprobs", out, ref, 1e-10)
        c.close("token_logprobs grad", _grad_of(out, [shard])[0], _grad_of(ref, [full])[0][:, part], 1e-10)

    c.run("token_logprobs", logprobs)

    def compiled():
        # torch.compile traces the sharded path (graph breaks at the data-dependent argument checks).
        z32, y32 = make_logits(8, 19, dtype=torch.float32, generator=c.generator(160), device=c.dev)
        part32 = c.split(19)
        step = torch.compile(lambda zz: objx.prob_loss(zz, y32, "-p", process_group=group))
        shard, full = _leaf(z32[:, part32]), _leaf(z32)
        out, ref = step(shard), objx.prob_loss(full, y32, "-p")
        c.close("compiled prob_loss", out, ref, 1e-5)
        c.close("compiled prob_loss grad", _grad_of(out, [shard])[0], _grad_of(ref, [full])[0][:, part32], 1e-4)

    if c.dev.type == "cpu":  # once is enough: compiling on CUDA would spend the GPU check's minutes
        c.run("compiled prob_loss", compiled)


def check_linear(c: Checker, group):
    for dtype in (torch.float64, torch.float32):
        tol_loss, tol_grad = TOLERANCES[dtype]
        for i, (objective, reduction) in enumerate([("nll", "mean"), ("-p", "sum"), ("-p^10", "none")]):
            g = c.generator(200 + i)
            h = c.randn(g, 11, 16, dtype=dtype)
            w = c.randn(g, 29, 16, scale=0.7, dtype=dtype)
            b = c.randn(g, 29, dtype=dtype)
            y = c.randint(g, 29, (11,))
            y[0] = -100
            part = c.split(29)
            what = f"linear_prob_loss {objective} {reduction} {dtype}"

            def one():
                hf, wf, bf = _leaf(h), _leaf(w), _leaf(b)
                ref = objx.linear_prob_loss(hf, wf, y, bf, objective, reduction=reduction)
                g_ref = _grad_of(ref, [hf, wf, bf])
                hs, ws, bs = _leaf(h), _leaf(w[part]), _leaf(b[part])
                out = objx.linear_prob_loss(hs, ws, y, bs, objective, reduction=reduction, process_group=group,
                                            tile_size=11)  # row blocks of 11 * 11 // 29 = 4 rows: three
                gs = _grad_of(out, [hs, ws, bs])
                c.close(what + " loss", out, ref, tol_loss)
                c.close(what + " grad_hidden", gs[0], g_ref[0], tol_grad)
                c.close(what + " grad_weight", gs[1], g_ref[1][part], tol_grad)
                c.close(what + " grad_bias", gs[2], g_ref[2][part], tol_grad)

            c.run(what, one)

    def logprobs():
        g = c.generator(250)
        h, w = c.randn(g, 7, 8), c.randn(g, 19, 8)
        y = c.randint(g, 19, (7,))
        part = c.split(19)
        ref = objx.linear_token_logprobs(h, w, y)
        out = objx.linear_token_logprobs(h, w[part], y, process_group=group)
        c.close("linear_token_logprobs", out, ref, 1e-10)

    c.run("linear_token_logprobs", logprobs)


def check_distill(c: Checker, group):
    methods = ("ttm", "wttm", "kd", "forward_kl", "reverse_kl", "jsd", "tvd")
    for dtype in (torch.float64, torch.float32):
        tol_loss, tol_grad = TOLERANCES[dtype]
        for i, method in enumerate(methods):
            g = c.generator(300 + i)
            s = c.randn(g, 10, 31, scale=2, dtype=dtype)
            t = c.randn(g, 10, 31, scale=2, dtype=dtype)
            y = c.randint(g, 31, (10,))
            y[2] = -100
            part = c.split(31)
            what = f"distill_loss {method} {dtype}"

            def one():
                sf = _leaf(s)
                ref, ref_terms = objx.distill_loss(sf, t, y, method=method, temperature=2.0, hard_weight=0.5,
                                                   return_terms=True)
                (g_ref,) = _grad_of(ref, [sf])
                ss = _leaf(s[:, part])
                out, terms = objx.distill_loss(ss, t[:, part], y, method=method, temperature=2.0, hard_weight=0.5,
                                               return_terms=True, process_group=group)
                (gs,) = _grad_local(c, what, out, [ss])
                c.close(what + " loss", out, ref, tol_loss)
                c.close(what + " grad", gs, g_ref[:, part], tol_grad)
                for name in ("soft", "hard", "U"):
                    c.close(f"{what} term {name}", terms[name], ref_terms[name], tol_loss)

            c.run(what, one)
    for i, method in enumerate(("ttm", "wttm", "forward_kl", "jsd")):
        # A teacher that puts no mass on the first 16 of 31 tokens: whole shards hold none of it.
        g = c.generator(340 + i)
        s = c.randn(g, 6, 31)
        t = c.randn(g, 6, 31)
        t[:3, :16] = float("-inf")
        part = c.split(31)
        what = f"distill_loss {method} masked teacher"

        def masked():
            sf, ss = _leaf(s), _leaf(s[:, part])
            ref = objx.distill_loss(sf, t, method=method, temperature=2.0, hard_weight=0.0)
            out = objx.distill_loss(ss, t[:, part], method=method, temperature=2.0, hard_weight=0.0,
                                    process_group=group)
            c.close(what, out, ref, 1e-10)
            c.close(what + " grad", _grad_local(c, what, out, [ss])[0], _grad_of(ref, [sf])[0][:, part], 1e-10)

        c.run(what, masked)
    for i, method in enumerate(("ttm", "jsd")):
        g = c.generator(350 + i)
        hs, ws = c.randn(g, 9, 8), c.randn(g, 21, 8)
        ht, wt = c.randn(g, 9, 6), c.randn(g, 21, 6)
        part = c.split(21)
        what = f"linear_distill_loss {method}"

        def one():
            hf, wf = _leaf(hs), _leaf(ws)
            ref = objx.linear_distill_loss(hf, wf, ht, wt, method=method, temperature=1.5, hard_weight=0.0)
            g_ref = _grad_of(ref, [hf, wf])
            hsh, wsh = _leaf(hs), _leaf(ws[part])
            out = objx.linear_distill_loss(hsh, wsh, ht, wt[part], method=method, temperature=1.5, hard_weight=0.0,
                                           process_group=group, row_block=4)
            gs = _grad_of(out, [hsh, wsh])
            c.close(what + " loss", out, ref, 1e-10)
            c.close(what + " grad_hidden", gs[0], g_ref[0], 1e-10)
            c.close(what + " grad_weight", gs[1], g_ref[1][part], 1e-10)

        c.run(what, one)


def check_divergence(c: Checker, group):
    kinds = ("kl", "reverse_kl", "js", "hellinger", "bhattacharyya", "renyi", "alpha", "tv")
    for kind in ("reverse_kl", "hellinger", "bhattacharyya", "renyi", "alpha", "js"):
        # A reference that puts no mass on the first 14 of 27 tokens: whole shards hold none of it.
        g = c.generator(380)
        p3 = c.randn(g, 5, 27)
        q3 = c.randn(g, 5, 27)
        q3[:2, :14] = float("-inf")
        part3 = c.split(27)
        what = f"vocab_divergence {kind} masked reference"

        def masked(kind=kind, what=what):
            pf, ps = _leaf(p3), _leaf(p3[:, part3])
            ref = objx.vocab_divergence(pf, q3, kind, div_alpha=0.7)
            out = objx.vocab_divergence(ps, q3[:, part3], kind, div_alpha=0.7, process_group=group)
            c.close(what, out, ref, 1e-10)
            c.close(what + " grad", _grad_local(c, what, out, [ps])[0], _grad_of(ref, [pf])[0][:, part3], 1e-10)

        c.run(what, masked)
    for div_alpha in (10.0, 1.01):
        # float32 Rényi where S = Σ p^a q^(1-a) overflows (a = 10: one token 17 nats likelier under the
        # policy, log S > 130) and where D is all in S − 1 (a = 1.01): the shards' log S and S − 1 merge to
        # the whole row's.
        g = c.generator(385)
        p4, q4 = c.randn(g, 6, 61, scale=2), c.randn(g, 6, 61, scale=2)
        p4[:, 5] += 3
        q4[:, 5] -= 14
        p4, q4 = p4.float(), q4.float()
        part4 = c.split(61)
        what = f"vocab_divergence renyi({div_alpha}) float32"

        def renyi(div_alpha=div_alpha, what=what):
            pf, ps = _leaf(p4), _leaf(p4[:, part4])
            ref = objx.vocab_divergence(pf, q4, "renyi", div_alpha=div_alpha)
            out = objx.vocab_divergence(ps, q4[:, part4], "renyi", div_alpha=div_alpha, process_group=group)
            assert torch.isfinite(ref).all(), ref
            c.close(what, out, ref, TOLERANCES[torch.float32][0])
            c.close(what + " grad", _grad_local(c, what, out, [ps])[0], _grad_of(ref, [pf])[0][:, part4],
                    TOLERANCES[torch.float32][1])

        c.run(what, renyi)
    for kind in ("kl", "js"):  # fewer columns than ranks
        g = c.generator(390)
        p2, q2 = c.randn(g, 5, 2), c.randn(g, 5, 2)
        part2 = c.split(2)
        c.run(f"vocab_divergence V=2 {kind}", lambda: c.close(
            f"vocab_divergence V=2 {kind}", objx.vocab_divergence(p2[:, part2], q2[:, part2], kind, process_group=group),
            objx.vocab_divergence(p2, q2, kind), 1e-10))
    for dtype in (torch.float64, torch.float32):
        tol_loss, tol_grad = TOLERANCES[dtype]
        for i, kind in enumerate(kinds):
            g = c.generator(400 + i)
            p = c.randn(g, 8, 27, scale=2, dtype=dtype)
            q = c.randn(g, 8, 27, scale=2, dtype=dtype)
            mask = (torch.rand(8, generator=g) > 0.2).to(c.dev)
            part = c.split(27)
            what = f"vocab_divergence {kind} {dtype}"

            def one():
                pf = _leaf(p)
                ref = objx.vocab_divergence(pf, q, kind, div_alpha=0.7, mask=mask)
                (g_ref,) = _grad_of(ref, [pf])
                ps = _leaf(p[:, part])
                out = objx.vocab_divergence(ps, q[:, part], kind, div_alpha=0.7, mask=mask, process_group=group)
                (gs,) = _grad_local(c, what, out, [ps])
                c.close(what + " value", out, ref, tol_loss)
                c.close(what + " grad", gs, g_ref[:, part], tol_grad)

            c.run(what, one)


def check_errors(c: Checker, group):
    z, y = make_logits(4, 10, dtype=torch.float64, generator=c.generator(500), device=c.dev)
    part = c.split(10)
    y[1] = 10  # one past the whole vocabulary: every rank must refuse it
    for what, call in (("target out of range", lambda: objx.prob_loss(z[:, part], y, process_group=group)),
                       ("wasserstein", lambda: objx.vocab_divergence(z[:, part], z[:, part], "wasserstein",
                                                                     token_embeddings=torch.ones(10, 3, device=c.dev),
                                                                     process_group=group)),
                       ("bad group", lambda: objx.prob_loss(z[:, part], y.clamp(max=9), process_group="world"))):
        c.count += 1
        try:
            call()
            c.failures.append(f"error case '{what}' did not raise")
        except (ValueError, TypeError) as e:
            if "objx" not in str(e):
                c.failures.append(f"error case '{what}': message does not name the function: {e}")


def check_double_backward(c: Checker, group):
    """The sharded losses' backward is objx's kernels on row statistics: a second derivative must raise a
    clear error, not drop the second-order terms."""
    z, y = make_logits(5, 14, dtype=torch.float64, generator=c.generator(700), device=c.dev)
    t = c.randn(c.generator(701), 5, 14)
    part = c.split(14)
    for what, loss in (("prob_loss", lambda zz: objx.prob_loss(zz, y, "-p", process_group=group)),
                       ("distill_loss", lambda zz: objx.distill_loss(zz, t[:, part], y, method="jsd",
                                                                     process_group=group)),
                       ("vocab_divergence", lambda zz: objx.vocab_divergence(zz, t[:, part], "kl",
                                                                             process_group=group).sum())):
        c.count += 1
        shard = _leaf(z[:, part])
        (grad,) = torch.autograd.grad(loss(shard), shard, create_graph=True)
        try:
            torch.autograd.grad(grad.pow(2).sum(), shard)
            c.failures.append(f"sharded {what}: double backward did not raise")
        except RuntimeError as e:
            if "double backward is not supported" not in str(e):
                c.failures.append(f"sharded {what}: double backward raised an unclear error: {e}")


def check_dtensor_heads(c: Checker, group):
    """FSDP2-style: the head is a DTensor sharded by rows across ranks with different hidden states."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (c.world,))
    g = c.generator(600)
    w = c.randn(g, 17, 8)
    hidden = [c.randn(g, 5, 8) for _ in range(c.world)]
    target = [c.randint(g, 17, (5,)) for _ in range(c.world)]

    def fsdp():
        wd = distribute_tensor(_leaf(w), mesh, [Shard(0)]).detach().requires_grad_(True)
        loss = objx.linear_prob_loss(hidden[c.rank], wd, target[c.rank], objective="-p")
        loss.backward()
        expected_grad = torch.zeros_like(w)
        for r in range(c.world):
            wr = _leaf(w)
            ref = objx.linear_prob_loss(hidden[r], wr, target[r], objective="-p")
            ref.backward()
            if r == c.rank:
                c.close("dtensor head loss", loss, ref, 1e-10)
            expected_grad += wr.grad
        c.close("dtensor head grad (summed over ranks)", wd.grad.full_tensor(), expected_grad, 1e-10)

    def vocab_parallel():
        # A tensor-parallel head: Shard(0) over the vocabulary, the same hidden states on every rank.
        wd = distribute_tensor(_leaf(w), mesh, [Shard(0)]).detach().requires_grad_(True)
        loss = objx.linear_prob_loss(hidden[0], wd, target[0], process_group=group)
        c.close("dtensor vocab-parallel head loss", loss, objx.linear_prob_loss(hidden[0], w, target[0]), 1e-10)

    c.run("dtensor head", fsdp)
    c.run("dtensor vocab-parallel head", vocab_parallel)


def main(rank, world, port, seed, out, device="cpu"):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    # Row blocks of about 3 rows (at V / P around 15), so that every blocked path runs several blocks.
    objx.parallel.losses.BLOCK_BYTES = 3 * 6 * 4 * 15
    c = Checker(rank, world, seed, device)
    group = dist.group.WORLD
    checks = [check_prob_loss, check_linear, check_distill, check_divergence, check_errors, check_double_backward]
    if c.dev.type == "cpu":  # the DTensor checks build a CPU mesh
        checks.append(check_dtensor_heads)
    for check in checks:
        c.run(check.__name__, lambda: check(c, group))
        dist.barrier()
    with open(os.path.join(out, f"rank{rank}.txt"), "w") as f:
        f.write(f"{c.count} checks on {c.dev}\n" + "\n".join(c.failures))
    dist.destroy_process_group()


# ---- ranks that disagree (SPEC §4: every argument but the shard must be equal on every rank) -------

def disagreement_cases(rank: int, world: int, seed: int, device):
    """(name, call) pairs: each call passes this rank's arguments, which differ between the ranks (or are
    wrong on one rank only) in the one way the name says; every rank must raise the same error."""
    dev = torch.device(device)
    g = torch.Generator().manual_seed(seed)  # the same stream on every rank
    z, y = make_logits(6, 20, dtype=torch.float64, generator=g, device=dev)
    t = torch.randn(6, 20, dtype=torch.float64, generator=g).to(dev)
    h = torch.randn(6, 8, dtype=torch.float64, generator=g).to(dev)
    w = torch.randn(20, 8, dtype=torch.float64, generator=g).to(dev)
    ht = torch.randn(6, 4, dtype=torch.float64, generator=g).to(dev)
    wt = torch.randn(20, 4, dtype=torch.float64, generator=g).to(dev)
    mask = torch.rand(6, generator=g).to(dev) > 0.3
    base, extra = divmod(20, world)
    start = rank * base + min(rank, extra)
    part = slice(start, start + base + (rank < extra))
    last = rank == world - 1  # the rank whose arguments differ
    group = dist.group.WORLD
    other_y = y.clone()
    other_y[2] = (y[2] + 1) % 20
    bad_y = y.clone()
    bad_y[1] = 20  # one past the whole vocabulary, on one rank only
    flipped = mask.clone()
    flipped[0] = ~flipped[0]
    empty_z, empty_t = z.clone(), t.clone()  # row 3 without mass on every shard
    empty_z[3] = float("-inf")
    empty_t[3] = float("-inf")
    weight = (0.5 + torch.rand(20, generator=g)).to(dev)  # class weights: the whole vocabulary's on every rank
    other_weight = weight.clone()
    other_weight[7] += 0.25
    return [
        ("targets", lambda: objx.prob_loss(z[:, part], other_y if last else y, process_group=group)),
        ("rows", lambda: objx.prob_loss(z[:5 if last else 6, part], y[:5 if last else 6], process_group=group)),
        ("dtype", lambda: objx.prob_loss(z[:, part].float() if last else z[:, part], y, process_group=group)),
        ("objective", lambda: objx.prob_loss(z[:, part], y, "-p" if last else "nll", process_group=group)),
        ("min_prob", lambda: objx.prob_loss(z[:, part], y, min_prob=0.2 if last else None, process_group=group)),
        ("reduction", lambda: objx.prob_loss(z[:, part], y, reduction="sum" if last else "mean",
                                             process_group=group)),
        ("bad target on one rank", lambda: objx.prob_loss(z[:, part], bad_y if last else y, process_group=group)),
        ("method", lambda: objx.distill_loss(z[:, part], t[:, part], y, method="kd" if last else "ttm",
                                             process_group=group)),
        ("temperature", lambda: objx.distill_loss(z[:, part], t[:, part], y, temperature=2.0 if last else 1.0,
                                                  process_group=group)),
        ("distill targets", lambda: objx.distill_loss(z[:, part], t[:, part], other_y if last else y,
                                                      process_group=group)),
        ("divergence kind", lambda: objx.vocab_divergence(z[:, part], t[:, part], "js" if last else "kl",
                                                          process_group=group)),
        ("mask", lambda: objx.vocab_divergence(z[:, part], t[:, part], mask=flipped if last else mask,
                                               process_group=group)),
        ("policy row without mass", lambda: objx.vocab_divergence(empty_z[:, part], t[:, part], "kl",
                                                                  process_group=group)),
        ("reference row without mass", lambda: objx.vocab_divergence(z[:, part], empty_t[:, part], "js",
                                                                     process_group=group)),
        ("hidden", lambda: objx.linear_prob_loss(h + 1e-3 if last else h, w[part], y, process_group=group)),
        ("linear targets", lambda: objx.linear_prob_loss(h, w[part], bad_y if last else y, process_group=group)),
        ("linear hidden dtype", lambda: objx.linear_prob_loss(h.float() if last else h, w[part].float() if last
                                                              else w[part], y, process_group=group)),
        ("integer hidden on one rank", lambda: objx.linear_prob_loss(h.long() if last else h, w[part], y,
                                                                     process_group=group)),
        ("head width on one rank", lambda: objx.linear_prob_loss(h, w[part, :7] if last else w[part], y,
                                                                 process_group=group)),
        ("teacher hidden", lambda: objx.linear_distill_loss(h, w[part], ht * (2 if last else 1), wt[part], y,
                                                            process_group=group)),
        ("distill row_block", lambda: objx.linear_distill_loss(h, w[part], ht, wt[part], y,
                                                               row_block=2 if last else 3, process_group=group)),
        ("weight of the wrong length", lambda: objx.prob_loss(z[:, part], y, weight=weight[:19], process_group=group)),
        ("shard of the weight on one rank", lambda: objx.prob_loss(z[:, part], y,
                                                                   weight=weight[part] if last else weight,
                                                                   process_group=group)),
        ("weight on one rank only", lambda: objx.prob_loss(z[:, part], y, weight=None if last else weight,
                                                           process_group=group)),
        ("weight values", lambda: objx.prob_loss(z[:, part], y, weight=other_weight if last else weight,
                                                 process_group=group)),
        ("weight dtype", lambda: objx.prob_loss(z[:, part], y, weight=weight.double() if last else weight,
                                                process_group=group)),
        ("integer weight on one rank", lambda: objx.prob_loss(z[:, part], y, weight=weight.long() if last else weight,
                                                              process_group=group)),
        ("return_stats", lambda: objx.prob_loss(z[:, part], y, return_stats=last, process_group=group)),
        ("ce_weight of the wrong length", lambda: objx.linear_prob_loss(h, w[part], y, ce_weight=weight[:19],
                                                                        process_group=group)),
        ("ce_weight values", lambda: objx.linear_prob_loss(h, w[part], y, ce_weight=other_weight if last else weight,
                                                           process_group=group)),
        ("linear return_stats", lambda: objx.linear_prob_loss(h, w[part], y, return_stats=last, process_group=group)),
    ]


def disagreement_main(rank, world, port, seed, out, device="cpu", timeout_s=20.0):
    """Runs every disagreement case; writes `<out>/rank<r>.txt`: per case, a line
    `name<TAB>seconds<TAB>exception type<TAB>message` (type "none" when nothing was raised). A short group
    timeout makes a rank left waiting fail within seconds instead of the default 30 minutes."""
    import datetime
    import time

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=timeout_s))
    # Agreeing ranks first: the first call's one-time costs (imports, gloo's first all-gather) stay out of
    # the timings, and agreement passes where it should.
    z, y = make_logits(4, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(seed), device=device)
    base = 10 // world
    objx.prob_loss(z[:, rank * base:(rank + 1) * base if rank < world - 1 else 10], y, process_group=dist.group.WORLD)
    dist.barrier()
    lines = []
    for name, call in disagreement_cases(rank, world, seed, device):
        start = time.perf_counter()
        try:
            call()
            kind, message = "none", ""
        except Exception as e:  # what each rank raised is the result
            kind, message = type(e).__name__, str(e).replace("\n", " ")
        lines.append(f"{name}\t{time.perf_counter() - start:.3f}\t{kind}\t{message}")
        try:
            dist.barrier()
        except Exception as e:  # a rank left behind in a collective: the group is gone, stop here
            lines.append(f"{name}\tbarrier\t{type(e).__name__}\t{str(e)[:200]}")
            break
    with open(os.path.join(out, f"rank{rank}.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    dist.destroy_process_group()
