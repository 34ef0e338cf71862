"""objx bench's roofline floor (objx.tools.roofline): the bytes and FLOPs of each family by its
table, the floor as the longer of the two at the device's measured peaks, and the bench's column."""

import pytest
import torch

from objx.tools import bench, roofline


@pytest.mark.cpu_only
def test_work_by_family():
    assert roofline.work("logits", (8, 100), torch.bfloat16) == (2 * 8 * 100 * 2, 0.0)
    assert roofline.work("divergence", (8, 100), torch.float32) == (3 * 8 * 100 * 4, 0.0)
    assert roofline.work("linear", (8, 16, 100), torch.float32) == (2 * (8 + 100) * 16 * 4, 6 * 8 * 16 * 100)
    assert roofline.work("linear-distill", (8, 16, 100), torch.float16) == ((24 + 300) * 16 * 2, 8 * 8 * 16 * 100)
    assert roofline.work("dpo", (2, 5, 100), torch.float32) == (6 * 2 * 5 * 100 * 4, 0.0)
    with pytest.raises(ValueError, match="no roofline for family 'nope'"):
        roofline.work("nope", (1, 1), torch.float32)


@pytest.mark.cpu_only
def test_floor_is_the_longer_of_bytes_and_flops():
    peaks = roofline.Peaks(bytes_per_s=1e9, flops_per_s=1e12)
    memory_bound = roofline.floor_seconds("logits", (1000, 1000), torch.float32, peaks)
    assert memory_bound == pytest.approx(8e6 / 1e9)
    nbytes, flops = roofline.work("linear", (4096, 4096, 4096), torch.float32)
    assert flops / 1e12 > nbytes / 1e9
    assert roofline.floor_seconds("linear", (4096, 4096, 4096), torch.float32, peaks) == pytest.approx(flops / 1e12)
    assert roofline.floor_seconds("logits", (10, 10), torch.float32, None) is None


@pytest.mark.cpu_only
def test_peaks_are_measured_and_the_table_prints_time_over_floor():
    peaks = roofline.measure_peaks("cpu", torch.float32)
    assert 1e8 < peaks.bytes_per_s < 1e13 and 1e8 < peaks.flops_per_s < 1e15
    results = bench.run("cpu", shapes=[(16, 64)], objectives=["nll"], repeats=1, use_compile=False, progress=False,
                        peaks=peaks)
    floor = roofline.floor_seconds("logits", (16, 64), torch.float32, peaks) * 1e3
    assert all(r.floor_ms == pytest.approx(floor) for r in results)
    table = bench.format_table(results)
    assert "time/floor" in table.splitlines()[0]
    objx_row = next(line for line in table.splitlines() if " objx " in line)
    assert f"{results[0].median_ms / floor:.2f}x" in objx_row
