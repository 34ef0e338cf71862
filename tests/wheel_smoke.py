"""Smoke test of an installed objx wheel under any Python (run outside the source tree):
`python tests/wheel_smoke.py` loads the ops, checks a loss and its gradient against the float64
reference, and prints the build facts."""

import json
import sys

import torch

import objx

logits = torch.randn(16, 300, dtype=torch.float64, requires_grad=True)
target = torch.randint(0, 300, (16,))
target[3] = -100
loss = objx.prob_loss(logits, target, "-p^10", z_loss=1e-3)
loss.backward()
ref_in = logits.detach().clone().requires_grad_()
ref = objx.reference.prob_loss(ref_in, target, "-p^10", z_loss=1e-3)
ref.backward()
assert abs(loss.item() - ref.item()) <= 1e-10 * abs(ref.item()), (loss.item(), ref.item())
assert torch.allclose(logits.grad, ref_in.grad, rtol=0, atol=1e-12)
fused = objx.linear_prob_loss(torch.randn(8, 16), torch.randn(300, 16), target[:8], tile_size=64)
assert torch.isfinite(fused)
print(json.dumps({"python": sys.version.split()[0], "ok": True, **objx.build_info()}))
