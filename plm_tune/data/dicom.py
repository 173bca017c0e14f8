"""DICOM files -> 8-bit RGB frames, rendered the way a radiologist's viewer shows them.

This module reads and checks the file (header, pixel data against the header and the file size, transfer
syntax against the installed decoders) and decodes the stored values; ``plm_tune.data.dicom_render`` turns them into
what a viewer shows. Greyscale (DICOM PS3.4 N.2): stored values -> Modality LUT (rescale slope / intercept or a
LUT: Hounsfield units for CT) -> VOI (the file's window centre / width or VOI LUT; a min-max stretch when it has
neither) -> 8 bit, inverted for MONOCHROME1 (where the lowest value is shown white, as in many CR / DX
radiographs). Enhanced multi-frame files keep rescale and window per frame in functional groups: they apply
per frame. Colour: PALETTE COLOR through its palette, YBR_FULL / YBR_FULL_422 converted to RGB, RGB kept;
deeper than 8 bits keeps the top 8 bits.

    >>> frames = dicom_to_frames("chest.dcm")     # doctest: +SKIP
    >>> frames.shape, frames.dtype                 # doctest: +SKIP
    ((1, 1955, 1841, 3), dtype('uint8'))

pydicom is optional (``pip install "plm-tune[dicom]"``) and imported only when a DICOM file is read.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from plm_tune.data.dicom_render import RenderError, render_colour, render_grey
from plm_tune.errors import MediaError, Reason

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = ["DICOM_SUFFIXES", "DicomError", "dicom_frame_count", "dicom_image_size", "dicom_to_frames",
           "dicom_video_frames", "is_dicom_path", "read_dicom_header"]

DICOM_SUFFIXES = (".dcm", ".dicom")

# Elements an image needs before its pixels can be decoded (PS3.3 C.7.6.3, Image Pixel Module).
_IMAGE_TAGS = ("Rows", "Columns", "BitsAllocated", "BitsStored", "PixelRepresentation", "SamplesPerPixel",
               "PhotometricInterpretation")
_REEXPORT = "re-export the file from the PACS / modality, or skip it (on_error=\"skip\" in the adapters)."
_INSTALL_DECODERS = "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg (JPEG, JPEG-LS, JPEG 2000)"


class DicomError(MediaError):
    """A DICOM file that cannot be rendered.

    Args:
        path: the file (or ``"<in-memory DICOM dataset>"``).
        reason: a ``Reason`` (``Reason.TRUNCATED_FILE``, ``Reason.NO_PIXEL_DATA``, ...), used to group skips.
        detail: what was expected and what was found.
        fix: what the user can do about it.
    """

    def __init__(self, path: str, reason: str, detail: str, fix: str = "") -> None:
        self.path = path
        super().__init__(reason, detail, fix,
                         message=f"DICOM file '{path}': {reason}: {detail}" + (f" Fix: {fix}" if fix else ""))

    def __reduce__(self):
        return DicomError, (self.path, self.reason, self.detail, self.fix)


def is_dicom_path(path: str | os.PathLike) -> bool:
    """True for a path ending in ``.dcm`` or ``.dicom`` (any case): the files ``plm_tune.data.media`` renders as DICOM.

    >>> is_dicom_path("study/IM0001.DCM"), is_dicom_path("scan.png")
    (True, False)
    """
    return os.fspath(path).lower().endswith(DICOM_SUFFIXES)


def read_dicom_header(path: str | os.PathLike) -> Dataset:
    """Read a DICOM file's header without its pixel values, checking the pixels are there to be read.

    Cheap enough to run over a whole corpus before training: the pixel data is not read, only its length
    (or, when compressed, its fragment headers) is checked against the header and the file size, and the
    transfer syntax against the installed decoders.

    Args:
        path: a DICOM file (any name; pre-DICOM-3.0 files without the ``DICM`` preamble are accepted).

    Returns:
        The ``pydicom`` dataset of every element before the pixel data.

    Raises:
        ImportError: pydicom is not installed.
        DicomError: (a ``ValueError``) the file is missing, not DICOM, unparsable, holds no image, is
            truncated, its header contradicts its pixel data, or no installed plugin decodes its compression.
    """
    path = os.fspath(path)
    _require_file(path)
    pydicom = _pydicom()
    with open(path, "rb") as fp:
        header = _dcmread(fp, path, stop_before_pixels=True)
        syntax = _transfer_syntax(header, path)
        if syntax == pydicom.uid.DeflatedExplicitVRLittleEndian:
            # The body is one zlib stream: there is no pixel element to seek to, so read the file whole.
            _check_pixel_data(_dcmread(path, path, stop_before_pixels=False), path)
        else:
            _check_pixel_element(fp, header, path)
    _decoder_for(syntax, path)
    return header


def dicom_frame_count(ds: Dataset) -> int:
    """Number of frames of a DICOM image.

    Args:
        ds: a dataset or header (``read_dicom_header``).

    Returns:
        ``NumberOfFrames``, or 1 when it is absent, empty or 0 (as pydicom reads such files).

    Raises:
        DicomError: ``NumberOfFrames`` is not a non-negative integer.
    """
    value = ds.get("NumberOfFrames")
    if value is None or value == "":
        return 1
    try:
        count = int(value)
    except (TypeError, ValueError):
        count = -1
    if count < 0:
        raise DicomError(_name_of(ds), Reason.CORRUPT_HEADER, f"NumberOfFrames is {value!r}, expected an integer.",
                         _REEXPORT)
    return max(count, 1)


def dicom_image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(width, height)`` of a DICOM file given as an image, from its header.

    Raises:
        DicomError: as ``read_dicom_header``.
        ValueError: the file has several frames (a cine, ultrasound loop or multi-frame volume: a video).
    """
    header = read_dicom_header(path)
    count = dicom_frame_count(header)
    if count > 1:
        raise ValueError(f"DICOM file '{os.fspath(path)}' has {count} frames (a cine, ultrasound loop or multi-frame "
                         "volume), so it is a video, not an image. Put it in the sample's 'videos' with a "
                         "{'type': 'video'} placeholder instead of 'images'.")
    return int(header.Columns), int(header.Rows)


def dicom_video_frames(path: str | os.PathLike, start: float | None = None, end: float | None = None) -> int:
    """Frames of a DICOM file given as a video: the whole series, from its header.

    Raises:
        DicomError: as ``read_dicom_header``.
        ValueError: clip bounds were given (DICOM series have no time axis to cut).
    """
    if start is not None or end is not None:
        raise ValueError(f"DICOM video '{os.fspath(path)}': clip bounds (start={start}, end={end}) are not supported "
                         "for DICOM files. Remove 'start' / 'end' from the entry to use the whole series.")
    return dicom_frame_count(read_dicom_header(path))


def dicom_to_frames(path_or_dataset: str | os.PathLike | Dataset, *,
                    frames: Sequence[int] | None = None) -> np.ndarray:
    """Render a DICOM image as a viewer would (see the module docstring) into 8-bit RGB frames.

    Args:
        path_or_dataset: a DICOM file path, or a ``pydicom`` dataset read with its pixel data.
        frames: 0-based indices of the frames to decode (default: all). Only those frames are decoded.

    Returns:
        ``(T, H, W, 3)`` uint8 array; ``T = 1`` for a single-frame image.

    Raises:
        ImportError: pydicom is not installed.
        DicomError: (a ``ValueError``) the file is missing, not DICOM, holds no image, is truncated or
            corrupt, no installed plugin decodes it, or its photometric interpretation is not supported.
        ValueError: a frame index is out of range.
    """
    ds, name = _open(path_or_dataset)
    if "PixelData" not in ds and isinstance(path_or_dataset, str | os.PathLike):
        read_dicom_header(name)  # raises, saying why: cut short, not an image, ...
    _check_pixel_data(ds, name)
    syntax = _transfer_syntax(ds, name)
    decoder = _decoder_for(syntax, name)
    count = dicom_frame_count(ds)
    indices = list(range(count)) if frames is None else [int(i) for i in frames]
    if not indices or not all(0 <= i < count for i in indices):
        raise ValueError(f"DICOM file '{name}' has {count} frame(s) (indices 0..{count - 1}); "
                         f"cannot decode frames {indices}.")

    from pydicom.pixels import as_pixel_options

    options = as_pixel_options(ds, transfer_syntax_uid=syntax)
    stored = []
    for index in indices:
        try:
            # raw=True: pydicom leaves colour as decoded and reports which space that is, so the
            # YBR -> RGB conversion below happens exactly once, whichever plugin decoded the frame.
            array, properties = decoder.as_array(ds, index=index, raw=True, **options)
        except Exception as err:  # pydicom and its plugins raise many unrelated types for bad pixel data
            fix = (f"try another decoder: {_INSTALL_DECODERS}. Else {_REEXPORT}" if syntax.is_encapsulated
                   else _REEXPORT)
            raise DicomError(name, Reason.UNDECODABLE_PIXEL_DATA, f"frame {index} ({syntax.name}) failed to decode: "
                             f"{type(err).__name__}: {err}", fix) from err
        stored.append(array)
    colour_space = properties["photometric_interpretation"]
    try:
        if colour_space in ("MONOCHROME1", "MONOCHROME2"):
            grey = render_grey(ds, stored, indices, name)  # (T, H, W)
            if colour_space == "MONOCHROME1":
                grey = 255 - grey
            return np.repeat(grey[..., None], 3, axis=-1)
        return np.stack([render_colour(ds, a, colour_space, properties["bits_stored"]) for a in stored])
    except RenderError as err:
        raise DicomError(name, err.reason, err.detail, err.fix or _REEXPORT) from err
    except Exception as err:  # malformed windows or LUTs surface as assorted pydicom / numpy errors
        raise DicomError(name, Reason.CORRUPT_HEADER, f"rendering failed on its LUT or window values: "
                         f"{type(err).__name__}: {err}", _REEXPORT) from err


# ---------------------------------------------------------------------------------------------------- reading
def _pydicom() -> Any:
    try:
        import pydicom
        import pydicom.pixels  # noqa: F401 - the decoders and LUT functions used below
    except ImportError as err:
        raise ImportError('Reading DICOM files needs pydicom: pip install "plm-tune[dicom]"') from err
    return pydicom


def _require_file(path: str) -> None:
    if not os.path.isfile(path):
        raise DicomError(path, Reason.MISSING_FILE, "no such file.", "fix the path, or restore the file.")


def _name_of(ds: Dataset) -> str:
    filename = getattr(ds, "filename", None)
    return filename if isinstance(filename, str) and filename else "<in-memory DICOM dataset>"


def _open(path_or_dataset: Any) -> tuple[Dataset, str]:
    if isinstance(path_or_dataset, str | os.PathLike):
        path = os.fspath(path_or_dataset)
        _require_file(path)
        return _dcmread(path, path, stop_before_pixels=False), path
    pydicom = _pydicom()
    if isinstance(path_or_dataset, pydicom.Dataset):
        return path_or_dataset, _name_of(path_or_dataset)
    raise ValueError(f"Expected a DICOM file path or a pydicom Dataset, got {type(path_or_dataset).__name__}.")


def _dcmread(source: str | BinaryIO, name: str, *, stop_before_pixels: bool) -> Dataset:
    pydicom = _pydicom()
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(source, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError:
        pass  # no "DICM" preamble: maybe a pre-DICOM-3.0 (ACR-NEMA) file, which viewers still open
    except Exception as err:  # pydicom raises many types (struct.error, EOFError, KeyError) for broken headers
        raise DicomError(name, Reason.UNREADABLE_DICOM, f"the header does not parse ({type(err).__name__}: {err}).",
                         _REEXPORT) from err
    if not isinstance(source, str):
        source.seek(0)
    try:
        ds = pydicom.dcmread(source, stop_before_pixels=stop_before_pixels, force=True)
    except Exception:  # force=True on non-DICOM bytes fails in arbitrary ways
        ds = None
    # force=True reads any bytes as *some* elements: trust only a dataset with an image or a SOP class.
    if ds is not None and "Rows" in ds and "Columns" in ds:
        return ds
    if ds is not None and "SOPClassUID" in ds:
        raise _no_pixels(ds, name)
    raise DicomError(name, Reason.NOT_DICOM, "no 'DICM' marker at byte 128 and no image header.",
                     "check it is a DICOM file and not, e.g., a PNG, PDF report or archive named .dcm.")


def _transfer_syntax(ds: Dataset, name: str) -> Any:
    pydicom = _pydicom()
    syntax = getattr(ds, "file_meta", {}).get("TransferSyntaxUID")
    if syntax and not syntax.is_transfer_syntax:
        # An unknown (or private, or mistyped: a SOP class UID) syntax: pydicom's UID properties raise a bare
        # "UID is not a transfer syntax" on it, naming no file.
        raise DicomError(name, Reason.UNSUPPORTED_COMPRESSION, f"its Transfer Syntax UID {str(syntax)!r} is not a "
                         "transfer syntax pydicom knows (a private or vendor encoding, or a wrong UID).",
                         "convert it to a standard one with the vendor's tool or `gdcmconv --raw in.dcm out.dcm` "
                         "(dcmtk: `dcmconv +te`), then retry.")
    if syntax:
        return syntax
    # Files without file meta (ACR-NEMA) are never compressed: their pixels are encoded like the dataset.
    implicit, little = ds.original_encoding
    if implicit is None:
        raise DicomError(name, Reason.CORRUPT_HEADER, "no Transfer Syntax UID, so its encoding is unknown.", _REEXPORT)
    if implicit:
        return pydicom.uid.ImplicitVRLittleEndian
    return pydicom.uid.ExplicitVRLittleEndian if little else pydicom.uid.ExplicitVRBigEndian


def _decoder_for(syntax: Any, name: str) -> Any:
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as err:
        raise DicomError(name, Reason.UNSUPPORTED_COMPRESSION, f"pixel data encoded as {syntax.name} ({syntax}), "
                         "which pydicom cannot decode.",
                         "decompress it first, e.g. `gdcmconv --raw in.dcm out.dcm`.") from err
    if not decoder.is_available:
        raise DicomError(name, Reason.NO_DECODER, f"pixel data compressed as {syntax.name}; no installed "
                         f"plugin decodes it ({'; '.join(decoder.missing_dependencies)}).",
                         f"{_INSTALL_DECODERS}, or decompress the files with `gdcmconv --raw`.")
    return decoder


def _require_image_tags(ds: Dataset, name: str) -> None:
    missing = [tag for tag in _IMAGE_TAGS if ds.get(tag) is None or ds.get(tag) == ""]
    if missing:
        raise DicomError(name, Reason.CORRUPT_HEADER, f"it has pixel data but no {', '.join(missing)}, so the pixels "
                         "cannot be laid out.", _REEXPORT)
    dicom_frame_count(ds)  # raises on a malformed NumberOfFrames


def _no_pixels(ds: Dataset, name: str) -> DicomError:
    if "Rows" in ds:
        return DicomError(name, Reason.TRUNCATED_FILE, f"the header describes a {ds.Rows}x{ds.Columns} image but the "
                          "file ends before its pixel data.", _REEXPORT)
    kind = getattr(ds.get("SOPClassUID"), "name", None) or "unknown SOP class"
    return DicomError(name, Reason.NO_PIXEL_DATA, f"it holds no image ({kind}, Modality {ds.get('Modality', '?')}).",
                      "pass only image files (CT, MR, CR, DX, US, ...): reports, RT plans and other "
                      "non-image objects have no pixels.")


def _expected_bytes(ds: Dataset) -> int:
    from pydicom.pixels.utils import get_expected_length

    return get_expected_length(ds, "bytes")


def _check_pixel_data(ds: Dataset, name: str) -> None:
    """A fully read dataset: pixel data present, and long enough when uncompressed."""
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise DicomError(name, Reason.UNSUPPORTED_IMAGE_TYPE, "float pixel data (e.g. a parametric map).")
        raise _no_pixels(ds, name)
    _require_image_tags(ds, name)
    syntax = _transfer_syntax(ds, name)
    if not syntax.is_encapsulated and len(ds.PixelData) < (expected := _expected_bytes(ds)):
        raise DicomError(name, Reason.TRUNCATED_FILE, f"the pixel data holds {len(ds.PixelData)} bytes but "
                         f"{ds.Rows}x{ds.Columns}, {dicom_frame_count(ds)} frame(s) of {ds.BitsAllocated}-bit "
                         f"samples need {expected}.", _REEXPORT)


def _check_pixel_element(fp: BinaryIO, ds: Dataset, name: str) -> None:
    """After a stop_before_pixels read ``fp`` sits on the pixel data element: check it without reading it."""
    start = fp.tell()
    size = os.fstat(fp.fileno()).st_size
    head = fp.read(8)
    if len(head) < 8:
        raise _no_pixels(ds, name)
    implicit, little = ds.original_encoding
    order = "<" if little else ">"
    if struct.unpack(order + "HH", head[:4]) != (0x7FE0, 0x0010):
        raise DicomError(name, Reason.UNSUPPORTED_IMAGE_TYPE, "float pixel data (e.g. a parametric map).")
    _require_image_tags(ds, name)
    # Explicit VR: tag, VR (OB / OW / UN), 2 reserved bytes, 4-byte length. Implicit VR: tag, 4-byte length.
    # The VR bytes are checked too: some files claim explicit VR but are written implicit (pydicom copes).
    explicit = not implicit and head[4:6] in (b"OB", b"OW", b"UN")
    length_bytes, header_size = (fp.read(4), 12) if explicit else (head[4:8], 8)
    if len(length_bytes) < 4:
        raise _no_pixels(ds, name)
    (length,) = struct.unpack(order + "I", length_bytes)
    if length == 0xFFFFFFFF:
        _check_fragments(fp, size, name)
        return
    if start + header_size + length > size:
        raise DicomError(name, Reason.TRUNCATED_FILE, f"its pixel data should end at byte {start + header_size + length} "
                         f"but the file is {size} bytes long.", _REEXPORT)
    if length < (expected := _expected_bytes(ds)):
        raise DicomError(name, Reason.CORRUPT_HEADER, f"the pixel data holds {length} bytes but {ds.Rows}x{ds.Columns}, "
                         f"{dicom_frame_count(ds)} frame(s) of {ds.BitsAllocated}-bit samples need {expected}.",
                         _REEXPORT)


def _check_fragments(fp: BinaryIO, size: int, name: str) -> None:
    """Walk the item headers of compressed pixel data (PS3.5 A.4), seeking over each fragment's bytes."""
    fragments = -1  # the first item is the Basic Offset Table
    while True:
        position = fp.tell()
        head = fp.read(8)
        if len(head) < 8:
            # pydicom drops pixel data that lacks its closing delimiter: the file was cut short.
            raise DicomError(name, Reason.TRUNCATED_FILE, f"the compressed pixel data stops at byte {position} after "
                             f"{max(fragments, 0)} fragment(s), without its closing delimiter.", _REEXPORT)
        group, element, length = struct.unpack("<HHI", head)
        if (group, element) == (0xFFFE, 0xE0DD):  # sequence delimiter
            if fragments < 1:
                raise DicomError(name, Reason.NO_PIXEL_DATA, "the compressed pixel data has no fragments.", _REEXPORT)
            return
        if (group, element) != (0xFFFE, 0xE000):
            raise DicomError(name, Reason.CORRUPT_PIXEL_DATA, f"expected a fragment item (FFFE,E000) at byte {position}, "
                             f"found ({group:04X},{element:04X}).", _REEXPORT)
        if position + 8 + length > size:
            raise DicomError(name, Reason.TRUNCATED_FILE, f"the compressed fragment at byte {position} needs {length} "
                             f"bytes but the file ends {position + 8 + length - size} bytes short.", _REEXPORT)
        fp.seek(length, os.SEEK_CUR)
        fragments += 1
