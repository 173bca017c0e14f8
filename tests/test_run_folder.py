"""plm_tune.modeling.run_folder on real folders: what it reads, what it refuses and the fix each error names."""

from __future__ import annotations

import json

import pytest

from plm_tune import load_for_inference
from plm_tune.modeling.run_folder import (
    EVAL_DATA,
    TRAINING_INFO_FILE,
    adapter_folder,
    is_adapter,
    missing_processor_files,
    read_training_info,
    recorded_base_model,
    resolve_base_model,
    write_training_info,
)


def _adapter(folder, config: dict, files=("adapter_model.safetensors",)):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps(config))
    for name in files:
        (folder / name).write_bytes(b"")
    return folder


def test_the_base_model_is_what_adapter_config_names_or_none(tmp_path):
    named = _adapter(tmp_path / "named", {"base_model_name_or_path": "facebook/Perception-LM-1B"})
    unnamed = _adapter(tmp_path / "unnamed", {"base_model_name_or_path": None})
    full = tmp_path / "full"
    full.mkdir()
    (full / "config.json").write_text("{}")
    assert recorded_base_model(named) == "facebook/Perception-LM-1B" and is_adapter(named)
    assert recorded_base_model(unnamed) is None
    assert recorded_base_model(full) is None and not is_adapter(full)
    assert recorded_base_model(None) is None and recorded_base_model(tmp_path / "missing") is None


def test_resolve_base_model_prefers_the_override_and_names_the_fix(tmp_path):
    named = _adapter(tmp_path / "named", {"base_model_name_or_path": "/nonexistent/plm"})
    unnamed = _adapter(tmp_path / "unnamed", {})
    assert resolve_base_model(named, "facebook/Perception-LM-1B") == "facebook/Perception-LM-1B"
    with pytest.raises(FileNotFoundError, match=r"/nonexistent/plm \(from .*named/adapter_config.json\).*`base_model`"):
        resolve_base_model(named)
    with pytest.raises(ValueError, match="names no base_model_name_or_path: pass `base_model`"):
        resolve_base_model(unnamed)
    # load_for_inference reads an adapter folder given as the model through the same owner: a clear error,
    # raised before anything is loaded.
    with pytest.raises(ValueError, match="names no base_model_name_or_path"):
        load_for_inference(str(unnamed))


def test_adapter_folder_checks_say_what_is_there_instead(tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    (full / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="holds a full model"):
        adapter_folder(full)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        adapter_folder(tmp_path / "missing")
    pickled = _adapter(tmp_path / "pickled", {}, files=("adapter_model.bin",))
    assert adapter_folder(pickled) == pickled  # enough for a model card
    with pytest.raises(ValueError, match="adapter_model.bin, a pickle"):
        adapter_folder(pickled, needs_weights=True)


def test_missing_processor_files_names_each_gap(tmp_path):
    folder = _adapter(tmp_path / "a", {})
    assert missing_processor_files(folder) == [
        "tokenizer_config.json", "tokenizer.json", "processor_config.json or preprocessor_config.json"]
    for name in ("tokenizer_config.json", "tokenizer.json", "preprocessor_config.json"):
        (folder / name).write_text("{}")
    assert missing_processor_files(folder) == []


def test_training_info_round_trips_and_is_empty_when_absent(tmp_path):
    assert read_training_info(tmp_path) == {}
    path = write_training_info(tmp_path, {"method": "qlora", "max_tiles": 4, "freeze": ("vision",)})
    assert path == tmp_path / TRAINING_INFO_FILE
    assert read_training_info(tmp_path) == {"method": "qlora", "max_tiles": 4, "freeze": ["vision"]}
    with pytest.raises(ValueError, match="method must be one of lora, dora, qlora, full"):
        write_training_info(tmp_path, {"method": "lora4"})
    with pytest.raises(FileNotFoundError, match="save the adapter there first"):
        write_training_info(tmp_path / EVAL_DATA, {})


def test_a_checkpoint_folder_reads_its_runs_training_info(tmp_path):
    write_training_info(tmp_path, {"max_tiles": 4, "num_frames": 8, "eval_max_new_tokens": 64})
    checkpoint = tmp_path / "checkpoint-200"
    checkpoint.mkdir()
    assert read_training_info(checkpoint) == {"max_tiles": 4, "num_frames": 8, "eval_max_new_tokens": 64}
    # Its own file wins; a folder that is not a checkpoint never looks at its parent.
    write_training_info(checkpoint, {"max_tiles": 2})
    assert read_training_info(checkpoint) == {"max_tiles": 2}
    (tmp_path / "other").mkdir()
    assert read_training_info(tmp_path / "other") == {}
