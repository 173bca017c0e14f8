"""How much slower a DoRA training step is with ``lora_dropout > 0``, on a random Llama decoder (PLM's LM).

    .venv/bin/python benchmarks/dora_dropout.py                  # half PLM-1B's width, 2 layers; ~45 s on 2 idle cores
    .venv/bin/python benchmarks/dora_dropout.py --hidden 2048 --intermediate 8192 --layers 4 --tokens 1024

With dropout, peft's DoRA cannot reuse the base layer's output (it saw the undropped input) and runs the base
matmul again on the dropped input, in every adapted linear: ``DoraLinearVariant.forward`` passes
``base_result=None`` unless the dropout is an ``nn.Identity`` (peft 0.21 ``tuners/lora/variants.py`` lines
242-246), and ``DoraLinearLayer.forward`` then computes ``F.linear(x, weight)`` (``tuners/lora/dora.py`` line
163). LoRA with the same dropout is timed for reference. One step is a forward and a backward of a causal LM
loss; the three models take turns step by step (the order rotating), so drift on a shared machine falls on
all of them. Printed: each model's median step time with its min and max, and its per-round ratio to DoRA
without dropout (median and quartiles), the number that survives a machine shared with other work.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]  # load_model's language set


def step_seconds(model: torch.nn.Module, ids: torch.Tensor) -> float:
    start = time.perf_counter()
    model(input_ids=ids, labels=ids).loss.backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--intermediate", type=int, default=4096)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--dropout", type=float, default=0.05)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=args.hidden, intermediate_size=args.intermediate, num_hidden_layers=args.layers,
                         num_attention_heads=args.hidden // 64, num_key_value_heads=max(1, args.hidden // 256),
                         vocab_size=2048, max_position_embeddings=args.tokens)
    base = LlamaForCausalLM(config).to(args.device)
    variants = {
        f"DoRA dropout {args.dropout}": (True, args.dropout),
        "DoRA dropout 0.0": (True, 0.0),
        f"LoRA dropout {args.dropout}": (False, args.dropout),
    }
    models = {}
    for name, (dora, dropout) in variants.items():
        models[name] = get_peft_model(copy.deepcopy(base), LoraConfig(
            r=16, lora_alpha=32, lora_dropout=dropout, use_dora=dora, target_modules=TARGETS)).train()
    ids = torch.randint(0, config.vocab_size, (1, args.tokens), device=args.device)

    names, times = list(models), {name: [] for name in models}
    for step in range(args.steps + 2):  # the first 2 rounds warm up
        order = names[step % len(names):] + names[: step % len(names)]
        for name in order:
            seconds = step_seconds(models[name], ids)
            if args.device == "cuda":
                torch.cuda.synchronize()
            if step >= 2:
                times[name].append(seconds)

    print(f"{args.layers} layers, hidden {args.hidden}, intermediate {args.intermediate}, {args.tokens} tokens, "
          f"r=16 on {', '.join(TARGETS)}; {args.device}, {torch.get_num_threads()} threads, {args.steps} steps each")
    reference = times["DoRA dropout 0.0"]
    for name, seconds in times.items():
        # Each step's ratio to DoRA without dropout in the same round: steps seconds apart share the machine's load.
        ratios = sorted(s / r for s, r in zip(seconds, reference, strict=True))
        quartiles = statistics.quantiles(ratios, n=4)
        print(f"{name:<18} median {statistics.median(seconds) * 1000:7.1f} ms (min {min(seconds) * 1000:.1f}, "
              f"max {max(seconds) * 1000:.1f}); per-round ratio to DoRA dropout 0.0: median "
              f"{statistics.median(ratios):.2f}x, quartiles {quartiles[0]:.2f} - {quartiles[2]:.2f}")

if __name__ == "__main__":
    main()
