"""The vocabulary-parallel forms of objx's losses (process_group=...; SPEC §4): each rank passes its
vocabulary shard of the logits (or of the LM head) and gets the unsharded loss.

- SFT losses: objx.reference's per-row formula on row statistics objx's kernel computes on the
  shard (objx.parallel.vocab.target_row_stats); no collective in the backward. Class weights are
  the whole vocabulary's on every rank; they and return_stats add columns to the two all-reduces,
  never a call. The rows come back as the unsharded forward op's, for the front doors' outputs.
- Distillation (every method) and the js / tv divergences: objx's kernels on the shard take their
  row sums under the merged whole-vocabulary log-sum-exps (objx.parallel.vocab.distill_soft,
  sums_divergence); no collective in the backward.
- kl, reverse_kl, hellinger, bhattacharyya, renyi, alpha divergences: objx's vocab_divergence
  kernel on the shard, its row sums renormalised to the whole vocabulary
  (objx.parallel.vocab.kernel_divergence); no collective in the backward.
- Where a rank's shard is empty (V < P) or the two logits' dtypes differ: objx.reference's
  formulas evaluated through objx.parallel.vocab.ShardedVocabulary in PyTorch, one row block at a
  time under activation checkpointing, so that one block of [rows, V / P] temporaries is alive.
- LM-head forms: one row block of shard logits at a time under checkpointing, then the above.
Computed in float32 (float64 for float64 inputs). Every rank must take the same branch and the
same row blocks: they issue the same collectives in the same order. So every call first checks,
with one all-gather (objx.parallel.agreement), that the ranks agree on everything but their shard,
and raises the same error on every rank when they do not.
"""

from typing import Optional

import torch
from torch.utils.checkpoint import checkpoint

from .. import reference
from .._class_weights import target_weights
from .._rows import reduce_rows
from .._tiles import tile_budget_bytes
from ..sft.objective import Objective
from .._vocabulary import target_logprob_from
from .agreement import Agreement
from .vocab import (KERNEL_DIVERGENCES, SUMS_DIVERGENCES, ShardedVocabulary, check_group, compute_dtype,
                    distill_soft, kernel_divergence, replicated_to_shard, sums_divergence, target_row_stats)

# Temporaries the reference formulas keep per logits entry (logits, masked copy, log-softmax, exp).
_LIVE_COPIES = 6


# Bytes of temporaries per row block; None: objx._tiles' budget for the device (tests set it small).
BLOCK_BYTES: Optional[int] = None


def _optional_float(x) -> Optional[float]:
    return None if x is None else float(x)


def _agreement(fn: str, group, device: torch.device, rows: int, dtypes: dict) -> Agreement:
    """The fields every sharded call checks first: the row count and the inputs' dtypes."""
    check_group(fn, group)
    agreement = Agreement(fn, group, device)
    agreement.same("the number of rows", int(rows))
    for name, t in dtypes.items():
        agreement.same(f"the dtype of {name}", None if t is None else t.dtype)
    return agreement


def _objective_fields(agreement: Agreement, obj: Objective, *, ignore_index, reduction, label_smoothing, z_loss,
                      softcap, return_token_prob) -> None:
    agreement.same("objective", obj.kind)
    agreement.same("the objective's parameter", float(obj.param))
    agreement.same("min_prob", _optional_float(obj.min_prob))
    agreement.same("max_prob", _optional_float(obj.max_prob))
    agreement.same("ignore_index", int(ignore_index))
    agreement.same("reduction", reduction)
    agreement.same("label_smoothing", float(label_smoothing))
    agreement.same("z_loss", float(z_loss))
    agreement.same("softcap", _optional_float(softcap))
    agreement.same("return_token_prob", bool(return_token_prob))


def _method_fields(agreement: Agreement, *, ignore_index, reduction, return_terms, method, temperature, beta,
                   hard_weight, soft_weight) -> None:
    agreement.same("method", method)
    agreement.same("temperature", float(temperature))
    agreement.same("beta", float(beta))
    agreement.same("hard_weight", float(hard_weight))
    agreement.same("soft_weight", float(soft_weight))
    agreement.same("ignore_index", int(ignore_index))
    agreement.same("reduction", reduction)
    agreement.same("return_terms", bool(return_terms))


def _vocabulary(fn: str, agreement: Agreement, local_size: int) -> ShardedVocabulary:
    """The call's one collective before its own: the agreement, carrying the shard sizes."""
    return ShardedVocabulary(agreement.group, agreement.exchange(local_size), fn)


def _row_block(rows: int, vocab: ShardedVocabulary, device: torch.device) -> int:
    """Rows per block, the same on every rank (from the largest shard): every rank must issue the
    same collectives in the same order."""
    budget = BLOCK_BYTES if BLOCK_BYTES is not None else tile_budget_bytes(device)
    widest = -(-vocab.total // vocab.world)
    return int(max(1, min(max(rows, 1), budget // (_LIVE_COPIES * 4 * widest))))


def _head(hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], dtype) -> torch.Tensor:
    logits = hidden.to(dtype) @ weight.to(dtype).T
    return logits if bias is None else logits + bias.to(dtype)


def _blocks(fn, rows: int, block: int, *tensors):
    """fn(*row slices of tensors) -> tuple of per-row tensors, concatenated over row blocks; each
    block recomputed in the backward (its collectives too: every rank replays them in order)."""
    if rows <= block:  # one block: nothing to bound, no recompute
        return fn(*tensors)
    outs = []
    for start in range(0, rows, block):
        part = [t[start:start + block] if t is not None else None for t in tensors]
        if torch.is_grad_enabled():
            outs.append(checkpoint(fn, *part, use_reentrant=False))
        else:
            outs.append(fn(*part))
    return tuple(torch.cat(parts) for parts in zip(*outs))


def _prob_rows(z, y, obj: Objective, vocab: ShardedVocabulary, *, ignore_index, label_smoothing, z_loss, softcap,
               weight=None, want_correct=False):
    """SPEC §1 per row from the kernel-computed row statistics (objx.parallel.vocab.target_row_stats),
    as the unsharded forward op gives them: (per-row loss, times w_y with class weights, 0 where not
    counted; lse; log p_y, -inf where ignored, no gradient; counted; correct, or None unless
    want_correct)."""
    if label_smoothing and obj.kind != "nll":
        raise ValueError("label_smoothing is only defined for objective 'nll'")
    valid = y != ignore_index
    others, z_y, row_sum, first_argmax = target_row_stats(
        z, torch.where(valid, y, torch.full_like(y, -1)), vocab, softcap=softcap, want_sum=bool(label_smoothing),
        sum_weight=weight if label_smoothing else None, want_argmax=want_correct)
    logp = target_logprob_from(others, z_y)
    lse = torch.logaddexp(others, z_y)
    with torch.no_grad():
        token_logprob = torch.where(valid, logp, torch.full_like(logp, float("-inf")))
        p = token_logprob.exp()
        counted = valid.clone()
        if obj.min_prob is not None:
            counted &= ~(p < obj.min_prob)
        if obj.max_prob is not None:
            counted &= ~(p > obj.max_prob)
    if weight is None:
        mean_z = row_sum / vocab.total if label_smoothing else None
        f = reference.row_loss(obj, logp, lse, mean_z, label_smoothing, z_loss)
    else:
        # As objx.reference.weighted_prob_loss_rows: w_y (f(p_y) + z-loss), and label smoothing trades
        # eps of w_y's -log p_y for eps/V Σ_j w_j (-log p_j) = eps/V (Σ_j w_j · lse - Σ_j w_j z_j).
        w_y = target_weights(weight, y, counted, logp.dtype)
        f = w_y * reference.row_loss(obj, logp, lse, None, 0.0, z_loss)
        if label_smoothing:
            smooth = (weight.to(logp.dtype).sum() * lse - row_sum) / vocab.total
            f = f + label_smoothing * (smooth + w_y * logp)
    correct = None if first_argmax is None else first_argmax & valid
    return torch.where(counted, f, torch.zeros_like(f)), lse, token_logprob, counted, correct


def _class_weight_fields(agreement: Agreement, name: str, weight: Optional[torch.Tensor], return_stats: bool) -> None:
    """The class weights every rank passes whole (their length, dtype and values) and return_stats,
    which adds columns to the collectives."""
    agreement.same(f"the length of {name}", None if weight is None else int(weight.shape[0]))
    agreement.same(f"the dtype of {name}", None if weight is None else weight.dtype)
    agreement.tensor(name, weight)
    agreement.same("return_stats", bool(return_stats))


def _check_class_weight_length(fn: str, name: str, weight: Optional[torch.Tensor], vocab: ShardedVocabulary) -> None:
    """After the agreement: every rank holds the same length and the same shard sizes, so every
    rank raises this together."""
    if weight is not None and weight.shape[0] != vocab.total:
        raise ValueError(f"{fn}: {name} must be the whole vocabulary's class weights [V] with V = {vocab.total} "
                         f"(the ranks' shard sizes {vocab.sizes} summed), got shape {tuple(weight.shape)}; with "
                         f"process_group every rank passes the full {name}, not its shard")


def prob_loss_rows(fn: str, z: torch.Tensor, y: torch.Tensor, obj: Objective, *, ignore_index, reduction,
                   label_smoothing, z_loss, softcap, return_token_prob, weight, return_stats, process_group):
    """The sharded prob_loss's rows, as objx.prob_loss_forward gives them unsharded (see _prob_rows)."""
    agreement = _agreement(fn, process_group, z.device, z.shape[0], {"logits": z, "target": y})
    _objective_fields(agreement, obj, ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing,
                      z_loss=z_loss, softcap=softcap, return_token_prob=return_token_prob)
    _class_weight_fields(agreement, "weight", weight, return_stats)
    agreement.target(y, ignore_index)
    vocab = _vocabulary(fn, agreement, z.shape[-1])
    _check_class_weight_length(fn, "weight", weight, vocab)
    return _prob_rows(z, y, obj, vocab, ignore_index=ignore_index, label_smoothing=label_smoothing, z_loss=z_loss,
                      softcap=softcap, weight=weight, want_correct=return_stats)


def linear_prob_loss_rows(fn: str, hidden: torch.Tensor, weight: torch.Tensor, bias, y: torch.Tensor, obj: Objective,
                          *, ignore_index, reduction, label_smoothing, z_loss, softcap, return_token_prob, ce_weight,
                          return_stats, process_group, tile_size=None):
    """The sharded linear_prob_loss's rows, as objx.linear_prob_loss_forward gives them unsharded."""
    agreement = _agreement(fn, process_group, hidden.device, hidden.shape[0],
                           {"hidden": hidden, "weight": weight, "bias": bias, "target": y})
    agreement.same("D (hidden's last dim)", int(hidden.shape[1]))
    _objective_fields(agreement, obj, ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing,
                      z_loss=z_loss, softcap=softcap, return_token_prob=return_token_prob)
    _class_weight_fields(agreement, "ce_weight", ce_weight, return_stats)
    agreement.same("tile_size", tile_size)  # it sets the row blocks, hence the collectives
    agreement.target(y, ignore_index)
    agreement.tensor("hidden", hidden)
    vocab = _vocabulary(fn, agreement, weight.shape[0])
    _check_class_weight_length(fn, "ce_weight", ce_weight, vocab)
    dtype = compute_dtype(hidden, weight)
    h = replicated_to_shard(hidden, process_group)  # every rank's shard adds to grad_hidden

    def block(h_b, y_b):
        rows = _prob_rows(_head(h_b, weight, bias, dtype), y_b, obj, vocab, ignore_index=ignore_index,
                          label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap, weight=ce_weight,
                          want_correct=return_stats)
        return rows if return_stats else rows[:-1]  # _blocks concatenates tensors only

    # A row block holds as many shard logits as the unsharded head's tile of tile_size columns.
    size = max(1, tile_size * h.shape[0] // vocab.total) if tile_size else _row_block(h.shape[0], vocab, h.device)
    rows = _blocks(block, h.shape[0], size, h, y)
    return rows if return_stats else (*rows, None)


def _distill_out(rows, counted, terms, reduction, shape, return_terms):
    loss = reduce_rows(rows, counted, reduction, shape)
    if not return_terms:
        return loss
    # Rows that do not count report soft = hard = 0 and U = 1, as the kernels do.
    fill = {"soft": 0.0, "hard": 0.0, "U": 1.0}
    return loss, {k: torch.where(counted, v, torch.full_like(v, fill[k])).reshape(shape) for k, v in terms.items()}


def _kernel_distill_rows(s, t, y, vocab: ShardedVocabulary, *, ignore_index, method, temperature, beta, hard_weight,
                         soft_weight):
    """Distillation from objx's kernels on the shard (objx.parallel.vocab.distill_soft; the hard term
    from the SFT row statistics): (rows, counted, terms)."""
    soft, stats = distill_soft(s, t, method, temperature, beta, vocab)
    u = torch.exp(stats[:, 2] - stats[:, 3] / float(temperature))
    if y is None:
        counted = torch.ones(s.shape[0], dtype=torch.bool, device=s.device)
        hard = torch.zeros_like(soft)
    else:
        counted = y != ignore_index
        others, z_y, _, _ = target_row_stats(s, torch.where(counted, y, torch.full_like(y, -1)), vocab)
        hard = -target_logprob_from(others, z_y)
    rows = soft_weight * soft + (hard_weight * hard if hard_weight else 0.0)
    return torch.where(counted, rows, torch.zeros_like(rows)), counted, {"soft": soft, "hard": hard, "U": u}


def _kernels_serve(vocab: ShardedVocabulary) -> bool:
    """objx's kernels take every shard; the same answer on every rank, which must issue the same
    collectives. An empty shard (V < P) takes the reference formulas instead."""
    return min(vocab.sizes) > 0


def distill_loss(fn: str, s: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor], shape, *, ignore_index,
                 reduction, return_terms, process_group, **method_kwargs):
    agreement = _agreement(fn, process_group, s.device, s.shape[0],
                           {"student_logits": s, "teacher_logits": t, "target": y})
    _method_fields(agreement, ignore_index=ignore_index, reduction=reduction, return_terms=return_terms,
                   **method_kwargs)
    agreement.target(y, ignore_index)
    vocab = _vocabulary(fn, agreement, s.shape[-1])
    if _kernels_serve(vocab) and s.dtype == t.dtype:
        return _distill_out(*_kernel_distill_rows(s, t, y, vocab, ignore_index=ignore_index, **method_kwargs),
                            reduction, shape, return_terms)
    dtype = compute_dtype(s, t)

    def block(s_b, t_b, y_b):
        rows, counted, terms = reference.distill_rows(s_b, t_b, y_b, ignore_index=ignore_index, dtype=dtype,
                                                      vocab=vocab, **method_kwargs)
        return rows, counted, terms["soft"], terms["hard"], terms["U"]

    # Row blocks under checkpointing bound the formulas' [rows, V / P] temporaries to one block.
    rows, counted, soft, hard, u = _blocks(block, s.shape[0], _row_block(s.shape[0], vocab, s.device), s, t, y)
    return _distill_out(rows, counted, {"soft": soft, "hard": hard, "U": u}, reduction, shape, return_terms)


def linear_distill_loss(fn: str, hs, ws, bs, ht, wt, bt, y, shape, *, ignore_index, reduction, return_terms,
                        process_group, row_block=None, **method_kwargs):
    agreement = _agreement(fn, process_group, hs.device, hs.shape[0],
                           {"student_hidden": hs, "student_weight": ws, "student_bias": bs, "teacher_hidden": ht,
                            "teacher_weight": wt, "teacher_bias": bt, "target": y})
    agreement.same("D of student_hidden", int(hs.shape[1]))
    agreement.same("D of teacher_hidden", int(ht.shape[1]))
    _method_fields(agreement, ignore_index=ignore_index, reduction=reduction, return_terms=return_terms,
                   **method_kwargs)
    agreement.same("row_block", row_block)  # it sets the row blocks, hence the collectives
    agreement.target(y, ignore_index)
    agreement.tensor("student_hidden", hs)
    agreement.tensor("teacher_hidden", ht)
    vocab = _vocabulary(fn, agreement, ws.shape[0])
    dtype = compute_dtype(hs, ws)
    h = replicated_to_shard(hs, process_group)

    kernels = _kernels_serve(vocab)

    def block(h_b, ht_b, y_b):
        with torch.no_grad():
            teacher = _head(ht_b, wt, bt, dtype)
        student = _head(h_b, ws, bs, dtype)
        if kernels:
            rows, counted, terms = _kernel_distill_rows(student, teacher, y_b, vocab, ignore_index=ignore_index,
                                                        **method_kwargs)
        else:
            rows, counted, terms = reference.distill_rows(student, teacher, y_b, ignore_index=ignore_index,
                                                          dtype=dtype, vocab=vocab, **method_kwargs)
        return rows, counted, terms["soft"], terms["hard"], terms["U"]

    size = row_block or _row_block(h.shape[0], vocab, h.device)
    rows, counted, soft, hard, u = _blocks(block, h.shape[0], size, h, ht, y)
    return _distill_out(rows, counted, {"soft": soft, "hard": hard, "U": u}, reduction, shape, return_terms)


def vocab_divergence(fn: str, z: torch.Tensor, r: torch.Tensor, kind: str, div_alpha: float, mask, *, process_group):
    agreement = _agreement(fn, process_group, z.device, z.shape[0], {"policy_logits": z, "ref_logits": r})
    agreement.same("kind", kind)
    agreement.same("div_alpha", float(div_alpha))
    agreement.tensor("mask", mask)
    vocab = _vocabulary(fn, agreement, z.shape[-1])
    if _kernels_serve(vocab) and z.dtype == r.dtype:
        if kind in KERNEL_DIVERGENCES:
            return kernel_divergence(z, r, kind, div_alpha, mask, vocab)
        if kind in SUMS_DIVERGENCES:
            return sums_divergence(z, r, kind, div_alpha, mask, vocab)
    dtype = compute_dtype(z, r)

    def block(z_b, r_b, mask_b):
        return (reference.vocab_divergence(z_b, r_b, kind, div_alpha=div_alpha, mask=mask_b, dtype=dtype,
                                           vocab=vocab),)

    (div,) = _blocks(block, z.shape[0], _row_block(z.shape[0], vocab, z.device), z, r, mask)
    return div
