"""What every adapter shares: bad-record errors, skip accounting, safe media paths, dataset building.

An adapter is two small pieces: code that finds raw records (rows of a file, files in a folder) and a pure
function ``record -> canonical sample``. The function raises ``BadRecord`` for anything wrong with the record;
``build_dataset`` turns that into a stop (``on_error="raise"``) or a counted skip (``on_error="skip"``).
"""

from __future__ import annotations

import itertools
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from plm_tune.sample import table_messages

__all__ = [
    "BadRecord", "OnError", "SHARDS_PER_TABLE", "SkipReport", "build_dataset", "contiguous_shards", "iter_samples",
    "make_sample", "media_part", "resolve_media_path", "stream_rows", "text_part",
]

logger = logging.getLogger("data_adapters")

OnError = Literal["raise", "skip"]
# Shards a list of records (a table's rows, a folder's files) is cut into when it is streamed, so DataLoader
# workers and ranks can share it (each reads whole shards of its own).
SHARDS_PER_TABLE = 64


class BadRecord(ValueError):
    """A record that cannot become a sample.

    Args:
        record: where it is, as the user would find it: ``"captions.csv row 17"``, ``"study/a.dcm"``, an id.
        reason: a short stable code used to group skips (``"missing file"``, ``"no answer text"``, ...).
        detail: what was expected and what was found.
        fix: what the user can do about it.
    """

    def __init__(self, record: str, reason: str, detail: str, fix: str = "") -> None:
        self.record, self.reason, self.detail, self.fix = record, reason, detail, fix
        message = f"{record}: {reason}: {detail}"
        if fix:
            message += f" Fix: {fix}"
        message += ' (Pass on_error="skip" to skip and count such records instead.)'
        super().__init__(message)


@dataclass
class SkipReport:
    """Counts of skipped records by reason, with the first few record names for each."""

    source: str
    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    kept: int = 0
    max_examples: int = 5

    names: dict[str, list[str]] = field(default_factory=dict)  # every skipped record, by reason
    warned: set[str] = field(default_factory=set)  # reasons already in a logged warning

    def add(self, error: BadRecord) -> None:
        self.counts[error.reason] += 1
        self.names.setdefault(error.reason, []).append(error.record)
        names = self.examples.setdefault(error.reason, [])
        if len(names) < self.max_examples:
            names.append(error.record)

    @property
    def skipped(self) -> int:
        return sum(self.counts.values())

    def summary(self, verbose: bool | None = None) -> str:
        """One line per reason: the count and up to 3 short record names (a path's file name); with ``verbose``
        (default: the ``PLM_TUNE_VERBOSE`` environment variable) every record, as named."""
        if not self.counts:
            return f"{self.source}: {self.kept} records, none skipped."
        verbose = verbose_logs() if verbose is None else verbose
        lines = [f"{self.source}: kept {self.kept} records, skipped {self.skipped}:"]
        for reason, n in self.counts.most_common():
            names = self.names.get(reason) or self.examples[reason]
            shown = names if verbose else [short_name(name) for name in names[:3]]
            more = f" (+{n - len(shown)} more)" if n > len(shown) else ""
            lines.append(f"  {n:6d}  {reason}: {', '.join(shown)}{more}")
        if not verbose and any(n > 3 for n in self.counts.values()):
            lines.append(f"  (every name: {_VERBOSE_ENV}=1 or --verbose)")
        return "\n".join(lines)


# plm_tune.quiet_log.VERBOSE_ENV: the same switch (adapters do not import the training side of plm_tune).
_VERBOSE_ENV = "PLM_TUNE_VERBOSE"


def verbose_logs() -> bool:
    """Whether ``PLM_TUNE_VERBOSE`` asks for every record name and every reader note."""
    return os.environ.get(_VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def short_name(record: str) -> str:
    """A record named by an absolute path (a DICOM file) is shown by its file name; other names stay whole."""
    return os.path.basename(record) if os.path.isabs(record) else record


def resolve_media_path(root: str | os.PathLike, relative: str, *, record: str,
                       allow_outside_root: bool = False) -> str:
    """Resolve a media path read from a manifest against the dataset root, refusing escapes.

    Raises:
        BadRecord: the path is absolute or climbs out of ``root`` (``..``, symlinked escapes count too) while
            ``allow_outside_root`` is False, or the file does not exist.
    """
    if not isinstance(relative, str) or not relative:
        raise BadRecord(record, "missing media path", f"expected a file path, got {relative!r}.",
                        "fill the media column for this record.")
    if "\x00" in relative:  # the OS refuses such a path with a bare ValueError naming no file
        raise BadRecord(record, "bad media path", f"{relative!r} contains a NUL character.",
                        "fix the path in the manifest (a NUL usually means a corrupt or binary file).")
    base = Path(root).resolve()
    candidate = Path(relative)
    full = (candidate if candidate.is_absolute() else base / candidate).resolve()
    if not allow_outside_root and base != full and base not in full.parents:
        raise BadRecord(record, "path outside dataset root",
                        f"'{relative}' resolves to '{full}', outside the dataset root '{base}'.",
                        "move the file under the root, or pass allow_outside_root=True if you trust this manifest.")
    if not full.exists():
        raise BadRecord(record, "missing file", f"'{relative}' does not exist (looked for '{full}').",
                        "fix the path in the manifest or restore the file.")
    return str(full)


def iter_samples(records: Iterable[Any], to_sample: Callable[[Any], dict[str, Any] | None], *,
                 on_error: OnError, report: SkipReport) -> Iterator[dict[str, Any]]:
    """Apply ``to_sample`` to each record; raise or count ``BadRecord``s; log the report at the end.

    ``to_sample`` may return None for a record that is legitimately not a sample (a folder's README, say):
    those are neither kept nor counted as skipped.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}.")
    for record in records:
        try:
            sample = to_sample(record)
        except BadRecord as err:
            if on_error == "raise":
                raise
            report.add(err)
            continue
        except ImportError:
            raise  # a missing package is not the record's fault: skipping would drop every record
        except Exception as err:  # anything else is still this record's problem: name it, skip only it
            bad = BadRecord(_name_of(record), f"unexpected {type(err).__name__}", str(err),
                            "report this record's contents if the error is not about the data.")
            if on_error == "raise":
                raise bad from err
            report.add(bad)
            continue
        if sample is not None:
            report.kept += 1
            yield sample
    # A stream reads each shard in a call of its own, and would repeat the running counts once a shard: a call
    # warns when it met a reason not warned of yet; the others' counts go to the info log.
    if set(report.counts) - report.warned:
        report.warned |= set(report.counts)
        logger.warning(report.summary())
    else:
        logger.info(report.summary())


def _name_of(record: Any) -> str:
    """How the adapters' raw records name themselves: ``(where, row)`` pairs, objects with a ``name``, a shard
    and key; otherwise a short repr."""
    if isinstance(record, tuple) and record and isinstance(record[0], str):
        return record[0]
    if isinstance(getattr(record, "name", None), str):
        return record.name
    if getattr(record, "shard", None) is not None and getattr(record, "key", None) is not None:
        return f"{record.shard} key '{record.key}'"
    return repr(record)[:120]


def build_dataset(records: Callable[..., Iterable[Any]], to_sample: Callable[[Any], dict[str, Any] | None], *,
                  source: str, on_error: OnError = "raise", streaming: bool = False,
                  shards: list[Any] | None = None):
    """A ``datasets.Dataset`` (or ``IterableDataset`` when streaming) of canonical samples.

    Records are walked once to build the table (media stay paths: nothing is decoded), so a bad record
    raises here, not mid-training. The returned dataset carries its ``SkipReport`` as ``.skip_report``
    (non-streaming; for streaming, the report fills up as the stream is read and is logged at its end).

    With ``shards`` (streaming only), ``records(some_shards)`` reads the records of a sublist of them, and the
    stream has one data source per shard: ``datasets`` hands each DataLoader worker, and accelerate each
    process, whole shards of its own, so every record is read once, by the process that trains on it.
    Without, streaming lists ``records()`` now (file paths, manifest rows: no media is opened) and cuts the
    list into ``contiguous_shards``; one generator over everything could not be shared by workers or ranks.
    """
    import datasets

    report = SkipReport(source)
    if streaming:
        if shards is None:
            shards, records = contiguous_shards(list(records())), _chained

        def generate(shards: list[Any]) -> Iterator[dict[str, Any]]:
            return iter_samples(records(shards), to_sample, on_error=on_error, report=report)

        dataset = datasets.IterableDataset.from_generator(generate, gen_kwargs={"shards": shards})
    else:
        rows = list(iter_samples(records(), to_sample, on_error=on_error, report=report))
        if not rows:
            raise ValueError(f"{source}: no usable records. {report.summary()}")
        dataset = datasets.Dataset.from_list(rows)
    dataset.skip_report = report
    return dataset


def _chained(shards: list[Sequence[Any]]) -> Iterator[Any]:
    return itertools.chain.from_iterable(shards)


def contiguous_shards(items: Sequence[Any], count: int = SHARDS_PER_TABLE) -> list[Sequence[Any]]:
    """``items`` cut into ``min(count, len(items))`` contiguous slices of near-equal length (one empty slice for
    no items): the shards a stream of them is read in. A ``range`` gives ranges.

    Example:
        >>> contiguous_shards(range(5), count=2)
        [range(0, 2), range(2, 5)]
    """
    pieces = max(1, min(len(items), count))
    bounds = [len(items) * k // pieces for k in range(pieces + 1)]
    return [items[start:stop] for start, stop in itertools.pairwise(bounds)]


def stream_rows(stream: Any, batch_size: int = 64) -> Iterator[dict[str, Any]]:
    """Every row of a ``datasets.IterableDataset``, wherever it is iterated.

    ``for row in stream`` inside a DataLoader worker keeps only that worker's share of the stream's shards
    (``IterableDataset.__iter__`` -> ``_iter_pytorch``); a generator that reads a stream it was handed as its
    own shard (``from_hf_dataset``'s, ``held_out_split``'s) would lose the other workers' shares. ``.iter``
    does not split.
    """
    for batch in stream.iter(batch_size=batch_size):
        yield from (dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True))


def text_part(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def media_part(kind: Literal["image", "video"]) -> dict[str, Any]:
    return {"type": kind, "text": None}


def make_sample(messages: list[dict[str, Any]], *, images: list[Any] | None = None,
                videos: list[Any] | None = None, sample_id: str | None = None,
                max_tiles: int | None = None, num_frames: int | None = None) -> dict[str, Any]:
    """A canonical sample with the same keys and part shapes for every adapter.

    Every adapter builds its samples here so that datasets from different adapters share one schema
    (``plm_tune.sample.sample_features``, so they can be mixed or concatenated): messages in their table form
    (``plm_tune.sample.table_messages``: string content becomes one text part, every part has both ``type``
    and ``text``), a video entry is always ``{"path", "start", "end"}``, and ``max_tiles`` / ``num_frames``
    are present (None: the collator's default).
    """
    return {
        "id": sample_id,
        "messages": table_messages(messages),
        "images": list(images or []),
        "videos": [v if isinstance(v, dict) else {"path": v, "start": None, "end": None} for v in videos or []],
        "max_tiles": max_tiles,
        "num_frames": num_frames,
    }
