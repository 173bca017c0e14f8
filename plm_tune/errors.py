"""What can be wrong with a sample or its media, as short stable reason codes carried on the exception.

Every problem the library finds in data (a missing file, an undecodable image, a truncated video, a DICOM file
without pixels, a conversation with no answer) raises a ``DataError`` whose ``reason`` is one of ``Reason``.
Whoever groups problems reads that code, never the message: the adapters' skip reports
(``data_adapters.BadRecord``, itself a ``DataError``), ``plm-tune data check`` (``plm_tune.encoding.preflight``).
An adapter may add codes of its own for what only its format can get wrong (``"bad json"``, ``"extra csv
fields"``); the codes here are the ones the library and the adapters share.

This module imports nothing from plm-tune, so every module (and ``data_adapters``) may import it.

    >>> try:
    ...     raise MediaError(Reason.MISSING_FILE, "Video file 'a.mp4' does not exist.")
    ... except ValueError as err:
    ...     wrapped = err
    >>> reason_of(wrapped)
    <Reason.MISSING_FILE: 'missing file'>
"""

from __future__ import annotations

from enum import Enum

__all__ = ["DataError", "MediaError", "Reason", "reason_of"]


class Reason(str, Enum):
    """The reason codes (a ``str``: ``Reason.MISSING_FILE == "missing file"``), as users see them in reports."""

    def __str__(self) -> str:  # printed as its value, in messages and reports (enum.StrEnum needs Python 3.11)
        return self.value

    # any media file
    MISSING_FILE = "missing file"
    # images
    UNDECODABLE_IMAGE = "undecodable image"
    # videos
    UNREADABLE_VIDEO = "unreadable video"  # the container does not open, or its frames do not decode
    NO_VIDEO_FRAMES = "no video frames"
    TRUNCATED_VIDEO = "truncated video"
    BAD_CLIP_TIMES = "bad clip times"
    CLIP_OUTSIDE_VIDEO = "clip outside video"
    # DICOM files (plm_tune.data.dicom cites the standard for each)
    NOT_DICOM = "not a DICOM file"
    UNREADABLE_DICOM = "unreadable DICOM"
    CORRUPT_HEADER = "corrupt header"
    TRUNCATED_FILE = "truncated file"
    NO_PIXEL_DATA = "no pixel data"
    CORRUPT_PIXEL_DATA = "corrupt pixel data"
    UNDECODABLE_PIXEL_DATA = "undecodable pixel data"
    UNSUPPORTED_COMPRESSION = "unsupported compression"
    NO_DECODER = "no decoder installed"
    UNSUPPORTED_IMAGE_TYPE = "unsupported image type"
    # a sample's conversation (plm_tune.data.sample)
    NO_ANSWER_TEXT = "no answer text"
    EMPTY_CONTENT = "empty content"
    MEDIA_COUNT_MISMATCH = "media count mismatch"
    NOT_UTF8_TEXT = "not UTF-8 text"
    INVALID_CONVERSATION = "invalid conversation"  # roles, order or parts that PLM's template cannot take
    # a preference sample's answers (plm_tune.data.preference)
    IDENTICAL_ANSWERS = "identical answers"  # chosen == rejected: the pair teaches nothing
    MEDIA_IN_ANSWER = "media in answer"  # an image or video in a chosen / rejected answer
    INVALID_SAMPLE = "invalid sample"  # anything else: what a problem without a reason is counted as


class DataError(ValueError):
    """A sample or media file that cannot be used, and why.

    Args:
        reason: the code problems are grouped by (a ``Reason``; an adapter's own code for its format).
        detail: what was expected and what was found, naming the file or the sample.
        fix: what the user can do about it.
        message: the whole message, for a subclass that words it its own way (default: detail, then fix).
    """

    def __init__(self, reason: str, detail: str, fix: str = "", *, message: str | None = None) -> None:
        self.reason, self.detail, self.fix = reason, detail, fix
        super().__init__(message if message is not None else f"{detail} {fix}" if fix else detail)

    def __reduce__(self):  # pickled by its fields (a DataLoader worker's error comes back whole)
        return type(self), (self.reason, self.detail, self.fix)


class MediaError(DataError):
    """A media file or entry that cannot be read (``detail`` names it)."""


def reason_of(error: BaseException) -> str | None:
    """The reason code of ``error``, or of the first error behind it (``raise ... from``) that has one: a
    wrapper that names the sample (the collator's, ``validate_sample``'s) keeps its cause's reason. None when
    no error in the chain is a ``DataError``."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, DataError):
            return current.reason
        seen.add(id(current))
        current = current.__cause__
    return None
