"""DICOM files -> canonical samples: a single-frame file is an image sample, a multi-frame one (cine MR,
ultrasound loop, enhanced CT / MR) a video sample.

The media entry stays the ``.dcm`` path: ``plm_tune.data.media`` renders it when the batch is built (Modality LUT,
window, MONOCHROME1 inversion, colour; see ``plm_tune.data.dicom``). Building the dataset reads headers only, and
checks that each file's pixel data is all there and that a decoder for its compression is installed, so
truncated files, non-images and missing JPEG plugins stop the build (or are counted skips), not a training
run. A corrupt compressed stream, or a plugin limit such as Pillow's on 12-bit JPEG, shows only when pixels
are decoded: run ``plm_tune.validate_sample`` (it decodes every image) over the dataset before a long run.

A file and the sample it becomes, with ``caption="{Modality} {BodyPartExamined}: {StudyDescription}"``::

    scans/chest/RG1_UNCI.dcm    Modality=CR, BodyPartExamined=CHEST, StudyDescription=THORAX, 1 frame

    {"id": "chest/RG1_UNCI.dcm",
     "messages": [{"role": "user", "content": [{"type": "image", "text": None},
                                               {"type": "text", "text": "Describe this image."}]},
                  {"role": "assistant", "content": [{"type": "text", "text": "CR CHEST: THORAX"}]}],
     "images": ["/data/scans/chest/RG1_UNCI.dcm"], "videos": [], "max_tiles": None, "num_frames": None}

Captions come from a template over DICOM keywords or from a sidecar table. Tags that identify the patient, study
or site (``PHI_TAGS``: DICOM PS3.15 Annex E, and every person name, date and time) never reach the text unless
named in ``allow_phi_tags``. The other tags a template names (free text such as ``StudyDescription``,
``FREE_TEXT_TAGS``) are scanned for the identifying values of the whole header (sequences and private tags
included) and for date / identifier / phone / SSN shapes (``data_adapters._phi``): what is found is removed
(``free_text_phi="redact"``, the default) or the file is a counted bad record (``"refuse"``). Captions from a
table are the user's own text and are not scanned.
"""

from __future__ import annotations

import csv
import difflib
import json
import logging
import os
import re
import string
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

from data_adapters._annex_e import ANNEX_E
from data_adapters._phi import find_phi, identifying_values, redact_phi
from data_adapters._records import (
    BadRecord,
    OnError,
    build_dataset,
    make_sample,
    media_part,
    note,
    resolve_media_path,
    short_name,
    text_part,
)
from plm_tune.data.dicom import (
    DicomError,
    dicom_frame_count,
    dicom_to_frames,
    is_dicom_path,
    read_dicom_header,
)
from plm_tune.data.sample import bad_text
from plm_tune.verbosity import VERBOSE_ENV, is_verbose

__all__ = ["FREE_TEXT_TAGS", "PHI_TAGS", "from_dicom"]

logger = logging.getLogger("data_adapters")

# Free-text attributes of DICOM PS3.15 Annex E that a caption template may name: they describe the acquisition,
# and what they hold of the patient is found and removed per file (free_text_phi, data_adapters._phi).
FREE_TEXT_TAGS = frozenset({
    "StudyDescription", "SeriesDescription", "ProtocolName", "ImageComments", "StudyComments", "FrameComments",
    "AcquisitionComments", "AcquisitionProtocolDescription", "AcquisitionDeviceProcessingDescription",
    "PerformedProcedureStepDescription", "RequestedProcedureDescription", "ScheduledProcedureStepDescription",
    "RequestedSeriesDescription", "DerivationDescription", "ImagePresentationComments", "ContrastBolusAgent",
})
# Every other attribute of Annex E (Table E.1-1, data_adapters._annex_e) that pydicom names: a template may not
# name one unless allow_phi_tags does. Person names, dates and times are refused whatever the tag (_PHI_VRS).
# Patient characteristics (age, sex, size, weight) are among them: allow them to caption with them.
PHI_TAGS = frozenset(keyword for keyword in ANNEX_E.values() if keyword) - FREE_TEXT_TAGS
_PHI_VRS = frozenset({"PN", "DA", "DT", "TM"})  # person names, dates, times: PHI whatever the tag
_NON_TEXT_VRS = frozenset({"SQ", "OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_TABLE_KEYS = ("file_name", "SOPInstanceUID")


@dataclass(frozen=True)
class _File:
    root: str  # the folder given (or the file's parent for a file given by name)
    relative: str  # path under root, posix: the sample id and the captions table key
    name: str  # as the user would find it, for errors
    named_by_user: bool  # given as a file, not found in a folder


@dataclass(frozen=True)
class _Captions:
    source: str
    by_file: dict[str, str]
    by_uid: dict[str, str]


def from_dicom(
    paths_or_dir: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    caption: str | None = None,
    captions_table: str | os.PathLike | None = None,
    prompt: str = "Describe this image.",
    system_prompt: str | None = None,
    allow_phi_tags: Sequence[str] = (),
    free_text_phi: Literal["redact", "refuse"] = "redact",
    recursive: bool = True,
    max_tiles: int | None = None,
    num_frames: int | None = None,
    on_error: OnError = "raise",
    streaming: bool = False,
    check_pixels: bool = True,
    num_proc: int = 1,
    progress: bool = True,
):
    """A dataset of canonical samples, one per DICOM file.

    Args:
        paths_or_dir: a folder, a ``.dcm`` file, or a list of them. Folders contribute every ``*.dcm`` /
            ``*.dicom`` file (any case); other files, including extension-less DICOM, are not picked up.
        caption: a template over DICOM keywords, e.g. ``"{Modality} {BodyPartExamined}: {StudyDescription}"``.
            Missing tags render empty and the text is tidied (``"CT : Head"`` -> ``"CT: Head"``).
        captions_table: instead of ``caption``: a ``.csv`` or ``.jsonl`` with a ``caption`` column and a key
            column: ``file_name`` (the path under the folder, or the bare file name) and / or ``SOPInstanceUID``.
        prompt: the user's text after the image / video.
        system_prompt: a system message for every sample (default: none, so PLM's default applies).
        allow_phi_tags: identifying tags the template may use (see ``PHI_TAGS``), e.g. ``("PatientAge",)``.
        free_text_phi: what to do when a tag the template names holds identifying text (the file's own
            name, IDs, dates, accession number... or a date / ID shape; see ``data_adapters._phi``):
            ``"redact"`` removes it from the caption (logged with a count, values never printed);
            ``"refuse"`` makes the file a bad record ("identifying text"), raised or counted per ``on_error``.
        recursive: search folders at any depth (False: only their top level).
        max_tiles, num_frames: stamped into every sample (None: the collator's default).
        on_error: ``"raise"`` on the first bad file, or ``"skip"`` and count it in ``.skip_report``.
        streaming: return an ``IterableDataset`` that reads headers as it is iterated. The files are listed now
            and cut into up to 64 shards of consecutive files, so DataLoader workers and processes each read
            whole shards of their own.
        check_pixels: decode each file's first frame now, so a corrupt compressed stream (which a header
            check cannot see) is a bad record here rather than a crash mid-training. Costs one frame decode
            per file; turn off for very large, trusted archives.
        num_proc: read the files in this many processes (the same samples and skips, in the same order; see
            ``benchmarks/scan_speed.py``). Not with ``streaming``.
        progress: show a progress bar while the files are read.

    Returns:
        A ``datasets.Dataset`` (``IterableDataset`` when streaming) with ``.skip_report``.

    Raises:
        BadRecord: (``on_error="raise"``) a missing, non-DICOM, truncated or undecodable file, one with no
            pixel data, one without a caption, or (``free_text_phi="refuse"``) one whose free-text tags hold
            identifying text.
        ValueError: not exactly one of ``caption`` / ``captions_table``; a template naming an unknown,
            non-text or identifying tag; an unreadable or ambiguous captions table.
        ImportError: pydicom is not installed (``pip install "plm-tune[dicom]"``).

    Example:
        >>> ds = from_dicom("scans/", caption="{Modality} {BodyPartExamined}: {StudyDescription}")  # doctest: +SKIP
        >>> ds[0]["messages"][1]["content"][0]["text"]                                              # doctest: +SKIP
        'CR CHEST: THORAX'
    """
    if (caption is None) == (captions_table is None):
        raise ValueError("from_dicom: pass exactly one of caption= (a template such as "
                         "'{Modality} {BodyPartExamined}: {StudyDescription}') or captions_table= (a csv / jsonl).")
    if free_text_phi not in ("redact", "refuse"):
        raise ValueError(f"free_text_phi must be 'redact' or 'refuse', got {free_text_phi!r}.")
    if caption is not None:
        _template_keywords(caption, allow_phi_tags)  # fail now, before reading any file
    captions = None if captions_table is None else _read_captions_table(captions_table)
    files = _find_files(paths_or_dir, recursive)
    phi = _FreeTextPolicy(free_text_phi, frozenset(allow_phi_tags))
    to_sample = partial(_file_to_sample, template=caption, captions=captions, prompt=prompt, phi=phi,
                        system_prompt=system_prompt, max_tiles=max_tiles, num_frames=num_frames,
                        check_pixels=check_pixels, same_name=Counter(os.path.basename(f.relative) for f in files))
    # a folder is named by its last two parts (a site-packages path buries the line that matters)
    source = ", ".join(os.path.join(*os.path.normpath(os.fspath(p)).split(os.sep)[-2:]) for p in _as_list(paths_or_dir))
    dataset = build_dataset(lambda: files, to_sample, source=f"from_dicom({source})", on_error=on_error,
                            streaming=streaming, num_proc=num_proc, progress=progress)
    _log_notes(dataset.skip_report.notes)
    return dataset


# Reasons under which a file's sample is noted (data_adapters._records.note): one summary line each after the build.
_REDACTED, _READER_NOTE = "identifying text removed", "pydicom note"


def _log_notes(notes: dict[str, list[tuple[str, str]]]) -> None:
    """What was removed from captions (counts by kind; never the values), and pydicom's warnings about files it
    read anyway (non-standard values, excess padding): a line each, instead of two lines a file with
    site-packages paths; every pydicom note with ``PLM_TUNE_VERBOSE=1``."""
    redacted = notes.get(_REDACTED, [])
    if redacted:
        kinds = Counter(kind for _, kind in redacted)
        logger.warning(f"from_dicom: removed identifying text from the captions of {len({r for r, _ in redacted})} "
                       f"file(s) (free_text_phi='redact'; {', '.join(f'{n} {what}' for what, n in kinds.items())}). "
                       "Pass free_text_phi='refuse' to drop those files instead.")
    read_anyway = notes.get(_READER_NOTE, [])
    if read_anyway and is_verbose():
        for name, message in read_anyway:
            logger.warning(f"{name}: pydicom: {message}")
    elif read_anyway:
        first, message = read_anyway[0]
        logger.warning(f"from_dicom: pydicom read {len({r for r, _ in read_anyway})} file(s) despite non-standard "
                       f"values (e.g. {short_name(first)}: {message[:100]}); every note: {VERBOSE_ENV}=1 or "
                       "--verbose.")


class _FreeTextPolicy:
    """``free_text_phi``: what a caption may hold of the identifying text found in a file's free-text tags."""

    def __init__(self, mode: str, allowed: frozenset[str]) -> None:
        self.mode, self.allowed = mode, allowed

    def clean(self, values: dict[str, str], header: Any, record: str) -> dict[str, str]:
        own = identifying_values(header, self.allowed)
        found = {keyword: find_phi(text, own) for keyword, text in values.items()
                 if keyword not in self.allowed and keyword not in PHI_TAGS}
        found = {keyword: spans for keyword, spans in found.items() if spans}
        if not found:
            return values
        what = "; ".join(f"{keyword} holds {', '.join(sorted({w for *_, w in spans}))}"
                         for keyword, spans in found.items())
        if self.mode == "refuse":
            raise BadRecord(record, "identifying text", f"{what}.",
                            "de-identify these tags, leave them out of the template, or pass "
                            "free_text_phi='redact' to remove such text.")
        for spans in found.values():
            for *_, what in spans:
                note(record, _REDACTED, what)
        return {keyword: redact_phi(text, found[keyword]) if keyword in found else text
                for keyword, text in values.items()}


def _file_to_sample(file: _File, **options: Any) -> dict[str, Any]:
    """One DICOM file -> a canonical sample; pydicom's warnings about it are noted, not printed."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            return _read_file(file, **options)
        finally:
            for warning in caught:
                note(file.name, _READER_NOTE, str(warning.message))


def _read_file(file: _File, *, template: str | None, captions: _Captions | None, prompt: str, phi: _FreeTextPolicy,
               system_prompt: str | None, max_tiles: int | None, num_frames: int | None,
               check_pixels: bool, same_name: Counter) -> dict[str, Any]:
    """One DICOM file -> a canonical sample (an image if it has one frame, else a video)."""
    if file.named_by_user and not is_dicom_path(file.relative):
        raise BadRecord(file.name, "not a .dcm file", "plm_tune renders files named *.dcm / *.dicom as DICOM.",
                        "rename it to end in .dcm.")
    path = resolve_media_path(file.root, file.relative, record=file.name, allow_outside_root=file.named_by_user)
    try:
        header = read_dicom_header(path)
        frames = dicom_frame_count(header)
        if check_pixels:
            dicom_to_frames(path, frames=[0])
    except DicomError as err:
        raise BadRecord(file.name, err.reason, err.detail, err.fix) from err
    if captions is not None:
        answer = _caption_from_table(captions, file, header, same_name)
    else:
        answer = _caption_from_template(template, header, file.name, phi)
    kind = "video" if frames > 1 else "image"
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages += [{"role": "user", "content": [media_part(kind), text_part(prompt)]},
                 {"role": "assistant", "content": answer}]
    return make_sample(messages, images=[path] if kind == "image" else None,
                       videos=[path] if kind == "video" else None, sample_id=file.relative,
                       max_tiles=max_tiles, num_frames=num_frames)


# ------------------------------------------------------------------------------------------------ finding files
def _as_list(paths_or_dir: Any) -> list[str | os.PathLike]:
    return [paths_or_dir] if isinstance(paths_or_dir, str | os.PathLike) else list(paths_or_dir)


def _find_files(paths_or_dir: Any, recursive: bool) -> list[_File]:
    given = _as_list(paths_or_dir)
    if not given:
        raise ValueError("from_dicom: paths_or_dir is empty; give a folder, a .dcm file or a list of them.")
    files: list[_File] = []
    passed_over: list[str] = []
    for entry in map(os.fspath, given):
        if not os.path.isdir(entry):
            # A missing or misnamed file is the record's problem: it raises or is counted with the others.
            files.append(_File(os.path.dirname(entry) or ".", os.path.basename(entry), entry, True))
            continue
        for folder, subfolders, names in os.walk(entry):
            subfolders[:] = sorted(subfolders) if recursive else []
            for name in sorted(names):
                if is_dicom_path(name):
                    relative = os.path.relpath(os.path.join(folder, name), entry).replace(os.sep, "/")
                    files.append(_File(entry, relative, os.path.join(folder, name), False))
                elif not name.startswith("."):
                    passed_over.append(os.path.join(folder, name))
    if passed_over:
        # PACS exports often name DICOM files IM0001 or 1.2.840...: say so rather than silently drop them.
        logger.warning(f"from_dicom: passed over {len(passed_over)} file(s) not named *.dcm / *.dicom (e.g. "
                       f"{', '.join(os.path.basename(p) for p in passed_over[:3])}). If they are DICOM, rename them to end in .dcm.")
    return files


# --------------------------------------------------------------------------------------------------- captions
def _template_keywords(template: str, allow_phi_tags: Sequence[str]) -> list[str]:
    """The DICOM keywords a caption template names, refusing unknown, non-text and identifying ones."""
    try:
        from pydicom.datadict import dictionary_VR, keyword_dict
    except ImportError as err:
        raise ImportError('DICOM caption templates need pydicom: pip install "plm-tune[dicom]"') from err

    for tag in allow_phi_tags:
        if tag not in keyword_dict:
            raise ValueError(f"allow_phi_tags names {tag!r}, which is not a DICOM keyword.")
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
    except ValueError as err:
        raise ValueError(f"caption template {template!r} is not a valid template ({err}). Name DICOM keywords "
                         "in braces, e.g. '{Modality} {BodyPartExamined}'; write '{{' for a literal brace.") from err
    if not fields:
        raise ValueError(f"caption template {template!r} names no DICOM tag, so every caption would be the same. "
                         "Name tags in braces, e.g. '{Modality} {BodyPartExamined}: {StudyDescription}'.")
    for field in fields:
        if field not in keyword_dict:
            close = difflib.get_close_matches(field, keyword_dict, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"caption template names {{{field}}}, which is not a DICOM keyword "
                             f"(keywords are CamelCase, like Modality or StudyDescription).{hint}")
        if dictionary_VR(field) in _NON_TEXT_VRS:
            raise ValueError(f"caption template names {{{field}}}, which holds binary data or a sequence "
                             f"(VR {dictionary_VR(field)}), not text.")
        if (field in PHI_TAGS or dictionary_VR(field) in _PHI_VRS) and field not in allow_phi_tags:
            raise ValueError(f"caption template names {{{field}}}, which identifies the patient, study or site "
                             "(PHI: DICOM PS3.15 Annex E, or a name, date or time); such tags never go into training "
                             "text by default. Remove it, or, only if you may train on identifiable data, pass "
                             f"allow_phi_tags=({field!r},).")
    return fields


def _tag_text(header: Any, keyword: str) -> str:
    from pydicom.multival import MultiValue

    element = header.get(keyword)
    if element is None or element == "":
        return ""
    values = list(element) if isinstance(element, MultiValue | list | tuple) else [element]
    # '^' separates the parts of names and coded text (Doe^John, abdomen^liver): show them as spaces.
    return ", ".join(text for text in (str(v).replace("^", " ").strip() for v in values) if text)


def _tidy(text: str) -> str:
    """Clean what empty tags leave behind: doubled spaces, stray separators, empty brackets."""
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\(\s*\)|\[\s*\]", "", text)
    text = re.sub(r"\s+([,.;:])", r"\1", text)
    text = re.sub(r"([,;:])(\s*[,;:])+", r"\1", text)
    return re.sub(r"\s+", " ", text).strip(" ,;:-/|")


def _caption_from_template(template: str, header: Any, record: str, phi: _FreeTextPolicy) -> str:
    keywords = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
    values = phi.clean({k: _tag_text(header, k) for k in keywords}, header, record)
    text = _tidy(template.format_map(values))
    if not text:
        raise BadRecord(record, "no caption", f"the caption template {template!r} renders empty: the file has "
                        f"none of {', '.join(keywords)}.", "name tags this file has, or give a captions_table.")
    return text


def _read_captions_table(path: str | os.PathLike) -> _Captions:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"captions_table '{path}' does not exist.")
    rows: list[tuple[str, dict[str, Any]]] = []
    if path.lower().endswith(".csv"):
        with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
            rows = [(f"{path} row {i}", row) for i, row in enumerate(csv.DictReader(f), start=2)]
    elif path.lower().endswith(".jsonl"):
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            for i, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as err:
                        raise ValueError(f"{path} line {i} is not JSON ({err}).") from err
                    if not isinstance(row, dict):
                        raise ValueError(f"{path} line {i}: expected a JSON object, got {type(row).__name__}.")
                    rows.append((f"{path} line {i}", row))
    else:
        raise ValueError(f"captions_table '{path}' must be a .csv or .jsonl file.")
    columns = set().union(*(row.keys() for _, row in rows)) if rows else set()
    if "caption" not in columns or not columns & set(_TABLE_KEYS):
        raise ValueError(f"captions_table '{path}' needs a 'caption' column and a key column 'file_name' or "
                         f"'SOPInstanceUID'; found columns {sorted(columns)}.")
    by_key: dict[str, dict[str, str]] = {key: {} for key in _TABLE_KEYS}
    first_seen: dict[tuple[str, str], str] = {}
    for where, row in rows:
        text = row.get("caption")
        if text is not None and not isinstance(text, str):
            raise ValueError(f"{where}: 'caption' must be text, got {text!r}.")
        problem = next(filter(None, (bad_text(v) for v in row.values() if isinstance(v, str))), None)
        if problem is not None:
            raise ValueError(f"{where}: the row holds {problem}. Re-encode '{path}' as UTF-8.")
        for key in _TABLE_KEYS:
            value = str(row.get(key) or "").strip()
            if key == "file_name":
                value = value.replace("\\", "/").removeprefix("./")
            if not value:
                continue
            if (key, value) in first_seen:
                raise ValueError(f"{where}: {key} {value!r} is also in {first_seen[key, value]}; keep one caption "
                                 "per file.")
            first_seen[key, value] = where
            by_key[key][value] = text or ""
    return _Captions(path, by_key["file_name"], by_key["SOPInstanceUID"])


def _caption_from_table(captions: _Captions, file: _File, header: Any, same_name: Counter) -> str:
    base = os.path.basename(file.relative)
    text = captions.by_file.get(file.relative)
    if text is None and base in captions.by_file:
        if same_name[base] > 1:
            raise BadRecord(file.name, "ambiguous caption", f"'{captions.source}' names '{base}', and "
                            f"{same_name[base]} files have that name.",
                            f"key the row by the path under the folder ('{file.relative}') or by SOPInstanceUID.")
        text = captions.by_file[base]
    if text is None:
        text = captions.by_uid.get(str(header.get("SOPInstanceUID") or ""))
    if text is None:
        raise BadRecord(file.name, "no caption", f"no row of '{captions.source}' has file_name '{file.relative}' "
                        f"(or '{base}') or this file's SOPInstanceUID.", "add a row for it.")
    if not text.strip():
        raise BadRecord(file.name, "no caption", f"its row in '{captions.source}' has an empty caption.",
                        "write the caption, or remove the row and the file.")
    return text.strip()
