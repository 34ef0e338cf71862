"""Every __global__ kernel in csrc was launched by the suite, for every dtype it is instantiated
for: run after the suite, on the report the simulator wrote (OBJX_CUDA_SIM_REPORT)."""

import json
import os
import pathlib
import re

CSRC = pathlib.Path(__file__).resolve().parents[2] / "csrc"
KERNEL = re.compile(r"__global__ void (?:__launch_bounds__\(\w+\)\s*)?(\w+)\(")
LAUNCH = re.compile(r"OBJX_LAUNCH\([^;]*?(\w+_kernel)<")
# The dtypes a kernel is instantiated for: those of the AT_DISPATCH around its launch.
DISPATCH = {"AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf,": ("float", "double", "c10::BFloat16", "c10::Half"),
            "AT_DISPATCH_FLOATING_TYPES(": ("float", "double")}


def expected():
    kernels, wanted = set(), set()
    for path in sorted(CSRC.glob("*/cuda.cu")):
        text = path.read_text()
        kernels.update(KERNEL.findall(text))
        for launch in LAUNCH.finditer(text):
            before = text[:launch.start()]
            macro = max(DISPATCH, key=before.rfind)
            assert before.rfind(macro) >= 0, f"{launch.group(1)}: no AT_DISPATCH before its launch"
            wanted.update(f"{launch.group(1)}<{dtype}" for dtype in DISPATCH[macro])
    launched = {w.split("<")[0] for w in wanted}
    assert kernels == launched, f"kernels never launched through OBJX_LAUNCH: {sorted(kernels - launched)}"
    return sorted(wanted)


def test_every_kernel_ran_for_every_dtype():
    report = json.loads(pathlib.Path(os.environ["OBJX_CUDA_SIM_REPORT"]).read_text())
    wanted = list(expected())
    assert len(wanted) >= 20, "found too few kernels in csrc: the pattern is stale"
    missing = [w for w in wanted if not any(key.startswith(w) for key in report)]
    assert not missing, f"never launched: {missing}"
