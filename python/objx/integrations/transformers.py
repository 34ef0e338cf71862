"""objx inside Hugging Face transformers.

- compute_loss_func(objective): for Trainer(compute_loss_func=...): the objective on the logits the
  model returned (shifted as causal LMs do; gradient-accumulation aware through num_items_in_batch).
- apply_objx_loss(model, objective): makes a causal LM's forward, when given labels, run its decoder
  and objx.linear_prob_loss on the last hidden states and the LM head, so the [B, T, V] logits are
  never built (it then returns logits=None).
transformers itself is only imported by apply_objx_loss, for the output class.
"""

import functools
from typing import Optional, Union

import torch

from ..sft.linear import linear_prob_loss
from ..sft.objective import Objective
from ..sft.logits import prob_loss


def _reduce(loss_sum: torch.Tensor, counted: torch.Tensor, num_items_in_batch) -> torch.Tensor:
    """transformers' convention: the sum over tokens divided by num_items_in_batch (the tokens of
    the whole accumulated batch) when the Trainer gives it, else by this batch's label tokens. A token
    a threshold (min_prob/max_prob) leaves out adds 0 and still counts in the denominator, unlike
    objx.prob_loss's "mean" (over counted rows): that keeps gradient accumulation exact."""
    if num_items_in_batch is not None:
        if isinstance(num_items_in_batch, torch.Tensor):
            num_items_in_batch = num_items_in_batch.to(loss_sum.device)
        return loss_sum / num_items_in_batch
    return loss_sum / counted.clamp(min=1)


def compute_loss_func(objective: Union[str, Objective] = "nll", *, ignore_index: int = -100, **loss_kwargs):
    """A Trainer compute_loss_func: loss_func(outputs, labels, num_items_in_batch=None) -> loss.

    outputs.logits [B, T, V] predict labels [B, T] shifted by one (labels = input_ids with
    ignore_index on prompt/padding, as for the model's own loss). loss_kwargs go to objx.prob_loss
    (min_prob, z_loss, label_smoothing, ...)."""

    def loss_func(outputs, labels, num_items_in_batch=None):
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
        shift_logits, shift_labels = logits[:, :-1, :], labels[:, 1:].to(logits.device)
        total = prob_loss(shift_logits, shift_labels, objective, ignore_index=ignore_index, reduction="sum",
                          **loss_kwargs)
        counted = (shift_labels != ignore_index).sum()
        return _reduce(total, counted, num_items_in_batch)

    return loss_func


def _decoder_and_head(model):
    head = model.get_output_embeddings()
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, model.base_model_prefix)
    if head is None or decoder is None or not isinstance(head, torch.nn.Linear):
        raise TypeError(f"objx.integrations.transformers: {type(model).__name__} has no decoder + nn.Linear LM "
                        "head to fuse")
    return decoder, head


def apply_objx_loss(model, objective: Union[str, Objective] = "nll", *, ignore_index: int = -100,
                    **loss_kwargs):
    """Patch model (a transformers *ForCausalLM) in place so that forward(..., labels=...) computes
    objx.linear_prob_loss(objective) from the decoder's last hidden states and the LM head weight,
    never building the logits; without labels the original forward runs. The config's
    final_logit_softcapping (Gemma 2) is applied as softcap; models that scale logits otherwise are
    refused. Returns the model."""
    config = getattr(model, "config", None)
    scale = getattr(config, "logit_scale", None)
    if scale not in (None, 1, 1.0):
        raise NotImplementedError(f"objx.integrations.transformers: logit_scale={scale} is not supported")
    softcap = getattr(config, "final_logit_softcapping", None)
    if softcap is not None and "softcap" not in loss_kwargs:
        loss_kwargs["softcap"] = float(softcap)
    decoder, head = _decoder_and_head(model)
    original = model.forward
    if getattr(original, "_objx_patched", False):
        original = original.__wrapped__

    @functools.wraps(original)
    def forward(*args, labels: Optional[torch.Tensor] = None, num_items_in_batch=None, **kwargs):
        if labels is None:
            return original(*args, **kwargs)
        from transformers.modeling_outputs import CausalLMOutputWithPast

        kwargs.pop("logits_to_keep", None)
        kwargs.pop("return_dict", None)
        kwargs.setdefault("use_cache", False)
        out = decoder(*args, return_dict=True, **kwargs)
        hidden = out.last_hidden_state[:, :-1, :]
        shift_labels = labels[:, 1:].to(hidden.device)
        total = linear_prob_loss(hidden, head.weight, shift_labels, head.bias, objective, ignore_index=ignore_index,
                                 reduction="sum", **loss_kwargs)
        loss = _reduce(total, (shift_labels != ignore_index).sum(), num_items_in_batch)
        # No cache: a forward with labels is a training or scoring step.
        return CausalLMOutputWithPast(loss=loss, logits=None, hidden_states=getattr(out, "hidden_states", None),
                                      attentions=getattr(out, "attentions", None))

    forward._objx_patched = True
    model.forward = forward
    return model
