"""Real two-process training of the tiny PLM on a stream, launched by ``tests/test_streaming_ranks.py``:

    CUDA_VISIBLE_DEVICES= OMP_NUM_THREADS=1 accelerate launch --num_processes 2 --mixed_precision no \
        tests/streaming_worker.py --model .cache/tiny-plm --source webdataset --data 'shards/*.tar' \
        --max-steps 8 --workers 2 --out /tmp/stream-run

It trains ``--max-steps`` optimizer steps (2 samples per process per step, DDP over gloo) with
``build_trainer`` on ``from_webdataset(--data)`` or ``from_hf_dataset(--data, streaming=True)``, shuffled as the
recipes shuffle a stream when ``--shuffle-buffer`` is given, read by ``--workers`` DataLoader workers per process.
Every process's collator (it runs in the DataLoader workers) appends, per batch, the sample ids it received, the
number of image tiles it built, the DataLoader worker that read them and that worker's epoch (the Trainer sets
it on the stream each epoch) to ``batches_rank{RANK}.jsonl``. Every process also writes ``rank{RANK}.json``: the class of
the data loader the Trainer iterated and of the dataset it read, with that dataset's shard count, and the sum of
its trainable weights before and after training (DDP keeps them equal across processes); rank 0 adds the losses.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from transformers import TrainerCallback
from trl import SFTConfig

from data_adapters import from_hf_dataset, from_webdataset
from plm_tune import PLMCollator, build_trainer, load_model

BATCH = 2  # samples per process per step
MAX_TILES = 4


class RecordingCollator(PLMCollator):
    """The collator, appending the ids and tile count of each batch it builds to a file."""

    def __init__(self, *args, record: Path, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.record = record

    def __call__(self, samples):
        batch = super().__call__(samples)
        tiles = batch["pixel_values"].shape[1] if "pixel_values" in batch else 0  # (1, total_tiles, 3, T, T)
        worker = torch.utils.data.get_worker_info()  # None in the main process (no workers)
        # The epoch the Trainer set on this worker's copy of the stream (accelerate's DataLoaderShard.set_epoch).
        line = {"ids": [s["id"] for s in samples], "tiles": tiles, "worker": None if worker is None else worker.id,
                "epoch": None if worker is None else worker.dataset.epoch}
        with self.record.open("a") as f:
            f.write(json.dumps(line) + "\n")
        return batch


class _Record(TrainerCallback):
    """The losses logged, and what the Trainer's data loader is (it is built inside ``train()``)."""

    def __init__(self) -> None:
        self.report: dict = {"losses": []}

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        self.report.update(loader=type(train_dataloader).__name__, dataset=type(train_dataloader.dataset).__name__,
                           num_shards=getattr(train_dataloader.dataset, "num_shards", None))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.report["losses"].append(logs["loss"])


def _trainable_sum(model) -> float:
    return sum(p.detach().double().sum().item() for p in model.parameters() if p.requires_grad)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="folder of build_tiny_plm")
    parser.add_argument("--source", choices=("webdataset", "hf"), required=True)
    parser.add_argument("--data", required=True, help="shard glob (webdataset) or dataset folder (hf)")
    parser.add_argument("--max-steps", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers per process")
    parser.add_argument("--shuffle-buffer", type=int, default=0, help="shuffle through a buffer this big; 0: don't")
    parser.add_argument("--out", type=Path, required=True)
    cli = parser.parse_args()

    config = SFTConfig(
        output_dir=str(cli.out / "trainer"),
        max_steps=cli.max_steps,
        per_device_train_batch_size=BATCH,
        dataloader_num_workers=cli.workers,
        learning_rate=1e-3,
        max_length=512,
        bf16=False,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=0,
        disable_tqdm=True,
        # Without a GPU accelerate only runs DDP when told to use the CPU (gloo); otherwise each process
        # would train alone, counting 2 processes for the data but syncing no gradients.
        use_cpu=True,
        ddp_backend="gloo",
    )
    model, processor = load_model(cli.model, method="lora", dtype=torch.float32)
    if cli.source == "webdataset":
        train = from_webdataset(cli.data, max_tiles=MAX_TILES, video_dir=cli.out / "videos")
    else:
        train = from_hf_dataset(cli.data, streaming=True, max_tiles=MAX_TILES)
    if cli.shuffle_buffer:  # as the recipes do: one seed on every process
        train = train.shuffle(seed=config.seed, buffer_size=cli.shuffle_buffer)
    rank = os.environ.get("RANK", "0")
    collator = RecordingCollator(processor, max_length=512, record=cli.out / f"batches_rank{rank}.jsonl")
    recorder = _Record()
    trainer = build_trainer(model, processor, train, args=config, collator=collator, callbacks=[recorder])
    before = _trainable_sum(model)
    trainer.train()
    recorder.report.update(world_size=trainer.accelerator.num_processes, distributed=str(config.parallel_mode),
                           weights_before=before, weights_after=_trainable_sum(model))
    (cli.out / f"rank{rank}.json").write_text(json.dumps(recorder.report))


if __name__ == "__main__":
    main()
