"""Stored DICOM pixel values -> what a viewer shows: modality LUT, VOI window or LUT, colour conversion, 8 bit.

The rules (DICOM PS3.4 N.2, PS3.3 C.11) are described in ``plm_tune.data.dicom``, which reads and checks the file,
decodes the stored values and calls ``render_grey`` / ``render_colour``. Nothing here opens a file.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from plm_tune.errors import DataError, Reason

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = ["RenderError", "render_colour", "render_grey"]

# What the greyscale pipeline reads; enhanced files override some of it per frame (PS3.3 C.7.6.16.2).
_PIPELINE_TAGS = ("PhotometricInterpretation", "BitsStored", "PixelRepresentation", "RescaleSlope",
                  "RescaleIntercept", "ModalityLUTSequence", "WindowCenter", "WindowWidth", "VOILUTFunction",
                  "VOILUTSequence")
_FRAME_GROUPS = ("PixelValueTransformationSequence", "FrameVOILUTSequence")
logger = logging.getLogger(__name__)
_WARNED_SLOPE: set[str] = set()  # files already reported: a file is decoded again for each batch


class RenderError(DataError):
    """Pixels that cannot be rendered; ``plm_tune.data.dicom`` re-raises it as a ``DicomError`` naming the file.

    Args:
        reason: a ``Reason`` (``Reason.UNSUPPORTED_IMAGE_TYPE``, ``Reason.CORRUPT_HEADER``).
        detail: what was expected and what was found.
        fix: what the user can do about it ("" when re-exporting the file is the fix).
    """

    def __init__(self, reason: str, detail: str, fix: str = "") -> None:
        super().__init__(reason, detail, fix, message=f"{reason}: {detail}")


def render_grey(ds: Dataset, stored: list[np.ndarray], indices: list[int], name: str) -> np.ndarray:
    """Greyscale frames ``indices`` of ``ds`` (their stored values ``stored``): Modality LUT, then VOI (or
    min-max), to uint8 ``(T, H, W)``; MONOCHROME1 is not inverted here. ``name`` (the file) is for warnings.

    A Rescale Slope of 0 (invalid: PS3.3 C.11.1.1.2 maps stored values by ``slope * value + intercept``, so every
    pixel would become the intercept) is read as 1, keeping the intercept (CT stays in Hounsfield units, so the
    file's window still fits), with a warning naming the file: DCMTK's viewers likewise ignore a zero slope.
    """
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    views = [_valid_slope(_frame_view(ds, i), name) for i in indices]
    values = [apply_modality_lut(array, view) for array, view in zip(stored, views, strict=True)]
    # Without a window in the file, one min-max range for all rendered frames keeps a clip's brightness steady.
    unwindowed = [value for value, view in zip(values, views, strict=True) if not _has_voi(view)]
    low = min((float(v.min()) for v in unwindowed), default=0.0)
    high = max((float(v.max()) for v in unwindowed), default=0.0)
    rendered = []
    for value, view in zip(values, views, strict=True):
        if not _has_voi(view):
            rendered.append(_to_uint8(value, low, high))
            continue
        if _has_voi_lut(view) and not np.issubdtype(value.dtype, np.integer):
            value = np.rint(value).astype(np.int64)  # a VOI LUT is indexed by integer modality values
        rendered.append(_to_uint8(apply_voi_lut(value, view), *_voi_output_range(view)))
    return np.stack(rendered)


def _frame_view(ds: Dataset, index: int) -> Dataset:
    """The pipeline elements for one frame: top level, overridden by shared then per-frame functional groups."""
    shared = ds.get("SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if not shared and not per_frame:
        return ds
    from pydicom.dataset import Dataset

    view = Dataset()
    for tag in _PIPELINE_TAGS:
        if tag in ds:
            view[tag] = ds[tag]
    # LUT data stored as OW is decoded with the file's byte order.
    view.file_meta = getattr(ds, "file_meta", Dataset())
    view.set_original_encoding(*ds.original_encoding)
    groups = [shared[0] if shared else None, per_frame[index] if per_frame and index < len(per_frame) else None]
    for group in groups:
        for sequence in _FRAME_GROUPS:
            if group is not None and group.get(sequence):
                for element in group[sequence][0]:
                    view[element.tag] = element
    return view


def _valid_slope(view: Dataset, name: str) -> Dataset:
    """``view``, or a copy of it with a Rescale Slope of 0 replaced by 1 (``render_grey`` says why)."""
    if not _present(view, "RescaleSlope") or view.get("ModalityLUTSequence"):
        return view
    try:
        slope = float(view.RescaleSlope)
    except (TypeError, ValueError):
        return view  # a malformed slope: pydicom's own error, named by dicom_to_frames
    if slope != 0.0:
        return view
    from pydicom.dataset import Dataset

    if name not in _WARNED_SLOPE:
        _WARNED_SLOPE.add(name)
        logger.warning("DICOM file '%s': RescaleSlope is 0 (invalid: every pixel would be the intercept); rendered "
                       "with slope 1. Fix the tag in the source if the file is yours.", name)
    fixed = Dataset(view)  # a new element dict: the caller's dataset is not changed
    fixed.file_meta = getattr(view, "file_meta", Dataset())
    fixed.set_original_encoding(*view.original_encoding)
    fixed.RescaleSlope = 1
    return fixed


def _present(ds: Dataset, tag: str) -> bool:
    value = ds.get(tag)
    return value is not None and value != ""


def _has_voi_lut(view: Dataset) -> bool:
    sequence = view.get("VOILUTSequence")
    return bool(sequence) and _present(sequence[0], "LUTDescriptor") and _present(sequence[0], "LUTData")


def _has_voi(view: Dataset) -> bool:
    return _has_voi_lut(view) or (_present(view, "WindowCenter") and _present(view, "WindowWidth"))


def _voi_output_range(view: Dataset) -> tuple[float, float]:
    """The range apply_voi_lut maps the VOI onto (the ends of the window), for scaling to 8 bit."""
    if _has_voi_lut(view):  # apply_voi_lut prefers the LUT when both are present
        return 0.0, float(2 ** int(view.VOILUTSequence[0].LUTDescriptor[2]) - 1)
    # A window maps onto the full range the modality transform can output (PS3.3 C.11.2.1.2).
    if view.get("ModalityLUTSequence"):
        low, high = 0.0, float(2 ** int(view.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    elif int(view.PixelRepresentation) == 0:
        low, high = 0.0, float(2 ** int(view.BitsStored) - 1)
    else:
        low, high = float(-(2 ** (int(view.BitsStored) - 1))), float(2 ** (int(view.BitsStored) - 1) - 1)
    if _present(view, "RescaleSlope") and _present(view, "RescaleIntercept") and not view.get("ModalityLUTSequence"):
        slope, intercept = float(view.RescaleSlope), float(view.RescaleIntercept)
        low, high = low * slope + intercept, high * slope + intercept
    return low, high


def _to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Linear map of ``[low, high]`` onto 0..255 (``low > high`` inverts), clipped and rounded."""
    if high == low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (np.asarray(values, dtype=np.float64) - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def render_colour(ds: Dataset, array: np.ndarray, colour_space: str, bits_stored: int) -> np.ndarray:
    """One colour frame of ``ds`` (decoded with ``raw=True``, in ``colour_space``) to uint8 RGB ``(H, W, 3)``.

    Raises:
        RenderError: a colour space or sample depth that is not supported, or a frame that is not (H, W, 3).
    """
    from pydicom.pixels import apply_color_lut, convert_color_space

    if colour_space == "PALETTE COLOR":
        rgb = apply_color_lut(array, _palette_view(ds))[..., :3]  # drop alpha when the palette has one
        bits = rgb.dtype.itemsize * 8
    elif colour_space in ("YBR_FULL", "YBR_FULL_422"):
        if array.dtype != np.uint8:
            raise RenderError(Reason.UNSUPPORTED_IMAGE_TYPE, f"{colour_space} with {bits_stored}-bit samples; "
                              "only 8-bit YBR is converted to RGB.", "convert it to RGB before training.")
        rgb, bits = convert_color_space(array, colour_space, "RGB"), 8
    elif colour_space in ("RGB", "YBR_ICT", "YBR_RCT"):
        rgb, bits = array, int(bits_stored)  # JPEG 2000 decoders undo ICT / RCT themselves: this is RGB
    else:
        raise RenderError(Reason.UNSUPPORTED_IMAGE_TYPE, f"photometric interpretation {colour_space!r}; "
                          "supported: MONOCHROME1/2, PALETTE COLOR, RGB, YBR_FULL(_422), YBR_ICT, YBR_RCT.",
                          "convert it to RGB before training.")
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise RenderError(Reason.CORRUPT_HEADER, f"a colour frame decoded to shape {rgb.shape}, not (H, W, 3).")
    # Keep the top 8 bits: data written from 8-bit sources as v*256 or v*257 maps back to exactly v.
    return (rgb >> (bits - 8)).astype(np.uint8) if bits > 8 else rgb.astype(np.uint8)


def _palette_view(ds: Dataset) -> Dataset:
    """Palette LUTs as apply_color_lut reads them: pydicom 3.0 takes (unsegmented) 16-bit LUT data as little
    endian whatever the file's byte order, so a big-endian file's tables are byte-swapped here."""
    if ds.original_encoding[1] is not False or "RedPaletteColorLookupTableData" not in ds:
        return ds
    from pydicom.dataset import Dataset

    view = Dataset()
    for colour in ("Red", "Green", "Blue", "Alpha"):
        descriptor, data = f"{colour}PaletteColorLookupTableDescriptor", f"{colour}PaletteColorLookupTableData"
        if descriptor in ds:
            view[descriptor] = ds[descriptor]
        if data in ds:
            entries = ds[descriptor].value[0] or 2**16
            raw = ds[data].value
            swapped = np.frombuffer(raw, ">u2").astype("<u2").tobytes() if len(raw) == 2 * entries else raw
            view.add_new(data, "OW", swapped)
    return view
