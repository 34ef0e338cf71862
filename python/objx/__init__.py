"""objx: fused, vocabulary-chunked training losses for LLM post-training."""

from . import _ops  # noqa: F401  (registers the ops and their autograd)
from ._build import build_info
from .objective import Objective
from .prob_loss import ProbLoss, prob_loss
from . import reference

__version__ = build_info()["version"]

__all__ = ["Objective", "ProbLoss", "build_info", "prob_loss", "reference"]
