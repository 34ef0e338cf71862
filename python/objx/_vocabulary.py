"""How a loss formula reduces over the vocabulary. The reference losses are written once against
this interface; WHOLE reduces over complete rows, objx.vocab_parallel.ShardedVocabulary over
vocabulary shards held by the ranks of a process group (SPEC §4)."""

import torch


class WholeVocabulary:
    """Every row holds the whole vocabulary."""

    def size(self, z: torch.Tensor) -> int:
        return z.shape[-1]

    def lse(self, z: torch.Tensor) -> torch.Tensor:
        return torch.logsumexp(z, -1)

    def log_softmax(self, z: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(z, -1)

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(-1)

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(-1)

    def target_logprob(self, z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """log softmax(z)[target] per row (target valid on every row); exact near p = 1."""
        return torch.log_softmax(z, -1).gather(1, target[:, None]).squeeze(1)


WHOLE = WholeVocabulary()
