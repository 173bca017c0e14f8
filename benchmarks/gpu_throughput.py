"""Training throughput of the real PLM-1B / PLM-3B architectures on one CUDA GPU: plain TRL + peft against plm-tune.

    python benchmarks/gpu_throughput.py                       # PLM-1B and -3B, LoRA and full, about 8 minutes
    python benchmarks/gpu_throughput.py --sizes 3B --methods lora --steps 12
    python benchmarks/gpu_throughput.py --attn flash_attention_2   # needs flash-attn (no PyPI wheel: build it)
    python benchmarks/gpu_throughput.py --smoke               # the same code on a CPU with the tiny PLM (4 steps)

The model: weights are random (speed does not depend on them). ``PerceptionLMForConditionalGeneration`` is built
once per size from ``plm_tune.modeling.memory.plm_config(size)`` (the released architectures), in bf16 on the GPU, and
saved with the processor to a temporary folder; every run then loads that folder the way its side would (below).
The processor is the tiny PLM's tokenizer with PLM's real image geometry (448 px tiles, 256 tokens per tile),
and the model's image / video token ids are set to that tokenizer's, so nothing is downloaded.

The data: 896 px images (thumb+tile: 5 tiles, 1,280 tokens) with answers of 10 to 300 words. One image size,
because plain TRL cannot batch PLM images of different tile counts (see ``make_samples``).

Runs, each with the same samples, batch size, optimizer, learning rate, LoRA settings and dtype policy:

- ``trl``: plain TRL + peft, as a hand-written script would do it: ``from_pretrained`` in bf16, the vision tower
  frozen by hand, ``SFTTrainer`` with its own vision collator (``DataCollatorForVisionLanguageModeling``: padded
  batches, loss on every text token), ``peft_config`` for LoRA and TRL's activation checkpointing.
- ``plm-tune``: ``plm_tune.load_model`` (the vision tower frozen, checkpointing in the decoder and the tower) and
  ``build_trainer``, padded random batches (loss on the answers).
- ``plm-tune packed``: ``padding_free`` + ``group_by_length``.
- ``+ liger``: the previous with Liger's Llama kernels (RMSNorm, RoPE, SwiGLU) on the decoder, when
  ``liger_kernel`` is installed (skipped otherwise).

The dtype policy, the recipes' own: weights load in bf16, every trainable parameter is upcast to fp32 (the
optimizer steps fp32 weights), frozen parameters stay bf16, and the Trainer's ``bf16=True`` autocast computes in
bf16. A hand-written TRL script would train bf16 weights (LoRA adapters excepted: peft upcasts them); the
baseline here gets the same upcast as plm-tune, applied after its trainer is built, so both sides do the same
arithmetic and differ only in how they batch and score. ``plm_tune.modeling.precision.set_training_dtypes`` applies it
to every run (a no-op where ``load_model`` and ``build_trainer`` already did it). On the CPU (``--smoke``)
everything is fp32.

Reported per run, over the steps after 2 warm-up steps:

- step time: wall time from one ``on_step_end`` to the next (after a CUDA sync), so it holds the whole optimizer
  step, the DataLoader's fetch and the collator included (the Trainer fetches a batch before ``on_step_begin``).
  One-off costs before the first step (``group_by_length``'s cost table) are not in it.
- real tokens/s (tokens that are not padding) and samples/s;
- peak memory: ``torch.cuda.max_memory_reserved`` (what the GPU must hold for this run: the caching allocator's
  blocks) and ``max_memory_allocated`` (the tensors alone);
- MFU = model FLOPs per second / the GPU's datasheet dense bf16 peak (``DATASHEET_BF16_TFLOPS``), and the same
  against a measured bf16 8192^3 matmul as a second column. A GPU not in the table: the measured peak, labelled.

Model FLOPs, the same definition for every run (useful work: what training on these samples needs, not what a
run happens to compute), summed over the weights of the model's matmuls (``nn.Linear`` / ``nn.Conv2d``; an
embedding lookup is no matmul, so ``embed_tokens`` and position embeddings are not counted):

    per decoder token      4 * N_decoder_frozen + 6 * N_decoder_trained   (a trained weight: forward, input
                                                  grad, weight grad; a frozen one that gradients pass through
                                                  (LoRA's base): forward and input grad)
    per answer token       (4 or 6) * N_lm_head   the LM head, once, only at the positions that predict an answer
                                                  token (the answers and their <|eot_id|>: what plm-tune trains
                                                  on). TRL projects and scores every text position: work, but
                                                  not counted as useful. 6 where it trains (full, tied to the
                                                  embedding in PLM-1B / 3B), 4 under LoRA.
    per vision patch       6 * N_projector        trained in every run (its first linear needs no input grad: an
                                                  over-count of about 0.2% of a step); the patch embedding: 2 * N
    per vision token       2 * N_vision           forward only, the tower is frozen; CLS tokens included
    attention              6 * layers * width * sum(len_i ** 2)         decoder, causal, forward + backward, per
                                                                        sample (packing attends within samples)
                           4 * layers_v * width_v * tile_tokens ** 2    vision, per tile, forward only

where the decoder tokens of a sample are all its real tokens (media placeholders go through the decoder), the
vision work counts every tile of every image in each batch, and LoRA's adapters are trained linears of their own.
Activation checkpointing's recomputation is not counted (it is a cost, not model FLOPs).
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import TrainerCallback

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from plm_tune import PLMCollator  # noqa: E402  (after the path: runs from a checkout without an install)

WARMUP_STEPS = 2

# Dense bf16 tensor-core peaks from NVIDIA's datasheets (TFLOP/s, without 2:4 sparsity), matched in order against
# torch.cuda.get_device_name(), e.g. "NVIDIA H100 80GB HBM3" (SXM), "NVIDIA H100 PCIe", "NVIDIA A100-SXM4-80GB".
# H100 NVL / H200 NVL have lower clocks than their SXM parts and are left to the measured peak.
DATASHEET_BF16_TFLOPS = (
    (r"H100.*PCIe", "H100 PCIe", 756.0),
    (r"H100.*(HBM3|SXM)", "H100 SXM", 989.4),
    (r"H200(?!.*NVL)", "H200", 989.4),
    (r"A100", "A100", 312.0),
    (r"L40S", "L40S", 362.0),
)


def datasheet_peak(device_name: str) -> tuple[str, float] | None:
    """``(model, FLOP/s)`` of the GPU named ``device_name`` from ``DATASHEET_BF16_TFLOPS``; None if not listed.

    >>> datasheet_peak("NVIDIA H100 80GB HBM3")
    ('H100 SXM', 989400000000000.0)
    >>> datasheet_peak("NVIDIA H100 NVL") is None
    True
    """
    for pattern, label, tflops in DATASHEET_BF16_TFLOPS:
        if re.search(pattern, device_name, flags=re.IGNORECASE):
            return label, tflops * 1e12
    return None


def measured_peak_flops(device: torch.device) -> float:
    """Measured FLOP/s of a bf16 8192^3 matmul (fp32 512^3 on a CPU), the best of 10 after warm-up."""
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


def answer_of(sample: dict) -> str:
    """The assistant's answer text (a raw sample, or a row of a ``datasets`` table made from one)."""
    return sample["messages"][-1]["content"][0]["text"]


# ------------------------------------------------------------------------------------------------------ model
def build_model(size: str, max_tiles: int, workdir: Path, device: torch.device, smoke: bool) -> Path:
    """Build PLM-``size`` at random init (the tiny PLM with ``smoke``) and save it with its processor; return the folder.

    The processor is the tiny PLM's tokenizer with PLM's 448 px tiles (56 px when smoke), ``max_tiles`` per image.
    """
    from transformers import AutoConfig, AutoProcessor, PerceptionLMForConditionalGeneration

    from plm_tune.modeling.memory import plm_config
    from plm_tune.modeling.testing import build_tiny_plm

    tiny = build_tiny_plm(workdir / "tiny", tile_size=56 if smoke else 448)
    processor = AutoProcessor.from_pretrained(tiny)
    processor.image_processor.max_num_tiles = max_tiles  # TRL's collator reads only this
    if smoke:
        config = AutoConfig.from_pretrained(tiny)
    else:
        config = plm_config(size)
        config.image_token_id = processor.tokenizer.convert_tokens_to_ids("<|image|>")
        config.video_token_id = processor.tokenizer.convert_tokens_to_ids("<|video|>")
    torch.manual_seed(0)
    with device:  # random init where it runs: seconds on a GPU instead of a minute on its CPU
        model = PerceptionLMForConditionalGeneration._from_config(config, dtype=weights_dtype(device))
    out = workdir / f"plm-{size}"
    model.save_pretrained(out)
    processor.save_pretrained(out)
    del model
    release_memory(device)
    return out


def weights_dtype(device: torch.device) -> torch.dtype:
    """bf16 weights on a GPU (the recipes' load dtype); fp32 on a CPU, where bf16 training is refused."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------------ FLOPs
@dataclass
class BatchCount:
    """What one training batch held."""

    lengths: list[int]  # real tokens of each sample (media placeholders included, padding not)
    answer_tokens: int  # tokens of the batch's answers, each with its <|eot_id|>
    tiles: int  # image tiles of every image in the batch
    tile_size: int  # pixels per tile side


@dataclass
class FlopRates:
    """Model FLOPs per unit of work (see the module docstring), read from a model's matmul weights."""

    decoder: float  # per decoder token
    lm_head: float  # per answer token
    projector: float  # per vision patch
    vision: float  # per vision token (patches + prefix tokens)
    patch_embed: float  # per vision patch
    decoder_attention: float  # times sum(len_i ** 2)
    vision_attention: float  # times tile_tokens ** 2, per tile
    patch: int  # vision patch side, pixels
    prefix_tokens: int  # CLS tokens per tile

    def flops(self, batch: BatchCount) -> float:
        patches = batch.tiles * (batch.tile_size // self.patch) ** 2
        tile_tokens = (batch.tile_size // self.patch) ** 2 + self.prefix_tokens
        return (self.decoder * sum(batch.lengths) + self.lm_head * batch.answer_tokens
                + (self.projector + self.patch_embed) * patches + self.vision * batch.tiles * tile_tokens
                + self.decoder_attention * sum(n * n for n in batch.lengths)
                + self.vision_attention * batch.tiles * tile_tokens**2)


def flop_rates(model: torch.nn.Module) -> FlopRates:
    """FLOPs per unit of work of a (peft-wrapped or plain) PLM, from its ``nn.Linear`` / ``nn.Conv2d`` weights.

    A weight that trains costs 6 FLOPs per weight and token (forward, input grad, weight grad), a frozen one that
    gradients pass through 4, the frozen tower 2. peft's adapters are linears of their own; the unused originals
    that peft keeps next to ``modules_to_save`` copies are skipped.

    Raises:
        ValueError: a trainable vision tower (the benchmark's FLOP count assumes it frozen, as in every run).
    """
    rates = dict.fromkeys(("decoder", "lm_head", "projector", "vision", "patch_embed"), 0.0)
    tower = None
    for name, module in model.named_modules():
        if name.endswith("vision_tower"):
            tower = module.timm_model
        if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) or "original_module" in name.split("."):
            continue
        weights = sum(p.numel() for p in module.parameters(recurse=False))
        trained = module.weight.requires_grad
        if "vision_tower" in name:
            if trained:
                raise ValueError(f"{name} trains: this benchmark counts the vision tower as frozen; freeze it.")
            rates["patch_embed" if isinstance(module, torch.nn.Conv2d) else "vision"] += 2 * weights
        elif "multi_modal_projector" in name:
            rates["projector"] += (6 if trained else 4) * weights
        elif name.split(".")[-1] == "lm_head":
            rates["lm_head"] += (6 if trained else 4) * weights
        else:
            rates["decoder"] += (6 if trained else 4) * weights
    text = model.config.get_text_config()
    width = text.num_attention_heads * (getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads)
    return FlopRates(**rates, decoder_attention=6 * text.num_hidden_layers * width,
                     vision_attention=4 * len(tower.blocks) * tower.embed_dim,
                     patch=tower.patch_embed.patch_size[0], prefix_tokens=tower.num_prefix_tokens)


# -------------------------------------------------------------------------------------------- batches, clock
def count_batch(batch: dict, samples: list[dict], answer_tokens: dict[str, int]) -> BatchCount:
    """The real tokens of each sample, the answer tokens and the image tiles of one collated batch."""
    if "position_ids" in batch and "attention_mask" not in batch:  # packed: positions restart at each sample
        starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist() + [batch["input_ids"].shape[1]]
        lengths = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    else:
        lengths = batch["attention_mask"].sum(1).tolist()
    pixels = batch["pixel_values"]  # (batch, tiles, 3, T, T) from TRL; (1, total_tiles, 3, T, T) from plm-tune
    tile = pixels.shape[-1]
    return BatchCount(lengths=lengths, answer_tokens=sum(answer_tokens[answer_of(s)] for s in samples),
                      tiles=pixels.numel() // (3 * tile * tile), tile_size=tile)


class CountingPLMCollator(PLMCollator):
    """``PLMCollator`` that records a ``BatchCount`` of every batch it makes, in order, in ``counts``."""

    def __init__(self, processor, answer_tokens: dict[str, int], **kwargs) -> None:
        super().__init__(processor, **kwargs)
        self.answer_tokens = answer_tokens
        self.counts: list[BatchCount] = []

    def __call__(self, samples):
        batch = super().__call__(samples)
        self.counts.append(count_batch(batch, samples, self.answer_tokens))
        return batch


class CountingCollator:
    """Any collator (here TRL's), recording a ``BatchCount`` of every batch it makes, in order, in ``counts``."""

    def __init__(self, collator, answer_tokens: dict[str, int]) -> None:
        self.collator = collator
        self.answer_tokens = answer_tokens
        self.counts: list[BatchCount] = []

    def __call__(self, samples):
        batch = self.collator(samples)
        self.counts.append(count_batch(batch, samples, self.answer_tokens))
        return batch


class StepClock(TrainerCallback):
    """The wall-clock time of every ``on_step_end``, after a CUDA sync: the gap between two is one whole step."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.ends: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.ends.append(time.perf_counter())


# ------------------------------------------------------------------------------------------------------- runs
def run(variant: str, size: str, method: str, model_dir: Path, samples: list[dict], args, workdir: Path,
        device: torch.device, peaks: dict[str, float]) -> dict:
    import datasets
    from peft import LoraConfig
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import SFTConfig, SFTTrainer
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    from plm_tune import build_trainer, load_model
    from plm_tune.arguments import ModelArguments
    from plm_tune.modeling.model import LORA_LINEARS
    from plm_tune.modeling.precision import attention_by_part, set_training_dtypes

    smoke = device.type != "cuda"
    dtype = weights_dtype(device)
    config = dict(output_dir=str(workdir / "trainer"), max_steps=args.steps, per_device_train_batch_size=args.batch,
                  learning_rate=1e-4, logging_steps=10**6, save_strategy="no", report_to="none", seed=0,
                  bf16=not smoke, max_length=None, disable_tqdm=True, dataloader_pin_memory=False, use_cpu=smoke)
    clock = StepClock(device)
    if variant == "trl":  # what a hand-written TRL script does, plus the dtype policy (set_training_dtypes)
        model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=dtype, device_map=device.type,
                                                            attn_implementation=attention_by_part(args.attn))
        processor = AutoProcessor.from_pretrained(model_dir)
        model.model.vision_tower.requires_grad_(False)
        lora = LoraConfig(r=ModelArguments.lora_r, lora_alpha=ModelArguments.lora_alpha,
                          lora_dropout=ModelArguments.lora_dropout, target_modules=LORA_LINEARS["language"],
                          modules_to_save=["multi_modal_projector"], task_type="CAUSAL_LM")
        collator = CountingCollator(DataCollatorForVisionLanguageModeling(processor), answers(samples, processor))
        trainer = SFTTrainer(model=model, args=SFTConfig(**config, remove_unused_columns=False,
                                                         activation_checkpointing=not smoke),
                             train_dataset=datasets.Dataset.from_list(samples), processing_class=processor,
                             data_collator=collator, peft_config=lora if method == "lora" else None,
                             callbacks=[clock])
    else:  # as plm_tune.apps.finetune does: load_model owns checkpointing (decoder and tower), the Trainer's is off
        model, processor = load_model(str(model_dir), method=method, freeze=("vision",), dtype=dtype, seed=0,
                                      gradient_checkpointing=not smoke, attn_implementation=args.attn,
                                      device_map=device.type)
        if variant.endswith("liger"):
            from liger_kernel.transformers import apply_liger_kernel_to_llama

            base = model.get_base_model() if hasattr(model, "get_base_model") else model
            apply_liger_kernel_to_llama(rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                        fused_linear_cross_entropy=False, model=base.model.language_model)
        packed = variant != "plm-tune"
        collator = CountingPLMCollator(processor, answers(samples, processor), padding_free=packed,
                                       pixel_dtype=dtype)
        trainer = build_trainer(model, processor, samples, args=SFTConfig(
            **config, activation_checkpointing=False, padding_free=packed,
            train_sampling_strategy="group_by_length" if packed else "random"), collator=collator, callbacks=[clock])
    set_training_dtypes(trainer.model)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.train()

    # Step k (1-based) ends at clock.ends[k - 1] and trained on collated batch k - 1 (the DataLoader may collate
    # one batch ahead, which shifts when a batch is made, not which batch a step trains on).
    seconds = clock.ends[-1] - clock.ends[WARMUP_STEPS - 1]
    timed = collator.counts[WARMUP_STEPS : len(clock.ends)]
    rates = flop_rates(trainer.model)
    flops = sum(rates.flops(batch) for batch in timed)
    result = {
        "size": size, "method": method, "variant": variant, "steps": len(timed),
        "tokens_per_s": sum(sum(b.lengths) for b in timed) / seconds,
        "samples_per_s": sum(len(b.lengths) for b in timed) / seconds,
        "reserved_gib": torch.cuda.max_memory_reserved() / 2**30 if device.type == "cuda" else float("nan"),
        "allocated_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan"),
        "mfu": flops / seconds / peaks["mfu"],
        "mfu_matmul": flops / seconds / peaks["matmul"],
    }
    del trainer, model
    release_memory(device)
    return result


def answers(samples: list[dict], processor) -> dict[str, int]:
    """Tokens of each answer with its <|eot_id|>, by answer text: the positions whose LM head counts as useful."""
    return {answer_of(s): len(processor.tokenizer(answer_of(s), add_special_tokens=False).input_ids) + 1
            for s in samples}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["1B", "3B"])
    parser.add_argument("--methods", nargs="+", default=["lora", "full"], choices=("lora", "full"))
    parser.add_argument("--steps", type=int, default=10,
                        help=f"optimizer steps per run; the first {WARMUP_STEPS} are not timed")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--max-tiles", type=int, default=9)
    parser.add_argument("--smoke", action="store_true", help="tiny PLM on the CPU, to check the script runs")
    parser.add_argument("--attn", default="sdpa", choices=("sdpa", "flash_attention_2"),
                        help="the decoder's attention kernel (the tower keeps sdpa); flash_attention_2 needs flash-attn")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.smoke:
        args.sizes, args.steps, args.samples = ["tiny"], 4, 16
        device = torch.device("cpu")
    elif not torch.cuda.is_available():
        raise SystemExit("No CUDA GPU: this benchmark is for a GPU (use --smoke to check it on a CPU).")
    else:
        device = torch.device("cuda")
    if args.steps <= WARMUP_STEPS:
        raise SystemExit(f"--steps {args.steps}: the first {WARMUP_STEPS} are warm-up; give at least {WARMUP_STEPS + 1}.")

    measured = measured_peak_flops(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    sheet = datasheet_peak(name) if device.type == "cuda" else None
    print(f"device: {name}; measured peak: {measured / 1e12:.1f} TFLOP/s "
          f"({'bf16 8192^3 matmul' if device.type == 'cuda' else 'fp32 512^3 matmul'})")
    if sheet:
        print(f"MFU against the datasheet dense bf16 peak of the {sheet[0]}: {sheet[1] / 1e12:.1f} TFLOP/s; "
              "'MFU matmul' against the measured one")
    else:
        print(f"{name} is not in DATASHEET_BF16_TFLOPS: MFU is against the measured peak (both columns)")
    peaks = {"mfu": sheet[1] if sheet else measured, "matmul": measured}

    variants = ["trl", "plm-tune", "plm-tune packed"]
    try:
        import liger_kernel  # noqa: F401

        variants.append("plm-tune packed + liger")
    except ImportError:
        print("liger_kernel not installed: the Liger run is skipped (pip install liger-kernel)")
    samples = make_samples(args.samples)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            model_dir = build_model(size, args.max_tiles, Path(tmp), device, args.smoke)
            for method in args.methods:
                for variant in variants:
                    try:
                        result = run(variant, size, method, model_dir, samples, args, Path(tmp), device, peaks)
                    except torch.OutOfMemoryError:
                        result = {"size": size, "method": method, "variant": variant, "error": "out of memory"}
                    release_memory(device)  # out of the except block, whose traceback holds the failed run's model
                    results.append(result)
                    print(json.dumps(result), flush=True)
    mfu = f"MFU ({sheet[0]} datasheet)" if sheet else "MFU (measured peak)"
    print(f"\n{args.attn} attention, {args.steps - WARMUP_STEPS} timed steps of batch {args.batch}")
    print(f"| size | method | run | tokens/s | samples/s | reserved GiB | allocated GiB | {mfu} | MFU matmul "
          "| tokens/s vs trl | samples/s vs trl |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        if "error" in r:
            print(f"| {r['size']} | {r['method']} | {r['variant']} | {r['error']} | | | | | | | |")
            continue
        base = next((b for b in results if b["size"] == r["size"] and b["method"] == r["method"]
                     and b["variant"] == "trl" and "error" not in b), None)
        ratios = [f"{r[key] / base[key]:.2f}x" if base else "-" for key in ("tokens_per_s", "samples_per_s")]
        print(f"| {r['size']} | {r['method']} | {r['variant']} | {r['tokens_per_s']:.0f} | {r['samples_per_s']:.2f} | "
              f"{r['reserved_gib']:.1f} | {r['allocated_gib']:.1f} | {r['mfu']:.1%} | {r['mfu_matmul']:.1%} | "
              f"{' | '.join(ratios)} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
