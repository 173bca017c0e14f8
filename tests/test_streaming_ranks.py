"""Streams across processes and DataLoader workers: every record read once an epoch, by the process that trains
on it, each shard by one reader.

The two-process runs launch ``tests/streaming_worker.py`` as a user launches a recipe on CPU:

    CUDA_VISIBLE_DEVICES= OMP_NUM_THREADS=1 accelerate launch --multi_gpu --num_processes 2 --mixed_precision no \
        --main_process_port PORT tests/streaming_worker.py --model TINY --source webdataset --data 'DIR/*.tar' \
        --max-steps 8 --workers 2 --out OUT

(``--multi_gpu`` starts the processes with torchrun; without a GPU the worker's ``use_cpu=True`` makes them
DDP over gloo.) 8 shards, 2 processes, 2 DataLoader workers each: every reader has 2 shards. About 35 s a run on
2 cores.
"""

from __future__ import annotations

import io
import json
import math
import os
import socket
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest
from datasets.distributed import split_dataset_by_node
from PIL import Image
from torch.utils.data import DataLoader
from trl import SFTConfig

from data_adapters import from_hf_dataset, from_webdataset
from plm_tune import build_trainer, load_model

ROOT = Path(__file__).resolve().parent.parent
SHARDS, PER_SHARD, WORKERS = 8, 2, 2
EPOCH_STEPS = SHARDS * PER_SHARD // (2 * 2)  # 2 processes x 2 samples a step: 4 steps are one pass
STEPS = 2 * EPOCH_STEPS
# Image sizes by shard. Unshuffled, accelerate gives process 0 shards 0-3 and process 1 shards 4-7: with
# max_tiles=4, a (112, 56) image is 3 tiles with its thumbnail, (168, 56) 4, (56, 56) and (112, 112) 5, so
# process 0 builds 7-tile batches (a shard's two records) while process 1 builds 10-tile ones, at every step.
SIZES = {shard: [(112, 56), (168, 56)] if shard < SHARDS // 2 else [(56, 56), (112, 112)] for shard in range(SHARDS)}


def _png(width: int, height: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _records(shard: int) -> list[tuple[str, bytes, str]]:
    """(key, PNG, caption) of one shard's records; the key names its shard: ``s2-3``."""
    return [(f"s{shard}-{i}", _png(*SIZES[shard][i % 2], seed=10 * shard + i), f"Noise {shard} {i}.")
            for i in range(PER_SHARD)]


def write_tar_shards(folder: Path) -> str:
    """WebDataset shards: ``shard-00S.tar`` with ``KEY.png`` and ``KEY.json`` members. Returns their glob."""
    folder.mkdir(parents=True, exist_ok=True)
    for shard in range(SHARDS):
        with tarfile.open(folder / f"shard-{shard:03d}.tar", "w") as tar:
            for key, png, caption in _records(shard):
                for name, data in ((f"{key}.png", png), (f"{key}.json", json.dumps({"caption": caption}).encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return str(folder / "shard-*.tar")


def write_parquet_files(folder: Path) -> str:
    """A Hugging Face dataset folder of one parquet file per shard (``image``, ``caption``, ``id`` columns)."""
    folder.mkdir(parents=True, exist_ok=True)
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string"),
                                  "id": datasets.Value("string")})
    for shard in range(SHARDS):
        records = _records(shard)
        rows = {"image": [{"bytes": png, "path": None} for _, png, _ in records],
                "caption": [caption for _, _, caption in records], "id": [key for key, _, _ in records]}
        datasets.Dataset.from_dict(rows, features=features).to_parquet(
            folder / f"train-{shard:05d}-of-{SHARDS:05d}.parquet")
    return str(folder)


def _key(sample_id: str) -> str:
    """``shard-002.tar/s2-3`` (webdataset) or ``s2-3`` (hf) -> ``s2-3``."""
    return sample_id.split("/")[-1]


def _shard_of(sample_id: str) -> str:
    return _key(sample_id).split("-")[0]


ALL_IDS = {f"s{shard}-{i}" for shard in range(SHARDS) for i in range(PER_SHARD)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_worker(tiny_plm_path, out, source, data, *options) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")}
    env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(_free_port()),
        str(ROOT / "tests" / "streaming_worker.py"),
        "--model", str(tiny_plm_path), "--source", source, "--data", data, "--max-steps", str(STEPS),
        "--workers", str(WORKERS), "--out", str(out), *options,
    ]
    result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(command)}\n{(result.stdout + result.stderr)[-6000:]}"
    return result


# webdataset: the stream as the adapter gives it; hf: shuffled through a buffer, as the recipes do with streaming.
@pytest.mark.parametrize(("source", "shuffle_buffer"), [("webdataset", 0), ("hf", 3)])
def test_two_processes_and_their_workers_each_train_on_their_own_shards_once_an_epoch(
        source, shuffle_buffer, tiny_plm_path, tmp_path):
    data = write_tar_shards(tmp_path / "shards") if source == "webdataset" else write_parquet_files(tmp_path / "hf")
    out = tmp_path / "run"
    _run_worker(tiny_plm_path, out, source, data, "--shuffle-buffer", str(shuffle_buffer))

    reports = [json.loads((out / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    batches = [[json.loads(line) for line in (out / f"batches_rank{rank}.jsonl").read_text().splitlines()]
               for rank in (0, 1)]
    for report in reports:
        assert report["world_size"] == 2 and report["distributed"] == "ParallelMode.DISTRIBUTED"
        # Each process iterated its own loader over its own block of the source's shards: no batch was
        # dispatched from process 0 (DataLoaderDispatcher), no process read the whole stream to keep a slice
        # of it (IterableDatasetShard).
        assert (report["loader"], report["dataset"], report["num_shards"]) == (
            "DataLoaderShard", "IterableDataset", SHARDS // 2)
    assert [len(rank) for rank in batches] == [STEPS, STEPS]
    reads = [(rank, batch["worker"], batch["epoch"], _key(i)) for rank, lines in enumerate(batches)
             for batch in lines for i in batch["ids"]]
    assert {epoch for *_, epoch, _ in reads} == {0, 1}  # the Trainer's set_epoch reached the workers' streams
    for epoch in (0, 1):
        ids = [key for *_, e, key in reads if e == epoch]
        assert Counter(ids) == Counter(ALL_IDS), epoch  # a pass: every record once, on one process
        readers: dict[str, set] = {}
        for rank, worker, e, key in reads:
            if e == epoch:
                readers.setdefault(_shard_of(key), set()).add((rank, worker))
        assert all(len(who) == 1 for who in readers.values()), readers  # no two readers on one shard
        # every worker of every process read shards of its own (2 each)
        assert Counter(next(iter(who)) for who in readers.values()) == {
            (rank, worker): SHARDS // 4 for rank in (0, 1) for worker in range(WORKERS)}
    order = [[[_key(i) for batch in lines if batch["epoch"] == epoch for i in batch["ids"]] for epoch in (0, 1)]
             for lines in batches]
    tiles = [[batch["tiles"] for batch in rank] for rank in batches]
    if shuffle_buffer:  # a new order each epoch (shards and buffer draws depend on the epoch)
        assert any(epochs[0] != epochs[1] for epochs in order), order
    else:
        # The two processes' batches differed in tile count at every step (concatenating them would fail).
        assert set(tiles[0]) == {7} and set(tiles[1]) == {10}, tiles
    # DDP trained on both: finite losses, and the same updated weights on both processes.
    assert len(reports[0]["losses"]) == STEPS and all(math.isfinite(loss) for loss in reports[0]["losses"])
    assert reports[0]["weights_after"] == reports[1]["weights_after"] != reports[0]["weights_before"]


def test_hf_stream_keeps_its_files_as_shards_for_workers_and_processes(tmp_path):
    stream = from_hf_dataset(write_parquet_files(tmp_path / "hf"), streaming=True)
    assert stream.num_shards == SHARDS
    # Two DataLoader workers read two files each; before, each worker re-split the inner stream and half was lost.
    read = [sample["id"] for sample in DataLoader(stream, batch_size=None, num_workers=2)]
    assert Counter(read) == Counter(ALL_IDS)
    # What accelerate gives process r of 2: whole files, none shared.
    halves = [[sample["id"] for sample in stream.shard(num_shards=2, index=rank)] for rank in (0, 1)]
    assert [{_shard_of(i) for i in half} for half in halves] == [{"s0", "s1", "s2", "s3"}, {"s4", "s5", "s6", "s7"}]
    # A table streamed is cut into row ranges, read in order.
    table = datasets.load_dataset(str(tmp_path / "hf"), split="train")
    streamed = from_hf_dataset(table, streaming=True)
    assert streamed.num_shards == len(table) and [s["id"] for s in streamed] == list(table["id"])
    # A stream given without streaming=True is refused, not read into a table in memory.
    source = datasets.load_dataset(str(tmp_path / "hf"), split="train", streaming=True)
    with pytest.raises(ValueError, match=r"IterableDataset \(a stream\) with streaming=False.*Pass streaming=True"):
        from_hf_dataset(source)
    assert from_hf_dataset(source, streaming=True).num_shards == SHARDS


def test_a_stream_is_never_dispatched_from_process_zero(tiny_plm_path, tmp_path):
    model, processor = load_model(str(tiny_plm_path), method="lora")
    stream = from_webdataset(write_tar_shards(tmp_path / "shards"), video_dir=tmp_path / "videos")

    def args(**accelerator_config):
        return SFTConfig(output_dir=str(tmp_path / "out"), max_steps=1, bf16=False, report_to="none",
                         accelerator_config=accelerator_config or None)

    with pytest.raises(ValueError, match=r"dispatch_batches=True with a streaming train_dataset.*Leave dispatch_b"):
        build_trainer(model, processor, stream, args=args(dispatch_batches=True))
    split = split_dataset_by_node(stream, rank=0, world_size=2)
    with pytest.raises(ValueError, match=r"already split by process.*Pass the whole stream"):
        build_trainer(model, processor, split, args=args())
    # The Trainer asks a stream for no sampler, so length grouping would be dropped without a word: refused.
    grouped = args()
    grouped.train_sampling_strategy = "group_by_length"
    with pytest.raises(ValueError, match=r"group_by_length' with a streaming train_dataset.*IterableDataset\.shuffle"):
        build_trainer(model, processor, stream, args=grouped)
    mine = args()
    trainer = build_trainer(model, processor, stream, args=mine)
    assert trainer.args.accelerator_config.dispatch_batches is False
    assert mine.accelerator_config.dispatch_batches is None  # the caller's settings are not changed
