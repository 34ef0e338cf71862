"""scikit-build-core metadata provider: objx's binary links the C++ ABI of the torch it is built
against, so the wheel requires exactly that torch release (its local "+cu130" tag left free)."""

BASE = ["numpy", "tqdm"]


def dynamic_metadata(field, settings=None):
    import torch

    release = torch.__version__.split("+")[0]
    return [f"torch=={release}", *BASE]
