"""SPEC §3.4: per-token divergences between the policy's and the reference's next-token
distributions, without the [N, V] softmaxes (objx.vocab_divergence), with the ops' register_fake
and register_autograd."""

from typing import Optional

import torch

from .. import _autograd as ag
from .._rows import check_devices, check_tensor, rows
from ..parallel import losses as sharded
from ..parallel.agreement import checked_on_every_rank
from .wasserstein import wasserstein_divergence

KINDS = ("kl", "reverse_kl", "js", "hellinger", "bhattacharyya", "renyi", "alpha", "tv")


def vocab_divergence(policy_logits: torch.Tensor, ref_logits: torch.Tensor, kind: str = "kl", *,
                     div_alpha: float = 0.5, mask: Optional[torch.Tensor] = None,
                     token_embeddings: Optional[torch.Tensor] = None, process_group=None) -> torch.Tensor:
    """D(softmax(policy_logits) || softmax(ref_logits)) per row of [..., V] logits -> [...].

    kind: "kl", "reverse_kl", "js", "hellinger", "bhattacharyya", "renyi" (order div_alpha > 0,
    != 1), "alpha" (Amari, div_alpha not in {0, 1}), "tv" (objx kernels, chunked over V), or
    "wasserstein" (entropic OT on the top-64 union with cost 1 - cos over token_embeddings [V, E],
    in PyTorch). Rows where mask [...] is False give 0 and no gradient. Differentiable in
    policy_logits; the reference gets no gradient. process_group: both logits are this rank's
    vocabulary shard (SPEC §4; every kind but "wasserstein", whose top-k needs whole rows;
    objx.parallel.losses).
    """
    fn = "objx.vocab_divergence"

    def check():
        ag.refuse_function_transforms(fn)
        if kind not in KINDS + ("wasserstein",):
            raise ValueError(f"{fn}: kind must be one of {KINDS + ('wasserstein',)}, got {kind!r}")
        # The kernels read slices such as logits[:, :-1] in place; wasserstein and the sharded path
        # take [N, V].
        in_place = process_group is None and kind != "wasserstein"
        z = rows(fn, policy_logits, "policy_logits", in_place=in_place)
        check_tensor(fn, ref_logits, "ref_logits")
        if ref_logits.shape != policy_logits.shape:
            raise ValueError(f"{fn}: ref_logits must be a tensor of policy_logits' shape "
                             f"{tuple(policy_logits.shape)}, got {tuple(ref_logits.shape)}")
        r = rows(fn, ref_logits, "ref_logits", leading=policy_logits.shape[:-1], in_place=in_place)
        flat_mask = None
        if mask is not None:
            check_tensor(fn, mask, "mask")
            if mask.shape != policy_logits.shape[:-1]:
                raise ValueError(f"{fn}: mask must have shape {tuple(policy_logits.shape[:-1])} (policy_logits' "
                                 f"leading dims), got {tuple(mask.shape)}")
            flat_mask = mask.reshape(-1).to(torch.bool)
        check_devices(fn, "policy_logits", policy_logits, ref_logits=ref_logits, mask=mask)
        if kind == "wasserstein" and process_group is not None:
            raise ValueError(f"{fn}: kind 'wasserstein' does not take a process_group (its top-k "
                             "support needs whole rows); gather the logits first")
        if kind == "wasserstein" and token_embeddings is None:
            raise ValueError(f"{fn}: kind 'wasserstein' needs token_embeddings [V, E]")
        return z, r, flat_mask

    # With a process_group an argument error is raised on every rank, none left waiting for it.
    z, r, mask = checked_on_every_rank(fn, process_group, getattr(policy_logits, "device", None), check)
    shape = policy_logits.shape[:-1]
    if kind == "wasserstein":
        return wasserstein_divergence(z, r, token_embeddings, mask=mask).reshape(shape)
    if process_group is not None:
        return sharded.vocab_divergence(fn, z, r, kind, float(div_alpha), mask,
                                        process_group=process_group).reshape(shape)
    div, _stats = torch.ops.objx.vocab_divergence_forward(z, r, kind, float(div_alpha), mask)
    return div.reshape(shape)


# --- the ops as torch sees them ---------------------------------------------------------------

@torch.library.register_fake("objx::vocab_divergence_forward")
def _forward_fake(*inputs):
    policy = inputs[0]
    rows_ = ag.fake_rows("objx.vocab_divergence", policy, "policy_logits")
    # Mixed devices dispatch here (meta outranks cpu), where no kernel would have refused them.
    for name, x in (("ref_logits", inputs[1]), ("mask", inputs[4] if len(inputs) > 4 else None)):
        torch._check_value(x is None or x.device == policy.device, lambda: f"objx.vocab_divergence: {name} is on "
                           f"{x.device} but policy_logits is on {policy.device}")
    acc = ag.acc_dtype(policy.dtype)
    return policy.new_empty(rows_, dtype=acc), policy.new_empty(rows_, 4, dtype=acc)


ag.register_grad_fake("vocab_divergence_backward", "policy_logits")
ag.register_row_sums_fake("vocab_divergence_shard_sums")


ag.register_logits_autograd("vocab_divergence_forward", "vocab_divergence_backward", grad_of="policy_logits")
