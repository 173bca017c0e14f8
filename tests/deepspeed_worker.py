"""One real DeepSpeed training run of the tiny PLM, launched by ``tests/test_deepspeed.py``:

    DS_ACCELERATOR=cpu CUDA_VISIBLE_DEVICES= OMP_NUM_THREADS=1 accelerate launch \
        --config_file recipes/accelerate/zero3.yaml --num_processes 2 --mixed_precision no \
        tests/deepspeed_worker.py --model .cache/tiny-plm --method lora --out /tmp/ds-run

It trains 3 optimizer steps through ``load_model`` and ``build_trainer``, in the recipes' order, and saves
with ``trainer.save_model``. Rank 0 then writes ``report.json`` with what DeepSpeed built: engine and
optimizer types, ZeRO stage, world size, the "auto" values it filled, and which weights were sharded at load.
It also holds the engine optimizer's parameter groups (name, learning rate, parts of their weights), the
losses, the per-part learning rates that PLMMetricsCallback logged, and the generation-eval scores logged at
the last step.

Batches are packed (``padding_free``), ordered by ``train_sampling_strategy="group_by_length"`` and built in a
DataLoader worker process; every rank appends the sample ids of each batch its collator built to
``batches_rank{RANK}.jsonl``, so the test can check that each rank got its own rank-balanced batches.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import TrainerCallback
from trl import SFTConfig

from plm_tune import EvalArguments, ModelArguments, PLMCollator, build_trainer, load_model

LR = 1e-3  # language model
PROJECTOR_LR = 3e-4  # distinct, to see that per-part learning rates survive inside DeepSpeed
MAX_GRAD_NORM = 0.5  # distinct from the default 1.0, to see that the YAML's "auto" clipping is filled
GRAD_ACCUM = 2  # likewise for "auto" gradient accumulation


def _samples(count: int = 8) -> list[dict]:
    """Short image Q&A samples; images of a few shapes so tile counts differ (max_tiles=2)."""
    rng = np.random.default_rng(0)
    sizes = [(56, 56), (120, 60), (60, 120), (90, 90)]
    samples = []
    for i in range(count):
        width, height = sizes[i % len(sizes)]
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        samples.append({
            "messages": [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]},
                {"role": "assistant", "content": f"A noisy picture, number {i}."},
            ],
            "images": [Image.fromarray(pixels)],
            "id": i,
        })
    return samples


class _RecordLogs(TrainerCallback):
    """Keeps every log as the callbacks see it (``state.log_history`` holds a copy made before them)."""

    def __init__(self) -> None:
        self.logs: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs or {}))


class RecordingCollator(PLMCollator):
    """The collator, appending the ids of each batch it builds to a file (it runs in a DataLoader worker).

    With ``text_only`` the samples lose their images first (the question stays): this rank trains on text-only
    batches while the other has images, the case where ZeRO-3 needs every rank to run the vision tower.
    """

    def __init__(self, *args, record: Path, text_only: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.record, self.text_only = record, text_only

    def __call__(self, samples):
        with self.record.open("a") as f:
            f.write(json.dumps([s["id"] for s in samples]) + "\n")
        if self.text_only:
            samples = [_without_images(s) for s in samples]
        batch = super().__call__(samples)
        with self.record.with_suffix(".placeholders").open("a") as f:
            f.write(f"{self.stats['placeholder_media']}\n")
        return batch


def _without_images(sample: dict) -> dict:
    user, answer = sample["messages"]
    text = [part for part in user["content"] if part["type"] == "text"]
    return {**sample, "messages": [{**user, "content": text}, answer], "images": []}


def worker_collator(processor, record: Path | None = None, text_only: bool = False) -> PLMCollator:
    """The worker's collator settings (the test computes sample costs with the same ones)."""
    kwargs = dict(max_length=512, max_tiles=2, padding_free=True)
    if record:
        return RecordingCollator(processor, record=record, text_only=text_only, **kwargs)
    return PLMCollator(processor, **kwargs)


def _part(name: str) -> str:
    return "vision" if "vision_tower" in name else "projector" if "multi_modal_projector" in name else "language"


def _engine_groups(engine) -> list[dict]:
    """The engine optimizer's groups: name and lr as DeepSpeed holds them, and the parts of their parameters.

    ZeRO-1/2 keep the model's parameters of group i in ``bit16_groups[i]``, ZeRO-3 in ``fp16_groups[i]``;
    ``param_groups`` themselves hold DeepSpeed's flat fp32 partitions.
    """
    ds_optimizer = engine.optimizer
    names = {id(p): n for n, p in engine.module.named_parameters()}
    model_groups = getattr(ds_optimizer, "bit16_groups", None) or ds_optimizer.fp16_groups
    groups = []
    for group, params in zip(ds_optimizer.param_groups, model_groups, strict=True):
        groups.append({
            "name": group.get("name"),
            "lr": group["lr"],
            "parts": sorted({_part(names[id(p)]) for p in params}),
            "numel": sum(getattr(p, "ds_numel", p.numel()) for p in params),
        })
    return groups


def _master_dtypes(ds_optimizer) -> list[str]:
    """The dtypes of the weights the ZeRO optimizer steps (its own flat copies: ZeRO-1/2
    ``single_partition_of_fp32_groups``, ZeRO-3 ``fp32_partitioned_groups_flat``)."""
    flat = getattr(ds_optimizer, "single_partition_of_fp32_groups", None) or ds_optimizer.fp32_partitioned_groups_flat
    return sorted({str(t.dtype) for t in flat})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="folder of build_tiny_plm")
    parser.add_argument("--method", choices=("lora", "dora", "qlora", "full"), required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--bf16", action="store_true", help="load in bf16, train with bf16=True (launch with "
                        "--mixed_precision bf16), as on a GPU")
    parser.add_argument("--text-only-rank", type=int, default=None,
                        help="this rank's batches lose their images: it trains on text-only batches")
    cli = parser.parse_args()

    # Training arguments first, as in the recipes: under ZeRO-3 they make from_pretrained shard the weights
    # as they load (deepspeed.zero.Init).
    config = SFTConfig(
        output_dir=str(cli.out / "trainer"),
        max_steps=3,
        per_device_train_batch_size=1,
        gradient_accumulation_steps=GRAD_ACCUM,
        learning_rate=LR,
        lr_scheduler_type="constant",  # the groups' learning rates stay what we set, to compare them exactly
        max_grad_norm=MAX_GRAD_NORM,
        max_length=512,
        bf16=cli.bf16,
        use_cpu=cli.bf16,  # transformers refuses bf16 without a GPU unless told the CPU is meant
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=0,
        dataloader_num_workers=1,
        train_sampling_strategy="group_by_length",
        padding_free=True,
        # Without a GPU accelerate 1.15 picks no backend: it counts one process, and DeepSpeed then rejects
        # train_batch_size (filled for 1 process, run by 2).
        ddp_backend="gloo",
        # A rank stuck in a collective (the hang that text-only batches caused under ZeRO-3) fails the run after
        # this long instead of waiting forever.
        ddp_timeout=600,
    )
    model, processor = load_model(cli.model, method=cli.method, freeze=("vision",),
                                  dtype=torch.bfloat16 if cli.bf16 else torch.float32)
    # ZeRO-3 partitions each weight as from_pretrained builds the module (timm tower included): ds_id marks it.
    sharded_at_load = {n: hasattr(p, "ds_id") for n, p in model.named_parameters()}
    recorder = _RecordLogs()
    # Generation eval at the last step: under ZeRO-3 both processes answer together (synced_gpus).
    rank = os.environ.get("RANK", "0")
    collator = worker_collator(processor, record=cli.out / f"batches_rank{rank}.jsonl",
                               text_only=cli.text_only_rank == int(rank))
    trainer = build_trainer(model, processor, _samples(), _samples(2), args=config, collator=collator,
                            model_args=ModelArguments(projector_lr=PROJECTOR_LR), callbacks=[recorder],
                            eval_args=EvalArguments(generation_eval_steps=3, generation_eval_samples=2,
                                                    eval_max_new_tokens=4))
    trainer.train()

    engine = trainer.deepspeed
    report = {
        "model_wrapped": type(trainer.model_wrapped).__name__,
        "deepspeed": type(engine).__name__,
        "zero_stage": engine.zero_optimization_stage(),
        "optimizer": type(engine.optimizer).__name__,
        "basic_optimizer": type(engine.basic_optimizer).__name__,  # what steps: AdamW, or DeepSpeedCPUAdam
        "world_size": trainer.accelerator.num_processes,
        "sharded_at_load": sharded_at_load,
        "gradient_accumulation_steps": engine.gradient_accumulation_steps(),
        "gradient_clipping": engine.gradient_clipping(),
        "groups": _engine_groups(engine),
        # The dtypes the engine holds the model's weights in (ZeRO-3: its shards) and its optimizer steps.
        "module_dtypes": sorted({str(getattr(p, "ds_tensor", p).dtype) for p in engine.module.parameters()}),
        "master_dtypes": _master_dtypes(engine.optimizer),
        "losses": [log["loss"] for log in recorder.logs if "loss" in log],
        "gen_eval": [log for log in recorder.logs if any(key.startswith("gen_eval/") for key in log)],
        # What PLMMetricsCallback added to each training log: the learning rate of each part.
        "logged_lrs": [
            {k: v for k, v in log.items() if k.startswith("learning_rate/")} for log in recorder.logs if "loss" in log
        ],
    }
    trainer.save_model(str(cli.out / "model"))  # every rank: under ZeRO-3 the gather is collective
    if trainer.is_world_process_zero():
        (cli.out / "report.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
