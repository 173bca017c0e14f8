"""Cheap media checks run while a dataset is built: image headers (PIL), video container headers (PyAV).

Nothing is decoded: a missing, empty or non-media file becomes a named ``BadRecord`` when the sample table is
built, not a crash mid-training. Also the parsing and checking of a clip's ``start`` / ``end`` against the
probed duration.
"""

from __future__ import annotations

import io
import math
from typing import Any

from data_adapters._records import BadRecord

__all__ = ["check_image", "clip_times", "probe_video"]


def check_image(entry: str | bytes, record: str) -> None:
    """Open an image's header (a path or encoded bytes) with PIL; ``BadRecord`` if it is not an image."""
    from PIL import Image, UnidentifiedImageError

    source = io.BytesIO(entry) if isinstance(entry, bytes | bytearray) else entry
    what = f"{len(entry)} bytes" if isinstance(entry, bytes | bytearray) else f"'{entry}'"
    try:
        with Image.open(source) as img:
            width, height = img.size
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as err:
        raise BadRecord(record, "undecodable image", f"{what} is not a readable image ({err}).",
                        "re-export it as PNG or JPEG, or remove the record.") from err
    if width < 1 or height < 1:
        raise BadRecord(record, "undecodable image", f"{what} has size {width}x{height}.",
                        "re-export the image.")


def probe_video(path: str, record: str) -> float:
    """Open a video's container header with PyAV and return its duration in seconds (0.0 if not recorded).

    Raises:
        BadRecord: the file cannot be opened as a video, or it has no video frames.
    """
    try:
        import av
    except ImportError as err:
        raise ImportError('Reading videos needs PyAV: pip install "plm-tune[video]"') from err
    try:
        container = av.open(path)
    except (av.FFmpegError, OSError, ValueError) as err:
        raise BadRecord(record, "unreadable video", f"'{path}' cannot be opened as a video ({err}).",
                        "re-encode it (e.g. H.264 MP4) or remove the record.") from err
    with container:
        if not container.streams.video:
            raise BadRecord(record, "no video frames", f"'{path}' has no video stream (an empty or "
                            "audio-only file).", "re-export the video or remove the record.")
        stream = container.streams.video[0]
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000  # av.time_base: microseconds
        else:
            duration = 0.0
        if stream.frames == 0 and duration <= 0:
            raise BadRecord(record, "no video frames", f"'{path}' has a video stream with no frames.",
                            "re-export the video or remove the record.")
        if duration > 0:
            _check_packets_reach_end(container, stream, duration, path, record)
    return duration


def _check_packets_reach_end(container: Any, stream: Any, duration: float, path: str, record: str) -> None:
    """``BadRecord`` when the packets stop well before the duration the header gives (a cut download or copy).

    Reads packets (not frames) from the keyframe before the last second: a header written first (MP4
    ``faststart``) keeps promising frames that a truncated file no longer has.
    """
    import av

    slack = 1.5 / float(stream.average_rate) if stream.average_rate else 0.5
    last = None
    try:
        container.seek(int(max(0.0, duration - 1.0) / stream.time_base), stream=stream, backward=True)
        for packet in container.demux(stream):
            if packet.size and packet.pts is not None:
                end = float((packet.pts + (packet.duration or 0)) * stream.time_base)
                last = end if last is None else max(last, end)
    except (av.FFmpegError, OSError, ValueError):
        pass  # judged by the packets read before the error
    if last is None or last < duration - slack:
        where = "no packets near its end" if last is None else f"packets stop at {last:.2f}s"
        raise BadRecord(record, "truncated video", f"'{path}' header says {duration:.2f}s, but {where}.",
                        "re-download or re-encode the file, or remove the record.")


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
            raise BadRecord(record, "bad clip times", f"{name}={value!r} is not a number of seconds >= 0.",
                            f"write {name} in seconds, or leave it empty for the whole video.")
        times.append(seconds)
    first, last = times
    if first is not None and last is not None and last < first:
        raise BadRecord(record, "bad clip times", f"end ({last}s) is before start ({first}s).",
                        "swap or fix the times.")
    if first is not None and duration > 0 and first >= duration:
        raise BadRecord(record, "clip outside video", f"start {first}s is at or past the end of the video "
                        f"({duration:.2f}s long).",
                        "fix the times, or check that the row points at the right file.")
    return first, last
