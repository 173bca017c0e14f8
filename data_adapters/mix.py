"""A weighted mixture of sample datasets, each member keeping its own media settings.

    mix([(radiographs, 3.0, {"max_tiles": 16}),        # a datasets.Dataset of images as paths
         (ultrasound, 1.0, {"num_frames": 8})],        # an IterableDataset of video clips
        seed=0)

draws each next sample from member ``i`` with probability ``weight_i / sum(weights)`` (``datasets.
interleave_datasets``), so a radiograph from this mix comes out as::

    {"id": "cxr/0001.png", "messages": [...], "images": [{"bytes": None, "path": "/data/cxr/0001.png"}],
     "videos": [], "max_tiles": 16, "num_frames": None}

Members made by different adapters disagree on column types (image paths, image bytes, an HF ``Image``
column) and on columns (a member with no ``videos`` or ``max_tiles``). Each member is first rewritten, lazily,
into one schema: the canonical columns only, images as ``{"bytes", "path"}`` (what an ``Image(decode=False)``
column holds, and what ``plm_tune.data.media.load_image`` reads), videos as files ``{"path", "start", "end"}`` or,
when every video in the mix is in-table frames (``synthetic_videos``), as lists of frame images.
The mixture is an ``IterableDataset`` whose members are split between DataLoader workers (and, through
``datasets.distributed.split_dataset_by_node`` or accelerate, between ranks) by ``datasets`` itself.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from functools import partial
from typing import Any, Literal

import numpy as np

from data_adapters._records import SHARDS_PER_TABLE, make_sample
from plm_tune.data.media import describe_media
from plm_tune.data.sample import sample_features

__all__ = ["mix", "MEDIA_SETTINGS"]

MEDIA_SETTINGS = ("max_tiles", "num_frames")
Stopping = Literal["first_exhausted", "all_exhausted"]
VideoKind = Literal["files", "frames"]


def _parse(index: int, member: Any) -> tuple[Any, float, dict[str, int]]:
    import datasets  # noqa: PLC0415 - keep `import data_adapters` light

    if not isinstance(member, tuple | list) or len(member) not in (2, 3):
        raise ValueError(f"mix member {index}: expected (dataset, weight) or (dataset, weight, settings), "
                         f"got {type(member).__name__} of length {len(member) if hasattr(member, '__len__') else '?'}.")
    dataset, weight, settings = (*member, {}) if len(member) == 2 else member
    if not isinstance(dataset, datasets.Dataset | datasets.IterableDataset):
        raise ValueError(f"mix member {index}: expected a datasets.Dataset or IterableDataset (what the "
                         f"data_adapters functions return), got {type(dataset).__name__}.")
    if not isinstance(weight, int | float) or isinstance(weight, bool) or not math.isfinite(weight) or weight <= 0:
        raise ValueError(f"mix member {index}: weight must be a positive number, got {weight!r}. "
                         "Remove the member instead of giving it weight 0.")
    unknown = sorted(set(settings) - set(MEDIA_SETTINGS))
    if unknown:
        raise ValueError(f"mix member {index}: unknown setting(s) {unknown}; use {list(MEDIA_SETTINGS)}.")
    for key, value in settings.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"mix member {index}: '{key}' must be a positive integer, got {value!r}.")
    return dataset, float(weight), dict(settings)


def _video_kind(dataset: Any) -> VideoKind | None:
    """What a member's ``videos`` column holds, from its declared features (None: no videos, or unknown)."""
    import datasets  # noqa: PLC0415

    features = dataset.features
    column = features.get("videos") if features is not None else None
    inner = getattr(column, "feature", None)
    if inner is None or (isinstance(inner, datasets.Value) and inner.dtype == "null"):
        return None
    return "frames" if isinstance(inner, datasets.List | datasets.LargeList) else "files"


def _image(entry: Any, where: str) -> dict[str, Any]:
    from datasets import Image  # noqa: PLC0415

    try:
        return Image().encode_example(entry)  # path -> {"path"}, bytes -> {"bytes"}, PIL / array -> PNG bytes
    except (ValueError, TypeError, AttributeError) as err:
        raise ValueError(f"{where}: cannot store image {describe_media(entry)}: {err}. Give images as paths, "
                         "encoded bytes or PIL images.") from err


def _video(entry: Any, where: str, kind: VideoKind) -> Any:
    if kind == "frames":
        if isinstance(entry, np.ndarray) or (isinstance(entry, list | tuple) and entry):
            return [_image(frame, where) for frame in entry]
    elif isinstance(entry, dict) and entry.get("path") is not None:
        start, end = entry.get("start"), entry.get("end")
        return {"path": os.fspath(entry["path"]), "start": None if start is None else float(start),
                "end": None if end is None else float(end)}
    elif isinstance(entry, str | os.PathLike):
        return {"path": os.fspath(entry), "start": None, "end": None}
    expected = "in-table frames" if kind == "frames" else "video files ({'path', 'start', 'end'} or a path)"
    raise ValueError(f"{where}: video {describe_media(entry)} does not fit this mix, which holds {expected}. "
                     "A mix holds one kind: mix in-table frame videos (synthetic_videos) only with members "
                     "whose videos are frames too, or that have none.")


def _canonical(sample: dict[str, Any], *, where: str, settings: dict[str, int], kind: VideoKind) -> dict[str, Any]:
    """One member's sample in the mix schema; the member's settings win over what its adapter stamped."""
    if "messages" not in sample:
        raise ValueError(f"{where}: a sample has no 'messages' (columns: {sorted(sample)}). Build mix members "
                         "with a data_adapters function, which yields canonical samples.")
    sample_id = sample.get("id")
    out = make_sample(
        sample["messages"],
        images=[_image(e, where) for e in sample.get("images") or []],
        sample_id=None if sample_id is None else str(sample_id),
        max_tiles=settings.get("max_tiles", sample.get("max_tiles")),
        num_frames=settings.get("num_frames", sample.get("num_frames")),
    )
    out["videos"] = [_video(e, where, kind) for e in sample.get("videos") or []]
    return out


def mix(members: Sequence[tuple[Any, float] | tuple[Any, float, dict[str, int]]], *, seed: int = 0,
        stopping: Stopping = "first_exhausted"):
    """Interleave datasets of canonical samples, drawing from each in proportion to its weight.

    Args:
        members: ``(dataset, weight)`` or ``(dataset, weight, {"max_tiles": 16, "num_frames": 8})`` tuples.
            A dataset is a ``datasets.Dataset`` or ``IterableDataset`` from any adapter. Weights are relative
            (``3`` and ``1`` draw 75 % / 25 %). Settings given here replace the ones stamped in the samples.
        seed: seeds the draws: the same seed gives the same sequence of samples (per DataLoader worker).
        stopping: ``"first_exhausted"`` ends the mix when any member runs out (proportions hold throughout);
            ``"all_exhausted"`` restarts members that run out until every member has been seen once
            (small members are repeated).

    Returns:
        A ``datasets.IterableDataset`` of canonical samples (give the Trainer ``max_steps``: it has no length).

    Raises:
        ValueError: a malformed member, weight or setting; members with video files mixed with members with
            in-table frame videos. While iterating: a sample with no ``messages`` or an unstorable media entry,
            naming the member.

    Example:
        >>> train = mix([(synthetic_shapes(900), 3), (synthetic_videos(300), 1)], seed=0)  # doctest: +SKIP
    """
    import datasets  # noqa: PLC0415

    if not members:
        raise ValueError("mix needs at least one (dataset, weight) member.")
    if stopping not in ("first_exhausted", "all_exhausted"):
        raise ValueError(f"stopping must be 'first_exhausted' or 'all_exhausted', got {stopping!r}.")
    parsed = [_parse(i, m) for i, m in enumerate(members)]
    kinds = {i: _video_kind(dataset) for i, (dataset, _, _) in enumerate(parsed)}
    if {"files", "frames"} <= set(kinds.values()):
        files = [i for i, k in kinds.items() if k == "files"]
        frames = [i for i, k in kinds.items() if k == "frames"]
        raise ValueError(f"mix members {files} hold video files but members {frames} hold in-table frames; one "
                         "mix holds one kind. Mix them separately, or turn the frames into video files first.")
    kind: VideoKind = "frames" if "frames" in kinds.values() else "files"
    features = sample_features(videos=kind)
    streams = []
    for i, (dataset, _, settings) in enumerate(parsed):
        if isinstance(dataset, datasets.Dataset):
            dataset = dataset.to_iterable_dataset(num_shards=max(1, min(len(dataset), SHARDS_PER_TABLE)))
        if dataset.features is not None:  # unknown features (a plain generator) have nothing to decode
            # An HF Image column stays {"bytes", "path"}: pixels are decoded once, by the collator.
            dataset = dataset.decode(False)
        to_canonical = partial(_canonical, where=f"mix member {i}", settings=settings, kind=kind)
        streams.append(dataset.map(to_canonical, features=features).select_columns(list(features)))
    total = sum(weight for _, weight, _ in parsed)
    return datasets.interleave_datasets(streams, probabilities=[w / total for _, w, _ in parsed], seed=seed,
                                        stopping_strategy=stopping)
