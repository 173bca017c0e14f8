"""The canonical sample: TRL's conversational vision format, extended to video.

A sample is a plain dict, so it round-trips through ``datasets`` tables and JSON::

    {
        "messages": [
            {"role": "system", "content": "You are an expert radiographer."},       # optional
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe it."}]},
            {"role": "assistant", "content": "A frontal chest radiograph ..."},
        ],
        "images": ["scan.png"],   # PIL.Image | path | bytes, consumed in order by {"type": "image"} parts
        "videos": [],             # path | {"path", "start", "end"} | (T, H, W, 3) uint8 | [PIL, ...]
        "max_tiles": 16,          # optional, per sample: overrides the collator's default
        "num_frames": 8,          # optional, per sample
    }

``content`` is a string (one text part) or a list of parts. Parts read back from a ``datasets`` table carry
every key of the union schema (an image part has ``"text": None``); that is accepted as it comes.

The table form (Arrow, ``datasets``) of samples is written here too, once: ``table_messages`` (every message
``{"role", "content"}``, every part ``{"type", "text"}``), ``sample_columns`` (the union of the samples' keys),
``to_table`` (both, for a table saved to disk) and ``sample_features`` (the column types adapters declare).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from plm_tune.data.media import describe_media, load_image, load_video
from plm_tune.errors import DataError, Reason, reason_of

__all__ = [
    "validate_sample", "Part", "Turn", "normalize_messages", "describe_sample", "ROLES", "bad_text", "is_blank",
    "sample_columns",
    "sample_features", "table_messages", "to_table",
]

ROLES = ("system", "user", "assistant")
MEDIA_KINDS = ("image", "video")


@dataclass(frozen=True)
class Part:
    """One piece of a message: text, or the ``index``-th image / video of the sample."""

    kind: Literal["text", "image", "video"]
    text: str = ""
    index: int = -1


@dataclass(frozen=True)
class Turn:
    """A message with its content normalised to parts."""

    role: Literal["system", "user", "assistant"]
    parts: tuple[Part, ...]


def describe_sample(sample: dict[str, Any]) -> str:
    """``" key=value"`` naming a sample in messages (its ``id``, ``sample_id``, ``image_id`` or ``uid``), or ``""``.

    >>> "sample" + describe_sample({"id": "scan-7", "messages": []})
    "sample id='scan-7'"
    """
    for key in ("id", "sample_id", "image_id", "uid"):
        if sample.get(key) is not None:
            return f" {key}={sample[key]!r}"
    return ""


def _sample_id(sample: dict[str, Any]) -> str:
    name = describe_sample(sample)
    return f"sample{name}: " if name else ""


_SURROGATES = re.compile("[\ud800-\udfff]")


def bad_text(text: str) -> str | None:
    """What makes ``text`` untokenisable, or None: a surrogate code point, which no UTF-8 text can hold.

    They come from bytes that are not UTF-8 read with ``errors="surrogateescape"`` (U+DC80..U+DCFF, one per
    byte) or from a JSON escape of half a surrogate pair (``"\\ud800"``).
    """
    found = _SURROGATES.search(text)
    if found is None:
        return None
    code = ord(found.group())
    what = (f"the byte 0x{code - 0xDC00:02x}, which is not UTF-8" if 0xDC80 <= code <= 0xDCFF
            else f"a lone surrogate U+{code:04X} (half of a UTF-16 pair)")
    return f"{what}, at character {found.start()}"


# Characters that draw nothing but are not whitespace or format characters: the Hangul fillers (letters, Lo),
# the braille blank (So), the combining grapheme joiner and variation selectors (Mn).
_INVISIBLE = frozenset("\u115f\u1160\u3164\uffa0\u2800\u034f") | {chr(c) for c in range(0xFE00, 0xFE10)}


def _invisible(char: str) -> bool:
    return (char.isspace() or char in _INVISIBLE or unicodedata.category(char) in ("Cc", "Cf", "Zs", "Zl", "Zp")
            or 0xE0100 <= ord(char) <= 0xE01EF)


def is_blank(text: str) -> bool:
    r"""Whether ``text`` shows nothing: it is empty, or only whitespace, control and format characters (U+200B
    zero-width space, U+FEFF, the U+200C / U+200D joiners, U+2060 word joiner, U+00AD soft hyphen, ...) and a
    few letters and marks that draw nothing (Hangul fillers, the braille blank, variation selectors).

    ``str.strip`` removes whitespace only, so ``"\u200b"`` passes it; such a text is empty to a reader and is
    handled as empty wherever a sample's text is checked.

    >>> is_blank("\u200b\ufeff \u00ad"), is_blank(" A\u200b")
    (True, False)
    """
    return all(_invisible(char) for char in text)


def _text_part(text: str, where: str) -> Part:
    problem = bad_text(text)
    if problem is not None:
        raise DataError(Reason.NOT_UTF8_TEXT,
                        f"{where}: the text holds {problem}. Re-encode the data as UTF-8 "
                        "(and write whole surrogate pairs in JSON escapes).")
    return Part("text", text=text)


def _parts_of(content: Any, where: str, counters: dict[str, int]) -> tuple[Part, ...]:
    """Normalise one message's content, numbering media parts in order of appearance."""
    if isinstance(content, str):
        return (_text_part(content, where),)
    if not isinstance(content, list | tuple):
        raise DataError(Reason.INVALID_CONVERSATION,
                        f"{where}: content must be a string or a list of parts, got {type(content).__name__}.")
    parts: list[Part] = []
    for j, item in enumerate(content):
        if not isinstance(item, dict) or "type" not in item:
            raise DataError(Reason.INVALID_CONVERSATION,
                            f"{where}, part {j}: expected a dict with a 'type' key "
                            f"('text', 'image' or 'video'), got {item!r}.")
        kind = item["type"]
        if kind == "text":
            text = item.get("text")
            if not isinstance(text, str):
                raise DataError(Reason.INVALID_CONVERSATION,
                                f"{where}, part {j}: a text part needs a string 'text', got {text!r}.")
            parts.append(_text_part(text, f"{where}, part {j}"))
        elif kind in MEDIA_KINDS:
            parts.append(Part(kind, index=counters[kind]))
            counters[kind] += 1
        else:
            raise DataError(Reason.INVALID_CONVERSATION,
                            f"{where}, part {j}: unknown part type {kind!r}; use 'text', 'image' or 'video'.")
    return tuple(parts)


def normalize_messages(sample: dict[str, Any], *, require_answer: bool = True) -> list[Turn]:
    """Parse ``sample["messages"]`` into turns, checking structure (not media).

    Args:
        sample: a canonical sample.
        require_answer: a training sample needs an assistant turn; a prompt to generate from does not.

    Raises:
        DataError: naming the sample and message, with a ``Reason`` (``plm_tune.errors``), for any of: no messages, unknown role, a system
            message that is not first, empty content (``is_blank``: invisible characters count as none), no
            assistant turn, a first non-system message that is not
            the user's or a last one that is not the assistant's (both with ``require_answer``), text that is not UTF-8,
            a ``max_tiles`` / ``num_frames`` that is not a positive integer, or placeholder / media count mismatch.
    """
    sid = _sample_id(sample)
    messages = sample.get("messages")
    if not isinstance(messages, list | tuple) or len(messages) == 0:
        raise DataError(Reason.INVALID_CONVERSATION,
                        f"{sid}'messages' must be a non-empty list of {{'role', 'content'}} dicts, "
                        f"got {type(messages).__name__}.")
    _check_positive_int(sample, "max_tiles")  # here, so the collator and the planner refuse 0 as validation does
    _check_positive_int(sample, "num_frames")
    counters = {"image": 0, "video": 0}
    turns: list[Turn] = []
    for i, message in enumerate(messages):
        where = f"{sid}message {i}"
        if not isinstance(message, dict):
            raise DataError(Reason.INVALID_CONVERSATION,
                            f"{where}: expected a dict with 'role' and 'content', got {type(message).__name__}.")
        role = message.get("role")
        if role not in ROLES:
            raise DataError(Reason.INVALID_CONVERSATION,
                            f"{where}: unknown role {role!r}; use one of {', '.join(ROLES)} "
                            "(map 'human' -> 'user' and 'gpt' -> 'assistant').")
        if role == "system" and i != 0:
            raise DataError(Reason.INVALID_CONVERSATION,
                            f"{where}: a system message must be the first message.")
        parts = _parts_of(message.get("content"), where, counters)
        if all(p.kind == "text" and is_blank(p.text) for p in parts):
            shown = "".join(p.text for p in parts)
            found = f": its text {shown!r} is only invisible characters" if shown.strip() else ""
            raise DataError(Reason.EMPTY_CONTENT, f"{where} ({role}): content is empty{found}. Give it text or "
                            "media, or remove the message.")
        if role == "system" and any(p.kind != "text" for p in parts):
            raise DataError(Reason.INVALID_CONVERSATION, f"{where}: a system message can only hold text.")
        turns.append(Turn(role, parts))
    if require_answer and not any(t.role == "assistant" for t in turns):
        raise DataError(Reason.NO_ANSWER_TEXT, f"{sid}no assistant turn: there is nothing to train on. "
                        "Add the expected answer as an {'role': 'assistant', 'content': ...} message.")
    first = next((i for i, t in enumerate(turns) if t.role != "system"), None)
    if require_answer and first is not None and turns[first].role != "user":
        raise DataError(Reason.INVALID_CONVERSATION,
                        f"{sid}message {first}: the conversation starts with the assistant; PLM's template "
                        "expects a user message first. Add the question as a user message before it.")
    if require_answer and turns[-1].role != "assistant":
        raise DataError(Reason.INVALID_CONVERSATION,
                        f"{sid}message {len(turns) - 1}: the conversation ends with a user message, which is a "
                        "prompt, not a training sample. Add its answer, or remove the trailing user message.")
    for kind, key in (("image", "images"), ("video", "videos")):
        given = len(sample.get(key) or [])
        if counters[kind] != given:
            hint = ""
            if counters[kind] == 0:  # TRL's string-content rows put their media at the first user turn
                hint = (" Rows in TRL's form (string content, images beside it) or LLaMA-Factory's (<image> in the "
                        "text) become samples with data_adapters.from_hf_dataset(..., messages_column='messages').")
            elif given == 0 and sample.get(kind) is not None:
                hint = f" The sample has '{kind}' (singular): a canonical sample lists them under '{key}'."
            raise DataError(Reason.MEDIA_COUNT_MISMATCH,
                            f"{sid}{counters[kind]} {{'type': '{kind}'}} placeholder(s) in the messages but "
                            f"{given} entr{'y' if given == 1 else 'ies'} in '{key}'. Each placeholder takes the "
                            f"next entry of '{key}' in order: add or remove placeholders so the counts match."
                            + hint)
    return turns


def _check_positive_int(sample: dict[str, Any], key: str) -> None:
    value = sample.get(key)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise DataError(Reason.INVALID_SAMPLE,
                        f"{_sample_id(sample)}'{key}' must be a positive integer, got {value!r}.")


def validate_sample(sample: dict[str, Any], *, decode_media: bool = True) -> None:
    """Check that ``sample`` is a well-formed canonical sample; raise a helpful error if not.

    Args:
        sample: the canonical sample dict (see module docstring).
        decode_media: also open every image and the first frame of every video, so unreadable
            media are found now rather than mid-training.

    Raises:
        DataError: the message names the sample (its ``id``/``image_id`` when present), what was expected,
            what was found and how to fix it; ``reason`` (``plm_tune.errors.Reason``) says what is wrong, for an
            unreadable media entry the reason its ``MediaError`` gave.

    Example:
        >>> validate_sample({"messages": [{"role": "user", "content": "Hi"}]})
        Traceback (most recent call last):
        ...
        plm_tune.errors.DataError: no assistant turn: there is nothing to train on. ...
    """
    if not isinstance(sample, dict):
        raise DataError(Reason.INVALID_SAMPLE,
                        f"A sample must be a dict with a 'messages' key, got {type(sample).__name__}.")
    normalize_messages(sample)
    if not decode_media:
        return
    sid = _sample_id(sample)
    for i, entry in enumerate(sample.get("images") or []):
        try:
            load_image(entry)
        except ValueError as err:
            raise DataError(reason_of(err) or Reason.UNDECODABLE_IMAGE,
                            f"{sid}images[{i}] ({describe_media(entry)}) is unreadable: {err}") from err
    for i, entry in enumerate(sample.get("videos") or []):
        try:
            load_video(entry, num_frames=1)
        except ValueError as err:
            raise DataError(reason_of(err) or Reason.UNREADABLE_VIDEO,
                            f"{sid}videos[{i}] ({describe_media(entry)}) is unreadable: {err}") from err


# ------------------------------------------------------------------------------------------- table form


def table_messages(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """``messages`` in their table form: each ``{"role", "content"}``, content a list of ``{"type", "text"}`` parts.

    Arrow gives every row of a column one type, so string content becomes one text part and every part gets
    both keys (a media part ``"text": None``). Other message keys are not part of the format and are left out.

    Example:
        >>> table_messages([{"role": "assistant", "content": "A circle."}])
        [{'role': 'assistant', 'content': [{'type': 'text', 'text': 'A circle.'}]}]
    """
    table = []
    for message in messages:
        content = message["content"]
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        table.append({"role": message["role"], "content": [{"type": p["type"], "text": p.get("text")} for p in parts]})
    return table


def sample_columns(samples: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    """Samples as columns over the union of their keys; a key a sample lacks is None in its row.

    (``datasets.Dataset.from_list`` keeps only the first sample's keys: a video set after an image-only sample
    would lose its videos.)

    Example:
        >>> sample_columns([{"images": ["a.png"]}, {"videos": ["b.mp4"]}])
        {'images': [['a.png'], None], 'videos': [None, ['b.mp4']]}
    """
    keys = list(dict.fromkeys(key for sample in samples for key in sample))
    return {key: [sample.get(key) for sample in samples] for key in keys}


def to_table(samples: Any) -> Any:
    """A ``datasets.Dataset`` to save: samples with ``table_messages`` over ``sample_columns``.

    Args:
        samples: a list of samples, anything indexable that yields them (``build_trainer``'s in-memory view of
            a list), or a ``datasets.Dataset``, returned as it is unless it has a custom transform.
    """
    import datasets

    if isinstance(samples, datasets.Dataset) and samples.format.get("type") != "custom":
        return samples
    rows = [samples[i] for i in range(len(samples))]
    return datasets.Dataset.from_dict(
        sample_columns([{**row, "messages": table_messages(row["messages"])} for row in rows])
    )


def sample_features(*, images: Literal["image", "bytes"] = "image",
                    videos: Literal["files", "frames"] = "files") -> Any:
    """The ``datasets.Features`` of a canonical sample table (the columns ``make_sample`` fills in adapters).

    Args:
        images: ``"image"``: an ``Image(decode=False)`` column (``{"bytes", "path"}``, decoded once, by the
            collator); ``"bytes"``: raw encoded bytes.
        videos: ``"files"``: ``{"path", "start", "end"}`` entries; ``"frames"``: each video a list of images.
    """
    from datasets import Features, Image, List, Value

    image = Image(decode=False) if images == "image" else Value("binary")
    video = (List(Image(decode=False)) if videos == "frames"
             else {"path": Value("string"), "start": Value("float64"), "end": Value("float64")})
    return Features({
        "id": Value("string"),
        "messages": List({"role": Value("string"),
                          "content": List({"type": Value("string"), "text": Value("string")})}),
        "images": List(image),
        "videos": List(video),
        "max_tiles": Value("int64"),
        "num_frames": Value("int64"),
    })
