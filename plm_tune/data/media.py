"""Media entries of a canonical sample: decoded into pixels, or measured from their headers alone.

Images become RGB ``PIL.Image``s; videos become ``(T, H, W, 3)`` uint8 arrays of sampled frames.
Videos are decoded with PyAV (transformers' own loader needs torchcodec, which we do not require).
This is the one module that opens media files: ``image_size``, ``video_duration`` and ``video_frame_count``
read headers only (PIL's lazy open, PyAV's container metadata, pydicom's header), for the adapters' checks
and for cost estimates (``plm_tune.encoding.costs``). A file that cannot be read raises a ``MediaError`` whose ``reason``
(``plm_tune.errors.Reason``) says why.

Frames are picked as PLM's trainer picks them, by frame index (``select_frame_indices``: 1 fps candidates,
a uniform pick of ``num_frames``; a clip with fewer candidates gives ``num_frames`` frames spread over all of
its frames), the clip's ends found by the frames' timestamps; decoding (``load_video``) and header-only counting
(``plm_tune.encoding.costs``) both call it. Frames come out as a player shows them (the display matrix of a
phone's video applied: ``frame_decoding.frame_pixels``).
``load_video`` decodes those frames by seeking to keyframes (``plm_tune.data.frame_decoding``), or from the start
of the file where the stream's packets cannot be trusted to map onto frames.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from plm_tune.data.dicom import dicom_image_size, dicom_to_frames, dicom_video_frames, is_dicom_path
from plm_tune.data.frame_decoding import decode_in_order, decode_seeking, presentation_times
from plm_tune.data.frame_selection import NUM_FRAMES, pick_uniform, select_frame_indices
from plm_tune.errors import MediaError, Reason

__all__ = [
    "as_viewed", "clip_frame_indices", "describe_media", "display_uint8", "load_image", "load_video", "pick_uniform",
    "read_image_entry", "select_frame_indices", "viewed_size", "MediaError", "image_size", "video_duration",
    "video_frame_count",
]

T = TypeVar("T")


def describe_media(entry: Any) -> str:
    """A short human description of a media entry, for error messages."""
    if isinstance(entry, str | os.PathLike):
        return f"'{os.fspath(entry)}'"
    if isinstance(entry, dict):
        return f"{{path: '{entry.get('path')}'}}" if entry.get("path") else f"dict with keys {sorted(entry)}"
    if isinstance(entry, np.ndarray):
        return f"array of shape {tuple(entry.shape)}"
    if isinstance(entry, bytes | bytearray):
        return f"{len(entry)} bytes"
    return type(entry).__name__


def load_image(entry: Any) -> Image.Image:
    """Decode one image entry into an RGB PIL image.

    Args:
        entry: a ``PIL.Image``, a file path, raw encoded bytes, or the ``{"bytes": ..., "path": ...}`` dict
            that a ``datasets`` ``Image(decode=False)`` column yields.

    Returns:
        An RGB ``PIL.Image`` (fully loaded, so the file handle is closed).

    Raises:
        MediaError: the file is missing or not a readable image (its ``reason`` says which); the message names it.
        ValueError: an entry of an unsupported type.
    """
    if isinstance(entry, Image.Image) and entry.mode == "RGB" and _orientation(entry) == 1:
        return entry
    return read_image_entry(entry, as_viewed, _load_dicom_image, reading="decode")


# EXIF orientations 5-8 turn the image a quarter: the stored width is the shown height.
_QUARTER_TURNS = frozenset({5, 6, 7, 8})


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation tag (1: as stored), read from the header without decoding pixels.

    A PNG keeps EXIF in an eXIf chunk, which Pillow looks for after the image data by decoding the whole image
    (``getexif`` loads it) when no chunk came before. Writers put it before the image data, where Pillow reads it
    on opening; only that one counts here, so reading a PNG's size never decodes it (``image_size``, each plan),
    and ``as_viewed`` follows the same answer, so the planned and the decoded sizes agree.
    """
    try:
        if img.format == "PNG" and "exif" not in img.info:
            return 1
        return int(img.getexif().get(0x0112, 1) or 1)
    except Exception:  # a malformed EXIF block: show the image as stored, as viewers do
        return 1


def viewed_size(img: Image.Image) -> tuple[int, int]:
    """``(width, height)`` of an image as a viewer shows it (EXIF rotation applied), from the header only."""
    width, height = img.size
    return (height, width) if _orientation(img) in _QUARTER_TURNS else (width, height)


def as_viewed(img: Image.Image) -> Image.Image:
    """An opened image as a viewer shows it, in RGB: the one rule every reader of pixels goes through.

    - EXIF orientation applied (``ImageOps.exif_transpose``, as ``transformers.image_utils.load_image`` does).
    - High bit depth (PIL modes ``I;16*``, ``I``, ``F``) scaled to 8 bits by ``display_uint8``, never clipped.
    - Transparency composited on white, as ``transformers.image_transforms.convert_to_rgb`` does (an alpha
      band, or a palette / greyscale image with a ``transparency`` entry), so hidden colours stay hidden.
    """
    from PIL import ImageOps

    if _orientation(img) != 1:
        img = ImageOps.exif_transpose(img)
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        img = Image.fromarray(display_uint8(np.asarray(img)))
    if "A" in img.getbands() or img.info.get("transparency") is not None:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def display_uint8(values: np.ndarray) -> np.ndarray:
    """Greyscale pixel values of any depth as 8 bits, as a viewer shows them: one rule for every dtype.

    - ``uint8``: unchanged; ``bool``: 0 / 255.
    - Unsigned 16-bit (PIL ``I;16``, ``I;16B``, a 16-bit PNG): the format's range 0..65535 onto 0..255, as a
      browser shows a 16-bit PNG (12-bit data stored in 16 bits stays as dark as it is stored).
    - Any other integer (signed 16-bit ``I;16S`` such as CT in Hounsfield units -1024..3071, 32-bit ``I``):
      its own min..max onto 0..255; PIL opens a signed 16-bit TIFF as ``I``, so both come here.
    - Floats (``F``): the finite min..max onto 0..255, or 0..1 when every finite value lies in it. NaN and
      +-inf are left out of that window; NaN is drawn as the window's low end (0), +inf as 255, -inf as 0.
    - A constant image (outside 0..1 for floats) or one with no finite value: all 0.

    Args:
        values: an ``(H, W)`` array, e.g. ``np.asarray`` of a PIL image.

    Returns:
        ``(H, W)`` uint8.

    >>> display_uint8(np.array([[-1024, 3071]], dtype=np.int16)).tolist()
    [[0, 255]]
    >>> display_uint8(np.array([[0.0, np.nan, 0.5, 1.0]], dtype=np.float32)).tolist()
    [[0, 0, 128, 255]]
    """
    if values.dtype == np.uint8:
        return values
    if values.dtype == np.bool_:
        return values.astype(np.uint8) * 255
    if values.dtype.kind == "u" and values.dtype.itemsize == 2:
        low, high = 0.0, 65535.0
    else:
        finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values
        if finite.size == 0:
            return np.zeros(values.shape, dtype=np.uint8)
        low, high = float(finite.min()), float(finite.max())
        if values.dtype.kind == "f" and low >= 0.0 and high <= 1.0:
            low, high = 0.0, 1.0
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values.astype(np.float64) - low) * (255.0 / (high - low))
    return np.clip(np.rint(np.nan_to_num(scaled, nan=0.0)), 0, 255).astype(np.uint8)


def read_image_entry(entry: Any, from_pil: Callable[[Image.Image], T], from_dicom: Callable[[str], T], *,
                     reading: str) -> T:
    """Apply ``from_pil`` to the image an entry holds, opened lazily (a file's pixels are read only if
    ``from_pil`` needs them), or ``from_dicom`` to a DICOM path: the one place that knows the entry types.

    Args:
        entry: as ``load_image``.
        from_pil, from_dicom: what to take from the image (e.g. the decoded RGB image, or only its size).
        reading: "decode" or "read the header of", for error messages.

    Raises:
        MediaError: a missing file or unreadable data; the message names the entry.
        ValueError: an unsupported entry.
    """
    if isinstance(entry, Image.Image):
        return from_pil(entry)
    if isinstance(entry, dict):
        if entry.get("bytes") is not None:
            return read_image_entry(entry["bytes"], from_pil, from_dicom, reading=reading)
        if entry.get("path") is not None:
            return read_image_entry(entry["path"], from_pil, from_dicom, reading=reading)
        raise ValueError(f"Image entry {describe_media(entry)} has neither 'bytes' nor 'path'.")
    if isinstance(entry, bytes | bytearray):
        try:
            with Image.open(io.BytesIO(entry)) as img:
                return from_pil(img)
        except Exception as err:  # PIL raises several unrelated types for bad data
            raise MediaError(Reason.UNDECODABLE_IMAGE, f"Could not {reading} image from {describe_media(entry)}: "
                             f"{err}.", "Check that the bytes are a complete PNG/JPEG/... file.") from err
    if isinstance(entry, str | os.PathLike):
        path = os.fspath(entry)
        if not os.path.exists(path):
            raise MediaError(Reason.MISSING_FILE, f"Image file '{path}' does not exist.", "Fix the path in your "
                             "data, or set the dataset's media root so relative paths resolve.")
        if is_dicom_path(path):
            return from_dicom(path)
        try:
            with Image.open(path) as img:
                return from_pil(img)
        except Exception as err:
            raise MediaError(Reason.UNDECODABLE_IMAGE, f"Could not {reading} image file '{path}': {err}.",
                             "Re-export it as PNG or JPEG, or skip the record.") from err
    raise ValueError(f"Unsupported image entry of type {type(entry).__name__}; "
                     "use a PIL image, a file path or encoded bytes.")


def load_video(entry: Any, num_frames: int = NUM_FRAMES) -> np.ndarray:
    """Decode one video entry into sampled frames.

    Args:
        entry: a file path; ``{"path": str, "start": float, "end": float}`` (seconds, both optional);
            an array of frames ``(T, H, W, 3)`` uint8; or a list of PIL images. A file's frames are those
            ``select_frame_indices`` picks (PLM's trainer's rule); frames given directly are sub-sampled
            uniformly (ends kept) when there are more than ``num_frames``.
        num_frames: the most frames to return (a file's clip with at least ``num_frames`` frames gives
            exactly ``num_frames``).

    Returns:
        ``(T, H, W, 3)`` uint8 array with ``1 <= T <= num_frames``.

    Raises:
        MediaError: a missing or undecodable file, a bad clip, or a video with no frames (``reason`` says which).
        ValueError: an unsupported entry, or frames given that are not a (T, H, W, 3) uint8 array.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}.")
    if is_frames(entry):
        frames = _frames_from_array_or_images(entry)
        return frames[pick_uniform(len(frames), num_frames)]
    return _decode_video_file(*video_file(entry), num_frames)


def is_frames(entry: Any) -> bool:
    """Whether a video entry holds its frames (an array or a list of images) rather than naming a file."""
    return isinstance(entry, np.ndarray) or (isinstance(entry, Sequence) and not isinstance(entry, str))


def video_file(entry: Any) -> tuple[str, float | None, float | None]:
    """``(path, start, end)`` of a video entry that names a file (a path or a ``{"path", "start", "end"}`` dict).

    Raises:
        ValueError: a dict without ``path``, or an entry of an unsupported type.
    """
    if isinstance(entry, dict):
        if entry.get("path") is None:
            raise ValueError(f"Video entry {describe_media(entry)} has no 'path'.")
        return os.fspath(entry["path"]), entry.get("start"), entry.get("end")
    if isinstance(entry, str | os.PathLike):
        return os.fspath(entry), None, None
    raise ValueError(f"Unsupported video entry of type {type(entry).__name__}; use a path, "
                     "{'path', 'start', 'end'}, a (T, H, W, 3) uint8 array or a list of PIL images.")


def _frames_from_array_or_images(entry: Any) -> np.ndarray:
    if isinstance(entry, np.ndarray):
        frames = entry
    elif len(entry) and isinstance(entry[0], list | tuple):
        frames = np.asarray(entry, dtype=np.uint8)  # an array that went through Arrow comes back as nested lists
    else:
        if len(entry) == 0:
            raise ValueError("Video given as an empty list of frames: a video needs at least one frame.")
        frames = np.stack([np.asarray(load_image(f)) for f in entry])
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError(f"Video frames must be a non-empty (T, H, W, 3) array, got shape {tuple(frames.shape)}.")
    if frames.dtype != np.uint8:
        raise ValueError(f"Video frames must be uint8 (0..255), got {frames.dtype}.")
    return frames


def require_video_file(path: str) -> None:
    """Raise a ``MediaError`` naming ``path`` and the fix when the video file does not exist."""
    if not os.path.exists(path):
        raise MediaError(Reason.MISSING_FILE, f"Video file '{path}' does not exist.", "Fix the path in your data, "
                         "or set the dataset's media root so relative paths resolve.")


@contextmanager
def open_video_stream(path: str) -> Iterator[tuple[Any, Any]]:
    """``(container, first video stream)`` of a video file opened with PyAV (nothing decoded yet).

    Raises:
        MediaError: the file cannot be opened or has no video stream; the message names it and the fix.
    """
    import av  # noqa: PLC0415 - imported lazily: only video users pay for it

    try:
        container = av.open(path)
    except Exception as err:  # av raises its own error hierarchy for bad containers
        raise MediaError(Reason.UNREADABLE_VIDEO, f"Could not open video '{path}': {err}.",
                         "Re-encode it (e.g. H.264 MP4).") from err
    with container:
        if not container.streams.video:
            raise MediaError(Reason.NO_VIDEO_FRAMES, f"'{path}' has no video stream.",
                             "Re-export the video (an empty or audio-only file).")
        yield container, container.streams.video[0]


def _decode_video_file(path: str, start: float | None, end: float | None, num_frames: int) -> np.ndarray:
    require_video_file(path)
    if is_dicom_path(path):
        with _pydicom_notes_quiet():
            return dicom_to_frames(path, frames=pick_uniform(dicom_video_frames(path, start, end), num_frames))
    with open_video_stream(path) as (container, stream):
        indices = clip_frame_indices(container, stream, path, start, end, num_frames)
        seeked = decode_seeking(container, stream, indices)
    if seeked is not None:
        return np.stack(seeked.frames)
    with open_video_stream(path) as (container, stream):  # a fresh decoder, read from the first packet
        frames = decode_in_order(container, stream, indices, path)
    if not frames:
        raise MediaError(Reason.NO_VIDEO_FRAMES, f"Video '{path}' has no decodable frames (zero-frame or corrupt "
                         "file).")
    return np.stack(frames)


def clip_frame_indices(container: Any, stream: Any, path: str, start: float | None, end: float | None,
                       num_frames: int) -> list[int]:
    """``select_frame_indices`` for a clip of an open video, from its stream metadata only (no decoding).

    The frame count is the stream's (``nb_frames``, what torchcodec, PLM's decoder, reports for an MP4) or,
    when the container records none (Matroska, WebM), the packets counted in one demux pass (nothing decoded;
    duration x frame rate only when the packets have no timestamps); the frame rate is the stream's average
    rate. A clip's ends are found by the packets' timestamps (``presentation_times``, read up to the clip's end),
    so at a variable frame rate the clip is cut where a player shows it.

    Raises:
        MediaError: naming ``path``: no frame rate or frame count in the metadata, or a bad clip.
    """
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    fps = float(rate) if rate else 0.0
    times = None
    if start is not None or end is not None or not stream.frames:
        with open_video_stream(path) as (scan, scanned):  # a second reader: ``container`` stays at its start
            times = presentation_times(scan, scanned, math.inf if end is None or not stream.frames else end)
    # Without a count in the header, duration x rate is wrong at a variable rate: count the packets read.
    total = stream.frames or (len(times) if times else round(_duration_seconds(container, stream) * fps))
    if fps <= 0 or total < 1:
        raise MediaError(Reason.UNREADABLE_VIDEO, f"Video '{path}' records no frame rate or frame count in its "
                         f"metadata (fps {fps:g}, {total} frames).", "Re-encode it (e.g. H.264 MP4).")
    try:
        return select_frame_indices(total, fps, start, end, num_frames, times)
    except MediaError as err:
        raise MediaError(err.reason, f"{err} (video '{path}')") from err


def _duration_seconds(container: Any, stream: Any) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000  # av.time_base: microseconds
    return 0.0


def _load_dicom_image(path: str) -> Image.Image:
    """A single-frame ``.dcm`` rendered as a viewer shows it (window, MONOCHROME1 inversion, colour)."""
    with _pydicom_notes_quiet():
        dicom_image_size(path)  # one frame, checked before decoding: a cine can hold hundreds
        return Image.fromarray(dicom_to_frames(path)[0])


@contextmanager
def _pydicom_notes_quiet() -> Iterator[None]:
    """pydicom warns (with its site-packages path) about non-standard values it reads anyway; from_dicom reports
    those files once when it builds the dataset, so decoding them again for each batch stays quiet."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module="pydicom")
        yield


# ------------------------------------------------------------------------------------------ headers only
def image_size(entry: Any) -> tuple[int, int]:
    """``(width, height)`` of an image entry from its header only (the pixels are not decoded).

    Args:
        entry: as ``load_image``: a PIL image, a path (``.dcm`` included), bytes, or a ``{"bytes", "path"}`` dict.

    Raises:
        ValueError: a missing file, an unreadable header, an empty image, a multi-frame DICOM given as an
            image; the message names the entry and the fix.
    """
    width, height = read_image_entry(entry, viewed_size, dicom_image_size, reading="read the header of")
    if width < 1 or height < 1:
        raise MediaError(Reason.UNDECODABLE_IMAGE, f"Image {describe_media(entry)} has size {width}x{height}.",
                         "Re-export the image.")
    return width, height


def video_duration(path: str) -> float:
    """A video file's duration in seconds from its container header (0.0 when not recorded); no frame decoded.

    Raises:
        MediaError: the file is missing (``"missing file"``), cannot be opened (``"unreadable video"``), has
            no video frames (``"no video frames"``), or its packets stop well before the duration its header
            gives (``"truncated video"``: a cut download; this reads the packets of the last second).
    """
    require_video_file(path)
    with open_video_stream(path) as (container, stream):
        duration = _duration_seconds(container, stream)
        if stream.frames == 0 and duration <= 0:
            raise MediaError(Reason.NO_VIDEO_FRAMES, f"'{path}' has a video stream with no frames.",
                             "Re-export the video.")
        if duration > 0:
            _check_packets_reach_end(container, stream, duration, path)
    return duration


def _check_packets_reach_end(container: Any, stream: Any, duration: float, path: str) -> None:
    """``MediaError(Reason.TRUNCATED_VIDEO)`` when the packets stop well before the header's duration (a cut
    download or copy).

    Reads packets (not frames) from the keyframe before the last second: a header written first (MP4
    ``faststart``) keeps promising frames that a truncated file no longer has.
    """
    import av  # noqa: PLC0415 - imported lazily: only video users pay for it

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
        raise MediaError(Reason.TRUNCATED_VIDEO, f"'{path}' header says {duration:.2f}s, but {where}.",
                         "Re-download or re-encode the file.")


def video_frame_count(entry: Any, num_frames: int) -> int:
    """Frames ``load_video`` will return for a video entry, from metadata only (no decode).

    Args:
        entry: as ``load_video``: a path (``.dcm`` included), ``{"path", "start", "end"}``, a ``(T, H, W, 3)``
            array or a list of frames.
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
    path, start, end = video_file(entry)
    require_video_file(path)
    if is_dicom_path(path):
        return len(pick_uniform(dicom_video_frames(path, start, end), num_frames))
    with open_video_stream(path) as (container, stream):
        return len(clip_frame_indices(container, stream, path, start, end, num_frames))
