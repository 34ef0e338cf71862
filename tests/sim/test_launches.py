"""Every __global__ kernel in csrc was launched by the suite, for every dtype it is instantiated
for: run after the suite, on the report the simulator wrote (OBJX_CUDA_SIM_REPORT)."""

import json
import os
import pathlib
import re

CSRC = pathlib.Path(__file__).resolve().parents[2] / "csrc"
# Kernels templated on the input dtype run for all four; on the accumulation dtype alone, for two.
SCALARS = ("float", "double", "c10::BFloat16", "c10::Half")
ACCS = ("float", "double")
KERNEL = re.compile(r"template <([^>]*)>\s*__global__ void (?:__launch_bounds__\(\w+\)\s*)?(\w+)\(")


def expected():
    for path in sorted(CSRC.glob("*/cuda.cu")):
        for params, name in KERNEL.findall(path.read_text()):
            for dtype in SCALARS if "scalar_t" in params else ACCS:
                yield f"{name}<{dtype}"


def test_every_kernel_ran_for_every_dtype():
    report = json.loads(pathlib.Path(os.environ["OBJX_CUDA_SIM_REPORT"]).read_text())
    wanted = list(expected())
    assert len(wanted) >= 20, "found too few kernels in csrc: the pattern is stale"
    missing = [w for w in wanted if not any(key.startswith(w) for key in report)]
    assert not missing, f"never launched: {missing}"
