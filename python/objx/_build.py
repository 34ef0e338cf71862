"""How this copy of objx was built."""

import torch

from . import _build_config as config
from . import _library  # noqa: F401  (the build is only usable if its ops load)


def build_info() -> dict:
    """Version, the torch it was built against and runs with, and its CUDA kernels."""
    return {
        "version": config.VERSION,
        "torch_built_with": config.TORCH_VERSION,
        "torch_running": torch.__version__,
        "cuda_compiled": config.CUDA_COMPILED,
        "cuda_archs": list(config.CUDA_ARCHS),
        "cuda_sim": config.CUDA_SIM,
        "sanitize": config.SANITIZE,
        "cuda_available": torch.cuda.is_available(),
        "library": _library.LIBRARY,
    }
