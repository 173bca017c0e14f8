"""Images in a folder, captioned by a metadata table or labelled by their class sub-folder.

Two layouts, told apart by whether ``root`` holds a metadata file (the Hugging Face ImageFolder convention)::

    captions: root/metadata.jsonl (or .csv)        classes: root/cat/001.jpg
              root/scans/001.png                            root/dog/007.png

A ``metadata.jsonl`` line and the sample it becomes (paths are resolved against ``root``)::

    {"file_name": "scans/001.png", "caption": "A frontal chest radiograph."}

    {"id": "scans/001.png",
     "messages": [{"role": "user", "content": [{"type": "image", "text": None},
                                               {"type": "text", "text": "Describe this image."}]},
                  {"role": "assistant",
                   "content": [{"type": "text", "text": "A frontal chest radiograph."}]}],
     "images": ["/data/root/scans/001.png"], "videos": [], "max_tiles": None, "num_frames": None}

With no metadata file, ``root/dog/007.png`` becomes a question ("What is shown in this image?") answered by
the class name, verbatim: ``"dog"``. Files without an image extension are ignored, as ImageFolder does.

Images are checked when the dataset is built by opening their header with PIL (microseconds; no pixels are
decoded), which catches missing, empty and non-image files. A file whose header is fine but whose body is
truncated is only found when it is decoded (``plm_tune.validate_sample`` or the collator).

The pieces the manifest adapters share live in ``data_adapters._fields`` (``read_table``, ``prompt_builder``,
...) and ``data_adapters._probe`` (``check_image``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
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
from data_adapters._probe import check_image
from data_adapters._records import OnError, build_dataset, resolve_media_path
from plm_tune.errors import Reason

__all__ = ["from_image_folder", "record_to_sample"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
METADATA_FILES = ("metadata.jsonl", "metadata.csv")
CAPTION_COLUMNS = ("caption", "text")  # tried in this order when caption_column is None


def record_to_sample(record: tuple[str, dict[str, Any] | str], *, root: str, question: Callable,
                     answer_column: str, system_prompt: str | None = None, max_tiles: int | None = None,
                     num_frames: int | None = None, allow_outside_root: bool = False) -> dict[str, Any]:
    """One ``(where, row)`` of the metadata table (or of the class walk) -> a canonical sample.

    A class-walk row is ``{"file_name": "dog/007.png", "label": "dog"}`` with ``answer_column="label"``.
    """
    where, raw = record
    row = parse_row(raw, where)
    file_name = row.get("file_name")
    name = f"{where} (file_name={file_name!r})" if file_name and file_name != where else where
    path = resolve_media_path(root, file_name, record=name, allow_outside_root=allow_outside_root)
    check_image(path, name)
    answer = text_cell(row, answer_column, name, Reason.NO_ANSWER_TEXT)
    messages = question_answer(question(row, name), answer, media="image", system_prompt=system_prompt)
    sample_id = row.get("id") if row.get("id") not in (None, "") else file_name
    return checked_sample(name, messages, images=[path], sample_id=str(sample_id), max_tiles=max_tiles,
                          num_frames=num_frames)


def from_image_folder(
    root: str | os.PathLike,
    *,
    prompt: str | None = None,
    caption_column: str | None = None,
    list_classes: bool = False,
    system_prompt: str | None = None,
    max_tiles: int | None = None,
    num_frames: int | None = None,
    on_error: OnError = "raise",
    allow_outside_root: bool = False,
    streaming: bool = False,
    num_proc: int = 1,
    progress: bool = True,
):
    """A dataset of canonical samples from an image folder.

    Args:
        root: the folder. With ``metadata.jsonl`` or ``metadata.csv`` directly inside it: captions mode, one
            sample per row, ``file_name`` relative to ``root``. Without: classes mode, every image under
            ``root/<class>/`` (any depth) is one sample answered by ``<class>``.
        prompt: the question. Captions mode: a fixed text, a column name or a ``{column}`` template (see
            ``prompt_builder``), default ``"Describe this image."``. Classes mode: fixed text, default
            ``"What is shown in this image?"``.
        caption_column: captions mode: the answer column; default ``"caption"``, else ``"text"``.
        list_classes: classes mode: append ``" Answer with one of: cat, dog."`` to the prompt.
        system_prompt: a system message for every sample (default: none, so PLM's default applies).
        max_tiles, num_frames: stamped into every sample (None: the collator's default).
        on_error: ``"raise"`` on the first bad record, or ``"skip"`` and count it in ``.skip_report``.
        allow_outside_root: accept ``file_name``s that are absolute or climb out of ``root``.
        streaming: return an ``IterableDataset`` that checks each record (its media headers) as it is read. The
            table's rows (or the class folders' files) are listed now and cut into up to 64 shards of consecutive rows, so DataLoader workers and
            processes each read whole shards of their own.
        num_proc: read the records (and their media headers) in this many processes: the same samples and skips,
            in the same order; worth it for thousands of files (``benchmarks/scan_speed.py``).
        progress: show a progress bar while the records are read.

    Returns:
        A ``datasets.Dataset`` (``IterableDataset`` when streaming) with ``.skip_report``.

    Raises:
        BadRecord: (``on_error="raise"``) missing / undecodable image, empty caption, path outside ``root``.
        ValueError: both metadata files present, no caption column, no class folders, a bad ``prompt``.

    Example:
        >>> ds = from_image_folder("flowers/", list_classes=True)        # doctest: +SKIP
        >>> ds[0]["messages"][1]["content"][0]["text"]                    # doctest: +SKIP
        'daisy'
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"from_image_folder: root '{root}' is not a folder.")
    found = [root / name for name in METADATA_FILES if (root / name).is_file()]
    if len(found) > 1:
        raise ValueError(f"'{root}' holds both metadata.jsonl and metadata.csv; keep one.")
    options = dict(root=str(root), system_prompt=system_prompt, max_tiles=max_tiles, num_frames=num_frames,
                   allow_outside_root=allow_outside_root)
    if found:
        table = found[0]
        columns = table_columns(table)
        if "file_name" not in columns:
            raise ValueError(f"'{table}' has no 'file_name' column (columns: {columns}). Name the column "
                             "holding each image's path relative to the folder 'file_name'.")
        answer_column = caption_column or next((c for c in CAPTION_COLUMNS if c in columns), None)
        if answer_column not in columns:
            raise ValueError(f"'{table}' has no caption column {answer_column or CAPTION_COLUMNS} "
                             f"(columns: {columns}). Pass caption_column=<the column with the answers>.")
        question = prompt_builder("Describe this image." if prompt is None else prompt, columns)
        to_sample = partial(record_to_sample, question=question, answer_column=answer_column, **options)
        return build_dataset(lambda: read_table(table), to_sample, source=str(table), on_error=on_error,
                             streaming=streaming, num_proc=num_proc, progress=progress)

    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"'{root}' has neither a metadata.jsonl / metadata.csv (captions) nor class "
                         "sub-folders (classification). Add one of them: for captions, a metadata.csv directly "
                         "in the folder with the header 'file_name,caption' and one row per image "
                         "('photo_01.png,A red kite over the beach.', file_name relative to the folder).")
    text = "What is shown in this image?" if prompt is None else prompt
    if list_classes:
        text = f"{text} Answer with one of: {', '.join(classes)}."
    to_sample = partial(record_to_sample, question=lambda row, where: text, answer_column="label", **options)
    return build_dataset(lambda: _class_records(root, classes), to_sample, source=str(root),
                         on_error=on_error, streaming=streaming, num_proc=num_proc, progress=progress)


def _class_records(root: Path, classes: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    for label in classes:
        for path in sorted((root / label).rglob("*")):
            if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith("."):
                relative = path.relative_to(root).as_posix()
                yield relative, {"file_name": relative, "label": label}
