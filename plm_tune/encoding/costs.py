"""What a sample costs the training step, from media headers alone: tokens, tiles, frames.

``estimate_cost`` gives the exact sequence length the collator will build for a sample without decoding a
pixel: it is the collator's own plan (``plm_tune.encoding.sample_plan``: image sizes and video frame counts from headers,
tile grids from PLM's tiling rule, the text from the collator's encoder, the ``max_length`` policy), which the
collator then builds. ``sample_cost`` / ``dataset_costs`` give the ``(tokens, tiles + frames)`` key that
``LengthGroupedBatchSampler`` groups by; ``plm_tune.training.plan`` reports on a whole dataset.

A preference sample (a ``"chosen"`` key: ``plm_tune.encoding.preference_collator``) costs two sequences, planned by
``plan_pair`` as ``PLMPreferenceCollator`` builds them: its token counts are both rows' together (``rows`` 2,
``row_tokens`` each row's length) and its tiles / frames are counted once (decoded and processed once per pair; the
batch carries them on both rows, so the vision tower sees ``rows`` times as many).

Example:
    >>> collator = PLMCollator(processor, max_length=4096, max_tiles=16)        # doctest: +SKIP
    >>> estimate_cost(sample, collator).tokens == len(collator.encode(sample).input_ids)   # doctest: +SKIP
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from plm_tune.encoding.length_policy import Outcome
from plm_tune.encoding.preference_collator import PairPlan, is_preference_sample, plan_pair
from plm_tune.encoding.sample_plan import Planner, SamplePlan

__all__ = ["Cost", "SampleEstimate", "CostEstimator", "estimate_cost", "sample_cost", "dataset_costs"]

Cost = tuple[int, int]  # (tokens, tiles + frames)


@dataclass
class SampleEstimate:
    """What the collator will make of one sample, known without decoding its media.

    ``tokens``, ``tiles``, ``frames`` and the other counts describe the sample after the collator's
    ``max_length`` policy (0 for a rejected sample); ``full_tokens`` is its length before the policy.
    """

    tokens: int  # sequence length (== len(collator.encode(sample).input_ids))
    text_tokens: int  # tokens that are not image / video placeholders
    media_tokens: int  # image and video placeholder tokens
    labelled_tokens: int  # tokens with a label (the loss is computed on these)
    tiles: int  # image tiles, thumbnails included (== sum of the pixel tensors' first dims)
    frames: int  # video frames
    images: int  # images kept
    videos: int  # videos kept
    full_tokens: int  # length before the max_length policy
    outcome: Outcome = "fits"  # what the max_length policy did
    dropped_turns: int = 0  # messages dropped (outcome "truncated")
    tiles_removed: int = 0  # tiles lowered away (outcome "fitted")
    frames_removed: int = 0  # video frames lowered away (outcome "fitted")
    rows: int = 1  # sequences the sample becomes: 2 for a preference pair (chosen, rejected)
    row_tokens: tuple[int, ...] = ()  # each row's length when rows > 1 (tokens is their sum)

    @property
    def row_lengths(self) -> tuple[int, ...]:
        """The length of each row the sample becomes (``(tokens,)`` for an SFT sample; ``()`` when rejected)."""
        if self.outcome == "rejected":
            return ()
        return self.row_tokens or (self.tokens,)

    @property
    def cost(self) -> Cost:
        """``(tokens, tiles + frames)``: the key ``LengthGroupedBatchSampler`` groups by."""
        return (self.tokens, self.tiles + self.frames)

    @classmethod
    def of(cls, plan: SamplePlan) -> SampleEstimate:
        """The counts of a ``SamplePlan``."""
        fit = plan.fit
        if fit.outcome == "rejected":
            return cls(0, 0, 0, 0, 0, 0, 0, 0, full_tokens=fit.full_tokens, outcome="rejected")
        return cls(
            tokens=plan.tokens,
            text_tokens=plan.tokens - plan.media_tokens,
            media_tokens=plan.media_tokens,
            labelled_tokens=plan.labelled_tokens,
            tiles=plan.tiles,
            frames=plan.frames,
            images=len(plan.images),
            videos=len(plan.videos),
            full_tokens=fit.full_tokens,
            outcome=fit.outcome,
            dropped_turns=plan.dropped_turns,
            tiles_removed=fit.tiles_removed,
            frames_removed=fit.frames_removed,
        )

    @classmethod
    def of_pair(cls, pair: PairPlan) -> SampleEstimate:
        """The counts of a preference pair's ``PairPlan``: both rows' tokens, its media once."""
        if pair.outcome == "rejected":
            return cls(0, 0, 0, 0, 0, 0, 0, 0, full_tokens=sum(pair.full_tokens), outcome="rejected", rows=2)
        chosen, rejected = cls.of(pair.chosen), cls.of(pair.rejected)
        return cls(
            tokens=chosen.tokens + rejected.tokens,
            text_tokens=chosen.text_tokens + rejected.text_tokens,
            media_tokens=chosen.media_tokens + rejected.media_tokens,
            labelled_tokens=chosen.labelled_tokens + rejected.labelled_tokens,
            tiles=chosen.tiles,  # the same media on both rows: decoded and processed once
            frames=chosen.frames,
            images=chosen.images,
            videos=chosen.videos,
            full_tokens=sum(pair.full_tokens),
            outcome=pair.outcome,
            tiles_removed=chosen.tiles_removed,
            frames_removed=chosen.frames_removed,
            rows=2,
            row_tokens=(chosen.tokens, rejected.tokens),
        )


class CostEstimator:
    """Header-only estimates for one collator: its plan of each sample, as counts.

    Args:
        collator: the training collator (anything with ``plan(sample) -> SamplePlan``): its ``max_length``,
            ``fit_tiles``, ``fit_frames``, ``truncate_turns``, ``max_tiles``, ``num_frames`` and
            ``vision_input_type`` decide the counts (a sample's own ``max_tiles`` / ``num_frames`` keys included).
            Preference samples are planned with it as ``PLMPreferenceCollator(collator)`` builds them (``plan_pair``
            reads its ``settings`` and ``encoder``: pass the ``PLMCollator`` itself).
    """

    def __init__(self, collator: Planner) -> None:
        self.collator = collator

    def estimate(self, sample: dict[str, Any]) -> SampleEstimate:
        """What ``collator.encode(sample)`` will produce, from media headers only (see ``estimate_cost``); for a
        preference sample, what ``PLMPreferenceCollator(collator)`` builds of it (two rows)."""
        if is_preference_sample(sample):
            return SampleEstimate.of_pair(plan_pair(sample, self.collator))
        return SampleEstimate.of(self.collator.plan(sample))

    def cost(self, sample: dict[str, Any]) -> Cost:
        """``(tokens, tiles + frames)`` of a sample, from its headers; nothing is counted. A sample the collator
        cannot build raises the collator's own error (the same header read names the sample and the entry)."""
        return self.estimate(sample).cost


def estimate_cost(sample: dict[str, Any], collator: Planner) -> SampleEstimate:
    """What ``collator.encode(sample)`` will produce, from media headers only.

    Exact: ``tokens == len(collator.encode(sample).input_ids)`` and ``tiles`` / ``frames`` equal the first dims
    of its pixel tensors, under the collator's ``max_length``, ``fit_tiles``, ``fit_frames``, ``truncate_turns``,
    ``max_tiles``, ``num_frames`` and ``vision_input_type`` (a sample's own ``max_tiles`` / ``num_frames`` keys
    included).
    Nothing is counted in ``collator.stats`` and nothing is logged. For many samples, reuse one
    ``CostEstimator(collator)``.

    Args:
        sample: a canonical sample (``plm_tune.data.sample``).
        collator: the training collator.

    Returns:
        A ``SampleEstimate``; a sample the collator would reject has ``outcome="rejected"`` and 0 tokens.

    Raises:
        ValueError: a malformed sample or an unreadable media header, naming the entry.

    Example:
        >>> estimate_cost({"messages": [...], "images": ["scan.png"]}, collator)   # doctest: +SKIP
        SampleEstimate(tokens=9586, text_tokens=114, media_tokens=9472, ..., tiles=37, frames=0, ...)
    """
    return CostEstimator(collator).estimate(sample)


def sample_cost(sample: dict[str, Any], collator: Planner) -> Cost:
    """The cost of one canonical sample as ``collator`` would encode it, from its media headers.

    Args:
        sample: a canonical sample (``plm_tune.data.sample``).
        collator: the collator used for training (its ``max_length``, ``max_tiles``, ``num_frames`` and
            truncation policy decide the cost).

    Returns:
        ``(tokens, tiles + frames)``: the sequence length in tokens and the number of image tiles plus video
        frames the vision encoder sees. ``(0, 0)`` for a sample the collator rejects as too long. Nothing is
        counted in ``collator.stats``.

    Example:
        >>> sample_cost({"messages": [...], "images": [image]}, collator)           # doctest: +SKIP
        (143, 2)
    """
    return CostEstimator(collator).cost(sample)


def dataset_costs(dataset: Any, collator: Planner, *, progress: bool = True,
                  indices: Sequence[int] | None = None) -> list[Cost]:
    """``(tokens, tiles + frames)`` of every sample of ``dataset`` (``sample_cost``), or of the samples at
    ``indices``, in their order, with a progress bar."""
    from tqdm.auto import tqdm

    estimator = CostEstimator(collator)
    indices = range(len(dataset)) if indices is None else indices
    return [estimator.cost(dataset[i]) for i in tqdm(indices, desc="Sample costs", unit="sample", disable=not progress)]
