"""Ordinary mistakes at the `plm-tune` command line give one line that names the mistake and the fix, never a
traceback (PLM_TUNE_DEBUG=1 brings it back), and exit 2 (usage); an unexpected error exits 3 (a crash). Each case
runs the real CLI in a fresh process, offline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from plm_tune.apps.exits import CRASH, USAGE

ROOT = Path(__file__).resolve().parent.parent


def _cli(*args, cwd: Path, debug: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT),
           "HF_HOME": str(cwd / "hf-home")}  # an empty Hub cache: nothing is "already downloaded"
    env.pop("PLM_TUNE_DEBUG", None)
    if debug:
        env["PLM_TUNE_DEBUG"] = "1"
    return subprocess.run([sys.executable, "-m", "plm_tune.apps.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd)


def _one_line(result: subprocess.CompletedProcess, start: str, code: int = USAGE) -> str:
    """The single stderr line of a failed command; checks the exit code and that there is no traceback."""
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(start), lines[0]
    return lines[0]


def test_a_typod_local_folder_is_no_such_folder_not_a_hub_lookup(tmp_path):
    (tmp_path / "outputs" / "my-photos").mkdir(parents=True)
    line = _one_line(_cli("generate", "--model", "outputs/my-photo", "--prompt", "Describe.", cwd=tmp_path),
                     "plm-tune generate: error: no such folder: outputs/my-photo ")
    assert "outputs has no my-photo" in line
    line = _one_line(_cli("generate", "--adapter", "./outputs/my-photo", "--prompt", "Describe.", cwd=tmp_path),
                     "plm-tune generate: error: no such folder: ./outputs/my-photo")
    # A Hub id with no such local folder is left to the Hub (and here, offline, says so).
    _one_line(_cli("generate", "--model", "me/my-photo", "--prompt", "Hi.", cwd=tmp_path),
              "plm-tune generate: error: HF_HUB_OFFLINE=1 and the model 'me/my-photo' is not in the local")


def test_load_model_names_a_missing_folder_before_any_hub_call(tmp_path, monkeypatch):
    from transformers import AutoModelForImageTextToText

    from plm_tune import load_for_inference, load_model

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(AutoModelForImageTextToText, "from_pretrained",
                        lambda *a, **k: pytest.fail("from_pretrained must not be reached"))
    with pytest.raises(FileNotFoundError, match=r"^no such folder: \.cache/tiny-plmx \(it looks like a local path"):
        load_model(".cache/tiny-plmx")
    with pytest.raises(FileNotFoundError, match="no such folder: /nowhere/plm"):
        load_for_inference("/nowhere/plm")


def test_offline_hub_access_is_one_line_saying_so(tmp_path):
    line = _one_line(_cli("generate", "--model", "facebook/Perception-LM-1B", "--prompt", "Hi.", cwd=tmp_path),
                     "plm-tune generate: error: HF_HUB_OFFLINE=1 and the model 'facebook/Perception-LM-1B' is not "
                     "in the local Hugging Face cache")
    assert "unset HF_HUB_OFFLINE and connect" in line and "local model folder" in line  # the fixes


def test_plan_on_the_plm_1b_recipe_config_offline_plans_from_the_released_settings(tmp_path):
    pytest.importorskip("llama_models", reason='needs the real-tokenizer extra: pip install "plm-tune[real-tokenizer]"')
    # the recipe config's run settings name facebook/Perception-LM-1B; the data comes from an adapter
    result = _cli("plan", ROOT / "recipes/configs/radiology_lora.yaml", "--data-adapter", "synthetic_shapes",
                  "--arg", "n=4", cwd=tmp_path)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "Ignored answer_column, dataset, dataset_split" in result.stderr  # the recipe's corpus keys
    assert result.stdout.startswith("processor: facebook/Perception-LM-1B's released settings rebuilt offline")
    assert "4 samples" in result.stdout and "PLM-1B lora" in result.stdout


def test_an_unknown_arg_key_lists_the_valid_ones(tmp_path):
    line = _one_line(_cli("data", "check", "--data-adapter", "image_folder", "--arg", "rot=my_photos", cwd=tmp_path),
                     "plm-tune data check: error: the image_folder data adapter has no argument 'rot'")
    assert "its arguments: root, prompt" in line


def test_an_unexpected_error_is_one_line_with_the_debug_hint_and_the_traceback_on_request(tmp_path):
    # `report` on "[]" used to be the crash here; it is a usage error now (issue 25), so the crash is raised by a
    # command of its own, run through the CLI's run_main in a fresh process.
    (tmp_path / "eval.json").write_text("[]")
    _one_line(_cli("report", "eval.json", cwd=tmp_path), "plm-tune report: error: eval.json is not an eval.json")
    code = ("import sys; from plm_tune.apps.exits import run_main\n"
            "def report(): return 1 + 'a'\n"
            "sys.exit(run_main(report, program='plm-tune report'))")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PLM_TUNE_DEBUG", None)
    crash = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    line = _one_line(crash, "plm-tune report: error: TypeError: ", CRASH)
    assert line.endswith("(PLM_TUNE_DEBUG=1 for the traceback)")
    debug = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                           env={**env, "PLM_TUNE_DEBUG": "1"})  # the exception goes through: Python exits 1
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr and "TypeError" in debug.stderr


@pytest.mark.parametrize(("args", "usage"), [
    (["push", "--adapter", "a", "--repo-id", "me/a", "--dryrun"], "usage: plm-tune push "),
    (["data", "check", "--data-adaptor", "image_folder"], "usage: plm-tune data check "),
])
def test_a_typod_flag_shows_the_subcommands_usage(tmp_path, args, usage):
    result = _cli(*args, cwd=tmp_path)
    assert result.returncode == USAGE and result.stderr.startswith(usage), result.stderr
    assert f"error: unrecognized arguments: {args[-1] if args[0] == 'push' else '--data-adaptor'}" in result.stderr


def test_a_library_error_names_the_parameter_to_python_and_the_flag_at_the_command_line(tmp_path):
    from plm_tune import merge_adapter
    from plm_tune.after_training.push import push_plan

    with pytest.raises(FileNotFoundError, match=r"does not exist: pass `adapter_dir` with a saved adapter folder"):
        merge_adapter(tmp_path / "missing", tmp_path / "out")
    line = _one_line(_cli("merge", "--adapter", "missing", "--output", "out", cwd=tmp_path),
                     "plm-tune merge: error: Adapter folder missing does not exist: pass --adapter with a saved")
    assert "`" not in line
    with pytest.raises(ValueError, match=r"^`repo_id` 'not a repo' is not a Hub repo id"):
        push_plan(tmp_path / "missing", "not a repo")
    _one_line(_cli("push", "--adapter", "missing", "--repo-id", "not a repo", "--dry-run", cwd=tmp_path),
              "plm-tune push: error: --repo-id 'not a repo' is not a Hub repo id")


def test_the_commands_own_mistakes_are_the_same_one_line(tmp_path):
    (tmp_path / "m").mkdir()
    line = _one_line(_cli("eval", "--model", "./m", cwd=tmp_path),
                     "plm-tune eval: error: No eval data: m/eval_data does not exist")
    assert line.endswith("--data-adapter NAME --arg ...")
    _one_line(_cli("data", "check", "--data-adapter", "image_folder", "--arg", "root", cwd=tmp_path),
              "plm-tune data check: error: --arg expects KEY=VALUE, got 'root'.")
