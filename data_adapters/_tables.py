"""Hugging Face dataset tables, shared by the ``hf`` and ``preference`` adapters: loading a split
(``load_split``), its columns (``columns_of``), keeping Image / Video columns encoded (``keep_media_encoded``),
reading rows in order or by shard (``TableRows``, ``table_shards``, ``shard_rows``) and turning an image or video
cell into a checked media entry (``image_entry``, ``video_entry``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from data_adapters._probe import check_image, probe_video
from data_adapters._records import BadRecord, contiguous_shards, resolve_media_path, stream_rows
from plm_tune.errors import Reason

__all__ = [
    "TableRows", "columns_of", "image_entry", "keep_media_encoded", "load_split", "shard_rows", "table_shards",
    "video_entry",
]


def image_entry(value: Any, where: str, media_root: str, allow_outside_root: bool) -> Any:
    if isinstance(value, str):  # a column of file paths: a manifest, so it stays inside media_root
        path = resolve_media_path(media_root, value, record=where, allow_outside_root=allow_outside_root)
        check_image(path, where)
        return path
    if isinstance(value, dict) and value.get("bytes") is not None:
        check_image(value["bytes"], where)
        return {"bytes": value["bytes"], "path": value.get("path")}
    if isinstance(value, dict) and value.get("path"):  # an Image feature pointing at a local file
        if not os.path.exists(value["path"]):
            raise BadRecord(where, Reason.MISSING_FILE, f"the image file '{value['path']}' does not exist.",
                            "restore the file, or re-save the dataset with embedded images.")
        check_image(value["path"], where)
        return {"bytes": None, "path": value["path"]}
    raise BadRecord(where, "missing image", f"expected an image (Image feature or a file path), got "
                    f"{_short(value)}.", "fill the image for this row, or remove the row.")


def video_entry(value: Any, where: str, media_root: str, allow_outside_root: bool) -> str:
    if isinstance(value, dict) and value.get("path") and os.path.exists(value["path"]):
        path = value["path"]  # a Video feature pointing at a local file
    elif isinstance(value, str):
        path = resolve_media_path(media_root, value, record=where, allow_outside_root=allow_outside_root)
    else:
        raise BadRecord(where, "missing video", f"expected a video file path, got {_short(value)}.",
                        "store video paths (relative to media_root) in the column; embedded video bytes are "
                        "not supported: write them to files first.")
    probe_video(path, where)
    return path


def _short(value: Any) -> str:
    if isinstance(value, dict):
        return f"a dict with keys {sorted(value)} and path {value.get('path')!r}"
    return repr(value)[:80]


class TableRows(Sequence):
    """``(row index, row)`` of a table, as a sequence: its length gives the progress bar a total and a parallel
    build reads rows by index, without holding them all (a row carries its images' bytes)."""

    def __init__(self, table: Any) -> None:
        self.table = table

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> tuple[int, dict[str, Any]]:
        return index, self.table[index]

    def __iter__(self) -> Iterator[tuple[int, dict[str, Any]]]:
        return enumerate(self.table)  # in order, in Arrow batches: faster than row by row


def table_shards(data: Any) -> list[Any]:
    """The pieces a stream of ``data`` reads separately: a stream's own shards (by number), or contiguous row
    ranges of a table."""
    import datasets

    if isinstance(data, datasets.IterableDataset):
        return list(range(data.num_shards))
    return contiguous_shards(range(len(data)))


def shard_rows(data: Any, shards: list[Any]) -> Iterator[tuple[int | str, dict[str, Any]]]:
    """``(row index, row)`` of some of ``table_shards(data)``: a table's rows by their row number, a stream's as
    ``"4 in shard 2"`` (its position in the whole stream is not known here) or, for a single shard, ``4``."""
    for shard in shards:
        if isinstance(shard, range):
            yield from zip(shard, data.select(shard), strict=True)
            continue
        rows = stream_rows(data.shard(num_shards=data.num_shards, index=shard))  # already this worker's own
        for index, row in enumerate(rows):
            yield (index if data.num_shards == 1 else f"{index} in shard {shard}"), row


def load_split(name_or_path: Any, split: str, streaming: bool, config: str | None = None) -> tuple[Any, str, str | None]:
    """The split to read, a name for it in messages, and its local folder (if any)."""
    import datasets

    if isinstance(name_or_path, datasets.Dataset | datasets.IterableDataset):
        return name_or_path, "dataset", None
    if isinstance(name_or_path, datasets.DatasetDict | datasets.IterableDatasetDict):
        return _pick_split(name_or_path, split, "dataset"), f"dataset[{split}]", None
    path = Path(name_or_path)
    source = f"{name_or_path}[{split}]"
    if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():  # written by save_to_disk
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            loaded = _pick_split(loaded, split, str(path))
        return loaded, source, str(path)
    if not path.exists():  # a Hub id: the Hub answers, or the process goes offline (no minute of retries)
        from plm_tune.hub import check_hub_access

        check_hub_access(str(name_or_path), repo_type="dataset")
    try:
        loaded = datasets.load_dataset(str(name_or_path), config, split=split, streaming=streaming)
    except ValueError as err:  # an unknown split lists the available ones
        raise ValueError(f"Could not load {source}: {err}") from err
    return loaded, source, str(path) if path.is_dir() else None


def _pick_split(splits: Any, split: str, name: str) -> Any:
    if split not in splits:
        raise ValueError(f"{name} has no split {split!r}; it has {list(splits)}. Pass split=<one of them>.")
    return splits[split]


def columns_of(data: Any) -> list[str]:
    if data.column_names is not None:
        return list(data.column_names)
    first = next(iter(data), None)  # a stream with unknown features: read the first row's keys
    return list(first) if first is not None else []


def keep_media_encoded(data: Any, columns: list[str]) -> Any:
    """Cast Image / Video columns (or lists of them) to ``decode=False``: rows then carry bytes / paths."""
    import datasets

    def undecoded(feature: Any) -> Any:
        if isinstance(feature, datasets.Image | datasets.Video):
            return type(feature)(decode=False)
        if isinstance(feature, datasets.List):
            return datasets.List(undecoded(feature.feature))
        return feature

    for column in columns:
        feature = (data.features or {}).get(column)
        if feature is not None and undecoded(feature) != feature:
            data = data.cast_column(column, undecoded(feature))
    return data
