"""Identifying text inside DICOM free-text tags (``StudyDescription``, ``ProtocolName``, ``ImageComments``...).

Sites type what they like into free-text tags: a patient's name, record number or birth date written there
would reach the training text through a caption template. ``find_phi`` looks in such a tag's value for

1. the file's own identifying values: every attribute of DICOM PS3.15 Annex E (Basic Application Level
   Confidentiality Profile) present in the header that names or identifies the patient, study or site
   (``PHI_TAGS`` of ``data_adapters.dicom``, and every person name and date): name parts, IDs, accession
   number, birth and study dates in the usual written forms, addresses, institution;
2. shapes of dates (``2021-03-04``, ``04/03/2021``, ``4 Mar 2021``, ``20210304``) and identifiers (runs of 6+
   digits, letters then 5+ digits such as ``MRN1234567``), whoever they belong to.

What it cannot find: identifying text in none of those forms (a relative's name, a free-text address that is
not in the header, a nickname), or values in the header of another file. ``redact_phi`` removes what
``find_phi`` finds.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Any

__all__ = ["find_phi", "identifying_values", "redact_phi"]

# Annex E patient characteristics: short common words ("M", "White") that would blank ordinary text.
_CHARACTERISTICS = frozenset({"PatientAge", "PatientSex", "PatientSize", "PatientWeight", "EthnicGroup"})
_MONTHS = r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?"
_SHAPES = (
    ("a date", re.compile(r"\b\d{4}[-/.]\d{1,2}[-/.]\d{1,2}\b")),
    ("a date", re.compile(r"\b\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}\b")),
    ("a date", re.compile(rf"\b\d{{1,2}}(?:st|nd|rd|th)?\s+{_MONTHS}\s+\d{{2,4}}\b", re.IGNORECASE)),
    ("a date", re.compile(rf"\b{_MONTHS}\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}}\b", re.IGNORECASE)),
    ("an identifier", re.compile(r"\b\d{6,}\b")),
    ("an identifier", re.compile(r"\b[A-Za-z]{1,5}[-_#:]?\d{5,}\b")),
)


def _date_forms(value: str) -> list[str]:
    """A DICOM DA value (YYYYMMDD) as people write it."""
    if not re.fullmatch(r"\d{8}", value):
        return [value]
    y, m, d = value[:4], value[4:6], value[6:]
    forms = [value]
    for sep in "-/.":
        forms += [f"{y}{sep}{m}{sep}{d}", f"{d}{sep}{m}{sep}{y}", f"{m}{sep}{d}{sep}{y}"]
    return forms


def identifying_values(header: Any, allowed: Collection[str], phi_tags: Collection[str]) -> dict[str, list[str]]:
    """``{keyword: [text to look for]}`` from the identifying attributes present in ``header``.

    Args:
        header: a pydicom ``Dataset`` (top level; sequences are not entered).
        allowed: keywords the user allowed in text (``allow_phi_tags``): their values are not looked for.
        phi_tags: the identifying keywords besides person names and dates.
    """
    from pydicom.multival import MultiValue

    found: dict[str, list[str]] = {}
    for element in header:
        keyword, vr = element.keyword, element.VR
        if not keyword or keyword in allowed or keyword in _CHARACTERISTICS or vr == "SQ":
            continue
        if keyword not in phi_tags and vr not in ("PN", "DA", "DT"):
            continue
        values = list(element.value) if isinstance(element.value, MultiValue | list | tuple) else [element.value]
        texts: list[str] = []
        for value in values:
            text = str(value or "").strip()
            if vr == "PN":  # family^given^middle^prefix^suffix: the first three name the person
                texts += [part for part in re.split(r"[\s^=]+", "^".join(text.split("^")[:3])) if len(part) >= 2]
            elif vr in ("DA", "DT"):
                texts += _date_forms(text[:8])
            elif len(text) >= 3:  # a 1-2 character ID ("1") would blank every such digit
                texts.append(text)
        if texts:
            found[keyword] = texts
    return found


def find_phi(text: str, own: dict[str, list[str]]) -> list[tuple[int, int, str]]:
    """``(start, end, what)`` spans of identifying text in ``text``; ``what`` names the kind, never the value."""
    spans = []
    for keyword, values in own.items():
        for value in values:
            pattern = rf"(?<![A-Za-z0-9]){re.escape(value)}(?![A-Za-z0-9])"
            spans += [(m.start(), m.end(), f"the file's {keyword}") for m in re.finditer(pattern, text, re.I)]
    for what, pattern in _SHAPES:
        spans += [(m.start(), m.end(), what) for m in pattern.finditer(text)]
    return sorted(spans)


def redact_phi(text: str, spans: list[tuple[int, int, str]]) -> str:
    """``text`` with every span removed (overlapping spans merged)."""
    kept, position = [], 0
    for start, end, _ in spans:
        if start > position:
            kept.append(text[position:start])
        position = max(position, end)
    kept.append(text[position:])
    return " ".join("".join(kept).split())
