"""Videos in a folder with an annotations table: whole videos or timed segments, captioned or questioned.

The table (``annotations.csv`` or ``.jsonl`` inside ``root``) has a ``file`` column (relative to ``root``),
optional ``start`` / ``end`` in seconds, and either ``caption`` or ``question`` + ``answer``. A CSV row and
the sample it becomes::

    file,start,end,caption
    kitchen/0001.mp4,2.0,6.5,A person cracks an egg into a bowl.

    {"id": "kitchen/0001.mp4[2.0-6.5]",
     "messages": [{"role": "user", "content": [{"type": "video", "text": None},
                                               {"type": "text", "text": "Describe this video."}]},
                  {"role": "assistant",
                   "content": [{"type": "text", "text": "A person cracks an egg into a bowl."}]}],
     "images": [], "videos": [{"path": "/data/root/kitchen/0001.mp4", "start": 2.0, "end": 6.5}],
     "max_tiles": None, "num_frames": None}

Every video's container header is opened with PyAV when the table is built (about a millisecond per file, once
per file however many segments it has; no frame is decoded), to read its duration and catch unreadable files,
zero-frame files and segments that start past the end.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import Any

from data_adapters._fields import (
    checked_sample,
    parse_row,
    prompt_builder,
    question_answer,
    read_table,
    table_columns,
    text_cell,
)
from data_adapters._probe import clip_times, probe_video
from data_adapters._records import BadRecord, OnError, build_dataset, resolve_media_path
from plm_tune.errors import Reason

__all__ = ["from_video_folder", "record_to_sample"]

FILE_COLUMNS = ("file", "file_name")  # file_name: the Hugging Face VideoFolder spelling


def record_to_sample(record: tuple[str, dict[str, Any] | str], *, root: str, question: Any,
                     answer_column: str, durations: dict[str, float | BadRecord],
                     system_prompt: str | None = None, max_tiles: int | None = None,
                     num_frames: int | None = None, allow_outside_root: bool = False) -> dict[str, Any]:
    """One ``(where, row)`` of the annotations table -> a canonical sample with one video (or clip).

    ``durations`` memoises ``probe_video`` per file (a table often holds many segments of one video).
    """
    where, raw = record
    row = parse_row(raw, where)
    file = next((row[c] for c in FILE_COLUMNS if row.get(c)), None)
    name = f"{where} (file={file!r})" if file else where
    path = resolve_media_path(root, file, record=name, allow_outside_root=allow_outside_root)
    if path not in durations:
        try:
            durations[path] = probe_video(path, name)
        except BadRecord as err:
            durations[path] = err
    if isinstance(durations[path], BadRecord):
        err = durations[path]
        raise BadRecord(name, err.reason, err.detail, err.fix)
    start, end = clip_times(row.get("start"), row.get("end"), durations[path], name)
    answer = text_cell(row, answer_column, name, Reason.NO_ANSWER_TEXT)
    messages = question_answer(question(row, name), answer, media="video", system_prompt=system_prompt)
    sample_id = row.get("id")
    if sample_id in (None, ""):  # a file can have many segments: the times make the id unique
        sample_id = file if start is None and end is None else f"{file}[{_seconds(start)}-{_seconds(end)}]"
    return checked_sample(name, messages, videos=[{"path": path, "start": start, "end": end}],
                          sample_id=str(sample_id), max_tiles=max_tiles, num_frames=num_frames)


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


def from_video_folder(
    root: str | os.PathLike,
    *,
    annotations: str = "annotations.csv",
    prompt: str | None = None,
    system_prompt: str | None = None,
    max_tiles: int | None = None,
    num_frames: int | None = None,
    on_error: OnError = "raise",
    allow_outside_root: bool = False,
    streaming: bool = False,
    num_proc: int = 1,
    progress: bool = True,
):
    """A dataset of canonical video samples from a folder and its annotations table.

    Args:
        root: the folder; ``file`` paths in the table are relative to it.
        annotations: the table's file name inside ``root`` (``.csv`` or ``.jsonl``).
        prompt: the question. Default: the ``question`` column when the table has one, else
            ``"Describe this video."``. A column name, a ``{column}`` template or fixed text (see
            ``data_adapters._fields.prompt_builder``).
        system_prompt: a system message for every sample (default: none, so PLM's default applies).
        max_tiles, num_frames: stamped into every sample (None: the collator's default).
        on_error: ``"raise"`` on the first bad record, or ``"skip"`` and count it in ``.skip_report``.
        allow_outside_root: accept ``file`` paths that are absolute or climb out of ``root``.
        streaming: return an ``IterableDataset`` that checks each record (its media headers) as it is read. The
            table's rows are read now and cut into up to 64 shards of consecutive rows, so DataLoader workers and
            processes each read whole shards of their own.
        num_proc: read the records (and their video headers) in this many processes: the same samples and skips,
            in the same order; worth it for thousands of files (``benchmarks/scan_speed.py``).
        progress: show a progress bar while the records are read.

    Returns:
        A ``datasets.Dataset`` (``IterableDataset`` when streaming) with ``.skip_report``.

    Raises:
        BadRecord: (``on_error="raise"``) missing / unreadable / zero-frame video, end before start, start
            past the end of the video, empty answer, path outside ``root``.
        ValueError: no table, or the table lacks a file column or an answer column.

    Example:
        >>> ds = from_video_folder("clips/", annotations="train.jsonl", num_frames=16)   # doctest: +SKIP
    """
    root = Path(root)
    table = root / annotations
    if not table.is_file():
        raise ValueError(f"from_video_folder: no annotations table '{table}'. Pass annotations=<file name "
                         "in root> (a .csv or .jsonl with file, start, end and caption or question/answer "
                         "columns).")
    columns = table_columns(table)
    if not any(c in columns for c in FILE_COLUMNS):
        raise ValueError(f"'{table}' has no 'file' column (columns: {columns}). Name the column holding each "
                         "video's path relative to the folder 'file'.")
    answer_column = next((c for c in ("answer", "caption") if c in columns), None)
    if answer_column is None:
        raise ValueError(f"'{table}' has neither an 'answer' nor a 'caption' column (columns: {columns}).")
    if prompt is None:
        prompt = "question" if "question" in columns else "Describe this video."
    to_sample = partial(
        record_to_sample, root=str(root), question=prompt_builder(prompt, columns),
        answer_column=answer_column, durations={}, system_prompt=system_prompt, max_tiles=max_tiles,
        num_frames=num_frames, allow_outside_root=allow_outside_root,
    )
    return build_dataset(lambda: read_table(table), to_sample, source=str(table), on_error=on_error,
                         streaming=streaming, num_proc=num_proc, progress=progress)
