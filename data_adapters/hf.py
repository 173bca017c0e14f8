"""Any Hugging Face dataset with an image (or video) column and an answer column.

The model card's radiology set, ``unsloth/Radiology_mini`` (columns ``image``: Image, ``image_id``,
``caption``) is the reference case. One row and the sample it becomes::

    {"image": <PNG, 512x512>, "image_id": "ROCO_00002", "caption": "Axial CT of the chest ..."}

    {"id": "ROCO_00002",
     "messages": [{"role": "user", "content": [{"type": "image", "text": None},
                                               {"type": "text", "text": "Describe this image."}]},
                  {"role": "assistant", "content": [{"type": "text", "text": "Axial CT of the chest ..."}]}],
     "images": [{"bytes": b"\\x89PNG...", "path": "ROCO_00002.png"}], "videos": [],
     "max_tiles": None, "num_frames": None}

Images stay encoded: an ``Image`` column is read as ``Image(decode=False)``, whose ``{"bytes", "path"}``
dict ``plm_tune.data.media.load_image`` decodes at collate time. Keeping the ``Image`` feature instead would decode
every image into a PIL object while the sample table is built, for nothing. The cost: the encoded bytes are
copied into the sample table (streaming=True avoids holding them), and ``images`` entries are dicts, not the
path strings of the file adapters (``data_adapters.mix`` unifies the two). Each image's header is opened with
PIL when the table is built (no pixel decode), so a corrupt image is a named bad record now rather than a
crash mid-training.

Conversational datasets (TRL's ``messages`` + ``images`` or ``image``; LLaMA-Factory's ``messages`` with
``<image>`` placeholders) are read whole with ``messages_column="messages"``. A TRL row and its sample::

    {"messages": [{"role": "user", "content": "What is in the picture?"},
                  {"role": "assistant", "content": "A cat on a sofa."}], "images": [<PNG>]}

    {"messages": [{"role": "user", "content": [{"type": "image", "text": None},
                                               {"type": "text", "text": "What is in the picture?"}]},
                  {"role": "assistant", "content": [{"type": "text", "text": "A cat on a sofa."}]}], ...}
"""

from __future__ import annotations

import os
from functools import partial
from typing import TYPE_CHECKING, Any

from data_adapters._conversations import conversation_messages
from data_adapters._fields import checked_sample, prompt_builder, text_cell
from data_adapters._records import OnError, build_dataset, media_part, text_part
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
from plm_tune.data.sample import is_blank
from plm_tune.errors import Reason

if TYPE_CHECKING:
    import datasets

__all__ = ["from_hf_dataset", "row_to_sample"]

ID_COLUMNS = ("image_id", "id")  # the first one present names rows in errors and becomes the sample id


def row_to_sample(record: tuple[int | str, dict[str, Any]], *, source: str, image_column: str | None,
                  video_column: str | None, question: Any, answer_column: str, id_column: str | None = None,
                  label_names: list[str] | None = None, system_prompt: str | None = None,
                  media_root: str = ".", allow_outside_root: bool = False, max_tiles: int | None = None,
                  num_frames: int | None = None, messages_column: str | None = None) -> dict[str, Any]:
    """``(row index, row)`` -> a canonical sample: the row's media first, then the question; the answer. With
    ``messages_column``: the row's conversation, its media where its placeholders are (else opening the first
    user turn, as TRL puts them). The index may be text (``"4 in shard 2"``): how errors name the row."""
    index, row = record
    sample_id = row.get(id_column) if id_column else None
    where = f"{source} row {index}" + (f" ({id_column}={sample_id!r})" if sample_id is not None else "")
    if messages_column is not None:
        images = _media(row, image_column, where, media_root, allow_outside_root, image_entry)
        videos = _media(row, video_column, where, media_root, allow_outside_root, video_entry)
        messages = conversation_messages(row.get(messages_column), record=where, system_prompt=system_prompt,
                                         counts={"image": len(images), "video": len(videos)})
        return checked_sample(where, messages, images=images, videos=videos,
                              sample_id=None if sample_id is None else str(sample_id),
                              max_tiles=max_tiles, num_frames=num_frames)
    answer = row.get(answer_column)
    if label_names is not None and isinstance(answer, int):  # a ClassLabel; -1 means "no label"
        answer = label_names[answer] if 0 <= answer < len(label_names) else None
    answer = text_cell({answer_column: answer}, answer_column, where, Reason.NO_ANSWER_TEXT)
    text = question(row, where)
    images = _media(row, image_column, where, media_root, allow_outside_root, image_entry)
    videos = _media(row, video_column, where, media_root, allow_outside_root, video_entry)
    user = [media_part("image") for _ in images] + [media_part("video") for _ in videos]
    if not is_blank(text):
        user.append(text_part(text))
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return checked_sample(where, messages, images=images, videos=videos,
                          sample_id=None if sample_id is None else str(sample_id),
                          max_tiles=max_tiles, num_frames=num_frames)


def _media(row, column, where, media_root, allow_outside_root, entry) -> list[Any]:
    if column is None:
        return []
    value = row.get(column)
    if value is None and column == "images":  # TRL's conversational rows: an empty cell is no image
        return []
    values = value if isinstance(value, list) else [value]  # a list column: several media per row
    return [entry(v, f"{where} column '{column}'", media_root, allow_outside_root) for v in values]


def from_hf_dataset(
    name_or_path: str | os.PathLike | datasets.Dataset | datasets.IterableDataset | datasets.DatasetDict,
    *,
    image_column: str | None = "image",
    video_column: str | None = None,
    prompt: str = "Describe this image.",
    answer_column: str = "caption",
    system_prompt: str | None = None,
    messages_column: str | None = None,
    split: str = "train",
    config: str | None = None,
    streaming: bool = False,
    media_root: str | os.PathLike | None = None,
    allow_outside_root: bool = False,
    max_tiles: int | None = None,
    num_frames: int | None = None,
    on_error: OnError = "raise",
    num_proc: int = 1,
    progress: bool = True,
):
    """Canonical samples from a Hugging Face dataset: one row, one question-answer exchange.

    Args:
        name_or_path: a Hub name (``"unsloth/Radiology_mini"``), a folder written by ``save_to_disk``, any
            other local path ``datasets.load_dataset`` reads, or a ``datasets`` object (``Dataset``,
            ``IterableDataset`` or a ``DatasetDict``, from which ``split`` is taken).
        image_column: the image column (an ``Image`` feature, a list of them, or file paths); None for none.
        video_column: a column of video file paths (or a ``Video`` feature of local files); None for none.
        prompt: the question. Exactly a column name: that column, row by row; containing ``{column}``: a
            template filled from the row (``"Describe the {modality} image."``); otherwise fixed text.
        answer_column: the column with the expected answer (a ``ClassLabel`` gives its class name).
        system_prompt: a system message for every sample (default: none, so PLM's default applies).
        messages_column: a column of whole conversations instead of ``prompt`` / ``answer_column``: TRL's and
            LLaMA-Factory's ``messages`` (``role`` / ``content``; the content a string, with ``<image>`` /
            ``<video>`` placeholders where the media go or none, which puts them at the start of the first
            user turn as TRL does; or TRL's list of ``{"type": ...}`` parts). The images come from
            ``image_column``: TRL's ``images`` list (taken when ``image_column`` is left at ``"image"`` and the
            dataset has no such column) or a singular ``image``. ``"auto"``: ``"messages"`` when the dataset has
            that column (TRL's conversational format), else ``prompt`` / ``answer_column``.
        split: which split to read.
        config: the dataset's configuration name (``datasets.load_dataset``'s ``name``; TRL's ``dataset_config``).
        streaming: return an ``IterableDataset`` that converts rows as they are read (nothing held in memory;
            bad records surface while iterating). It keeps the source's shards (its files, or up to 64 row
            ranges of a table), so under several processes accelerate gives each process whole shards of its
            own, and each DataLoader worker reads whole shards of its process's share. A
            ``datasets.IterableDataset`` given needs ``streaming=True``: it is refused, not read into memory.
        media_root: the folder that relative path strings in ``image_column`` / ``video_column`` are resolved
            against; default: the dataset folder for a local dataset, else the current directory.
        allow_outside_root: accept path strings that are absolute or climb out of ``media_root``.
        max_tiles, num_frames: stamped into every sample (None: the collator's default).
        on_error: ``"raise"`` on the first bad record, or ``"skip"`` and count it in ``.skip_report``.
        num_proc: read the rows (and their media headers) in this many processes: the same samples and skips,
            in the same order; worth it for thousands of media files (``benchmarks/scan_speed.py``).
        progress: show a progress bar while the records are read.

    Returns:
        A ``datasets.Dataset`` (``IterableDataset`` when streaming) with ``.skip_report``.

    Raises:
        BadRecord: (``on_error="raise"``) missing / undecodable image, unreadable video, empty answer.
        ValueError: a named column or the split does not exist, ``prompt`` names unknown columns, or a stream
            is given with ``streaming=False``.

    Example:
        >>> ds = from_hf_dataset("unsloth/Radiology_mini", answer_column="caption",       # doctest: +SKIP
        ...                      prompt="You are an expert radiographer. Describe accurately what you see.")
    """
    import datasets

    data, source, local_root = load_split(name_or_path, split, streaming, config)
    if not streaming and isinstance(data, datasets.IterableDataset):
        raise ValueError(f"{source}: a datasets.IterableDataset (a stream) with streaming=False. Building a table "
                         "from it would read every row, and its images, into memory. Pass streaming=True to convert "
                         "rows as they are read, or give a datasets.Dataset.")
    columns = columns_of(data)
    if messages_column == "auto":
        messages_column = "messages" if "messages" in columns else None
    if messages_column is not None and image_column == "image" and "image" not in columns:
        image_column = "images" if "images" in columns else None  # TRL's list column, or none
    checked = (("image_column", image_column), ("video_column", video_column),
               ("messages_column", messages_column) if messages_column else ("answer_column", answer_column))
    for flag, column in checked:
        if column is not None and column not in columns:
            raise ValueError(f"{source}: {flag}={column!r} is not a column (columns: {columns}). "
                             f"Pass {flag}=<one of them>" + (" or None." if flag.startswith(("image", "video")) else "."))
    data = keep_media_encoded(data, [c for c in (image_column, video_column) if c is not None])
    features = data.features or {}
    answer_feature = features.get(answer_column)
    id_column = next((c for c in ID_COLUMNS if c in columns), None)
    to_sample = partial(
        row_to_sample, source=source, image_column=image_column, video_column=video_column,
        question=prompt_builder(prompt, columns), answer_column=answer_column, id_column=id_column,
        label_names=getattr(answer_feature, "names", None), system_prompt=system_prompt,
        media_root=str(media_root or local_root or os.getcwd()), allow_outside_root=allow_outside_root,
        max_tiles=max_tiles, num_frames=num_frames, messages_column=messages_column,
    )
    if streaming:
        return build_dataset(partial(shard_rows, data), to_sample, source=source, on_error=on_error,
                             streaming=True, shards=table_shards(data))
    return build_dataset(lambda: TableRows(data), to_sample, source=source, on_error=on_error, num_proc=num_proc,
                         progress=progress)
