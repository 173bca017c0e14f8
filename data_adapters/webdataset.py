"""WebDataset tar shards -> a stream of canonical samples, read with the standard library's ``tarfile``.

A shard is a tar file whose members are grouped into records by key: the member path up to the first dot of
its file name. Members of one record are consecutive in the tar (as ``webdataset.TarWriter`` writes them)::

    shard-000.tar
        000017.jpg     image  (.jpg / .jpeg / .png)       or   000017.mp4   video (.mp4 / .webm)
        000017.json    {"caption": "..."} | {"question": "...", "answer": "..."} | {"messages": [...]}
        000017.txt     a caption (read when caption_key="txt")

Record ``000017`` above, read with ``caption_key="json"`` and ``{"question": "Which side?", "answer": "Left."}``
in its json, becomes::

    {"id": "shard-000.tar/000017",
     "messages": [{"role": "user", "content": [{"type": "image", "text": None},
                                               {"type": "text", "text": "Which side?"}]},
                  {"role": "assistant", "content": [{"type": "text", "text": "Left."}]}],
     "images": [b"\\xff\\xd8\\xff..."],   # the .jpg member's bytes: plm_tune.data.media.load_image decodes them
     "videos": [], "max_tiles": None, "num_frames": None}

Images stay encoded bytes until the collator decodes them. A video becomes a file: its bytes are written once
to ``video_dir`` under a content hash and the sample holds ``{"path": ..., "start": None, "end": None}``.
Why a file rather than frames decoded here: the collator owns the frame count (the sample's ``num_frames`` or
its own default) and decodes only the frames it samples; decoded frames would fix that count early and push
tens of MB per sample through the data pipeline. A path also gives these samples the same schema as every
other adapter's, so they ``mix`` with them.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import posixpath
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

from data_adapters._fields import number_text
from data_adapters._json import BAD_JSON, FIXES, JSONRecordError, loads
from data_adapters._probe import check_image
from data_adapters._records import (
    BadRecord,
    OnError,
    SkipReport,
    iter_samples,
    make_sample,
    media_part,
    text_part,
)
from data_adapters._shards import current_rank, expand_shards, select_shards
from plm_tune.data.sample import is_blank, normalize_messages, sample_features
from plm_tune.errors import Reason, reason_of

__all__ = ["expand_shards", "from_webdataset", "select_shards"]

logger = logging.getLogger("data_adapters")

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png")
VIDEO_EXTENSIONS = ("mp4", "webm")


# ---------------------------------------------------------------- reading records
@dataclass(frozen=True)
class _TarRecord:
    shard: str
    key: str
    members: tuple[tuple[str, bytes], ...]  # (extension, content) in tar order


@dataclass(frozen=True)
class _BrokenShard:
    shard: str
    at_key: str | None  # the record the stream broke in, when known
    error: str
    after_key: str | None = None  # the last record kept, when the one the stream broke in has no name


class _CutHeader(tarfile.ReadError):
    """A member header that the stream ends (or breaks) inside; ``name``: the member's name, when the header got
    past it (the name field, its first 100 bytes, ends with a NUL before the cut), else None."""

    def __init__(self, message: str, name: str | None) -> None:
        super().__init__(message)
        self.name = name


class _StrictTarInfo(tarfile.TarInfo):
    """Header parsing that fails loudly on a cut archive.

    ``tarfile`` ends a stream silently when a header past the first is empty, short or garbled, which is
    what a shard cut inside a header (an interrupted download) looks like: the rest of the shard would be
    lost without a word. Only a zero block, the end-of-archive marker, ends the stream here.
    """

    @classmethod
    def frombuf(cls, buf, encoding, errors):
        try:
            return super().frombuf(buf, encoding, errors)
        except tarfile.EOFHeaderError:
            raise
        except (tarfile.EmptyHeaderError, tarfile.TruncatedHeaderError, tarfile.InvalidHeaderError) as err:
            # A short header's bytes are true as far as they go; a garbled one's name may be garbage.
            name = _name_before_cut(buf) if isinstance(err, tarfile.TruncatedHeaderError) else None
            raise _CutHeader(f"cut or corrupt tar header ({err}) before the end-of-archive marker", name) from err


def _name_before_cut(header: bytes) -> str | None:
    end = header.find(b"\0", 0, 100)
    name = header[:end].decode("utf-8", "replace") if end > 0 else None
    # The headers of PAX and GNU long-name extensions name no member: the member's own header comes after.
    return None if name is None or "@PaxHeader" in name or "@LongLink" in name or "PaxHeaders" in name else name


def _member_key(name: str) -> tuple[str, str] | None:
    """``(key, extension)`` of a member path (``dir/000017.seg.png`` -> ``dir/000017``, ``seg.png``); None for a
    name with no extension or a dot-file (macOS "._x.jpg" resource forks would form bogus records)."""
    directory, base = posixpath.split(name)
    if base.startswith(".") or "." not in base:
        return None
    stem, extension = base.split(".", 1)
    return posixpath.join(directory, stem), extension.lower()


def _open(shard: str):
    if "://" in shard:
        import fsspec  # noqa: PLC0415 - a dependency of datasets; only remote shards need it

        return fsspec.open(shard, "rb").open()
    return open(shard, "rb")


def _read_shard(shard: str) -> Iterator[_TarRecord | _BrokenShard]:
    """Records of one shard in order; a read error ends the shard with a ``_BrokenShard``.

    A record is known whole once a member of another key begins (members of a record are consecutive), so when
    the stream breaks every record before the one it broke in is kept, and the ``_BrokenShard`` stands for that
    one, which may be missing members: the record whose member data was cut, or whose member's header was cut
    after its name. A header cut before its name (WebDataset's ``TarWriter`` puts two PAX blocks before each
    member's own header), or an archive ending without its end-of-archive marker, does not say whose member
    began: the record before it is kept if it already has media and text (a ``.json`` / ``.txt``), and is the
    broken one otherwise.
    """
    key, members = None, []
    in_header = True  # reading a header (or skipping a member) rather than a member of `key`
    try:
        # "r|*": one forward pass over a (possibly compressed, possibly remote) stream, no seeking.
        with _open(shard) as stream, tarfile.open(fileobj=stream, mode="r|*", tarinfo=_StrictTarInfo) as tar:
            for info in tar:
                member = _member_key(info.name) if info.isfile() else None
                if member is None:
                    continue
                if member[0] != key:
                    if key is not None:
                        yield _TarRecord(shard, key, tuple(members))
                    key, members = member[0], []
                in_header = False
                members.append((member[1], tar.extractfile(info).read()))
                in_header = True
    except (tarfile.TarError, OSError, EOFError) as err:
        error = f"{type(err).__name__}: {err}"
        cut = _member_key(err.name) if isinstance(err, _CutHeader) and err.name else None
        if in_header and key is not None and (cut[0] != key if cut else _looks_whole(members)):
            yield _TarRecord(shard, key, tuple(members))
            yield _BrokenShard(shard, cut[0] if cut else None, error, after_key=key)
        else:
            yield _BrokenShard(shard, key, error)
        return
    if key is not None:
        yield _TarRecord(shard, key, tuple(members))


def _looks_whole(members: list[tuple[str, bytes]]) -> bool:
    extensions = {extension for extension, _ in members}
    return bool(extensions & {*IMAGE_EXTENSIONS, *VIDEO_EXTENSIONS}) and bool(extensions & {"json", "txt"})


def _read_shards(shards: list[str]) -> Iterator[_TarRecord | _BrokenShard]:
    for shard in shards:
        yield from _read_shard(shard)


# ---------------------------------------------------------------- record -> sample
def _text(where: str, value: Any, field: str) -> str:
    value = number_text(value, field, where)  # a JSON number as written; 1e400 is refused by loads
    if not isinstance(value, str) or is_blank(value):
        shown = " (only invisible characters)" if isinstance(value, str) and value.strip() else ""
        raise BadRecord(where, "missing caption", f"'{field}' must be a non-empty string, got {value!r}{shown}.",
                        f"fill '{field}' for this key, or drop the record from the shard.")
    return value.strip()


def _json_messages(where: str, members: dict[str, bytes], media: list[dict[str, Any]],
                   prompt: str) -> list[dict[str, Any]]:
    if "json" not in members:
        raise BadRecord(where, "missing caption", f"no .json member (members: {', '.join(members)}).",
                        'add a .json member, or pass caption_key="txt" if the captions are in .txt members.')
    try:
        data = loads(members["json"].decode("utf-8-sig"))  # -sig: a byte order mark is not part of the JSON
    except UnicodeDecodeError as err:
        raise BadRecord(where, "undecodable json", f"the .json member is not UTF-8 JSON: {err}.",
                        "rewrite this member as a JSON object, e.g. {\"caption\": \"...\"}.") from err
    except JSONRecordError as err:  # invalid, a duplicate key, a non-finite number, nested too deep
        if err.reason == BAD_JSON:
            raise BadRecord(where, "undecodable json", f"the .json member is not UTF-8 JSON: {err.detail}",
                            "rewrite this member as a JSON object, e.g. {\"caption\": \"...\"}.") from None
        raise BadRecord(where, err.reason, f"the .json member: {err.detail}", FIXES[err.reason]) from None
    if not isinstance(data, dict):
        raise BadRecord(where, "undecodable json", f"expected a JSON object, got {type(data).__name__}.",
                        'write {"caption": ...}, {"question": ..., "answer": ...} or {"messages": [...]}.')
    if "messages" in data:
        return _with_media(where, data["messages"], media)
    if "question" in data or "answer" in data:
        question, answer = _text(where, data.get("question"), "question"), _text(where, data.get("answer"), "answer")
        return [{"role": "user", "content": [*media, text_part(question)]},
                {"role": "assistant", "content": answer}]
    if "caption" in data:
        return [{"role": "user", "content": [*media, text_part(prompt)]},
                {"role": "assistant", "content": _text(where, data["caption"], "caption")}]
    raise BadRecord(where, "missing caption", f"the .json has keys {sorted(data)} but none of 'caption', "
                    "'question' + 'answer' or 'messages'.",
                    'add one of them, or pass caption_key="txt" if the captions are in .txt members.')


def _with_media(where: str, messages: Any, media: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A json conversation; if it names no media, the record's media open the first user message."""
    if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m and "content" in m
                                                 for m in messages):
        raise BadRecord(where, Reason.INVALID_CONVERSATION, f"'messages' must be a list of {{'role', 'content'}} dicts, "
                        f"got {str(messages)[:120]}.", "fix the .json of this key.")
    has_placeholders = any(isinstance(m["content"], list) and any(isinstance(p, dict) and p.get("type")
                                                                  in ("image", "video") for p in m["content"])
                           for m in messages)
    if has_placeholders:
        return messages
    messages = [dict(m) for m in messages]
    for message in messages:
        if message["role"] == "user":
            content = message["content"]
            message["content"] = [*media, *([text_part(content)] if isinstance(content, str) else content)]
            break
    return messages


def _txt_messages(where: str, members: dict[str, bytes], media: list[dict[str, Any]],
                  prompt: str) -> list[dict[str, Any]]:
    if "txt" not in members:
        raise BadRecord(where, "missing caption", f"no .txt member (members: {', '.join(members)}).",
                        'add a .txt caption, or pass caption_key="json" if the text is in .json members.')
    try:
        caption = members["txt"].decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise BadRecord(where, "missing caption", f"the .txt member is not UTF-8: {err}.",
                        "re-encode the caption as UTF-8.") from err
    return [{"role": "user", "content": [*media, text_part(prompt)]},
            {"role": "assistant", "content": _text(where, caption, ".txt")}]


def _video_path(content: bytes, extension: str, video_dir: str) -> str:
    # Named by content: a clip is written once however many epochs, workers or duplicate keys read it.
    return os.path.join(video_dir, f"{hashlib.sha256(content).hexdigest()[:32]}.{extension}")


def _write_once(path: str, content: bytes) -> None:
    if os.path.exists(path):
        return
    with tempfile.NamedTemporaryFile(dir=os.path.dirname(path), delete=False, suffix=".part") as out:
        try:
            out.write(content)
        except OSError:  # e.g. a full disk: leave no partial file behind, and say so
            os.unlink(out.name)
            raise
    os.replace(out.name, path)  # atomic: a concurrent reader never sees a half-written clip


def _to_sample(record: _TarRecord | _BrokenShard, *, caption_key: Literal["json", "txt"], prompt: str | None,
               video_dir: str, max_tiles: int | None, num_frames: int | None) -> dict[str, Any]:
    if isinstance(record, _BrokenShard):
        where = record.shard + (f" at key '{record.at_key}'" if record.at_key else
                                f" after key '{record.after_key}'" if record.after_key else "")
        raise BadRecord(where, "unreadable shard", f"the tar stream broke: {record.error}; this record and the "
                        "rest of the shard are lost (the records before it are read).",
                        "re-download or rewrite the shard; `tar -tf SHARD` shows where it breaks.")
    where = f"{record.shard} key '{record.key}'"
    members = dict(record.members)
    images = [content for ext, content in record.members if ext in IMAGE_EXTENSIONS]
    clips = [(ext, content) for ext, content in record.members if ext in VIDEO_EXTENSIONS]
    if not images and not clips:
        raise BadRecord(where, "no media", f"members are {', '.join('.' + e for e, _ in record.members)}; "
                        f"expected an image (.{', .'.join(IMAGE_EXTENSIONS)}) or a video "
                        f"(.{', .'.join(VIDEO_EXTENSIONS)}) with the same key.",
                        "write the media member under this key, or remove the stray members.")
    for content in images:  # the header now, so a bad member is named by shard and key, not by the collator
        check_image(content, where)
    media = [media_part("image")] * len(images) + [media_part("video")] * len(clips)
    prompt = prompt or ("Describe the image." if images else "Describe the video.")
    read = _json_messages if caption_key == "json" else _txt_messages
    messages = read(where, members, media, prompt)
    videos = [{"path": _video_path(content, ext, video_dir), "start": None, "end": None} for ext, content in clips]
    try:
        normalize_messages({"messages": messages, "images": images, "videos": videos})
    except ValueError as err:
        raise BadRecord(where, reason_of(err) or Reason.INVALID_CONVERSATION, str(err),
                        "fix the 'messages' in this key's .json.") from err
    for video, (_, content) in zip(videos, clips, strict=True):
        _write_once(video["path"], content)
    return make_sample(messages, images=images, videos=videos, sample_id=f"{Path(record.shard).name}/{record.key}",
                       max_tiles=max_tiles, num_frames=num_frames)


def _generate(shards: list[str], *, report: SkipReport, on_error: OnError, records_of: tuple[int, int] | None,
              **options: Any) -> Iterator[dict]:
    # ``shards`` is this DataLoader worker's share: datasets splits the gen_kwargs list across workers, the same
    # way on every rank. With ``records_of=(rank, world_size)`` every rank reads them and keeps its own records
    # (before they are decoded), so each record of this worker's shards is taken by one rank.
    records = _read_shards(shards)
    if records_of is not None:
        rank, world_size = records_of
        records = itertools.islice(records, rank, None, world_size)
    yield from iter_samples(records, partial(_to_sample, **options), on_error=on_error, report=report)


# ---------------------------------------------------------------- the adapter
def from_webdataset(
    urls_or_paths: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    prompt: str | None = None,
    caption_key: Literal["json", "txt"] = "json",
    split_by_rank: bool = False,
    video_dir: str | os.PathLike | None = None,
    on_error: OnError = "raise",
    max_tiles: int | None = None,
    num_frames: int | None = None,
):
    """Stream canonical samples from WebDataset tar shards.

    Args:
        urls_or_paths: shard paths, globs (``"data/*.tar"``), brace patterns (``"data/shard-{000..099}.tar"``,
            expanded as WebDataset does: ``data_adapters._shards``) or ``fsspec`` URLs, or a list of them. See
            ``expand_shards``.
        prompt: the user turn for caption records (default ``"Describe the image."`` /
            ``"Describe the video."``). Question / answer and ``messages`` records bring their own text.
        caption_key: which member holds the text: ``"json"`` (``caption``, ``question`` + ``answer``, or a
            full ``messages`` conversation) or ``"txt"`` (the whole member is the caption).
        split_by_rank: read only this rank's shards (``select_shards`` with the rank of torch.distributed,
            else of torchrun's ``RANK`` / ``WORLD_SIZE``), for a plain torchrun loop. With fewer shards than ranks,
            every rank reads them all and keeps every ``world_size``-th record, with a warning (what accelerate
            does with too few shards, ``plm_tune.training.distributed.stream_accelerator_config``). Leave False under
            accelerate (``build_trainer``, the Trainer, ``accelerator.prepare``): with ``dispatch_batches=False``, which
            ``build_trainer`` sets (TRL's ``SFTTrainer`` forces it too), accelerate gives each process a block of
            the shards itself (``IterableDataset.shard``); splitting here as well, each process would read only
            1 / world_size of its own share.
        video_dir: where video members are written (one file per distinct clip); default: a new temporary
            folder. Use a fast local disk with room for the clips you stream.
        on_error: ``"raise"`` on the first bad record, or ``"skip"`` and count it by reason in
            ``dataset.skip_report`` (main-process iteration) and in the log at the end of each pass.
        max_tiles / num_frames: stamped into every sample (None: the collator's default).

    Returns:
        A ``datasets.IterableDataset`` with one data source per shard, so accelerate gives each process whole
        shards, its DataLoader workers split those between them, and ``.shuffle(seed=..., buffer_size=...)``
        shuffles shard order and records. Every record is read, and its media decoded, by one process only.

    Raises:
        ValueError: no shards / a missing shard / unbalanced braces (see ``expand_shards``).
        BadRecord (while iterating, ``on_error="raise"``): names the shard and key, e.g. an undecodable
            .json, a record with no caption, a key with no media, or a truncated tar (the records before the
            cut are read; the one it cut is the bad record, see ``_read_shard``).

    Example:
        >>> train = from_webdataset("shards/train-{000..015}.tar", caption_key="txt", max_tiles=4)  # doctest: +SKIP
        >>> next(iter(train))["images"][0][:3]                                                      # doctest: +SKIP
        b'\\xff\\xd8\\xff'
    """
    import datasets  # noqa: PLC0415 - keep `import data_adapters` light

    if caption_key not in ("json", "txt"):
        raise ValueError(f"caption_key must be 'json' or 'txt', got {caption_key!r}.")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}.")
    shards = expand_shards(urls_or_paths)
    records_of = None
    if split_by_rank:
        rank, world_size = current_rank()
        if len(shards) >= world_size:
            shards = select_shards(shards, rank=rank, world_size=world_size)
        else:  # as accelerate does with too few shards: every process reads the stream and keeps its slice
            records_of = (rank, world_size)
            logger.warning("from_webdataset: %d shard(s) for %d ranks: every rank reads all of them and keeps every "
                           "%d-th record. Write at least one shard per rank to have each read only its own.",
                           len(shards), world_size, world_size)
    video_dir = os.fspath(video_dir) if video_dir is not None else tempfile.mkdtemp(prefix="plm-tune-videos-")
    os.makedirs(video_dir, exist_ok=True)
    report = SkipReport(f"webdataset ({len(shards)} shard{'s' if len(shards) != 1 else ''}, from {shards[0]})")
    generate = partial(_generate, report=report, on_error=on_error, records_of=records_of, caption_key=caption_key,
                       prompt=prompt, video_dir=video_dir, max_tiles=max_tiles, num_frames=num_frames)
    dataset = datasets.IterableDataset.from_generator(generate, gen_kwargs={"shards": shards}, features=sample_features(images="bytes"))
    dataset.skip_report = report
    return dataset
