"""LLaVA / ShareGPT conversation files: a JSON list (``llava_v1_5_mix665k.json``) or JSON lines.

A record and the sample it becomes (``image``: one path or a list; paths are relative to ``image_root``)::

    {"id": "000000033471", "image": "coco/train2017/000000033471.jpg",
     "conversations": [{"from": "human", "value": "<image>\\nWhat are the colors of the bus?"},
                       {"from": "gpt", "value": "The bus is white and red."}]}

    {"id": "000000033471",
     "messages": [{"role": "user", "content": [{"type": "image", "text": None},
                                               {"type": "text", "text": "What are the colors of the bus?"}]},
                  {"role": "assistant", "content": [{"type": "text", "text": "The bus is white and red."}]}],
     "images": ["/data/llava/coco/train2017/000000033471.jpg"], "videos": [],
     "max_tiles": None, "num_frames": None}

Speakers: ``human`` / ``user`` -> user, ``gpt`` / ``assistant`` -> assistant, ``system`` -> system. Each
``<image>`` in a human turn becomes an image part in place (the text around it becomes stripped text parts);
the n-th placeholder takes the n-th image. A record with images but no placeholder gets them all at the start
of its first human turn (LLaVA's convention). Records without ``image`` are text-only samples. A ``video`` key
(LLaVA-Video style) gives one video; such records spell its placeholder ``<video>`` or, when the record has no
images, ``<image>``.

Each image's header is opened with PIL and each video's container header with PyAV when the dataset is built
(no pixels decoded), so missing and non-media files are named bad records now, not crashes mid-training.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

from data_adapters._records import (
    BadRecord,
    OnError,
    build_dataset,
    media_part,
    resolve_media_path,
    text_part,
)
from data_adapters.image_folder import check_image, checked_sample, parse_row
from data_adapters.video_folder import probe_video

__all__ = [
    "from_llava_json", "record_to_sample",
    # shared with plm_jsonl
    "conversation_messages", "media_count", "read_json_records", "record_name", "resolve_images",
    "resolve_video",
]

SPEAKERS = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
PLACEHOLDERS = {"<image>": "image", "<video>": "video"}


def read_json_records(path: str | os.PathLike) -> Iterator[tuple[str, dict[str, Any] | str]]:
    """Yield ``(where, record)`` from a JSON list (``"name item i"``, 0-based) or JSONL (``"name line n"``).

    JSON lines come as raw text, so one malformed line is a bad record of its own (``parse_row``).
    """
    path = Path(path)
    with open(path, encoding="utf-8") as f:
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
    with open(path, encoding="utf-8") as f:
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


def record_to_sample(record: tuple[str, dict[str, Any] | str], *, image_root: str | os.PathLike,
                     system_prompt: str | None = None, max_tiles: int | None = None,
                     num_frames: int | None = None, allow_outside_root: bool = False) -> dict[str, Any]:
    """One ``(where, record)`` of a LLaVA file -> a canonical sample (see the module docstring)."""
    where, raw = record
    row = parse_row(raw, where)
    name = record_name(where, row)
    image_value, video_value = row.get("image"), row.get("video")
    n_images, n_videos = media_count(image_value, "image", name), media_count(video_value, "video", name)
    # LLaVA-Video records say <image> for their video.
    placeholders = {"<image>": "video", "<video>": "video"} if n_videos and not n_images else PLACEHOLDERS
    messages = conversation_messages(row.get("conversations"), record=name, placeholders=placeholders,
                                     counts={"image": n_images, "video": n_videos},
                                     system_prompt=system_prompt)
    options = dict(root=image_root, record=name, allow_outside_root=allow_outside_root)
    images = resolve_images(image_value, **options)
    videos = [resolve_video(video_value, **options)[0]] if n_videos else []
    return checked_sample(name, messages, images=images, videos=videos,
                          sample_id=None if row.get("id") is None else str(row["id"]),
                          max_tiles=max_tiles, num_frames=num_frames)


def from_llava_json(
    path: str | os.PathLike,
    *,
    image_root: str | os.PathLike,
    system_prompt: str | None = None,
    max_tiles: int | None = None,
    num_frames: int | None = None,
    on_error: OnError = "raise",
    allow_outside_root: bool = False,
):
    """A dataset of canonical samples from a LLaVA / ShareGPT conversation file.

    Args:
        path: a ``.json`` file holding a list of records, or a ``.jsonl`` file with one record per line.
        image_root: the folder that ``image`` / ``video`` paths are relative to.
        system_prompt: a system message for samples whose conversation has none (default: none, so PLM's
            default applies).
        max_tiles, num_frames: stamped into every sample (None: the collator's default).
        on_error: ``"raise"`` on the first bad record, or ``"skip"`` and count it in ``.skip_report``.
        allow_outside_root: accept media paths that are absolute or climb out of ``image_root``.

    Returns:
        A ``datasets.Dataset`` with ``.skip_report``.

    Raises:
        BadRecord: (``on_error="raise"``) missing / undecodable media, placeholder / media count mismatch,
            empty answer, unknown speaker, path outside ``image_root``, a malformed JSON line.
        ValueError: a ``.json`` list file that does not parse.

    Example:
        >>> ds = from_llava_json("llava_v1_5_mix665k.json", image_root="data/", max_tiles=4)  # doctest: +SKIP
    """
    to_sample = partial(record_to_sample, image_root=image_root, system_prompt=system_prompt,
                        max_tiles=max_tiles, num_frames=num_frames, allow_outside_root=allow_outside_root)
    return build_dataset(lambda: read_json_records(path), to_sample, source=str(path), on_error=on_error)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
