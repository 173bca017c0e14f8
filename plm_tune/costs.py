"""What a sample costs the training step, from media headers alone: tokens, tiles, frames.

``estimate_cost`` gives the exact sequence length the collator will build for a sample without decoding a
pixel: image sizes and video frame counts come from headers (``plm_tune.media``), tile grids from PLM's tiling
rule (``plm_tune.tiling``), the text from the collator's own ``ConversationEncoder``, and what a too-long sample
keeps from the same ``max_length`` policy the collator applies (``plm_tune.length_policy``). ``sample_cost`` /
``dataset_costs`` give the ``(tokens, tiles + frames)`` key that ``LengthGroupedBatchSampler`` groups by;
``plm_tune.plan`` reports on a whole dataset.

Example:
    >>> collator = PLMCollator(processor, max_length=4096, max_tiles=16)        # doctest: +SKIP
    >>> estimate_cost(sample, collator).tokens == len(collator.encode(sample).input_ids)   # doctest: +SKIP
    True
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from plm_tune.collator import CollatorStats, PLMCollator
from plm_tune.formatting import IGNORE_INDEX
from plm_tune.length_policy import Fit, Outcome, SampleCounts, fit_sample
from plm_tune.media import image_size, video_frame_count
from plm_tune.sample import normalize_messages
from plm_tune.tiling import image_tiles

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

    @property
    def cost(self) -> Cost:
        """``(tokens, tiles + frames)``: the key ``LengthGroupedBatchSampler`` groups by."""
        return (self.tokens, self.tiles + self.frames)


class CostEstimator:
    """Header-only estimates for one collator, with its tile counts per image size cached across samples.

    Args:
        collator: the training collator: its ``max_length``, ``fit_tiles``, ``fit_frames``, ``truncate_turns``,
            ``max_tiles``, ``num_frames`` and ``vision_input_type`` decide the counts (a sample's own
            ``max_tiles`` / ``num_frames`` keys included).
    """

    def __init__(self, collator: PLMCollator) -> None:
        self.collator = collator
        pixels = collator.pixels
        self.tile_size = pixels.image_processor.tile_size
        self.image_tokens = pixels.tokens_per_tile(self.tile_size, self.tile_size)  # per image tile
        size = pixels.video_processor.size
        height, width = (size["height"], size["width"]) if isinstance(size, Mapping) else (size.height, size.width)
        self.frame_tokens = pixels.tokens_per_tile(height, width)  # per video frame
        self._tiles: dict[tuple[int, int, int, str], int] = {}
        self._encoding = copy.copy(collator)  # encodes a sample whose headers cannot be read, uncounted
        self._encoding.stats = CollatorStats()

    def tiles(self, size: tuple[int, int], budget: int, tiling: str = "thumb+tile") -> int:
        """Tiles PLM's image processor makes of a ``(width, height)`` image with ``budget`` tiles."""
        key = (*size, budget, tiling)
        if key not in self._tiles:
            self._tiles[key] = image_tiles(size, tile_size=self.tile_size, max_tiles=budget, vision_input_type=tiling)
        return self._tiles[key]

    def estimate(self, sample: dict[str, Any]) -> SampleEstimate:
        """What ``collator.encode(sample)`` will produce, from media headers only (see ``estimate_cost``)."""
        collator = self.collator
        turns = normalize_messages(sample)
        tiling, budget = collator.pixels.image_budget(sample)  # the collator's own tiling decision
        sizes = [image_size(entry) for entry in sample.get("images") or []]
        tiles = [self.tiles(size, budget, tiling) for size in sizes]
        frames = [video_frame_count(entry, sample.get("num_frames") or collator.pixels.num_frames)
                  for entry in sample.get("videos") or []]

        def encode(kept_turns: list, image_tiles: Sequence[int], video_frames: Sequence[int]):
            counts = {"image": [t * self.image_tokens for t in image_tiles],
                      "video": [f * self.frame_tokens for f in video_frames]}
            return collator.encoder.encode(kept_turns, counts, train_on=collator.train_on)

        encoded = encode(turns, tiles, frames)
        counts = SampleCounts.measure(turns, encoded, image_tiles=tiles, tile_tokens=self.image_tokens,
                                      video_frames=frames, frame_tokens=self.frame_tokens,
                                      thumbnails=tiling == "thumb+tile")
        fit: Fit = fit_sample(counts, max_length=collator.max_length,
                              fit_tiles=collator.fit_tiles and tiling == "thumb+tile",
                              fit_frames=collator.fit_frames, truncate_turns=collator.truncate_turns,
                              tiles_at=lambda index, cap: self.tiles(sizes[index], cap, tiling))
        if fit.outcome == "rejected":
            return SampleEstimate(0, 0, 0, 0, 0, 0, 0, 0, full_tokens=fit.full_tokens, outcome="rejected")
        if fit.outcome != "fits":
            encoded = encode(turns[: fit.kept_turns], fit.image_tiles, fit.video_frames)
        media_ids = set(collator.encoder.media_ids.values())
        media = sum(1 for token in encoded.input_ids if token in media_ids)
        return SampleEstimate(
            tokens=len(encoded.input_ids),
            text_tokens=len(encoded.input_ids) - media,
            media_tokens=media,
            labelled_tokens=sum(1 for label in encoded.labels if label != IGNORE_INDEX),
            tiles=sum(fit.image_tiles[i] for i in fit.images),
            frames=sum(fit.video_frames[i] for i in fit.videos),
            images=len(fit.images),
            videos=len(fit.videos),
            full_tokens=fit.full_tokens,
            outcome=fit.outcome,
            dropped_turns=len(turns) - fit.kept_turns,
            tiles_removed=fit.tiles_removed,
            frames_removed=fit.frames_removed,
        )

    def cost(self, sample: dict[str, Any]) -> Cost:
        """``(tokens, tiles + frames)`` of a sample: from its headers, or, where they cannot be read that way,
        by encoding it in full (so a bad sample raises the collator's own error); nothing is counted."""
        try:
            return self.estimate(sample).cost
        except ValueError:
            encoded = self._encoding.encode(sample)
        if encoded is None:
            return (0, 0)
        return (len(encoded.input_ids), sum(t.shape[0] for t in encoded.images) + sum(f.shape[0] for f in encoded.videos))


def estimate_cost(sample: dict[str, Any], collator: PLMCollator) -> SampleEstimate:
    """What ``collator.encode(sample)`` will produce, from media headers only.

    Exact: ``tokens == len(collator.encode(sample).input_ids)`` and ``tiles`` / ``frames`` equal the first dims
    of its pixel tensors, under the collator's ``max_length``, ``fit_tiles``, ``fit_frames``, ``truncate_turns``,
    ``max_tiles``, ``num_frames`` and ``vision_input_type`` (a sample's own ``max_tiles`` / ``num_frames`` keys
    included).
    Nothing is counted in ``collator.stats`` and nothing is logged. For many samples, reuse one
    ``CostEstimator(collator)``.

    Args:
        sample: a canonical sample (``plm_tune.sample``).
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


def sample_cost(sample: dict[str, Any], collator: PLMCollator) -> Cost:
    """The cost of one canonical sample as ``collator`` would encode it, from its media headers.

    Args:
        sample: a canonical sample (``plm_tune.sample``).
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


def dataset_costs(dataset: Any, collator: PLMCollator, *, progress: bool = True,
                  indices: Sequence[int] | None = None) -> list[Cost]:
    """``(tokens, tiles + frames)`` of every sample of ``dataset`` (``sample_cost``), or of the samples at
    ``indices``, in their order, with a progress bar."""
    from tqdm.auto import tqdm

    estimator = CostEstimator(collator)
    indices = range(len(dataset)) if indices is None else indices
    return [estimator.cost(dataset[i]) for i in tqdm(indices, desc="Sample costs", unit="sample", disable=not progress)]
