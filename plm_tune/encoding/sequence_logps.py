"""Each row's summed log-probability over its answer tokens: what DPO compares, for batches of
``PLMPreferenceCollator``.

The same quantity TRL's ``DPOTrainer`` computes (``_compute_loss``: labels are ``input_ids`` where
``completion_mask`` is set, the per-token log-probs of those next tokens summed per row), here from full logits
in float32, for checks and your own loops.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["sequence_logps"]


def sequence_logps(model: Any, batch: dict[str, Any]) -> torch.Tensor:
    """``log p(answer | prompt)`` of every row of ``batch``: the sum over tokens ``t`` with ``completion_mask[t]``
    of ``log p(input_ids[t] | input_ids[:t])``.

    Args:
        model: a ``PerceptionLMForConditionalGeneration`` (or anything whose forward takes the batch's keys and
            returns ``logits``).
        batch: from ``PLMPreferenceCollator``: ``input_ids`` / ``attention_mask`` / ``completion_mask``
            ``(2B, L)`` and the pixels.

    Returns:
        ``(2B,)`` float32, rows as in the batch: ``chosen, rejected = sequence_logps(model, batch).chunk(2)``.
    """
    inputs = {key: value for key, value in batch.items() if key != "completion_mask"}
    logits = model(**inputs, use_cache=False).logits[:, :-1].float()  # (2B, L - 1, vocab): position t predicts t + 1
    targets = batch["input_ids"][:, 1:].to(logits.device)
    per_token = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (2B, L - 1)
    mask = batch["completion_mask"][:, 1:].to(logits.device)
    return (per_token * mask).sum(dim=-1)
