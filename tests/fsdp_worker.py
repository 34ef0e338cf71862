"""Runs inside each rank of the FSDP2 test (gloo, CPU): a tiny transformers causal LM, every layer
and the root under fully_shard, its forward through objx.integrations.transformers; the loss and
every gradient (FSDP2 averages over ranks) against a single-process model on the mean of the ranks'
losses. Writes `<out>/rank<r>.txt`: the loss error and the worst gradient error."""

import gc
import os

import torch
import torch.distributed as dist
import transformers

from objx.integrations.transformers import apply_objx_loss


def _tiny():
    config = transformers.LlamaConfig(vocab_size=101, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).double()


def main(rank, world, port, seed, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (world,))
    g = torch.Generator().manual_seed(seed)
    ids = [torch.randint(0, 101, (2, 10), generator=g) for _ in range(world)]
    labels = [i.masked_fill(torch.rand(i.shape, generator=g) < 0.2, -100) for i in ids]

    model = apply_objx_loss(_tiny(), "-p")
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    sharded_head = type(model.lm_head.weight).__name__
    loss = model(input_ids=ids[rank], labels=labels[rank]).loss
    loss.backward()

    reference = apply_objx_loss(_tiny(), "-p")
    losses = [reference(input_ids=i, labels=l).loss for i, l in zip(ids, labels)]
    (sum(losses) / world).backward()
    loss_err = abs(loss.item() - losses[rank].item()) / abs(losses[rank].item())
    grad_err = 0.0
    for (name, p), (_, q) in zip(model.named_parameters(), reference.named_parameters()):
        full = p.grad.full_tensor()
        grad_err = max(grad_err, ((full - q.grad).abs().max() / q.grad.abs().max()).item())
    with open(os.path.join(out, f"rank{rank}.txt"), "w") as f:
        f.write(f"{sharded_head} {loss_err} {grad_err}\n")
    # Release FSDP2's modules, mesh and gradients while Python is still whole: otherwise a gloo worker
    # thread can drop its last all-gather during interpreter shutdown and abort the process (seen 5%).
    del model, reference, loss, losses, p, q, full, mesh
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()
