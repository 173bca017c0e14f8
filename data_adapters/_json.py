"""JSON as the adapters read it: one record's text -> Python values, refusing what ``json.loads`` lets through.

Python's ``json`` (``Lib/json/decoder.py``, ``Modules/_json.c``) keeps the last of two equal keys in an object
(a record with two ``"caption"`` keys silently trains on the second), reads ``1e400`` as ``inf`` and accepts
``NaN`` / ``Infinity`` (not JSON at all), raises ``RecursionError`` rather than a ``JSONDecodeError`` on arrays
nested about a thousand deep, and a bare ``ValueError`` on an integer of more than 4300 digits
(``sys.get_int_max_str_digits``). ``loads`` refuses each with a ``JSONRecordError`` that carries a reason code,
and keeps every float's literal text (``JSONFloat.text``), so a number read as a caption becomes its text as
written (``3.10``, not ``3.1``; see ``data_adapters._fields.text_cell``).

    >>> loads('{"caption": "a", "caption": "b"}')  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    data_adapters._json.JSONRecordError: duplicate key: the key 'caption' appears twice in one object ...
    >>> loads('{"answer": 3.10}')["answer"].text
    '3.10'
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["JSONFloat", "JSONRecordError", "loads", "record_boundaries"]

BAD_JSON, DUPLICATE_KEY, NON_FINITE, TOO_DEEP = "bad json", "duplicate key", "non-finite number", "too deeply nested"

FIXES = {
    BAD_JSON: "fix or delete the record.",
    DUPLICATE_KEY: "keep one of the two keys (json readers disagree on which one wins).",
    NON_FINITE: "write the number as text in quotes, exactly as it should read, or fix it.",
    TOO_DEEP: "fix or delete the record (no sample nests more than a few levels).",
}


class JSONRecordError(ValueError):
    """A JSON text ``loads`` refuses; ``reason`` is one of ``FIXES``' keys, ``detail`` says what was found."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}")


class JSONFloat(float):
    """A JSON number with a fraction or exponent, remembering the ``text`` it was written as."""

    text: str

    def __new__(cls, text: str) -> JSONFloat:
        value = super().__new__(cls, text)
        value.text = text
        return value

    def __reduce__(self) -> tuple[type, tuple[str]]:  # records are parsed in worker processes too
        return JSONFloat, (self.text,)


def _float(text: str) -> JSONFloat:
    value = JSONFloat(text)
    if not math.isfinite(value):
        raise JSONRecordError(NON_FINITE, f"the number {text} is beyond a float's range (Python would read it "
                              f"as {float(value)}).")
    return value


def _constant(name: str) -> None:
    raise JSONRecordError(NON_FINITE, f"{name} is not JSON (Python's reader accepts it as a float).")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise JSONRecordError(DUPLICATE_KEY, f"the key {key!r} appears twice in one object "
                                  f"({_short(obj[key])} and {_short(value)}); Python keeps only the last.")
        obj[key] = value
    return obj


_STRICT = json.JSONDecoder(object_pairs_hook=_object, parse_float=_float, parse_constant=_constant)
# Finds where each value ends and builds nothing: numbers, objects and constants become None.
_SCANNER = json.JSONDecoder(object_pairs_hook=lambda pairs: None, parse_float=lambda text: None,
                            parse_int=lambda text: None, parse_constant=lambda name: None)


def loads(text: str) -> Any:
    """``text`` (one JSON value; a leading BOM is the reader's to strip) as Python values, strictly.

    Raises:
        JSONRecordError: invalid JSON, a duplicate key, a non-finite number, nesting too deep for Python's
            reader, or an integer too long to convert.
    """
    try:
        return _STRICT.decode(text)
    except JSONRecordError:
        raise
    except json.JSONDecodeError as err:
        raise JSONRecordError(BAD_JSON, f"the text is not valid JSON ({err}).") from None
    except RecursionError:
        raise JSONRecordError(TOO_DEEP, "arrays / objects are nested deeper than Python's JSON reader can "
                              "follow (about 1000 levels).") from None
    except ValueError as err:  # int(): "Exceeds the limit (4300 digits) for integer string conversion"
        raise JSONRecordError(BAD_JSON, f"a number cannot be read: {err}.") from None


def record_boundaries(text: str) -> list[tuple[int, int]]:
    """The ``(start, end)`` of each item of the JSON list ``text``, so each item is parsed (and refused) alone.

    Raises:
        JSONRecordError: ``text`` is not a JSON list, or an item is not valid JSON or nested too deep to find
            its end; the detail names the item (0-based) and its line.
    """
    ws = json.decoder.WHITESPACE
    pos = ws.match(text, 0).end()
    if not text.startswith("[", pos):
        raise JSONRecordError(BAD_JSON, "the file is not a JSON list ([...]).")
    spans: list[tuple[int, int]] = []
    pos = ws.match(text, pos + 1).end()
    if text.startswith("]", pos):
        return _end_of_list(text, pos, spans)
    while True:
        line = _Line(text, pos)  # counted only for a message: counting for every item would be quadratic
        try:
            _, end = _SCANNER.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            raise JSONRecordError(BAD_JSON, f"item {len(spans)} (line {line}) is not valid JSON ({err}).") from None
        except RecursionError:
            raise JSONRecordError(TOO_DEEP, f"item {len(spans)} (line {line}) is nested deeper than Python's JSON "
                                  "reader can follow (about 1000 levels), so the items after it cannot be "
                                  "found.") from None
        spans.append((pos, end))
        pos = ws.match(text, end).end()
        if text.startswith("]", pos):
            return _end_of_list(text, pos, spans)
        if not text.startswith(",", pos):
            raise JSONRecordError(BAD_JSON, f"expected ',' or ']' after item {len(spans) - 1} (line "
                                  f"{text.count(chr(10), 0, pos) + 1}).")
        pos = ws.match(text, pos + 1).end()


class _Line:
    """The 1-based line of ``text[pos]``, counted when it is printed."""

    def __init__(self, text: str, pos: int) -> None:
        self.text, self.pos = text, pos

    def __str__(self) -> str:
        return str(self.text.count("\n", 0, self.pos) + 1)


def _end_of_list(text: str, pos: int, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    if text[pos + 1:].strip():
        raise JSONRecordError(BAD_JSON, f"text after the list's closing ] (line {text.count(chr(10), 0, pos) + 1}).")
    return spans


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
