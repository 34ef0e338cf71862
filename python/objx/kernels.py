"""objx.kernels: the DPO-Kernels embedding kernels (SPEC §3.3), defined in objx.dpo.kernels."""

from .dpo.kernels import *  # noqa: F401,F403
from .dpo.kernels import __all__  # noqa: F401
