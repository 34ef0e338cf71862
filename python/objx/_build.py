"""How this copy of objx was built."""

import torch

from . import _C


def build_info() -> dict:
    """Version, the torch it was built against and runs with, and its CUDA kernels."""
    archs = [a for a in str(_C.cuda_archs).replace(";", ",").split(",") if a]
    return {
        "version": str(_C.__version__),
        "torch_built_with": str(_C.torch_version),
        "torch_running": torch.__version__,
        "cuda_compiled": bool(_C.cuda_compiled),
        "cuda_archs": archs if _C.cuda_compiled else [],
        "cuda_sim": bool(_C.cuda_sim),
        "cuda_available": torch.cuda.is_available(),
    }
