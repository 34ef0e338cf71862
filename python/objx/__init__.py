"""objx: fused, vocabulary-chunked training losses for LLM post-training."""

from . import _ops  # noqa: F401  (registers the ops and their autograd)
from ._build import build_info
from .objective import Objective
from .distill import DistillLoss, distill_loss
from .linear_distill import LinearDistillLoss, linear_distill_loss
from .linear_prob_loss import LinearProbLoss, linear_prob_loss, linear_token_logprobs
from .prob_loss import ProbLoss, prob_loss
from .vocab_divergence import vocab_divergence
from . import reference

__version__ = build_info()["version"]

__all__ = ["DistillLoss", "LinearDistillLoss", "LinearProbLoss", "Objective", "ProbLoss", "build_info", "distill_loss", "linear_distill_loss", "linear_prob_loss",
           "linear_token_logprobs", "prob_loss", "reference", "vocab_divergence"]
