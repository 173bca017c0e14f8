"""Conversation records, shared by the ``llava``, ``plm_jsonl`` and ``hf`` adapters.

Reading a JSON list or JSON lines file of records (``read_json_records``); turns -> canonical messages with
media parts where the placeholders were (``conversation_messages``), the turns being LLaVA / ShareGPT
``{"from", "value"}`` or LLaMA-Factory / TRL ``{"role", "content"}`` (string content, or TRL's list of
parts); a whole record -> a sample (``conversation_sample``: LLaVA's and PLM's ``conversations`` / ``image`` /
``video`` keys, LLaMA-Factory's ``messages`` / ``images`` / ``videos`` / ``system``); counting a record's
media (``media_count``), resolving and checking them (``resolve_images``, ``resolve_video``) and naming the
record in errors (``record_name``).
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from data_adapters._fields import checked_sample, number_text
from data_adapters._json import JSONRecordError, record_boundaries
from data_adapters._probe import check_image, probe_video
from data_adapters._records import BadRecord, media_part, resolve_media_path, text_part
from plm_tune.data.sample import is_blank
from plm_tune.errors import Reason

__all__ = [
    "PLACEHOLDERS", "SPEAKERS", "conversation_messages", "conversation_sample", "media_count",
    "read_json_records", "record_name", "resolve_images", "resolve_video",
]

SPEAKERS = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
PLACEHOLDERS = {"<image>": "image", "<video>": "video"}
QWEN_VL_IMAGE = re.compile(r"<img>.*?</img>", re.DOTALL)  # Qwen-VL's "Picture 1: <img>path</img>"


def read_json_records(path: str | os.PathLike) -> Iterator[tuple[str, str]]:
    """Yield ``(where, text)`` from a JSON list (``"name item i"``, 0-based) or JSONL (``"name line n"``).

    Each record comes as its raw JSON text, so one malformed record (a syntax error in a line, a duplicate key,
    a non-finite number, nesting too deep) is a bad record of its own (``parse_row``). A list is cut into its
    items first (``record_boundaries``); an item whose end cannot be found stops the read. A leading byte
    order mark is dropped.

    Raises:
        ValueError: a ``.json`` list that is not valid JSON outside its items, or whose items cannot be told
            apart; the message names the item and line.
    """
    path = Path(path)
    # Bytes that are not UTF-8 become surrogate escapes, named with their record by parse_row / the sample check.
    with open(path, encoding="utf-8-sig", errors="surrogateescape") as f:
        text = f.read() if path.suffix != ".jsonl" else None
    if text is not None and text.lstrip().startswith("["):
        try:
            spans = record_boundaries(text)
        except JSONRecordError as err:
            raise ValueError(f"'{path}': {err.detail} Fix the file, or write it as JSON lines (.jsonl) so that a "
                             'broken record can be skipped with on_error="skip".') from None
        for i, (start, end) in enumerate(spans):
            yield f"{path.name} item {i}", text[start:end]
        return
    with open(path, encoding="utf-8-sig", errors="surrogateescape") as f:
        for line_no, line in enumerate(f, start=1):
            if line.strip():
                yield f"{path.name} line {line_no}", line


def conversation_messages(conversations: Any, *, record: str, counts: dict[str, int],
                          placeholders: dict[str, str] = PLACEHOLDERS,
                          system_prompt: str | None = None) -> list[dict[str, Any]]:
    """A record's turns -> canonical messages, media parts where the placeholders were.

    Args:
        conversations: the record's turns: ``{"from", "value"}`` (LLaVA, ShareGPT, PLM) or ``{"role",
            "content"}`` (LLaMA-Factory, TRL), the content a string or TRL's list of ``{"type": ...}`` parts.
        record: names the record in errors.
        counts: how many media of each kind the record has (``{"image": 2, "video": 0}``).
        placeholders: placeholder text -> media kind.
        system_prompt: prepended as a system message unless the conversation starts with one.

    Raises:
        BadRecord: no turns, an unknown speaker, an empty answer, a placeholder outside a human turn, a
            Qwen-VL ``<img>...</img>`` tag, or a placeholder count that differs from the media count (when
            there are placeholders at all: without any, the media open the first human turn, as LLaVA and
            TRL put them).
    """
    if not isinstance(conversations, list) or not conversations:
        raise BadRecord(record, "no conversation", f"'conversations' / 'messages' is {_short(conversations)}.",
                        'give a list of {"from": "human" | "gpt", "value": ...} or {"role": "user" | '
                        '"assistant", "content": ...} turns.')
    pattern = re.compile("(" + "|".join(re.escape(p) for p in placeholders) + ")")
    messages: list[dict[str, Any]] = []
    seen: Counter = Counter()
    for i, turn in enumerate(conversations):
        speaker, value = _speaker_and_value(turn)
        role = SPEAKERS.get(speaker.lower()) if isinstance(speaker, str) else None
        if role is None:
            raise BadRecord(record, "unknown speaker", f"turn {i} is from {speaker!r}; expected one of "
                            f"{', '.join(SPEAKERS)}.", "rename the speaker or remove the turn.")
        value = number_text(value, f"turn {i} ({speaker})", record)
        pieces = [] if value is None else _pieces(value, record=record, where=f"turn {i} ({speaker})")
        if role == "assistant" and all(kind == "text" and is_blank(text) for kind, text in pieces):
            raise BadRecord(record, Reason.NO_ANSWER_TEXT, f"turn {i} ({speaker}) has value {_short(value)}.",
                            "fill in the answer, or remove the record.")
        if value is None:
            raise BadRecord(record, "bad turn", f"turn {i} ({speaker}) has no text.", "fix the turn.")
        parts = []
        for kind, text in pieces:  # a TRL media part is one piece of its own kind
            for piece in pattern.split(text) if kind == "text" else [kind]:
                media = placeholders.get(piece) if kind == "text" else kind
                if media is not None:
                    if role != "user":
                        raise BadRecord(record, "misplaced placeholder", f"turn {i} ({speaker}) contains "
                                        f"{piece}; media can only be placed in human turns.",
                                        f"remove {piece} from that turn.")
                    seen[media] += 1
                    parts.append(media_part(media))
                elif not is_blank(piece):
                    parts.append(text_part(piece.strip()))
        messages.append({"role": role, "content": parts})
    unplaced = []
    for kind in ("image", "video"):
        wanted = counts.get(kind, 0)
        if seen[kind] == 0:
            unplaced += [media_part(kind)] * wanted
        elif seen[kind] != wanted:
            tokens = " / ".join(p for p, k in placeholders.items() if k == kind)
            raise BadRecord(record, Reason.MEDIA_COUNT_MISMATCH, f"{seen[kind]} {tokens} placeholder(s) in the "
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


def _speaker_and_value(turn: Any) -> tuple[Any, Any]:
    if not isinstance(turn, dict):
        return None, None
    if "from" not in turn and ("role" in turn or "content" in turn):
        return turn.get("role"), turn.get("content")
    return turn.get("from"), turn.get("value")


def _pieces(value: Any, *, record: str, where: str) -> list[tuple[str, str]]:
    """A turn's content as ``(kind, text)`` pieces: ``("text", ...)``, or ``("image" | "video", "")`` for a
    TRL media part. Refuses Qwen-VL's inline ``<img>path</img>``, which would otherwise train as plain text."""
    items = value if isinstance(value, list) else [{"type": "text", "text": value}]
    pieces = []
    for item in items:
        kind = item.get("type") if isinstance(item, dict) else None
        text = item.get("text") if kind == "text" else ""
        if kind not in ("text", "image", "video") or not isinstance(text, str):
            raise BadRecord(record, "bad turn", f"{where}: the content must be a string or a list of text / "
                            f"image / video parts, got {_short(value)}.", "fix the turn.")
        tag = QWEN_VL_IMAGE.search(text)
        if tag:
            raise BadRecord(record, "inline image tag", f"{where} holds {_short(tag.group(0))}: Qwen-VL's "
                            "inline image syntax, which plm-tune does not read (the image would be lost and the "
                            "tag trained as text).", "put the image's path in the record's 'image' / 'images' "
                            "and write <image> where the tag was.")
        pieces.append((kind, text))
    return pieces


def media_count(value: Any, key: str, record: str) -> int:
    """How many media a record's ``image`` / ``images`` / ``videos`` (None, a path or a list) or ``video``
    (None or a path) holds."""
    if value is None:
        return 0
    if isinstance(value, str):
        return 1
    if key != "video" and isinstance(value, list) and all(isinstance(p, str) for p in value):
        return len(value)
    expected = "a path or a list of paths" if key != "video" else "one path"
    raise BadRecord(record, "bad media path", f"'{key}' must be {expected}, got {_short(value)}.",
                    f"fix the record's '{key}'.")


def resolve_images(value: Any, *, root: str | os.PathLike, record: str,
                   allow_outside_root: bool) -> list[str]:
    """A record's ``image`` / ``images`` (None, a path or a list of paths) -> checked absolute paths."""
    media_count(value, "images", record)
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


def conversation_sample(row: dict[str, Any], name: str, *, root: str | os.PathLike,
                        system_prompt: str | None, max_tiles: int | None, num_frames: int | None,
                        allow_outside_root: bool,
                        video_entry: Callable[[str, float], Any] = lambda path, duration: path) -> dict[str, Any]:
    """One conversation record -> a canonical sample.

    The record is LLaVA's / PLM's (``conversations``; ``image``: a path or a list; ``video``: a path) or
    LLaMA-Factory's multimodal ShareGPT (``messages`` or ``conversations``; ``images`` / ``videos``: lists;
    an optional ``system``). ``video_entry(path, duration)`` makes each video's entry (PLM's adapter adds the
    clip times). A record with videos and no images may say ``<image>`` for its video (LLaVA-Video, PLM).

    Raises:
        BadRecord: anything ``conversation_messages``, ``media_count`` or the media checks refuse; a record
            with both ``image`` and ``images`` (or ``video`` and ``videos``); audio (PLM has no audio input).
    """
    values = {}
    for kind, keys in (("image", ("image", "images")), ("video", ("video", "videos"))):
        given = [key for key in keys if row.get(key) is not None]
        if len(given) > 1:
            raise BadRecord(name, "ambiguous media", f"the record has both {given[0]!r} and {given[1]!r}.",
                            f"keep one list of {kind}s.")
        values[kind] = (given[0], row[given[0]]) if given else (keys[0], None)
    if row.get("audios"):
        raise BadRecord(name, "audio", "the record has 'audios': PLM takes images and videos, not audio.",
                        "drop the audio (and its <audio> placeholder), or the record.")
    counts = {kind: media_count(value, key, name) for kind, (key, value) in values.items()}
    video_only = counts["video"] and not counts["image"]
    placeholders = {"<image>": "video", "<video>": "video"} if video_only else PLACEHOLDERS
    system = row.get("system") if isinstance(row.get("system"), str) and not is_blank(row["system"]) else system_prompt
    turns = row.get("messages") if row.get("conversations") is None else row.get("conversations")
    messages = conversation_messages(turns, record=name, placeholders=placeholders, counts=counts,
                                     system_prompt=system)
    options = dict(root=root, record=name, allow_outside_root=allow_outside_root)
    images = resolve_images(values["image"][1], **options)
    video_value = values["video"][1]
    paths = [] if video_value is None else [video_value] if isinstance(video_value, str) else video_value
    videos = [video_entry(*resolve_video(path, **options)) for path in paths]
    return checked_sample(name, messages, images=images, videos=videos,
                          sample_id=None if row.get("id") is None else str(row["id"]),
                          max_tiles=max_tiles, num_frames=num_frames)


def record_name(where: str, row: dict[str, Any]) -> str:
    return f"{where} (id={row['id']!r})" if row.get("id") is not None else where


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
