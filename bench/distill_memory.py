"""Peak extra memory and time of one fused-distillation implementation, CPU fp32, N=4096 D=1024
V=65536, method ttm at T=2. Run each implementation in a fresh process (glibc keeps freed memory
resident, so a second measurement in one process reads low):

    for i in objx objx-recompute logits+objx eager; do python bench/distill_memory.py $i; done
"""
import sys, time, json, torch
from objx.tools.bench import make_two_heads, linear_distill_implementations, fwd_bwd_once
from objx.tools.memory import peak_extra_bytes
dev = torch.device("cpu")
bases, extra = make_two_heads(4096, 1024, 65536, torch.float32, dev)
fn, clone = linear_distill_implementations("ttm", dev, use_compile=False)[sys.argv[1]]
t0 = time.perf_counter()
peak = peak_extra_bytes(lambda: fwd_bwd_once(fn, bases, extra, clone), dev)
print(json.dumps({"impl": sys.argv[1], "peak_mb": round(peak / 2**20, 1), "seconds": round(time.perf_counter() - t0, 2)}))
