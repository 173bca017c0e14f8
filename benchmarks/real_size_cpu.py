"""PLM-1B at full depth and random init on this CPU: one training step per method, generation, merge, memory.

    .venv/bin/python benchmarks/real_size_cpu.py                     # PLM-1B, 16 + 23 layers: about an hour on 2 cores
    .venv/bin/python benchmarks/real_size_cpu.py --max-tiles 1 --methods lora,projector   # full depth, shorter
    .venv/bin/python benchmarks/real_size_cpu.py --text-layers 1 --vision-layers 1        # real widths, ~5 min

The model is ``build_random_plm("1B")``: PLM-1B's released architecture (2048-wide Llama 3.2 decoder, 128,256
vocabulary, PE-Core-L14 tower at 448 px) with random weights and the real tokenizer, written once to
``.cache/plm-1b-random`` (bfloat16 on disk, loaded in float32 as ``load_model`` does on a CPU). The batch is one
real sample: a 896x448 noise image cut into 448 px tiles by PLM's processor (``max_tiles=2``: 2 tiles and the
thumbnail, 768 image tokens) with a question and an answer, through ``PLMCollator``.

Each method runs in a fresh process: ``load_model`` (``lora`` / ``dora`` / ``qlora``: LoRA r=16 on the decoder,
projector trained in full, vision frozen; ``projector``: ``full`` with vision and language frozen), a warm-up
step on a short text-only batch (lazy imports, thread pools), then the peak-RSS mark is reset and one
training step runs (``model(**batch).loss``, ``backward()``, ``AdamW.step()``). Measured peak = ``VmHWM`` during
the step minus the process's RSS without the model (RSS after the warm-up minus the bytes of every parameter
and buffer). glibc serves allocations of 64 KiB and more with their own mappings (``MALLOC_MMAP_THRESHOLD_``),
so freed tensors leave the resident set. The estimate is ``estimate_memory`` for the same model, method, batch,
dtypes (float32, no autocast), frozen parts, LoRA settings and ``device="cpu"``. Then 4 new tokens are generated greedily (``plm_tune.generate``)
and LoRA / DoRA adapters are merged in memory (``merge_and_unload``), checked to give the same logits.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

METHODS = {  # name -> (load_model method, frozen parts)
    "lora": ("lora", ("vision",)),
    "dora": ("dora", ("vision",)),
    "qlora": ("qlora", ("vision",)),
    "projector": ("full", ("vision", "language")),
}
GIB = 1024**3


def _rss(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def sample(max_tiles: int = 2) -> dict:
    """One question about a 896x448 image (``max_tiles=2``: 2 tiles + thumbnail at 448 px) and its answer."""
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (448, 896, 3), dtype=np.uint8)
    return {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe it."}]},
                         {"role": "assistant", "content": "Coloured noise over two tiles, no structure."}],
            "images": [Image.fromarray(pixels)], "max_tiles": max_tiles}


def run_method(path: str, name: str, max_tiles: int = 2) -> dict:
    """In a fresh process: load, warm up, one measured step, generate, merge. Returns numbers."""
    import torch

    from plm_tune import PLMCollator, generate, load_model
    from plm_tune.modeling.memory import estimate_memory

    torch.manual_seed(0)
    method, freeze = METHODS[name]
    started = time.perf_counter()
    lora = {} if method == "full" else {"lora_r": 16, "lora_dropout": 0.0}  # full refuses LoRA settings
    model, processor = load_model(path, method=method, freeze=freeze, dtype=torch.float32, seed=0, **lora)
    load_s = time.perf_counter() - started
    collator = PLMCollator(processor)
    batch = collator([sample(max_tiles)])
    tiles = batch["pixel_values"].reshape(-1, 3, 448, 448).shape[0]
    seq_len = batch["input_ids"].shape[1]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, foreach=False)
    model.train()
    warm = collator([{"messages": [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hi."}]}])
    warm_loss = model(**warm).loss
    if warm_loss.requires_grad:  # text only: no gradient path when only the projector trains
        warm_loss.backward()
    optimizer.zero_grad(set_to_none=True)
    gc.collect()
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc_trim(0)
    model_bytes = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    baseline = _rss("VmRSS") - model_bytes
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM: loading transients are not the step's
    started = time.perf_counter()
    loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    step_s = time.perf_counter() - started
    measured = _rss("VmHWM") - baseline
    estimate = estimate_memory(path, method, batch_size=1, seq_len=seq_len, tiles_per_sample=tiles,
                               dtype=torch.float32, autocast=None, freeze=freeze, lora_r=16, lora_dropout=0.0,
                               device="cpu")  # as loaded above
    model.eval()
    started = time.perf_counter()
    generation = generate(model, processor, [sample(max_tiles)], max_new_tokens=4, batch_size=1, progress=False,
                          details=True)[0]
    generate_s = time.perf_counter() - started
    merge_s, merge_diff = None, None
    if name in ("lora", "dora"):
        with torch.no_grad():
            before = model(**warm).logits
            started = time.perf_counter()
            merged = model.merge_and_unload()
            merge_s = time.perf_counter() - started
            merge_diff = float((merged(**warm).logits - before).abs().max())
    return {"method": name, "tiles": tiles, "seq_len": seq_len, "loss": float(loss), "load_s": load_s,
            "step_s": step_s, "measured": measured, "estimated": estimate.peak, "generate_s": generate_s,
            "prompt_tokens": generation.prompt_tokens, "new_tokens": generation.new_tokens,
            "merge_s": merge_s, "merge_max_logit_diff": merge_diff,
            "trainable": estimate.trainable_params, "total": estimate.total_params}


def measure(path: Path, name: str, max_tiles: int = 2, timeout: int | None = 1500) -> dict:
    """``run_method`` in a fresh Python process (its own peak RSS, nothing cached from another method)."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    code = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import real_size_cpu; "
            f"print('RESULT', json.dumps(real_size_cpu.run_method(sys.argv[1], sys.argv[2], int(sys.argv[3]))))")
    result = subprocess.run([sys.executable, "-c", code, str(path), name, str(max_tiles)], capture_output=True, text=True, env=env,
                            timeout=timeout)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    if result.returncode or not lines:
        raise RuntimeError(f"{name} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def table(rows: list[dict]) -> str:
    """The printed table: one line per method."""
    lines = ["method     tiles  tokens  step s  gen s (4 tok)  merge s  measured GiB  estimated GiB  est/meas",
             "---------  -----  ------  ------  -------------  -------  ------------  -------------  --------"]
    for r in rows:
        merge = f"{r['merge_s']:.1f}" if r["merge_s"] is not None else "-"
        lines.append(f"{r['method']:<9}  {r['tiles']:>5}  {r['seq_len']:>6}  {r['step_s']:>6.1f}  "
                     f"{r['generate_s']:>13.1f}  {merge:>7}  {r['measured'] / GIB:>12.2f}  "
                     f"{r['estimated'] / GIB:>13.2f}  {r['estimated'] / r['measured']:>8.3f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--text-layers", type=int, help="fewer decoder layers than PLM-1B's 16")
    parser.add_argument("--vision-layers", type=int, help="fewer vision blocks than PLM-1B's 23")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, among {', '.join(METHODS)}")
    parser.add_argument("--max-tiles", type=int, default=2, help="tiles of the 896x448 image, plus its thumbnail")
    parser.add_argument("--model-dir", type=Path, help="where the random PLM is written (default .cache/...)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    import torch

    from plm_tune.modeling.testing_real import build_random_plm

    depth = f"{args.text_layers or 16}+{args.vision_layers or 23}"
    path = args.model_dir or ROOT / ".cache" / f"plm-1b-random-{depth}"
    if not (path / "model.safetensors").exists() and not (path / "model.safetensors.index.json").exists():
        started = time.perf_counter()
        build_random_plm(path, "1B", text_layers=args.text_layers, vision_layers=args.vision_layers,
                         dtype=torch.bfloat16)
        print(f"built PLM-1B ({depth} layers, random init) in {time.perf_counter() - started:.0f} s: {path}")
    rows = []
    for name in args.methods.split(","):
        if name not in METHODS:
            parser.error(f"--methods takes {', '.join(METHODS)}; got {name!r}.")
        rows.append(measure(path, name, args.max_tiles))
        r = rows[-1]
        print(f"{name}: loss {r['loss']:.3f}, load {r['load_s']:.0f} s, trainable {r['trainable']:,} of "
              f"{r['total']:,}, merged logits max diff {r['merge_max_logit_diff']}", flush=True)
        print(table([r]).splitlines()[-1], flush=True)  # the row now, in case a later method fails
    print(f"\nPLM-1B, {depth} decoder + vision layers, random init, float32 on {os.cpu_count()} CPU cores; "
          f"batch: 1 sample, 896x448 image, max_tiles={args.max_tiles}:")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
