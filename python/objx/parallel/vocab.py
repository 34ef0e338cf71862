"""SPEC §4: the primitives of objx's vocabulary-parallel losses (objx.parallel.losses uses them).

Rank r holds the vocabulary columns [offset_r, offset_r + V_r) in rank order; shards may be uneven
(their sizes are exchanged once per call, with the ranks' agreement: objx.parallel.agreement). Row
maxima are all-reduced with MAX, sums of exponentials and every other sum over the vocabulary with
SUM, the target's logit by SUM of the owner's entry.

- target_row_stats: per row, the LSE over the non-target tokens, the target logit (and the row
  sum, class-weighted or not, and whether the target is the row's first argmax), from objx's kernel
  on the shard; everything the SFT losses and their LossStats need, with a local backward.
- distill_soft (every method) / sums_divergence (js, tv): objx's kernels take the shard's sums
  under the merged whole-vocabulary log-sum-exps; local backward.
- kernel_divergence: the kl, reverse_kl, hellinger, bhattacharyya, renyi, alpha divergences from
  objx's kernel on the shard, its shard-normalised sums renormalised to the whole vocabulary (one
  pass over the shard fewer); local backward.
- ShardedVocabulary: the objx._vocabulary interface over a shard, so that objx.reference's formulas
  (distillation, divergences) run unchanged on it where the kernels cannot (an empty shard, mixed
  dtypes). A replicated per-row statistic (an LSE) that feeds per-entry terms on every rank has its
  gradient summed over the ranks in the backward, one [N] vector per such statistic.
"""

from typing import Optional

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol

from .. import _autograd as ag
from .._vocabulary import target_logprob_from


# Statistics only, never differentiated: the sharded losses wrap row_logsumexp and the shard-sums
# ops in their own autograd functions, whose backward is the unsharded op's.
@torch.library.register_fake("objx::row_logsumexp")
def _row_logsumexp_fake(x, temperature):
    return x.new_empty(ag.fake_rows("objx.row_logsumexp", x, "x"), dtype=ag.acc_dtype(x.dtype))


def _all_reduce(x: torch.Tensor, op: str, group) -> torch.Tensor:
    return funcol.wait_tensor(funcol.all_reduce(x, op, group))


def _merge_lse(local_lse: torch.Tensor, group, extra: Optional[torch.Tensor] = None):
    """Whole-vocabulary LSEs from every rank's shard LSEs ([N, k], -inf for a shard with no mass):
    MAX, then one SUM of the shifted exponentials that also carries `extra` [N, j] (per-row sums).
    Returns (lse [N, k], summed extra or None)."""
    return _merge_lse_under(local_lse, _all_reduce(local_lse, "max", group), group, extra)


def _merge_lse_under(local_lse: torch.Tensor, m: torch.Tensor, group, extra: Optional[torch.Tensor] = None):
    """_merge_lse's SUM, given m = the MAX over ranks of local_lse (for callers whose MAX call carries
    more maxima)."""
    m_safe = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    shifted = torch.exp(local_lse - m_safe)
    k = local_lse.shape[1]
    total = _all_reduce(shifted if extra is None else torch.cat([shifted, extra], 1), "sum", group)
    return m_safe + torch.log(total[:, :k]), (None if extra is None else total[:, k:])


class _SumOverRanks(torch.autograd.Function):
    """Forward: SUM across ranks (the result is replicated). Backward: identity, because every rank
    holds the whole gradient of a replicated output."""

    @staticmethod
    def forward(ctx, x, group):
        return _all_reduce(x, "sum", group)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _ReplicatedToShard(torch.autograd.Function):
    """Forward: identity on a replicated value about to feed shard-local terms. Backward: SUM of
    every rank's partial gradient (Megatron's "copy to tensor-parallel region")."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return _all_reduce(grad.contiguous(), "sum", ctx.group), None


class _ShardedLogSumExp(torch.autograd.Function):
    """log Σ_j exp(z_j) over the whole vocabulary: MAX then SUM across ranks. The backward is local:
    softmax_j · grad, with the incoming grad already whole (see _ReplicatedToShard)."""

    @staticmethod
    def forward(ctx, z, group):
        lse = _merge_lse(torch.logsumexp(z, -1)[:, None], group)[0][:, 0]  # an empty shard's LSE is -inf
        ctx.save_for_backward(z, lse)
        return lse

    @staticmethod
    def backward(ctx, grad):
        z, lse = ctx.saved_tensors
        finite = torch.isfinite(lse)
        lse_safe = torch.where(finite, lse, torch.zeros_like(lse))
        g = torch.where(finite, grad, torch.zeros_like(grad))
        grad_z = torch.exp(z - lse_safe[:, None]) * g[:, None]
        return *ag.first_order_only("objx.parallel: the sharded log-sum-exp", grad_z), None


class ShardedVocabulary:
    """The objx._vocabulary interface over this rank's shard of a vocabulary split across `group`."""

    def __init__(self, group, sizes: list, fn: str = "objx"):
        """sizes: every rank's shard size, in rank order (objx.parallel.agreement exchanges them)."""
        self.group = group
        self.world = dist.get_world_size(group)
        rank = dist.get_rank(group)
        self.local_size = int(sizes[rank])
        self.sizes = [int(n) for n in sizes]
        self.offset = int(sum(self.sizes[:rank]))
        self.total = int(sum(self.sizes))
        if self.total == 0:
            raise ValueError(f"{fn}: every rank's vocabulary shard is empty")

    def lse(self, z: torch.Tensor) -> torch.Tensor:
        return _ShardedLogSumExp.apply(z, self.group)

    def log_softmax(self, z: torch.Tensor) -> torch.Tensor:
        return z - _ReplicatedToShard.apply(self.lse(z), self.group)[:, None]

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        return _SumOverRanks.apply(x.sum(-1), self.group)

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        return self.sum(x) / self.total

    def owned(self, target: torch.Tensor):
        """(mask of rows whose target is in this shard, the target's local column, 0 elsewhere)."""
        local = target - self.offset
        mine = (local >= 0) & (local < self.local_size)
        return mine, torch.where(mine, local, torch.zeros_like(local))

    def target_logit(self, z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        mine, local = self.owned(target)
        if self.local_size == 0:
            picked = z.new_zeros(z.shape[0])
        else:
            picked = torch.where(mine, z.gather(1, local[:, None]).squeeze(1), torch.zeros((), dtype=z.dtype,
                                                                                           device=z.device))
        return _SumOverRanks.apply(picked, self.group)

    def others_lse(self, z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        mine, local = self.owned(target)
        hit = torch.zeros_like(z, dtype=torch.bool)
        if self.local_size:
            hit.scatter_(1, local[:, None], mine[:, None])
        return self.lse(z.masked_fill(hit, float("-inf")))

    def target_logprob(self, z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return target_logprob_from(self.others_lse(z, target), self.target_logit(z, target))


def check_group(fn: str, process_group) -> None:
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(f"{fn}: process_group was given but torch.distributed is not initialised")
    if not isinstance(process_group, dist.ProcessGroup):
        raise TypeError(f"{fn}: process_group must be a torch.distributed.ProcessGroup, got "
                        f"{type(process_group).__name__}")


def compute_dtype(*tensors: Optional[torch.Tensor]) -> torch.dtype:
    """float64 stays float64; everything else is computed in float32, like the kernels."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def replicated_to_shard(x: torch.Tensor, group) -> torch.Tensor:
    """Identity forward; the backward sums the ranks' gradients (for hidden states every rank shares)."""
    return _ReplicatedToShard.apply(x, group)


def _capped(x: torch.Tensor, softcap: Optional[float]) -> torch.Tensor:
    return x if softcap is None else softcap * torch.tanh(x / softcap)


def _argmax_misses(picked, first_in_shard, owned, before, shard_max, row_max) -> torch.Tensor:
    """Per row, whether this rank sees a reason the target is not the whole row's first argmax (as
    torch.argmax): all its columns precede the target's and it holds the row max, or it owns the
    target and the target is below the row max or not its shard's first argmax. Summed over the
    ranks (as a column of the SUM all-reduce the LSE makes anyway: no extra call), 0 exactly when
    the target is the first argmax."""
    misses = (before & (shard_max == row_max)) | (owned & ~(first_in_shard & (picked == row_max)))
    return misses.to(picked.dtype)


class _TargetRowStats(torch.autograd.Function):
    """Per row of a vocabulary shard, through objx's kernel: the whole vocabulary's LSE over the
    tokens other than the target (`others`), the target's logit, with want_sum the row sum of the
    logits (Σ_j w_j z_j when sum_weight, the shard's slice of the class weights, is given) and,
    given `before` (the rows whose target lies past this shard's columns), whether the target is the
    row's first argmax (else None); softcap is applied first when given.
    Forward: one kernel pass, then MAX and one SUM all-reduce (the argmax adds a column to each).
    Backward, local: d others / dz_j = exp(z_j - others) off the target, d z_y / dz_j = [j = y],
    d sum / dz_j = w_j (1 unweighted), times the softcap's derivative."""

    @staticmethod
    def forward(ctx, z, local_target, owned, softcap, want_sum, sum_weight, before, group):
        kernel_target = torch.where(owned, local_target, torch.full_like(local_target, -1))
        if z.shape[1]:
            # The nll kernel gives the shard's LSE on every row, log p_local for the rows it owns, and
            # whether the owned target is the shard's first argmax.
            _loss, lse_local, logp_local, _counted, first_in_shard = torch.ops.objx.prob_loss_forward(
                z, kernel_target, "nll", 0.0, None, None, -1, 0.0, 0.0, softcap)
        else:  # an empty shard adds nothing
            acc = torch.float64 if z.dtype == torch.float64 else torch.float32
            lse_local = torch.full((z.shape[0],), float("-inf"), dtype=acc, device=z.device)
            logp_local = lse_local.clone()
            first_in_shard = torch.zeros_like(owned)  # an empty shard owns no target
        dtype = lse_local.dtype
        picked = z.gather(1, local_target[:, None]).squeeze(1).to(dtype) if z.shape[1] else lse_local.new_zeros(
            z.shape[0])
        picked = _capped(picked, softcap)
        # The shard's others-LSE: lse_local + log(1 - p_local), exact near p_local = 1 (the kernel's log p is).
        owned_others = lse_local + torch.log(-torch.expm1(logp_local))
        others_local = torch.where(owned, owned_others, lse_local)
        sums = [torch.where(owned, picked, torch.zeros_like(picked))]
        if want_sum:
            capped = _capped(z.to(dtype), softcap)
            sums.append(capped.sum(1) if sum_weight is None else capped @ sum_weight.to(dtype))
        if before is None:
            maxima = _all_reduce(others_local[:, None], "max", group)
        else:
            # The argmax's row max joins the LSE's MAX call; capping is monotone, so cap(max z) = max cap(z).
            shard_max = _capped(z.amax(1).to(dtype), softcap) if z.shape[1] else torch.full_like(lse_local,
                                                                                                 float("-inf"))
            maxima = _all_reduce(torch.stack([others_local, shard_max], 1), "max", group)
            sums.append(_argmax_misses(picked, first_in_shard, owned, before, shard_max, maxima[:, 1]))
        others, total = _merge_lse_under(others_local[:, None], maxima[:, :1], group, torch.stack(sums, 1))
        others, z_y = others[:, 0], total[:, 0]
        row_sum = total[:, 1] if want_sum else torch.zeros_like(z_y)
        first_argmax = None if before is None else total[:, -1] == 0
        ctx.save_for_backward(z, local_target, owned, others, sum_weight)
        ctx.softcap, ctx.want_sum = softcap, want_sum
        return others, z_y, row_sum, first_argmax

    @staticmethod
    def backward(ctx, g_others, g_target, g_sum, _g_first_argmax):
        z, local_target, owned, others, sum_weight = ctx.saved_tensors
        softcap = ctx.softcap
        dtype = others.dtype
        zc = z.to(dtype)
        if softcap is not None:
            t = torch.tanh(zc / softcap)
            zc = softcap * t
        finite = torch.isfinite(others)
        grad = (zc - torch.where(finite, others, torch.zeros_like(others))[:, None]).exp_()
        grad.mul_(torch.where(finite, g_others, torch.zeros_like(g_others))[:, None])
        g_sum_at_target = g_sum
        if ctx.want_sum:
            if sum_weight is None:
                grad.add_(g_sum[:, None])
            else:
                w = sum_weight.to(dtype)
                grad.addcmul_(g_sum[:, None], w[None, :])
                if z.shape[1]:
                    g_sum_at_target = g_sum * w.gather(0, local_target)
        if z.shape[1]:
            at_target = torch.where(owned, g_target + g_sum_at_target, grad.gather(1, local_target[:, None]).squeeze(1))
            grad.scatter_(1, local_target[:, None], at_target[:, None])
        if softcap is not None:
            grad.mul_(1 - t * t)
        # Rows that get no gradient (ignored, thresholded out) may hold -inf/NaN logits: keep them out.
        dead = (g_others == 0) & (g_target == 0) & (g_sum == 0)
        if bool(dead.any()):
            grad.masked_fill_(dead[:, None], 0.0)
        grad = ag.first_order_only("objx.parallel: the sharded row statistics", grad.to(z.dtype))[0]
        return grad, None, None, None, None, None, None, None


def target_row_stats(z: torch.Tensor, target: torch.Tensor, vocab: ShardedVocabulary, *, softcap=None,
                     want_sum: bool = False, sum_weight: Optional[torch.Tensor] = None, want_argmax: bool = False):
    """(others, z_y, row sum, first argmax) per row over the whole vocabulary for targets given in
    global indices (rows whose target no rank owns, such as ignored ones, get z_y = 0 and others =
    the LSE). sum_weight: the whole vocabulary's class weights [V]; the row sum is then Σ_j w_j z_j.
    first argmax (None unless want_argmax): whether the target is the row's first argmax, as
    torch.argmax of the (soft-capped) logits; True on rows whose target no rank owns."""
    owned, local = vocab.owned(target)
    if sum_weight is not None:
        sum_weight = sum_weight[vocab.offset:vocab.offset + vocab.local_size].contiguous()
    # Rows whose target lies past every column of this shard: its maxima precede the target.
    before = target >= vocab.offset + vocab.local_size if want_argmax else None
    return _TargetRowStats.apply(z.contiguous(), local, owned, None if softcap is None else float(softcap),
                                 bool(want_sum), sum_weight, before, vocab.group)


class _ShardedDistillSoft(torch.autograd.Function):
    """The soft term of a distillation method per row from objx's kernels on the shard: the shard's
    log-sum-exps of the compared student (s, or s/T), of t/T and of t, merged (MAX + SUM); the
    shard's part of the row sums (D, Σ q a) under those whole-vocabulary normalisers, one more SUM.
    One path for every method: JSD's mixture and TVD's |p − q| need each token's whole-vocabulary
    probability, and the KL family measured no faster renormalising shard-normalised sums. The
    backward is the distill kernel's on the merged statistics, local: no collective."""

    @staticmethod
    def forward(ctx, s, t, method, temperature, beta, group):
        T = temperature
        lse = torch.ops.objx.row_logsumexp
        compared = 1.0 if method in ("ttm", "wttm") else T  # TTM and WTTM compare the untempered student
        whole, _ = _merge_lse(torch.stack([lse(s, compared), lse(t, T), lse(t, 1.0)], 1), group)
        sums = _all_reduce(torch.ops.objx.distill_shard_sums(s, t, whole[:, :2].contiguous(), method, T, beta),
                           "sum", group)
        # distill_backward's row statistics (lse(s), lse(s/T), lse(t/T), lse(t), D, Σ q a): the kernels
        # read the compared student's column only, and the hard term is not this function's.
        stats = torch.stack([whole[:, 0], whole[:, 0], whole[:, 1], whole[:, 2], sums[:, 0], sums[:, 1]], 1)
        ctx.save_for_backward(s, t, stats)
        ctx.options = (method, T, beta)
        div = sums[:, 0]
        if method == "wttm":
            return torch.exp(whole[:, 1] - whole[:, 2] / T) * div, stats
        return (T * T * div if method == "kd" else div), stats

    @staticmethod
    def backward(ctx, g_soft, _g_stats):
        s, t, stats = ctx.saved_tensors
        counted = torch.ones(s.shape[0], dtype=torch.bool, device=s.device)  # no target: every row counts
        method, T, beta = ctx.options
        grad = torch.ops.objx.distill_backward(g_soft.contiguous(), s, t, None, stats, counted, method, T, beta, 0.0,
                                               1.0, -100)
        return *ag.first_order_only("objx.parallel: the sharded distillation", grad), None, None, None, None, None


def distill_soft(s: torch.Tensor, t: torch.Tensor, method: str, temperature: float, beta: float,
                 vocab: ShardedVocabulary):
    """(soft term per row, whole-vocabulary row statistics [N, 6])."""
    soft, stats = _ShardedDistillSoft.apply(s.contiguous(), t.detach().contiguous(), method, float(temperature),
                                            float(beta), vocab.group)
    return soft, stats.detach()


def _log_share(local_lse: torch.Tensor, global_lse: torch.Tensor) -> torch.Tensor:
    """log of the shard's share of the row's probability mass (-inf for a shard with none)."""
    return torch.where(torch.isfinite(local_lse), local_lse - global_lse, torch.full_like(local_lse, float("-inf")))


def _whole_kl_term(local_kl: torch.Tensor, log_w: torch.Tensor, log_v: torch.Tensor) -> torch.Tensor:
    """This shard's part of the whole-vocabulary KL(p || q), from its KL under its own normalisation
    and its shares w, v of p's and q's mass: w (D_r + log w - log v); 0 for a shard without p's mass."""
    term = torch.exp(log_w) * (local_kl + log_w - log_v)
    return torch.where(torch.isfinite(log_w), term, torch.zeros_like(term))


# Vocabulary divergences whose row sums renormalise from shards: with w_r, v_r the shard's shares of
# p's and q's mass, KL sums become Σ_r w_r (D_r + log w_r − log v_r), the power sums Σ p^a q^(1-a)
# become Σ_r w_r^a v_r^(1-a) S_r (a = 1/2 for hellinger / bhattacharyya). JS and TV do not.
KERNEL_DIVERGENCES = ("kl", "reverse_kl", "hellinger", "bhattacharyya", "renyi", "alpha")


def _power_share(a: float, log_w: torch.Tensor, log_v: torch.Tensor) -> torch.Tensor:
    """w^a v^(1-a), 0 when the shard holds neither distribution's mass."""
    log_coef = a * log_w + (1 - a) * log_v
    neither = torch.isneginf(log_w) & torch.isneginf(log_v)
    return torch.where(neither, torch.zeros_like(log_coef), torch.exp(log_coef))


def _whole_renyi(log_s: torch.Tensor, excess: torch.Tensor, a: float, log_w: torch.Tensor, log_v: torch.Tensor,
                 group):
    """Rényi's log S and S − 1 over the whole vocabulary from each shard's (log S_r, S_r − 1) under its own
    normalisation (the kernel's stats, math::renyi_log_sum): log S is the log-sum-exp over ranks of
    log(w^a v^(1−a)) + log S_r, S − 1 the sum of w^a v^(1−a) (S_r − 1) + (w^a v^(1−a) − w), whose last term is
    w expm1((a − 1)(log w − log v)). The same choice between them as the kernel makes."""
    log_coef = a * log_w + (1 - a) * log_v
    neither = torch.isneginf(log_w) & torch.isneginf(log_v)
    log_coef = torch.where(neither, torch.full_like(log_coef, float("-inf")), log_coef)
    coef = torch.exp(log_coef)
    share = torch.where(torch.isneginf(log_w), torch.zeros_like(coef),
                        torch.exp(log_w) * torch.expm1((a - 1) * (log_w - log_v)))
    part = torch.where(coef == 0, torch.zeros_like(coef), coef * excess) + share
    # A shard holding none of the power mean's mass adds nothing (its own log S_r may be NaN then).
    log_term = torch.where(coef == 0, torch.full_like(log_coef, float("-inf")), log_coef + log_s)
    merged, total = _merge_lse(log_term[:, None], group, part[:, None])
    lse, whole_excess = merged[:, 0], total[:, 0]
    window = (whole_excess >= -0.5) & (whole_excess <= 1) & (0.5 < a < 1.5)  # math::renyi_near_one
    return torch.where(window, torch.log1p(whole_excess), lse), whole_excess


def _check_whole_rows(whole_lse: torch.Tensor, mask: Optional[torch.Tensor]) -> None:
    """The unsharded op's whole-row check (a kept row with no mass is no distribution) on the merged
    log-sum-exps, which every rank holds alike, so every rank raises the same error."""
    empty = torch.isneginf(whole_lse)
    if mask is not None:
        empty &= mask[:, None]
    found = empty.any(0).tolist()
    if any(found):
        which = 0 if found[0] else 1
        row = int(empty[:, which].nonzero()[0, 0])
        raise ValueError(f"objx.vocab_divergence: {('policy_logits', 'ref_logits')[which]} row {row} is -inf "
                         "everywhere (probability 0 on every token, on every rank's shard) and the mask does not "
                         "leave it out")


class _ShardedVocabDivergence(torch.autograd.Function):
    """vocab_divergence per row for KERNEL_DIVERGENCES from objx's kernel on the shard: local row
    statistics (both LSEs, the shard-normalised sum) made whole by MAX + SUM and one more SUM; the
    kernel's backward on the whole-vocabulary statistics, local."""

    @staticmethod
    def forward(ctx, z, r, kind, div_alpha, mask, group):
        _div, local = torch.ops.objx.vocab_divergence_forward(z, r, kind, div_alpha, mask, False)
        whole, _ = _merge_lse(local[:, :2], group)
        _check_whole_rows(whole, mask)
        log_w, log_v = _log_share(local[:, 0], whole[:, 0]), _log_share(local[:, 1], whole[:, 1])
        part = local[:, 2]
        if kind == "renyi":
            agg, excess = _whole_renyi(local[:, 2], local[:, 3], div_alpha, log_w, log_v, group)
        else:
            if kind in ("kl", "reverse_kl"):
                if kind == "reverse_kl":
                    log_w, log_v = log_v, log_w
                term = _whole_kl_term(part, log_w, log_v)
            else:
                a = 0.5 if kind in ("hellinger", "bhattacharyya") else div_alpha
                coef = _power_share(a, log_w, log_v)
                term = torch.where(coef == 0, torch.zeros_like(part), coef * part)
            agg, excess = _all_reduce(term, "sum", group), torch.zeros_like(part)
        stats = torch.stack([whole[:, 0], whole[:, 1], agg, excess], 1)
        if kind in ("kl", "reverse_kl"):
            div = agg
        elif kind == "hellinger":
            div = 1 - agg
        elif kind == "bhattacharyya":
            div = -torch.log(agg)
        elif kind == "renyi":
            div = agg / (div_alpha - 1)  # agg = log S
        else:
            div = (1 - agg) / (div_alpha * (1 - div_alpha))
        if mask is not None:
            div = torch.where(mask, div, torch.zeros_like(div))
        ctx.save_for_backward(z, r, stats, mask)
        ctx.kind, ctx.div_alpha = kind, div_alpha
        return div

    @staticmethod
    def backward(ctx, grad):
        z, r, stats, mask = ctx.saved_tensors
        g = torch.ops.objx.vocab_divergence_backward(grad.contiguous(), z, r, stats, ctx.kind, ctx.div_alpha, mask)
        return *ag.first_order_only("objx.parallel: the sharded divergence", g), None, None, None, None, None


# Divergences whose per-entry terms need the whole vocabulary's normalisation (JS's mixture, TV's |p − q|).
SUMS_DIVERGENCES = ("js", "tv")


class _ShardedSumsDivergence(_ShardedVocabDivergence):
    """js / tv per row from objx's kernels on the shard: both log-sum-exps merged (MAX + SUM), the
    shard's part of the row sums under them (0 for masked-out rows), one more SUM. The backward,
    inherited, is the kernel's on the merged statistics, local."""

    @staticmethod
    def forward(ctx, z, r, kind, div_alpha, mask, group):
        lse = torch.ops.objx.row_logsumexp
        whole, _ = _merge_lse(torch.stack([lse(z, 1.0), lse(r, 1.0)], 1), group)
        _check_whole_rows(whole, mask)
        sums = _all_reduce(torch.ops.objx.vocab_divergence_shard_sums(z, r, whole.contiguous(), kind, div_alpha, mask),
                           "sum", group)
        stats = torch.cat([whole, sums], 1)  # (lse_p, lse_q, agg, pa); D = agg for js and tv
        ctx.save_for_backward(z, r, stats, mask)
        ctx.kind, ctx.div_alpha = kind, div_alpha
        return sums[:, 0]


def sums_divergence(z: torch.Tensor, r: torch.Tensor, kind: str, div_alpha: float, mask, vocab: ShardedVocabulary):
    return _ShardedSumsDivergence.apply(z.contiguous(), r.detach().contiguous(), kind, float(div_alpha), mask,
                                        vocab.group)


def kernel_divergence(z: torch.Tensor, r: torch.Tensor, kind: str, div_alpha: float, mask, vocab: ShardedVocabulary):
    return _ShardedVocabDivergence.apply(z.contiguous(), r.detach().contiguous(), kind, float(div_alpha), mask,
                                         vocab.group)
