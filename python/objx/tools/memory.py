"""Peak extra memory of a callable: the device allocator's peak on CUDA, the process's peak
resident set (Linux VmHWM, reset through /proc/self/clear_refs) on CPU."""

import gc
import re

import torch


def _proc_status(key: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{key}:\s+(\d+) kB", f.read()).group(1)) * 1024


def cpu_peak_supported() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        _proc_status("VmHWM")
        return True
    except (OSError, AttributeError):
        return False


def peak_extra_bytes(fn, device: torch.device):
    """Bytes allocated at the peak of fn() beyond what was live before it; None if unmeasurable."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    if not cpu_peak_supported():
        fn()
        return None
    base = _proc_status("VmRSS")
    fn()
    return max(_proc_status("VmHWM") - base, 0)
