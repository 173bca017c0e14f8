"""Names, IDs and dates in file and folder names, kept out of the files plm-tune writes.

A PACS export names its folders and files after the patient (``DOE_JOHN_PX0048213/Doe_John_19610312_01.dcm``),
and a sample's id is often that path. eval.json, report.html, the TensorBoard / W&B gallery,
plm_tune_training.json and the model card record ids, dataset folders and media errors through
``hide_identifying``: each word or path part that looks identifying becomes ``ref-`` and a short salted hash
(its file extension kept); the rest stays readable::

    DOE_JOHN_PX0048213/Doe_John_19610312_01.dcm  ->  ref-1f0c2a9b3e/ref-77d01b5c2a.dcm
    chest/RG1_UNCI.dcm, case-20, shape-7          ->  unchanged

A part looks identifying when it holds a run of 3 or more digits (IDs, dates, accession numbers) or two
capitalised words joined by ``_ - . ^`` (``Doe_John``, ``DOE^JOHN``: DICOM's person-name form). The rule errs
towards hiding: a hidden harmless name costs a lookup in ``eval_data/``, a shown name cannot be taken back. It
cannot recognise a name written as one word, in lower case or split by a space (``johndoe/scan.dcm``): de-
identify such a layout before training, or keep the id out of the samples. The salt is drawn once per process,
so references agree across one run's files but cannot be looked up in a table of hashed names and IDs; compare
runs by the sample ``index`` (the order of ``eval_data/``). ``record_media_paths: true`` (``EvalArguments``)
records ids and folders as they are.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets

__all__ = ["hide_dataset_names", "hide_identifying", "looks_identifying"]

_SALT = secrets.token_bytes(16)  # one per process: see the module docstring
_PART = re.compile(r"[^\s/\\'\"()\[\]{}<>:;,=|]+")  # a word or path part: what is hidden or kept as a whole
_DIGITS = re.compile(r"\d{3,}")  # an MRN, a date (19610312, 2023-01-05), an accession number
_NAME_PAIR = re.compile(r"(?<![A-Za-z])[A-Z][A-Za-z]+[_\-.^]+[A-Z][A-Za-z]+")  # Doe_John, DOE^JOHN, John.Doe
_EXTENSION = re.compile(r"\.[A-Za-z][A-Za-z0-9]{0,4}$")  # .dcm, .png, .mp4: kept, it says what the file is
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")  # "me/shapes", "pydicom-testdata"


def looks_identifying(part: str) -> bool:
    """Whether one word or path part holds a digit run of 3+ or two capitalised words (see the module docstring).

    >>> [looks_identifying(p) for p in ("Doe_John_19610312_01.dcm", "PX0048213", "DOE^JOHN", "chest", "case-20")]
    [True, True, True, False, False]
    """
    return bool(_DIGITS.search(part) or _NAME_PAIR.search(part))


def hide_identifying(text: str) -> str:
    """``text`` with each identifying word or path part replaced by ``ref-`` and a salted hash (extension kept).

    >>> hide_identifying("chest/RG1_UNCI.dcm")
    'chest/RG1_UNCI.dcm'
    >>> hide_identifying("DOE_JOHN_PX0048213/scan.dcm").startswith("ref-")
    True
    """
    return _PART.sub(lambda m: _reference(m.group(0)) if looks_identifying(m.group(0)) else m.group(0), text)


def hide_dataset_names(names: list[str]) -> list[str]:
    """Dataset descriptions as recorded by default: a Hub id (``me/shapes``) kept whole, so the card's metadata
    can link it; a local folder, or a description naming one, through ``hide_identifying``."""
    return [name if _HUB_ID.fullmatch(name) and not os.path.exists(name) else hide_identifying(name)
            for name in names]


def _reference(part: str) -> str:
    extension = _EXTENSION.search(part)
    suffix = extension.group(0) if extension and extension.start() > 0 else ""
    digest = hmac.new(_SALT, part.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()[:10]
    return f"ref-{digest}{suffix}"
