"""How many bytes one logits tile of the fused LM-head losses may take."""

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
