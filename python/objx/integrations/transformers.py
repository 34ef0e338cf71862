"""objx inside Hugging Face transformers.

- compute_loss_func(objective): for Trainer(compute_loss_func=...): the objective on the logits the
  model returned (shifted as causal LMs do; gradient-accumulation aware through num_items_in_batch),
  averaged over the tokens that pass its thresholds (normalize="passing") or over every label
  token (normalize="labels").
- apply_objx_loss(model, objective): makes a causal LM's forward, when given labels, run its decoder
  and objx.linear_prob_loss on the last hidden states and the LM head, so the [B, T, V] logits are
  never built (it then returns logits=None).
transformers itself is only imported by apply_objx_loss, for the output class.
"""

import functools
from typing import Optional, Union

import torch

from ..sft.linear import linear_prob_loss
from ..sft.objective import DEFAULT_ALPHA, Objective, resolve_objective
from ..sft.logits import prob_loss


NORMALIZATIONS = ("passing", "labels")


def _check_normalize(normalize: str) -> None:
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"objx.integrations.transformers: normalize must be one of {NORMALIZATIONS}, "
                         f"got {normalize!r}")


def _passing(token_prob: torch.Tensor, labels: torch.Tensor, ignore_index: int, obj: Objective) -> torch.Tensor:
    """How many label tokens pass the objective's thresholds (p within [min_prob, max_prob]), as
    objx.prob_loss counts them."""
    counted = labels != ignore_index
    if obj.min_prob is not None:
        counted &= ~(token_prob < obj.min_prob)
    if obj.max_prob is not None:
        counted &= ~(token_prob > obj.max_prob)
    return counted.sum()


def _reduce(loss_sum: torch.Tensor, labels: torch.Tensor, passing: torch.Tensor, num_items_in_batch,
            normalize: str) -> torch.Tensor:
    """The sum over this batch's counted tokens divided by the denominator `normalize` names.

    "labels": transformers' own convention, num_items_in_batch (the label tokens of the whole
    accumulated batch) when the Trainer gives it, else this batch's label tokens; a token a
    threshold leaves out adds 0 and still counts.
    "passing": the mean over the tokens that pass the thresholds (min_prob/max_prob), as the
    thresholded objectives' authors normalise. Under gradient accumulation the whole batch's
    passing count is not known until every micro-batch has run, so it is estimated from this
    micro-batch's passing fraction: num_items_in_batch · passing / labels. The micro-batches'
    losses then add up to the whole batch's when their passing fractions are equal (always
    without thresholds, where this is "labels"; always without accumulation), and otherwise to
    the mean of their passing-token means weighted by their label tokens."""
    labels = labels.to(loss_sum.device)
    passing = passing.to(loss_sum.device)
    if isinstance(num_items_in_batch, torch.Tensor):
        num_items_in_batch = num_items_in_batch.to(loss_sum.device)
    if normalize == "labels":
        return loss_sum / (labels.clamp(min=1) if num_items_in_batch is None else num_items_in_batch)
    if num_items_in_batch is None:
        return loss_sum / passing.clamp(min=1)
    # A batch where no token passes has loss_sum = 0: its loss is 0, never 0 / 0.
    return loss_sum * labels / (num_items_in_batch * passing.clamp(min=1))


def _summed(loss_fn, obj: Objective, labels: torch.Tensor, ignore_index: int, **loss_kwargs):
    """(sum of the objective over counted tokens, label tokens, passing tokens): loss_fn is
    prob_loss or linear_prob_loss with everything but the reduction bound."""
    labels_count = (labels != ignore_index).sum()
    if obj.min_prob is None and obj.max_prob is None:
        return loss_fn(reduction="sum", **loss_kwargs), labels_count, labels_count
    total, token_prob = loss_fn(reduction="sum", return_token_prob=True, **loss_kwargs)
    return total, labels_count, _passing(token_prob, labels, ignore_index, obj)


def compute_loss_func(objective: Union[str, Objective] = "nll", *, ignore_index: int = -100,
                      normalize: str = "passing", **loss_kwargs):
    """A Trainer compute_loss_func: loss_func(outputs, labels, num_items_in_batch=None) -> loss.

    outputs.logits [B, T, V] predict labels [B, T] shifted by one (labels = input_ids with
    ignore_index on prompt/padding, as for the model's own loss). loss_kwargs go to objx.prob_loss
    (min_prob, z_loss, label_smoothing, ...). normalize: the denominator, "passing" (the tokens
    that pass min_prob/max_prob) or "labels" (every label token); see _reduce for gradient
    accumulation."""
    _check_normalize(normalize)
    obj = resolve_objective(objective, loss_kwargs.get("alpha", DEFAULT_ALPHA), loss_kwargs.get("min_prob"),
                            loss_kwargs.get("max_prob"))

    def loss_func(outputs, labels, num_items_in_batch=None):
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
        shift_logits, shift_labels = logits[:, :-1, :], labels[:, 1:].to(logits.device)
        total, label_count, passing = _summed(
            functools.partial(prob_loss, shift_logits, shift_labels, objective, ignore_index=ignore_index),
            obj, shift_labels, ignore_index, **loss_kwargs)
        return _reduce(total, label_count, passing, num_items_in_batch, normalize)

    return loss_func


def _decoder_and_head(model):
    head = model.get_output_embeddings()
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, model.base_model_prefix)
    if head is None or decoder is None or not isinstance(head, torch.nn.Linear):
        raise TypeError(f"objx.integrations.transformers: {type(model).__name__} has no decoder + nn.Linear LM "
                        "head to fuse")
    return decoder, head


def apply_objx_loss(model, objective: Union[str, Objective] = "nll", *, ignore_index: int = -100,
                    normalize: str = "passing", **loss_kwargs):
    """Patch model (a transformers *ForCausalLM) in place so that forward(..., labels=...) computes
    objx.linear_prob_loss(objective) from the decoder's last hidden states and the LM head weight,
    never building the logits; without labels the original forward runs. The config's
    final_logit_softcapping (Gemma 2) is applied as softcap; models that scale logits otherwise are
    refused. normalize: as in compute_loss_func. Returns the model."""
    _check_normalize(normalize)
    obj = resolve_objective(objective, loss_kwargs.get("alpha", DEFAULT_ALPHA), loss_kwargs.get("min_prob"),
                            loss_kwargs.get("max_prob"))
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
        total, label_count, passing = _summed(
            functools.partial(linear_prob_loss, hidden, head.weight, shift_labels, head.bias, objective,
                              ignore_index=ignore_index), obj, shift_labels, ignore_index, **loss_kwargs)
        loss = _reduce(total, label_count, passing, num_items_in_batch, normalize)
        # No cache: a forward with labels is a training or scoring step.
        return CausalLMOutputWithPast(loss=loss, logits=None, hidden_states=getattr(out, "hidden_states", None),
                                      attentions=getattr(out, "attentions", None))

    forward._objx_patched = True
    model.forward = forward
    return model
