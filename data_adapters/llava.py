"""LLaVA / ShareGPT conversation files (and LLaMA-Factory's multimodal ShareGPT): a JSON list or JSON lines.

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

LLaMA-Factory's layout (``data/mllm_demo.json``: ``messages`` of ``role`` / ``content`` strings, ``images`` and
``videos`` lists, an optional ``system``; paths relative to its ``data`` folder, so ``image_root="data"``)
reads the same way::

    {"messages": [{"role": "user", "content": "<image>Who are they?"},
                  {"role": "assistant", "content": "They're Kane and Gretzka from Bayern Munich."},
                  {"role": "user", "content": "What are they doing?"},
                  {"role": "assistant", "content": "They are celebrating on the soccer field."}],
     "images": ["mllm_demo_data/1.jpg"]}

Speakers: ``human`` / ``user`` -> user, ``gpt`` / ``assistant`` -> assistant, ``system`` -> system. Each
``<image>`` in a human turn becomes an image part in place (the text around it becomes stripped text parts);
the n-th placeholder takes the n-th image. A record with images but no placeholder gets them all at the start
of its first human turn (LLaVA's and TRL's convention). Records without ``image`` are text-only samples. A
``video`` key (LLaVA-Video style) gives one video, ``videos`` any number; such records spell the placeholder
``<video>`` or, when the record has no images, ``<image>``. Qwen-VL's inline ``Picture 1: <img>path</img>`` is
refused (a bad record naming the turn): read as text, its image would silently be lost.

Each image's header is opened with PIL and each video's container header with PyAV when the dataset is built
(no pixels decoded), so missing and non-media files are named bad records now, not crashes mid-training.
"""

from __future__ import annotations

import os
from functools import partial
from typing import Any

from data_adapters._conversations import conversation_sample, read_json_records, record_name
from data_adapters._fields import parse_row
from data_adapters._records import OnError, build_dataset

__all__ = ["from_llava_json", "record_to_sample"]


def record_to_sample(record: tuple[str, dict[str, Any] | str], *, image_root: str | os.PathLike,
                     system_prompt: str | None = None, max_tiles: int | None = None,
                     num_frames: int | None = None, allow_outside_root: bool = False) -> dict[str, Any]:
    """One ``(where, record)`` of a LLaVA or LLaMA-Factory file -> a canonical sample (module docstring)."""
    where, raw = record
    row = parse_row(raw, where)
    return conversation_sample(row, record_name(where, row), root=image_root, system_prompt=system_prompt,
                               max_tiles=max_tiles, num_frames=num_frames, allow_outside_root=allow_outside_root)


def from_llava_json(
    path: str | os.PathLike,
    *,
    image_root: str | os.PathLike,
    system_prompt: str | None = None,
    max_tiles: int | None = None,
    num_frames: int | None = None,
    on_error: OnError = "raise",
    allow_outside_root: bool = False,
    streaming: bool = False,
    num_proc: int = 1,
    progress: bool = True,
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
        streaming: return an ``IterableDataset`` that checks each record (its media headers) as it is read. The
            file's records are read now and cut into up to 64 shards of consecutive rows, so DataLoader workers and
            processes each read whole shards of their own.
        num_proc: read the records (and their media headers) in this many processes: the same samples and skips,
            in the same order; worth it for thousands of files (``benchmarks/scan_speed.py``).
        progress: show a progress bar while the records are read.

    Returns:
        A ``datasets.Dataset`` (``IterableDataset`` when streaming) with ``.skip_report``.

    Raises:
        BadRecord: (``on_error="raise"``) missing / undecodable media, placeholder / media count mismatch,
            empty answer, unknown speaker, path outside ``image_root``, a malformed JSON line.
        ValueError: a ``.json`` list file that does not parse.

    Example:
        >>> ds = from_llava_json("llava_v1_5_mix665k.json", image_root="data/", max_tiles=4)  # doctest: +SKIP
    """
    to_sample = partial(record_to_sample, image_root=image_root, system_prompt=system_prompt,
                        max_tiles=max_tiles, num_frames=num_frames, allow_outside_root=allow_outside_root)
    return build_dataset(lambda: read_json_records(path), to_sample, source=str(path), on_error=on_error,
                         streaming=streaming, num_proc=num_proc, progress=progress)
