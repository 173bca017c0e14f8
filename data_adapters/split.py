"""Hold out an eval split: a share (or a number) of a table's samples, optionally the same share of every answer
(for class-like answers: a modality), or the first records of a stream.

A plain random split of a small, skewed corpus can leave a class out of training (it cannot be learned) or out
of eval (it is never tested). ``held_out_split(..., stratify=True)`` groups samples by their last assistant
message and holds out ``share`` of each group, at least one sample of every group that has two or more::

    {"messages": [..., {"role": "assistant", "content": "CT"}], ...}   # grouped under "CT"

A stream (``datasets.IterableDataset``) has no length to take a share of: ``held_out_split(stream, 64)`` holds out
its first 64 records, what ``stream.take(64)`` reads, read now into a table (the Trainer evaluates it and
``finish_run`` answers it; both need a length). The training stream is every other record, but not
``stream.skip(64)``: ``datasets`` splits a ``skip`` between a stream's readers (``SkipExamplesIterable`` with
``split_when_sharding``), so with 2 DataLoader workers each would skip the first 32 records of its own shards,
training on some held-out records and never reading others. Here the held-out records are counted by shard, and
the training stream skips exactly those, shard by shard; it keeps the stream's shards, so workers and processes
still share it. Split before shuffling: a shuffled stream's first records change with the seed and the epoch.
"""

from __future__ import annotations

import itertools
import random
from collections import defaultdict
from functools import partial
from typing import Any

from data_adapters._records import stream_rows
from plm_tune.arguments import SHUFFLE_BUFFER  # the recipes' CorpusArguments default: one value

__all__ = ["SHUFFLE_BUFFER", "held_out_split"]



def held_out_split(dataset: Any, held_out: float, *, seed: int = 0, stratify: bool = False,
                   shuffle_buffer: int | None = None) -> tuple[Any, Any | None]:
    """``(train, eval)`` of ``dataset``: ``held_out`` of it held out for evaluation.

    Args:
        dataset: a ``datasets.Dataset`` of canonical samples, or a ``datasets.IterableDataset`` (a stream).
        held_out: in [0, 1): the share held out (a table only); a whole number >= 1: that many samples (a
            stream: its first ones); 0 holds out nothing (eval is None).
        seed: the shuffle seed of a table's split (the same seed gives the same split); a stream's is its order.
        stratify: hold out ``held_out`` of each distinct answer (rounded, at least 1 of a group of 2 or more;
            a group of 1 stays in training). False: ``dataset.train_test_split`` (a plain random split).
            Tables only.
        shuffle_buffer: a stream's training part is shuffled through a buffer of this many samples, with
            ``seed`` (the recipes pass ``SHUFFLE_BUFFER``). Every process must use the same seed: each reads a block
            of the shards in the order the seed draws, so the orders must agree. None, or a table: no shuffle here
            (the Trainer shuffles a table whole).

    Returns:
        ``(train, eval)`` (``(dataset, None)`` for 0). A table: two selections of it (with ``stratify`` both keep
        its order). A stream: a stream of the records not held out, with as many shards, and a
        ``datasets.Dataset`` of the first ``held_out`` records.

    Raises:
        ValueError: ``held_out`` negative, or >= 1 and not whole; a share of a stream; ``stratify`` with a stream;
            a stream with ``held_out`` records or fewer.

    Example:
        >>> train, held = held_out_split(samples, 0.25, seed=0, stratify=True)   # doctest: +SKIP
        >>> train, held = held_out_split(stream, 64)   # held: the first 64 records  # doctest: +SKIP
    """
    import datasets

    if shuffle_buffer and isinstance(dataset, datasets.IterableDataset):
        train, held = held_out_split(dataset, held_out, seed=seed, stratify=stratify)
        return train.shuffle(seed=seed, buffer_size=shuffle_buffer), held
    if held_out < 0 or (held_out >= 1 and held_out != int(held_out)):
        raise ValueError(f"The eval split must be a share in [0, 1) or a whole number of samples (0: no eval "
                         f"split), got {held_out}.")
    if held_out == 0:
        return dataset, None
    if isinstance(dataset, datasets.IterableDataset):
        return _split_stream(dataset, held_out, stratify)
    if not stratify:
        split = dataset.train_test_split(test_size=held_out if held_out < 1 else int(held_out), seed=seed)
        return split["train"], split["test"]
    share = held_out if held_out < 1 else held_out / len(dataset)
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


def _split_stream(stream: Any, held_out: float, stratify: bool) -> tuple[Any, Any]:
    """The first ``held_out`` records as a table, and a stream of the others (see the module docstring)."""
    import datasets

    if held_out < 1:
        raise ValueError(f"A stream has no length to hold out a share of (got {held_out}): give a number of "
                         "samples, e.g. 64, and its first 64 samples are held out (eval_split: 64 in a recipe).")
    if stratify:
        raise ValueError("stratify=True needs every answer before splitting, and a stream is read as training goes. "
                         "Hold out its first samples with stratify=False, or build a table (streaming=False).")
    count = int(held_out)
    wanted = count + 1  # one more than held out: proof that something is left to train on
    rows: list[dict[str, Any]] = []
    skips = [0] * stream.num_shards  # records read from each shard, in order: take(n) reads the shards in turn
    for index in range(stream.num_shards):
        shard = stream.shard(num_shards=stream.num_shards, index=index)
        taken = list(itertools.islice(stream_rows(shard, batch_size=1), wanted - len(rows)))  # no read-ahead
        rows += taken
        skips[index] = len(taken)
        if len(rows) == wanted:
            break
    if len(rows) < wanted:
        raise ValueError(f"The stream has {len(rows)} sample(s); holding out {count} leaves none to train on. Hold "
                         "out fewer (eval_split in a recipe).")
    rows.pop()  # the extra record is trained on
    skips[index] -= 1
    held = datasets.Dataset.from_list(rows, features=stream.features)
    train = datasets.IterableDataset.from_generator(partial(_rest_of_shards, stream=stream),
                                                    gen_kwargs={"parts": list(enumerate(skips))},
                                                    features=stream.features)
    if hasattr(stream, "skip_report"):
        train.skip_report = stream.skip_report
    return train, held


def _rest_of_shards(parts: list[tuple[int, int]], *, stream: Any) -> Any:
    """The records of ``stream``'s shards ``parts`` names, each ``(shard, held out)`` without its first held out."""
    for index, skip in parts:
        yield from itertools.islice(stream_rows(stream.shard(num_shards=stream.num_shards, index=index)), skip, None)


def _answer(messages: list[dict[str, Any]]) -> str:
    """The text of the last assistant message (string or text parts; the table form's None fields ignored)."""
    last = next((m for m in reversed(messages) if m.get("role") == "assistant"), None)
    if last is None:
        return ""
    content = last.get("content")
    if isinstance(content, str):
        return content.strip()
    return " ".join(str(part.get("text") or "") for part in content or []).strip()
