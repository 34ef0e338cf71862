"""Every objx op's backward is a fused kernel that is not itself differentiable: a second derivative
(create_graph=True, then differentiating the gradient; torch.autograd.gradgradcheck) must raise a clear
error naming the op, never silently drop the second-order terms. First derivatives are unchanged."""

import pytest
import torch

import objx
from helpers import TOLERANCES, assert_close, make_logits

DOUBLE_BACKWARD = r"double backward .*not supported"


def _logits_cases(device):
    z, y = make_logits(7, 23, dtype=torch.float64, device=device)
    t = torch.randn(7, 23, dtype=torch.float64, device=device)
    return [
        ("prob_loss", lambda zz: objx.prob_loss(zz, y, "-p"), lambda zz: objx.reference.prob_loss(zz, y, "-p")),
        ("distill_loss", lambda zz: objx.distill_loss(zz, t, y, method="jsd"),
         lambda zz: objx.reference.distill_loss(zz, t, y, method="jsd")),
        ("vocab_divergence", lambda zz: objx.vocab_divergence(zz, t, "hellinger").sum(),
         lambda zz: objx.reference.vocab_divergence(zz, t, "hellinger").sum()),
    ], z


@pytest.mark.parametrize("case", ["prob_loss", "distill_loss", "vocab_divergence"])
def test_double_backward_of_logits_ops_is_a_clear_error(case, device):
    cases, z = _logits_cases(device)
    _name, loss_fn, reference_fn = next(c for c in cases if c[0] == case)
    leaf = z.clone().requires_grad_()
    (grad,) = torch.autograd.grad(loss_fn(leaf), leaf, create_graph=True)
    assert grad.requires_grad  # so that differentiating it reaches the error, not "does not require grad"
    with pytest.raises(RuntimeError, match=DOUBLE_BACKWARD):
        torch.autograd.grad(grad.pow(2).sum(), leaf)
    with pytest.raises(RuntimeError, match=DOUBLE_BACKWARD):
        torch.autograd.gradgradcheck(loss_fn, (leaf,))
    # create_graph=True alone (a gradient penalty elsewhere, say) still gives the right first derivative.
    ref_leaf = z.detach().cpu().requires_grad_()
    (ref_grad,) = torch.autograd.grad(reference_fn(ref_leaf), ref_leaf)
    assert_close(grad, ref_grad, TOLERANCES[torch.float64][1], f"{case} first derivative under create_graph")
