"""How the fused LM-head losses slice their work: how many bytes one logits tile may take, and the
slicing keywords (SPEC §0: a vocabulary tile is a range of columns, a row block a range of rows)."""

import numbers
import warnings
from typing import Optional

import torch

# CPU: 64 MB, at or above glibc's 32 MB mmap threshold so that a freed tile goes back to the OS
# (smaller tiles came from the heap and stayed resident across blocks, measured). CUDA: a slice of
# the free memory, capped so that the GEMMs stay large but the tile stays small next to the model.
CPU_TILE_BYTES = 64 << 20
CUDA_TILE_BYTES = (64 << 20, 1 << 30)


def tile_budget_bytes(device: torch.device) -> int:
    if device.type == "cuda" and not torch.compiler.is_compiling():
        free, _total = torch.cuda.mem_get_info(device)
        return int(min(max(free // 16, CUDA_TILE_BYTES[0]), CUDA_TILE_BYTES[1]))
    return CPU_TILE_BYTES if device.type == "cpu" else CUDA_TILE_BYTES[0]


def slicing(fn: str, name: str, value: Optional[int], chunk_size: Optional[int]) -> Optional[int]:
    """The slicing keyword `name`, or the deprecated chunk_size with the meaning it had in fn;
    a given value must be an integer > 0."""
    if chunk_size is not None:
        if value is not None:
            raise ValueError(f"{fn}: pass {name} only (chunk_size is its deprecated alias)")
        warnings.warn(f"{fn}: chunk_size is deprecated, pass {name}={chunk_size!r} (same meaning)",
                      DeprecationWarning, stacklevel=3)
        value = chunk_size
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{fn}: {name} must be an integer > 0, got {value!r}")
    return int(value)
