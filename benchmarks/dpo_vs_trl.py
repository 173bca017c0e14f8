"""DPO on PLM: TRL's own DPOTrainer + peft (as a TRL user writes it) against ``build_dpo_trainer``, on CPU.

    .venv/bin/python benchmarks/dpo_vs_trl.py                    # 3 rounds of 2 runs of 10 steps, then the probes
    .venv/bin/python benchmarks/dpo_vs_trl.py --repeats 5 --steps 12 --no-probes
    .venv/bin/python benchmarks/dpo_vs_trl.py --model mid        # a 256-wide, 4-layer decoder, 128k vocabulary
    .venv/bin/python benchmarks/dpo_vs_trl.py --probes-only      # only "what TRL could not do"

"trl" is what a user writes with TRL and peft alone: ``AutoModelForImageTextToText`` in float32, a
``peft.LoraConfig`` passed as ``DPOTrainer(peft_config=...)``, TRL's default collator for vision data
(``DataCollatorForVisionPreference``, built by ``DPOTrainer`` from ``processing_class=`` the PLM processor) and a
dataset in TRL's conversational format (``prompt`` / ``chosen`` / ``rejected`` messages, ``images``: PIL images).
PLM's processor can batch images only when they make the same number of tiles, so every image has one size here.
Its ``image_processor.max_num_tiles`` is set to the tiles plm-tune uses (``MAX_TILES``), as a user would, so both
runs see the same tokens.

"plm-tune" is ``load_model(method="lora")`` + ``build_dpo_trainer`` on the same pairs in the canonical preference
format (``synthetic_shape_pairs``; the TRL records are made from them: same prompts, answers, PNG images).

Aligned so the two train the same parameters on the same batches: LoRA r 16, alpha 32, dropout 0.05 (TRL's
``disable_dropout`` zeroes it in both) on the decoder's q/k/v/o and gate/up/down projections. peft has no default
targets for ``perception_lm`` (``LoraConfig()`` fails: see the probes) and ``"all-linear"`` would also adapt the
vision tower and projector, which plm-tune trains in full or not at all, so the TRL user names the seven Llama
projections, which match only the decoder here, and plm-tune freezes the tower and the
projector (``freeze=("vision", "projector")``; its default trains the projector in full). Each run checks and
reports its trainable parameter count. Same ``DPOConfig`` for both: batch ``--batch`` pairs, ``max_length`` 1024
(DPOConfig's), float32, no gradient checkpointing, same seed (the same pairs in the same order). The batches are
then token- and pixel-identical (the probes' last line checks one), so the model's work is the same and what
differs is the collator (TRL processes each image twice, once per row; plm-tune once per pair) and the trainers'
setup.

How it measures, as ``vs_baseline.py`` (read its docstring): every run is a fresh process; the order alternates
each round; a run's peak RSS is its ``VmHWM`` reset just before ``train()`` (the training peak) and, from the
parent, the child's ``ru_maxrss`` (``os.wait4``: the whole process, loading included); tokens/s counts real tokens
(the ``attention_mask`` sum of every batch, counted by one wrapper around each trainer's collator) over the timed
steps (the first 2 are warm-up). Median (min-max) over rounds; ratios plm-tune / TRL of the medians, with the
min-max of the per-round ratios.

The probes ("what TRL could not do"), each in a fresh process, one line per side: images of different tile counts
in one batch, a video pair, ``precompute_ref_log_probs=True`` on vision data, ``padding_free=True``, a
``max_length`` shorter than a pair (80 tokens: TRL cuts the answers off; plm-tune, given ``fit_tiles``, lowers the
tiles), peft's default LoRA targets; then the tokens of one pair (and of a two-turn prompt) from both collators.
"""

from __future__ import annotations

import argparse
import io
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
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from vs_baseline import StepClock, rss_peak_mib, rss_reset, schedule, spread, vs  # noqa: E402

VARIANTS = ["trl", "plm-tune"]  # the first is the baseline of the ratios
MAX_TILES = 4
PAIRS = 64
LORA = dict(r=16, lora_alpha=32, lora_dropout=0.05)
LLAMA_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# ----------------------------------------------------------------------------------------------------- set-up
def build_model(path: Path, size: str) -> Path:
    """``tiny``: the tests' tiny PLM (``tests/conftest.py``); ``mid``: ``vs_baseline.py``'s widened one."""
    from plm_tune.modeling.testing import build_tiny_plm

    if size == "mid":
        from vs_baseline import build_model as build_mid

        return build_mid(path)
    return build_tiny_plm(path, seed=0)


def image_size(model_path: Path) -> int:
    """Two tiles wide: with MAX_TILES a thumbnail plus a 2 x 2 grid of tiles, for either model."""
    return 2 * json.loads((model_path / "processor_config.json").read_text())["image_processor"]["tile_size"]


def trl_record(pair: dict[str, Any]) -> dict[str, Any]:
    """A canonical pair in TRL's conversational preference format, its images decoded (PIL)."""
    from PIL import Image

    def frames(video: Any) -> list[Any]:
        return [Image.open(io.BytesIO(frame)).convert("RGB") for frame in video]

    record = {"prompt": pair["messages"], "chosen": pair["chosen"], "rejected": pair["rejected"],
              "images": [Image.open(io.BytesIO(image)).convert("RGB") for image in pair["images"]]}
    if pair.get("videos"):
        record["videos"] = [frames(video) for video in pair["videos"]]
    return record


def config(out: Path, steps: int, batch: int, **overrides: Any) -> Any:
    """The one DPOConfig both sides run with (DPOConfig's defaults otherwise: beta 0.1, sigmoid, max_length 1024)."""
    from trl import DPOConfig

    settings = dict(output_dir=str(out), per_device_train_batch_size=batch, max_steps=steps, learning_rate=5e-4,
                    logging_steps=10**6, save_strategy="no", report_to="none", bf16=False,
                    gradient_checkpointing=False, dataloader_pin_memory=False, seed=0, disable_tqdm=True)
    return DPOConfig(**{**settings, **overrides})


def trl_trainer(model_path: Path, records: list[dict], args: Any, callbacks: list | None = None) -> Any:
    """What a TRL user writes: the model, a LoraConfig, DPOTrainer with its default collator."""
    import datasets
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import DPOTrainer

    processor = AutoProcessor.from_pretrained(model_path)
    processor.image_processor.max_num_tiles = MAX_TILES
    model = AutoModelForImageTextToText.from_pretrained(model_path, dtype=torch.float32)
    peft_config = LoraConfig(**LORA, target_modules=LLAMA_PROJECTIONS, task_type="CAUSAL_LM")
    return DPOTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(records),
                      processing_class=processor, peft_config=peft_config, callbacks=callbacks)


def plm_tune_trainer(model_path: Path, pairs: list[dict], args: Any, callbacks: list | None = None,
                     **media: Any) -> Any:
    """plm-tune: load_model + build_dpo_trainer, the same LoRA on the same layers (``media``: more
    ``MediaArguments``)."""
    import torch

    from plm_tune import MediaArguments, load_model
    from plm_tune.training.preference_trainer import build_dpo_trainer

    model, processor = load_model(model_path, method="lora", freeze=("vision", "projector"), dtype=torch.float32,
                                  seed=0, lora_r=LORA["r"], lora_alpha=LORA["lora_alpha"],
                                  lora_dropout=LORA["lora_dropout"])
    return build_dpo_trainer(model, processor, pairs, args=args, media=MediaArguments(max_tiles=MAX_TILES, **media),
                             callbacks=callbacks)


class CountingCollator:
    """Wraps a trainer's collator: counts every batch's real tokens (attention_mask), rows and pairs."""

    def __init__(self, inner: Any, counter: dict[str, int]) -> None:
        self.inner, self.counter = inner, counter

    def __call__(self, samples: list[dict]) -> dict:
        batch = self.inner(samples)
        self.counter["tokens"] += int(batch["attention_mask"].sum())
        self.counter["completion"] += int(batch["completion_mask"].sum())
        self.counter["samples"] += len(samples)
        return batch


# ----------------------------------------------------------------------------------------------------- one run
def run(variant: str, model_path: Path, data: Path, steps: int, batch: int) -> dict:
    """Train ``steps`` steps of ``variant`` in this process and return its measurements."""
    import torch

    torch.manual_seed(0)
    pairs = pickle.loads((data / "pairs.pkl").read_bytes())
    clock = StepClock()
    args = config(data / f"out-{variant}", steps, batch)
    if variant == "trl":
        trainer = trl_trainer(model_path, [trl_record(p) for p in pairs], args, [clock.callback])
    else:
        trainer = plm_tune_trainer(model_path, pairs, args, [clock.callback])
    trainer.data_collator = CountingCollator(trainer.data_collator, clock.counter)
    clock.counter["completion"] = 0
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    rss_reset()
    trainer.train()
    timed = slice(2, None)
    first, last = clock.counts[1], clock.counts[-1]
    return {"variant": variant, "timed_steps": len(clock.steps[timed]), "seconds": sum(clock.steps[timed]),
            "cpu_seconds": sum(clock.cpu_steps[timed]), "train_peak_mib": rss_peak_mib(), "trainable": trainable,
            **{key: last[key] - first[key] for key in ("tokens", "completion", "samples")}}


def run_one(argv: list[str]) -> tuple[dict, float]:
    """This script with ``argv`` in a fresh process: (the JSON of its last line, its ru_maxrss in MiB)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.TemporaryFile("w+") as out:
        child = subprocess.Popen([sys.executable, __file__, *argv], env=env, cwd=ROOT, stdout=out, text=True)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage (RUSAGE_CHILDREN would be the max)
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode:
            raise RuntimeError(f"{' '.join(argv[:2])} exited {child.returncode}: see its stderr above.")
        out.seek(0)
        return json.loads(out.read().splitlines()[-1]), usage.ru_maxrss / 1024  # Linux: KiB


def figures(run: dict, maxrss: float) -> dict:
    return {"tokens/s": run["tokens"] / run["seconds"], "tokens/cpu_s": run["tokens"] / run["cpu_seconds"],
            "pairs/s": run["samples"] / run["seconds"], "steps/s": run["timed_steps"] / run["seconds"],
            "rss": run["train_peak_mib"], "maxrss": maxrss, "trainable": run["trainable"],
            "tokens/step": run["tokens"] / run["timed_steps"], "completion/step": run["completion"] / run["timed_steps"]}


# ----------------------------------------------------------------------------------------------------- probes
def outcome(action) -> str:
    """``ran: <what action returned>`` or ``error: <type>: <the message's first line>``, warnings appended."""
    caught: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.WARNING:
                caught.append(record.getMessage().splitlines()[0])

    handler = Catch()
    logging.getLogger().addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as warned:
            warnings.simplefilter("always")
            try:
                text = f"ran: {action()}"
            except Exception as error:  # noqa: BLE001 (the probe's answer is the error)
                text = f"error: {type(error).__name__}: {(str(error).splitlines() or [''])[0][:300]}"
        relevant = [w for w in caught if "padding_free" in w or "truncat" in w.lower()]
        relevant += [str(w.message).splitlines()[0] for w in warned if "padding_free" in str(w.message)]
        return text + "".join(f" [warning: {w[:200]}]" for w in dict.fromkeys(relevant))
    finally:
        logging.getLogger().removeHandler(handler)


def _step(trainer: Any) -> str:
    """One training step; says what the batch held."""
    seen: dict[str, Any] = {}
    inner = trainer.data_collator
    image_token = trainer.processing_class.tokenizer.image_token_id

    def collate(samples):
        batch = inner(samples)
        seen.update({key: tuple(value.shape) for key, value in batch.items() if hasattr(value, "shape")})
        seen["completion tokens"] = int(batch["completion_mask"].sum())
        seen["image tokens"] = int((batch["input_ids"] == image_token).sum())
        return batch

    trainer.data_collator = collate
    trainer.train()
    loss = next(log["train_loss"] for log in trainer.state.log_history if "train_loss" in log)
    return f"1 step, loss {loss:.4f}; batch {seen}"


def video_pair(size: int) -> dict[str, Any]:
    """A canonical video pair: synthetic_videos' clip and question, its true direction chosen."""
    from data_adapters.synthetic import synthetic_videos

    sample = synthetic_videos(1, seed=0, num_frames=4, size=size)[0]
    answer = sample["messages"][-1]["content"][0]["text"]
    wrong = next(d for d in ("left", "right", "up", "down") if d != answer)
    return {**sample, "messages": sample["messages"][:-1],
            "chosen": [{"role": "assistant", "content": [{"type": "text", "text": answer}]}],
            "rejected": [{"role": "assistant", "content": [{"type": "text", "text": wrong}]}]}


def probe(name: str, model_path: Path, data: Path) -> dict[str, str]:
    """One probe, both sides: {"trl": outcome, "plm-tune": outcome}."""
    from data_adapters.synthetic import synthetic_shape_pairs

    size = image_size(model_path)
    pairs = pickle.loads((data / "pairs.pkl").read_bytes())[:2]
    args = dict(steps=1, batch=2)
    if name == "ragged tiles":
        # 2 x 2 tiles and 4 x 2 (lowered to 2 x 1 under MAX_TILES): 5 and 3 tiles, in one batch.
        pairs = [*synthetic_shape_pairs(1, seed=0, image_size=size), *synthetic_shape_pairs(1, seed=1, image_size=size)]
        from PIL import Image

        wide = Image.open(io.BytesIO(pairs[1]["images"][0])).resize((2 * size, size))
        buffer = io.BytesIO()
        wide.save(buffer, format="PNG")
        pairs[1] = {**pairs[1], "images": [buffer.getvalue()]}
    elif name == "video pair":
        pairs, args = [video_pair(size // 2)], dict(steps=1, batch=1)
    overrides = {"precompute_ref_log_probs": dict(precompute_ref_log_probs=True),
                 "padding_free": dict(padding_free=True),
                 "max_length below a pair": dict(max_length=80)}.get(name, {})
    # A pair is 91-92 tokens with 5 tiles, 75-76 with the thumbnail alone: plm-tune may lower the tiles to fit.
    media = dict(fit_tiles=True) if name == "max_length below a pair" else {}
    if name == "peft default targets":
        def trl_side() -> str:
            import torch
            from peft import LoraConfig, get_peft_model
            from transformers import AutoModelForImageTextToText

            model = AutoModelForImageTextToText.from_pretrained(model_path, dtype=torch.float32)
            model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM"))
            return f"{sum(p.numel() for p in model.parameters() if p.requires_grad)} trainable"

        def ours() -> str:
            from plm_tune import load_model

            model, _ = load_model(model_path, method="lora")
            return f"{sum(p.numel() for p in model.parameters() if p.requires_grad)} trainable (defaults)"
        return {"trl": outcome(trl_side), "plm-tune": outcome(ours)}

    def trl_side() -> str:
        return _step(trl_trainer(model_path, [trl_record(p) for p in pairs],
                                 config(data / "probe-trl", args["steps"], args["batch"], **overrides)))

    def ours() -> str:
        return _step(plm_tune_trainer(model_path, pairs,
                                      config(data / "probe-ours", args["steps"], args["batch"], **overrides), **media))

    return {"trl": outcome(trl_side), "plm-tune": outcome(ours)}


PROBES = ["ragged tiles", "video pair", "precompute_ref_log_probs", "padding_free", "max_length below a pair",
          "peft default targets"]


def token_comparison(model_path: Path, data: Path) -> list[str]:
    """Both collators on the same pairs (a benchmark pair, and a two-turn prompt): are the rows, the completion
    masks and the pixels the same? What each completion is, and what TRL's prompt ends with."""
    import torch
    from transformers import AutoProcessor
    from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

    from plm_tune import PLMCollator
    from plm_tune.encoding.preference_collator import PLMPreferenceCollator

    processor = AutoProcessor.from_pretrained(model_path)
    processor.image_processor.max_num_tiles = MAX_TILES
    tokenizer = processor.tokenizer
    pair = pickle.loads((data / "pairs.pkl").read_bytes())[0]
    two_turns = {**pair, "messages": [*pair["messages"],
                                      {"role": "assistant", "content": [{"type": "text", "text": "A colour."}]},
                                      {"role": "user", "content": [{"type": "text", "text": "Which one?"}]}]}
    lines = []
    for label, sample in (("benchmark pair", pair), ("two-turn prompt", two_turns)):
        theirs = DataCollatorForVisionPreference(processor=processor, max_length=1024)([trl_record(sample)])
        ours = PLMPreferenceCollator(PLMCollator(processor, max_length=1024, max_tiles=MAX_TILES))([sample])
        for row, side in enumerate(("chosen", "rejected")):
            real = [b["input_ids"][row][b["attention_mask"][row].bool()] for b in (theirs, ours)]
            done = [b["input_ids"][row][b["completion_mask"][row].bool()] for b in (theirs, ours)]
            prompt_end = tokenizer.decode(real[0][: len(real[0]) - len(done[0])][-6:])
            lines.append(
                f"{label}, {side}: rows {'identical' if torch.equal(*real) else 'DIFFER'} ({len(real[0])} vs "
                f"{len(real[1])} tokens); completion TRL {tokenizer.decode(done[0])!r} {done[0].tolist()}, plm-tune "
                f"{tokenizer.decode(done[1])!r} {done[1].tolist()}; TRL's prompt ends {prompt_end!r}")
        same_pixels = torch.equal(theirs["pixel_values"].flatten(0, 1), ours["pixel_values"].flatten(0, 1))
        lines.append(f"{label}: pixel_values {'identical' if same_pixels else 'DIFFER'} "
                     f"(TRL {tuple(theirs['pixel_values'].shape)}: each image processed once per row; plm-tune "
                     f"{tuple(ours['pixel_values'].shape)}: once per pair, shared by both rows)")
    lines.append(collator_times(processor, [pickle.loads((data / "pairs.pkl").read_bytes())]))
    return lines


def collator_times(processor: Any, pairs: list[list[dict]], batch: int = 4, rounds: int = 5) -> str:
    """The one part of a step that differs: each collator on the same batches (its dataset rows as the trainer
    reads them: TRL's from a ``datasets`` table of PIL images, plm-tune's canonical rows), alternating, in one
    process. Median milliseconds per batch (min-max over rounds)."""
    import datasets
    from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

    from plm_tune import PLMCollator
    from plm_tune.encoding.preference_collator import PLMPreferenceCollator

    rows = pairs[0]
    table = datasets.Dataset.from_list([trl_record(p) for p in rows])
    theirs = DataCollatorForVisionPreference(processor=processor, max_length=1024)
    ours = PLMPreferenceCollator(PLMCollator(processor, max_length=1024, max_tiles=MAX_TILES))
    starts = range(0, len(rows) - batch + 1, batch)
    calls = {"TRL": lambda i: theirs([table[j] for j in range(i, i + batch)]),
             "plm-tune": lambda i: ours(rows[i : i + batch])}
    times: dict[str, list[float]] = {name: [] for name in calls}
    for round_ in range(rounds + 1):  # the first round warms up
        for name, call in (calls.items() if round_ % 2 else reversed(calls.items())):
            start = time.perf_counter()
            for i in starts:
                call(i)
            if round_:
                times[name].append(1000 * (time.perf_counter() - start) / len(starts))
    return (f"collating a batch of {batch} pairs (read from the dataset, {len(starts)} batches x {rounds} rounds): "
            + ", ".join(f"{name} {spread(ms, '.0f')} ms" for name, ms in times.items())
            + f"; plm-tune / TRL {statistics.median(times['plm-tune']) / statistics.median(times['TRL']):.2f}x")


# ----------------------------------------------------------------------------------------------------- harness
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per run (the first 2 are not timed)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; each runs TRL and plm-tune once")
    parser.add_argument("--batch", type=int, default=4, help="pairs per step (2x rows)")
    parser.add_argument("--model", choices=("tiny", "mid"), default="tiny",
                        help="tiny: the tests' PLM; mid: vs_baseline's 256-wide 4-layer decoder, 128k vocabulary")
    parser.add_argument("--probes-only", action="store_true", help="skip the timed runs")
    parser.add_argument("--no-probes", action="store_true", help="skip the probes")
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    parser.add_argument("--tokens", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model-path", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    cli = parser.parse_args()
    if cli.run or cli.probe or cli.tokens:
        # Probes catch TRL's warnings (``outcome``), so the root logger must pass them; runs stay quiet.
        logging.getLogger().setLevel(logging.WARNING if cli.probe else logging.ERROR)
        warnings.filterwarnings("ignore")
        if cli.run:
            result = run(cli.run, cli.model_path, cli.data, cli.steps, cli.batch)
        elif cli.probe:
            result = probe(cli.probe, cli.model_path, cli.data)
        else:
            result = token_comparison(cli.model_path, cli.data)
        print(json.dumps(result))
        return
    if cli.steps < 3:
        parser.error(f"--steps must be at least 3 (2 warm-up steps and one timed), got {cli.steps}.")
    if cli.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {cli.repeats}.")

    from data_adapters.synthetic import synthetic_shape_pairs

    started, load = time.perf_counter(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        model_path = build_model(Path(tmp) / "plm", cli.model)
        size = image_size(model_path)
        pairs = [dict(p) for p in synthetic_shape_pairs(PAIRS, seed=0, image_size=size)]
        (Path(tmp) / "pairs.pkl").write_bytes(pickle.dumps(pairs))
        common = ["--model-path", str(model_path), "--data", tmp]
        if not cli.probes_only:
            runs: dict[str, list[dict]] = {variant: [] for variant in VARIANTS}
            for round_, variant in schedule([VARIANTS], cli.repeats):
                raw, maxrss = run_one(["--run", variant, *common, "--steps", str(cli.steps), "--batch", str(cli.batch)])
                result = figures(raw, maxrss)
                runs[variant].append(result)
                print(f"  round {round_ + 1}/{cli.repeats}, {variant}: {result['tokens/s']:.0f} real tok/s, "
                      f"{result['steps/s']:.2f} steps/s, {result['rss']:.0f} MiB training peak, "
                      f"{result['maxrss']:.0f} MiB ru_maxrss", flush=True)
            report(runs, cli, size, model_path)
        if not cli.no_probes:
            print("\nWhat TRL could not do (each probe: one step, batch of 2 pairs or 1 video pair, fresh processes):")
            for name in PROBES:
                result, _ = run_one(["--probe", name, *common])
                print(f"- {name}:\n    TRL:      {result['trl']}\n    plm-tune: {result['plm-tune']}", flush=True)
            lines, _ = run_one(["--tokens", *common])
            print("\nThe same pair through both collators:\n" + "\n".join(f"- {line}" for line in lines))
    print(f"\nTotal {time.perf_counter() - started:.0f} s; 1-minute load average {load:.1f} at the start, "
          f"{os.getloadavg()[0]:.1f} at the end ({os.cpu_count()} CPUs)")


def report(runs: dict[str, list[dict]], cli: argparse.Namespace, size: int, model_path: Path) -> None:
    base = runs[VARIANTS[0]]
    trainable = {variant: {r["trainable"] for r in rs} for variant, rs in runs.items()}
    model = "the tests' tiny PLM" if cli.model == "tiny" else "a 256-wide 4-layer decoder, 128,256-token vocabulary"
    print(f"\nDPO, CPU, float32, {model}, {size} px images ({MAX_TILES} tiles + thumbnail), batch {cli.batch} pairs, "
          f"{cli.steps - 2} timed steps per run, {cli.repeats} rounds; LoRA r {LORA['r']} on the decoder's "
          f"projections, trainable parameters {trainable}. Median (min-max); vs TRL: ratio of medians (min-max of "
          f"per-round ratios).\n")
    print("| run | real tok/s | steps/s | training peak RSS MiB | ru_maxrss MiB | tok/s vs TRL | tok per CPU-s vs TRL "
          "| training peak vs TRL | ru_maxrss vs TRL | real tok/step | completion tok/step |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for variant in VARIANTS:
        rs = runs[variant]
        median = lambda key, rs=rs: statistics.median(r[key] for r in rs)  # noqa: E731
        print(f"| {variant} | {spread([r['tokens/s'] for r in rs], '.0f')} | {spread([r['steps/s'] for r in rs], '.2f')} "
              f"| {spread([r['rss'] for r in rs], '.0f')} | {spread([r['maxrss'] for r in rs], '.0f')} "
              f"| {vs(rs, base, 'tokens/s')} | {vs(rs, base, 'tokens/cpu_s')} | {vs(rs, base, 'rss')} "
              f"| {vs(rs, base, 'maxrss')} | {median('tokens/step'):.0f} | {median('completion/step'):.0f} |")


if __name__ == "__main__":
    main()
