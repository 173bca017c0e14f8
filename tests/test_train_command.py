"""``plm-tune train`` / ``plm-tune recipes`` and the one config dialect (TRL's key names read), in fresh processes
as a user runs them, on a tiny PLM and real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import make_image
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent


def _plm_tune(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "plm_tune.apps.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=env)


def test_recipes_lists_every_recipe_with_its_configs(tmp_path):
    done = _plm_tune("recipes", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    scripts = [p.stem for p in (ROOT / "recipes").glob("*.py") if not p.name.startswith("_")]
    lines = done.stdout.splitlines()
    for name in scripts:
        line = next(line for line in lines if line.startswith(f"{name}: "))
        assert len(line) < 130, line  # one line each
    for config in (ROOT / "recipes/configs").glob("*.yaml"):
        recipe = yaml.safe_load(config.read_text())["recipe"]
        owner = lines[lines.index(next(line for line in lines if line.startswith(f"{recipe}: "))) + 1]
        assert config.stem in owner.split("configs: ")[1].split(", "), (config.stem, owner)


def _trl_dataset(folder: Path, n: int = 8) -> Path:
    """A local dataset in TRL's conversational format (``messages`` of typed parts, an ``images`` list), as parquet,
    the way a Hub dataset such as llava-instruct-mix-vsft is stored; read back by ``datasets.load_dataset``."""
    from datasets import Dataset

    colours = ["red", "blue"]
    rows = [{"messages": [
                {"role": "user", "content": [{"type": "image", "text": None},
                                             {"type": "text", "text": "What colour dominates?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": colours[i % 2]}]}],
             "images": [make_image(64, 48, seed=i)]} for i in range(n)]
    (folder / "data").mkdir(parents=True)
    Dataset.from_list(rows).to_parquet(str(folder / "data" / "train.parquet"))
    return folder


def test_a_trl_sft_vlm_config_trains_a_tiny_plm_for_2_steps(tmp_path, tiny_plm_path):
    _trl_dataset(tmp_path)
    config = tmp_path / "sft_vlm.yaml"
    config.write_text(yaml.safe_dump({  # TRL's names only, where TRL has one
        "model_name_or_path": str(tiny_plm_path), "torch_dtype": "float32",
        "use_peft": True, "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0,
        "lora_target_modules": ["q_proj", "v_proj"],
        "dataset_name": str(tmp_path / "data"), "dataset_train_split": "train",
        "max_length": 256, "per_device_train_batch_size": 2, "max_steps": 2, "learning_rate": 1e-3,
        "output_dir": "out", "report_to": "none", "save_strategy": "no", "dataloader_pin_memory": False,
        "eval_split": 0.25, "generate_eval": False,
    }))
    done = _plm_tune("train", config, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "plm-tune train: sft recipe" in done.stderr  # no recipe named: the sft recipe
    assert "TRL key read: use_peft: True -> method: lora" in done.stderr
    assert "TRL key read: dataset_name -> dataset" in done.stderr
    assert "6 train / 2 eval samples" in done.stdout
    info = json.loads((tmp_path / "out/plm_tune_training.json").read_text())
    assert info["method"] == "lora" and info["global_step"] == 2 and info["lora_r"] == 4
    adapter = load_file(tmp_path / "out/adapter_model.safetensors")
    adapted = {name.split(".lora_")[0].rsplit(".", 1)[-1] for name in adapter if ".lora_A" in name}
    assert adapted == {"q_proj", "v_proj"}  # lora_target_modules, not every linear layer
    assert all(t.dtype == torch.float32 for t in adapter.values())


def test_recipes_cp_copies_a_config_with_its_recipe_and_train_runs_the_copy(tmp_path, tiny_plm_path):
    done = _plm_tune("recipes", "cp", "radiology_demo", "mine", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["radiology_demo.yaml", "radiology_lora.py"]
    assert (tmp_path / "mine/radiology_lora.py").read_text() == (ROOT / "recipes/radiology_lora.py").read_text()
    assert "accelerate launch mine/radiology_lora.py --config mine/radiology_demo.yaml" in done.stdout

    again = _plm_tune("recipes", "cp", "radiology_demo", "mine", cwd=tmp_path)
    assert again.returncode != 0 and "--force" in again.stderr  # nothing overwritten without asking

    # An edited copy is what `plm-tune train` runs for the copied config: its recipe sits next to it.
    script = tmp_path / "mine/radiology_lora.py"
    script.write_text(script.read_text().replace("if __name__ == \"__main__\":",
                                                 "print('EDITED COPY')\n\nif __name__ == \"__main__\":"))
    planned = _plm_tune("train", "mine/radiology_demo.yaml", "--model_name_or_path", tiny_plm_path,
                        "--plan", "true", cwd=tmp_path)
    assert planned.returncode == 0, planned.stderr[-3000:]
    assert "EDITED COPY" in planned.stdout and "radiology_lora recipe (mine/radiology_lora.py)" in planned.stderr
    assert "PLM-1B lora" in planned.stdout and "batch size 4, max_length 256" in planned.stdout


def test_train_names_a_missing_config_or_recipe_with_what_there_is(tmp_path):
    done = _plm_tune("train", "radiology_dmo", cwd=tmp_path)
    assert done.returncode != 0 and "no such config: radiology_dmo" in done.stderr
    assert "radiology_demo" in done.stderr and "Traceback" not in done.stderr
    (tmp_path / "c.yaml").write_text("recipe: radiology\n")
    done = _plm_tune("train", "c.yaml", cwd=tmp_path)
    assert done.returncode != 0 and "no recipe 'radiology'" in done.stderr and "radiology_lora" in done.stderr


def test_plan_runs_a_recipe_config_through_its_recipe(tmp_path, tiny_plm_path):
    done = _plm_tune("plan", ROOT / "recipes/configs/radiology_demo.yaml", "--model-name-or-path", tiny_plm_path,
                     "--batch-size", "2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "batch size 2, max_length 256" in done.stdout and "PLM-1B lora" in done.stdout
    assert not (tmp_path / "outputs").exists()  # planned, nothing trained


# ----------------------------------------------------------------------------- the dialect, parsed in-process
def _parser(recipe: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"recipe_{recipe}", ROOT / f"recipes/{recipe}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.make_parser()


def test_trl_names_and_plm_tune_names_parse_to_the_same_settings(tmp_path):
    trl = tmp_path / "trl.yaml"
    trl.write_text("use_peft: true\nload_in_4bit: true\ntorch_dtype: bfloat16\ndataset_name: org/set\n"
                   "dataset_train_split: validation\ndataset_streaming: true\nlora_target_modules: [q_proj]\n")
    ours = tmp_path / "ours.yaml"
    ours.write_text("method: qlora\ndtype: bfloat16\ndataset: org/set\ndataset_split: validation\n"
                    "streaming: true\nlora_target_modules: [q_proj]\n")
    from dataclasses import asdict

    read = [_parser("sft").parse_args_and_config(["--config", str(path)]) for path in (trl, ours)]
    assert [asdict(settings) for settings in read[0]] == [asdict(settings) for settings in read[1]]
    assert read[0][0].method == "qlora" and read[0][2].dataset == "org/set" and read[0][2].streaming
    # and on the command line, TRL's bare switches included
    model_args, *_ = _parser("radiology_lora").parse_args_and_config(["--use_peft", "--use_dora", "true"])
    assert model_args.method == "dora"
    model_args, *_ = _parser("radiology_lora").parse_args_and_config(["--use_peft", "false"])
    assert model_args.method == "full"


@pytest.mark.parametrize("keys, message", [
    ("lora_rank: 8\n", r"lora_rank \(did you mean lora_r\?\).*Valid keys: ModelArguments: model_name_or_path"),
    ("use_peft: true\nmethod: full\n", "use_peft: True means method lora, but the config also sets method full"),
    ("load_in_8bit: true\n", "load_in_8bit: plm-tune quantises to 4-bit only"),
    ("dataset_name: org/set\n", "dataset_name: this recipe reads no dataset"),
    ("data: {adapter: image_folder}\n", r"Unknown key\(s\) data "),
])
def test_a_bad_key_is_named_with_the_fix(tmp_path, keys, message):
    config = tmp_path / "c.yaml"
    config.write_text(keys)
    with pytest.raises(ValueError, match=message):
        _parser("video_lora").parse_args_and_config(["--config", str(config)])


def test_lora_target_modules_and_dtype_reach_the_loaded_model(tiny_plm_path):
    from plm_tune import load_model
    from plm_tune.arguments import ModelArguments

    model, _ = load_model(ModelArguments(model_name_or_path=str(tiny_plm_path), lora_target_modules=["v_proj", "up_proj"],
                                         dtype="bfloat16"))
    adapted = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if hasattr(module, "lora_A")}
    assert adapted == {"v_proj", "up_proj"}
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    trained = {p.dtype for p in model.parameters() if p.requires_grad}
    assert frozen == {torch.bfloat16} and trained == {torch.float32}
    with pytest.raises(ValueError, match=r"lora_target_modules qkv: no such linear layer .* they have down_proj"):
        load_model(ModelArguments(model_name_or_path=str(tiny_plm_path), lora_target_modules=["qkv"]))
    with pytest.raises(ValueError, match="dtype 'bf8' is not one plm-tune loads weights in"):
        load_model(ModelArguments(model_name_or_path=str(tiny_plm_path), dtype="bf8"))
