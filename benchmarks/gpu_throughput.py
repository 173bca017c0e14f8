"""Training throughput of the real PLM-1B / PLM-3B architectures on one CUDA GPU: plain TRL + peft against plm-tune.

    python benchmarks/gpu_throughput.py                       # PLM-1B and -3B, LoRA and full, about 8 minutes
    python benchmarks/gpu_throughput.py --sizes 3B --methods lora --steps 12
    python benchmarks/gpu_throughput.py --smoke               # the same code on a CPU with the tiny PLM (2 steps)

Weights are random (speed does not depend on them): ``PerceptionLMForConditionalGeneration`` is built from
``plm_tune.memory.plm_config(size)`` (the released architectures) in bf16 on the GPU. The processor is the tiny
PLM's tokenizer with PLM's real image geometry (448 px tiles, 256 tokens per tile, up to 36 tiles), and the
model's image / video token ids are set to that tokenizer's, so nothing is downloaded.

The data: 896 px images (thumb+tile: 5 tiles, 1,280 tokens) with answers of 10 to 300 words. One image size,
because plain TRL cannot batch PLM images of different tile counts (see ``make_samples``).

Runs, each with the same samples, batch size, optimizer and learning rate:

- ``trl``: plain TRL + peft, as a hand-written script would do it: ``SFTTrainer`` with its own vision collator
  (``DataCollatorForVisionLanguageModeling``: padded batches, loss on every text token), ``peft_config`` for LoRA.
- ``plm-tune``: ``build_trainer``, padded random batches (loss on the answers).
- ``plm-tune packed``: ``padding_free`` + ``group_by_length``.
- ``+ liger``: the previous with Liger's Llama kernels (RMSNorm, RoPE, SwiGLU) on the decoder, when
  ``liger_kernel`` is installed (skipped otherwise).

Reported: real tokens/s (tokens that are not padding), samples/s, peak memory (``torch.cuda.max_memory_allocated``)
and MFU = achieved FLOP/s / measured peak, with

    FLOPs per step = 6 * trained_params * text_tokens               (forward, backward, weight gradients)
                   + 4 * frozen_decoder_params * text_tokens        (forward + input gradients: LoRA's base)
                   + 2 * frozen_vision_params * vision_patches      (forward only: the tower is frozen)
                   + 12 * layers * hidden * sum(len_i ** 2) / 2     (causal attention, forward + backward,
                                                                     per sample: packing attends within samples)

where text_tokens counts every real token of the sequence (media placeholders included: they go through the
decoder), trained_params are the decoder + projector weights being trained (all of them for ``full``, the
adapters and the projector for LoRA; the vision tower is frozen in every run), and the peak FLOP/s is measured
on this GPU with a bf16 8192 x 8192 matmul, not taken from a datasheet.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def peak_bf16_flops(device: torch.device) -> float:
    """Measured FLOP/s of a bf16 8192^3 matmul (the best of 10 after warm-up)."""
    n = 8192 if device.type == "cuda" else 512
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(13):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def make_samples(count: int, seed: int = 0) -> list[dict]:
    """896 px square images (thumb + 4 tiles at 448 px) with answers of 10 to 300 words.

    One image size, because TRL's own vision collator cannot batch PLM images with different tile counts
    (the image processor's tensors do not stack: "stack expects each tensor to be equal size").
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    words = "the scan shows a small opacity in the left lower lobe with no effusion and normal heart size".split()
    samples = []
    for _ in range(count):
        image = Image.fromarray(rng.integers(0, 256, (896, 896, 3), dtype=np.uint8))
        answer = " ".join(rng.choice(words, size=int(rng.integers(10, 300))))
        samples.append({
            "messages": [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]},
                {"role": "assistant", "content": [{"type": "text", "text": answer}]},
            ],
            "images": [image],
        })
    return samples


def processor_with_real_geometry(workdir: Path, smoke: bool):
    """The tiny PLM's processor (its tokenizer and chat template) with PLM's 448 px tiles (56 px when smoke)."""
    from transformers import AutoProcessor

    from plm_tune.testing import build_tiny_plm

    path = build_tiny_plm(workdir / "tiny", tile_size=56 if smoke else 448)
    return path, AutoProcessor.from_pretrained(path)


def build_model(size: str, processor, tiny_path: Path, device: torch.device, smoke: bool):
    from transformers import AutoModelForImageTextToText, PerceptionLMForConditionalGeneration

    from plm_tune.memory import plm_config

    if smoke:
        return AutoModelForImageTextToText.from_pretrained(tiny_path, dtype=torch.float32)
    config = plm_config(size)
    tokenizer = processor.tokenizer
    config.image_token_id = tokenizer.convert_tokens_to_ids("<|image|>")
    config.video_token_id = tokenizer.convert_tokens_to_ids("<|video|>")
    with device:
        return PerceptionLMForConditionalGeneration._from_config(config, dtype=torch.bfloat16)


def flops_per_step(model, batches_tokens: list[list[int]], patches: int) -> float:
    """The MFU numerator for the given batches (see the module docstring): per-sample lengths, vision patches."""
    trained = frozen_decoder = frozen_vision = 0
    for name, param in model.named_parameters():
        if "vision_tower" in name:
            frozen_vision += param.numel()
        elif param.requires_grad:
            trained += param.numel()
        else:
            frozen_decoder += param.numel()
    text = model.config.get_text_config()
    lengths = [n for batch in batches_tokens for n in batch]
    tokens = sum(lengths)
    attention = 12 * text.num_hidden_layers * text.hidden_size * sum(n * n for n in lengths) / 2
    return 6 * trained * tokens + 4 * frozen_decoder * tokens + 2 * frozen_vision * patches + attention


def run(variant: str, size: str, method: str, args, workdir: Path, device: torch.device, peak: float) -> dict:
    from peft import LoraConfig, get_peft_model
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from plm_tune import PLMCollator, build_trainer
    from plm_tune.model import LORA_LINEARS  # the decoder's linears, as load_model(method='lora') targets

    tiny_path, processor = processor_with_real_geometry(workdir, args.smoke)
    samples = make_samples(args.samples)
    processor.image_processor.max_num_tiles = args.max_tiles  # for every run: TRL's collator reads only this
    model = build_model(size, processor, tiny_path, device, args.smoke)
    for param in model.model.vision_tower.parameters():
        param.requires_grad = False
    lora = LoraConfig(r=16, lora_alpha=32, target_modules=LORA_LINEARS["language"],
                      modules_to_save=["multi_modal_projector"], task_type="CAUSAL_LM")
    if variant.endswith("liger"):
        from liger_kernel.transformers import apply_liger_kernel_to_llama

        apply_liger_kernel_to_llama(rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                    fused_linear_cross_entropy=False, model=model.model.language_model)
    config = dict(output_dir=str(workdir / "trainer"), max_steps=args.steps, per_device_train_batch_size=args.batch,
                  learning_rate=1e-4, logging_steps=10**6, save_strategy="no", report_to="none", seed=0,
                  bf16=device.type == "cuda", max_length=None, disable_tqdm=True, dataloader_pin_memory=False,
                  use_cpu=device.type != "cuda", activation_checkpointing=not args.smoke)
    clock: dict = {"steps": [], "lengths": [], "patches": []}

    class Clock(TrainerCallback):
        def on_step_begin(self, a, state, control, **kwargs):
            if device.type == "cuda":
                torch.cuda.synchronize()
            clock["start"] = time.perf_counter()

        def on_step_end(self, a, state, control, **kwargs):
            if device.type == "cuda":
                torch.cuda.synchronize()
            clock["steps"].append(time.perf_counter() - clock["start"])

    def count(batch: dict) -> dict:
        """Record the real tokens of each sample and the vision patches of a batch."""
        if "position_ids" in batch and "attention_mask" not in batch:
            starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist() + [batch["input_ids"].shape[1]]
            clock["lengths"].append([b - a for a, b in zip(starts, starts[1:], strict=False)])
        else:
            clock["lengths"].append(batch["attention_mask"].sum(1).tolist())
        tile = batch["pixel_values"].shape[-1]
        clock["patches"].append(batch["pixel_values"].shape[1] * (tile // 14) ** 2)
        return batch

    if variant == "trl":
        from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

        trl_collator = DataCollatorForVisionLanguageModeling(processor)
        dataset = [{"messages": s["messages"], "images": s["images"]} for s in samples]
        import datasets

        trainer = SFTTrainer(model=model, args=SFTConfig(**config, remove_unused_columns=False),
                             train_dataset=datasets.Dataset.from_list(dataset), processing_class=processor,
                             data_collator=lambda b: count(trl_collator(b)),
                             peft_config=lora if method == "lora" else None, callbacks=[Clock()])
    else:
        if method == "lora":
            model = get_peft_model(model, lora)
        packed = variant != "plm-tune"

        class Counting(PLMCollator):
            def __call__(self, batch):
                return count(super().__call__(batch))

        collator = Counting(processor, padding_free=packed, pixel_dtype=torch.bfloat16 if device.type == "cuda"
                            else torch.float32)
        trainer = build_trainer(model, processor, samples, args=SFTConfig(
            **config, padding_free=packed, train_sampling_strategy="group_by_length" if packed else "random"),
            collator=collator, callbacks=[Clock()])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    timed = clock["steps"][2:]  # 2 warm-up steps
    lengths = clock["lengths"][2 : 2 + len(timed)]
    seconds = sum(timed)
    tokens = sum(sum(batch) for batch in lengths)
    # The collator runs one batch ahead of the optimizer at most; the timed steps' batches are the same slice.
    flops = flops_per_step(trainer.model, lengths, sum(clock["patches"][2 : 2 + len(timed)]))
    result = {
        "size": size, "method": method, "variant": variant, "steps": len(timed), "tokens_per_s": tokens / seconds,
        "samples_per_s": sum(len(batch) for batch in lengths) / seconds,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan"),
        "mfu": flops / seconds / peak,
    }
    del trainer, model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["1B", "3B"])
    parser.add_argument("--methods", nargs="+", default=["lora", "full"])
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per run; the first 2 are not timed")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--max-tiles", type=int, default=9)
    parser.add_argument("--smoke", action="store_true", help="tiny PLM on the CPU, to check the script runs")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.smoke:
        args.sizes, args.steps, args.samples = ["tiny"], 4, 16
        device = torch.device("cpu")
    elif not torch.cuda.is_available():
        raise SystemExit("No CUDA GPU: this benchmark is for a GPU (use --smoke to check it on a CPU).")
    else:
        device = torch.device("cuda")
    peak = peak_bf16_flops(device)
    print(f"peak measured: {peak / 1e12:.1f} TFLOP/s ({'bf16 8192^3 matmul' if device.type == 'cuda' else 'fp32'})")
    variants = ["trl", "plm-tune", "plm-tune packed"]
    try:
        import liger_kernel  # noqa: F401

        variants.append("plm-tune packed + liger")
    except ImportError:
        print("liger_kernel not installed: the Liger run is skipped (pip install liger-kernel)")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            for method in args.methods:
                for variant in variants:
                    try:
                        result = run(variant, size, method, args, Path(tmp), device, peak)
                    except torch.OutOfMemoryError:
                        result = {"size": size, "method": method, "variant": variant, "error": "out of memory"}
                        gc.collect()
                        torch.cuda.empty_cache()
                    results.append(result)
                    print(json.dumps(result), flush=True)
    print("\n| size | method | run | tokens/s | samples/s | peak GiB | MFU | tokens/s vs trl | samples/s vs trl |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        if "error" in r:
            print(f"| {r['size']} | {r['method']} | {r['variant']} | {r['error']} | | | | | |")
            continue
        base = next((b for b in results if b["size"] == r["size"] and b["method"] == r["method"]
                     and b["variant"] == "trl" and "error" not in b), None)
        ratios = [f"{r[key] / base[key]:.2f}x" if base else "-" for key in ("tokens_per_s", "samples_per_s")]
        print(f"| {r['size']} | {r['method']} | {r['variant']} | {r['tokens_per_s']:.0f} | {r['samples_per_s']:.2f} | "
              f"{r['peak_gib']:.1f} | {r['mfu']:.1%} | {' | '.join(ratios)} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
