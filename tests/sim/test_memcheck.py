"""The AddressSanitizer form of the simulation build (make test-cuda-sim SANITIZE=address) is CI's
stand-in for compute-sanitizer's memcheck: a kernel reading past a tensor is reported and fails."""

import os
import subprocess
import sys

CASE = "import torch, objx; torch.ops.objx_sim.out_of_bounds(torch.rand(37), {past})"


def run(past):
    return subprocess.run([sys.executable, "-c", CASE.format(past=past)], capture_output=True, text=True,
                          env=os.environ.copy(), timeout=300)


def test_a_read_one_element_past_the_end_is_reported():
    result = run(1)
    assert result.returncode != 0
    assert "heap-buffer-overflow" in result.stderr, result.stderr[-2000:]


def test_the_last_element_is_in_bounds():
    result = run(0)
    assert result.returncode == 0, result.stderr[-2000:]
