"""LM-head weights that are DTensors (FSDP2's sharded parameters, tensor-parallel heads)."""

import torch
import torch.distributed as dist


def _is_dtensor(t) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch built without distributed
        return False
    return isinstance(t, DTensor)


def _row_counts(rows: int, world: int):
    """How DTensor's Shard(0) splits rows (torch.chunk: ceil-sized pieces, the last ones short or empty)."""
    step = -(-rows // world) if rows else 0
    return [max(0, min(step, rows - r * step)) for r in range(world)], step


class _GatherRows(torch.autograd.Function):
    """Forward: all-gather every rank's rows of the head. Backward: reduce-scatter (SUM) the whole
    head's gradient back to each rank's rows, as data parallelism needs: every rank's loss uses
    every row."""

    @staticmethod
    def forward(ctx, local, rows, group):
        import torch.distributed._functional_collectives as funcol

        world = dist.get_world_size(group)
        counts, step = _row_counts(rows, world)
        ctx.group, ctx.counts, ctx.step = group, counts, step
        padded = torch.nn.functional.pad(local, (0, 0, 0, step - local.shape[0]))
        gathered = funcol.wait_tensor(funcol.all_gather_tensor(padded.contiguous(), 0, group))
        pieces = gathered.split(step) if step else []
        return torch.cat([p[:n] for p, n in zip(pieces, counts)]) if step else local.new_zeros(0, local.shape[1])

    @staticmethod
    def backward(ctx, grad):
        import torch.distributed._functional_collectives as funcol

        rank = dist.get_rank(ctx.group)
        pieces = grad.split(ctx.counts)
        padded = torch.cat([torch.nn.functional.pad(p, (0, 0, 0, ctx.step - p.shape[0])) for p in pieces])
        mine = funcol.wait_tensor(funcol.reduce_scatter_tensor(padded.contiguous(), "sum", 0, ctx.group))
        return mine[: ctx.counts[rank]], None, None


def gathered_weight(weight: torch.Tensor, fn: str, process_group=None) -> torch.Tensor:
    """The plain tensor the losses need from an LM head that may be a DTensor sharded by rows
    (Shard(0) on a 1-D mesh; FSDP2 shards parameters that way).

    Without a process_group the ranks are data-parallel (their hidden states differ), so every rank
    needs every row: the head is all-gathered ([V, D], what FSDP2 itself unshards, never logits) and
    weight.grad receives, on each rank, the SUM over ranks of the gradient of its rows (FSDP2 would
    then divide by the world size: scale the loss by 1 / world size to match its mean).
    With a process_group the head's rows are this rank's vocabulary shard and are used as they are."""
    if not _is_dtensor(weight):
        return weight
    from torch.distributed.tensor import Shard

    if weight.device_mesh.ndim != 1 or not (isinstance(weight.placements[0], Shard) and weight.placements[0].dim == 0):
        raise ValueError(f"{fn}: a DTensor weight must be sharded by rows (placements (Shard(0),) on a 1-D mesh), "
                         f"got {weight.placements} on a {weight.device_mesh.ndim}-D mesh; call .full_tensor() first")
    if process_group is not None:
        return weight.to_local()
    return _GatherRows.apply(weight.to_local(), weight.shape[0], weight.device_mesh.get_group(0))
