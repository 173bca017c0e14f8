"""Recipes: every shipped config parses against its script, and each script trains the tiny PLM end to end.

A config's first lines are its commands, ``# plm-tune train <name>`` and ``# from a clone: accelerate launch
recipes/<script>.py --config recipes/configs/<name>.yaml``: the first thing a reader of the YAML sees; its
``recipe: <script>`` key is how ``plm-tune train`` finds the script, and the two must agree.
The smoke runs are subprocesses run from ``tmp_path`` (nothing is written into the repository), 3 steps each.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import run_recipe
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted(path for path in (ROOT / "recipes").glob("*.py") if not path.name.startswith("_"))
CONFIGS = sorted((ROOT / "recipes" / "configs").glob("*.yaml"))
COMMAND = re.compile(r"# from a clone: accelerate launch (recipes/\w+\.py) --config (recipes/configs/[\w.-]+\.yaml)")


def recipe_of(config: Path) -> Path:
    first, second = config.read_text().splitlines()[:2]
    assert first.split()[:4] == ["#", "plm-tune", "train", config.stem], \
        f"{config.name}: the first line must be its command, '# plm-tune train {config.stem}'; found {first!r}."
    match = COMMAND.match(second)
    assert match, f"{config.name}: the second line must be '# from a clone: accelerate launch recipes/<script>.py " \
                  f"--config recipes/configs/{config.name}'; found {second!r}."
    assert match.group(2) == f"recipes/configs/{config.name}", f"{config.name}'s command names {match.group(2)}."
    script = ROOT / match.group(1)
    assert script.is_file(), f"{config.name} names {match.group(1)}, which does not exist."
    assert yaml.safe_load(config.read_text()).get("recipe") == script.stem, \
        f"{config.name}: its recipe: key must name {script.stem}, the script its command runs."
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
    model_args, media_args, data_args, training_args, eval_args = recipe.make_parser().parse_args_and_config(
        ["--config", str(config)]
    )
    keys = yaml.safe_load(config.read_text())
    assert "max_length" in keys, f"{config.name}: set max_length deliberately (TRL's 1024 is no PLM default)."
    assert "bf16" not in keys, f"{config.name}: leave bf16 to the machine (the recipe defaults it to what it has)."
    assert training_args.bf16 == (torch.cuda.is_available() and torch.cuda.is_bf16_supported())


@pytest.mark.parametrize("config", CONFIGS, ids=lambda path: path.stem)
def test_plan_and_recipe_read_the_same_settings_from_every_config(config):
    """`plm-tune plan` parses a config's run settings with the recipes' own dataclasses and defaults."""
    from plm_tune.apps.finetune import parse_settings, settings_keys

    recipe = load_recipe(recipe_of(config))
    model_args, media_args, _, training_args, eval_args = recipe.make_parser().parse_args_and_config(
        ["--config", str(config)])
    valid = {key for names in settings_keys().values() for key in names}
    keys = {key: value for key, value in yaml.safe_load(config.read_text()).items() if key in valid}
    plan_model, plan_media, plan_training, plan_eval = parse_settings(keys)
    assert (plan_model, plan_media, plan_eval) == (model_args, media_args, eval_args)
    for key in ("per_device_train_batch_size", "max_length", "activation_checkpointing", "bf16"):
        assert getattr(plan_training, key) == getattr(training_args, key), key


def test_dora_configs_train_without_dropout():
    """With lora_dropout > 0, peft's DoRA runs each adapted layer's base matmul twice (``dora_dropout_note``)."""
    dropout = {}
    for config in CONFIGS:
        parsed = load_recipe(recipe_of(config)).make_parser().parse_args_and_config(["--config", str(config)])
        if parsed[0].method == "dora":
            dropout[config.name] = parsed[0].lora_dropout
    assert dropout, "no shipped config has method: dora, so this test checks nothing"
    assert all(value == 0 for value in dropout.values()), f"DoRA configs with lora_dropout > 0: {dropout}"


def test_one_default_per_setting():
    """Unset, a setting has the same value in the recipes, in `plm-tune plan` and in the library's keywords."""
    import inspect

    from plm_tune import PLMCollator, build_trainer, estimate_memory, generate, load_model, plan_report
    from plm_tune.apps.finetune import parse_settings
    from plm_tune.arguments import MediaArguments, ModelArguments

    model_args, media_args, _, _, _ = load_recipe(ROOT / "recipes/video_lora.py").make_parser().parse_args_and_config([])
    assert parse_settings({})[:2] == (model_args, media_args) == (ModelArguments(), MediaArguments())
    assert model_args.lora_dropout == 0.05 and media_args.num_frames == 32
    for function in (load_model, build_trainer, plan_report, PLMCollator, estimate_memory, generate):
        parameters = inspect.signature(function).parameters
        for name, value in {**vars(model_args), **vars(media_args)}.items():
            if name == "dtype" and value is None:
                continue  # unset is "auto": bfloat16 on a GPU, what estimate_memory assumes for the GPU it sizes
            if name in parameters and parameters[name].default is not inspect.Parameter.empty:
                default = parameters[name].default
                assert (list(default) if isinstance(default, tuple) else default) == value, (function, name)


def test_every_recipe_has_a_config():
    configured = {recipe_of(config) for config in CONFIGS}
    assert set(RECIPES) == configured, f"recipes without a config: {sorted(set(RECIPES) - configured)}"


def test_unknown_config_key_is_refused(tmp_path):
    config = tmp_path / "typo.yaml"
    config.write_text((ROOT / "recipes/configs/radiology_demo.yaml").read_text() + "lora_rank: 8\n")
    parser = load_recipe(ROOT / "recipes/radiology_lora.py").make_parser()
    with pytest.raises(ValueError, match="lora_rank"):
        parser.parse_args_and_config(["--config", str(config)])


def test_radiology_demo_trains_and_saves_a_loadable_adapter(radiology_demo):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    out, output, tiny = radiology_demo.out, radiology_demo.output, radiology_demo.tiny
    assert "Saved the lora adapter to out" in output
    # A corrupt compressed stream passes a header check; from_dicom decodes a frame, so it is skipped and named.
    skipped = next(line for line in output.splitlines() if "undecodable pixel data" in line)
    assert "JPEG-lossy.dcm" in skipped
    assert list((out / "runs").glob("*/events.out.tfevents.*"))
    adapter = load_file(out / "adapter_model.safetensors")
    # The demo's tiny tower is random, so it trains in full (peft modules_to_save, saved whole), without LoRA.
    tower = [name for name in adapter if "vision_tower" in name]
    assert tower and not [name for name in tower if "lora_" in name]
    assert any(t.abs().sum() > 0 for name, t in adapter.items() if "lora_B" in name)  # B starts at zero

    base = AutoModelForImageTextToText.from_pretrained(tiny, dtype=torch.float32)
    projector = {name: param.clone() for name, param in base.model.multi_modal_projector.named_parameters()}
    model = PeftModel.from_pretrained(base, out)
    trained = dict(model.base_model.model.model.multi_modal_projector.named_parameters())
    assert all(not torch.equal(trained[f"modules_to_save.default.{name}"], p) for name, p in projector.items())


def test_radiology_demo_evaluates_by_generation_and_writes_a_report(radiology_demo):
    import json

    from datasets import load_from_disk

    out = radiology_demo.out
    eval_data = load_from_disk(str(out / "eval_data"))
    result = json.loads((out / "eval/eval.json").read_text())
    # The demo holds out a quarter of each modality of its 117 usable files: every modality in train and eval.
    assert len(result["records"]) == len(eval_data) == 30
    assert {r["reference"] for r in result["records"]} == {"OT", "US", "MR", "CT", "CR", "RTDOSE", "NM", "SEG"}
    assert [r["reference"] for r in result["records"]] == [s["messages"][-1]["content"][0]["text"] for s in eval_data]
    assert all(r["base_answer"] is not None for r in result["records"])  # before / after, adapter switched off
    assert {"exact_match", "sentence_bleu", "corpus_bleu", "rouge_l", "eval_loss"} <= set(result["metrics"]) \
        == set(result["base_metrics"])
    assert (out / "eval/report.html").stat().st_size > 10_000  # images inlined
    assert "Report: out/eval/report.html" in radiology_demo.output  # output_dir is relative: out
    info = json.loads((out / "plm_tune_training.json").read_text())
    assert info["method"] == "lora" and info["global_step"] == 3 and info["freeze"] == []


def test_radiology_demo_records_the_training_info_derived_from_its_settings(radiology_demo):
    import json

    from plm_tune.arguments import training_info

    model_args, media_args, *_ = load_recipe(ROOT / "recipes/radiology_lora.py").make_parser().parse_args_and_config(
        ["--config", str(ROOT / "recipes/configs/radiology_demo.yaml")])
    derived = training_info(model_args, media_args)
    assert derived == {"method": "lora", "freeze": [], "max_tiles": 4, "num_frames": 4, "lora_r": 8,
                       "lora_alpha": 16}
    info = json.loads((radiology_demo.out / "plm_tune_training.json").read_text())
    assert {key: info[key] for key in derived} == derived


def test_video_lora_demo_trains(tmp_path, tiny_plm_path):
    run_recipe(tmp_path, [
        sys.executable, str(ROOT / "recipes/video_lora.py"), "--config", str(ROOT / "recipes/configs/video_demo.yaml"),
        "--model_name_or_path", str(tiny_plm_path), "--report_to", "none",
    ])
    assert (tmp_path / "out/adapter_model.safetensors").is_file()
    assert (tmp_path / "out/processor_config.json").is_file()


def test_sft_demo_trains_on_its_data_section(tmp_path, tiny_plm_path):
    run_recipe(tmp_path, [
        sys.executable, str(ROOT / "recipes/sft.py"), "--config", str(ROOT / "recipes/configs/sft_demo.yaml"),
        "--model_name_or_path", str(tiny_plm_path), "--report_to", "none",
    ])
    assert (tmp_path / "out/adapter_model.safetensors").is_file()
    assert json.loads((tmp_path / "out/adapter_config.json").read_text())["r"] == 8  # the config's lora_r


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


def test_radiology_demo_trains_on_a_stream_of_its_dicom_files(tmp_path, tiny_plm_path):
    """``streaming: true``: from_dicom reads the files as training goes, eval_split is a number of samples (the
    stream's first), and the rest is shuffled through a buffer; 3 steps, no generation eval (the table runs have one)."""
    from datasets import load_from_disk

    output = run_recipe(tmp_path, [
        sys.executable, str(ROOT / "recipes/radiology_lora.py"), "--config",
        str(ROOT / "recipes/configs/radiology_demo.yaml"), "--model_name_or_path", str(tiny_plm_path),
        "--report_to", "none", "--streaming", "true", "--eval_split", "8", "--stratify_eval", "false",
        "--shuffle_buffer", "16", "--generate_eval", "false",
    ])
    assert "streamed train / 8 eval samples" in output
    assert len(load_from_disk(str(tmp_path / "out/eval_data"))) == 8
    assert (tmp_path / "out/adapter_model.safetensors").is_file()


def test_a_stream_needs_max_steps_and_a_number_of_held_out_samples(tmp_path, tiny_plm_path):
    from trl import SFTConfig

    from data_adapters import held_out_split, synthetic_shapes
    from plm_tune.apps.finetune import finetune
    from plm_tune.arguments import EvalArguments, MediaArguments, ModelArguments

    stream = synthetic_shapes(8, streaming=True)
    with pytest.raises(ValueError, match=r"no length to hold out a share of \(got 0.1\)"):
        held_out_split(stream, 0.1)  # a recipe's default eval_split
    train, held = held_out_split(stream, 2)
    args = SFTConfig(output_dir=str(tmp_path / "out"), bf16=False, report_to="none")  # max_steps unset: -1
    with pytest.raises(ValueError, match=r"a stream \(streaming: true\).*set `max_steps`"):
        finetune(train, held, ModelArguments(model_name_or_path=str(tiny_plm_path)), MediaArguments(), args,
                 EvalArguments())
