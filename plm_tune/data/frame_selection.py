"""Which frames of a video PLM sees: the one rule, on frame indices, for decoding and for counting.

Pure functions over counts (no file is opened here): ``plm_tune.data.media`` decodes the frames they pick, and
``plm_tune.encoding.costs`` counts them from headers, so training, generation and planning always agree.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from plm_tune.errors import MediaError, Reason

__all__ = ["NUM_FRAMES", "select_frame_indices", "uniform_indices", "pick_uniform"]

NUM_FRAMES = 32  # the default frames per video everywhere: PLM's own trainer samples up to 32


def select_frame_indices(total_frames: int, fps: float, start: float | None, end: float | None,
                         max_frames: int, times: Sequence[float] | None = None) -> list[int]:
    """The frame indices PLM's trainer decodes from a clip: the one rule for decoding and for counting.

    Meta's rule (perception_models ``core/transforms/video_transform.py``, ``VideoTransform.load_video`` and
    ``uniform_sample``), on frame indices, never timestamps:

    1. the clip is frames ``int(start * fps)`` .. ``int(end * fps)`` (whole video when unset; the end clamped
       to the last frame); a clip whose two ends fall on the same frame is widened to that frame and the next;
    2. candidates at 1 frame per second: every ``round(fps)``-th frame from the clip's first;
    3. more candidates than ``max_frames``: ``max_frames`` of them, the i-th at ``int(round(i * stride))``
       with ``stride = (candidates - 1) / (max_frames - 1)`` (Python's ``round``, as the trainer);
    4. fewer candidates than ``max_frames`` (a short clip): ``max_frames`` frames picked the same way over
       every frame of the clip (all of them when the clip has fewer);
    5. exactly ``max_frames`` candidates: all of them.

    Where the trainer would fail we decide instead: ``end`` before ``start`` is refused (the trainer swaps
    them silently; a reversed clip is usually a data error), a start past the last frame is refused (the
    trainer would ask for frames that do not exist), a one-frame clip at the very last frame stays one frame
    (the trainer would ask for the frame after it), and ``fps`` under 0.5 uses a stride of 1 (the trainer's
    ``round(fps)`` would be 0).

    Args:
        total_frames: frames in the video (its stream's frame count).
        fps: its average frame rate.
        start, end: the clip in seconds (None: the video's first / last frame).
        max_frames: the most frames to pick (PLM: 32).
        times: seconds from the first frame of frames ``0, 1, ...`` in presentation order (``pts * time_base``,
            increasing), at least up to the first frame after ``end``; None: frame i is at ``i / fps``.

    Returns:
        Strictly increasing frame indices in ``[0, total_frames)``.

    Raises:
        MediaError: no frames, a non-positive fps, ``end < start``, a start past the end (its ``reason`` says which).
        ValueError: ``max_frames`` under 1.

    >>> select_frame_indices(250, 25.0, None, None, 4)      # 10 s at 25 fps: 1 fps candidates, 4 of 10 picked
    [0, 75, 150, 225]
    >>> len(select_frame_indices(125, 25.0, None, None, 32))  # 5 s: 5 candidates < 32, so 32 of its 125 frames
    32
    """
    if total_frames < 1:
        raise MediaError(Reason.NO_VIDEO_FRAMES, "The video has no frames.")
    if max_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {max_frames}.")
    if not fps > 0:
        raise MediaError(Reason.UNREADABLE_VIDEO, f"The video's frame rate must be positive, got {fps}.")
    if start is not None and end is not None and end < start:
        raise MediaError(Reason.BAD_CLIP_TIMES, f"Clip end ({end}s) is before its start ({start}s).",
                         "Swap or fix the times.")
    last = total_frames - 1
    first = 0 if start is None else _frame_at(start, fps, times)
    if first > last:
        raise MediaError(Reason.CLIP_OUTSIDE_VIDEO, f"Clip start {start}s is past the end of the video "
                         f"({total_frames} frames at {fps:g} fps: {total_frames / fps:.2f}s).")
    stop = last if end is None else min(_frame_at(end, fps, times), last)
    if stop == first:
        stop = min(first + 1, last)
    candidates = list(range(first, stop + 1, max(1, round(fps))))
    if len(candidates) > max_frames:
        return [candidates[i] for i in uniform_indices(len(candidates), max_frames)]
    if len(candidates) < max_frames:
        span = stop - first + 1
        return [first + i for i in uniform_indices(span, min(span, max_frames))]
    return candidates


def _frame_at(seconds: float, fps: float, times: Sequence[float] | None) -> int:
    """The frame on screen ``seconds`` after the first: the last one shown at or before it (the index after the
    last of ``times`` once that frame's ``1 / fps`` has passed: past the end when ``times`` covers every frame)."""
    if times is None:
        return int(seconds * fps)
    index = max(bisect.bisect_right(times, seconds) - 1, 0)
    return index + 1 if index == len(times) - 1 and seconds >= times[-1] + 1 / fps else index


def uniform_indices(total: int, wanted: int) -> list[int]:
    """``wanted <= total`` indices over ``total`` items, first and last kept: PLM's ``uniform_sample``."""
    stride = (total - 1) / (wanted - 1) if wanted > 1 else 0
    return [int(round(i * stride)) for i in range(wanted)]


def pick_uniform(total: int, wanted: int) -> list[int]:
    """Indices of ``wanted`` items spread uniformly over ``total`` (all of them when fewer), ends kept.

    For frames given directly and DICOM cines, which have no frame rate: PLM's ``uniform_sample`` rounding.
    """
    return uniform_indices(total, min(total, wanted)) if total > 0 else []
