"""How a loss formula reduces over the vocabulary. The reference losses are written once against
this interface; WHOLE reduces over complete rows, objx.parallel.vocab.ShardedVocabulary over
vocabulary shards held by the ranks of a process group (SPEC §4)."""

import torch


class WholeVocabulary:
    """Every row holds the whole vocabulary."""

    def lse(self, z: torch.Tensor) -> torch.Tensor:
        return torch.logsumexp(z, -1)

    def log_softmax(self, z: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(z, -1)

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(-1)

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(-1)

    def target_logit(self, z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """z[target] per row (target valid on every row)."""
        return z.gather(1, target[:, None]).squeeze(1)

    def others_lse(self, z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """log Σ_{j != target} exp(z_j) per row."""
        return self.lse(z.scatter(1, target[:, None], float("-inf")))

    def target_logprob(self, z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """log softmax(z)[target] per row as -softplus(others - z_y): exact near p = 1, where
        z_y - lse would cancel (the kernels hold the target out of the sum the same way)."""
        return target_logprob_from(self.others_lse(z, target), self.target_logit(z, target))


def target_logprob_from(others_lse: torch.Tensor, target_logit: torch.Tensor) -> torch.Tensor:
    # logaddexp(x, 0) is softplus without torch.nn.functional.softplus's linear cut-off at x > 20.
    return -torch.logaddexp(others_lse - target_logit, torch.zeros_like(target_logit))


WHOLE = WholeVocabulary()
