"""The least time a bench case can take on this device: the bytes it must move at the device's
measured copy bandwidth, or its matrix FLOPs at the device's measured GEMM rate, whichever is
longer. `objx bench` prints each implementation's time over this floor.

Bytes and FLOPs per forward + backward call (s = bytes per element of the inputs' dtype; the
per-row statistics, a few floats per row, are left out):

| family | bytes | FLOPs (GEMM) |
| --- | --- | --- |
| logits (`prob_loss`) | read logits, write their gradient: 2·N·V·s | - |
| linear (`linear_prob_loss`) | hidden, head, their gradients: 2·(N + V)·D·s | 6·N·D·V (logits, grad_hidden, grad_weight) |
| distill (`distill_loss`) | student, teacher, the student's gradient: 3·N·V·s | - |
| linear-distill | both heads and hiddens, the student's gradients: (3N + 3V)·D·s | 8·N·D·V (two logits GEMMs, two gradient GEMMs) |
| divergence (`vocab_divergence`) | policy, reference, the policy's gradient: 3·N·V·s | - |
| dpo (a `DPOKernelLoss` step) | 4 logits tensors read, 2 gradients written: 6·B·T·V·s | - |

The fused heads' floor assumes the logits never reach memory (that is what fusing them buys); an
implementation that materialises them (`logits+objx`, eager, Liger's chunks in part) moves more.
"""

from __future__ import annotations

import functools
import statistics
import time
from dataclasses import dataclass
from typing import Optional

import torch


@dataclass(frozen=True)
class Peaks:
    bytes_per_s: float  # device-to-device copy: bytes read + written per second
    flops_per_s: float  # one large GEMM in the bench's dtype (float32 on CPU)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(fn, device: torch.device, repeats: int) -> float:
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@functools.cache
def measure_peaks(device: str, dtype: torch.dtype) -> Peaks:
    """Copy bandwidth and GEMM rate measured here, once per process: 1 GiB copied and an 8192³ GEMM on
    CUDA, 256 MiB and a 2048³ GEMM on CPU."""
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    numel = (2**30 if cuda else 2**28) // 4
    src = torch.empty(numel, dtype=torch.float32, device=dev).uniform_()
    dst = torch.empty_like(src)
    copy = _median_seconds(lambda: dst.copy_(src), dev, 10 if cuda else 3)
    del src, dst
    n = 8192 if cuda else 2048
    gemm_dtype = dtype if cuda and dtype in (torch.bfloat16, torch.float16) else torch.float32
    a = torch.randn(n, n, device=dev).to(gemm_dtype)
    b = torch.randn(n, n, device=dev).to(gemm_dtype)
    gemm = _median_seconds(lambda: a @ b, dev, 10 if cuda else 3)
    return Peaks(bytes_per_s=2 * numel * 4 / copy, flops_per_s=2 * n**3 / gemm)


def work(family: str, shape: tuple, dtype: torch.dtype) -> tuple[float, float]:
    """(bytes, GEMM FLOPs) of one forward + backward of a bench case, by the table above."""
    s = torch.empty((), dtype=dtype).element_size()
    if family == "logits":
        n, v = shape
        return 2 * n * v * s, 0.0
    if family == "linear":
        n, d, v = shape
        return 2 * (n + v) * d * s, 6 * n * d * v
    if family in ("distill", "divergence"):
        n, v = shape
        return 3 * n * v * s, 0.0
    if family == "linear-distill":
        n, d, v = shape
        return (3 * n + 3 * v) * d * s, 8 * n * d * v
    if family == "dpo":
        b, t, v = shape
        return 6 * b * t * v * s, 0.0
    raise ValueError(f"objx bench: no roofline for family {family!r}")


def floor_seconds(family: str, shape: tuple, dtype: torch.dtype, peaks: Optional[Peaks]) -> Optional[float]:
    if peaks is None:
        return None
    nbytes, flops = work(family, shape, dtype)
    return max(nbytes / peaks.bytes_per_s, flops / peaks.flops_per_s)
