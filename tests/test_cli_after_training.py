"""`plm-tune generate / eval / report / merge / push` on the radiology demo's output folder, as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def _cli(*args, cwd=None) -> str:
    result = subprocess.run([sys.executable, "-m", "plm_tune.apps.cli", *map(str, args)], capture_output=True, text=True,
                            cwd=cwd, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result.stdout


@pytest.fixture(scope="module")
def ct_file():
    from pydicom.data import get_testdata_file

    return get_testdata_file("CT_small.dcm")


@pytest.fixture(scope="module")
def adapter_answer(radiology_demo, ct_file):
    """The demo adapter's answer about a CT slice, in process, through the library, with the demo's 4 tiles.

    The CLI must find those 4 tiles itself, in the folder's plm_tune_training.json (PLM's default is 36).
    """
    from plm_tune import generate, load_for_inference

    model, processor = load_for_inference(str(radiology_demo.tiny), str(radiology_demo.out), dtype=None)
    sample = {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]}],
              "images": [ct_file]}
    return generate(model, processor, [sample], max_new_tokens=8, max_tiles=4, progress=False)[0]


def test_generate_with_adapter_or_adapter_folder_alone(radiology_demo, ct_file, adapter_answer):
    printed = _cli("generate", "--model", radiology_demo.tiny, "--adapter", radiology_demo.out, "--dicom", ct_file,
                   "--prompt", "Describe.", "--max-new-tokens", 8)
    assert printed.strip() == adapter_answer
    # An adapter folder as --model: its adapter_config.json names the base.
    alone = _cli("generate", "--model", radiology_demo.out, "--dicom", ct_file, "--prompt", "Describe.",
                 "--max-new-tokens", 8)
    assert alone.strip() == adapter_answer
    # --adapter without --model: the base the adapter names, not PLM-1B from the Hub.
    adapter_only = _cli("generate", "--adapter", radiology_demo.out, "--dicom", ct_file, "--prompt", "Describe.",
                        "--max-new-tokens", 8)
    assert adapter_only.strip() == adapter_answer


def test_a_user_error_is_one_message_not_a_traceback(radiology_demo, tmp_path):
    missing = tmp_path / "missing.png"
    result = subprocess.run([sys.executable, "-m", "plm_tune.apps.cli", "generate", "--model", str(radiology_demo.out),
                             "--image", str(missing), "--prompt", "Describe."], capture_output=True, text=True,
                            env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 1  # a data problem: the media file is missing
    assert "plm-tune generate: error:" in result.stderr and "missing.png" in result.stderr
    assert "Traceback" not in result.stderr


def test_eval_reuses_the_recipes_held_out_split_and_matches_its_answers(radiology_demo, tmp_path):
    printed = _cli("eval", "--model", radiology_demo.tiny, "--adapter", radiology_demo.out, "--limit", 3,
                   "--max-new-tokens", 128, "--output", tmp_path / "eval")
    ours = json.loads((tmp_path / "eval/eval.json").read_text())
    recipe = json.loads((radiology_demo.out / "eval/eval.json").read_text())
    assert len(ours["records"]) == 3
    # Same model, same samples, same greedy decoding: the recipe's answers, base and finetuned.
    for mine, theirs in zip(ours["records"], recipe["records"][:3], strict=False):
        assert (mine["answer"], mine["base_answer"], mine["reference"]) == \
               (theirs["answer"], theirs["base_answer"], theirs["reference"])
    assert "rouge_l" in printed and "report.html" in printed
    assert (tmp_path / "eval/report.html").is_file()

    # `plm-tune report` re-renders from eval.json alone: it records where its samples are.
    again = tmp_path / "again.html"
    _cli("report", tmp_path / "eval/eval.json", "--output", again)
    assert again.read_text().count('class="case"') == 3


def test_merge_then_generate_with_the_merged_folder(radiology_demo, tmp_path, ct_file, adapter_answer):
    merged = tmp_path / "merged"
    _cli("merge", "--adapter", radiology_demo.out, "--output", merged)
    assert (merged / "model.safetensors").is_file() and not (merged / "adapter_config.json").exists()
    assert json.loads((merged / "plm_tune_training.json").read_text())["max_tiles"] == 4
    printed = _cli("generate", "--model", merged, "--dicom", ct_file, "--prompt", "Describe.", "--max-new-tokens", 8)
    assert printed.strip() == adapter_answer


def test_push_dry_run_lists_the_adapter_not_the_eval_data(radiology_demo):
    files = _cli("push", "--adapter", radiology_demo.out, "--repo-id", "me/plm-demo", "--dry-run").split()
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "processor_config.json",
            "plm_tune_training.json"} <= set(files)
    assert not [f for f in files if f.startswith(("eval_data/", "eval/", "runs/")) or f.endswith(".bin")]
