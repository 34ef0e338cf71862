"""objx: fused, vocabulary-chunked training losses for LLM post-training."""

from . import _ops  # noqa: F401  (registers the ops and their autograd)
from . import kernels, reference, select
from ._build import build_info
from .distill import DistillLoss, distill_loss
from .dpo_kernel_loss import dpo_kernel_loss
from .dpo_kernel_module import DPOKernelLoss
from .f_divergence import f_divergence_score
from .linear_distill import LinearDistillLoss, linear_distill_loss
from .linear_prob_loss import LinearProbLoss, linear_prob_loss, linear_token_logprobs
from .objective import Objective
from .prob_loss import ProbLoss, prob_loss
from .token_logprobs import token_logprobs
from .vocab_divergence import vocab_divergence

__version__ = build_info()["version"]

__all__ = [
    "DPOKernelLoss", "DistillLoss", "LinearDistillLoss", "LinearProbLoss", "Objective", "ProbLoss", "build_info",
    "distill_loss", "dpo_kernel_loss", "f_divergence_score", "kernels", "linear_distill_loss",
    "linear_prob_loss", "linear_token_logprobs", "prob_loss", "reference", "select", "token_logprobs",
    "vocab_divergence",
]
