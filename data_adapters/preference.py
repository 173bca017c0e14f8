"""Preference data (a prompt, a chosen and a rejected answer) in the layouts people have, as canonical preference
samples (``plm_tune.data.preference``).

Four layouts, told apart by each record's keys (checked in this order):

1. VLFeedback (``completions`` rated by GPT-4V: ``prompt``, ``completions``, ``img_path`` or ``image``): the
   completion with the best mean rating (over the rated aspects) is chosen, the worst one rejected::

    {"id": "svit-4", "prompt": "What is on the table?", "img_path": "svit/4.jpg",
     "completions": [{"model": "a", "response": "A red cup.",
                      "annotations": {"Helpfulness": {"Rating": "5", "Rationale": "..."},
                                      "Visual Faithfulness": {"Rating": "5", "Rationale": "..."}}},
                     {"model": "b", "response": "A blue plate.", "annotations": {...: {"Rating": "2"}}}]}

2. LLaMA-Factory's ranking ShareGPT (``conversations`` ending with the human turn, ``chosen`` / ``rejected``
   one ``{"from": "gpt", "value"}`` turn each, ``images`` / ``videos`` placed by ``<image>`` / ``<video>``)::

    {"conversations": [{"from": "human", "value": "<image>What colour is the square?"}],
     "chosen": {"from": "gpt", "value": "Red."}, "rejected": {"from": "gpt", "value": "Blue."},
     "images": ["shapes/0.png"]}

3. RLAIF-V (``image``, ``question``, ``chosen``, ``rejected`` strings; ``idx`` names the record)::

    {"idx": "0", "image": <PNG>, "question": "Describe the image.", "chosen": "...", "rejected": "..."}

4. TRL (``prompt``: a list of messages or a string; ``chosen`` / ``rejected``: one assistant message or a
   string; ``images``)::

    {"prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]}],
     "chosen": [{"role": "assistant", "content": "Red."}],
     "rejected": [{"role": "assistant", "content": "Blue."}], "images": ["shapes/0.png"]}

Each becomes (the TRL record above)::

    {"id": None,
     "messages": [{"role": "user", "content": [{"type": "image", "text": None},
                                               {"type": "text", "text": "What colour?"}]}],
     "chosen": [{"role": "assistant", "content": [{"type": "text", "text": "Red."}]}],
     "rejected": [{"role": "assistant", "content": [{"type": "text", "text": "Blue."}]}],
     "images": ["/data/shapes/0.png"], "videos": [], "max_tiles": None, "num_frames": None}

Media without placeholders open the first user turn (TRL's and LLaVA's convention). Path strings are resolved
against ``media_root`` and may not leave it unless ``allow_outside_root``; image headers and video containers
are opened when the dataset is built, as in the SFT adapters.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from data_adapters._conversations import SPEAKERS, conversation_messages, record_name
from data_adapters._fields import number_text, parse_row
from data_adapters._records import BadRecord, OnError, build_dataset, make_sample
from data_adapters._tables import (
    TableRows,
    columns_of,
    image_entry,
    keep_media_encoded,
    load_split,
    shard_rows,
    table_shards,
    video_entry,
)
from plm_tune.data.preference import validate_preference_sample
from plm_tune.data.sample import table_messages
from plm_tune.errors import DataError, Reason, reason_of

__all__ = ["LAYOUTS", "from_preference_data", "preference_sample"]

LAYOUTS = ("vlfeedback", "sharegpt", "rlaif_v", "trl")
MEDIA_COLUMNS = ("image", "images", "video", "videos", "image_path", "img_path")


def _layout(row: dict[str, Any], record: str) -> str:
    """Which layout a record is in, by its keys (module docstring, in this order)."""
    if "completions" in row:
        return "vlfeedback"
    if "conversations" in row:
        return "sharegpt"
    if "question" in row:
        return "rlaif_v"
    if "prompt" in row:
        return "trl"
    raise BadRecord(record, "unknown preference layout", f"the record's keys are {sorted(row)}.",
                    "give TRL's prompt / chosen / rejected, LLaMA-Factory's conversations / chosen / rejected, "
                    "RLAIF-V's question / chosen / rejected or VLFeedback's prompt / completions.")


def preference_sample(where: str, row: dict[str, Any], *, media_root: str | os.PathLike,
                      allow_outside_root: bool = False, system_prompt: str | None = None,
                      max_tiles: int | None = None, num_frames: int | None = None) -> dict[str, Any]:
    """One preference record (any of the four layouts) -> a canonical preference sample (module docstring).

    Raises:
        BadRecord: an unknown layout; a missing answer ("missing answer"); an answer that is not one assistant
            turn; fewer than two rated completions or all rated alike (VLFeedback); missing, undecodable or
            escaping media; and whatever ``conversation_messages`` or ``validate_preference_sample`` refuse
            (blank or identical answers, media in an answer, a prompt that does not end with a user turn),
            with their reasons.
    """
    sample_id = row.get("id") if row.get("id") is not None else row.get("idx")
    name = f"{where} (id={sample_id!r})" if sample_id is not None else record_name(where, row)
    turns, chosen, rejected = _READERS[_layout(row, name)](row, name)
    options = dict(media_root=str(media_root), allow_outside_root=allow_outside_root)
    images = [image_entry(v, name, **options) for v in _media(row, name, ("images", "image"), ("image_path",
                                                                                                 "img_path"))]
    videos = [video_entry(v, name, **options) for v in _media(row, name, ("videos", "video"), ())]
    system = row.get("system") if isinstance(row.get("system"), str) and row["system"].strip() else system_prompt
    messages = conversation_messages(turns, record=name, counts={"image": len(images), "video": len(videos)},
                                     system_prompt=system)
    sample = make_sample(messages, images=images, videos=videos, max_tiles=max_tiles, num_frames=num_frames,
                         sample_id=None if sample_id is None else str(sample_id))
    sample["chosen"] = table_messages([_answer(chosen, name, "chosen")])
    sample["rejected"] = table_messages([_answer(rejected, name, "rejected")])
    try:
        validate_preference_sample(sample, decode_media=False)  # headers were read above; pixels at collate time
    except DataError as err:
        raise BadRecord(name, reason_of(err) or Reason.INVALID_SAMPLE, str(err)) from err
    return sample


def _trl(row: dict[str, Any], name: str) -> tuple[list[Any], Any, Any]:
    prompt = row.get("prompt")
    turns = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    return turns, row.get("chosen"), row.get("rejected")


def _sharegpt(row: dict[str, Any], name: str) -> tuple[list[Any], Any, Any]:
    return row.get("conversations"), row.get("chosen"), row.get("rejected")


def _rlaif_v(row: dict[str, Any], name: str) -> tuple[list[Any], Any, Any]:
    return [{"role": "user", "content": row.get("question")}], row.get("chosen"), row.get("rejected")


def _vlfeedback(row: dict[str, Any], name: str) -> tuple[list[Any], Any, Any]:
    """The best- and worst-rated completions; each scored by the mean of its numeric aspect ratings (VLFeedback
    rates helpfulness, visual faithfulness and ethical considerations 1-5, as strings)."""
    completions = row.get("completions")
    if isinstance(completions, dict):  # a datasets Sequence of structs reads back as a dict of lists
        completions = [dict(zip(completions, values, strict=True)) for values in zip(*completions.values(),
                                                                                      strict=True)]
    scored = []
    for completion in completions if isinstance(completions, list) else []:
        ratings = []
        for aspect in (completion.get("annotations") or {}).values() if isinstance(completion, dict) else []:
            try:
                ratings.append(float((aspect or {}).get("Rating")))
            except (TypeError, ValueError):  # "N/A", a missing rating: that aspect is not rated
                continue
        if ratings and isinstance(completion.get("response"), str) and completion["response"].strip():
            scored.append((sum(ratings) / len(ratings), completion["response"]))
    if len(scored) < 2:
        raise BadRecord(name, "too few rated completions", f"{len(scored)} completion(s) with a response and a "
                        "numeric rating; a pair needs two.", "drop the record, or rate its completions.")
    best = max(scored, key=lambda item: item[0])  # the first of equals: records stay reproducible
    worst = min(scored, key=lambda item: item[0])
    if best[0] == worst[0]:
        raise BadRecord(name, "no preference", f"every completion is rated {best[0]:g}.",
                        "drop the record: equally rated answers give no preference to learn.")
    return [{"role": "user", "content": row.get("prompt")}], best[1], worst[1]


_READERS: dict[str, Callable[[dict[str, Any], str], tuple[list[Any], Any, Any]]] = {
    "vlfeedback": _vlfeedback, "sharegpt": _sharegpt, "rlaif_v": _rlaif_v, "trl": _trl,
}


def _media(row: dict[str, Any], name: str, keys: tuple[str, ...], fallback: tuple[str, ...]) -> list[Any]:
    """A record's media entries: from one of ``keys`` (two of them given is ambiguous), else the first
    ``fallback`` key present (RLAIF-V's ``image_path`` and VLFeedback's ``img_path`` only name the file when the
    record has no image itself)."""
    given = [key for key in keys if row.get(key) is not None]
    if len(given) > 1:
        raise BadRecord(name, "ambiguous media", f"the record has both {given[0]!r} and {given[1]!r}.",
                        "keep one of them.")
    given = given or [key for key in fallback if row.get(key) is not None][:1]
    if not given:
        return []
    value = row[given[0]]
    return list(value) if isinstance(value, list | tuple) else [value]


def _answer(value: Any, name: str, key: str) -> dict[str, Any]:
    """``chosen`` / ``rejected`` as one assistant message: a string, a ``{"from", "value"}`` /
    ``{"role", "content"}`` turn, or a list holding one such turn."""
    if value is None:
        raise BadRecord(name, "missing answer", f"the record has no '{key}'.",
                        f"add the {key} answer, or drop the record.")
    if isinstance(value, list | tuple):
        if len(value) != 1:
            raise BadRecord(name, "answer not one turn", f"'{key}' holds {len(value)} turns.",
                            f"give '{key}' exactly one assistant turn; earlier turns belong in the prompt.")
        value = value[0]
    if not isinstance(value, dict):
        value = {"role": "assistant", "content": value}
    speaker = value.get("from", value.get("role"))
    role = SPEAKERS.get(speaker.lower()) if isinstance(speaker, str) else None
    if role != "assistant":
        raise BadRecord(name, "answer not from the assistant", f"'{key}' is a turn from {speaker!r}.",
                        f"give '{key}' the speaker 'gpt' / 'assistant'.")
    content = number_text(value.get("value", value.get("content")), key, name)
    if isinstance(content, str):
        if "<image>" in content or "<video>" in content:
            raise BadRecord(name, Reason.MEDIA_IN_ANSWER, f"'{key}' holds a media placeholder: "
                            f"{content[:60]!r}.", "media go in the prompt's user turn; remove the placeholder.")
        content = content.strip()
    elif isinstance(content, list):
        content = [{**part, "text": part["text"].strip()} if isinstance(part, dict) and isinstance(
            part.get("text"), str) else part for part in content]
    else:
        raise BadRecord(name, Reason.NO_ANSWER_TEXT, f"'{key}' has content {content!r}.",
                        f"fill in the {key} answer, or drop the record.")
    return {"role": "assistant", "content": content}


def _file_record(record: tuple[str, str], **options: Any) -> dict[str, Any]:
    where, raw = record
    return preference_sample(where, parse_row(raw, where), **options)


def _table_row(record: tuple[int | str, dict[str, Any]], *, source: str, **options: Any) -> dict[str, Any]:
    index, row = record
    return preference_sample(f"{source} row {index}", row, **options)


def from_preference_data(
    path: str | os.PathLike | Any,
    *,
    media_root: str | os.PathLike | None = None,
    allow_outside_root: bool = False,
    system_prompt: str | None = None,
    split: str = "train",
    config: str | None = None,
    max_tiles: int | None = None,
    num_frames: int | None = None,
    on_error: OnError = "raise",
    streaming: bool = False,
    num_proc: int = 1,
    progress: bool = True,
):
    """A dataset of canonical preference samples from any of the four layouts (module docstring).

    Args:
        path: a ``.json`` list or ``.jsonl`` file of records; or a Hugging Face dataset: a folder written by
            ``save_to_disk``, a Hub name, another local path ``datasets.load_dataset`` reads, or a ``datasets``
            object (``Dataset``, ``IterableDataset`` or ``DatasetDict``).
        media_root: the folder media path strings are relative to; default: the file's folder, the dataset's
            folder, else the current directory.
        allow_outside_root: accept media paths that are absolute or climb out of ``media_root``.
        system_prompt: a system message for samples whose prompt has none (a ShareGPT ``system`` key wins).
        split, config: the dataset's split and configuration (Hugging Face datasets only).
        max_tiles, num_frames: stamped into every sample (None: the collator's default).
        on_error: ``"raise"`` on the first bad record, or ``"skip"`` and count it in ``.skip_report``.
        streaming: return an ``IterableDataset`` that checks each record as it is read.
        num_proc: read the records (and their media headers) in this many processes.
        progress: show a progress bar while the records are read.

    Returns:
        A ``datasets.Dataset`` (``IterableDataset`` when streaming) with ``.skip_report``.

    Raises:
        BadRecord: (``on_error="raise"``) what ``preference_sample`` refuses.
        ValueError: a ``.json`` list that does not parse, an unknown split, or a stream given with
            ``streaming=False``.

    Example:
        >>> pairs = from_preference_data("pairs.jsonl", media_root="images/", on_error="skip")  # doctest: +SKIP
    """
    import datasets

    options = dict(allow_outside_root=allow_outside_root, system_prompt=system_prompt, max_tiles=max_tiles,
                   num_frames=num_frames)
    if isinstance(path, str | os.PathLike) and Path(path).suffix in (".json", ".jsonl") and Path(path).is_file():
        from data_adapters._conversations import read_json_records

        to_sample = partial(_file_record, media_root=media_root or Path(path).parent, **options)
        return build_dataset(lambda: read_json_records(path), to_sample, source=str(path), on_error=on_error,
                             streaming=streaming, num_proc=num_proc, progress=progress)
    data, source, local_root = load_split(path, split, streaming, config)
    if not streaming and isinstance(data, datasets.IterableDataset):
        raise ValueError(f"{source}: a datasets.IterableDataset (a stream) with streaming=False. Pass "
                         "streaming=True to convert rows as they are read, or give a datasets.Dataset.")
    data = keep_media_encoded(data, [c for c in MEDIA_COLUMNS if c in columns_of(data)])
    to_sample = partial(_table_row, source=source, media_root=media_root or local_root or os.getcwd(), **options)
    if streaming:
        return build_dataset(partial(shard_rows, data), to_sample, source=source, on_error=on_error,
                             streaming=True, shards=table_shards(data))
    return build_dataset(lambda: TableRows(data), to_sample, source=source, on_error=on_error, num_proc=num_proc,
                         progress=progress)
