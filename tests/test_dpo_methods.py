"""build_dpo_trainer for every method, freeze option and precision a first GPU run may use, on the tiny PLM with
real TRL ``DPOTrainer`` steps on CPU: DoRA and QLoRA keep the base as the reference (adapter off), frozen parts stay
put, a bf16 run holds its weights in the dtypes the SFT path guarantees (``tests/test_precision.py``), and two-process
DeepSpeed runs (ZeRO-2 LoRA, ZeRO-3 LoRA, ZeRO-3 full with its sharded reference; gloo on CPU) train with per-part
learning rates and save weights that load. About 2.7 minutes on 2 busy cores, 40 s of it per DeepSpeed run."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_dpo import LRS, _args  # two CPU steps of 2 pairs: float32, nothing saved or reported
from transformers import AutoModelForImageTextToText

from data_adapters.synthetic import synthetic_shape_pairs
from plm_tune import MediaArguments, ModelArguments, load_model, sequence_logps
from plm_tune.modeling.model import part_of
from plm_tune.training.preference_trainer import build_dpo_trainer

ROOT = Path(__file__).resolve().parent.parent
MEDIA = MediaArguments(max_tiles=1)


@pytest.fixture(scope="module")
def pairs():
    return synthetic_shape_pairs(4, seed=0, max_tiles=1)


def _losses(trainer) -> list[float]:
    return [log["loss"] for log in trainer.state.log_history if "loss" in log]


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {name: param.detach().clone() for name, param in model.named_parameters()}


def _trainable(model) -> set[str]:
    return {name for name, param in model.named_parameters() if param.requires_grad}


# ---------------------------------------------------------------- DoRA / QLoRA


@pytest.mark.parametrize("method", ["dora", "qlora"])
def test_dora_and_qlora_reference_is_the_base_with_the_adapter_off_after_training(
    tiny_plm_path, tmp_path, pairs, method
):
    # freeze=(): the adapter on the language model, tower and projector trained in full: three learning rates.
    model, processor = load_model(tiny_plm_path, method=method, freeze=(), lora_dropout=0.0, seed=0)
    trainable = _trainable(model)
    lora_b = {name: param.detach().clone() for name, param in model.named_parameters() if "lora_B" in name}
    trainer = build_dpo_trainer(model, processor, pairs, args=_args(tmp_path), media=MEDIA,
                                model_args=ModelArguments(vision_lr=LRS["vision"], projector_lr=LRS["projector"]))
    assert trainer.ref_model is None and list(model.peft_config) == ["default"]
    assert not [name for name, _ in model.named_parameters() if ".ref." in name]
    assert _trainable(model) == trainable
    # The SFT guarantee (tests/test_precision.py): every trainable weight is float32 for the optimizer to step,
    # QLoRA's adapter included (TRL's DPOTrainer.__init__ casts a quantised model's adapter to bf16).
    assert {param.dtype for param in model.parameters() if param.requires_grad} == {torch.float32}

    trainer.train()
    assert {group["name"]: group["initial_lr"] for group in trainer.optimizer.param_groups} == LRS
    losses = _losses(trainer)
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    trained = dict(model.named_parameters())
    assert all(not torch.equal(trained[name], start) for name, start in lora_b.items())  # every adapter moved
    if method == "dora":
        assert any("lora_magnitude_vector" in name for name in trainable)

    model.eval()
    batch = trainer.plm_collator([pairs[i] for i in range(len(pairs))])
    ref_chosen, ref_rejected = trainer.compute_ref_log_probs(model, batch)  # what TRL's loss compares against
    with torch.no_grad():
        tuned = sequence_logps(model, batch)
        if method == "qlora":
            # The base of a QLoRA run is the quantised model: load it again, quantised the same way.
            base_model, _ = load_model(tiny_plm_path, method="qlora", freeze=(), seed=0)
            with base_model.disable_adapter():
                base = sequence_logps(base_model.eval(), batch)
        else:
            base_model = AutoModelForImageTextToText.from_pretrained(tiny_plm_path, dtype=torch.float32).eval()
            base = sequence_logps(base_model, batch)
    torch.testing.assert_close(torch.cat([ref_chosen, ref_rejected]), base, rtol=1e-5, atol=1e-4)
    assert (tuned - base).abs().max() > 1e-2  # the policy moved: the equality above is not vacuous


# ---------------------------------------------------------------- freeze options


@pytest.mark.parametrize("freeze", [("vision",), ("vision", "projector")])
def test_frozen_parts_do_not_move_and_the_trainable_set_is_load_models(tiny_plm_path, tmp_path, pairs, freeze):
    model, processor = load_model(tiny_plm_path, method="lora", freeze=freeze, lora_dropout=0.0, seed=0)
    trainable = _trainable(model)
    start = _snapshot(model)
    projector_lr = None if "projector" in freeze else LRS["projector"]
    trainer = build_dpo_trainer(model, processor, pairs, args=_args(tmp_path), media=MEDIA,
                                model_args=ModelArguments(projector_lr=projector_lr))
    assert _trainable(model) == trainable
    trainer.train()
    assert all(math.isfinite(loss) for loss in _losses(trainer))
    expected = {"language": LRS["language"]} | ({} if "projector" in freeze else {"projector": LRS["projector"]})
    assert {group["name"]: group["initial_lr"] for group in trainer.optimizer.param_groups} == expected

    after = dict(model.named_parameters())
    moved = {name for name in start if not torch.equal(after[name], start[name])}
    assert moved and moved <= trainable
    assert {part_of(name) for name in moved} == {"language", "projector"} - set(freeze)
    assert not [name for name in moved if part_of(name) in freeze]  # the tower (and projector) did not move


# ---------------------------------------------------------------- bf16 on CPU


def _dtype_table(model) -> dict[tuple[str, bool], set[str]]:
    """(part, trainable) -> the dtypes its parameters are held in (as tests/test_precision.py)."""
    table: dict[tuple[str, bool], set[str]] = {}
    for name, param in model.named_parameters():
        table.setdefault((part_of(name), param.requires_grad), set()).add(str(param.dtype).removeprefix("torch."))
    return table


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_bf16_dpo_keeps_the_sft_dtypes_and_the_reference_is_the_bf16_base(tiny_plm_path, tmp_path, pairs, method):
    model, processor = load_model(tiny_plm_path, method=method, freeze=("vision",), lora_dropout=0.0,
                                  dtype=torch.bfloat16, seed=0)
    args = _args(tmp_path, bf16=True, use_cpu=True, learning_rate=1e-3)
    trainer = build_dpo_trainer(model, processor, pairs, args=args, media=MEDIA,
                                model_args=ModelArguments(projector_lr=LRS["projector"]))
    # As build_trainer leaves a bf16 load (tests/test_precision.py): trainable weights float32 (LoRA A/B, the
    # projector's modules_to_save copy), frozen ones in bf16 (QLoRA: its 4-bit storage is uint8).
    frozen_dtypes = {"bfloat16", "uint8"} if method == "qlora" else {"bfloat16"}
    table = _dtype_table(model)
    assert {part for part, trainable in table if trainable} == {"language", "projector"}
    for (part, trainable), dtypes in table.items():
        assert dtypes == {"float32"} if trainable else dtypes <= frozen_dtypes, (part, trainable, dtypes)
    batch = trainer.plm_collator([pairs[i] for i in range(len(pairs))])
    assert batch["pixel_values"].dtype == torch.bfloat16  # the tower's dtype

    trainer.train()
    losses = _losses(trainer)
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    assert {param.dtype for param in model.parameters() if param.requires_grad} == {torch.float32}

    # The reference under the Trainer's bf16 autocast with the adapter off is the bf16 base, under the same autocast.
    model.eval()
    ref_chosen, ref_rejected = trainer.compute_ref_log_probs(model, batch)
    if method == "qlora":
        base_model, _ = load_model(tiny_plm_path, method="qlora", freeze=("vision",), dtype=torch.bfloat16, seed=0)
        base_model.eval()
    else:
        base_model = AutoModelForImageTextToText.from_pretrained(tiny_plm_path, dtype=torch.bfloat16).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        if method == "qlora":
            with base_model.disable_adapter():
                base = sequence_logps(base_model, batch)
        else:
            base = sequence_logps(base_model, batch)
        tuned = sequence_logps(model, batch)
    reference = torch.cat([ref_chosen, ref_rejected]).float()
    # torch's bf16 tolerance (rtol 1.6e-2) and 1e-2 nats: TRL's fused head computes per-token log-probs in tiles,
    # ours from full logits (measured: 2e-6 apart, the bf16 matmuls are the same ones).
    torch.testing.assert_close(reference, base, rtol=1.6e-2, atol=1e-2)
    assert (tuned - base).abs().max() > 0.1  # the policy moved more than the tolerance


def test_a_bf16_load_without_autocast_is_refused_with_the_fix(tiny_plm_path, tmp_path, pairs):
    model, processor = load_model(tiny_plm_path, method="lora", dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=r"bfloat16 weights but .*bf16=False.*Set bf16=True"):
        build_dpo_trainer(model, processor, pairs, args=_args(tmp_path, use_cpu=True), media=MEDIA)


# ---------------------------------------------------------------- DeepSpeed, 2 processes on CPU


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(tiny_plm_path: Path, out: Path, config: str, method: str, padding_free: bool = False) -> dict:
    """``tests/scripts/dpo_deepspeed.py`` under ``accelerate launch`` with a shipped config, as tests/test_deepspeed.py
    launches its worker: DeepSpeed's CPU accelerator over gloo, bf16 as on a GPU. Returns its report."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")}
    env.update(DS_ACCELERATOR="cpu", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]))
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ROOT / "recipes" / "accelerate" / f"{config}.yaml"), "--num_processes", "2",
               "--mixed_precision", "bf16", "--main_process_port", str(_free_port()),
               str(ROOT / "tests" / "scripts" / "dpo_deepspeed.py"), "--model", str(tiny_plm_path),
               "--method", method, "--out", str(out), *(["--padding-free"] if padding_free else [])]
    result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(command)}\n{(result.stdout + result.stderr)[-6000:]}"
    return json.loads((out / "report.json").read_text())


@pytest.mark.parametrize(("config", "method", "padding_free"), [
    ("zero2", "lora", False),
    ("zero3", "lora", True),  # the decoder on packed real tokens, its weights gathered by ZeRO-3
    ("zero3", "full", False),
])
def test_deepspeed_dpo_trains_with_part_learning_rates_and_saves_a_loadable_model(
    tiny_plm_path, tmp_path, config, method, padding_free
):
    pytest.importorskip("deepspeed", reason='needs DeepSpeed: pip install "plm-tune[deepspeed]"')
    from peft import PeftModel
    from scripts.dpo_deepspeed import LR, PROJECTOR_LR  # tests/ is on sys.path (pytest's rootdir conftest)

    report = _launch(tiny_plm_path, tmp_path, config, method, padding_free)
    assert report["deepspeed"] == "DeepSpeedEngine" and report["world_size"] == 2
    assert report["zero_stage"] == {"zero2": 2, "zero3": 3}[config]
    assert report["groups"] == {"language": LR, "projector": PROJECTOR_LR}
    assert report["module_dtypes"] == ["torch.bfloat16"]  # one dtype in the engine (ZeRO-3 asserts it)
    losses = report["losses"]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    # At the first step the policy is the reference: DPO's sigmoid loss is exactly log 2.
    assert losses[0] == pytest.approx(math.log(2), abs=1e-4)
    # 2 steps x (policy + reference) on rank 0, each a padded pair packed into one row
    assert report["decoder_calls"] == ({"packed": 4, "whole": 0} if padding_free else {"packed": 0, "whole": 0})
    if method == "lora":
        assert report["reference"] == "NoneType" and report["adapters"] == ["default"]  # the adapter off
    else:
        # A frozen reference of its own, sharded under ZeRO-3 as the policy is (a deepcopy would hold empty weights).
        assert report["reference"] == "DeepSpeedEngine" and report["reference_sharded"] == (config == "zero3")

    base = AutoModelForImageTextToText.from_pretrained(tiny_plm_path, dtype=torch.bfloat16).eval()
    if method == "lora":
        start = AutoModelForImageTextToText.from_pretrained(tiny_plm_path, dtype=torch.bfloat16)
        adapted = PeftModel.from_pretrained(start, tmp_path / "model")
        lora_b = [param for name, param in adapted.named_parameters() if "lora_B" in name]
        assert lora_b and all(param.abs().sum() > 0 for param in lora_b)  # zero at init: every adapter trained
        model = adapted.merge_and_unload().eval()
    else:
        model = AutoModelForImageTextToText.from_pretrained(tmp_path / "model", dtype=torch.bfloat16).eval()
    base_weights = dict(base.named_parameters())
    changed = {part_of(name) for name, param in model.named_parameters() if not torch.equal(param, base_weights[name])}
    assert changed == {"language", "projector"}  # the tower was frozen
