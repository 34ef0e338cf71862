"""`objx bench`: each objective's forward+backward, on logits and fused with the LM head, against
PyTorch eager, torch.compile and (on a GPU, when installed) Liger and Cut Cross-Entropy, checked
against the float64 reference; a table and a JSON file."""

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

from .. import reference
from . import eager
from .._build import build_info
from .memory import peak_extra_bytes
from .roofline import Peaks, floor_seconds, measure_peaks
from ..sft.objective import Objective
from ..distill.logits import distill_loss
from ..distill.linear import linear_distill_loss
from ..sft.linear import linear_prob_loss
from ..sft.logits import prob_loss
from ..dpo.divergence import vocab_divergence

DEFAULT_OBJECTIVES = ["nll", "-p", "-p^10", "log1m", "-log p·1[p≥0.2]"]
# Logits shapes (N, V) and fused LM-head shapes (N, D, V) per device.
DEFAULT_SHAPES = {"cpu": [(2048, 32000)], "cuda": [(8192, 128256), (8192, 256000)]}
DEFAULT_LINEAR_SHAPES = {"cpu": [(512, 512, 32000)], "cuda": [(8192, 4096, 128256), (8192, 2304, 256000)]}
DEFAULT_LINEAR_OBJECTIVES = ["nll", "-p"]
# Distillation (logits N x V, fused N x D x V) and its methods, at temperature DISTILL_T.
DEFAULT_DISTILL_SHAPES = {"cpu": [(256, 32000)], "cuda": [(8192, 128256)]}
DEFAULT_LINEAR_DISTILL_SHAPES = {"cpu": [(256, 256, 32000)], "cuda": [(8192, 2304, 256000)]}
DEFAULT_METHODS = ["ttm", "wttm", "jsd"]
DEFAULT_LINEAR_METHODS = {"cpu": ["ttm"], "cuda": ["ttm", "jsd"]}
DISTILL_T = 2.0
# Vocabulary divergences (policy vs reference logits, N x V).
DEFAULT_DIVERGENCE_SHAPES = {"cpu": [(512, 32000)], "cuda": [(8192, 128256)]}
DEFAULT_KINDS = ["kl", "js", "hellinger", "renyi"]
# A full DPOKernelLoss step: B pairs of T tokens over V (policy and reference logits for both).
DEFAULT_DPO_SHAPES = {"cpu": [(2, 256, 32000)], "cuda": [(8, 1024, 128256)]}
DEFAULT_DTYPES = {"cpu": "float32", "cuda": "bfloat16"}
DEFAULT_REPEATS = {"cpu": 3, "cuda": 20}
# SPEC §5 tolerances (loss and gradient) by input dtype.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 2e-2}
CHECK_ROWS = 256


@dataclass
class Result:
    family: str  # "logits"/"linear" (SFT objectives), "distill"/"linear-distill" (distillation)
    impl: str
    objective: str
    shape: str
    dtype: str
    median_ms: Optional[float]
    peak_mb: Optional[float]
    check: Optional[float]  # objx: max rel. error vs float64 reference; others: loss rel. diff vs objx
    ok: bool  # objx within SPEC §5 of the reference; a peer ran
    note: str = ""
    floor_ms: Optional[float] = None  # the case's roofline floor on this device (tools/roofline.py)


def _targets(rows, vocab, device, g):
    target = torch.randint(0, vocab, (rows,), device=device, generator=g)
    target[torch.rand(rows, device=device, generator=g) < 0.05] = -100
    return target


def make_logits(rows: int, vocab: int, dtype: torch.dtype, device: torch.device, seed: int = 0):
    """Logits with gold tokens spread from unlikely to near-certain, as in a fine-tuning batch."""
    g = torch.Generator(device=device).manual_seed(seed)
    logits = torch.randn(rows, vocab, device=device, dtype=torch.float32, generator=g) * 2
    target = _targets(rows, vocab, device, g)
    boost = torch.rand(rows, device=device, generator=g) * 16
    keep = target >= 0
    logits[torch.arange(rows, device=device)[keep], target[keep]] += boost[keep]
    return (logits.to(dtype),), target


def make_head(rows: int, dim: int, vocab: int, dtype: torch.dtype, device: torch.device, seed: int = 0):
    """Hidden states and an LM head whose logits span the same range of gold probabilities."""
    g = torch.Generator(device=device).manual_seed(seed)
    weight = torch.randn(vocab, dim, device=device, generator=g) / dim**0.5
    target = _targets(rows, vocab, device, g)
    hidden = torch.randn(rows, dim, device=device, generator=g)
    hidden += weight[target.clamp(min=0)] * (torch.rand(rows, 1, device=device, generator=g) * 10)
    return (hidden.to(dtype), weight.to(dtype)), target


def make_distill(rows: int, vocab: int, dtype: torch.dtype, device: torch.device, seed: int = 0):
    """Student logits (differentiable) and teacher logits that partly agree, with targets."""
    g = torch.Generator(device=device).manual_seed(seed)
    teacher = torch.randn(rows, vocab, device=device, generator=g) * 2
    student = 0.6 * teacher + torch.randn(rows, vocab, device=device, generator=g) * 1.6
    target = _targets(rows, vocab, device, g)
    return (student.to(dtype),), (teacher.to(dtype), target)


def make_two_heads(rows: int, dim: int, vocab: int, dtype: torch.dtype, device: torch.device, seed: int = 0):
    """Student hidden + head (differentiable) and a teacher's hidden + head of the same width."""
    g = torch.Generator(device=device).manual_seed(seed)
    f = lambda *shape, s=1.0: (torch.randn(*shape, device=device, generator=g) * s).to(dtype)  # noqa: E731
    target = _targets(rows, vocab, device, g)
    return (f(rows, dim), f(vocab, dim, s=2 * dim ** -0.5)), (f(rows, dim), f(vocab, dim, s=2 * dim ** -0.5), target)


def make_policy_ref(rows: int, vocab: int, dtype: torch.dtype, device: torch.device, seed: int = 0):
    """Policy logits (differentiable) near a reference's, as between a policy and its reference model."""
    g = torch.Generator(device=device).manual_seed(seed)
    ref = torch.randn(rows, vocab, device=device, generator=g) * 2
    policy = 0.7 * ref + torch.randn(rows, vocab, device=device, generator=g)
    return (policy.to(dtype),), (ref.to(dtype),)


def make_dpo_batch(pairs: int, tokens: int, vocab: int, dtype: torch.dtype, device: torch.device, seed: int = 0):
    """Policy logits for chosen and rejected (differentiable), reference logits and labels."""
    g = torch.Generator(device=device).manual_seed(seed)
    f = lambda: torch.randn(pairs, tokens, vocab, device=device, generator=g).to(dtype)  # noqa: E731
    labels = [torch.randint(0, vocab, (pairs, tokens), device=device, generator=g) for _ in range(2)]
    for lab in labels:
        lab[:, : tokens // 4] = -100  # prompt
    return (f(), f()), (f(), f(), labels[0], labels[1])


def _rel(a, b):
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-300)).item()


def check_against_reference(family: str, objective: Objective, bases, target) -> float:
    """Max relative error of objx's per-row losses and every gradient on a sample of rows."""
    if family in ("distill", "linear-distill"):
        return _check_distill(family, objective, bases, target)
    if family == "dpo":  # composed of the ops checked above: compare the step with its eager twin
        ours = dpo_implementations("", bases[0].device, False)
        a, b = ours["objx"][0](*bases, *target), ours["eager"][0](*bases, *target)
        return _rel(a, b)
    if family == "divergence":
        z, ref = bases[0][:CHECK_ROWS], target[0][:CHECK_ROWS]
        a = z.detach().clone().requires_grad_()
        b = z.detach().double().cpu().requires_grad_()
        ours = vocab_divergence(a, ref, objective)
        expected = reference.vocab_divergence(b, ref.double().cpu(), objective)
        if objective == "tv":  # its gradient steps at p_j = q_j, where precisions may disagree: value only
            return _rel(ours, expected)
        ours.sum().backward()
        expected.sum().backward()
        return max(_rel(ours, expected), _rel(a.grad, b.grad))
    idx = torch.randperm(target.shape[0], generator=torch.Generator().manual_seed(1))[:CHECK_ROWS]
    idx = idx.to(target.device)
    y = target[idx]
    if family == "logits":
        bases = (bases[0][idx],)
        ours_fn, ref_fn = prob_loss, reference.prob_loss
    else:
        bases = (bases[0][idx], bases[1])
        ours_fn, ref_fn = linear_prob_loss, reference.linear_prob_loss
    ours_in = [b.detach().clone().requires_grad_() for b in bases]
    ref_in = [b.detach().double().cpu().requires_grad_() for b in bases]
    ours = ours_fn(*ours_in, y, objective=objective, reduction="none")
    ref = ref_fn(*ref_in, y.cpu(), objective=objective, reduction="none")
    ours.sum().backward()
    ref.sum().backward()
    return max([_rel(ours, ref)] + [_rel(a.grad, b.grad) for a, b in zip(ours_in, ref_in)])


def _check_distill(family, method, bases, extra) -> float:
    """Max relative error of objx's per-row distillation losses and student gradients on sampled rows."""
    target = extra[-1]
    idx = torch.randperm(target.shape[0], generator=torch.Generator().manual_seed(1))[:CHECK_ROWS].to(target.device)
    y = target[idx]
    kw = dict(method=method, temperature=DISTILL_T, reduction="none")
    if family == "distill":
        bases, fixed = (bases[0][idx],), (extra[0][idx],)
        ours_fn = lambda s, t, y_: distill_loss(s, t, y_, **kw)  # noqa: E731
        ref_fn = lambda s, t, y_: reference.distill_loss(s, t, y_, **kw)  # noqa: E731
    else:
        bases, fixed = (bases[0][idx], bases[1]), (extra[0][idx], extra[1])
        ours_fn = lambda h, w, th, tw, y_: linear_distill_loss(h, w, th, tw, y_, grad_in_forward=False, **kw)  # noqa: E731
        ref_fn = lambda h, w, th, tw, y_: reference.linear_distill_loss(h, w, th, tw, y_, **kw)  # noqa: E731
    ours_in = [b.detach().clone().requires_grad_() for b in bases]
    ref_in = [b.detach().double().cpu().requires_grad_() for b in bases]
    ours = ours_fn(*ours_in, *fixed, y)
    ref = ref_fn(*ref_in, *[f.double().cpu() for f in fixed], y.cpu())
    ours.sum().backward()
    ref.sum().backward()
    return max([_rel(ours, ref)] + [_rel(a.grad, b.grad) for a, b in zip(ours_in, ref_in)])


def distill_implementations(method: str, device: torch.device, use_compile: bool) -> dict:
    """name -> (callable(student, teacher, target) -> loss, needs a fresh copy of the input)."""
    kw = dict(method=method, temperature=DISTILL_T)
    eager_fn = lambda s, t, y: reference.distill_loss(s, t, y, dtype=torch.float32, **kw)  # noqa: E731
    impls = {"objx": (lambda s, t, y: distill_loss(s, t, y, **kw), False), "eager": (eager_fn, False)}
    if use_compile:
        impls["compile"] = (torch.compile(eager_fn), False)
    return impls


def linear_distill_implementations(method: str, device: torch.device, use_compile: bool) -> dict:
    """name -> (callable(student_hidden, student_weight, teacher_hidden, teacher_weight, target) -> loss, ...)."""
    kw = dict(method=method, temperature=DISTILL_T)
    eager_fn = lambda h, w, th, tw, y: reference.distill_loss(h @ w.T, th @ tw.T, y, dtype=torch.float32, **kw)  # noqa: E731
    impls = {
        "objx": (lambda h, w, th, tw, y: linear_distill_loss(h, w, th, tw, y, **kw), False),
        "objx-recompute": (lambda h, w, th, tw, y: linear_distill_loss(h, w, th, tw, y, grad_in_forward=False, **kw),
                           False),
        "logits+objx": (lambda h, w, th, tw, y: distill_loss(h @ w.T, th @ tw.T, y, **kw), False),
        "eager": (eager_fn, False),
    }
    if use_compile:
        impls["compile"] = (torch.compile(eager_fn), False)
    if device.type == "cuda" and method == "jsd":
        try:
            from liger_kernel.transformers import LigerFusedLinearJSDLoss

            # Liger's fused JSD (soft term only here; its beta convention matches SPEC's jsd).
            liger = LigerFusedLinearJSDLoss(weight_hard_loss=0.0, weight_soft_loss=1.0, beta=0.5,
                                            temperature=DISTILL_T)
            impls["liger"] = (lambda h, w, th, tw, y: liger(h, w, th, tw, y), False)
        except Exception:  # noqa: BLE001 - optional peer
            pass
    return impls


def divergence_implementations(kind: str, device: torch.device, use_compile: bool) -> dict:
    """name -> (callable(policy, ref) -> scalar, needs a fresh copy of the input)."""
    eager_fn = lambda z, r: reference.vocab_divergence(z, r, kind, dtype=torch.float32).mean()  # noqa: E731
    impls = {"objx": (lambda z, r: vocab_divergence(z, r, kind).mean(), False), "eager": (eager_fn, False)}
    if use_compile:
        impls["compile"] = (torch.compile(eager_fn), False)
    return impls


def dpo_implementations(kind: str, device: torch.device, use_compile: bool) -> dict:
    """A DPOKernelLoss step (hellinger divergence term, NLL term) against the same in eager PyTorch."""
    from ..dpo.module import DPOKernelLoss

    module = DPOKernelLoss(beta=0.1, divergence="hellinger", divergence_coef=0.1, nll_coef=0.1)

    def eager_fn(pw, pl, rw, rl, yw, yl):
        def seq(lg, y):
            lp = torch.log_softmax(lg.float(), -1).gather(-1, y.clamp(min=0)[..., None]).squeeze(-1)
            return lp * (y != -100)
        sw, sl = seq(pw, yw), seq(pl, yl)
        with torch.no_grad():
            rsw, rsl = seq(rw, yw).sum(-1), seq(rl, yl).sum(-1)
        z = 0.1 * ((sw.sum(-1) - rsw) - (sl.sum(-1) - rsl))
        m = yw != -100
        div = reference.vocab_divergence(pw, rw, "hellinger", dtype=torch.float32)[m].mean()
        return -torch.nn.functional.logsigmoid(z).mean() + 0.1 * div - 0.1 * sw.sum() / m.sum()

    impls = {"objx": (lambda *a: module(*a)[0], False), "eager": (eager_fn, False)}
    if use_compile:
        impls["compile"] = (torch.compile(eager_fn), False)
    return impls


@functools.cache
def _unit_class_weight(vocab: int, device: torch.device) -> torch.Tensor:
    """Class weights of 1: the weighted kernels' full cost, and the loss the other rows check."""
    return torch.ones(vocab, device=device)


def logits_implementations(objective: Objective, device: torch.device, use_compile: bool) -> dict:
    """name -> (callable(logits, target) -> loss, needs a fresh copy of the input each call)."""
    impls: dict[str, tuple[Callable, bool]] = {
        "objx": (lambda x, y: prob_loss(x, y, objective), False),
        "objx+weight": (lambda x, y: prob_loss(x, y, objective, weight=_unit_class_weight(x.shape[-1], x.device)),
                        False),
        "objx+stats": (lambda x, y: prob_loss(x, y, objective, return_stats=True)[0], False),
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


def linear_implementations(objective: Objective, device: torch.device, use_compile: bool) -> dict:
    """name -> (callable(hidden, weight, target) -> loss, needs fresh inputs each call)."""
    materialised = lambda h, w, y: prob_loss(h @ w.T, y, objective)  # noqa: E731
    eager_fn = lambda h, w, y: eager.prob_loss(h @ w.T, y, objective)  # noqa: E731
    impls: dict[str, tuple[Callable, bool]] = {
        "objx": (lambda h, w, y: linear_prob_loss(h, w, y, objective=objective), False),
        "objx-tiles": (lambda h, w, y: linear_prob_loss(h, w, y, objective=objective, grad_in_forward=False), False),
        "objx+weight": (lambda h, w, y: linear_prob_loss(h, w, y, objective=objective,
                                                         ce_weight=_unit_class_weight(w.shape[0], w.device)), False),
        "objx+stats": (lambda h, w, y: linear_prob_loss(h, w, y, objective=objective, return_stats=True)[0], False),
        "logits+objx": (materialised, False),
        "eager": (eager_fn, False),
    }
    if use_compile:
        impls["compile"] = (torch.compile(eager_fn), False)
    if device.type == "cuda" and objective == Objective("nll"):
        try:
            from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

            liger = LigerFusedLinearCrossEntropyLoss()
            impls["liger"] = (lambda h, w, y: liger(w, h, y), False)
        except Exception:  # noqa: BLE001
            pass
        try:
            from cut_cross_entropy import linear_cross_entropy

            impls["cce"] = (lambda h, w, y: linear_cross_entropy(h, w, y), False)
        except Exception:  # noqa: BLE001
            pass
    return impls


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _leaves(bases, clone_input: bool):
    return [(b.detach().clone() if clone_input else b.detach()).requires_grad_() for b in bases]


def _extra(target):
    """The non-differentiable inputs after the differentiable ones: a target, or (teacher..., target)."""
    return target if isinstance(target, tuple) else (target,)


def fwd_bwd_once(fn, bases, target, clone_input: bool):
    leaves = _leaves(bases, clone_input)
    loss = fn(*leaves, *_extra(target))
    loss.backward()
    return loss.detach(), [x.grad for x in leaves]


def time_once(fn, bases, target, clone_input: bool) -> float:
    device = bases[0].device
    leaves = _leaves(bases, clone_input)
    _sync(device)
    t0 = time.perf_counter()
    fn(*leaves, *_extra(target)).backward()
    _sync(device)
    return time.perf_counter() - t0


def time_interleaved(fns: dict, bases, target, repeats: int) -> dict:
    """name -> median seconds of fwd+bwd. The implementations take turns, the first of each round
    moving one place on every round: whichever runs first after a warm-up pays for fresh memory and
    the machine's drift, so no implementation always does."""
    names = list(fns)
    times = {name: [] for name in names}
    for k in range(repeats):
        for name in names[k % len(names):] + names[: k % len(names)]:
            fn, clone_input = fns[name]
            times[name].append(time_once(fn, bases, target, clone_input))
    return {name: statistics.median(ts) for name, ts in times.items()}


# family -> (inputs maker, implementations for one objective / method / kind)
FAMILIES = {
    "logits": (make_logits, logits_implementations),
    "linear": (make_head, linear_implementations),
    "distill": (make_distill, distill_implementations),
    "linear-distill": (make_two_heads, linear_distill_implementations),
    "divergence": (make_policy_ref, divergence_implementations),
    "dpo": (make_dpo_batch, dpo_implementations),
}


def run_case(family, shape, objective, dt, dev, repeats, use_compile, bar=None, peaks: Optional[Peaks] = None
             ) -> list[Result]:
    make_inputs, implementations = FAMILIES[family]
    floor = floor_seconds(family, shape, dt, peaks)
    floor_ms = None if floor is None else floor * 1e3
    bases, target = make_inputs(*shape, dt, dev)
    impls = implementations(objective, dev, use_compile)
    shape_s = "x".join(str(v) for v in shape)
    dtype_s = str(dt).split(".")[-1]
    results, failed, losses, peaks_mb, notes = [], {}, {}, {}, {}
    for name, (fn, clone_input) in impls.items():
        if bar is not None:
            bar.set_postfix_str(f"{family} {getattr(objective, 'name', objective)} {name} {shape_s}")
        try:
            losses[name], _ = fwd_bwd_once(fn, bases, target, clone_input)  # warm-up (and compile)
            fwd_bwd_once(fn, bases, target, clone_input)
        except Exception as e:  # noqa: BLE001 - a peer failing is a result, not a crash
            failed[name] = f"failed: {type(e).__name__}: {e}"[:200]
            continue
        # Peaks before any timing round, so the first implementation's is clean (see bench/README).
        try:
            peak = peak_extra_bytes(lambda: fwd_bwd_once(fn, bases, target, clone_input), dev)
            peaks_mb[name] = None if peak is None else peak / 2**20
        except Exception as e:  # noqa: BLE001 - e.g. out of memory in a peer's measured call
            peaks_mb[name], notes[name] = None, f"peak not measured: {type(e).__name__}: {e}"[:200]
    running = {name: impls[name] for name in impls if name not in failed}
    medians = time_interleaved(running, bases, target, repeats)
    objx_loss = losses["objx"].float() if "objx" in losses else None
    for name, (fn, clone_input) in impls.items():
        if name in failed:
            results.append(Result(family, name, getattr(objective, "name", objective), shape_s, dtype_s, None, None, None,
                                  not name.startswith("objx"), failed[name], floor_ms))
            continue
        note = notes.get(name, "")
        loss = losses[name]
        if name == "objx":
            check = check_against_reference(family, objective, bases, target)
            ok = check <= TOLERANCE[dt]
        elif objx_loss is None:  # objx failed (its own row says why): nothing to compare with
            check, ok = None, not name.startswith("objx")
        else:
            # Peers are compared with objx, which is itself checked against float64 above; a
            # difference is information about the peer's rounding, not a failure of objx.
            check = ((loss.float() - objx_loss).abs() / objx_loss.abs().clamp(min=1e-30)).item()
            ok = not name.startswith("objx") or check <= max(TOLERANCE[dt], 1e-5)
            if check > TOLERANCE[dt]:
                note = "loss differs from objx (objx is checked against float64)"
        results.append(Result(family, name, getattr(objective, "name", objective), shape_s, dtype_s,
                              medians[name] * 1e3, peaks_mb[name], check, ok, note, floor_ms))
    return results


def run(device: str = None, shapes=None, linear_shapes=None, dtype: str = None, objectives=None,
        repeats: int = None, use_compile: bool = True, progress: bool = True, distill_shapes=None,
        linear_distill_shapes=None, methods=None, divergence_shapes=None, kinds=None,
        dpo_shapes=None, peaks: Optional[Peaks] = None) -> list[Result]:
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dt = getattr(torch, dtype or DEFAULT_DTYPES[dev.type])
    if repeats is not None and repeats < 1:  # 0 used to fall back to the default silently
        raise ValueError(f"objx bench: repeats must be at least 1, got {repeats}")
    repeats = DEFAULT_REPEATS[dev.type] if repeats is None else repeats
    if all(x is None for x in (shapes, linear_shapes, distill_shapes, linear_distill_shapes, divergence_shapes,
                               dpo_shapes)):
        shapes, linear_shapes = DEFAULT_SHAPES[dev.type], DEFAULT_LINEAR_SHAPES[dev.type]
        distill_shapes = DEFAULT_DISTILL_SHAPES[dev.type]
        linear_distill_shapes = DEFAULT_LINEAR_DISTILL_SHAPES[dev.type]
        divergence_shapes = DEFAULT_DIVERGENCE_SHAPES[dev.type]
        dpo_shapes = DEFAULT_DPO_SHAPES[dev.type]
    cases = [("logits", s, Objective.parse(o)) for s in (shapes or []) for o in (objectives or DEFAULT_OBJECTIVES)]
    cases += [("linear", s, Objective.parse(o)) for s in (linear_shapes or [])
              for o in (objectives or DEFAULT_LINEAR_OBJECTIVES)]
    cases += [("distill", s, m) for s in (distill_shapes or []) for m in (methods or DEFAULT_METHODS)]
    cases += [("linear-distill", s, m) for s in (linear_distill_shapes or [])
              for m in (methods or DEFAULT_LINEAR_METHODS[dev.type])]
    cases += [("divergence", s, k) for s in (divergence_shapes or []) for k in (kinds or DEFAULT_KINDS)]
    cases += [("dpo", s, "step") for s in (dpo_shapes or [])]
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    bar = tqdm(cases, desc="objx bench", file=sys.stderr) if tqdm and progress else None
    results = []
    for family, shape, objective in (bar if bar is not None else cases):
        results += run_case(family, shape, objective, dt, dev, repeats, use_compile, bar, peaks)
    return results


def format_table(results: list[Result]) -> str:
    by_case = {}
    for r in results:
        by_case.setdefault((r.family, r.objective, r.shape, r.dtype), {})[r.impl] = r
    head = (f"{'family':<14} {'objective':<16} {'shape':<18} {'dtype':<9} {'impl':<12} {'median ms':>10} "
            f"{'peak MB':>9} {'time/objx':>9} {'mem/objx':>9} {'floor ms':>9} {'time/floor':>10} {'check':>9}  ok")
    lines = [head, "-" * len(head)]
    for (family, objective, shape, dtype), impls in by_case.items():
        base = impls.get("objx")
        for r in impls.values():
            t_ratio = (f"{r.median_ms / base.median_ms:.2f}x" if base and base.median_ms and r.median_ms else "-")
            m_ratio = (f"{r.peak_mb / base.peak_mb:.2f}x" if base and base.peak_mb and r.peak_mb else "-")
            ms = f"{r.median_ms:.2f}" if r.median_ms is not None else "-"
            mb = f"{r.peak_mb:.1f}" if r.peak_mb is not None else "-"
            chk = f"{r.check:.1e}" if r.check is not None else "-"
            floor = f"{r.floor_ms:.3g}" if r.floor_ms else "-"
            f_ratio = f"{r.median_ms / r.floor_ms:.2f}x" if r.floor_ms and r.median_ms else "-"
            lines.append(f"{family:<14} {objective:<16} {shape:<18} {dtype:<9} {r.impl:<12} {ms:>10} {mb:>9} "
                         f"{t_ratio:>9} {m_ratio:>9} {floor:>9} {f_ratio:>10} {chk:>9}  {'ok' if r.ok else 'FAIL'}"
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
    """args from `objx bench` (tools/cli.py), which has already parsed and checked every shape
    (tuples of positive ints), the device, the objectives and the repeat count."""
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype or DEFAULT_DTYPES[torch.device(device).type])
    peaks = measure_peaks(device, dtype)
    results = run(device, args.shape, args.linear_shape, args.dtype, args.objective, args.repeats,
                  not args.no_compile, progress=not args.quiet, distill_shapes=args.distill_shape,
                  linear_distill_shapes=args.linear_distill_shape, methods=args.method,
                  divergence_shapes=args.divergence_shape, kinds=args.kind, dpo_shapes=args.dpo_shape, peaks=peaks)
    env = environment(device)
    env["peaks"] = {"copy_gb_per_s": peaks.bytes_per_s / 1e9, "gemm_tflop_per_s": peaks.flops_per_s / 1e12}
    print(f"objx bench on {env['device_name']} ({device}, {env['cpu_threads']} CPU threads), "
          f"fwd+bwd, median of {args.repeats or DEFAULT_REPEATS[torch.device(device).type]} runs; "
          f"time/objx and mem/objx > 1 mean objx is faster / lighter")
    print(f"floor: the case's bytes at {peaks.bytes_per_s / 1e9:.0f} GB/s (copy) or its GEMM FLOPs at "
          f"{peaks.flops_per_s / 1e12:.3g} TFLOP/s ({str(dtype).split('.')[-1]} GEMM), both measured now; "
          f"time/floor = 1 is the roofline (objx.tools.roofline)")
    print(format_table(results))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"environment": env, "results": [asdict(r) for r in results]}, f, indent=2)
        print(f"wrote {args.out}")
    return 0 if all(r.ok for r in results) else 1
