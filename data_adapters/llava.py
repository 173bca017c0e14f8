"""LLaVA / ShareGPT conversation files: a JSON list (``llava_v1_5_mix665k.json``) or JSON lines.

A record and the sample it becomes (``image``: one path or a list; paths are relative to ``image_root``)::

    {"id": "000000033471", "image": "coco/train2017/000000033471.jpg",
     "conversations": [{"from": "human", "value": "<image>\\nWhat are the colors of the bus?"},
                       {"from": "gpt", "value": "The bus is white and red."}]}

    {"id": "000000033471",
     "messages": [{"role": "user", "content": [{"type": "image", "text": None},
                                               {"type": "text", "text": "What are the colors of the bus?"}]},
                  {"role": "assistant", "content": [{"type": "text", "text": "The bus is white and red."}]}],
     "images": ["/data/llava/coco/train2017/000000033471.jpg"], "videos": [],
     "max_tiles": None, "num_frames": None}

Speakers: ``human`` / ``user`` -> user, ``gpt`` / ``assistant`` -> assistant, ``system`` -> system. Each
``<image>`` in a human turn becomes an image part in place (the text around it becomes stripped text parts);
the n-th placeholder takes the n-th image. A record with images but no placeholder gets them all at the start
of its first human turn (LLaVA's convention). Records without ``image`` are text-only samples. A ``video`` key
(LLaVA-Video style) gives one video; such records spell its placeholder ``<video>`` or, when the record has no
images, ``<image>``.

Each image's header is opened with PIL and each video's container header with PyAV when the dataset is built
(no pixels decoded), so missing and non-media files are named bad records now, not crashes mid-training.
"""

from __future__ import annotations

import os
from functools import partial
from typing import Any

from data_adapters._conversations import (
    PLACEHOLDERS,
    conversation_messages,
    media_count,
    read_json_records,
    record_name,
    resolve_images,
    resolve_video,
)
from data_adapters._fields import checked_sample, parse_row
from data_adapters._records import OnError, build_dataset

__all__ = ["from_llava_json", "record_to_sample"]


def record_to_sample(record: tuple[str, dict[str, Any] | str], *, image_root: str | os.PathLike,
                     system_prompt: str | None = None, max_tiles: int | None = None,
                     num_frames: int | None = None, allow_outside_root: bool = False) -> dict[str, Any]:
    """One ``(where, record)`` of a LLaVA file -> a canonical sample (see the module docstring)."""
    where, raw = record
    row = parse_row(raw, where)
    name = record_name(where, row)
    image_value, video_value = row.get("image"), row.get("video")
    n_images, n_videos = media_count(image_value, "image", name), media_count(video_value, "video", name)
    # LLaVA-Video records say <image> for their video.
    placeholders = {"<image>": "video", "<video>": "video"} if n_videos and not n_images else PLACEHOLDERS
    messages = conversation_messages(row.get("conversations"), record=name, placeholders=placeholders,
                                     counts={"image": n_images, "video": n_videos},
                                     system_prompt=system_prompt)
    options = dict(root=image_root, record=name, allow_outside_root=allow_outside_root)
    images = resolve_images(image_value, **options)
    videos = [resolve_video(video_value, **options)[0]] if n_videos else []
    return checked_sample(name, messages, images=images, videos=videos,
                          sample_id=None if row.get("id") is None else str(row["id"]),
                          max_tiles=max_tiles, num_frames=num_frames)


def from_llava_json(
    path: str | os.PathLike,
    *,
    image_root: str | os.PathLike,
    system_prompt: str | None = None,
    max_tiles: int | None = None,
    num_frames: int | None = None,
    on_error: OnError = "raise",
    allow_outside_root: bool = False,
):
    """A dataset of canonical samples from a LLaVA / ShareGPT conversation file.

    Args:
        path: a ``.json`` file holding a list of records, or a ``.jsonl`` file with one record per line.
        image_root: the folder that ``image`` / ``video`` paths are relative to.
        system_prompt: a system message for samples whose conversation has none (default: none, so PLM's
            default applies).
        max_tiles, num_frames: stamped into every sample (None: the collator's default).
        on_error: ``"raise"`` on the first bad record, or ``"skip"`` and count it in ``.skip_report``.
        allow_outside_root: accept media paths that are absolute or climb out of ``image_root``.

    Returns:
        A ``datasets.Dataset`` with ``.skip_report``.

    Raises:
        BadRecord: (``on_error="raise"``) missing / undecodable media, placeholder / media count mismatch,
            empty answer, unknown speaker, path outside ``image_root``, a malformed JSON line.
        ValueError: a ``.json`` list file that does not parse.

    Example:
        >>> ds = from_llava_json("llava_v1_5_mix665k.json", image_root="data/", max_tiles=4)  # doctest: +SKIP
    """
    to_sample = partial(record_to_sample, image_root=image_root, system_prompt=system_prompt,
                        max_tiles=max_tiles, num_frames=num_frames, allow_outside_root=allow_outside_root)
    return build_dataset(lambda: read_json_records(path), to_sample, source=str(path), on_error=on_error)
