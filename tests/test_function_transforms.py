"""torch.func's differentiating transforms are refused by every logits op with the reason (the
fused heads' refusal is tested with them); torch.vmap is not a differentiating transform."""

import pytest
import torch

import objx
from helpers import make_logits


def _losses(target):
    return {
        "objx.prob_loss": lambda z: objx.prob_loss(z, target),
        "objx.distill_loss": lambda z: objx.distill_loss(z, z.detach().flip(-1), target),
        "objx.vocab_divergence": lambda z: objx.vocab_divergence(z, z.detach().flip(-1), "kl").sum(),
    }


@pytest.mark.parametrize("name", ["objx.prob_loss", "objx.distill_loss", "objx.vocab_divergence"])
@pytest.mark.parametrize("transform", ["grad", "jacrev"])
def test_differentiating_transforms_are_refused_with_the_reason(device, name, transform):
    z, y = make_logits(6, 40, device=device)
    loss = _losses(y)[name]
    with pytest.raises(RuntimeError, match=rf"{name}: torch\.func's differentiating transforms .* not supported"):
        getattr(torch.func, transform)(loss)(z)
