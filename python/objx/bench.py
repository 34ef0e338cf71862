"""`objx bench`: each objective's forward+backward against PyTorch eager, torch.compile and (on a
GPU, when installed) Liger, checked against the float64 reference; a table and a JSON file."""

from __future__ import annotations

import datetime
import functools
import json
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional

import torch

from . import eager, reference
from ._build import build_info
from ._memory import peak_extra_bytes
from .objective import Objective
from .prob_loss import prob_loss

DEFAULT_OBJECTIVES = ["nll", "-p", "-p^10", "log1m", "-log p·1[p≥0.2]"]
DEFAULT_SHAPES = {"cpu": [(2048, 32000)], "cuda": [(8192, 128256), (8192, 256000)]}
DEFAULT_DTYPES = {"cpu": "float32", "cuda": "bfloat16"}
DEFAULT_REPEATS = {"cpu": 5, "cuda": 20}
# SPEC §5 tolerances (loss and gradient) by input dtype.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 2e-2}
CHECK_ROWS = 256


@dataclass
class Result:
    impl: str
    objective: str
    rows: int
    vocab: int
    dtype: str
    median_ms: Optional[float]
    peak_mb: Optional[float]
    check: Optional[float]  # objx: max rel. error vs float64 reference; others: loss rel. diff vs objx
    ok: bool  # objx within SPEC §5 of the reference; a peer ran
    note: str = ""


def make_inputs(rows: int, vocab: int, dtype: torch.dtype, device: torch.device, seed: int = 0):
    """Logits with gold tokens spread from unlikely to near-certain, as in a fine-tuning batch."""
    g = torch.Generator(device=device).manual_seed(seed)
    logits = torch.randn(rows, vocab, device=device, dtype=torch.float32, generator=g) * 2
    target = torch.randint(0, vocab, (rows,), device=device, generator=g)
    boost = torch.rand(rows, device=device, generator=g) * 16
    logits[torch.arange(rows, device=device), target] += boost
    target[torch.rand(rows, device=device, generator=g) < 0.05] = -100
    return logits.to(dtype), target


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fwd_bwd_once(fn, base, target, clone_input: bool):
    x = (base.detach().clone() if clone_input else base.detach()).requires_grad_()
    loss = fn(x, target)
    loss.backward()
    return loss.detach(), x.grad


def time_fwd_bwd(fn, base, target, repeats: int, clone_input: bool) -> float:
    device = base.device
    times = []
    for _ in range(repeats):
        x = (base.detach().clone() if clone_input else base.detach()).requires_grad_()
        _sync(device)
        t0 = time.perf_counter()
        fn(x, target).backward()
        _sync(device)
        times.append(time.perf_counter() - t0)
        del x
    return statistics.median(times)


def check_against_reference(objective: Objective, logits, target) -> float:
    """Max relative error of objx's per-row losses and gradients on a sample of rows."""
    idx = torch.randperm(logits.shape[0], generator=torch.Generator().manual_seed(1))[:CHECK_ROWS]
    idx = idx.to(logits.device)
    z, y = logits[idx].detach(), target[idx]
    ours_in = z.clone().requires_grad_()
    ref_in = z.double().cpu().requires_grad_()
    ours = prob_loss(ours_in, y, objective, reduction="none")
    ref = reference.prob_loss(ref_in, y.cpu(), objective, reduction="none")
    ours.sum().backward()
    ref.sum().backward()

    def rel(a, b):
        a, b = a.detach().double().cpu(), b.detach().double()
        return ((a - b).abs().max() / b.abs().max().clamp(min=1e-300)).item()

    return max(rel(ours, ref), rel(ours_in.grad, ref_in.grad))


def implementations(objective: Objective, device: torch.device, use_compile: bool) -> dict:
    """name -> (callable(logits, target) -> loss, needs a fresh copy of the input each call)."""
    impls: dict[str, tuple[Callable, bool]] = {
        "objx": (lambda x, y: prob_loss(x, y, objective), False),
        "eager": (functools.partial(eager.prob_loss, objective=objective), False),
    }
    if use_compile:
        impls["compile"] = (torch.compile(functools.partial(eager.prob_loss, objective=objective)), False)
    if device.type == "cuda" and objective == Objective("nll"):
        try:
            from liger_kernel.transformers import LigerCrossEntropyLoss

            impls["liger"] = (LigerCrossEntropyLoss(), True)  # writes its gradient into the input
        except Exception:  # noqa: BLE001 - optional peer; absent or broken means "not compared"
            pass
    return impls


def run(device: str = None, shapes=None, dtype: str = None, objectives=None, repeats: int = None,
        use_compile: bool = True, progress: bool = True) -> list[Result]:
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    shapes = shapes or DEFAULT_SHAPES[dev.type]
    dt = getattr(torch, dtype or DEFAULT_DTYPES[dev.type])
    objectives = [Objective.parse(o) for o in (objectives or DEFAULT_OBJECTIVES)]
    repeats = repeats or DEFAULT_REPEATS[dev.type]
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    cases = [(s, o) for s in shapes for o in objectives]
    bar = tqdm(cases, desc="objx bench", file=sys.stderr, disable=not progress) if tqdm else cases
    results = []
    for (rows, vocab), objective in bar:
        logits, target = make_inputs(rows, vocab, dt, dev)
        objx_loss = None
        for name, (fn, clone_input) in implementations(objective, dev, use_compile).items():
            if tqdm and progress:
                bar.set_postfix_str(f"{objective.name} {name} {rows}x{vocab}")
            note = ""
            try:
                loss, _ = fwd_bwd_once(fn, logits, target, clone_input)  # warm-up (and compile)
                fwd_bwd_once(fn, logits, target, clone_input)
                median = time_fwd_bwd(fn, logits, target, repeats, clone_input)
                peak = peak_extra_bytes(lambda: fwd_bwd_once(fn, logits, target, clone_input), dev)
            except Exception as e:  # noqa: BLE001 - a peer failing is a result, not a crash
                results.append(Result(name, objective.name, rows, vocab, str(dt).split(".")[-1],
                                      None, None, None, name != "objx", f"failed: {type(e).__name__}: {e}"[:200]))
                continue
            if name == "objx":
                objx_loss = loss.float()
                check = check_against_reference(objective, logits, target)
                ok = check <= TOLERANCE[dt]
            else:
                # Peers are compared with objx, which is itself checked against float64 above; a
                # difference is information about the peer's rounding, not a failure of objx.
                check = ((loss.float() - objx_loss).abs() / objx_loss.abs().clamp(min=1e-30)).item()
                ok = True
                if check > TOLERANCE[dt]:
                    note = "loss differs from objx (objx is checked against float64)"
            results.append(Result(name, objective.name, rows, vocab, str(dt).split(".")[-1],
                                  median * 1e3, None if peak is None else peak / 2**20, check, ok, note))
        del logits, target
    return results


def format_table(results: list[Result]) -> str:
    by_case = {}
    for r in results:
        by_case.setdefault((r.objective, r.rows, r.vocab, r.dtype), {})[r.impl] = r
    head = (f"{'objective':<18} {'shape':<14} {'dtype':<9} {'impl':<8} {'median ms':>10} {'peak MB':>9} "
            f"{'time/objx':>9} {'mem/objx':>9} {'check':>9}  ok")
    lines = [head, "-" * len(head)]
    for (objective, rows, vocab, dtype), impls in by_case.items():
        base = impls.get("objx")
        for r in impls.values():
            t_ratio = (f"{r.median_ms / base.median_ms:.2f}x" if base and base.median_ms and r.median_ms else "-")
            m_ratio = (f"{r.peak_mb / base.peak_mb:.2f}x" if base and base.peak_mb and r.peak_mb else "-")
            ms = f"{r.median_ms:.2f}" if r.median_ms is not None else "-"
            mb = f"{r.peak_mb:.1f}" if r.peak_mb is not None else "-"
            chk = f"{r.check:.1e}" if r.check is not None else "-"
            lines.append(f"{objective:<18} {f'{rows}x{vocab}':<14} {dtype:<9} {r.impl:<8} {ms:>10} {mb:>9} "
                         f"{t_ratio:>9} {m_ratio:>9} {chk:>9}  {'ok' if r.ok else 'FAIL'}"
                         + (f"  {r.note}" if r.note else ""))
    return "\n".join(lines)


def environment(device: str) -> dict:
    dev = torch.device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else (platform.processor() or platform.machine())
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device,
        "device_name": name,
        "cpu_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "build": build_info(),
    }


def main(args) -> int:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    shapes = [tuple(int(v) for v in s.lower().split("x")) for s in args.shape] if args.shape else None
    results = run(device, shapes, args.dtype, args.objective, args.repeats, not args.no_compile,
                  progress=not args.quiet)
    env = environment(device)
    print(f"objx bench on {env['device_name']} ({device}, {env['cpu_threads']} CPU threads), "
          f"fwd+bwd, median of {args.repeats or DEFAULT_REPEATS[torch.device(device).type]} runs; "
          f"time/objx and mem/objx > 1 mean objx is faster / lighter")
    print(format_table(results))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"environment": env, "results": [asdict(r) for r in results]}, f, indent=2)
        print(f"wrote {args.out}")
    return 0 if all(r.ok for r in results) else 1
