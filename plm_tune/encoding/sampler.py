"""Length-grouped batches: samples of similar cost share a batch, so little of each batch is padding.

PLM samples differ wildly in cost: a one-tile image with a one-word answer is ~100 tokens, a 36-tile image
or a 32-frame video is thousands. Random batches pad every row to the longest one. ``LengthGroupedBatchSampler``
works like transformers' ``LengthGroupedSampler``: shuffle, cut into mega-batches, sort each mega-batch by
cost, cut into batches, shuffle the batch order. Batches stay random across the epoch but homogeneous inside.

Costs come from ``plm_tune.encoding.costs`` (``sample_cost``, ``dataset_costs``: media headers only).

Example:
    >>> collator = PLMCollator(processor, max_length=4096)                       # doctest: +SKIP
    >>> costs = dataset_costs(dataset, collator)                                  # doctest: +SKIP
    >>> sampler = LengthGroupedBatchSampler(costs, batch_size=8, seed=0)          # doctest: +SKIP
    >>> loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collator)  # doctest: +SKIP
    >>> for epoch in range(3):                                                    # doctest: +SKIP
    ...     sampler.set_epoch(epoch)
    ...     for batch in loader: ...
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

__all__ = ["GroupedOrder", "LengthGroupedBatchSampler", "padding_fraction"]

Cost = tuple[int, int]  # (tokens, tiles + frames), as plm_tune.encoding.costs computes it


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Batches of dataset indices grouped by cost, shuffled per epoch; pass as ``DataLoader(batch_sampler=...)``.

    Each epoch: shuffle all indices with a generator seeded by ``seed + epoch``; split them into mega-batches
    of ``mega_batch_mult * batch_size * num_replicas``; sort each mega-batch by (tokens, tiles + frames),
    longest first; cut it into batches; group ``num_replicas`` consecutive batches into one step (their
    costs are neighbours, so every rank gets similar work, vision included); shuffle the steps, keeping
    the most expensive step first so that an out-of-memory shows in the first step, not hours later.
    Rank ``r`` yields batch ``r`` of every step.

    Args:
        costs: one ``(tokens, tiles + frames)`` per dataset index (``plm_tune.encoding.costs.dataset_costs``).
        batch_size: samples per batch, per rank.
        seed: shuffling seed; every rank must use the same one.
        mega_batch_mult: mega-batch size in batches per rank (50 as transformers). Larger groups better
            (less padding) but makes batch cost less random over the epoch.
        drop_last: drop the indices that do not fill a whole step (``batch_size * num_replicas``).
            Otherwise, with one replica the last batch is shorter; with several, the first indices of the
            shuffled epoch are repeated to fill the last step (as ``DistributedSampler`` does), so every
            rank runs the same number of steps.
        num_replicas: number of data-parallel ranks (``accelerator.num_processes``).
        rank: this process's rank (``accelerator.process_index``).

    Raises:
        ValueError: empty ``costs``, ``batch_size`` or ``mega_batch_mult`` below 1, ``rank`` out of range.
    """

    def __init__(
        self,
        costs: Sequence[Cost],
        batch_size: int,
        *,
        seed: int = 0,
        mega_batch_mult: int = 50,
        drop_last: bool = False,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if not costs:
            raise ValueError("costs is empty: the sampler needs one (tokens, tiles + frames) per dataset index.")
        if batch_size < 1 or mega_batch_mult < 1 or num_replicas < 1:
            raise ValueError(
                f"batch_size, mega_batch_mult and num_replicas must be >= 1, got {batch_size}, "
                f"{mega_batch_mult}, {num_replicas}."
            )
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, num_replicas={num_replicas}), got {rank}.")
        self.costs = [(int(t), int(v)) for t, v in costs]
        self.batch_size = batch_size
        self.seed = seed
        self.mega_batch_mult = mega_batch_mult
        self.drop_last = drop_last
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the shuffle of ``epoch`` (call before each epoch, on every rank)."""
        self.epoch = epoch

    def __len__(self) -> int:
        step = self.batch_size * self.num_replicas
        n = len(self.costs)
        return n // step if self.drop_last else math.ceil(n / step)

    def __iter__(self) -> Iterator[list[int]]:
        for step in self.steps():
            if self.rank < len(step):
                yield step[self.rank]

    def steps(self) -> list[list[list[int]]]:
        """This epoch's steps, each ``num_replicas`` batches of similar cost, most expensive step first."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.costs), generator=generator).tolist()
        step_size = self.batch_size * self.num_replicas
        if self.drop_last:
            order = order[: len(order) // step_size * step_size]
        elif self.num_replicas > 1 and len(order) % step_size:
            missing = step_size - len(order) % step_size
            order += (order * math.ceil(missing / len(order)))[:missing]
        mega = self.mega_batch_mult * step_size  # a multiple of step_size: steps never straddle mega-batches
        steps = []
        for start in range(0, len(order), mega):
            group = sorted(order[start : start + mega], key=self.costs.__getitem__, reverse=True)
            batches = [group[i : i + self.batch_size] for i in range(0, len(group), self.batch_size)]
            steps += [batches[i : i + self.num_replicas] for i in range(0, len(batches), self.num_replicas)]
        if not steps:
            return []
        shuffled = [steps[i] for i in torch.randperm(len(steps), generator=generator).tolist()]
        # Sorted mega-batches put each step's most expensive sample first.
        longest = max(range(len(shuffled)), key=lambda i: self.costs[shuffled[i][0][0]])
        shuffled.insert(0, shuffled.pop(longest))
        # The epoch's remainder (a short batch, one replica without drop_last) goes last, as in a DataLoader:
        # then the steps also read right as one flat index order cut into equal batches (``GroupedOrder``).
        short = [s for s in shuffled[1:] if len(s) < self.num_replicas or len(s[-1]) < self.batch_size]
        return [shuffled[0]] + [s for s in shuffled[1:] if s not in short] + short

    def flat(self) -> GroupedOrder:
        """This sampler as a plain index ``Sampler`` (see ``GroupedOrder``)."""
        return GroupedOrder(self)


class GroupedOrder(Sampler[int]):
    """A ``LengthGroupedBatchSampler``'s batches as one flat order of indices: step after step, and inside a
    step the batch of rank 0, then of rank 1, ...

    For code that takes a ``sampler`` and cuts it into batches itself, like the ``transformers`` Trainer (a
    ``DataLoader`` with ``batch_size`` per device) under ``accelerate``, which deals those batches to the
    processes in turn: process ``r`` gets batch ``r`` of every step, exactly the rank-balanced batches. Needs
    the sampler's ``num_replicas`` to be the number of processes and its ``batch_size`` the per-device one.
    """

    def __init__(self, batches: LengthGroupedBatchSampler) -> None:
        self.batches = batches

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for ``epoch`` (the Trainer and accelerate call this on every process)."""
        self.batches.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        for step in self.batches.steps():
            for batch in step:
                yield from batch

    def __len__(self) -> int:
        sampler, n = self.batches, len(self.batches.costs)
        step = sampler.batch_size * sampler.num_replicas
        if sampler.drop_last:
            return n // step * step
        return math.ceil(n / step) * step if sampler.num_replicas > 1 else n


def padding_fraction(costs: Sequence[Cost], batches: Sequence[Sequence[int]]) -> float:
    """The share of token slots that are padding when ``batches`` are right-padded to their longest sample.

    Args:
        costs: one ``(tokens, tiles + frames)`` per dataset index.
        batches: lists of dataset indices (e.g. ``list(sampler)``).

    Returns:
        padded slots / total slots, in [0, 1]; 0.0 when there are no slots.

    Example:
        >>> padding_fraction([(10, 1), (30, 1)], [[0, 1]])
        0.3333333333333333
    """
    slots = used = 0
    for batch in batches:
        lengths = [costs[i][0] for i in batch]
        if lengths:
            slots += max(lengths) * len(lengths)
            used += sum(lengths)
    return (slots - used) / slots if slots else 0.0
