"""`plm-tune eval` reproduces the run's own eval (tiles, frames, max new tokens from its training info), never
replaces an eval silently, and reads a checkpoint's run; `RunOutputs.summary()` shows base vs finetuned."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_image

from plm_tune.after_training.outputs import RunOutputs
from plm_tune.arguments import MediaArguments
from plm_tune.data.sample import to_table
from plm_tune.inference.evaluation import EvalRecord, EvalResult
from plm_tune.modeling.run_folder import EVAL_DATA, write_training_info

TRAINED = {"method": "lora", "max_tiles": 2, "num_frames": 4, "eval_max_new_tokens": 5}


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "plm_tune.apps.cli", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})


@pytest.fixture(scope="module")
def run(tiny_plm_path, tmp_path_factory) -> Path:
    """A run folder as finish_run leaves it: a LoRA adapter, its training info, a 2-sample eval split; plus a
    ``checkpoint-200`` holding the same adapter and nothing else (as the Trainer's checkpoints do)."""
    from plm_tune import load_model

    folder = tmp_path_factory.mktemp("run")
    model, _ = load_model(str(tiny_plm_path), method="lora", lora_r=4, seed=0)
    model.save_pretrained(folder)
    write_training_info(folder, TRAINED)
    samples = []
    for i in range(2):
        path = folder.parent / f"image{i}.png"
        make_image(300, 200, seed=i).save(path)
        samples.append({"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]},
                                     {"role": "assistant", "content": "A picture."}], "images": [str(path)]})
    to_table(samples).save_to_disk(str(folder / EVAL_DATA))
    checkpoint = folder / "checkpoint-200"
    checkpoint.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(folder / name, checkpoint / name)
    return folder


def test_eval_defaults_come_from_the_run_and_a_second_eval_goes_to_a_new_folder(run):
    first = _cli("eval", "--adapter", run)
    assert first.returncode == 0, first.stderr[-3000:]
    info = json.loads((run / "eval/eval.json").read_text())["info"]
    # Training's eval settings, not the CLI's own defaults (36 tiles, 32 frames).
    assert (info["max_new_tokens"], info["max_tiles"], info["num_frames"]) == (5, 2, 4)
    assert info["training"]["eval_max_new_tokens"] == 5

    second = _cli("eval", "--adapter", run, "--no-base")
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"Wrote {run / 'eval-2/eval.json'}" in second.stdout
    assert json.loads((run / "eval/eval.json").read_text())["info"] == info  # the first one is untouched


def test_a_run_that_recorded_no_frames_is_evaluated_with_the_run_settings_default(run, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(run, folder, ignore=shutil.ignore_patterns("eval*", "checkpoint-*", "plm_tune_training.json"))
    shutil.copytree(run / EVAL_DATA, folder / EVAL_DATA)
    result = _cli("eval", "--adapter", folder, "--no-base", "--no-report", "--limit", "1", "--max-new-tokens", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads((folder / "eval/eval.json").read_text())["info"]
    assert (info["num_frames"], info["max_tiles"]) == (MediaArguments.num_frames, MediaArguments.max_tiles)


def test_eval_refuses_to_replace_an_eval_without_overwrite(run, tmp_path):
    (tmp_path / "eval.json").write_text("{}")
    refused = _cli("eval", "--adapter", run, "--output", tmp_path)
    assert refused.returncode == 2  # usage
    assert "exists: pass --overwrite" in refused.stderr and "Traceback" not in refused.stderr
    assert (tmp_path / "eval.json").read_text() == "{}"


def test_a_checkpoint_folder_is_evaluated_with_its_runs_settings_and_split(run, tmp_path):
    result = _cli("eval", "--adapter", run / "checkpoint-200", "--output", tmp_path / "ckpt", "--overwrite")
    assert result.returncode == 0, result.stderr[-3000:]
    ours = json.loads((tmp_path / "ckpt/eval.json").read_text())
    assert (ours["info"]["max_new_tokens"], ours["info"]["max_tiles"], ours["info"]["num_frames"]) == (5, 2, 4)
    assert ours["info"]["data"]["saved"] == str((run / EVAL_DATA).resolve())
    # The same adapter weights with the same settings: the run folder's answers, word for word.
    reference = json.loads((run / "eval/eval.json").read_text())
    assert [r["answer"] for r in ours["records"]] == [r["answer"] for r in reference["records"]]


def test_summary_shows_base_and_finetuned_side_by_side(tmp_path):
    records = [EvalRecord(index=0, sample_id=None, prompt="Modality?", reference="CT", answer="CT",
                          base_answer="OT", scores={"exact_match": 1.0}, base_scores={"exact_match": 0.0})]
    result = EvalResult(metrics={"exact_match": 0.875, "eval_loss": 0.5}, records=records,
                        base_metrics={"exact_match": 0.125, "eval_loss": 6.25}, info={"answered": 8})
    summary = RunOutputs(output_dir=tmp_path, eval_result=result, report=tmp_path / "report.html").summary()
    lines = summary.splitlines()
    assert "base vs finetuned" in lines[0] and "8 samples" in lines[0]
    assert lines[1].split() == ["metric", "base", "finetuned"]
    assert lines[2].split() == ["exact_match", "0.125", "0.875"]
    assert lines[3].split() == ["eval_loss", "6.25", "0.5"]
    assert lines[-1] == f"Report: {tmp_path / 'report.html'}"
    assert "most common reference" not in summary  # one record is no class-like split

    # A classifier-like split: the bar to clear is always answering its most common reference.
    records = [EvalRecord(index=i, sample_id=None, prompt="Modality?", reference=ref, answer="CT")
               for i, ref in enumerate(["OT", "OT", "OT", "CT", "MR", "OT", "CT", "MR"])]
    result = EvalResult(metrics={"exact_match": 0.25}, records=records, info={"answered": 8})
    summary = RunOutputs(output_dir=tmp_path, eval_result=result).summary()
    assert "Always answering the most common reference ('OT') would score exact_match 0.5." in summary
