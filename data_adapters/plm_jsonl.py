"""perception_models' own training format (``apps/plm/docs/training.md``), read and written.

One JSON object per line: ``image`` (a path or a list of paths) or ``video`` (one path, with optional
``start_time`` / ``end_time`` in seconds), and ``conversations`` of ``human`` / ``assistant`` turns. A line
and the sample it becomes (paths are relative to ``media_root``)::

    {"video": "ego/0007.mp4", "start_time": 3.0, "end_time": 9.5,
     "conversations": [{"from": "human", "value": "<video>\\nWhat does the person pick up?"},
                       {"from": "assistant", "value": "A red mug."}]}

    {"id": None,
     "messages": [{"role": "user", "content": [{"type": "video", "text": None},
                                               {"type": "text", "text": "What does the person pick up?"}]},
                  {"role": "assistant", "content": [{"type": "text", "text": "A red mug."}]}],
     "images": [], "videos": [{"path": "/data/plm/ego/0007.mp4", "start": 3.0, "end": 9.5}],
     "max_tiles": None, "num_frames": None}

Region-task lines (``bbox`` / ``bbox_map``) are refused as bad records: PLM's trainer rewrites their
conversation with the boxes, and reading them without that would train on the wrong text.

Placeholders (``<image>``, ``<video>``; a video-only line may say ``<image>``) become media parts in place;
a line without any gets its media at the start of the first human turn, which is where PLM's trainer puts a
single image or video. A line with ``text`` instead of ``conversations`` is a caption: the media, then the
text as the answer. Reading also accepts LLaVA's speaker names (``gpt``, ``user``, ``system``) and an ``id``;
writing emits only ``human`` / ``assistant``, as PLM's trainer requires.

Round trip: ``from_plm_jsonl(to_plm_jsonl(samples))`` gives back the same messages, image paths, video clips
and ids for every sample the format can express (paths, not pixels; one video or any number of images, not
both; no system message). ``max_tiles`` / ``num_frames`` are not part of the format: pass them to
``from_plm_jsonl``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import Any

from data_adapters._conversations import conversation_sample, media_count, read_json_records, record_name
from data_adapters._fields import parse_row
from data_adapters._probe import clip_times
from data_adapters._records import BadRecord, OnError, build_dataset
from plm_tune.data.sample import normalize_messages

__all__ = ["from_plm_jsonl", "to_plm_jsonl", "record_to_sample", "sample_to_record"]

TOKENS = {"image": "<image>", "video": "<video>"}
SPEAKER_OF = {"user": "human", "assistant": "assistant"}


def record_to_sample(record: tuple[str, dict[str, Any] | str], *, media_root: str | os.PathLike,
                     system_prompt: str | None = None, max_tiles: int | None = None,
                     num_frames: int | None = None, allow_outside_root: bool = False) -> dict[str, Any]:
    """One ``(where, line)`` of a PLM jsonl file -> a canonical sample (see the module docstring)."""
    where, raw = record
    row = parse_row(raw, where)
    name = record_name(where, row)
    region = [key for key in ("bbox", "bbox_map") if key in row]
    if region:
        raise BadRecord(name, "region task", f"the line has {region}: PLM's region tasks (RCap, RTLoc, "
                        "RDCap, image regions) rewrite the conversation with the boxes; plm-tune does not.",
                        "drop these lines, or draw the region into the question yourself.")
    if media_count(row.get("image"), "image", name) and media_count(row.get("video"), "video", name):
        raise BadRecord(name, "image and video", "the line has both 'image' and 'video'; PLM's trainer reads "
                        "only the image.", "split it into an image line and a video line.")
    if row.get("conversations") is None and row.get("text") is not None:  # a caption line
        row = {**row, "conversations": [{"from": "human", "value": ""}, {"from": "assistant", "value": row["text"]}]}

    def timed(path: str, duration: float) -> dict[str, Any]:
        start, end = clip_times(row.get("start_time"), row.get("end_time"), duration, name)
        return {"path": path, "start": start, "end": end}

    return conversation_sample(row, name, root=media_root, system_prompt=system_prompt, max_tiles=max_tiles,
                               num_frames=num_frames, allow_outside_root=allow_outside_root, video_entry=timed)


def from_plm_jsonl(
    path: str | os.PathLike,
    *,
    media_root: str | os.PathLike,
    system_prompt: str | None = None,
    max_tiles: int | None = None,
    num_frames: int | None = None,
    on_error: OnError = "raise",
    allow_outside_root: bool = False,
    streaming: bool = False,
    num_proc: int = 1,
    progress: bool = True,
):
    """A dataset of canonical samples from a perception_models jsonl file.

    Args:
        path: the ``.jsonl`` file.
        media_root: the folder ``image`` / ``video`` paths are relative to (PLM's ``root_dir``).
        system_prompt: a system message for every sample (default: none, so PLM's default applies).
        max_tiles, num_frames: stamped into every sample (None: the collator's default).
        on_error: ``"raise"`` on the first bad record, or ``"skip"`` and count it in ``.skip_report``.
        allow_outside_root: accept media paths that are absolute or climb out of ``media_root``.
        streaming: return an ``IterableDataset`` that checks each record (its media headers) as it is read. The
            file's records are read now and cut into up to 64 shards of consecutive rows, so DataLoader workers and
            processes each read whole shards of their own.
        num_proc: read the records (and their media headers) in this many processes: the same samples and skips,
            in the same order; worth it for thousands of files (``benchmarks/scan_speed.py``).
        progress: show a progress bar while the records are read.

    Returns:
        A ``datasets.Dataset`` (``IterableDataset`` when streaming) with ``.skip_report``.

    Raises:
        BadRecord: (``on_error="raise"``) missing / undecodable media, placeholder / media count mismatch,
            empty answer, bad or out-of-range ``start_time`` / ``end_time``, both image and video, path
            outside ``media_root``, a region-task line, a malformed line.

    Example:
        >>> ds = from_plm_jsonl("sft.jsonl", media_root="/datasets/plm", num_frames=16)    # doctest: +SKIP
    """
    to_sample = partial(record_to_sample, media_root=media_root, system_prompt=system_prompt,
                        max_tiles=max_tiles, num_frames=num_frames, allow_outside_root=allow_outside_root)
    return build_dataset(lambda: read_json_records(path), to_sample, source=str(path), on_error=on_error,
                         streaming=streaming, num_proc=num_proc, progress=progress)


def sample_to_record(sample: dict[str, Any], *,
                     media_root: str | os.PathLike | None = None) -> dict[str, Any]:
    """A canonical sample -> one PLM jsonl line (a dict), with explicit placeholders where the media are.

    Media parts are written as ``<image>`` / ``<video>`` in place, parts of a message joined by newlines.
    ``from_plm_jsonl`` reads them back in place; PLM's own trainer keeps multi-image placeholders in place but
    moves a single image or video to the start of the first human turn (where the adapters put it anyway).

    Raises:
        ValueError: the sample holds what the format cannot: a system message, both images and videos, more
            than one video, or media that are not file paths (PIL images, bytes, frame arrays).
    """
    turns = normalize_messages(sample)
    if turns[0].role == "system":
        raise ValueError("PLM's jsonl has no system turn (its trainer applies its own system prompt). Drop "
                         "the system message, or build the samples without system_prompt.")
    images, videos = list(sample.get("images") or []), list(sample.get("videos") or [])
    if images and videos:
        raise ValueError(f"{len(images)} image(s) and a video in one sample: a PLM jsonl line holds images "
                         "or one video. Split the sample.")
    if len(videos) > 1:
        raise ValueError(f"{len(videos)} videos in one sample: a PLM jsonl line holds one video.")
    line: dict[str, Any] = {} if sample.get("id") is None else {"id": sample["id"]}
    if images:
        paths = [_relative(_image_path(entry), media_root) for entry in images]
        line["image"] = paths[0] if len(paths) == 1 else paths
    if videos:
        entry = videos[0] if isinstance(videos[0], dict) else {"path": videos[0]}
        if not isinstance(entry.get("path"), str | os.PathLike):
            raise ValueError(f"the video is {type(videos[0]).__name__}, not a file path: PLM's jsonl stores "
                             "paths. Write the frames to a video file first.")
        line["video"] = _relative(entry["path"], media_root)
        for key, value in (("start_time", entry.get("start")), ("end_time", entry.get("end"))):
            if value is not None:
                line[key] = value
    line["conversations"] = [
        {"from": SPEAKER_OF[turn.role],
         "value": "\n".join(TOKENS[p.kind] if p.kind != "text" else p.text.strip() for p in turn.parts)}
        for turn in turns
    ]
    return line


def to_plm_jsonl(samples: Iterable[dict[str, Any]], path: str | os.PathLike, *,
                 media_root: str | os.PathLike | None = None) -> int:
    """Write canonical samples as a PLM jsonl file; return the number of lines written.

    Args:
        samples: canonical samples (a list, or a ``datasets.Dataset`` of them).
        path: the ``.jsonl`` file to write.
        media_root: write media paths relative to this folder (PLM's ``root_dir``); None: as they are.

    Raises:
        ValueError: naming the sample (index and id), for anything ``sample_to_record`` refuses, or a media
            path outside ``media_root``.

    Example:
        >>> samples = from_llava_json("mix.json", image_root="data/")                  # doctest: +SKIP
        >>> to_plm_jsonl(samples, "mix.jsonl", media_root="data/")                       # doctest: +SKIP
    """
    written = 0
    with open(Path(path), "w", encoding="utf-8") as f:
        for i, sample in enumerate(samples):
            try:
                line = sample_to_record(sample, media_root=media_root)
            except ValueError as err:
                who = f"sample {i}" + (f" (id={sample['id']!r})" if sample.get("id") is not None else "")
                raise ValueError(f"to_plm_jsonl: {who}: {err}") from err
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
            written += 1
    return written


def _image_path(entry: Any) -> str | os.PathLike:
    if isinstance(entry, dict) and entry.get("bytes") is None and entry.get("path"):
        return entry["path"]
    if isinstance(entry, str | os.PathLike):
        return entry
    what = "a dict with bytes" if isinstance(entry, dict) else type(entry).__name__
    raise ValueError(f"an image is {what}, not a file path: PLM's jsonl stores paths. Save the images to "
                     "files first.")


def _relative(path: str | os.PathLike, media_root: str | os.PathLike | None) -> str:
    if media_root is None:
        return os.fspath(path)
    relative = os.path.relpath(os.path.realpath(path), os.path.realpath(media_root))
    if relative == ".." or relative.startswith(".." + os.sep):
        raise ValueError(f"'{os.fspath(path)}' is outside media_root '{os.fspath(media_root)}'. Pass the "
                         "folder that holds all the media as media_root, or media_root=None to write paths "
                         "as they are.")
    return Path(relative).as_posix()
