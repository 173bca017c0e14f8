"""Media checks run while a dataset is built, and the parsing of a clip's ``start`` / ``end``.

``plm_tune.data.media`` reads the headers (PIL, PyAV, pydicom; nothing decoded); here its errors become named
``BadRecord``s, so a missing, empty or non-media file is reported when the sample table is built, not a crash
mid-training.
"""

from __future__ import annotations

import math
from typing import Any

from data_adapters._records import BadRecord
from plm_tune.data.media import image_size, video_duration
from plm_tune.errors import DataError, Reason

__all__ = ["check_image", "clip_times", "probe_video"]


def check_image(entry: str | bytes, record: str) -> None:
    """Read an image's header (a path or encoded bytes); ``BadRecord`` if it is not a readable image."""
    try:
        image_size(entry)
    except ValueError as err:
        raise _bad_record(record, err, Reason.UNDECODABLE_IMAGE, "re-export it as PNG or JPEG, or remove the record.") from err


def probe_video(path: str, record: str) -> float:
    """A video's duration in seconds from its container header (0.0 if not recorded).

    Raises:
        BadRecord: the file cannot be opened as a video, or it has no video frames.
    """
    try:
        return video_duration(path)
    except ValueError as err:
        raise _bad_record(record, err, Reason.UNREADABLE_VIDEO, "re-encode it (e.g. H.264 MP4) or remove the record.") from err


def _bad_record(record: str, err: ValueError, reason: str, fix: str) -> BadRecord:
    """``err`` as a ``BadRecord``: its own reason when it has one (a ``DataError``: ``MediaError``, ``DicomError``),
    else ``reason``."""
    if isinstance(err, DataError):
        return BadRecord(record, err.reason, err.detail, err.fix or fix)
    return BadRecord(record, reason, str(err), fix)


def clip_times(start: Any, end: Any, duration: float, record: str) -> tuple[float | None, float | None]:
    """Parse a segment's ``start`` / ``end`` (seconds; None or "" for open ends) and check them."""
    times = []
    for name, value in (("start", start), ("end", end)):
        if value is None or value == "":
            times.append(None)
            continue
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            seconds = math.nan
        if not math.isfinite(seconds) or seconds < 0:
            raise BadRecord(record, Reason.BAD_CLIP_TIMES, f"{name}={value!r} is not a number of seconds >= 0.",
                            f"write {name} in seconds, or leave it empty for the whole video.")
        times.append(seconds)
    first, last = times
    if first is not None and last is not None and last < first:
        raise BadRecord(record, Reason.BAD_CLIP_TIMES, f"end ({last}s) is before start ({first}s).",
                        "swap or fix the times.")
    if first is not None and duration > 0 and first >= duration:
        raise BadRecord(record, Reason.CLIP_OUTSIDE_VIDEO, f"start {first}s is at or past the end of the video "
                        f"({duration:.2f}s long).",
                        "fix the times, or check that the row points at the right file.")
    return first, last
