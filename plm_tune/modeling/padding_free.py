"""Run PLM's decoder on a padded batch's real tokens only, packed into one row, and hand back the padded layout.

DPO needs its batches padded: TRL's ``DPOTrainer`` (1.16) reads per-token log-probs of shape ``(2B, L)`` and splits
the rows into chosen and rejected halves (``chunk(2)``), and its own ``padding_free`` is disabled. The padding is
large when a batch mixes pairs of different tile counts (a 37-tile image's rows against a 5-tile one's), and the
decoder would spend on it what it spends on real tokens.

``decode_padding_free(model)`` wraps the forward of every Llama decoder (``LlamaModel``) inside ``model``: given
``inputs_embeds`` ``(B, L, H)`` (PLM's forward gives it the text embeddings with the image features scattered in)
and a 2-D ``attention_mask`` with padding, it keeps the real positions, packs them into ``(1, T, H)`` with
``position_ids`` restarting at 0 for each row (transformers reads that as packed sequences: varlen kernels under
``flash_attention_2``, a block-diagonal mask under sdpa / eager), runs the decoder once, and scatters its hidden
states back into ``(B, L, H)`` (zeros at the padding, which every loss masks). Everything above the decoder (the LM
head, TRL's fused log-probs, the loss) sees the batch it would have seen. Each row's positions are those of the
padded forward for right padding (``PLMCollator``'s): 0 .. n - 1.

Only a training-style call is packed (``use_cache=False``, no ``position_ids`` or hidden states / attentions asked
for); generation and unpadded batches go through unchanged.
"""

from __future__ import annotations

from typing import Any

import torch

from plm_tune.modeling.method_wrapping import wrap_method, wrapped_calls

__all__ = ["decode_padding_free", "padding_free_calls"]

_WRAPPED = "_plm_tune_padding_free"
_OUTCOMES = ("packed", "whole")


def decode_padding_free(model: Any) -> int:
    """Make every Llama decoder inside ``model`` (a plain or peft-wrapped PLM) run a padded batch packed (module
    docstring). Idempotent; returns how many decoders are wrapped (1 for one PLM).

    Example:
        >>> decode_padding_free(trainer.model)   # build_dpo_trainer does it when DPOConfig.padding_free is True
        1
    """
    decoders = [module for module in model.modules() if type(module).__name__ == "LlamaModel"]
    for module in decoders:  # bound to the instance: a deepcopy decodes with its own weights (method_wrapping)
        wrap_method(module, "forward", _forward_padding_free, _WRAPPED, _OUTCOMES)
    return len(decoders)


def padding_free_calls(model: Any) -> dict[str, int]:
    """How often the wrapped decoders ran a batch packed (``packed``) or as given (``whole``)."""
    return wrapped_calls(model, _WRAPPED, _OUTCOMES)


def _forward_padding_free(self: Any, *args: Any, attention_mask: torch.Tensor | None = None,
                          inputs_embeds: torch.Tensor | None = None, **kwargs: Any) -> Any:
    """The class's ``forward`` on the real tokens of ``inputs_embeds``, packed into one row (module docstring)."""
    forward = type(self).forward
    calls = getattr(self, _WRAPPED)
    if not _packable(args, attention_mask, inputs_embeds, kwargs):
        calls["whole"] += 1
        return forward(self, *args, attention_mask=attention_mask, inputs_embeds=inputs_embeds, **kwargs)
    calls["packed"] += 1
    real = attention_mask.bool()
    positions = (real.long().cumsum(dim=-1) - 1)[real].unsqueeze(0)  # 0 .. n - 1 in each row
    kwargs.pop("position_ids", None)
    outputs = forward(self, inputs_embeds=inputs_embeds[real].unsqueeze(0), attention_mask=None,
                      position_ids=positions, **kwargs)
    packed = outputs.last_hidden_state  # (1, T, H)
    padded = packed.new_zeros(*real.shape, packed.shape[-1])
    outputs.last_hidden_state = padded.masked_scatter(real.unsqueeze(-1), packed)  # differentiable, out of place
    return outputs


def _packable(args: tuple, attention_mask: torch.Tensor | None, inputs_embeds: torch.Tensor | None,
              kwargs: dict[str, Any]) -> bool:
    """A training call on a padded batch of embeddings, with nothing asked for that packing would change."""
    if args or inputs_embeds is None or attention_mask is None or attention_mask.dim() != 2:
        return False
    if kwargs.get("use_cache") is not False or kwargs.get("position_ids") is not None:
        return False
    if kwargs.get("output_hidden_states") or kwargs.get("output_attentions"):
        return False
    if kwargs.get("cache") is not None or kwargs.get("past_key_values") is not None:
        return False
    return inputs_embeds.shape[0] > 1 and not bool(attention_mask.all())
