"""The checks of the ops themselves, for callers of torch.ops.objx.* that skip the Python front doors."""

import pytest
import torch

import objx  # noqa: F401  (registers the ops)
from helpers import make_logits, rel_err

OPS = torch.ops.objx


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_float8_is_refused_by_name(device, dtype):
    z = torch.randn(4, 16, device=device).to(dtype)
    y = torch.randint(0, 16, (4,), device=device)
    with pytest.raises(TypeError, match=r"objx\.prob_loss: logits must be float64, float32, bfloat16 or float16"):
        OPS.prob_loss_forward(z, y, "nll", 1.0, None, None, -100, 0.0, 0.0, None)
    with pytest.raises(TypeError, match=r"objx\.distill_loss: .*float64, float32, bfloat16 or float16"):
        OPS.distill_forward(z, z, y, "ttm", 1.0, 0.5, 1.0, 1.0, -100)
    with pytest.raises(TypeError, match=r"objx\.vocab_divergence: .*float64, float32, bfloat16 or float16"):
        OPS.vocab_divergence_forward(z, z, "kl", 0.5, None)
    with pytest.raises(TypeError, match=r"objx\.row_logsumexp: .*float64, float32, bfloat16 or float16"):
        OPS.row_logsumexp(z, 1.0)


@pytest.mark.parametrize("alpha", [1e-46, 1e-300])
def test_power_below_the_smallest_normal_alpha_is_nll(device, alpha):
    z, y = make_logits(16, 300, device=device)
    power = OPS.prob_loss_forward(z, y, "power", alpha, None, None, -100, 0.0, 0.0, None)[0]
    nll = OPS.prob_loss_forward(z, y, "nll", 1.0, None, None, -100, 0.0, 0.0, None)[0]
    assert torch.isfinite(power).all()  # before: NaN (alpha rounds to 0 in float32)
    assert rel_err(power, nll) < 1e-6
