"""One real DeepSpeed DPO run of the tiny PLM, launched by ``tests/test_dpo_methods.py``:

    DS_ACCELERATOR=cpu CUDA_VISIBLE_DEVICES= OMP_NUM_THREADS=1 accelerate launch \
        --config_file recipes/accelerate/zero2.yaml --num_processes 2 --mixed_precision bf16 \
        tests/scripts/dpo_deepspeed.py --model .cache/tiny-plm --method lora --out /tmp/dpo-ds

It trains 2 optimizer steps of ``build_dpo_trainer`` (1 pair per process a step, bf16 as on a GPU) in the recipes'
order (the ``DPOConfig`` before the model, so ZeRO-3 shards weights as they load), saves with
``trainer.save_model``, and rank 0 writes ``report.json``: ZeRO stage, world size, the engine optimizer's groups
(name, learning rate), the dtypes the engine holds the weights in, the losses, and what the reference is (none:
the adapter disabled; a DeepSpeed engine of its own for full finetuning, sharded under ZeRO-3), and with
``--padding-free`` how often the decoder ran a batch packed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from trl import DPOConfig

from data_adapters.synthetic import synthetic_shape_pairs
from plm_tune import MediaArguments, ModelArguments, load_model
from plm_tune.modeling.padding_free import padding_free_calls
from plm_tune.training.preference_trainer import build_dpo_trainer

LR = 1e-3  # language model
PROJECTOR_LR = 3e-4  # distinct, to see that per-part learning rates survive inside DeepSpeed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="folder of build_tiny_plm")
    parser.add_argument("--method", choices=("lora", "full"), required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--padding-free", action="store_true",
                        help="DPOConfig(padding_free=True), on pairs whose rejected answer is longer (padded rows)")
    cli = parser.parse_args()

    config = DPOConfig(
        output_dir=str(cli.out / "trainer"),
        max_steps=2,
        per_device_train_batch_size=1,
        learning_rate=LR,
        lr_scheduler_type="constant",  # the groups' learning rates stay what we set, to compare them exactly
        beta=0.1,
        max_length=None,
        bf16=True,
        use_cpu=True,  # transformers refuses bf16 without a GPU unless told the CPU is meant
        gradient_checkpointing=False,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=0,
        dataloader_num_workers=0,
        # Without a GPU accelerate picks no backend: DeepSpeed's CPU accelerator talks over gloo.
        ddp_backend="gloo",
        ddp_timeout=600,  # a rank stuck in a collective fails the run instead of waiting forever
        padding_free=cli.padding_free,
    )
    model, processor = load_model(cli.model, method=cli.method, freeze=("vision",), dtype=torch.bfloat16, seed=0,
                                  **({"lora_dropout": 0.0} if cli.method == "lora" else {}))
    pairs = [dict(pair) for pair in synthetic_shape_pairs(8, seed=0, max_tiles=1)]
    if cli.padding_free:  # answers of different lengths: the pair's rows are padded, the decoder packs them
        for pair in pairs:
            pair["rejected"] = [{"role": "assistant", "content": pair["rejected"][0]["content"][0]["text"] + " Sure."}]
    trainer = build_dpo_trainer(model, processor, pairs, args=config,
                                media=MediaArguments(max_tiles=1), model_args=ModelArguments(projector_lr=PROJECTOR_LR))
    trainer.train()

    engine = trainer.deepspeed
    ds_optimizer = engine.optimizer
    report = {
        "deepspeed": type(engine).__name__,
        "zero_stage": engine.zero_optimization_stage(),
        "world_size": trainer.accelerator.num_processes,
        "groups": {group.get("name"): group["lr"] for group in ds_optimizer.param_groups},
        # The dtypes the engine holds the model's weights in (ZeRO-3: its shards).
        "module_dtypes": sorted({str(getattr(p, "ds_tensor", p).dtype) for p in engine.module.parameters()}),
        "losses": [log["loss"] for log in trainer.state.log_history if "loss" in log],
        "reference": type(trainer.ref_model).__name__,  # NoneType: the adapter disabled
        # Under ZeRO-3 a full run's reference is sharded as the policy is (ds_id on every weight).
        "reference_sharded": trainer.ref_model is not None
        and all(hasattr(p, "ds_id") for p in trainer.ref_model.module.parameters()),
        "adapters": sorted(getattr(trainer.accelerator.unwrap_model(trainer.model), "peft_config", {})),
        "decoder_calls": padding_free_calls(trainer.accelerator.unwrap_model(trainer.model)),
    }
    trainer.save_model(str(cli.out / "model"))  # every rank: under ZeRO-3 the gather is collective
    if trainer.is_world_process_zero():
        (cli.out / "report.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
