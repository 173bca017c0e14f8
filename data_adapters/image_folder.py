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

This module also holds the pieces the other manifest adapters share (``check_image``, ``read_table``,
``prompt_builder``) until they move into ``_records``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import string
from collections.abc import Callable, Collection, Iterator
from functools import partial
from pathlib import Path
from typing import Any

from data_adapters._records import (
    BadRecord,
    OnError,
    build_dataset,
    make_sample,
    media_part,
    resolve_media_path,
    text_part,
)
from plm_tune.sample import normalize_messages

__all__ = [
    "from_image_folder", "record_to_sample",
    # shared with the other manifest adapters
    "check_image", "checked_sample", "parse_row", "prompt_builder", "question_answer", "read_table",
    "table_columns", "text_cell",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
METADATA_FILES = ("metadata.jsonl", "metadata.csv")
CAPTION_COLUMNS = ("caption", "text")  # tried in this order when caption_column is None


# ------------------------------------------------------------------ pieces shared by the manifest adapters
def check_image(entry: str | bytes, record: str) -> None:
    """Open an image's header (a path or encoded bytes) with PIL; ``BadRecord`` if it is not an image."""
    from PIL import Image, UnidentifiedImageError

    source = io.BytesIO(entry) if isinstance(entry, bytes | bytearray) else entry
    what = f"{len(entry)} bytes" if isinstance(entry, bytes | bytearray) else f"'{entry}'"
    try:
        with Image.open(source) as img:
            width, height = img.size
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as err:
        raise BadRecord(record, "undecodable image", f"{what} is not a readable image ({err}).",
                        "re-export it as PNG or JPEG, or remove the record.") from err
    if width < 1 or height < 1:
        raise BadRecord(record, "undecodable image", f"{what} has size {width}x{height}.",
                        "re-export the image.")


def read_table(path: str | os.PathLike) -> Iterator[tuple[str, dict[str, Any] | str]]:
    """Yield ``(where, row)`` for each row of a ``.csv`` or ``.jsonl`` file; ``where`` is ``"name line N"``.

    CSV rows come as dicts of strings. JSONL rows come as their raw text, so that one malformed line becomes
    a ``BadRecord`` of that line (see ``parse_row``) instead of stopping the whole read. Blank lines are
    skipped.
    """
    path = Path(path)
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            for line_no, row in enumerate(csv.DictReader(f), start=2):  # line 1 is the header
                yield f"{path.name} line {line_no}", row
    elif path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                if line.strip():
                    yield f"{path.name} line {line_no}", line
    else:
        raise ValueError(f"'{path}': expected a .csv or .jsonl table, got '{path.suffix}'.")


def table_columns(path: str | os.PathLike) -> list[str]:
    """The columns of a table: the CSV header, or the keys of a JSONL file's first well-formed row."""
    for where, row in read_table(path):
        try:
            return list(parse_row(row, where))
        except BadRecord:
            continue  # reported as a bad record when the rows are read
    raise ValueError(f"'{path}' has no rows.")


def parse_row(row: dict[str, Any] | str, record: str) -> dict[str, Any]:
    """A row from ``read_table`` as a dict; a JSONL line that is not a JSON object is a ``BadRecord``."""
    if isinstance(row, dict):
        return row
    try:
        parsed = json.loads(row)
    except json.JSONDecodeError as err:
        raise BadRecord(record, "bad json", f"the line is not valid JSON ({err}).",
                        "fix or delete the line.") from err
    if not isinstance(parsed, dict):
        raise BadRecord(record, "bad json", f"expected a JSON object, got {type(parsed).__name__}.",
                        "write each record as one {...} object.")
    return parsed


def prompt_builder(prompt: str, columns: Collection[str]) -> Callable[[dict[str, Any], str], str]:
    """How ``prompt`` becomes each row's question. The rule, checked in this order:

    1. ``prompt`` is exactly a column name: that column's value, row by row (``prompt="question"``).
    2. ``prompt`` contains ``{column}`` fields: ``str.format`` over the row
       (``"Describe the {modality} image."``); write ``{{`` / ``}}`` for literal braces.
    3. anything else: the same text for every row.

    Raises:
        ValueError: a ``{field}`` names no column (checked once, here, not per row).
    """
    if prompt in columns:
        def from_column(row: dict[str, Any], record: str) -> str:
            return text_cell(row, prompt, record, "no prompt text")

        return from_column
    fields = {name for _, name, _, _ in string.Formatter().parse(prompt) if name is not None}
    if not fields:
        return lambda row, record: prompt
    roots = {name.split(".")[0].split("[")[0] for name in fields}
    missing = sorted(roots - set(columns))
    if "" in roots or missing:
        raise ValueError(f"prompt={prompt!r} refers to {missing or ['{}']}, which are not columns of this "
                         f"data (columns: {sorted(columns)}). Name a column inside the braces, or write "
                         "{{ and }} for literal braces.")

    def templated(row: dict[str, Any], record: str) -> str:
        for name in roots:
            text_cell(row, name, record, "no prompt text")  # an empty cell is a bad record, not "None"
        return prompt.format_map({name: row[name] for name in roots})

    return templated


def text_cell(row: dict[str, Any], column: str, record: str, reason: str) -> str:
    value = row.get(column)
    if isinstance(value, int | float) and not isinstance(value, bool) and value == value:  # NaN: empty
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise BadRecord(record, reason, f"column '{column}' is {value!r}.",
                        f"fill '{column}' for this record, or remove the record.")
    return value


def checked_sample(record: str, messages: list[dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
    """``make_sample`` plus plm-tune's structural check: a malformed conversation is a ``BadRecord`` now."""
    sample = make_sample(messages, **kwargs)
    try:
        normalize_messages(sample)
    except ValueError as err:
        raise BadRecord(record, "invalid conversation", str(err)) from err
    return sample


def question_answer(question: str, answer: str, *, media: str,
                    system_prompt: str | None) -> list[dict[str, Any]]:
    """One exchange: the media, then the question, answered."""
    user = [media_part(media)] + ([text_part(question)] if question.strip() else [])
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return messages + [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]


# ------------------------------------------------------------------ this adapter
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
    answer = text_cell(row, answer_column, name, "no answer text")
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

    Returns:
        A ``datasets.Dataset`` with ``.skip_report``.

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
        return build_dataset(lambda: read_table(table), to_sample, source=str(table), on_error=on_error)

    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"'{root}' has neither a metadata.jsonl / metadata.csv (captions) nor class "
                         "sub-folders (classification). Add one of them.")
    text = "What is shown in this image?" if prompt is None else prompt
    if list_classes:
        text = f"{text} Answer with one of: {', '.join(classes)}."
    to_sample = partial(record_to_sample, question=lambda row, where: text, answer_column="label", **options)
    return build_dataset(lambda: _class_records(root, classes), to_sample, source=str(root),
                         on_error=on_error)


def _class_records(root: Path, classes: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    for label in classes:
        for path in sorted((root / label).rglob("*")):
            if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith("."):
                relative = path.relative_to(root).as_posix()
                yield relative, {"file_name": relative, "label": label}
