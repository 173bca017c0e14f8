"""Streams across processes and DataLoader workers: every record read once, by the process that trains on it."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
from PIL import Image
from torch.utils.data import DataLoader

from data_adapters import from_hf_dataset

SHARDS, PER_SHARD = 4, 4
# Image sizes by shard. accelerate gives process 0 shards 0-1 and process 1 shards 2-3: with max_tiles=4, a
# (112, 56) image is 3 tiles with its thumbnail, (168, 56) 4, (56, 56) and (112, 112) 5, so process 0 builds
# 7-tile batches while process 1 builds 10-tile ones, at every step.
SIZES = {0: [(112, 56), (168, 56)], 1: [(112, 56), (168, 56)], 2: [(56, 56), (112, 112)], 3: [(56, 56), (112, 112)]}


def _png(width: int, height: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _records(shard: int) -> list[tuple[str, bytes, str]]:
    """(key, PNG, caption) of one shard's records; the key names its shard: ``s2-3``."""
    return [(f"s{shard}-{i}", _png(*SIZES[shard][i % 2], seed=10 * shard + i), f"Noise {shard} {i}.")
            for i in range(PER_SHARD)]


def write_parquet_files(folder: Path) -> str:
    """A Hugging Face dataset folder of one parquet file per shard (``image``, ``caption``, ``id`` columns)."""
    folder.mkdir(parents=True, exist_ok=True)
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string"),
                                  "id": datasets.Value("string")})
    for shard in range(SHARDS):
        records = _records(shard)
        rows = {"image": [{"bytes": png, "path": None} for _, png, _ in records],
                "caption": [caption for _, _, caption in records], "id": [key for key, _, _ in records]}
        datasets.Dataset.from_dict(rows, features=features).to_parquet(folder / f"train-{shard:05d}-of-00004.parquet")
    return str(folder)


def _key(sample_id: str) -> str:
    """``shard-002.tar/s2-3`` (webdataset) or ``s2-3`` (hf) -> ``s2-3``."""
    return sample_id.split("/")[-1]


def _shard_of(sample_id: str) -> str:
    return _key(sample_id).split("-")[0]


ALL_IDS = {f"s{shard}-{i}" for shard in range(SHARDS) for i in range(PER_SHARD)}


def test_hf_stream_keeps_its_files_as_shards_for_workers_and_processes(tmp_path):
    stream = from_hf_dataset(write_parquet_files(tmp_path / "hf"), streaming=True)
    assert stream.num_shards == SHARDS
    # Two DataLoader workers read two files each; before, each worker re-split the inner stream and half was lost.
    read = [sample["id"] for sample in DataLoader(stream, batch_size=None, num_workers=2)]
    assert Counter(read) == Counter(ALL_IDS)
    # What accelerate gives process r of 2: whole files, none shared.
    halves = [[sample["id"] for sample in stream.shard(num_shards=2, index=rank)] for rank in (0, 1)]
    assert [{_shard_of(i) for i in half} for half in halves] == [{"s0", "s1"}, {"s2", "s3"}]
    # A table streamed is cut into row ranges, read in order.
    table = datasets.load_dataset(str(tmp_path / "hf"), split="train")
    streamed = from_hf_dataset(table, streaming=True)
    assert streamed.num_shards == len(table) and [s["id"] for s in streamed] == list(table["id"])
