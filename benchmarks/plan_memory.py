"""Check ``plm_tune.estimate_memory`` against the measured peak memory of real training steps on this CPU.

    .venv/bin/python benchmarks/plan_memory.py            # tiny, small and mid-size PLMs; ~3 min on 2 CPU cores
    .venv/bin/python benchmarks/plan_memory.py --quick    # tiny and small only
    .venv/bin/python benchmarks/plan_memory.py --bf16     # a bf16 GPU's dtypes on the small PLM; ~3 min

Each measurement runs in a fresh Python process: the model is loaded with ``plm_tune.load_model`` (LoRA or
full, frozen vision tower, with or without gradient checkpointing; float32 as on CPU, or with ``--bf16`` the
frozen weights in bf16, the trained ones in float32 and the forward under bf16 autocast), its parameters are
copied out of the safetensors memory map (after a warm-up load and step on a throwaway copy, so lazy
imports and thread pools are paid before the baseline), then the kernel's peak-RSS mark is reset (``/proc/self/clear_refs``)
and two training steps run: ``model(**batch).loss`` (``--bf16``: the loss on the labelled positions only),
``backward()``, ``AdamW.step()`` (fused, the Trainer's default), ``zero_grad()``. The second step is the one
with optimizer states alive. Measured peak = ``VmHWM`` after the steps minus ``VmRSS``
before the model was loaded. glibc is told to serve every allocation of 64 KiB or more with its own mapping
(``MALLOC_MMAP_THRESHOLD_``), so a freed tensor leaves the resident set at once and RSS follows the live bytes
instead of the allocator's cache. What this measures is the host-memory peak of a CPU step; a GPU run adds
the CUDA context and allocator rounding and would be checked with ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

# Architectures measured, as overrides of build_tiny_plm's tiny PLM: "tiny" is the test model itself; "small"
# has a real-size vocabulary (logits dominate); "mid" has real-ish widths (~170M parameters) and 448 px tiles.
MODELS = {
    "tiny": {},
    "small": {"text": {"hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 2,
                       "vocab_size": 32000}},
    "mid": {"text": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 6,
                     "num_attention_heads": 16, "num_key_value_heads": 4, "vocab_size": 32000},
            "vision": {"embed_dim": 512, "depth": 4, "num_heads": 8, "img_size": (448, 448),
                       "ref_feat_shape": (32, 32)}},
}
# (model, batch_size, seq_len, tiles per sample)
SHAPES = {"tiny": (4, 512, 5), "small": (2, 512, 5), "mid": (2, 512, 1)}
# --bf16: a bf16 GPU's run (frozen weights bf16, trained ones float32, bf16 autocast), with the loss on 32 labelled
# tokens per row as build_trainer scores it: logits for every position would put the CPU's slow bf16 matmuls
# (no native bf16 kernels: measure() caps oneDNN below them) to [tokens, vocab] gradients.
BF16 = {"dtype": "bfloat16", "autocast": "bfloat16", "labelled": 32}


def build_model(name: str, folder: Path) -> Path:
    """Write the random-init PLM ``name`` (see MODELS) with the tiny PLM's processor to ``folder``."""
    from transformers import AutoConfig, PerceptionLMForConditionalGeneration

    from plm_tune.modeling.testing import build_tiny_plm

    path = build_tiny_plm(folder, seed=0)
    overrides = MODELS[name]
    if not overrides:
        return path
    config = AutoConfig.from_pretrained(path)
    for key, value in overrides.get("text", {}).items():
        setattr(config.text_config, key, value)
    config.vision_config.model_args.update(overrides.get("vision", {}))
    PerceptionLMForConditionalGeneration(config).save_pretrained(path)
    return path


def _rss(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _measure(spec: dict) -> dict:
    """In the child: load, reset the peak mark, two training steps; bytes measured."""
    import contextlib
    import ctypes
    import gc

    import torch

    from plm_tune import load_model
    from plm_tune.encoding.sparse_logits import project_labelled_only

    torch.manual_seed(0)
    torch.set_num_threads(2)
    dtype = getattr(torch, spec["dtype"])
    autocast = getattr(torch, spec["autocast"]) if spec["autocast"] else None

    def load():
        # LoRA settings only for the LoRA methods: given to method full, load_model refuses them (they'd be ignored).
        lora = {} if spec["method"] == "full" else {"lora_r": spec["lora_r"], "lora_dropout": 0.0}
        model, _ = load_model(spec["path"], method=spec["method"], freeze=("vision",), dtype=dtype,
                              gradient_checkpointing=spec["gradient_checkpointing"], **lora)
        for param in model.parameters():  # out of the file mapping, into ordinary memory, as after a real load
            param.data = param.data.clone()
            if param.requires_grad:  # the run's policy: trained weights in float32 (load_model does it, merged)
                param.data = param.data.float()
        return model

    def batch_for(config, rows: int, seq: int, tiles: int) -> dict:
        tile = config.vision_config.model_args["img_size"][0]
        per_tile = (tile // 14 // 2) ** 2
        ids = torch.randint(0, 500, (rows, seq))  # below every special token id
        ids[:, 1 : 1 + tiles * per_tile] = config.image_token_id  # each row's tiles, after <|begin_of_text|>
        batch = {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids),
                 "pixel_values": torch.randn(1, rows * tiles, 3, tile, tile, dtype=dtype)}
        batch["attention_mask"][-1, -seq // 4 :] = 0  # a padded last row, as in a real batch
        if spec["labelled"] is not None:  # an answer of that many tokens before each row's padding
            lengths = batch["attention_mask"].sum(1)
            batch["labels"][:] = -100
            for row, length in enumerate(lengths.tolist()):
                batch["labels"][row, length - spec["labelled"] : length] = ids[row, length - spec["labelled"] : length]
        return batch

    def loss_of(model, batch):
        mixed = torch.autocast("cpu", autocast) if autocast else contextlib.nullcontext()
        if spec["labelled"] is None:  # the model's own loss over every position
            with mixed:
                return model(**batch).loss
        # As build_trainer off CUDA: logits at the labelled positions only, a float32 log-softmax after autocast.
        with project_labelled_only(model, batch["labels"]) as targets, mixed:
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}, logits_to_keep=0).logits[0]
        return torch.nn.functional.cross_entropy(logits.float(), targets)

    # Warm-up on a throwaway copy: lazy imports, thread pools and kernel caches are the runtime's fixed cost,
    # not the step's, so they are paid before the baseline is taken.
    model = load()
    model.train()  # as measured: checkpointing and dropout act in training mode only
    tile = model.config.vision_config.model_args["img_size"][0]
    warm = batch_for(model.config, 1, (tile // 28) ** 2 + 8 + (spec["labelled"] or 0), 1)
    loss_of(model, warm).backward()
    del model, warm
    gc.collect()
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc_trim(0)
    before = _rss("VmRSS")
    model = load()
    gc.collect()
    libc.malloc_trim(0)
    loaded = _rss("VmRSS")
    batch = batch_for(model.config, spec["batch_size"], spec["seq_len"], spec["tiles"])
    # fused: the Trainer's default (optim="adamw_torch_fused"), which updates in place, without temporaries.
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)
    model.train()
    open("/proc/self/clear_refs", "w").write("5")  # reset VmHWM: loading transients are not the step's
    for _ in range(2):
        loss = loss_of(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return {"weights": loaded - before, "peak": _rss("VmHWM") - before, "loss": float(loss)}


def measure(path: Path, method: str, *, gradient_checkpointing: bool, batch_size: int, seq_len: int, tiles: int,
            lora_r: int = 16, dtype: str = "float32", autocast: str | None = None,
            labelled: int | None = None) -> dict:
    """Measure one configuration in a fresh process; returns ``{"weights", "peak", "loss"}`` in bytes.

    ``dtype``: the load dtype (frozen weights; trained ones are float32); ``autocast``: the forward's autocast
    dtype (None: none); ``labelled``: the loss over that many labelled tokens per row, logits projected only
    there (as ``build_trainer`` off CUDA), instead of the model's own loss over every position.
    """
    spec = {"path": str(path), "method": method, "gradient_checkpointing": gradient_checkpointing,
            "batch_size": batch_size, "seq_len": seq_len, "tiles": tiles, "lora_r": lora_r, "dtype": dtype,
            "autocast": autocast, "labelled": labelled}
    # oneDNN capped below its bf16 / AMX kernels: on a CPU with amx_bf16 they hold buffers no GPU step has (the
    # LoRA --bf16 step of the small model peaked at 129 MB with them, 101 MB without, estimated 96 MB), and the
    # estimate counts what a GPU holds. CPUs without those instructions run the same kernels either way.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}
    code = f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import plan_memory; " \
           f"print('RESULT', json.dumps(plan_memory._measure(json.loads(sys.argv[1]))))"
    result = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True,
                            env=env, timeout=900)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    if result.returncode or not lines:
        raise RuntimeError(f"measurement failed ({spec}):\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def estimate(path: Path, method: str, *, gradient_checkpointing: bool, batch_size: int, seq_len: int, tiles: int,
             lora_r: int = 16, dtype: str = "float32", autocast: str | None = None, labelled: int | None = None):
    """The estimate for the same configuration as ``measure``."""
    import torch

    from plm_tune.modeling.memory import estimate_memory

    return estimate_memory(str(path), method, batch_size=batch_size, seq_len=seq_len, tiles_per_sample=tiles,
                           gradient_checkpointing=gradient_checkpointing, dtype=getattr(torch, dtype),
                           autocast=getattr(torch, autocast) if autocast else None, freeze=("vision",),
                           lora_r=lora_r, lora_dropout=0.0, device="cpu",
                           logit_tokens=None if labelled is None else batch_size * labelled)  # as measure() runs it


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny and small models only")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), help="measure only these models")
    parser.add_argument("--bf16", action="store_true", help="bf16 weights (frozen) and autocast; default: small only")
    args = parser.parse_args()
    names = args.models or (["small"] if args.bf16 else ["tiny", "small"] if args.quick else list(MODELS))
    precision = BF16 if args.bf16 else {}
    mib = 1024**2
    print(f"{'model':<6} {'params':>8} {'method':<5} {'ckpt':<5} {'batch':>9} {'est. weights':>12} "
          f"{'meas. weights':>13} {'est. peak':>10} {'meas. peak':>10} {'error':>7}")
    errors = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            path = build_model(name, Path(tmp) / name)
            batch_size, seq_len, tiles = SHAPES[name]
            for method in ("lora", "full"):
                for checkpointing in (False, True):
                    kwargs = dict(gradient_checkpointing=checkpointing, batch_size=batch_size, seq_len=seq_len,
                                  tiles=tiles, **precision)
                    est = estimate(path, method, **kwargs)
                    got = measure(path, method, **kwargs)
                    error = est.peak / got["peak"] - 1
                    errors.append(abs(error))
                    counted = est.precision
                    print(f"{name:<6} {est.total_params / 1e6:>7.1f}M {method:<5} {str(checkpointing):<5} "
                          f"{batch_size:>2}x{seq_len:<4}{tiles:>2}t {est.weights / mib:>10.0f}Mi "
                          f"{got['weights'] / mib:>11.0f}Mi {est.peak / mib:>8.0f}Mi {got['peak'] / mib:>8.0f}Mi "
                          f"{error:>+7.1%}", flush=True)
    print(f"largest |error| {max(errors):.1%}, mean |error| {sum(errors) / len(errors):.1%} "
          f"({len(errors)} configurations; {counted} on CPU; peak RSS of two steps)")


if __name__ == "__main__":
    main()
