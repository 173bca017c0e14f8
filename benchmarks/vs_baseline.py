"""plm-tune against the model card's finetuning script, on the same random-init model and the same data, on CPU.

    .venv/bin/python benchmarks/vs_baseline.py               # 5 rounds of 6 runs: 30 fresh processes
    .venv/bin/python benchmarks/vs_baseline.py --repeats 3   # a quicker, noisier look
    .venv/bin/python benchmarks/vs_baseline.py --real-width --steps 4 --batch 2   # PLM-1B's widths, 2 layers

The baseline is the "Simple PLM Fine-tuning Example" of the PLM model card, run as written except for the
device: its ``collate_fn`` (``apply_chat_template`` on the whole conversation with a generation prompt
appended, labels = every token but the image placeholders), ``transformers.Trainer`` with its settings
(batch 8, AdamW, lr 1e-4, weight decay 0.01, warmup 50, the vision tower frozen, the rest trained in full),
and ``vision_input_type="vanilla"`` (one tile per image, since its collator cannot batch more). On a CPU its
``.to("cuda")`` is dropped and it runs in float32 (bf16 training is refused on a CPU), like every run here.

plm-tune runs the same model, data, optimizer, learning rates and batch size through ``build_trainer``
(TRL's SFTTrainer, the loss on the answers only), first with padded random batches, then packed
(``padding_free``) and length-grouped.

How it measures, on machines that are shared and noisy: every run is a fresh Python process (``run_one``) that
resets its own ``VmHWM`` before training and reports it at the end, so "peak RSS" is that process's peak while
training (the model, data and optimizer states included) and no run inherits another's memory. The compared runs
alternate: each round runs every variant once, in an order rotated by one each round (baseline, A, B; then A, B,
baseline; ...), for ``--repeats`` rounds. Each variant's figures are the median over rounds and the min-max; a
ratio against the baseline is the ratio of the medians, and its spread the min-max of the per-round ratios (the
two runs of a round ran minutes apart, under about the same load). The data are read and decoded once, by the
parent, and handed to every run as the same pickled samples.

The model: the tiny PLM architecture widened to something mid-size (a 4-layer, 256-wide Llama decoder, a
64-wide PE tower on 224 px tiles: 64 tokens per tile) with PLM's real vocabulary of 128,256 tokens, because the
vocabulary is what makes PLM's logits expensive. At that width the 128k LM head dominates a step, which flatters
plm-tune's labelled-only logits; ``--real-width`` runs the three card comparisons on PLM-1B's real widths
(2048-wide decoder, 1024-wide PE tower at 448 px, the real tokenizer: ``build_random_plm``) with 2 decoder
layers and 2 vision blocks, where the decoder's own cost weighs in. The data: the DICOM files that pydicom and pydicom-data ship
(the radiology demo's data), captioned from their tags, single-frame ones only (the baseline takes one image
per sample).

Counted per step, over the timed steps (the first 2 are warm-up): answer tokens (the caption and its
``<|eot_id|>``: what a finetune is for, the same data in every run, so its rate is the honest throughput
figure), the tokens each run puts its loss on ("labelled"), real tokens, and padding. Then, without the
baseline: the demo's own mix (thumb+tile images up to 4 tiles, 4-frame videos) with random, grouped and packed
batches.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "recipes"))

PROMPT = "You are an expert radiographer. Describe accurately what you see in this image."  # the card's prompt
CAPTION = "{Modality} {BodyPartExamined}: {StudyDescription}. {SeriesDescription}"
VOCAB = 128256
BATCH = 8


# ----------------------------------------------------------------------------------------------------- helpers
def rss_reset() -> None:
    """Reset the process's peak RSS (VmHWM) to its current RSS (Linux: clear_refs 5)."""
    Path("/proc/self/clear_refs").write_text("5")


def rss_peak_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (this benchmark needs Linux)")


def build_model(path: Path, real_width: bool = False) -> Path:
    """The benchmark's random-init PLM: the tiny architecture, widened, with PLM's 128,256-token vocabulary; or
    with ``real_width`` PLM-1B's real widths and tokenizer (``build_random_plm``), 2 decoder layers, 2 vision blocks."""
    import torch
    from transformers import AutoModelForImageTextToText

    from plm_tune.modeling.testing import build_tiny_plm

    if real_width:
        from plm_tune.modeling.testing_real import build_random_plm

        return build_random_plm(path, "1B", text_layers=2, vision_layers=2)

    build_tiny_plm(path, seed=0, tile_size=224, vision_width=64, vision_depth=2, text_hidden=256, text_layers=4)
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32)
    model.resize_token_embeddings(VOCAB, mean_resizing=False)  # new rows random: the tokenizer never emits them
    model.save_pretrained(path)
    return path


def dicom_samples(vanilla_single_frame: bool) -> list[dict]:
    """The radiology demo's samples; for the baseline comparison only single-frame files, as PIL images."""
    from radiology_lora import dicom_folders

    from data_adapters.dicom import from_dicom
    from plm_tune.data.media import load_image

    logging.getLogger("data_adapters").setLevel(logging.ERROR)  # the skip report of the deliberately bad files
    warnings.filterwarnings("ignore", module="pydicom")
    dataset = from_dicom(dicom_folders("pydicom-testdata"), caption=CAPTION, prompt=PROMPT, on_error="skip")
    samples = [dataset[i] for i in range(len(dataset))]
    if vanilla_single_frame:
        samples = [{**s, "images": [load_image(s["images"][0])]} for s in samples if s.get("images")]
    return samples


def save_samples(folder: Path) -> list[dict]:
    """Read the data once, for every run: ``folder/card.pkl`` the single-frame images decoded (the baseline's
    input), ``folder/demo.pkl`` the demo's whole mix (paths). Returns the demo's samples."""
    demo = dicom_samples(vanilla_single_frame=False)
    (folder / "demo.pkl").write_bytes(pickle.dumps(demo))
    (folder / "card.pkl").write_bytes(pickle.dumps(dicom_samples(vanilla_single_frame=True)))
    return demo


# ----------------------------------------------------------------------------------------------------- one run
class StepClock:
    """A TrainerCallback: wall time and CPU time (all of the process's threads) of each optimizer step, from the end
    of the previous one (data included)."""

    def __init__(self) -> None:
        from transformers import TrainerCallback

        clock = self

        class _Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                clock.last, clock.last_cpu = time.perf_counter(), time.process_time()

            def on_step_end(self, args, state, control, **kwargs):
                now, cpu = time.perf_counter(), time.process_time()
                clock.steps.append(now - clock.last)
                clock.cpu_steps.append(cpu - clock.last_cpu)
                clock.counts.append(dict(clock.counter))
                clock.last, clock.last_cpu = now, cpu

        self.steps: list[float] = []
        self.cpu_steps: list[float] = []
        self.counts: list[dict] = []
        self.counter = {"answer": 0, "labelled": 0, "tokens": 0, "slots": 0, "samples": 0}
        self.last = self.last_cpu = 0.0
        self.callback = _Callback()


def caption(sample: dict) -> str:
    content = sample["messages"][-1]["content"]
    return content if isinstance(content, str) else "".join(part.get("text") or "" for part in content)


def answer_tokens(sample: dict, tokenizer) -> int:
    """Tokens of the caption plus its <|eot_id|>, the part of a sample a caption finetune exists to learn."""
    return len(tokenizer(caption(sample), add_special_tokens=False)["input_ids"]) + 1


def run(variant: str, model_path: Path, data: Path, steps: int, batch: int = BATCH) -> dict:
    """Train ``steps`` steps of ``variant`` in this process and return its measurements (``data``: ``save_samples``)."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor, Trainer, TrainingArguments

    torch.manual_seed(0)
    processor = AutoProcessor.from_pretrained(model_path)
    demo_mix = variant.startswith("demo mix")  # plm-tune alone: thumb+tile images and videos, as the demo
    if not demo_mix:
        processor.image_processor.vision_input_type = "vanilla"  # as the card does
    samples = pickle.loads((data / ("demo.pkl" if demo_mix else "card.pkl")).read_bytes())
    clock = StepClock()
    answers = {caption(s): answer_tokens(s, processor.tokenizer) for s in samples}
    common = dict(output_dir=str(data / f"trainer-{variant}"), max_steps=steps, per_device_train_batch_size=batch,
                  gradient_accumulation_steps=1, warmup_steps=50, learning_rate=1e-4, weight_decay=0.01,
                  optim="adamw_torch", logging_steps=10**6, save_strategy="no", report_to="none",
                  remove_unused_columns=False, dataloader_pin_memory=False, bf16=False, seed=0, disable_tqdm=True)

    if variant == "baseline":
        model = AutoModelForImageTextToText.from_pretrained(model_path, dtype=torch.float32)
        for param in model.model.vision_tower.parameters():  # the card: "if you'd like to only fine-tune LLM"
            param.requires_grad = False
        image_token_id = processor.tokenizer.image_token_id
        from torch.nn.utils.rnn import pad_sequence

        def collate_fn(examples):  # the model card's, less .to("cuda"); counting added around it
            instances = []
            for example in examples:
                caption = example["caption"]
                user_content = [{"type": "text", "text": PROMPT}]
                user_content.append({"type": "image", "image": example["image"]})
                messages = [
                    {"role": "user", "content": user_content},
                    {"role": "assistant", "content": [{"type": "text", "text": f"{caption}"}]},
                ]
                instance = processor.apply_chat_template(
                    messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
                ).to(model.dtype)
                instances.append(instance)
            input_ids = pad_sequence([inst["input_ids"].squeeze(0) for inst in instances], batch_first=True,
                                     padding_value=processor.tokenizer.pad_token_id)
            attention_mask = pad_sequence([inst["attention_mask"].squeeze(0) for inst in instances],
                                          batch_first=True, padding_value=0)
            labels = pad_sequence([inst["input_ids"].squeeze(0).clone() for inst in instances], batch_first=True,
                                  padding_value=-100)
            pixel_values = torch.cat([inst["pixel_values"] for inst in instances], dim=0)
            labels[labels == image_token_id] = -100
            clock.counter["answer"] += sum(e["answer"] for e in examples)
            clock.counter["samples"] += len(examples)
            clock.counter["labelled"] += int((labels[:, 1:] != -100).sum())
            clock.counter["tokens"] += int(attention_mask.sum())
            clock.counter["slots"] += input_ids.numel()
            return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
                    "pixel_values": pixel_values}

        import datasets

        table = datasets.Dataset.from_list([{"image": s["images"][0], "caption": caption(s), "answer": answers[caption(s)]}
                                            for s in samples])
        trainer = Trainer(model=model, args=TrainingArguments(**common), data_collator=collate_fn,
                          train_dataset=table, callbacks=[clock.callback])
    else:
        from trl import SFTConfig

        from plm_tune import PLMCollator, build_trainer, load_model

        packed, grouped = variant.endswith("packed"), variant.endswith("grouped")
        model, _ = load_model(model_path, method="full", freeze=("vision",), dtype=torch.float32)
        stats = ("labelled_tokens", "tokens", "token_slots")

        class CountingCollator(PLMCollator):
            def __call__(self, batch):
                before = [self.stats[key] for key in stats]
                out = super().__call__(batch)
                clock.counter["answer"] += sum(answers[caption(s)] for s in batch)
                clock.counter["samples"] += len(batch)
                for name, key, old in zip(("labelled", "tokens", "slots"), stats, before, strict=True):
                    clock.counter[name] += self.stats[key] - old
                return out

        vision = dict(max_tiles=4, num_frames=4) if demo_mix else dict(vision_input_type="vanilla")
        collator = CountingCollator(processor, padding_free=packed, **vision)
        args = SFTConfig(**common, max_length=None, padding_free=packed,
                         train_sampling_strategy="group_by_length" if packed or grouped else "random")
        trainer = build_trainer(model, processor, samples, args=args, collator=collator, callbacks=[clock.callback])

    rss_reset()
    trainer.train()
    timed = slice(2, None)
    seconds, cpu_seconds = sum(clock.steps[timed]), sum(clock.cpu_steps[timed])
    first, last = clock.counts[1], clock.counts[-1]
    totals = {key: last[key] - first[key] for key in last}
    return {"variant": variant, "timed_steps": len(clock.steps[timed]), "seconds": seconds,
            "cpu_seconds": cpu_seconds, "peak_rss_mib": rss_peak_mib(), **totals}


# ----------------------------------------------------------------------------------------------------- the harness
CARD = ["baseline", "plm-tune padded", "plm-tune packed"]  # the first of a group is its baseline
DEMO = ["demo mix padded", "demo mix grouped", "demo mix packed"]


def run_one(variant: str, model_path: Path, data: Path, steps: int, batch: int) -> dict:
    """``run(variant)`` in a fresh Python process; its measurements are the last line it prints (JSON)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    child = subprocess.run([sys.executable, __file__, "--run", variant, "--model", str(model_path), "--data", str(data),
                            "--steps", str(steps), "--batch", str(batch)],
                           check=True, env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    return json.loads(child.stdout.splitlines()[-1])


def schedule(groups: list[list[str]], repeats: int) -> list[tuple[int, str]]:
    """(round, variant) in the order to run them: each round runs every group once, rotated by one more each round,
    so each variant runs first, middle and last equally often and the runs a ratio pairs are never far apart.

    >>> schedule([["base", "a", "b"]], 3)
    [(0, 'base'), (0, 'a'), (0, 'b'), (1, 'a'), (1, 'b'), (1, 'base'), (2, 'b'), (2, 'base'), (2, 'a')]
    """
    return [(r, group[(r + i) % len(group)]) for r in range(repeats) for group in groups for i in range(len(group))]


def figures(run: dict) -> dict:
    """One run's rates (per second of its timed steps), peak RSS and padding."""
    per_s = {f"{key}/s": run[key] / run["seconds"] for key in ("answer", "labelled", "tokens", "samples")}
    # Per CPU-second too: on a shared machine a run's wall time grows with the load around it, its CPU time much less
    # (it counts the work done, on every thread), so the CPU ratio is the one that repeats between invocations.
    return {**per_s, "answer/cpu_s": run["answer"] / run["cpu_seconds"],
            "steps/s": run["timed_steps"] / run["seconds"], "rss": run["peak_rss_mib"],
            "padding": 1 - run["tokens"] / run["slots"]}


def spread(values: list[float], fmt: str) -> str:
    """The median and, in brackets, the min-max: ``91 (85-97)``."""
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"


def vs(runs: list[dict], base: list[dict], key: str) -> str:
    """The ratio of the medians and, in brackets, the min-max of the per-round ratios: ``3.35x (3.10-3.62)``."""
    ratio = statistics.median(r[key] for r in runs) / statistics.median(b[key] for b in base)
    rounds = [r[key] / b[key] for r, b in zip(runs, base, strict=True)]
    return f"{ratio:.2f}x ({min(rounds):.2f}-{max(rounds):.2f})"


def demo_mix_padding(model_path: Path, samples: list[dict]) -> list[tuple[str, float]]:
    """Padding on the radiology demo's own mix (thumb+tile up to 4 tiles, 4-frame videos), batch 8."""
    import torch
    from transformers import AutoProcessor

    from plm_tune import PLMCollator
    from plm_tune.encoding.costs import sample_cost
    from plm_tune.encoding.sampler import LengthGroupedBatchSampler, padding_fraction

    processor = AutoProcessor.from_pretrained(model_path)
    collator = PLMCollator(processor, max_tiles=4, num_frames=4)
    costs = [sample_cost(s, collator) for s in samples]
    order = torch.randperm(len(costs), generator=torch.Generator().manual_seed(0)).tolist()
    random_batches = [order[i : i + BATCH] for i in range(0, len(order), BATCH)]
    grouped = list(LengthGroupedBatchSampler(costs, BATCH, seed=0))
    tokens = [c[0] for c in costs]
    print(f"\nThe demo mix: {len(samples)} samples (images thumb+tile <= 4 tiles, videos 4 frames), "
          f"{min(tokens)}-{max(tokens)} tokens, batch {BATCH}")
    return [("random batches, padded", padding_fraction(costs, random_batches)),
            ("length-grouped, padded", padding_fraction(costs, grouped)),
            ("packed (padding_free)", 0.0)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per run (the first 2 are not timed)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="rounds; each runs every variant once, each run in a fresh process")
    parser.add_argument("--real-width", action="store_true",
                        help="PLM-1B's real widths and tokenizer (2 decoder layers, 2 vision blocks), the three "
                             "runs against the card only; use with --steps 4 --batch 2 on 2 CPU cores")
    parser.add_argument("--batch", type=int, default=BATCH, help="rows per step (the card's 8)")
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    cli = parser.parse_args()
    if cli.run:
        print(json.dumps(run(cli.run, cli.model, cli.data, cli.steps, cli.batch)))
        return
    if cli.steps < 3:
        parser.error(f"--steps must be at least 3 (2 warm-up steps and one timed), got {cli.steps}.")
    if cli.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {cli.repeats}.")

    started, load = time.perf_counter(), os.getloadavg()[0]
    groups = [CARD] if cli.real_width else [CARD, DEMO]
    with tempfile.TemporaryDirectory() as tmp:
        model_path = build_model(Path(tmp) / "plm-bench", cli.real_width)
        demo_samples = save_samples(Path(tmp))
        runs: dict[str, list[dict]] = {variant: [] for group in groups for variant in group}
        for round_, variant in schedule(groups, cli.repeats):
            result = figures(run_one(variant, model_path, Path(tmp), cli.steps, cli.batch))
            runs[variant].append(result)
            print(f"  round {round_ + 1}/{cli.repeats}, {variant}: {result['answer/s']:.0f} answer tok/s, "
                  f"{result['tokens/s']:.0f} real tok/s, {result['rss']:.0f} MiB peak RSS", flush=True)
        padding = [] if cli.real_width else demo_mix_padding(model_path, demo_samples)

    model = ("PLM-1B's real widths (2048-wide decoder, 2 layers; 1024-wide PE tower at 448 px, 2 blocks; real "
             "tokenizer)" if cli.real_width else "a 256-wide, 4-layer decoder and a 64-wide tower at 224 px")
    print(f"\nvs the model card's script: CPU, float32, batch {cli.batch}, vanilla single tile, {cli.steps - 2} timed "
          f"steps per run, {cli.repeats} rounds, 128,256-token vocabulary, {model}. Median (min-max) over rounds; "
          f"vs card: ratio of medians (min-max of the per-round ratios).\n")
    print("| run | answer tok/s | steps/s | peak RSS MiB | answer tok/s vs card | answer tok per CPU-s vs card "
          "| peak RSS vs card | labelled tok/s | real tok/s | padding |\n|---|---|---|---|---|---|---|---|---|---|")
    base = runs[CARD[0]]
    for variant in CARD:
        rs = runs[variant]
        median = lambda key, rs=rs: statistics.median(r[key] for r in rs)  # noqa: E731
        print(f"| {variant} | {spread([r['answer/s'] for r in rs], '.0f')} "
              f"| {spread([r['steps/s'] for r in rs], '.3f')} | {spread([r['rss'] for r in rs], '.0f')} | {vs(rs, base, 'answer/s')} "
              f"| {vs(rs, base, 'answer/cpu_s')} | {vs(rs, base, 'rss')} "
              f"| {median('labelled/s'):.0f} | {median('tokens/s'):.0f} | {median('padding'):.1%} |")
    print("\nlabelled = the tokens each run puts its loss on: the card's every token but the image ones "
          "(system, prompt, a stray generation prompt); plm-tune's the answers and their <|eot_id|>.")
    if not cli.real_width:
        print("\n| batches | padding |\n|---|---|")
        for name, fraction in padding:
            print(f"| {name} | {fraction:.1%} |")
        print("\nplm-tune alone on that mix: random padded batches, length-grouped padded batches, packed + grouped:\n")
        print("| run | real tok/s | samples/s | steps/s | peak RSS MiB | real tok/s vs padded | padding |"
              "\n|---|---|---|---|---|---|---|")
        base = runs[DEMO[0]]
        for variant in DEMO:
            rs = runs[variant]
            print(f"| {variant} | {spread([r['tokens/s'] for r in rs], '.0f')} "
                  f"| {spread([r['samples/s'] for r in rs], '.2f')} | {spread([r['steps/s'] for r in rs], '.3f')} "
                  f"| {spread([r['rss'] for r in rs], '.0f')} | {vs(rs, base, 'tokens/s')} "
                  f"| {statistics.median(r['padding'] for r in rs):.1%} |")
    print(f"\nTotal {time.perf_counter() - started:.0f} s; 1-minute load average {load:.1f} at the start, "
          f"{os.getloadavg()[0]:.1f} at the end ({os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
