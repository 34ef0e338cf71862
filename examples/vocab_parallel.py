"""Vocabulary-parallel objx losses: each rank holds V/P columns of the LM head.

    torchrun --nproc-per-node 2 examples/vocab_parallel.py            # CPU, gloo
    torchrun --nproc-per-node 8 examples/vocab_parallel.py --cuda     # one GPU per rank, NCCL
"""

import sys

import torch
import torch.distributed as dist

import objx

cuda = "--cuda" in sys.argv
dist.init_process_group("nccl" if cuda else "gloo")
rank, world = dist.get_rank(), dist.get_world_size()
device = torch.device("cuda", rank % torch.cuda.device_count()) if cuda else torch.device("cpu")

V, D, N = 32000, 256, 512
g = torch.Generator().manual_seed(0)  # the same full tensors on every rank, for the comparison below
weight_full = torch.randn(V, D, generator=g) * 0.05
hidden = torch.randn(N, D, generator=g).to(device).requires_grad_(True)  # replicated across the group
target = torch.randint(0, V, (N,), generator=g).to(device)

rows = torch.arange(V).tensor_split(world)[rank]  # this rank's vocabulary rows (shards may be uneven)
weight = weight_full[rows].to(device).requires_grad_(True)

loss = objx.linear_prob_loss(hidden, weight, target, objective="-p", process_group=dist.group.WORLD)
loss.backward()  # weight.grad: this shard's; hidden.grad: summed over the group

if rank == 0:
    full = objx.linear_prob_loss(hidden.detach(), weight_full.to(device), target, objective="-p")
    print(f"{world} ranks: sharded loss {loss.item():.6f}, unsharded {full.item():.6f}")
dist.destroy_process_group()
