"""Rows of manifest tables and the question-answer samples built from them, for the manifest adapters.

Reading ``.csv`` / ``.jsonl`` tables (``read_table``, ``table_columns``, ``parse_row``), turning a ``prompt``
argument into each row's question (``prompt_builder``), reading a text cell (``text_cell``), one
media-question-answer exchange (``question_answer``) and ``make_sample`` with plm-tune's structural check
(``checked_sample``).
"""

from __future__ import annotations

import csv
import os
import string
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

from data_adapters._json import FIXES, JSONRecordError, loads
from data_adapters._records import BadRecord, make_sample, media_part, text_part
from plm_tune.data.sample import bad_text, is_blank, normalize_messages
from plm_tune.errors import Reason, reason_of

__all__ = [
    "checked_sample", "number_text", "parse_row", "prompt_builder", "question_answer", "read_table",
    "table_columns", "text_cell",
]


def read_table(path: str | os.PathLike) -> Iterator[tuple[str, dict[str, Any] | str]]:
    """Yield ``(where, row)`` for each row of a ``.csv`` or ``.jsonl`` file; ``where`` is ``"name line N"``.

    CSV rows come as dicts of strings. JSONL rows come as their raw text, so that one malformed line becomes
    a ``BadRecord`` of that line (see ``parse_row``) instead of stopping the whole read. Blank lines are
    skipped. Bytes that are not UTF-8 are read as surrogate escapes, so that ``parse_row`` names their line. A
    leading byte order mark (Excel writes one in "CSV UTF-8") is dropped: it would glue itself to the first
    column's name or make the first JSON line invalid.
    """
    path = Path(path)
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
            reader = csv.DictReader(f)
            for row in reader:
                yield f"{path.name} line {reader.line_num}", row
    elif path.suffix == ".jsonl":
        with open(path, encoding="utf-8-sig", errors="surrogateescape") as f:
            for line_no, line in enumerate(f, start=1):
                if line.strip():
                    yield f"{path.name} line {line_no}", line
    else:
        raise ValueError(f"'{path}': expected a .csv or .jsonl table, got '{path.suffix}'.")


def table_columns(path: str | os.PathLike) -> list[str]:
    """The columns of a table: the CSV header, or the keys of a JSONL file's first well-formed row."""
    for where, row in read_table(path):
        try:
            return list(parse_row(row, where))
        except BadRecord:
            continue  # reported as a bad record when the rows are read
    raise ValueError(f"'{path}' has no rows.")


def parse_row(row: dict[str, Any] | str, record: str) -> dict[str, Any]:
    """A row from ``read_table`` as a dict.

    Raises:
        BadRecord: a JSONL line that is not a JSON object, or that ``data_adapters._json.loads`` refuses (a
            duplicate key, a non-finite number, nesting too deep); a CSV row with more fields than the header
            (an unquoted comma would otherwise silently cut the text); a row whose text is not UTF-8.
    """
    if isinstance(row, dict):
        if None in row:  # csv.DictReader's key for the fields past the header's
            extra = row[None]
            raise BadRecord(record, "extra csv fields", f"the row has {len(row) - 1 + len(extra)} fields but "
                            f"the header has {len(row) - 1}; the extra ones are {extra!r}.",
                            'quote text that holds commas ("a, b"), or fix the header.')
        for value in row.values():
            _check_text(value, record)
        return row
    _check_text(row, record)
    try:
        parsed = loads(row)
    except JSONRecordError as err:
        raise BadRecord(record, err.reason, err.detail, FIXES[err.reason]) from None
    if not isinstance(parsed, dict):
        raise BadRecord(record, "bad json", f"expected a JSON object, got {type(parsed).__name__}.",
                        "write each record as one {...} object.")
    return parsed


def _check_text(value: Any, record: str) -> None:
    problem = bad_text(value) if isinstance(value, str) else None
    if problem is not None:
        raise BadRecord(record, Reason.NOT_UTF8_TEXT, f"the row holds {problem}.",
                        "re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8).")


def prompt_builder(prompt: str, columns: Collection[str]) -> Callable[[dict[str, Any], str], str]:
    """How ``prompt`` becomes each row's question. The rule, checked in this order:

    1. ``prompt`` is exactly a column name: that column's value, row by row (``prompt="question"``).
    2. ``prompt`` contains ``{column}`` fields: ``str.format`` over the row
       (``"Describe the {modality} image."``); write ``{{`` / ``}}`` for literal braces.
    3. anything else: the same text for every row.

    Raises:
        ValueError: a ``{field}`` names no column (checked once, here, not per row).
    """
    if prompt in columns:
        def from_column(row: dict[str, Any], record: str) -> str:
            return text_cell(row, prompt, record, "no prompt text")

        return from_column
    fields = {name for _, name, _, _ in string.Formatter().parse(prompt) if name is not None}
    if not fields:
        return lambda row, record: prompt
    roots = {name.split(".")[0].split("[")[0] for name in fields}
    missing = sorted(roots - set(columns))
    if "" in roots or missing:
        raise ValueError(f"prompt={prompt!r} refers to {missing or ['{}']}, which are not columns of this "
                         f"data (columns: {sorted(columns)}). Name a column inside the braces, or write "
                         "{{ and }} for literal braces.")

    def templated(row: dict[str, Any], record: str) -> str:
        for name in roots:
            text_cell(row, name, record, "no prompt text")  # an empty cell is a bad record, not "None"
        return prompt.format_map({name: row[name] for name in roots})

    return templated


def text_cell(row: dict[str, Any], column: str, record: str, reason: str) -> str:
    """The text of ``row[column]``; a number becomes its text as written (see ``number_text``).

    Raises:
        BadRecord: (``reason``) the cell is missing, empty, NaN, only invisible characters (``is_blank``),
            or not text; a float whose written form is unknown.
    """
    value = row.get(column)
    value = number_text(value, column, record)
    if not isinstance(value, str) or is_blank(value):
        shown = " (only invisible characters)" if isinstance(value, str) and value.strip() else ""
        raise BadRecord(record, reason, f"column '{column}' is {value!r}{shown}.",
                        f"fill '{column}' for this record, or remove the record.")
    return value


def number_text(value: Any, field: str, record: str) -> Any:
    """A number read where text belongs, as the text it was written as; anything else as it is.

    An integer is exact; a JSON float keeps its literal (``JSONFloat.text``: ``3.10`` stays ``3.10``, and
    ``1e400`` never gets here, ``loads`` refuses it). NaN (a table's missing cell) becomes None. Any other
    float (a ``datasets`` float column) is refused: its text as written is gone (a float32 ``0.1`` reads back
    as ``0.10000000149011612``).

    Raises:
        BadRecord: ("number, not text") a float with no literal text, or an infinite one.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value
    if isinstance(value, int):
        return str(value)
    if value != value:
        return None
    text = getattr(value, "text", None)
    if text is None:
        raise BadRecord(record, "number, not text", f"'{field}' holds the number {value!r}, not text: how it "
                        "was written is lost (a float prints as its nearest binary value).",
                        f"store '{field}' as text (e.g. dataset.cast_column('{field}', datasets.Value('string'))).")
    return text


def checked_sample(record: str, messages: list[dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
    """``make_sample`` plus plm-tune's structural check: a malformed conversation is a ``BadRecord`` now."""
    sample = make_sample(messages, **kwargs)
    try:
        normalize_messages(sample)
    except ValueError as err:  # its reason (no answer, empty content, ...) is the record's
        raise BadRecord(record, reason_of(err) or Reason.INVALID_CONVERSATION, str(err)) from err
    return sample


def question_answer(question: str, answer: str, *, media: str,
                    system_prompt: str | None) -> list[dict[str, Any]]:
    """One exchange: the media, then the question, answered."""
    user = [media_part(media)] + ([] if is_blank(question) else [text_part(question)])
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return messages + [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
