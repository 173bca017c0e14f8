"""Recipes: every shipped config parses against its script, and each script trains the tiny PLM end to end.

A config's first line is its command, ``# accelerate launch recipes/<script>.py --config recipes/configs/<name>.yaml``:
that is how a config names its recipe, and the first thing a reader of the YAML sees.
The smoke runs are subprocesses run from ``tmp_path`` (nothing is written into the repository), 3 steps each.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted((ROOT / "recipes").glob("*.py"))
CONFIGS = sorted((ROOT / "recipes" / "configs").glob("*.yaml"))
COMMAND = re.compile(r"# accelerate launch (recipes/\w+\.py) --config (recipes/configs/[\w.-]+\.yaml)")
SUMMARY = re.compile(r"train loss (\S+) \(step 1\) -> (\S+) \(step 3\); eval loss (\S+) -> (\S+)")


def recipe_of(config: Path) -> Path:
    first_line = config.read_text().splitlines()[0]
    match = COMMAND.match(first_line)
    assert match, f"{config.name}: the first line must be its command, '# accelerate launch recipes/<script>.py " \
                  f"--config recipes/configs/{config.name}'; found {first_line!r}."
    assert match.group(2) == f"recipes/configs/{config.name}", f"{config.name}'s command names {match.group(2)}."
    script = ROOT / match.group(1)
    assert script.is_file(), f"{config.name} names {match.group(1)}, which does not exist."
    return script


def load_recipe(script: Path):
    name = f"recipe_{script.stem}"
    spec = importlib.util.spec_from_file_location(name, script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("config", CONFIGS, ids=lambda path: path.stem)
def test_config_parses_against_its_recipe(config):
    recipe = load_recipe(recipe_of(config))
    # TrlParser refuses a key that no dataclass of the recipe has.
    model_args, data_args, training_args = recipe.make_parser().parse_args_and_config(["--config", str(config)])
    keys = yaml.safe_load(config.read_text())
    assert "max_length" in keys, f"{config.name}: set max_length deliberately (TRL's 1024 is no PLM default)."
    assert "bf16" not in keys, f"{config.name}: leave bf16 to the machine (the recipe defaults it to what it has)."
    assert training_args.bf16 == (torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def test_every_recipe_has_a_config():
    configured = {recipe_of(config) for config in CONFIGS}
    assert set(RECIPES) == configured, f"recipes without a config: {sorted(set(RECIPES) - configured)}"


def test_unknown_config_key_is_refused(tmp_path):
    config = tmp_path / "typo.yaml"
    config.write_text((ROOT / "recipes/configs/radiology_demo.yaml").read_text() + "lora_rank: 8\n")
    parser = load_recipe(ROOT / "recipes/radiology_lora.py").make_parser()
    with pytest.raises(ValueError, match="lora_rank"):
        parser.parse_args_and_config(["--config", str(config)])


def run_recipe(tmp_path: Path, command: list[str]) -> str:
    """Run a recipe from tmp_path with 3 steps; return its stdout + stderr; check the loss summary it prints."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([*command, "--max_steps", "3", "--logging_steps", "1", "--output_dir", "out"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    summary = SUMMARY.search(result.stdout)
    assert summary, result.stdout[-3000:]
    assert all(math.isfinite(float(loss)) for loss in summary.groups()), summary.group(0)
    assert not (tmp_path / "runs").exists(), "TensorBoard logs went to the working directory, not output_dir/runs"
    return result.stdout + result.stderr


def test_radiology_demo_trains_and_saves_a_loadable_adapter(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    tiny = tmp_path / "tiny-plm"  # missing: the recipe builds it (build_tiny_if_missing)
    output = run_recipe(tmp_path, [
        sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", str(ROOT / "recipes/radiology_lora.py"),
        "--config", str(ROOT / "recipes/configs/radiology_demo.yaml"), "--model_name_or_path", str(tiny),
    ])
    out = tmp_path / "out"
    assert "Saved the lora adapter to out" in output
    # A corrupt compressed stream passes a header check; from_dicom decodes a frame, so it is skipped and named.
    skipped = next(line for line in output.splitlines() if "undecodable pixel data" in line)
    assert "JPEG-lossy.dcm" in skipped
    assert list((out / "runs").glob("*/events.out.tfevents.*"))
    adapter = load_file(out / "adapter_model.safetensors")
    assert not [name for name in adapter if "vision_tower" in name]  # the tower is frozen: not in the adapter
    assert any(t.abs().sum() > 0 for name, t in adapter.items() if "lora_B" in name)  # B starts at zero

    base = AutoModelForImageTextToText.from_pretrained(tiny, dtype=torch.float32)
    projector = {name: param.clone() for name, param in base.model.multi_modal_projector.named_parameters()}
    model = PeftModel.from_pretrained(base, out)
    trained = dict(model.base_model.model.model.multi_modal_projector.named_parameters())
    assert all(not torch.equal(trained[f"modules_to_save.default.{name}"], p) for name, p in projector.items())


def test_video_lora_demo_trains(tmp_path, tiny_plm_path):
    run_recipe(tmp_path, [
        sys.executable, str(ROOT / "recipes/video_lora.py"), "--config", str(ROOT / "recipes/configs/video_demo.yaml"),
        "--model_name_or_path", str(tiny_plm_path), "--report_to", "none",
    ])
    assert (tmp_path / "out/adapter_model.safetensors").is_file()
    assert (tmp_path / "out/processor_config.json").is_file()


def test_full_finetune_keeps_the_frozen_tower_bit_identical(tmp_path, tiny_plm_path):
    run_recipe(tmp_path, [
        sys.executable, str(ROOT / "recipes/full_finetune.py"), "--config", str(ROOT / "recipes/configs/full_demo.yaml"),
        "--model_name_or_path", str(tiny_plm_path), "--report_to", "none",
    ])
    base = load_file(tiny_plm_path / "model.safetensors")
    saved = load_file(tmp_path / "out/model.safetensors")
    assert saved.keys() == base.keys()
    vision = [name for name in base if "vision_tower" in name]
    assert vision and all(torch.equal(saved[name], base[name]) for name in vision)
    trained = [name for name in base if "multi_modal_projector" in name or name == "lm_head.weight"]
    assert trained and all(not torch.equal(saved[name], base[name]) for name in trained)
