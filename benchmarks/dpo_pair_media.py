"""What running PLM's vision tower once per preference pair (``plm_tune.modeling.pair_media``) saves in a LoRA DPO
step, against running it on every row as the model alone does, on random PLMs built locally.

    .venv/bin/python benchmarks/dpo_pair_media.py                    # tiny PLM, then a tower-heavy one; ~2 min
    .venv/bin/python benchmarks/dpo_pair_media.py --rounds 9 --batch 4 --max-tiles 8

The model work of one DPO step, as TRL's ``DPOTrainer`` does it for our batches: the policy's log-probs of the
``2B`` rows (chosen, then rejected) forward and backward, and the reference's forward with the adapter switched
off (``sequence_logps``, the tower frozen as the recipes' default, ``--train-vision`` to train it; the
``PLMPreferenceCollator`` batch of ``--batch`` synthetic colour pairs). Two LoRA
models of the same weights, one wrapped by ``encode_pair_media_once``, step in alternating order for ``--rounds``
rounds (first round untimed). Printed per model size: the tiles each step sends through the tower, the median
(min-max) seconds per step of each, the median of the per-round ratios (min-max), and that the log-probs agree.

Two sizes, since the saving is the tower's share of a step: ``tiny`` (the tests' PLM: a 32-wide, 2-block tower on
56 px tiles beside a 64-wide decoder: the tower is a small part) and ``tower-heavy`` (a 192-wide, 6-block tower on
112 px tiles beside the same small decoder: closer to PLM-1B, where a row of 37 tiles costs the tower about as
many forward FLOPs as the decoder, 2 x 0.3 B x 1,025 x 37 = 23 T against 2 x 1.2 B x 9.5 k = 23 T). The ratio on
the real 1B needs a GPU and is not measured here.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch

from data_adapters.synthetic import synthetic_shape_pairs
from plm_tune import PLMCollator, PLMPreferenceCollator, load_model, sequence_logps
from plm_tune.modeling.pair_media import encode_pair_media_once, pair_media_calls
from plm_tune.modeling.testing import build_tiny_plm

SIZES = {
    "tiny": {},
    "tower-heavy": {"tile_size": 112, "vision_width": 192, "vision_depth": 6},
}


def dpo_step(model, batch) -> tuple[float, torch.Tensor]:
    """Seconds of one step's model work: policy forward + backward, reference forward with the adapter off."""
    start = time.perf_counter()
    model.zero_grad(set_to_none=True)
    policy = sequence_logps(model, batch)
    policy.sum().backward()
    with torch.no_grad(), model.disable_adapter():
        sequence_logps(model, batch)
    return time.perf_counter() - start, policy.detach()


def tiles_through_tower(model) -> list[int]:
    seen: list[int] = []
    model.base_model.model.model.vision_tower.register_forward_pre_hook(
        lambda _module, args: seen.append(args[0].shape[0]))
    return seen


def compare(path: Path, size: str, options) -> None:
    torch.manual_seed(0)
    models = {}
    for name in ("every row", "once per pair"):
        model, processor = load_model(path, method="lora", freeze=() if options.train_vision else ("vision",),
                                      lora_r=8, lora_alpha=16, lora_dropout=0.0)
        if name == "once per pair":
            encode_pair_media_once(model)
        models[name] = model.train()
    pairs = synthetic_shape_pairs(options.batch, seed=0, image_size=options.image_size, max_tiles=options.max_tiles)
    batch = PLMPreferenceCollator(PLMCollator(processor))(list(pairs))
    seen = {name: tiles_through_tower(model) for name, model in models.items()}
    times = {name: [] for name in models}
    ratios = []
    for round_ in range(options.rounds + 1):
        order = list(models) if round_ % 2 == 0 else list(reversed(models))
        step = {}
        for name in order:
            step[name], logps = dpo_step(models[name], batch)
            if round_ == 0:
                step[name + " logps"] = logps
        if round_ == 0:  # untimed warm-up; the two models must agree
            torch.testing.assert_close(step["once per pair logps"], step["every row logps"], rtol=0, atol=1e-4)
            tiles = {name: sum(seen[name]) for name in models}
            halves = pair_media_calls(models["once per pair"])["shared"]
            continue
        for name in models:
            times[name].append(step[name])
        ratios.append(step["every row"] / step["once per pair"])
    rows = 2 * options.batch
    print(f"{size}: {options.batch} pairs ({rows} rows), tiles + frames through the tower per step: "
          f"every row {tiles['every row']}, once per pair {tiles['once per pair']} "
          f"(in {halves} encodes of half the tiles: policy and reference); log-probs agree (1e-4)")
    for name in models:
        print(f"  {name}: {statistics.median(times[name]) * 1e3:.0f} ms per step "
              f"({min(times[name]) * 1e3:.0f}-{max(times[name]) * 1e3:.0f})")
    print(f"  speed-up, per-round ratio: {statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) "
          f"over {options.rounds} rounds")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch", type=int, default=4, help="pairs per step")
    parser.add_argument("--max-tiles", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--train-vision", action="store_true",
                        help="train the tower too (default: frozen, the recipes' default); its backward then also halves")
    parser.add_argument("--sizes", nargs="+", choices=tuple(SIZES), default=list(SIZES))
    options = parser.parse_args()
    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as folder:
        for size in options.sizes:
            path = build_tiny_plm(Path(folder) / size, seed=0, **SIZES[size])
            compare(path, size, options)


if __name__ == "__main__":
    main()
