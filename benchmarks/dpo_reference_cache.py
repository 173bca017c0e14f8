"""How much faster LoRA DPO steps are with the reference log-probs precomputed (``precompute_ref_log_probs=True``,
``plm_tune.training.reference_cache``) than with TRL's reference forward in every step, on the tiny random PLM.

    .venv/bin/python benchmarks/dpo_reference_cache.py                 # 20 steps x 3 rounds; ~30 s on 2 idle cores
    .venv/bin/python benchmarks/dpo_reference_cache.py --steps 40 --rounds 5 --max-tiles 4

Each round builds a fresh LoRA model (tower trainable, as tests/test_dpo.py's learnability run) and runs
``--steps`` DPO steps of ``--batch`` synthetic colour pairs, once with the reference pass and once precomputed,
the order alternating per round so drift on a shared machine falls on both. Printed per run: training steps/s
(``trainer.train()``'s ``train_steps_per_second``; the precompute is not in it), steps per CPU-second of the
process (``time.process_time``: what survives a machine shared with other work, where wall time does not) and, for the precomputed run, the
seconds ``build_dpo_trainer`` spent (scoring every pair, or reading the cache). Then the medians and their ratio,
and one build that finds every pair in the cache. The saving is one forward of each step (no backward): expect a
ratio near 1.3-1.5 where the forward is a third of a step.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch
from trl import DPOConfig

from data_adapters.synthetic import synthetic_shape_pairs
from plm_tune import MediaArguments, load_model
from plm_tune.modeling.testing import build_tiny_plm
from plm_tune.training.preference_trainer import build_dpo_trainer


def run(path: Path, pairs, out: Path, *, precompute: bool, steps: int, batch: int, max_tiles: int,
        cache: Path) -> tuple[float, float, float]:
    """``(train steps/s, train steps per CPU-second, build seconds)`` of one LoRA DPO run."""
    torch.manual_seed(0)
    model, processor = load_model(path, method="lora", freeze=(), lora_r=8, lora_alpha=16, lora_dropout=0.0)
    args = DPOConfig(output_dir=str(out), per_device_train_batch_size=batch, max_steps=steps, learning_rate=5e-3,
                     beta=1.0, save_strategy="no", report_to="none", bf16=False, gradient_checkpointing=False,
                     max_length=None, dataloader_num_workers=0, dataloader_pin_memory=False, seed=0,
                     disable_tqdm=True, logging_steps=steps, precompute_ref_log_probs=precompute)
    start = time.perf_counter()
    trainer = build_dpo_trainer(model, processor, pairs, args=args, media=MediaArguments(max_tiles=max_tiles),
                                reference_cache=cache)
    built = time.perf_counter() - start
    cpu = time.process_time()
    speed = trainer.train().metrics["train_steps_per_second"]
    return speed, steps / (time.process_time() - cpu), built


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4, help="pairs per step")
    parser.add_argument("--max-tiles", type=int, default=4)
    options = parser.parse_args()
    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        path = build_tiny_plm(folder / "tiny-plm", seed=0)
        samples = synthetic_shape_pairs(options.steps * options.batch, seed=0, max_tiles=options.max_tiles)
        # untimed: the first run of a process pays one-time costs (kernels, decoders) that would fall on one side
        run(path, samples, folder / "out", precompute=False, steps=2, batch=options.batch,
            max_tiles=options.max_tiles, cache=folder / "warm-up")
        speeds, cpu_speeds = {False: [], True: []}, {False: [], True: []}
        for round_ in range(options.rounds):
            for precompute in (round_ % 2 == 0, round_ % 2 == 1):
                # a fresh cache per run: each precomputed build scores every pair
                speed, cpu_speed, built = run(path, samples, folder / "out", precompute=precompute, steps=options.steps,
                                   batch=options.batch, max_tiles=options.max_tiles, cache=folder / f"cache{round_}")
                speeds[precompute].append(speed)
                cpu_speeds[precompute].append(cpu_speed)
                print(f"round {round_}: {'precomputed' if precompute else 'reference pass'}: {speed:.2f} steps/s, "
                      f"{cpu_speed:.2f} steps per CPU-second"
                      + (f" (build {built:.1f} s, scoring {len(samples)} pairs)" if precompute else ""))
        _, _, cached_build = run(path, samples, folder / "out", precompute=True, steps=1, batch=options.batch,
                              max_tiles=options.max_tiles, cache=folder / "cache0")
        for unit, table in (("steps/s", speeds), ("steps per CPU-second", cpu_speeds)):
            plain, cached = statistics.median(table[False]), statistics.median(table[True])
            print(f"median {unit}: reference pass {plain:.2f}, precomputed {cached:.2f}; ratio {cached / plain:.2f}x")
        print(f"a build that finds all {len(samples)} pairs in the cache: {cached_build:.1f} s")


if __name__ == "__main__":
    main()
