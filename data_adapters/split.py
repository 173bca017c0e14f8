"""Hold out an eval split, optionally the same share of every answer (for class-like answers: a modality).

A plain random split of a small, skewed corpus can leave a class out of training (it cannot be learned) or out
of eval (it is never tested). ``held_out_split(..., stratify=True)`` groups samples by their last assistant
message and holds out ``share`` of each group, at least one sample of every group that has two or more::

    {"messages": [..., {"role": "assistant", "content": "CT"}], ...}   # grouped under "CT"
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

__all__ = ["held_out_split"]


def held_out_split(dataset: Any, share: float, *, seed: int = 0, stratify: bool = False) -> tuple[Any, Any | None]:
    """``(train, eval)`` selections of ``dataset``, ``share`` of it held out.

    Args:
        dataset: a ``datasets.Dataset`` of canonical samples.
        share: the held-out share, in [0, 1); 0 holds out nothing (eval is None).
        seed: the shuffle seed (the same seed gives the same split).
        stratify: hold out ``share`` of each distinct answer (rounded, at least 1 of a group of 2 or more;
            a group of 1 stays in training). False: ``dataset.train_test_split`` (a plain random split).

    Returns:
        ``(train, eval)`` datasets (``(dataset, None)`` for share 0); with ``stratify`` both keep the
        dataset's order.

    Raises:
        ValueError: ``share`` outside [0, 1).

    Example:
        >>> train, held_out = held_out_split(samples, 0.25, seed=0, stratify=True)   # doctest: +SKIP
    """
    if not 0 <= share < 1:
        raise ValueError(f"The eval share must be between 0 and 1 (0: no eval split; 1 excluded), got {share}.")
    if share == 0:
        return dataset, None
    if not stratify:
        split = dataset.train_test_split(test_size=share, seed=seed)
        return split["train"], split["test"]
    groups: dict[str, list[int]] = defaultdict(list)
    for index, messages in enumerate(dataset["messages"]):
        groups[_answer(messages)].append(index)
    rng = random.Random(seed)
    held: list[int] = []
    for answer in sorted(groups):  # sorted: the split does not depend on the dataset's order of first sight
        indices = groups[answer]
        if len(indices) < 2:
            continue
        rng.shuffle(indices)
        held += indices[:min(len(indices) - 1, max(1, round(share * len(indices))))]
    held_set = set(held)
    return (dataset.select([i for i in range(len(dataset)) if i not in held_set]),
            dataset.select(sorted(held_set)))


def _answer(messages: list[dict[str, Any]]) -> str:
    """The text of the last assistant message (string or text parts; the table form's None fields ignored)."""
    last = next((m for m in reversed(messages) if m.get("role") == "assistant"), None)
    if last is None:
        return ""
    content = last.get("content")
    if isinstance(content, str):
        return content.strip()
    return " ".join(str(part.get("text") or "") for part in content or []).strip()
