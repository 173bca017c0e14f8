"""LLaVA-style conversation records, shared by the ``llava`` and ``plm_jsonl`` adapters.

Reading a JSON list or JSON lines file of records (``read_json_records``), ``{"from", "value"}`` turns ->
canonical messages with media parts where the placeholders were (``conversation_messages``), and a record's
``image`` / ``video`` / ``id`` keys: counting (``media_count``), resolving and checking the media
(``resolve_images``, ``resolve_video``) and naming the record in errors (``record_name``).
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from data_adapters._probe import check_image, probe_video
from data_adapters._records import BadRecord, media_part, resolve_media_path, text_part

__all__ = [
    "PLACEHOLDERS", "SPEAKERS", "conversation_messages", "media_count", "read_json_records", "record_name",
    "resolve_images", "resolve_video",
]

SPEAKERS = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
PLACEHOLDERS = {"<image>": "image", "<video>": "video"}


def read_json_records(path: str | os.PathLike) -> Iterator[tuple[str, dict[str, Any] | str]]:
    """Yield ``(where, record)`` from a JSON list (``"name item i"``, 0-based) or JSONL (``"name line n"``).

    JSON lines come as raw text, so one malformed line is a bad record of its own (``parse_row``).
    """
    path = Path(path)
    # Bytes that are not UTF-8 become surrogate escapes, named with their record by parse_row / the sample check.
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        text = f.read() if path.suffix != ".jsonl" else None
    if text is not None and text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"'{path}' is not valid JSON ({err}). Fix the file, or write it as JSON lines "
                             '(.jsonl) so that a broken record can be skipped with on_error="skip".') from err
        for i, item in enumerate(items):
            yield f"{path.name} item {i}", item if isinstance(item, dict) else json.dumps(item)
        return
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for line_no, line in enumerate(f, start=1):
            if line.strip():
                yield f"{path.name} line {line_no}", line


def conversation_messages(conversations: Any, *, record: str, counts: dict[str, int],
                          placeholders: dict[str, str] = PLACEHOLDERS,
                          system_prompt: str | None = None) -> list[dict[str, Any]]:
    """``[{"from", "value"}, ...]`` -> canonical messages, media parts where the placeholders were.

    Args:
        conversations: the record's turns.
        record: names the record in errors.
        counts: how many media of each kind the record has (``{"image": 2, "video": 0}``).
        placeholders: placeholder text -> media kind.
        system_prompt: prepended as a system message unless the conversation starts with one.

    Raises:
        BadRecord: no turns, an unknown speaker, an empty answer, a placeholder outside a human turn, or a
            placeholder count that differs from the media count (when there are placeholders at all).
    """
    if not isinstance(conversations, list) or not conversations:
        raise BadRecord(record, "no conversation", f"'conversations' is {_short(conversations)}.",
                        'give a list of {"from": "human" | "gpt", "value": ...} turns.')
    pattern = re.compile("(" + "|".join(re.escape(p) for p in placeholders) + ")")
    messages: list[dict[str, Any]] = []
    seen: Counter = Counter()
    for i, turn in enumerate(conversations):
        speaker = turn.get("from") if isinstance(turn, dict) else None
        role = SPEAKERS.get(speaker.lower()) if isinstance(speaker, str) else None
        if role is None:
            raise BadRecord(record, "unknown speaker", f"turn {i} is from {speaker!r}; expected one of "
                            f"{', '.join(SPEAKERS)}.", "rename the speaker or remove the turn.")
        value = turn.get("value")
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)
        if role == "assistant" and (not isinstance(value, str) or not value.strip()):
            raise BadRecord(record, "no answer text", f"turn {i} ({speaker}) has value {_short(value)}.",
                            "fill in the answer, or remove the record.")
        if not isinstance(value, str):
            raise BadRecord(record, "bad turn", f"turn {i} ({speaker}): 'value' must be a string, got "
                            f"{_short(value)}.", "fix the turn.")
        parts = []
        for piece in pattern.split(value):
            if piece in placeholders:
                if role != "user":
                    raise BadRecord(record, "misplaced placeholder", f"turn {i} ({speaker}) contains "
                                    f"{piece}; media can only be placed in human turns.",
                                    f"remove {piece} from that turn.")
                seen[placeholders[piece]] += 1
                parts.append(media_part(placeholders[piece]))
            elif piece.strip():
                parts.append(text_part(piece.strip()))
        messages.append({"role": role, "content": parts})
    unplaced = []
    for kind in ("image", "video"):
        wanted = counts.get(kind, 0)
        if seen[kind] == 0:
            unplaced += [media_part(kind)] * wanted
        elif seen[kind] != wanted:
            tokens = " / ".join(p for p, k in placeholders.items() if k == kind)
            raise BadRecord(record, "media count mismatch", f"{seen[kind]} {tokens} placeholder(s) in the "
                            f"conversation but {wanted} {kind}(s) in the record.",
                            f"make them match: one placeholder per {kind}, in order (or no placeholders at "
                            "all, to put every one at the start of the first human turn).")
    if unplaced:
        first_user = next((m for m in messages if m["role"] == "user"), None)
        if first_user is None:
            raise BadRecord(record, "no human turn", "the record has media but no human turn to put them in.",
                            'add a {"from": "human"} turn.')
        first_user["content"] = unplaced + first_user["content"]
    if system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def media_count(value: Any, key: str, record: str) -> int:
    """How many media a record's ``image`` (None, a path or a list) or ``video`` (None or a path) holds."""
    if value is None:
        return 0
    if isinstance(value, str):
        return 1
    if key == "image" and isinstance(value, list) and all(isinstance(p, str) for p in value):
        return len(value)
    expected = "a path or a list of paths" if key == "image" else "one path"
    raise BadRecord(record, "bad media path", f"'{key}' must be {expected}, got {_short(value)}.",
                    f"fix the record's '{key}'.")


def resolve_images(value: Any, *, root: str | os.PathLike, record: str,
                   allow_outside_root: bool) -> list[str]:
    """A record's ``image`` (None, a path or a list of paths) -> checked absolute paths."""
    media_count(value, "image", record)
    resolved = []
    for relative in [] if value is None else [value] if isinstance(value, str) else value:
        path = resolve_media_path(root, relative, record=record, allow_outside_root=allow_outside_root)
        check_image(path, record)
        resolved.append(path)
    return resolved


def resolve_video(value: str, *, root: str | os.PathLike, record: str,
                  allow_outside_root: bool) -> tuple[str, float]:
    """A record's ``video`` path -> (checked absolute path, duration in seconds or 0.0 if unknown)."""
    media_count(value, "video", record)
    path = resolve_media_path(root, value, record=record, allow_outside_root=allow_outside_root)
    return path, probe_video(path, record)


def record_name(where: str, row: dict[str, Any]) -> str:
    return f"{where} (id={row['id']!r})" if row.get("id") is not None else where


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
