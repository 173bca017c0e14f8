"""The ``max_length`` policy: what a too-long sample keeps, decided from counts alone.

One owner for the decision that ``PLMCollator`` applies to pixels and ``plm_tune.encoding.costs`` to media headers:

1. A sample within ``max_length`` is kept whole (``"fits"``).
2. With ``fit_frames`` and / or ``fit_tiles``, every turn is kept and the media are made smaller instead, until
   the whole sample fits (``"fitted"``):

   a. ``fit_frames``: one video frame at a time is removed, from the video with the most frames (the earlier
      on a tie), never below 1 frame per video: the fewest frames that make it fit. Each lowered video is
      sampled again at its lower count by PLM's rule (``plm_tune.data.frame_selection``), so its frames stay spread
      over the whole clip. A video asked for ``n`` frames gets exactly ``k < n`` at count ``k`` (the rule gives
      ``min(k, frames available)`` and ``n`` is at most that), so no callback is needed.
   b. ``fit_tiles``, when 2a alone cannot fit (or ``fit_frames`` is off): image tile budgets are lowered, the
      image with the most tiles first, one grid size at a time (36 -> 25 -> 16 -> 9 -> 4 -> 1 for a square
      image), to the largest grid that fits next to 1 frame per video (the frames asked for without
      ``fit_frames``); the frames then get back as many as fit beside those tiles (2a again).

   Frames go before tiles because they keep more for fewer tokens removed: a frame costs what a tile costs
   (one 448 px view, 256 tokens in PLM) but goes one at a time, so 2a removes at most one frame more than
   needed, while one ladder step removes a whole grid (36 -> 25 tiles: 2,816 tokens); and neighbouring
   frames at PLM's 1 frame per second largely repeat each other (the clip keeps its first and last frame and
   its span), whereas each tile is the only full-resolution copy of its part of the image.
   If even 1 tile per image and 1 frame per video are too long, the media asked for stay and 3 applies.
3. Whole trailing turns are dropped: the longest run of leading messages that ends on an assistant answer
   within ``max_length`` (``"truncated"``). Media placeholders are never cut.
4. A sample whose first exchange alone is too long, or any too-long sample with ``truncate_turns=False``, is
   rejected (``"rejected"``).

Nothing here tokenises or decodes: ``SampleCounts.measure`` reads the token layout of one encoding (tokens
per message besides its media, tiles per image, frames per video) and ``fit_sample`` returns the ``Fit`` the
caller builds. Tile counts at a lower budget come from the caller's ``tiles_at(image, budget)`` (the real
processor in the collator, the tile grid of the image's size in the cost estimate).

Example:
    >>> counts = SampleCounts(prefix_tokens=10, messages=(MessageCount("user", 5, images=(0,)),
    ...                       MessageCount("assistant", 4)), image_tiles=(10,), tile_tokens=2)
    >>> fit_sample(counts, max_length=30, fit_tiles=False, fit_frames=False, truncate_turns=True,
    ...            tiles_at=None).outcome
    'rejected'
    >>> fit = fit_sample(counts, max_length=30, fit_tiles=True, fit_frames=False, truncate_turns=True,
    ...                  tiles_at=lambda i, b: b + 1)
    >>> fit.outcome, fit.image_tiles, fit.tokens
    ('fitted', (5,), 29)
    >>> video = SampleCounts(prefix_tokens=10, messages=(MessageCount("user", 5, videos=(0,)),
    ...                      MessageCount("assistant", 4)), video_frames=(8,), frame_tokens=2)
    >>> fit = fit_sample(video, max_length=30, fit_tiles=False, fit_frames=True, truncate_turns=True,
    ...                  tiles_at=None)
    >>> fit.outcome, fit.video_frames, fit.frames_removed, fit.tokens
    ('fitted', (5,), 3, 29)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from plm_tune.data.sample import Turn
from plm_tune.encoding.formatting import EncodedConversation

__all__ = ["Outcome", "MessageCount", "SampleCounts", "Fit", "fit_sample"]

Outcome = Literal["fits", "truncated", "fitted", "rejected"]


@dataclass(frozen=True)
class MessageCount:
    """One message after the system prompt: its tokens besides media placeholders, and the media it shows."""

    role: str
    tokens: int  # header, text and <|eot_id|>
    images: tuple[int, ...] = ()  # indices into the sample's images
    videos: tuple[int, ...] = ()  # indices into the sample's videos


@dataclass(frozen=True)
class SampleCounts:
    """The token layout of one encoded sample, as counts.

    The sequence is ``prefix_tokens`` (``<|begin_of_text|>`` and the system block), then one block per
    message in ``messages``, then ``suffix_tokens`` (a generation prompt). A message's block is its
    ``tokens`` plus ``tile_tokens`` per tile of each image it shows plus ``frame_tokens`` per frame of each
    video it shows.
    """

    prefix_tokens: int
    messages: tuple[MessageCount, ...]
    image_tiles: tuple[int, ...] = ()  # tiles per image at the budget asked for, thumbnail included
    tile_tokens: int = 0  # placeholder tokens per image tile
    video_frames: tuple[int, ...] = ()  # frames per video at the count asked for
    frame_tokens: int = 0  # placeholder tokens per video frame (every frame is resized to one size)
    has_system: bool = False  # the first turn is a system message (it is part of the prefix)
    suffix_tokens: int = 0
    thumbnails: bool = True  # thumb+tile: an image's first tile is its thumbnail, the rest its grid

    @classmethod
    def measure(cls, turns: Sequence[Turn], encoded: EncodedConversation, *, image_tiles: Sequence[int],
                tile_tokens: int, video_frames: Sequence[int], frame_tokens: int, thumbnails: bool) -> SampleCounts:
        """The counts of ``encoded``, the encoding of ``turns`` with ``image_tiles`` and ``video_frames``."""
        body = turns[1:] if turns and turns[0].role == "system" else turns
        messages = []
        for turn, (start, end) in zip(body, encoded.blocks, strict=True):
            images = tuple(p.index for p in turn.parts if p.kind == "image")
            videos = tuple(p.index for p in turn.parts if p.kind == "video")
            media = (sum(image_tiles[i] for i in images) * tile_tokens
                     + sum(video_frames[i] for i in videos) * frame_tokens)
            messages.append(MessageCount(turn.role, end - start - media, images, videos))
        last = encoded.blocks[-1][1] if encoded.blocks else encoded.prefix_len
        return cls(prefix_tokens=encoded.prefix_len, messages=tuple(messages), image_tiles=tuple(image_tiles),
                   tile_tokens=tile_tokens, video_frames=tuple(video_frames), frame_tokens=frame_tokens,
                   has_system=len(body) < len(turns), suffix_tokens=len(encoded.input_ids) - last,
                   thumbnails=thumbnails)

    def block_ends(self, image_tiles: Sequence[int], video_frames: Sequence[int] | None = None) -> list[int]:
        """Where each message's block ends (exclusive), with ``image_tiles`` tiles per image and
        ``video_frames`` frames per video (default: the frames asked for)."""
        frames = self.video_frames if video_frames is None else video_frames
        ends, position = [], self.prefix_tokens
        for message in self.messages:
            position += message.tokens + sum(image_tiles[i] for i in message.images) * self.tile_tokens
            position += sum(frames[i] for i in message.videos) * self.frame_tokens
            ends.append(position)
        return ends

    def length(self, image_tiles: Sequence[int], video_frames: Sequence[int] | None = None) -> int:
        """Tokens of the whole sample with ``image_tiles`` tiles per image and ``video_frames`` frames per video
        (default: the frames asked for)."""
        ends = self.block_ends(image_tiles, video_frames)
        return (ends[-1] if ends else self.prefix_tokens) + self.suffix_tokens


@dataclass(frozen=True)
class Fit:
    """What the policy keeps of one sample."""

    outcome: Outcome
    image_tiles: tuple[int, ...]  # tiles per image to build (lowered when "fitted"), for every image
    asked_tiles: tuple[int, ...]  # tiles per image at the budget asked for
    video_frames: tuple[int, ...]  # frames per video to build (lowered when "fitted"), for every video
    asked_frames: tuple[int, ...]  # frames per video at the count asked for
    kept_turns: int  # leading turns kept, system message included (0 when "rejected")
    images: tuple[int, ...]  # indices of the images kept
    videos: tuple[int, ...]  # indices of the videos kept
    tokens: int  # length of what is kept (0 when "rejected")
    full_tokens: int  # length of the sample as asked for
    first_exchange_tokens: int  # tokens up to the end of the first answer (the whole sample if none)

    @property
    def tiles_removed(self) -> int:
        """Tiles lowered away (``"fitted"``; 0 otherwise)."""
        return sum(self.asked_tiles) - sum(self.image_tiles)

    @property
    def frames_removed(self) -> int:
        """Video frames lowered away (``"fitted"``; 0 otherwise)."""
        return sum(self.asked_frames) - sum(self.video_frames)

    def changes(self) -> str:
        """What fitting lowered, per image and video, e.g. ``"image 0: 36 -> 9 tiles, video 0: 32 -> 20 frames"``
        (tiles besides the thumbnail: only thumb+tile images are lowered); ``""`` when nothing was."""
        tiles = zip(self.asked_tiles, self.image_tiles, strict=True)
        frames = zip(self.asked_frames, self.video_frames, strict=True)
        return ", ".join([f"image {i}: {old - 1} -> {new - 1} tiles" for i, (old, new) in enumerate(tiles) if old != new]
                         + [f"video {i}: {old} -> {new} frames" for i, (old, new) in enumerate(frames) if old != new])


def fit_sample(
    counts: SampleCounts,
    *,
    max_length: int | None,
    fit_tiles: bool,
    fit_frames: bool,
    truncate_turns: bool,
    tiles_at: Callable[[int, int], int] | None,
) -> Fit:
    """Apply the ``max_length`` policy (module docstring) to one sample.

    Args:
        counts: the sample's token layout (``SampleCounts.measure``).
        max_length: the longest sequence in tokens (None: no limit).
        fit_tiles: lower image tiles before dropping turns (thumb+tile images only).
        fit_frames: lower video frames before dropping turns (and before tiles), never below 1 per video.
        truncate_turns: drop trailing turns; when False a too-long sample is rejected whole.
        tiles_at: ``tiles_at(image, budget)``, the tiles image ``image`` gets with a budget of ``budget``
            tiles (thumbnail included); called only with ``fit_tiles``, only for images whose grid exceeds
            ``budget``.

    Returns:
        The ``Fit``.
    """
    asked, frames = counts.image_tiles, counts.video_frames
    full = counts.length(asked)
    turns = len(counts.messages) + counts.has_system
    every = (tuple(range(len(asked))), tuple(range(len(frames))))
    ends = counts.block_ends(asked)
    first_answer = next((end for end, m in zip(ends, counts.messages, strict=True) if m.role == "assistant"), full)

    def fit(outcome: Outcome, media_size: tuple[tuple[int, ...], tuple[int, ...]], kept: int, media: tuple,
            tokens: int) -> Fit:
        (tiles, video_frames), (images, videos) = media_size, media
        return Fit(outcome, tiles, asked, video_frames, frames, kept, images, videos, tokens=tokens,
                   full_tokens=full, first_exchange_tokens=first_answer)

    if max_length is None or full <= max_length:
        return fit("fits", (asked, frames), turns, every, full)
    lowered = _lower_media(counts, max_length, tiles_at, tiles=fit_tiles and counts.thumbnails and bool(asked),
                           frames=fit_frames and any(f > 1 for f in frames))
    if lowered is not None:
        return fit("fitted", lowered, turns, every, counts.length(*lowered))
    kept = _messages_that_fit(counts, ends, max_length)
    if kept == 0 or not truncate_turns:
        return fit("rejected", (asked, frames), 0, ((), ()), 0)
    messages = counts.messages[:kept]
    media = tuple(tuple(sorted({i for m in messages for i in getattr(m, kind)})) for kind in ("images", "videos"))
    return fit("truncated", (asked, frames), kept + counts.has_system, media, ends[kept - 1] + counts.suffix_tokens)


def _lower_media(counts: SampleCounts, max_length: int, tiles_at, *, tiles: bool,
                 frames: bool) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """``(tiles per image, frames per video)`` that fit, frames lowered first (module docstring, 2); None if
    even the floors (1 tile per image, 1 frame per video, of those allowed to be lowered) are too long."""
    if frames:
        fitted = _lower_frames(counts, counts.image_tiles, max_length)
        if fitted is not None:
            return counts.image_tiles, fitted
    if not tiles:
        return None
    fewest = tuple(1 for _ in counts.video_frames) if frames else counts.video_frames
    lowered = _lower_tiles(counts, max_length, tiles_at, fewest)
    if lowered is None:
        return None
    # The floor of frames fits beside these tiles, so frames can only come back from here.
    return lowered, _lower_frames(counts, lowered, max_length) if frames else counts.video_frames


def _lower_frames(counts: SampleCounts, image_tiles: tuple[int, ...], max_length: int) -> tuple[int, ...] | None:
    """The most frames that fit beside ``image_tiles``: one frame at a time off the video with the most frames
    (the earlier on a tie); None if even 1 frame per video is too long. Every frame costs ``frame_tokens``,
    so this removes the fewest frames that fit."""
    if counts.length(image_tiles, [1] * len(counts.video_frames)) > max_length:
        return None
    frames = list(counts.video_frames)
    while counts.length(image_tiles, frames) > max_length:
        frames[frames.index(max(frames))] -= 1
    return tuple(frames)


def _lower_tiles(counts: SampleCounts, max_length: int, tiles_at,
                 video_frames: tuple[int, ...]) -> tuple[int, ...] | None:
    """The largest tiles that fit beside ``video_frames``: the largest grid lowered first, one grid size at a
    time; None if even a budget of 1 tile per image is too long."""

    def grid(tiles: int) -> int:
        return tiles - 1  # thumb+tile: the thumbnail, then the grid of tiles

    def lowered(current: tuple[int, ...], cap: int) -> tuple[int, ...]:
        # Only the images whose grid exceeds the cap get the lower budget.
        return tuple(tiles_at(i, cap) if grid(t) > cap else t for i, t in enumerate(current))

    # The floor first: a sample that cannot fit costs one lowering per image, not the whole ladder.
    floor = lowered(counts.image_tiles, 1)
    if counts.length(floor, video_frames) > max_length:
        return None
    fitted = counts.image_tiles
    while (cap := max(grid(t) for t in fitted) - 1) > 1:
        fitted = lowered(fitted, cap)
        if counts.length(fitted, video_frames) <= max_length:
            return fitted
    return floor


def _messages_that_fit(counts: SampleCounts, ends: list[int], max_length: int) -> int:
    """Leading messages (after the system prompt) that end on an answer within ``max_length``."""
    best = 0
    for i, (end, message) in enumerate(zip(ends, counts.messages, strict=True)):
        if end > max_length:
            break
        if message.role == "assistant":
            best = i + 1
    return best
