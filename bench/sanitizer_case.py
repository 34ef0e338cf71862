"""A small CUDA case for compute-sanitizer: every kernel path (aligned and unaligned rows, V not a
multiple of the vector width, ignored rows, soft-cap, the bad-target error path), fwd + bwd."""

import torch

import objx

torch.manual_seed(0)
for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
    for rows, vocab in ((7, 1), (33, 1003), (16, 4096)):
        logits = torch.randn(rows, vocab + 1, device="cuda", dtype=dtype)[:, 1:]  # unaligned rows
        target = torch.randint(0, vocab, (rows,), device="cuda")
        target[0] = -100
        for x in (logits, logits.contiguous()):
            x = x.detach().requires_grad_()
            loss = objx.prob_loss(x, target, "-p^10", z_loss=1e-4, softcap=20.0)
            loss.backward()
            objx.prob_loss(x.detach(), target, "nll", label_smoothing=0.1, min_prob=0.01)
        bad = target.clone()
        bad[-1] = vocab
        try:
            objx.prob_loss(logits, bad)
            raise SystemExit("an out-of-range target was not rejected")
        except IndexError:
            pass
# the fused LM head: tiles not dividing V, ignored rows, both gradient modes, bias
hidden = torch.randn(19, 24, device="cuda", dtype=torch.bfloat16, requires_grad=True)
weight = torch.randn(1001, 24, device="cuda", dtype=torch.bfloat16, requires_grad=True)
bias = torch.randn(1001, device="cuda", dtype=torch.bfloat16, requires_grad=True)
target = torch.randint(0, 1001, (19,), device="cuda")
target[3] = -100
for grad_in_forward in (False, True):
    objx.linear_prob_loss(hidden, weight, target, bias, "-p", chunk_size=256,
                          grad_in_forward=grad_in_forward).backward()
torch.cuda.synchronize()
print("sanitizer case done")
