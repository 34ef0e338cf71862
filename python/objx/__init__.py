"""objx: fused, vocabulary-chunked training losses for LLM post-training.

The API by family: objx.sft (SPEC §1), objx.distill (§2), objx.dpo (§3), objx.parallel (§4);
objx.reference (the float64 reference of every loss), objx.select (§6), objx.integrations;
objx.tools (bench, CLI, demo)."""

from . import reference, select
from ._build import build_info
from ._loss_stats import LossStats
from .distill.linear import LinearDistillLoss, linear_distill_loss
from .distill.logits import DistillLoss, distill_loss
from . import kernels
from .dpo.divergence import vocab_divergence
from .dpo.f_divergence import f_divergence_score
from .dpo.loss import dpo_kernel_loss
from .dpo.module import DPOKernelLoss
from .sft.linear import LinearProbLoss, linear_prob_loss, linear_token_logprobs
from .sft.logits import ProbLoss, prob_loss, token_logprobs
from .sft.objective import Objective

__version__ = build_info()["version"]

__all__ = [
    "DPOKernelLoss", "DistillLoss", "LinearDistillLoss", "LinearProbLoss", "LossStats", "Objective", "ProbLoss",
    "build_info",
    "distill_loss", "dpo_kernel_loss", "f_divergence_score", "kernels", "linear_distill_loss",
    "linear_prob_loss", "linear_token_logprobs", "prob_loss", "reference", "select", "token_logprobs",
    "vocab_divergence",
]
