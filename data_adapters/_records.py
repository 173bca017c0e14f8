"""What every adapter shares: bad-record errors, skip accounting, safe media paths, dataset building.

An adapter is two small pieces: code that finds raw records (rows of a file, files in a folder) and a pure
function ``record -> canonical sample``. The function raises ``BadRecord`` for anything wrong with the record;
``build_dataset`` turns that into a stop (``on_error="raise"``) or a counted skip (``on_error="skip"``).
A record kept with a change or a reader's warning (a redaction, a non-standard value) is ``note``d instead.

Building a table walks every record once, with a progress bar, in this process or (``num_proc``) in a pool of
forked processes: both run the same step per record (``_attempt``) and file its outcome in record order, so
they keep the same samples and write the same ``SkipReport``.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from plm_tune.data.sample import table_messages
from plm_tune.errors import DataError, Reason
from plm_tune.verbosity import VERBOSE_ENV, is_verbose

__all__ = [
    "BadRecord", "OnError", "SHARDS_PER_TABLE", "SkipReport", "build_dataset", "contiguous_shards", "iter_samples",
    "make_sample", "media_part", "note", "resolve_media_path", "stream_rows", "text_part",
]

logger = logging.getLogger("data_adapters")

OnError = Literal["raise", "skip"]
# Shards a list of records (a table's rows, a folder's files) is cut into when it is streamed, so DataLoader
# workers and ranks can share it (each reads whole shards of its own).
SHARDS_PER_TABLE = 64


class BadRecord(DataError):
    """A record that cannot become a sample.

    Args:
        record: where it is, as the user would find it: ``"captions.csv row 17"``, ``"study/a.dcm"``, an id.
        reason: the code skips are grouped by: a ``plm_tune.errors.Reason`` (``Reason.MISSING_FILE``, the reason
            of the library's error behind it) or, for what only this adapter's format can get wrong, a short
            code of its own (``"bad json"``).
        detail: what was expected and what was found.
        fix: what the user can do about it.
    """

    def __init__(self, record: str, reason: str, detail: str, fix: str = "") -> None:
        self.record = record
        message = f"{record}: {reason}: {detail}"
        if fix:
            message += f" Fix: {fix}"
        message += ' (Pass on_error="skip" to skip and count such records instead.)'
        super().__init__(reason, detail, fix, message=message)

    def __reduce__(self):  # pickled by its fields: a record built in a worker process comes back whole
        return BadRecord, (self.record, self.reason, self.detail, self.fix)


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
    notes: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # kept records' notes: reason -> (record, detail)

    def note(self, record: str, reason: str, detail: str = "") -> None:
        self.notes.setdefault(reason, []).append((record, detail))

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
        verbose = is_verbose() if verbose is None else verbose
        lines = [f"{self.source}: kept {self.kept} records, skipped {self.skipped}:"]
        for reason, n in self.counts.most_common():
            names = self.names.get(reason) or self.examples[reason]
            shown = names if verbose else [short_name(name) for name in names[:3]]
            more = f" (+{n - len(shown)} more)" if n > len(shown) else ""
            lines.append(f"  {n:6d}  {reason}: {', '.join(shown)}{more}")
        if not verbose and any(n > 3 for n in self.counts.values()):
            lines.append(f"  (every name: {VERBOSE_ENV}=1 or --verbose)")
        return "\n".join(lines)


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
        raise BadRecord(record, Reason.MISSING_FILE, f"'{relative}' does not exist (looked for '{full}').",
                        "fix the path in the manifest or restore the file.")
    return str(full)


def note(record: str, reason: str, detail: str = "") -> None:
    """Say that ``record``, being turned into a sample, was kept with a change or a reader's warning.

    Called from inside a ``to_sample`` function (in whichever process builds the record); ``build_dataset`` and
    ``iter_samples`` file it in the ``SkipReport``'s ``notes`` under ``reason``, in record order, where the
    adapter reads them to log one summary line.
    """
    _pending_notes.append((record, reason, detail))


# The notes of the record being built in this process: a record is built start to finish before the next.
_pending_notes: list[tuple[str, str, str]] = []


@dataclass
class _Outcome:
    """What became of one record: a sample (None: not a sample, not a skip), a ``BadRecord`` (with the error
    behind it, in this process only), or a missing package, which stops the build whatever ``on_error``."""

    sample: dict[str, Any] | None = None
    bad: BadRecord | None = None
    cause: BaseException | None = field(default=None, compare=False)
    missing_package: ImportError | None = None
    notes: list[tuple[str, str, str]] = field(default_factory=list)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "cause": None}  # an arbitrary exception may not pickle; its message is in `bad`


def _attempt(to_sample: Callable[[Any], dict[str, Any] | None], record: Any) -> _Outcome:
    """``to_sample(record)``, caught: the one step a serial and a parallel build share."""
    _pending_notes.clear()
    try:
        outcome = _Outcome(sample=to_sample(record))
    except BadRecord as err:
        outcome = _Outcome(bad=err)
    except ImportError as err:  # a missing package is not the record's fault: skipping would drop every record
        outcome = _Outcome(missing_package=err)
    except Exception as err:  # anything else is still this record's problem: name it, skip only it
        outcome = _Outcome(bad=BadRecord(_name_of(record), f"unexpected {type(err).__name__}", str(err),
                                         "report this record's contents if the error is not about the data."),
                           cause=err)
    outcome.notes = list(_pending_notes)
    return outcome


def _collect(outcomes: Iterable[_Outcome], *, on_error: OnError, report: SkipReport) -> Iterator[dict[str, Any]]:
    """File each outcome, in order: keep its sample, or raise / count its ``BadRecord``; log the report at the end."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}.")
    for outcome in outcomes:
        for record, reason, detail in outcome.notes:
            report.note(record, reason, detail)
        if outcome.missing_package is not None:
            raise outcome.missing_package
        if outcome.bad is not None:
            if on_error == "raise" and outcome.cause is not None:
                raise outcome.bad from outcome.cause
            if on_error == "raise":
                raise outcome.bad
            report.add(outcome.bad)
            continue
        if outcome.sample is not None:
            report.kept += 1
            yield outcome.sample
    # A stream reads each shard in a call of its own, and would repeat the running counts once a shard: a call
    # warns when it met a reason not warned of yet; the others' counts go to the info log.
    if set(report.counts) - report.warned:
        report.warned |= set(report.counts)
        logger.warning(report.summary())
    else:
        logger.info(report.summary())


def iter_samples(records: Iterable[Any], to_sample: Callable[[Any], dict[str, Any] | None], *,
                 on_error: OnError, report: SkipReport) -> Iterator[dict[str, Any]]:
    """Apply ``to_sample`` to each record; raise or count ``BadRecord``s; log the report at the end.

    ``to_sample`` may return None for a record that is legitimately not a sample (a folder's README, say):
    those are neither kept nor counted as skipped.
    """
    yield from _collect((_attempt(to_sample, record) for record in records), on_error=on_error, report=report)


# The records and function of the parallel build under way: forked worker processes inherit them, so neither
# is pickled (an adapter's function may be a closure, and a captions table large).
_JOB: tuple[Sequence[Any], Callable[[Any], Any]] | None = None


def _attempt_range(start: int, stop: int) -> list[_Outcome]:
    records, to_sample = _JOB
    return [_attempt(to_sample, records[i]) for i in range(start, stop)]


@contextmanager
def _attempts(records: Sequence[Any], to_sample: Callable[[Any], Any], num_proc: int,
              source: str) -> Iterator[Iterator[_Outcome]]:
    """Each record's ``_Outcome`` in record order: in this process, or in ``num_proc`` forked processes, each
    taking runs of consecutive records (so a video folder's memo of durations mostly hits)."""
    if num_proc <= 1 or len(records) < 2:
        yield (_attempt(to_sample, record) for record in records)
        return
    if "fork" not in multiprocessing.get_all_start_methods():
        raise ValueError(f"{source}: num_proc={num_proc} needs the 'fork' start method, which this platform lacks "
                         "(Windows). Pass num_proc=1.")
    global _JOB
    run = max(1, min(64, len(records) // (8 * num_proc)))  # several runs per process, so the bar moves
    ranges = [(start, min(start + run, len(records))) for start in range(0, len(records), run)]
    executor = ProcessPoolExecutor(num_proc, mp_context=multiprocessing.get_context("fork"))
    finished = False
    try:
        _JOB = (records, to_sample)
        futures = [executor.submit(_attempt_range, *bounds) for bounds in ranges]  # forks every process here
        _JOB = None

        def in_order() -> Iterator[_Outcome]:
            for (start, stop), future in zip(ranges, futures, strict=True):
                try:
                    yield from future.result()
                except BrokenProcessPool as err:
                    raise RuntimeError(
                        f"{source}: a process reading records {start}-{stop - 1} died (a crash in a media "
                        "decoder, or out of memory). Build with num_proc=1 to find the record that crashes.") from err

        yield in_order()
        finished = True
    finally:
        _JOB = None
        # On a raise (the first bad record) do not wait for the rest of the scan.
        executor.shutdown(wait=finished, cancel_futures=True)


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
                  shards: list[Any] | None = None, num_proc: int = 1, progress: bool = True):
    """A ``datasets.Dataset`` (or ``IterableDataset`` when streaming) of canonical samples.

    Records are walked once to build the table (media stay paths: only headers are read), with a progress bar, so
    a bad record raises here, not mid-training. The returned dataset carries its ``SkipReport`` as
    ``.skip_report`` (non-streaming; for streaming, the report fills up as the stream is read and is logged at
    its end).

    With ``shards`` (streaming only), ``records(some_shards)`` reads the records of a sublist of them, and the
    stream has one data source per shard: ``datasets`` hands each DataLoader worker, and accelerate each
    process, whole shards of its own, so every record is read once, by the process that trains on it.
    Without, streaming lists ``records()`` now (file paths, manifest rows: no media is opened) and cuts the
    list into ``contiguous_shards``; one generator over everything could not be shared by workers or ranks.

    Args:
        num_proc: build the table in this many forked processes (record order, samples and skip report as with
            1). Worth it when ``to_sample`` reads files (headers, a decoded frame); ``to_sample`` must keep no
            state the build needs afterwards (report through ``note``). Not for streams.
        progress: show a progress bar over the records.
    """
    import datasets

    if num_proc < 1 or (streaming and num_proc > 1):
        raise ValueError(f"{source}: num_proc must be 1 or more, and 1 for a stream (its records are read as it "
                         f"is iterated, by the DataLoader workers); got num_proc={num_proc}, streaming={streaming}.")
    report = SkipReport(source)
    if streaming:
        if shards is None:
            shards, records = contiguous_shards(list(records())), _chained

        def generate(shards: list[Any]) -> Iterator[dict[str, Any]]:
            return iter_samples(records(shards), to_sample, on_error=on_error, report=report)

        dataset = datasets.IterableDataset.from_generator(generate, gen_kwargs={"shards": shards})
    else:
        from tqdm.auto import tqdm

        found = records()
        found = found if isinstance(found, Sequence) else list(found)  # its length, for the bar
        with (_attempts(found, to_sample, num_proc, source) as attempts,
              tqdm(attempts, total=len(found), desc="Reading records", unit="record", disable=not progress) as bar):
            rows = list(_collect(bar, on_error=on_error, report=report))
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
    (``plm_tune.data.sample.sample_features``, so they can be mixed or concatenated): messages in their table form
    (``plm_tune.data.sample.table_messages``: string content becomes one text part, every part has both ``type``
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
