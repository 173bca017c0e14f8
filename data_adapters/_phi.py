"""Identifying text inside DICOM free-text tags (``StudyDescription``, ``ProtocolName``, ``ImageComments``...).

Sites type what they like into free-text tags: a patient's name, record number or birth date written there
would reach the training text through a caption template. ``find_phi`` looks in such a tag's value for

1. the file's own identifying values, gathered from every element of the header, inside sequences at any depth
   (``OtherPatientIDsSequence``, ``RequestAttributesSequence``...) and in private tags: each attribute of DICOM
   PS3.15 Annex E (``data_adapters._annex_e``) that holds an identifier rather than a description, every person
   name and every date. Names are searched part by part in every ``=`` group (alphabetic, ideographic,
   phonetic), with one-character parts only in scripts written without spaces (``王``), accents folded
   (``Müller`` finds ``Muller``, ``Mueller``; ``Mueller`` finds ``Müller``); IDs with any separator between their
   letters and digits (``ACC7781`` finds ``ACC 7781``) and by their digits alone (4+); dates in the usual
   spellings (``1961-03-12``, ``12.03.1961``, ``03/12/61``, ``12-MAR-1961``, ``March 12, 1961``, ``1961年3月12日``);
2. shapes, whoever they belong to: dates (``2021-03-04``, ``04/03/2021``, ``4 Mar 2021``), identifiers (runs of
   6+ digits, letters then 5+ digits such as ``MRN1234567``), US social security numbers (``123-45-6789``) and
   telephone numbers (``(555) 012-3456``, ``+44 20 7946 0958``, ``555-0123``, ``tel 0123 45678``).

What it cannot find: identifying text in none of those forms (a relative's name, a nickname, a free-text address
the header does not hold, a transliteration between scripts such as ``Yamada`` for ``山田`` when the header holds
only one of them), or values in the header of another file. A private tag's value is searched only when it is not
also the value of a public, non-identifying element (vendors copy ``SeriesDescription`` into private tags).
``redact_phi`` removes what ``find_phi`` finds.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection, Iterator
from functools import lru_cache
from typing import Any

from data_adapters._annex_e import in_annex_e

__all__ = ["find_phi", "identifying_values", "redact_phi"]

# Annex E attributes not searched for: patient characteristics (short common words: "M", "White") and those
# holding descriptions or clinical words rather than identifiers ("CT HEAD" requested is "CT HEAD" studied).
_NOT_SEARCHED = frozenset({
    "PatientAge", "PatientSex", "PatientSize", "PatientWeight", "EthnicGroup", "PatientSexNeutered",
    "SmokingStatus", "PregnancyStatus", "ProtocolName", "ContrastBolusAgent", "RequestedContrastAgent",
    "PreMedication", "MedicalAlerts", "Allergies", "SpecialNeeds", "PatientState", "TreatmentSite",
    "TreatmentSites", "ROIName", "StructureSetName", "RTPlanName", "PositionAcquisitionTemplateName",
    "TimezoneOffsetFromUTC",
})
_DESCRIPTIVE = re.compile(r"Description|Comment|Label|Notes|Reason|History|Diagnos|Text|Impressions|Narrative"
                          r"|Keywords|Title|Subject")
_TEXT_VRS = frozenset({"AE", "LO", "LT", "PN", "SH", "ST", "UC", "UI", "UR", "UT", "DA", "DT", "UN"})
# Letters NFKD does not take apart: written the way an ASCII keyboard would.
_FOLD = {"ß": "ss", "æ": "ae", "œ": "oe", "ø": "o", "ł": "l", "đ": "d", "þ": "th", "ð": "d", "ı": "i", "−": "-"}
_GERMAN = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "Ä": "Ae", "Ö": "Oe", "Ü": "Ue", "ø": "oe", "Ø": "Oe",
                         "å": "aa", "Å": "Aa"})
_MONTHS = (r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sept?(?:ember)?"
           r"|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\b\.?")
_MONTH_ABBR = ("jan", "feb", "mar", "apr", "ma[yi]", "jun", "jul", "aug", "sep", "o[ck]t", "nov", "de[cz]")
_SEP = r"[\s.,/-]*"
# Searched in folded (lower-case, accent-free) text.
_SHAPES = (
    ("a date", re.compile(r"\b\d{4}[-/.]\d{1,2}[-/.]\d{1,2}\b")),
    ("a date", re.compile(r"\b\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}\b")),
    ("a date", re.compile(rf"\b\d{{1,2}}(?:st|nd|rd|th)?{_SEP}{_MONTHS}{_SEP}\d{{2,4}}\b")),
    ("a date", re.compile(rf"\b{_MONTHS}\s*\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}}\b")),
    ("a date", re.compile(r"\d{4}\s*[年년]\s*\d{1,2}\s*[月월](?:\s*\d{1,2}\s*[日일])?")),
    ("a social security number", re.compile(r"(?<![\d.])\d{3}[- ]\d{2}[- ]\d{4}(?![\d.])")),
    ("a telephone number", re.compile(r"(?<![\d.])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{3}\)|\d{3})[\s.-]?\d{3}[\s.-]\d{4}"
                                      r"(?![\d.])")),
    ("a telephone number", re.compile(r"\+\d{1,3}[\s.-]?\(?\d{1,4}\)?(?:[\s.-]?\d{2,4}){2,4}(?!\d)")),
    ("a telephone number", re.compile(r"(?<![\d.])\d{3}-\d{4}(?![\d.])")),
    ("a telephone number", re.compile(r"\b(?:tel|phone|ph|mobile|cell|fax)\b\.?\s*(?:no\.?|number|#)?\s*:?\s*"
                                      r"\+?[\d(][\d\s().-]{5,}\d")),
    ("an identifier", re.compile(r"\b\d{6,}\b")),
    ("an identifier", re.compile(r"\b[a-z]{1,5}[-_#:]?\d{5,}\b")),
)


@lru_cache(maxsize=4096)
def _fold_char(char: str) -> str:
    if unicodedata.category(char) == "Pd":  # en / em dashes, hyphens: "1961–03–12"
        return "-"
    char = _FOLD.get(char.lower(), char)
    return "".join(c for c in unicodedata.normalize("NFKD", char) if not unicodedata.combining(c)).casefold()


def _fold(text: str) -> tuple[str, list[int]]:
    """``text`` lower-cased without accents (``Müller`` -> ``muller``, ``１２`` -> ``12``), and for each character
    of the result the index of the character of ``text`` it came from."""
    folded, origin = [], []
    for i, char in enumerate(text):
        part = _fold_char(char)
        folded.append(part)
        origin += [i] * len(part)
    return "".join(folded), origin


def _unspaced(char: str) -> bool:
    """A character of a script written without spaces between words, where one character can be a name."""
    return unicodedata.name(char, "").startswith(("CJK", "HIRAGANA", "KATAKANA", "HANGUL"))


def _bounded(core: str, first: str, last: str) -> str:
    """``core`` as a whole word, except on a side that ends in a script written without spaces."""
    return ("" if _unspaced(first) else r"(?<!\w)") + core + ("" if _unspaced(last) else r"(?!\w)")


def _spellings(value: str) -> set[str]:
    """``value`` folded, with umlauts written out (``Müller`` -> ``mueller``) and written back (``Mueller`` ->
    ``muller``)."""
    plain, written_out = _fold(value)[0], _fold(value.translate(_GERMAN))[0]
    written_back = re.sub(r"([aou])e", r"\1", plain)
    return {plain, written_out} | ({written_back} if len(written_back) >= 4 else set())


def _name_patterns(value: str) -> list[str]:
    """A person name (``family^given^middle^prefix^suffix``, groups ``alphabetic=ideographic=phonetic``): its family,
    given and middle name parts in every group; one-letter parts only in scripts written without spaces."""
    patterns = []
    for group in value.split("="):
        for part in " ".join(group.split("^")[:3]).replace(",", " ").split():
            part = part.strip(".'-")
            if len(part) >= 2 or (part and _unspaced(part)):
                patterns += [_bounded(re.escape(s), s[0], s[-1]) for s in _spellings(part) if s]
    return patterns


def _date_pattern(value: str) -> str | None:
    """A DICOM DA value (or DT's date) as people write it."""
    if not re.fullmatch(r"\d{8}", value[:8]) or not 1 <= int(value[4:6]) <= 12:
        return None
    y, m, d = value[:4], int(value[4:6]), int(value[6:8])
    mm, dd, yy, sep = f"0?{m}", f"0?{d}", f"(?:{y}|{y[2:]})", r"[-/. ]"
    month, ordinal = rf"{_MONTH_ABBR[m - 1]}[a-z]*\.?", r"(?:st|nd|rd|th)?"
    forms = (rf"{y}{sep}{mm}{sep}{dd}", rf"{y}{m:02d}{d:02d}", rf"{d:02d}{m:02d}{y}",
             rf"{dd}{sep}{mm}{sep}{yy}", rf"{mm}{sep}{dd}{sep}{yy}",
             rf"{dd}{ordinal}{_SEP}(?:of\s+)?{month}{_SEP}{yy}", rf"{month}{_SEP}{dd}{ordinal}{_SEP}{yy}",
             rf"{y}\s*[年년]\s*{mm}\s*[月월]\s*{dd}\s*[日일]?")
    return rf"(?<!\d)(?:{'|'.join(forms)})(?!\d)"


def _value_patterns(value: str) -> list[str]:
    """An identifier, address or institution: its letter and digit runs with any separator between them
    (``ACC7781`` finds ``ACC 7781``, ``acc-7781``), and an ID's digits alone when there are 4 or more."""
    patterns = []
    for spelling in _spellings(value):
        runs = re.findall(r"[^\W\d_]+|\d+", spelling)
        if sum(map(len, runs)) >= 3 or (runs and _unspaced(runs[0][0])):
            patterns.append(_bounded(r"[\W_]{0,3}".join(map(re.escape, runs)), runs[0][0], runs[-1][-1]))
    digits = max(re.findall(r"\d+", value), key=len, default="")
    if len(digits) >= 4 and len(value) <= 24 and re.search(r"[^\W\d_]", value):  # an ID, not a UID or number
        patterns.append(rf"(?<!\d){digits}(?!\d)")
    return patterns


def _elements(dataset: Any) -> Iterator[Any]:
    """Every element of ``dataset`` (and its file meta), entering sequence items at any depth."""
    for element in [*(getattr(dataset, "file_meta", None) or ()), *dataset]:
        if element.VR == "SQ":
            for item in element.value or ():
                yield from _elements(item)
        else:
            yield element


def _texts(element: Any) -> list[str]:
    """The non-empty text values of an element (a value read without its VR, ``UN``, decoded if printable)."""
    from pydicom.multival import MultiValue
    from pydicom.valuerep import PersonName

    value = element.value
    if isinstance(value, bytes):
        value = value.decode("latin-1").strip("\x00 ").split("\\")
        value = [v for v in value if v.isprintable()]
    values = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    texts = [str(v).strip() for v in values if isinstance(v, str | PersonName)]
    return [t for t in texts if re.search(r"\w", t)]  # "" and "----" (MR_small's names) identify nobody


def _kind(element: Any, allowed: Collection[str]) -> str | None:
    """What an identifying element is called in messages, or None when its values are not searched for."""
    tag, keyword = element.tag, element.keyword
    if element.VR not in _TEXT_VRS or keyword in allowed or keyword in _NOT_SEARCHED:
        return None
    if tag.is_private:
        return None if tag.element < 0x100 else "private tag"  # (gggg,00xx) name the vendor, not the patient
    if element.VR in ("PN", "DA", "DT"):
        return keyword or "person name or date"
    if in_annex_e(tag) and not _DESCRIPTIVE.search(keyword):
        return keyword or f"({tag.group:04X},{tag.element:04X})"
    return None


def _name_or_id(text: str) -> bool:
    """Whether a private tag's value can name someone: two words or more (``Zhang Wei``, ``SMITH^JOHN``), or an ID
    with 4+ digits. A single word (``HEAD``, ``ORIGINAL``) or a short number is too common to search for."""
    return len(re.findall(r"[^\W\d_]{2,}", text)) >= 2 or len(re.sub(r"\D", "", text)) >= 4


def identifying_values(header: Any, allowed: Collection[str]) -> list[tuple[str, re.Pattern[str]]]:
    """``(kind, pattern)`` for each identifying value in ``header``, to search folded text with (``find_phi``).

    Args:
        header: a pydicom ``Dataset``; sequences are entered, private tags included.
        allowed: keywords the user allowed in text (``allow_phi_tags``): their values are not looked for.
    """
    kinds = [(element, _kind(element, allowed)) for element in _elements(header)]
    # A private copy of a public description ("AXIAL 5mm") is not identifying: searching it would blank the caption.
    public = {_fold(text)[0] for element, kind in kinds if kind is None and not element.tag.is_private
              for text in _texts(element)}
    found: dict[str, set[str]] = {}
    for element, kind in kinds:
        for text in _texts(element) if kind else ():
            if element.VR == "PN":
                patterns = _name_patterns(text)
            elif element.VR in ("DA", "DT"):
                patterns = [p for p in [_date_pattern(text)] if p]
            elif kind == "private tag" and (_fold(text)[0] in public or not _name_or_id(text)):
                patterns = []
            else:
                patterns = _value_patterns(text)
            found.setdefault(kind, set()).update(patterns)
    return [(kind, re.compile(p)) for kind, patterns in found.items() for p in sorted(patterns)]


def find_phi(text: str, own: list[tuple[str, re.Pattern[str]]]) -> list[tuple[int, int, str]]:
    """``(start, end, what)`` spans of identifying text in ``text``; ``what`` names the kind, never the value."""
    folded, origin = _fold(text)
    spans = []
    for what, pattern in [*((f"the file's {kind}", p) for kind, p in own), *_SHAPES]:
        spans += [(origin[m.start()], origin[m.end() - 1] + 1, what) for m in pattern.finditer(folded) if m.end() > m.start()]
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
