"""Logits only where a label is set: the positions of a batch that predict a labelled token.

An image-heavy PLM batch has thousands of placeholder tokens and an answer of tens, yet the model's forward
projects every position onto the vocabulary: ``(batch, seq_len, vocab)`` logits, 128k wide for PLM. Passing
``logits_to_keep`` (positions) and ``shift_labels`` (their next-token labels) makes
``PerceptionLMForConditionalGeneration.forward`` run ``lm_head`` and its own loss on those positions only;
the loss is the same, since every other position has an ignored label.

``project_labelled_only`` goes one step further for padded batches: it selects the labelled (row, position)
pairs themselves, not positions shared by all rows. ``build_trainer`` uses it (``ModelArguments.labelled_logits_loss``;
on CUDA it uses TRL's fused LM head instead, which scores the labelled positions in tiles). Use these functions where
you call the model yourself.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from plm_tune.encoding.formatting import IGNORE_INDEX

__all__ = ["labelled_positions", "keep_labelled_logits", "project_labelled_only"]


def labelled_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The positions whose next token is labelled, in any row, and the next-token labels there.

    Args:
        labels: ``(batch, seq_len)``, ``IGNORE_INDEX`` (-100) where no loss is taken.

    Returns:
        ``(logits_to_keep, shift_labels)``: ``logits_to_keep`` ``(K,)`` sorted positions ``t`` with
        ``labels[row, t + 1]`` set in some row (the union over rows, so one index serves the whole batch);
        ``shift_labels`` ``(batch, K)``: ``labels[:, t + 1]`` at those positions, -100 where that row has none.

    Example:
        >>> labels = torch.tensor([[-100, -100, 5, 6], [-100, 7, -100, -100]])
        >>> keep, shift = labelled_positions(labels)
        >>> keep.tolist(), shift.tolist()
        ([0, 1, 2], [[-100, 5, 6], [7, -100, -100]])
    """
    next_labels = labels[:, 1:]  # (batch, seq_len - 1): position t predicts token t + 1
    logits_to_keep = (next_labels != IGNORE_INDEX).any(dim=0).nonzero().squeeze(1)  # (K,)
    return logits_to_keep, next_labels[:, logits_to_keep]


def keep_labelled_logits(batch: dict[str, Any]) -> dict[str, Any]:
    """``batch`` plus ``logits_to_keep`` and ``shift_labels`` from its ``labels`` (see ``labelled_positions``).

    ``model(**batch)`` then returns ``logits`` ``(batch, K, vocab)`` and the same ``loss`` as with full logits.
    Not for ``SFTTrainer`` batches: its fused LM head reads ``shift_labels`` as full-length labels.

    Example:
        >>> out = model(**keep_labelled_logits(collator(samples)))   # doctest: +SKIP
    """
    logits_to_keep, shift_labels = labelled_positions(batch["labels"])
    return {**batch, "logits_to_keep": logits_to_keep, "shift_labels": shift_labels}


@contextmanager
def project_labelled_only(model: Any, labels: torch.Tensor) -> Iterator[torch.Tensor]:
    """Inside this context, ``model(..., logits_to_keep=0)`` projects only the (row, position) pairs that predict a
    labelled token: ``logits`` ``(1, N, vocab)``, in row-major order. Yields their next-token labels ``(N,)``.

    Exact per row, unlike ``logits_to_keep`` positions, which are shared by every row of a padded batch (the
    union of the rows' positions). A forward pre-hook on the model's output embeddings selects the hidden
    states, so it runs inside the model's own forward (as DeepSpeed ZeRO-3 needs) and gradients flow through.

    Args:
        model: the model (unwrapped: ``get_output_embeddings`` must give its LM head).
        labels: ``(batch, seq_len)``, ``IGNORE_INDEX`` where no loss is taken.

    Example:
        >>> with project_labelled_only(model, batch["labels"]) as targets:       # doctest: +SKIP
        ...     logits = model(**{k: v for k, v in batch.items() if k != "labels"}, logits_to_keep=0).logits[0]
        >>> loss = torch.nn.functional.cross_entropy(logits.float(), targets)    # doctest: +SKIP
    """
    predicts = torch.zeros_like(labels, dtype=torch.bool)
    predicts[:, :-1] = labels[:, 1:] != IGNORE_INDEX  # position t predicts token t + 1
    targets = labels[:, 1:][predicts[:, :-1]]

    def gather(module: Any, args: tuple) -> tuple:
        hidden = args[0]  # (batch, seq_len, hidden): logits_to_keep=0 keeps every position
        return (hidden[predicts.to(hidden.device)].unsqueeze(0), *args[1:])

    handle = model.get_output_embeddings().register_forward_pre_hook(gather)
    try:
        yield targets
    finally:
        handle.remove()
