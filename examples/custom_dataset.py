"""Finetune PLM with LoRA on your own records, through the Python API: records -> samples -> train -> eval -> save.

Your records can be anything: rows of a CSV, a list of dicts from a database, a JSON export. All plm-tune
needs is one canonical sample per record, written by a plain generator function. This is the whole format
(``plm_tune.data.sample``); every key but ``messages`` is optional:

    {
        "id": "case-0007",                                        # named in every error about this sample
        "messages": [
            {"role": "system", "content": "You are an expert radiographer."},   # optional, first only
            {"role": "user", "content": [{"type": "image"},                      # one part per image / video
                                         {"type": "text", "text": "Describe the findings."}]},
            {"role": "assistant", "content": "No acute cardiopulmonary abnormality."},  # what is trained
        ],
        "images": ["scans/0007.png"],   # PIL.Image | path | bytes, taken in order by the {"type": "image"} parts
        "videos": [],                   # path | {"path", "start", "end"} (seconds) | (T, H, W, 3) uint8 | [PIL, ...]
        "max_tiles": 16,                # this sample's image tile budget (default: the collator's)
        "num_frames": 8,                # this sample's frames per video (default: the collator's)
    }

Your data, a CSV with an ``image`` column (paths relative to the CSV) and a ``findings`` column, on PLM-1B
(a CUDA GPU and Hub access):

    python examples/custom_dataset.py --csv /data/findings.csv --max-steps 200

Offline, on a tiny random PLM (``plm-tune tiny-model .cache/tiny-plm``) and 24 generated images of shapes
whose "findings" name the shape and colour. On 2 CPU cores it took 25 s, most of it imports:

    python examples/custom_dataset.py --model .cache/tiny-plm --max-steps 3

It prints the samples it validated, the loss before and after, the held-out scores of the base and the
finetuned model, and where it saved::

    24 records -> 24 valid samples (20 train, 4 held out)
    train loss 7.163 (step 1) -> 6.951 (step 3)
    held out  exact_match 0 -> 0, rouge_l 0 -> 0.0417  (base -> finetuned)
    Saved the LoRA adapter to outputs/custom-dataset (eval: outputs/custom-dataset/eval/eval.json)
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from trl import SFTConfig

from plm_tune import (
    MediaArguments,
    ModelArguments,
    build_trainer,
    evaluate,
    load_model,
    loss_change,
    save_eval,
    validate_sample,
    write_training_info,
)

PROMPT = "Describe the findings in this image."


def records_to_samples(records: Iterable[dict[str, str]], image_root: Path) -> Iterator[dict]:
    """Your records -> canonical samples. The only data code a new dataset needs: a plain generator."""
    for i, record in enumerate(records):
        yield {
            "id": record.get("id") or f"row-{i}",
            "messages": [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]},
                {"role": "assistant", "content": record["findings"]},
            ],
            # A path stays a path until the collator opens it: the dataset holds no pixels.
            "images": [str(image_root / record["image"])],
        }


def write_demo_records(folder: Path, count: int = 24) -> Path:
    """Stand-in for your data: PNGs of one coloured shape each, and a CSV of their findings."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    colours = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (40, 60, 220)}
    rows = []
    for i in range(count):
        colour, shape = list(colours)[i % 3], ("circle", "square")[i // 3 % 2]
        image = Image.new("RGB", (96, 96), (235, 235, 235))
        box = (24 + i % 5, 24, 72 + i % 5, 72)
        (ImageDraw.Draw(image).ellipse if shape == "circle" else ImageDraw.Draw(image).rectangle)(
            box, fill=colours[colour])
        image.save(folder / f"case-{i:02d}.png")
        rows.append({"id": f"case-{i:02d}", "image": f"case-{i:02d}.png", "findings": f"A {colour} {shape}."})
    with open(folder / "findings.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "image", "findings"])
        writer.writeheader()
        writer.writerows(rows)
    return folder / "findings.csv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="facebook/Perception-LM-1B", help="Hub id or folder of a PLM")
    parser.add_argument("--csv", help="your records: image (path relative to the CSV), findings, optional id; "
                                      "default: generated demo records in OUTPUT_DIR-records")
    parser.add_argument("--max-steps", type=int, default=200, help="optimizer steps")
    parser.add_argument("--max-tiles", type=int, default=4, help="image tiles per image (PLM: 256 tokens each)")
    parser.add_argument("--output-dir", default="outputs/custom-dataset")
    args = parser.parse_args()
    output_dir = Path(args.output_dir)

    ################
    # Data: records -> samples, each checked before any training (a bad one fails here, named)
    ################
    table = Path(args.csv) if args.csv else write_demo_records(Path(args.output_dir + "-records"))
    with open(table, newline="") as f:
        records = list(csv.DictReader(f))
    samples = list(records_to_samples(records, image_root=table.parent))
    for sample in samples:
        validate_sample(sample)  # opens every image; raises ValueError naming the sample id and the fix
    held_out = max(1, len(samples) // 6)
    train_set, eval_set = samples[:-held_out], samples[-held_out:]
    print(f"{len(records)} records -> {len(samples)} valid samples ({len(train_set)} train, {held_out} held out)")

    ################
    # Model: LoRA on the language model, frozen vision tower, projector trained in full (PLM's own recipe)
    ################
    model, processor = load_model(args.model, method="lora", freeze=("vision",), lora_r=8, lora_alpha=16)

    ################
    # Training: TRL's SFTTrainer, with plm-tune's collator and per-part learning rates
    ################
    on_gpu = torch.cuda.is_available()
    training_args = SFTConfig(
        output_dir=str(output_dir),
        max_steps=args.max_steps,
        per_device_train_batch_size=2,
        learning_rate=2e-4 if on_gpu else 3e-3,  # the tiny random CPU model needs a big step to move in 3 steps
        max_length=2048,                        # tokens: 4 tiles + thumbnail of PLM-1B are ~1.3k
        bf16=on_gpu and torch.cuda.is_bf16_supported(),  # SFTConfig's default bf16=True fails on a CPU
        activation_checkpointing=False,         # TRL turns it on; load_model(gradient_checkpointing=True) also reaches the vision tower
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        dataloader_pin_memory=False,
    )
    trainer = build_trainer(model, processor, train_set, args=training_args,
                            media=MediaArguments(max_tiles=args.max_tiles),
                            model_args=ModelArguments(projector_lr=1e-4 if on_gpu else 1e-3))
    trainer.train()
    print(loss_change(trainer.state.log_history))

    ################
    # Evaluate: greedy answers on the held-out samples, finetuned vs base (the same model, adapter off)
    ################
    result = evaluate(model, processor, eval_set, compare_with="disable_adapter", collator=trainer.plm_collator,
                      max_new_tokens=32, progress=False)
    scores = ", ".join(f"{name} {result.base_metrics[name]:.3g} -> {result.metrics[name]:.3g}"
                       for name in ("exact_match", "rouge_l"))
    print(f"held out  {scores}  (base -> finetuned)")

    ################
    # Save: adapter + processor, how it was trained (read by the model card and `plm-tune merge`), the eval
    ################
    trainer.save_model(str(output_dir))
    final_loss = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry][-1]
    write_training_info(output_dir, {
        "method": "lora", "freeze": ["vision"], "max_tiles": args.max_tiles, "datasets": [str(table)],
        "global_step": trainer.state.global_step, "max_steps": args.max_steps,
        "metrics": {"train_loss": final_loss, **{f"eval_{k}": v for k, v in result.metrics.items() if k != "samples"}},
    })
    eval_json = save_eval(result, output_dir / "eval" / "eval.json")
    print(f"Saved the LoRA adapter to {output_dir} (eval: {eval_json})")


if __name__ == "__main__":
    main()
