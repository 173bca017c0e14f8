"""Plan one sample before building it: the turns it keeps, the tiles of each image, the frames of each video and
its exact tokens, from media sizes alone.

``plan_sample`` is the first step for every caller. ``plm_tune.encoding.costs`` (and ``plm_tune.training.plan`` through it) applies it
to media headers and decodes nothing; ``PLMCollator`` applies it to the same headers, then builds exactly the plan:
it decodes only the media of the turns kept, processes each image once at its planned tile budget and each video
once at its planned frame count, and checks that the processor made the tiles and frames planned (so
``plm_tune.encoding.tiling``'s copy of the processor's rule is checked on every sample trained on).

One sample, step by step::

    sizes = read_media_sizes(sample, turns, settings)   # headers only: (width, height) per image, frames per video
    plan = plan_sample(sample, turns, sizes, settings, encoder)
        # 1. the tiling decision (``PlanSettings.image_budget``) and tiles per image (``plm_tune.encoding.tiling``)
        # 2. the conversation encoded once with those counts and measured (``length_policy.SampleCounts``)
        # 3. the ``max_length`` policy (``length_policy.fit_sample``): fits / fitted / truncated / rejected
        # 4. a fitted or truncated sample encoded again (its text tokens come from the encoder's cache)
    plan.encoded, plan.image_budgets, plan.video_frames, plan.images, plan.videos   # what to build

Nothing here decodes pixels, counts or logs: ``plan_sample`` is a function of its arguments.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol

from plm_tune.data.media import image_size, video_frame_count
from plm_tune.data.sample import Turn, describe_sample
from plm_tune.encoding.formatting import IGNORE_INDEX, ConversationEncoder, EncodedConversation, TrainOn
from plm_tune.encoding.length_policy import Fit, Outcome, SampleCounts, fit_sample
from plm_tune.encoding.tiling import image_tiles

__all__ = ["VisionInputType", "Planner", "PlanSettings", "MediaSizes", "SamplePlan", "plan_sample", "encode_turns",
           "read_media_sizes", "media_error"]

VisionInputType = Literal["thumb+tile", "vanilla"]


@dataclass(frozen=True)
class PlanSettings:
    """Everything that decides a sample's plan besides the sample itself (a collator's settings, resolved)."""

    max_length: int | None  # longest sequence in tokens (None: no limit)
    train_on: TrainOn
    fit_tiles: bool
    fit_frames: bool
    truncate_turns: bool
    vision_input_type: VisionInputType
    max_tiles: int  # tile budget of a single image (a sample's "max_tiles" overrides it)
    num_frames: int  # frames per video (a sample's "num_frames" overrides it)
    multi_image_tiles: int | None  # how a sample of several images tiles them (PLMCollator's docstring)
    tile_size: int  # pixels per tile side
    tile_tokens: int  # placeholder tokens per image tile
    frame_tokens: int  # placeholder tokens per video frame

    def image_budget(self, sample: dict[str, Any]) -> tuple[VisionInputType, int]:
        """``(vision_input_type, max_tiles)`` for every image of ``sample``: the one tiling decision.

        A sample of several images follows ``multi_image_tiles``; a single image is ``thumb+tile`` with the
        sample's ``"max_tiles"`` (else ``max_tiles``). ``"vanilla"`` is one tile always.
        """
        if self.vision_input_type == "vanilla":
            return "vanilla", 1
        if len(sample.get("images") or []) > 1 and self.multi_image_tiles is not None:
            return ("vanilla", 1) if self.multi_image_tiles == 1 else ("thumb+tile", self.multi_image_tiles)
        return "thumb+tile", sample.get("max_tiles") or self.max_tiles

    def frames_asked(self, sample: dict[str, Any]) -> int:
        """Frames asked for each video of ``sample``: its ``"num_frames"``, else ``num_frames``."""
        return sample.get("num_frames") or self.num_frames

    def without_length_limit(self) -> PlanSettings:
        """The same settings with no ``max_length``: plans that keep everything (full lengths, data checks)."""
        return replace(self, max_length=None)


@dataclass(frozen=True)
class MediaSizes:
    """What a plan needs of a sample's media, per entry; None for an entry no planned turn shows (not read)."""

    images: tuple[tuple[int, int] | None, ...]  # (width, height) as viewed (EXIF orientation applied)
    videos: tuple[int | None, ...]  # frames the decoder gives at the count asked for


@dataclass(frozen=True)
class SamplePlan:
    """What to build of one sample, and what it costs.

    Tiles, frames, budgets and counts are given per media entry of the sample (an entry that is not built has its
    asked-for count); ``images`` / ``videos`` are the entries to build, in token order.
    """

    turns: tuple[Turn, ...]  # the turns kept, system message included
    tiling: VisionInputType  # how this sample's images are tiled
    image_budgets: tuple[int, ...]  # tile budget to process each image with (lowered when "fitted")
    image_tiles: tuple[int, ...]  # tiles each image gets, thumbnail included
    video_counts: tuple[int, ...]  # frame count to decode each video at (the count asked, or lowered)
    video_frames: tuple[int, ...]  # frames each video gets
    images: tuple[int, ...]  # indices of the images to build
    videos: tuple[int, ...]  # indices of the videos to build
    encoded: EncodedConversation | None  # the token ids and labels to train on; None when rejected
    fit: Fit  # what the max_length policy decided
    dropped_turns: int  # messages dropped ("truncated"; 0 otherwise)
    media_ids: frozenset[int]  # the image / video placeholder token ids

    @property
    def outcome(self) -> Outcome:
        return self.fit.outcome

    @property
    def tokens(self) -> int:
        """Length of the sequence built (0 when rejected)."""
        return len(self.encoded.input_ids) if self.encoded is not None else 0

    @property
    def media_tokens(self) -> int:
        return sum(1 for token in self.encoded.input_ids if token in self.media_ids) if self.encoded else 0

    @property
    def labelled_tokens(self) -> int:
        return sum(1 for label in self.encoded.labels if label != IGNORE_INDEX) if self.encoded else 0

    @property
    def tiles(self) -> int:
        """Image tiles built, thumbnails included."""
        return sum(self.image_tiles[i] for i in self.images)

    @property
    def frames(self) -> int:
        """Video frames built."""
        return sum(self.video_frames[i] for i in self.videos)


def read_media_sizes(sample: dict[str, Any], turns: Sequence[Turn], settings: PlanSettings) -> MediaSizes:
    """The sizes of the media ``turns`` show, from their headers only (no pixel is decoded).

    Raises:
        ValueError: an unreadable header, naming the sample and the entry (``media_error``).
    """
    shown = {kind: {p.index for t in turns for p in t.parts if p.kind == kind} for kind in ("image", "video")}
    asked = settings.frames_asked(sample)

    def read(kind: str, index: int, entry: Any) -> Any:
        if index not in shown[kind]:
            return None
        try:
            return image_size(entry) if kind == "image" else video_frame_count(entry, asked)
        except ValueError as err:
            raise media_error(sample, kind, index, err) from err

    return MediaSizes(
        images=tuple(read("image", i, e) for i, e in enumerate(sample.get("images") or [])),
        videos=tuple(read("video", i, e) for i, e in enumerate(sample.get("videos") or [])),
    )


def media_error(sample: dict[str, Any], kind: str, index: int, err: Exception) -> ValueError:
    """``err`` about one media entry, named by sample and entry (``"sample 'x', images[1]: ..."``)."""
    where = describe_sample(sample).strip() or "a sample without an id"
    return ValueError(f"{where}, {kind}s[{index}]: {err}")


def encode_turns(turns: Sequence[Turn], image_tiles: Sequence[int], video_frames: Sequence[int],
                 settings: PlanSettings, encoder: ConversationEncoder, *,
                 add_generation_prompt: bool = False) -> EncodedConversation:
    """``turns`` encoded with ``image_tiles`` tiles per image and ``video_frames`` frames per video (per entry of the
    sample): the text of a plan around given media. ``plan_sample`` encodes with it; a preference pair encodes its
    second answer with the media its first was planned with (``plm_tune.encoding.preference_collator``)."""
    counts = {"image": [t * settings.tile_tokens for t in image_tiles],
              "video": [f * settings.frame_tokens for f in video_frames]}
    return encoder.encode(turns, counts, train_on=settings.train_on, add_generation_prompt=add_generation_prompt)


def plan_sample(sample: dict[str, Any], turns: Sequence[Turn], sizes: MediaSizes, settings: PlanSettings,
                encoder: ConversationEncoder, *, add_generation_prompt: bool = False) -> SamplePlan:
    """Plan ``turns`` of ``sample`` (module docstring): a pure function of its arguments.

    Args:
        sample: the canonical sample (its ``"max_tiles"`` / ``"num_frames"`` / image count decide budgets).
        turns: the turns to plan (``plm_tune.data.sample.normalize_messages``; a prompt's turns for generation).
        sizes: ``read_media_sizes`` of those turns.
        settings: the collator's settings.
        encoder: the collator's ``ConversationEncoder``.
        add_generation_prompt: end on an open assistant header (prompts; nothing labelled there).
    """
    tiling, budget = settings.image_budget(sample)
    budgets: dict[tuple[int, int], int] = {}  # (image, tiles) -> the lowest budget that made them

    def tiles_at(index: int, cap: int) -> int:
        tiles = image_tiles(sizes.images[index], tile_size=settings.tile_size, max_tiles=cap,
                            vision_input_type=tiling)
        budgets[(index, tiles)] = min(cap, budgets.get((index, tiles), cap))
        return tiles

    asked = tuple(0 if size is None else tiles_at(i, budget) for i, size in enumerate(sizes.images))
    frames = tuple(0 if count is None else count for count in sizes.videos)

    def encode(kept: Sequence[Turn], tiles: Sequence[int], video_frames: Sequence[int]) -> EncodedConversation:
        return encode_turns(kept, tiles, video_frames, settings, encoder, add_generation_prompt=add_generation_prompt)

    encoded = encode(turns, asked, frames)
    counts = SampleCounts.measure(turns, encoded, image_tiles=asked, tile_tokens=settings.tile_tokens,
                                  video_frames=frames, frame_tokens=settings.frame_tokens,
                                  thumbnails=tiling == "thumb+tile")
    # Only thumb+tile images have a tile budget to lower; one plain tile per image has nothing to give.
    fit = fit_sample(counts, max_length=settings.max_length, fit_tiles=settings.fit_tiles and tiling == "thumb+tile",
                     fit_frames=settings.fit_frames, truncate_turns=settings.truncate_turns, tiles_at=tiles_at)
    kept = tuple(turns[: fit.kept_turns])
    if fit.outcome == "rejected":
        encoded = None
    elif fit.outcome != "fits":
        encoded = encode(kept, fit.image_tiles, fit.video_frames)
    shown = {kind: {p.index for t in kept for p in t.parts if p.kind == kind} for kind in ("image", "video")}
    return SamplePlan(
        turns=kept,
        tiling=tiling,
        image_budgets=tuple(budget if new == old else budgets[(i, new)]
                            for i, (old, new) in enumerate(zip(asked, fit.image_tiles, strict=True))),
        image_tiles=fit.image_tiles,
        # A video keeps its asked-for count unless lowered: PLM's rule then picks that many frames over the clip.
        video_counts=tuple(settings.frames_asked(sample) if new == old else new
                           for old, new in zip(frames, fit.video_frames, strict=True)),
        video_frames=fit.video_frames,
        images=tuple(i for i in fit.images if i in shown["image"]),
        videos=tuple(i for i in fit.videos if i in shown["video"]),
        encoded=encoded,
        fit=fit,
        dropped_turns=len(turns) - fit.kept_turns if fit.outcome == "truncated" else 0,
        media_ids=frozenset(encoder.media_ids.values()),
    )


class Planner(Protocol):
    """What plans samples: a ``PLMCollator`` (its ``plan`` applies ``plan_sample`` with its settings)."""

    def plan(self, sample: dict[str, Any]) -> SamplePlan: ...
