"""Small cases of every objx op family for bench/gpu_check.sh (public API only: objx.* and
torch.ops.objx.*).

    python bench/gpu_cases.py info      [--device cuda]   the build and the device; fails when a CUDA
                                                          run would not exercise objx's CUDA kernels
    python bench/gpu_cases.py memcheck  [--device cuda]   every kernel path, every dtype, fwd + bwd;
                                                          run under compute-sanitizer --tool memcheck
    python bench/gpu_cases.py syncs     [--device cuda]   host-device syncs per op (fwd + bwd) under
                                                          torch.cuda.set_sync_debug_mode("warn")
    python bench/gpu_cases.py profile   [--device cuda]   one call per family for ncu (NVTX "case:<op>"
                                                          around each; the ops push objx::<op>)

--device cpu runs the same calls on the CPU (gpu_check.sh --dry-run); --preset tiny (the default on
CPU) shrinks the syncs/profile shapes; memcheck's shapes are tiny either way. --out FILE writes the
results as JSON. Exit status 1 when an op raised where it should not (a sync count is a measurement
and never fails).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import traceback
import warnings

import torch

import objx

DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
DISTILL_METHODS = ("ttm", "wttm", "kd", "forward_kl", "reverse_kl", "jsd", "tvd")
DIV_KINDS = ("kl", "reverse_kl", "js", "hellinger", "bhattacharyya", "renyi", "alpha", "tv")
DIV_ALPHA = {"renyi": 2.0, "alpha": 0.3}
# (rows, hidden, vocab) for the one-call-per-family modes.
PRESETS = {"gpu": (2048, 1024, 32768), "tiny": (16, 32, 512)}


class Inputs:
    """Random inputs made on the CPU (no generator kernels to sanitize) and moved to the device."""

    def __init__(self, device, seed=0):
        self.device = torch.device(device)
        self.g = torch.Generator().manual_seed(seed)

    def logits(self, rows, vocab, dtype, unaligned=False, grad=True, scale=3.0):
        x = torch.randn(rows, vocab + int(unaligned), generator=self.g) * scale
        x = x.to(dtype).to(self.device)
        if unaligned:  # rows start one element off: no vector-aligned loads
            x = x[:, 1:]
        return x.detach().requires_grad_(grad)

    def matrix(self, rows, cols, dtype, grad=True, scale=1.0):
        x = (torch.randn(rows, cols, generator=self.g) * scale).to(dtype).to(self.device)
        return x.requires_grad_(grad)

    def vector(self, n, dtype, grad=True):
        return torch.randn(n, generator=self.g).to(dtype).to(self.device).requires_grad_(grad)

    def target(self, rows, vocab, ignored=(0,)):
        t = torch.randint(0, max(vocab, 1), (rows,), generator=self.g)
        for r in ignored:
            if r < rows:
                t[r] = -100
        return t.to(self.device)

    def mask(self, rows):
        m = torch.rand(rows, generator=self.g) > 0.3
        m[0] = False
        return m.to(self.device)

    def grad(self, like):
        return torch.randn(like.shape, generator=self.g).to(like.dtype).to(like.device)


def backward(loss, inputs):
    """Backward of a scalar, or of a per-row result with a random upstream gradient."""
    if loss.dim() == 0:
        loss.backward()
    else:
        loss.backward(inputs.grad(loss))


def expect_index_error(fn):
    try:
        fn()
    except IndexError:
        return
    raise AssertionError("an out-of-range target was not rejected with IndexError")


def row_lse(a, b, ta=1.0, tb=1.0):
    return torch.stack([torch.ops.objx.row_logsumexp(a, ta), torch.ops.objx.row_logsumexp(b, tb)], 1)


# --- memcheck: every kernel path of every family, each dtype ---------------------------------

def memcheck_cases(dtype, inp):
    """(name, thunk) pairs; each thunk runs a forward (and backward where there is one)."""
    dt = str(dtype).split(".")[-1]
    for rows, vocab in ((7, 1), (33, 1003), (16, 4096)):
        for unaligned in (True, False):
            lay = "unaligned" if unaligned else "aligned"
            tag = f"{dt} {rows}x{vocab} {lay}"

            def sft(objective, kw, reduction="mean", rows=rows, vocab=vocab, unaligned=unaligned):
                x = inp.logits(rows, vocab, dtype, unaligned)
                y = inp.target(rows, vocab, ignored=(0, rows // 2))
                out = objx.prob_loss(x, y, objective, reduction=reduction, **kw)
                backward(out[0] if isinstance(out, tuple) else out, inp)

            yield f"prob_loss -p^10 z_loss softcap {tag}", lambda s=sft: s("-p^10", dict(z_loss=1e-4, softcap=20.0))
            yield f"prob_loss nll label_smoothing min_prob {tag}", lambda s=sft: s(
                "nll", dict(label_smoothing=0.1, min_prob=0.01))
            yield f"prob_loss log1m max_prob none token_prob {tag}", lambda s=sft: s(
                "log1m", dict(max_prob=0.9, return_token_prob=True), "none")
            yield f"prob_loss -p sum {tag}", lambda s=sft: s("-p", {}, "sum")

            def logprobs(rows=rows, vocab=vocab, unaligned=unaligned):
                x = inp.logits(rows, vocab, dtype, unaligned)
                backward(objx.token_logprobs(x, inp.target(rows, vocab)), inp)
            yield f"token_logprobs {tag}", logprobs

        def bad_target(rows=rows, vocab=vocab):
            x = inp.logits(rows, vocab, dtype, grad=False)
            y = inp.target(rows, vocab)
            y[-1] = vocab
            expect_index_error(lambda: objx.prob_loss(x, y))
        yield f"prob_loss bad target {dt} {rows}x{vocab}", bad_target

    # The fused LM head: tiles not dividing V, ignored rows, both gradient modes, bias.
    for grad_in_forward in (True, False):
        for with_bias in (True, False):
            def head(grad_in_forward=grad_in_forward, with_bias=with_bias, reduction="mean"):
                h, w = inp.matrix(19, 24, dtype), inp.matrix(1001, 24, dtype, scale=0.5)
                b = inp.vector(1001, dtype) if with_bias else None
                y = inp.target(19, 1001, ignored=(3, 11))
                loss = objx.linear_prob_loss(h, w, y, b, "-p", reduction=reduction, grad_in_forward=grad_in_forward,
                                             tile_size=256)
                backward(loss, inp)
            yield f"linear_prob_loss grad_in_forward={grad_in_forward} bias={with_bias} {dt}", head
    yield f"linear_prob_loss none (tiles) {dt}", lambda: head(False, True, "none")

    def head_bad_target():
        h, w = inp.matrix(5, 8, dtype, grad=False), inp.matrix(300, 8, dtype, grad=False)
        y = inp.target(5, 300)
        y[2] = 300
        expect_index_error(lambda: objx.linear_prob_loss(h, w, y, tile_size=128))
    yield f"linear_prob_loss bad target {dt}", head_bad_target

    def head_logprobs():
        h, w = inp.matrix(9, 16, dtype), inp.matrix(777, 16, dtype, scale=0.5)
        backward(objx.linear_token_logprobs(h, w, inp.target(9, 777), tile_size=256), inp)
    yield f"linear_token_logprobs {dt}", head_logprobs

    # Distillation on logits: every method, with and without target, aligned and not.
    for method in DISTILL_METHODS:
        for with_target in (True, False):
            for rows, vocab, unaligned in ((7, 1, False), (33, 1003, True), (16, 4096, False)):
                def distill(method=method, with_target=with_target, rows=rows, vocab=vocab, unaligned=unaligned):
                    s = inp.logits(rows, vocab, dtype, unaligned)
                    t = inp.logits(rows, vocab, dtype, unaligned, grad=False)
                    y = inp.target(rows, vocab, ignored=(0,)) if with_target else None
                    loss = objx.distill_loss(s, t, y, method=method, temperature=2.0,
                                             hard_weight=1.0 if with_target else 0.0, soft_weight=1.0)
                    backward(loss, inp)
                yield f"distill_loss {method} target={with_target} {dt} {rows}x{vocab}", distill

    def distill_bad_target():
        s, t = inp.logits(4, 50, dtype, grad=False), inp.logits(4, 50, dtype, grad=False)
        y = inp.target(4, 50)
        y[1] = 50
        expect_index_error(lambda: objx.distill_loss(s, t, y, method="ttm"))
    yield f"distill_loss bad target {dt}", distill_bad_target

    # Both heads fused: every method, both gradient modes, biases, row blocks not dividing N.
    for method in DISTILL_METHODS:
        for grad_in_forward in (True, False):
            def two_heads(method=method, grad_in_forward=grad_in_forward):
                hs, ws = inp.matrix(19, 24, dtype), inp.matrix(1001, 24, dtype, scale=0.5)
                ht, wt = inp.matrix(19, 16, dtype, grad=False), inp.matrix(1001, 16, dtype, grad=False, scale=0.5)
                bs = inp.vector(1001, dtype) if grad_in_forward else None
                bt = inp.vector(1001, dtype, grad=False) if not grad_in_forward else None
                y = inp.target(19, 1001, ignored=(2, 7))
                loss = objx.linear_distill_loss(hs, ws, ht, wt, y, student_bias=bs, teacher_bias=bt, method=method,
                                                temperature=2.0, grad_in_forward=grad_in_forward, row_block=4)
                backward(loss, inp)
            yield f"linear_distill_loss {method} grad_in_forward={grad_in_forward} {dt}", two_heads

    def two_heads_no_target():
        hs, ws = inp.matrix(6, 8, dtype), inp.matrix(130, 8, dtype)
        ht, wt = inp.matrix(6, 8, dtype, grad=False), inp.matrix(130, 8, dtype, grad=False)
        backward(objx.linear_distill_loss(hs, ws, ht, wt, None, method="jsd", hard_weight=0.0), inp)
    yield f"linear_distill_loss jsd no target {dt}", two_heads_no_target

    # Vocabulary divergences: every kind, with and without mask.
    for kind in DIV_KINDS:
        for with_mask in (True, False):
            for rows, vocab, unaligned in ((7, 1, False), (33, 1003, True), (16, 4096, False)):
                def divergence(kind=kind, with_mask=with_mask, rows=rows, vocab=vocab, unaligned=unaligned):
                    p = inp.logits(rows, vocab, dtype, unaligned)
                    r = inp.logits(rows, vocab, dtype, unaligned, grad=False)
                    m = inp.mask(rows) if with_mask else None
                    backward(objx.vocab_divergence(p, r, kind, div_alpha=DIV_ALPHA.get(kind, 0.5), mask=m), inp)
                yield f"vocab_divergence {kind} mask={with_mask} {dt} {rows}x{vocab}", divergence

    # The vocabulary-parallel building blocks (forward-only ops).
    for rows, vocab, unaligned in ((7, 1, False), (33, 1003, True)):
        def lse(rows=rows, vocab=vocab, unaligned=unaligned):
            x = inp.logits(rows, vocab, dtype, unaligned, grad=False)
            torch.ops.objx.row_logsumexp(x, 1.0)
            torch.ops.objx.row_logsumexp(x, 2.5)
        yield f"row_logsumexp {dt} {rows}x{vocab}", lse
        for method in DISTILL_METHODS:
            def shard_distill(method=method, rows=rows, vocab=vocab, unaligned=unaligned):
                s = inp.logits(rows, vocab, dtype, unaligned, grad=False)
                t = inp.logits(rows, vocab, dtype, unaligned, grad=False)
                ts = 1.0 if method in ("ttm", "wttm") else 2.0
                torch.ops.objx.distill_shard_sums(s, t, row_lse(s, t, ts, 2.0), method, 2.0, 0.5)
            yield f"distill_shard_sums {method} {dt} {rows}x{vocab}", shard_distill
        for kind in DIV_KINDS:
            def shard_div(kind=kind, rows=rows, vocab=vocab, unaligned=unaligned):
                p = inp.logits(rows, vocab, dtype, unaligned, grad=False)
                r = inp.logits(rows, vocab, dtype, unaligned, grad=False)
                a = DIV_ALPHA.get(kind, 0.5)
                torch.ops.objx.vocab_divergence_shard_sums(p, r, row_lse(p, r), kind, a, inp.mask(rows))
                torch.ops.objx.vocab_divergence_shard_sums(p, r, row_lse(p, r), kind, a, None)
            yield f"vocab_divergence_shard_sums {kind} {dt} {rows}x{vocab}", shard_div


def run_memcheck(args):
    inp = Inputs(args.device)
    failures, counts, t0 = [], {}, time.perf_counter()
    for dtype in args.dtypes:
        t_dtype = time.perf_counter()
        for name, thunk in memcheck_cases(dtype, inp):
            family = name.split(" ")[0]
            counts[family] = counts.get(family, 0) + 1
            try:
                thunk()
            except Exception as e:  # noqa: BLE001 - every failure is reported, then the exit status says so
                failures.append({"case": name, "error": f"{type(e).__name__}: {e}".splitlines()[0][:300]})
                print(f"FAILED {name}: {failures[-1]['error']}", flush=True)
        sync(args.device)
        print(f"memcheck cases {str(dtype).split('.')[-1]}: done in {time.perf_counter() - t_dtype:.1f}s", flush=True)
    result = {"device": args.device, "cases": sum(counts.values()), "by_family": counts, "failures": failures,
              "seconds": round(time.perf_counter() - t0, 2)}
    print(f"{result['cases']} memcheck cases, {len(failures)} failed, {result['seconds']}s")
    return result, not failures


# --- one call per family: syncs and profile -------------------------------------------------

def family_calls(device, dtype, preset):
    """{op: thunk} with one forward + backward of each family at the preset's shape."""
    n, d, v = PRESETS[preset]
    inp = Inputs(device, seed=1)
    x = inp.logits(n, v, dtype)
    x2 = inp.logits(n, v, dtype, grad=False)
    y = inp.target(n, v, ignored=range(0, n, 7))
    h, w = inp.matrix(n, d, dtype, scale=0.5), inp.matrix(v, d, dtype, scale=0.05)
    ht, wt = inp.matrix(n, d, dtype, grad=False, scale=0.5), inp.matrix(v, d, dtype, grad=False, scale=0.05)
    mask = inp.mask(n)

    def fresh(t):
        return t.detach().requires_grad_()

    lse2 = row_lse(x2, x2)
    # The fused heads last: their tiles launch the most kernels, and ncu profiles a limited count.
    return {
        "prob_loss[nll]": lambda: objx.prob_loss(fresh(x), y).backward(),
        "distill_loss[ttm]": lambda: objx.distill_loss(fresh(x), x2, y, method="ttm", temperature=2.0).backward(),
        "distill_loss[jsd]": lambda: objx.distill_loss(fresh(x), x2, y, method="jsd", temperature=2.0).backward(),
        "vocab_divergence[kl]": lambda: objx.vocab_divergence(fresh(x), x2, "kl", mask=mask).sum().backward(),
        "vocab_divergence[js]": lambda: objx.vocab_divergence(fresh(x), x2, "js", mask=mask).sum().backward(),
        "row_logsumexp": lambda: torch.ops.objx.row_logsumexp(x2, 2.0),
        "distill_shard_sums": lambda: torch.ops.objx.distill_shard_sums(x2, x2, lse2, "jsd", 1.0, 0.5),
        "vocab_divergence_shard_sums": lambda: torch.ops.objx.vocab_divergence_shard_sums(
            x2, x2, lse2, "js", 0.5, mask),
        "prob_loss[-p,min_prob]": lambda: objx.prob_loss(fresh(x), y, "-p", min_prob=0.05).backward(),
        "token_logprobs": lambda: objx.token_logprobs(fresh(x), y).sum().backward(),
        "linear_prob_loss[grad_in_forward]": lambda: objx.linear_prob_loss(
            fresh(h), fresh(w), y, grad_in_forward=True).backward(),
        "linear_prob_loss[tiles]": lambda: objx.linear_prob_loss(
            fresh(h), fresh(w), y, grad_in_forward=False).backward(),
        "linear_distill_loss[ttm]": lambda: objx.linear_distill_loss(
            fresh(h), fresh(w), ht, wt, y, method="ttm", temperature=2.0).backward(),
    }


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def run_syncs(args):
    cuda = torch.device(args.device).type == "cuda"
    calls = family_calls(args.device, args.dtype, args.preset)
    counts, detail, errors = {}, {}, {}
    for op, thunk in calls.items():
        try:
            thunk()  # warm-up: lazy initialisation, autotuning, allocator growth
            sync(args.device)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                if cuda:
                    torch.cuda.set_sync_debug_mode("warn")
                try:
                    thunk()
                finally:
                    if cuda:
                        torch.cuda.set_sync_debug_mode(0)
            sync(args.device)
        except Exception as e:  # noqa: BLE001
            errors[op] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
            counts[op] = None
            print(f"FAILED {op}: {errors[op]}", flush=True)
            continue
        syncs = [w for w in caught if "synchroniz" in str(w.message)]
        counts[op] = len(syncs) if cuda else None
        detail[op] = [f"{w.filename}:{w.lineno}: {str(w.message).splitlines()[0][:160]}" for w in syncs[:5]]
        print(f"{op}: {counts[op] if cuda else 'not measured on CPU'} syncs", flush=True)
    result = {"device": args.device, "dtype": str(args.dtype).split(".")[-1], "shape": PRESETS[args.preset],
              "measured": cuda, "syncs": counts, "first_syncs": detail, "errors": errors}
    return result, not errors


def run_profile(args):
    cuda = torch.device(args.device).type == "cuda"
    errors = {}
    for op, thunk in family_calls(args.device, args.dtype, args.preset).items():
        ctx = torch.cuda.nvtx.range(f"case:{op}") if cuda else contextlib.nullcontext()
        try:
            with ctx:
                thunk()
                sync(args.device)
        except Exception as e:  # noqa: BLE001
            errors[op] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
            print(f"FAILED {op}: {errors[op]}", flush=True)
    print(f"profile cases done ({len(errors)} failed)")
    return {"device": args.device, "shape": PRESETS[args.preset], "errors": errors}, not errors


def run_info(args):
    info = {"python": sys.version.split()[0], "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "objx_file": objx.__file__, "build": objx.build_info(), "device": args.device}
    ok, problems = True, []
    if torch.device(args.device).type == "cuda":
        if not torch.cuda.is_available():
            problems.append("torch sees no CUDA device")
        else:
            cap = torch.cuda.get_device_capability()
            info["device_name"] = torch.cuda.get_device_name()
            info["capability"] = f"{cap[0]}{cap[1]}"
            info["memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
            if not info["build"]["cuda_compiled"]:
                problems.append("objx was built without CUDA kernels")
            elif info["capability"] not in info["build"]["cuda_archs"]:
                problems.append(f"objx's CUDA archs {info['build']['cuda_archs']} do not include this "
                                f"device's sm_{info['capability']}")
            else:  # one real call on the device
                x = torch.randn(4, 10, device=args.device)
                objx.prob_loss(x, torch.arange(4, device=args.device)).item()
    info["problems"] = problems
    ok = not problems
    print(json.dumps(info, indent=2))
    if problems:
        print("problems: " + "; ".join(problems))
    return info, ok


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["info", "memcheck", "syncs", "profile"])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="shapes of syncs/profile (default: gpu on "
                        "CUDA, tiny on CPU)")
    parser.add_argument("--dtype", default="bfloat16", help="dtype of syncs/profile (default bfloat16)")
    parser.add_argument("--dtypes", default="float32,bfloat16,float16,float64", help="memcheck's dtypes")
    parser.add_argument("--out", help="write the result as JSON here")
    args = parser.parse_args(argv)
    args.preset = args.preset or ("gpu" if torch.device(args.device).type == "cuda" else "tiny")
    args.dtype = getattr(torch, args.dtype)
    args.dtypes = [getattr(torch, d) for d in args.dtypes.split(",") if d]
    runner = {"info": run_info, "memcheck": run_memcheck, "syncs": run_syncs, "profile": run_profile}[args.mode]
    try:
        result, ok = runner(args)
    except Exception:  # noqa: BLE001 - set-up failures: say where, and fail
        traceback.print_exc()
        result, ok = {"device": args.device, "crashed": traceback.format_exc().splitlines()[-1]}, False
    if args.out:
        payload = result["syncs"] if args.mode == "syncs" and "syncs" in result else result
        with open(args.out, "w") as f:
            json.dump(payload, f, indent=2)
        if args.mode == "syncs":
            with open(args.out.replace(".json", "") + "_detail.json", "w") as f:
                json.dump(result, f, indent=2)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
