"""Plan before you train: exact per-sample token counts from media headers, padding waste, peak memory.

``estimate_cost`` gives the exact sequence length the collator will build for a sample, without decoding a
pixel: image sizes come from file headers (``PIL.Image.open(...).size``, lazy), DICOM sizes and frame counts
from their headers (pydicom, ``stop_before_pixels``), video durations from container metadata (PyAV, no
decode). Tile grids are chosen by PLM's own image processor code (its canvas-fitting methods, on the size
alone); frame counts follow ``plm_tune.media``'s sampling; the text goes through the collator's own
``ConversationEncoder`` and its ``max_length`` policy (trailing turns dropped, sample rejected, or tiles
lowered with ``fit_tiles``). ``plan_dataset`` runs it over a dataset and reports the token distribution,
over-length samples and padding waste with random, length-grouped and packed batches.

Example:
    >>> collator = PLMCollator(processor, max_length=4096, max_tiles=16)        # doctest: +SKIP
    >>> estimate_cost(sample, collator).tokens == len(collator.encode(sample).input_ids)   # doctest: +SKIP
    True
    >>> print(plan_dataset(dataset, collator, batch_size=8).report())          # doctest: +SKIP
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from plm_tune.collator import PLMCollator
from plm_tune.dicom import dicom_frame_count, is_dicom_path, read_dicom_header
from plm_tune.formatting import IGNORE_INDEX
from plm_tune.media import (
    clip_frame_indices,
    is_frames,
    open_video_stream,
    pick_uniform,
    read_image_entry,
    require_video_file,
    video_file,
    viewed_size,
)
from plm_tune.memory import MemoryEstimate
from plm_tune.sample import normalize_messages
from plm_tune.sampler import LengthGroupedBatchSampler, padding_fraction

__all__ = ["SampleEstimate", "Plan", "estimate_cost", "plan_dataset", "plan_report", "image_size", "video_frame_count"]

Outcome = Literal["fits", "truncated", "fitted", "rejected"]


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

    @property
    def cost(self) -> tuple[int, int]:
        """``(tokens, tiles + frames)``: the key ``LengthGroupedBatchSampler`` groups by."""
        return (self.tokens, self.tiles + self.frames)


# ------------------------------------------------------------------------------------------ media headers
def image_size(entry: Any) -> tuple[int, int]:
    """``(width, height)`` of an image entry from its header only (the pixels are not decoded).

    Args:
        entry: what ``plm_tune.media.load_image`` takes: a PIL image, a path (``.dcm`` included), bytes, or a
            ``{"bytes", "path"}`` dict.

    Raises:
        ValueError: a missing file, an unreadable header, a multi-frame DICOM given as an image; the message
            names the entry and the fix.
    """

    def dicom_size(path: str) -> tuple[int, int]:
        header = read_dicom_header(path)
        count = dicom_frame_count(header)
        if count > 1:
            raise ValueError(f"DICOM file '{path}' has {count} frames, so it is a video, not an image. Put "
                             "it in the sample's 'videos' with a {'type': 'video'} placeholder.")
        return int(header.Columns), int(header.Rows)

    return read_image_entry(entry, viewed_size, dicom_size, reading="read the header of")


def video_frame_count(entry: Any, num_frames: int) -> int:
    """Frames ``plm_tune.media.load_video`` will return for a video entry, from metadata only (no decode).

    Args:
        entry: a path (``.dcm`` included), ``{"path", "start", "end"}``, a ``(T, H, W, 3)`` array or a list of
            frames.
        num_frames: the most frames to sample.

    Raises:
        ValueError: a missing or unreadable file, a bad clip, an empty frame list.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}.")
    if isinstance(entry, np.ndarray):
        if entry.ndim != 4 or entry.shape[0] == 0:
            raise ValueError(f"Video frames must be a non-empty (T, H, W, 3) array, got shape {tuple(entry.shape)}.")
        return len(pick_uniform(entry.shape[0], num_frames))
    if is_frames(entry):
        if len(entry) == 0:
            raise ValueError("Video given as an empty list of frames: a video needs at least one frame.")
        return len(pick_uniform(len(entry), num_frames))
    return _video_file_frames(*video_file(entry), num_frames)


def _video_file_frames(path: str, start: float | None, end: float | None, num_frames: int) -> int:
    require_video_file(path)
    if is_dicom_path(path):
        if start is not None or end is not None:
            raise ValueError(f"DICOM video '{path}': clip bounds (start={start}, end={end}) are not supported "
                             "for DICOM files. Remove 'start' / 'end' from the entry.")
        return len(pick_uniform(dicom_frame_count(read_dicom_header(path)), num_frames))
    with open_video_stream(path) as (container, stream):
        return len(clip_frame_indices(container, stream, path, start, end, num_frames))


# ------------------------------------------------------------------------------------------ one sample
class _Geometry:
    """Tile counts and tokens per tile / frame of one collator, from image sizes alone."""

    def __init__(self, collator: PLMCollator) -> None:
        pixels = collator.pixels
        self.pixels = pixels
        tile = pixels.image_processor.tile_size
        self.image_tokens = pixels.tokens_per_tile(tile, tile)
        size = pixels.video_processor.size
        height, width = (size["height"], size["width"]) if isinstance(size, Mapping) else (size.height, size.width)
        self.frame_tokens = pixels.tokens_per_tile(height, width)
        self._cache: dict[tuple[int, int, int], int] = {}

    def tiles(self, size: tuple[int, int], budget: int, vision_input_type: str = "thumb+tile") -> int:
        """Tiles PLM's image processor makes of a ``size`` image with ``budget`` tiles (thumbnail included)."""
        if vision_input_type == "vanilla":
            return 1
        key = (*size, budget)
        if key not in self._cache:
            # The processor's own grid choice (PerceptionLMImageProcessor.resize): fit the image on the canvas
            # that upsamples it most, else the closest aspect ratio; both read the budget from the attribute.
            processor = self.pixels._image_processor_for(budget)
            width, height = size
            if budget > 1:
                tile = processor.tile_size
                grid = processor._fit_image_to_canvas(img_width=width, img_height=height, tile_size=tile)
                grid = grid or processor._find_closest_aspect_ratio(img_width=width, img_height=height, tile_size=tile)
            else:
                grid = (1, 1)
            self._cache[key] = 1 + grid[0] * grid[1]  # the thumbnail, then the grid
        return self._cache[key]


def estimate_cost(sample: dict[str, Any], collator: PLMCollator, *, _geometry: _Geometry | None = None) -> SampleEstimate:
    """What ``collator.encode(sample)`` will produce, from media headers only.

    Exact: ``tokens == len(collator.encode(sample).input_ids)`` and ``tiles`` / ``frames`` equal the first dims
    of its pixel tensors, under the collator's ``max_length``, ``fit_tiles``, ``truncate_turns``, ``max_tiles``,
    ``num_frames`` and ``vision_input_type`` (a sample's own ``max_tiles`` / ``num_frames`` keys included).
    Nothing is counted in ``collator.stats`` and nothing is logged.

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
    geometry = _geometry or _Geometry(collator)
    turns = normalize_messages(sample)
    tiling, budget = collator.pixels.image_budget(sample)  # the collator's own tiling decision
    sizes = [image_size(entry) for entry in sample.get("images") or []]
    tiles = [geometry.tiles(size, budget, tiling) for size in sizes]
    frames = [video_frame_count(entry, sample.get("num_frames") or collator.pixels.num_frames)
              for entry in sample.get("videos") or []]

    def encode(kept_turns: list, image_tiles: list[int]):
        counts = {"image": [t * geometry.image_tokens for t in image_tiles],
                  "video": [f * geometry.frame_tokens for f in frames]}
        return collator.encoder.encode(kept_turns, counts, train_on=collator.train_on)

    encoded = encode(turns, tiles)
    full = len(encoded.input_ids)
    limit = collator.max_length
    outcome: Outcome = "fits"
    dropped = removed = 0
    kept = {"image": set(range(len(tiles))), "video": set(range(len(frames)))}
    if limit is not None and full > limit and collator.fit_tiles and tiles and tiling == "thumb+tile":
        fitted = _fit_tiles(sizes, tiles, geometry, lambda t: len(encode(turns, t).input_ids) <= limit)
        if fitted is not None:
            removed = sum(tiles) - sum(fitted)
            tiles, encoded, outcome = fitted, encode(turns, fitted), "fitted"
    if limit is not None and len(encoded.input_ids) > limit:
        keep = _turns_that_fit(turns, encoded, limit) if collator.truncate_turns else 0
        if keep == 0 or not collator.truncate_turns:
            return SampleEstimate(0, 0, 0, 0, 0, 0, 0, 0, full_tokens=full, outcome="rejected")
        dropped = len(turns) - keep
        turns = turns[:keep]
        kept = {k: {p.index for t in turns for p in t.parts if p.kind == k} for k in ("image", "video")}
        encoded, outcome = encode(turns, tiles), "truncated"
    media_ids = set(collator.encoder.media_ids.values())
    media = sum(1 for token in encoded.input_ids if token in media_ids)
    return SampleEstimate(
        tokens=len(encoded.input_ids),
        text_tokens=len(encoded.input_ids) - media,
        media_tokens=media,
        labelled_tokens=sum(1 for label in encoded.labels if label != IGNORE_INDEX),
        tiles=sum(t for i, t in enumerate(tiles) if i in kept["image"]),
        frames=sum(f for i, f in enumerate(frames) if i in kept["video"]),
        images=len(kept["image"]),
        videos=len(kept["video"]),
        full_tokens=full,
        outcome=outcome,
        dropped_turns=dropped,
        tiles_removed=removed,
    )


def _fit_tiles(sizes, tiles: list[int], geometry: _Geometry, fits) -> list[int] | None:
    """The collator's ``fit_tiles`` ladder on tile counts: the largest grid lowered first, one size at a time."""
    floor = [geometry.tiles(size, 1) for size in sizes]
    if not fits(floor):
        return None
    fitted = tiles
    while (cap := max(t - 1 for t in fitted) - 1) > 1:
        fitted = [geometry.tiles(size, cap) if t - 1 > cap else t for size, t in zip(sizes, fitted, strict=True)]
        if fits(fitted):
            return fitted
    return floor


def _turns_that_fit(turns: list, encoded: Any, limit: int) -> int:
    """Leading messages the collator keeps: whole exchanges (ending on an assistant turn) within ``limit``."""
    offset = 1 if turns[0].role == "system" else 0
    best = 0
    for i, (_, end) in enumerate(encoded.blocks):
        if end > limit:
            break
        if turns[i + offset].role == "assistant":
            best = i + offset + 1
    return best


# ------------------------------------------------------------------------------------------ a dataset
@dataclass
class Plan:
    """Per-sample estimates of a dataset and what they mean for training at ``batch_size``.

    ``padding`` holds the share of padded token slots for ``"random"`` batches (one shuffled epoch),
    ``"grouped"`` batches (``LengthGroupedBatchSampler``) and ``"packed"`` (``PLMCollator(padding_free=True)``
    concatenates a batch into one row, so nothing is padded: 0 by construction).
    """

    estimates: list[SampleEstimate]
    batch_size: int
    max_length: int | None
    padding: dict[str, float]
    skipped: list[str] = field(default_factory=list)  # "sample N: reason" of samples whose headers failed

    @property
    def kept(self) -> list[SampleEstimate]:
        """Estimates of the samples the collator keeps (not rejected)."""
        return [e for e in self.estimates if e.outcome != "rejected"]

    def token_stats(self) -> dict[str, float]:
        """min / median / p90 / p99 / max / mean tokens per kept sample (``{}`` when none is kept)."""
        tokens = sorted(e.tokens for e in self.kept)
        if not tokens:
            return {}

        def pct(q: float) -> int:
            return tokens[min(len(tokens) - 1, math.ceil(q * len(tokens)) - 1)]

        return {"min": tokens[0], "median": statistics.median(tokens), "p90": pct(0.9), "p99": pct(0.99),
                "max": tokens[-1], "mean": statistics.fmean(tokens)}

    def totals(self) -> dict[str, int]:
        """Sums over kept samples: tokens, text / media / labelled tokens, tiles, frames; and outcome counts."""
        kept = self.kept
        out = {key: sum(getattr(e, key) for e in kept)
               for key in ("tokens", "text_tokens", "media_tokens", "labelled_tokens", "tiles", "frames")}
        for outcome in ("fits", "truncated", "fitted", "rejected"):
            out[outcome] = sum(1 for e in self.estimates if e.outcome == outcome)
        out["over_max_length"] = sum(1 for e in self.estimates
                                     if self.max_length is not None and e.full_tokens > self.max_length)
        return out

    def worst_batch(self) -> tuple[int, float]:
        """``(seq_len, tiles + frames per row)`` of the most expensive batch: the longest samples together.

        ``LengthGroupedBatchSampler`` puts that batch first, so it is the one that must fit in memory.
        """
        kept = sorted(self.kept, key=lambda e: e.cost, reverse=True)[: self.batch_size]
        if not kept:
            return (0, 0.0)
        return kept[0].tokens, sum(e.tiles + e.frames for e in kept) / len(kept)

    def report(self, memory: Mapping[str, MemoryEstimate] | None = None, *, memory_note: str = "") -> str:
        """A readable report: token distribution, max_length outcomes, padding waste, optional memory table."""
        totals, stats = self.totals(), self.token_stats()
        n = len(self.estimates)
        lines = [f"{n} samples ({len(self.kept)} kept), batch size {self.batch_size}, max_length "
                 f"{self.max_length if self.max_length is not None else 'none'}"]
        if stats:
            lines.append("tokens per sample: " + ", ".join(
                f"{k} {v:,.0f}" if k != "mean" else f"{k} {v:,.1f}" for k, v in stats.items()))
        tokens = max(totals["tokens"], 1)
        lines.append(f"total {totals['tokens']:,} tokens: text {totals['text_tokens']:,}, media "
                     f"{totals['media_tokens']:,} ({totals['media_tokens'] / tokens:.1%}), labelled "
                     f"{totals['labelled_tokens']:,} ({totals['labelled_tokens'] / tokens:.1%}); "
                     f"{totals['tiles']:,} image tiles, {totals['frames']:,} video frames")
        if self.max_length is not None:
            lines.append(f"over max_length: {totals['over_max_length']} (truncated {totals['truncated']}, "
                         f"tiles lowered {totals['fitted']}, rejected {totals['rejected']})")
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} unreadable samples, e.g. {self.skipped[0]}")
        lines.append(f"padding at batch size {self.batch_size}: random {self.padding['random']:.1%}, "
                     f"length-grouped {self.padding['grouped']:.1%}, packed {self.padding['packed']:.1%} "
                     "(padding_free=True: one row per batch)")
        if memory:
            seq_len, vision = self.worst_batch()
            lines.append(f"peak memory per device (GiB) at the longest batch: {self.batch_size} x {seq_len:,} "
                         f"tokens, {vision:.1f} tiles + frames per row" + (f"; {memory_note}" if memory_note else ""))
            header = ["model", "weights", "grads", "optim", "act text", "act vision", "logits", "peak"]
            rows = [header]
            for name, est in memory.items():
                rows.append([name] + [f"{v / 1024**3:.2f}" for v in (
                    est.weights, est.gradients, est.optimizer, est.activations_text,
                    est.activations_vision + est.vision_transient, est.logits, est.peak)])
            widths = [max(len(r[c]) for r in rows) for c in range(len(header))]
            lines += ["  " + "  ".join(r[c].rjust(widths[c]) if c else r[c].ljust(widths[c])
                                       for c in range(len(header))) for r in rows]
        return "\n".join(lines)


def plan_dataset(
    samples: Iterable[dict[str, Any]],
    collator: PLMCollator,
    *,
    batch_size: int,
    seed: int = 0,
    on_error: Literal["raise", "skip"] = "raise",
    progress: bool = True,
) -> Plan:
    """Estimate every sample of a dataset (headers only) and the padding waste of its batches.

    Args:
        samples: canonical samples (any ``data_adapters`` output, a ``datasets`` table, a list).
        collator: the training collator (its ``max_length`` policy and vision settings decide the counts).
        batch_size: samples per batch (``per_device_train_batch_size``).
        seed: shuffle seed of the random and grouped batches.
        on_error: ``"raise"`` at the first unreadable sample, or ``"skip"`` and list it in ``plan.skipped``.
        progress: show a tqdm progress bar.

    Returns:
        A ``Plan``; ``print(plan.report())``.

    Raises:
        ValueError: ``batch_size < 1``; with ``on_error="raise"``, a bad sample, named by index and id.
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    geometry = _Geometry(collator)
    estimates, skipped = [], []
    total = len(samples) if hasattr(samples, "__len__") else None
    for index, sample in enumerate(tqdm(samples, total=total, desc="plan", unit="sample", disable=not progress)):
        try:
            estimates.append(estimate_cost(sample, collator, _geometry=geometry))
        except (ValueError, OSError) as err:
            where = f"sample {index}{PLMCollator._describe(sample) if isinstance(sample, dict) else ''}"
            if on_error == "raise":
                raise ValueError(f"{where}: {err} (plan with on_error='skip' to list every bad sample)") from err
            skipped.append(f"{where}: {err}")
    costs = [e.cost for e in estimates if e.outcome != "rejected"]
    padding = {"random": 0.0, "grouped": 0.0, "packed": 0.0}
    if costs:
        order = torch.randperm(len(costs), generator=torch.Generator().manual_seed(seed)).tolist()
        random_batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        padding["random"] = padding_fraction(costs, random_batches)
        padding["grouped"] = padding_fraction(costs, list(LengthGroupedBatchSampler(costs, batch_size, seed=seed)))
    return Plan(estimates=estimates, batch_size=batch_size, max_length=collator.max_length, padding=padding,
                skipped=skipped)


# ------------------------------------------------------------------------------------------ the report
PLM_TOKENS_PER_TILE = 256  # a 448 px tile or frame of the released PLMs: 32 x 32 patches, 2 x 2 pooling


def plan_report(
    samples: Iterable[dict[str, Any]],
    model_name_or_path: str,
    *,
    batch_size: int,
    max_length: int | None = None,
    max_tiles: int | None = None,
    num_frames: int = 32,
    train_on: str = "assistant",
    vision_input_type: str | None = None,
    method: str = "lora",
    freeze: Iterable[str] = ("vision",),
    lora_r: int = 16,
    lora_dropout: float = 0.0,
    lora_targets: str = "language",
    gradient_checkpointing: bool = False,
    progress: bool = True,
) -> str:
    """Plan a training run and return the report that ``plm-tune plan`` prints (no model weights are loaded).

    The collator is built as ``build_trainer`` builds it, from ``model_name_or_path``'s processor. The memory
    table estimates the configured method for PLM-1B / 3B / 8B (bf16 on one CUDA GPU, TRL's fused LM head on
    the labelled positions of the batch) and, for a local PLM folder, for that model too (float32 on CPU when
    no GPU is here, logits at the labelled positions only, as ``build_trainer`` does). With a processor whose tiles are not PLM's 256 tokens (the tiny test model), the 1B / 3B / 8B
    rows re-count the same tiles and frames at 256 tokens each.

    Args:
        samples: canonical samples (the training split).
        model_name_or_path: Hub id or folder whose processor formats the data.
        batch_size, max_length, max_tiles, num_frames, train_on, vision_input_type: the training settings.
        method, freeze, lora_r, lora_dropout, lora_targets, gradient_checkpointing: as ``load_model``.
        progress: a progress bar over the samples.

    Returns:
        The report text.
    """
    from pathlib import Path

    from transformers import AutoConfig, AutoProcessor

    from plm_tune.memory import PLM_SIZES, estimate_memory

    processor = AutoProcessor.from_pretrained(model_name_or_path)
    collator = PLMCollator(processor, max_length=max_length, train_on=train_on, max_tiles=max_tiles,
                           num_frames=num_frames, vision_input_type=vision_input_type)
    plan = plan_dataset(samples, collator, batch_size=batch_size, progress=progress)
    seq_len, vision = plan.worst_batch()
    # build_trainer scores only the labelled positions: TRL's fused head on CUDA, logits_to_keep elsewhere.
    labelled = sum(e.labelled_tokens for e in sorted(plan.kept, key=lambda e: e.cost, reverse=True)[:batch_size])
    if seq_len == 0:
        return plan.report()
    geometry = _Geometry(collator)
    common = dict(batch_size=batch_size, tiles_per_sample=vision, freeze=tuple(freeze), lora_r=lora_r,
                  lora_dropout=lora_dropout, lora_targets=lora_targets,
                  gradient_checkpointing=gradient_checkpointing)
    note = ""
    plm_seq = seq_len
    if geometry.image_tokens != PLM_TOKENS_PER_TILE:
        plm_seq = max(e.text_tokens + (e.tiles + e.frames) * PLM_TOKENS_PER_TILE for e in plan.kept)
        note = (f"this processor makes {geometry.image_tokens} tokens per tile, PLM's {PLM_TOKENS_PER_TILE}: "
                f"1B/3B/8B rows at {plm_seq:,} tokens per row")
    rows = {}
    for size in PLM_SIZES:
        rows[f"PLM-{size} {method}"] = estimate_memory(
            size, method, seq_len=plm_seq, logit_tokens=labelled, fused_lm_head=True, dtype=torch.bfloat16,
            device="cuda", **common)
    config = AutoConfig.from_pretrained(model_name_or_path) if Path(model_name_or_path).is_dir() else None
    if config is not None and getattr(config, "model_type", None) == "perception_lm":
        on_gpu = torch.cuda.is_available()
        rows[f"{Path(model_name_or_path).name} {method}"] = estimate_memory(
            config, method, seq_len=seq_len, logit_tokens=labelled, fused_lm_head=on_gpu,
            dtype=torch.bfloat16 if on_gpu else torch.float32, device="cuda" if on_gpu else "cpu", **common)
    checkpointing = "on" if gradient_checkpointing else "off"
    note = "; ".join(x for x in (f"gradient checkpointing {checkpointing}", note) if x)
    return plan.report(rows, memory_note=note)
