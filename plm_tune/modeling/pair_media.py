"""Run PLM's vision tower once per preference pair instead of once per row.

A DPO batch (``plm_tune.encoding.preference_collator``) holds rows ``[chosen_0 .. chosen_{B-1}, rejected_0 ..
rejected_{B-1}]``; PLM's forward reads every row's tiles (and video frames) in row order from one flat
``pixel_values`` (``PerceptionLMModel.forward`` -> ``get_image_features(pixel_values)`` -> ``vision_tower`` on
``pixel_values.flatten(0, 1)``, then ``masked_scatter`` into the image tokens of the rows in order; videos go through
the same ``get_image_features``). So the second half of a pair batch's tiles is the first half again, and the tower,
the most expensive part of a PLM forward at PLM's tile counts (PE-L on 37 tiles of 1,025 patches against a 1B
decoder on ~9.5k tokens), would run twice on the same pixels, in the policy pass and in the reference pass.

``encode_pair_media_once(model)`` wraps ``get_image_features`` of the model's ``PerceptionLMModel``: when the flat
tiles' second half is exactly (``torch.equal``) the first, it encodes the first half and hands back its features
twice (``torch.cat``), the same values the tower gives the second half, since it is a function of its input; the
gradient of each shared feature is the sum over both rows, as with two passes (a tower trained with dropout or
drop-path would draw one mask for both rows of a pair, not two). Any other input (an SFT batch, a batch whose
halves differ) goes through unchanged.
"""

from __future__ import annotations

from typing import Any

import torch

from plm_tune.modeling.method_wrapping import wrap_method, wrapped_calls

__all__ = ["encode_pair_media_once", "pair_media_calls"]

_WRAPPED = "_plm_tune_pair_media"
_OUTCOMES = ("shared", "whole")


def encode_pair_media_once(model: Any) -> int:
    """Make every ``PerceptionLMModel`` inside ``model`` (a plain or peft-wrapped PLM) encode a pair batch's media
    once (module docstring). Idempotent; returns how many modules are now wrapped (1 for one PLM).

    Example:
        >>> encode_pair_media_once(trainer.model)      # build_dpo_trainer does it for the policy and the reference
        1
    """
    modules = [module for module in model.modules()
               if hasattr(module, "get_image_features") and hasattr(module, "multi_modal_projector")]
    for module in modules:  # bound to the instance: a deepcopy encodes with its own weights (method_wrapping)
        wrap_method(module, "get_image_features", _get_image_features_once, _WRAPPED, _OUTCOMES)
    return len(modules)


def _get_image_features_once(self: Any, pixel_values: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
    """``get_image_features`` of the class, on the first half of a pair batch's tiles, its outputs given twice."""
    encode = type(self).get_image_features
    half = _shared_half(pixel_values)
    calls = getattr(self, _WRAPPED)
    if half is None:
        calls["whole"] += 1
        return encode(self, pixel_values, *args, **kwargs)
    calls["shared"] += 1
    outputs = encode(self, half, *args, **kwargs)
    for key in ("last_hidden_state", "pooler_output"):  # the first half's features, then the same again
        value = getattr(outputs, key, None)
        if value is not None:
            setattr(outputs, key, torch.cat([value, value]))
    return outputs


def pair_media_calls(model: Any) -> dict[str, int]:
    """How often the wrapped modules encoded a pair batch's media once (``shared``) or all tiles (``whole``)."""
    return wrapped_calls(model, _WRAPPED, _OUTCOMES)


def _shared_half(pixel_values: torch.Tensor) -> torch.Tensor | None:
    """The first half of ``pixel_values``' tiles (as ``(1, n/2, ...)``) when its second half is exactly the first;
    else None. ``pixel_values``: ``(batch, tiles, 3, H, W)``, flattened to tiles as PLM's ``get_image_features``
    does."""
    if pixel_values is None or pixel_values.dim() < 3:
        return None
    flat = pixel_values.flatten(0, 1)
    count = flat.shape[0]
    if count < 2 or count % 2 or not torch.equal(flat[: count // 2], flat[count // 2:]):
        return None
    return flat[: count // 2].unsqueeze(0)
