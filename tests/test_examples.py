"""Every script in examples/ runs as its docstring says, on the tiny PLM, as a user would run it: a subprocess.

Each runs from a temporary folder (nothing is written into the repository) with ``--model <tiny PLM>`` and 3
steps, and the checks read what it printed and the files it wrote. ``generate_with_adapter.py`` and
``push_adapter.py`` use the adapter ``custom_dataset.py`` saved, as their docstrings do. The Hub is never
contacted: ``HF_HUB_OFFLINE=1`` for every run, and the one real push goes through a patched ``HfApi``.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def run_example(name: str, *args, cwd: Path, ok: bool = True) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, str(EXAMPLES / name), *map(str, args)], cwd=cwd, env=env,
                            capture_output=True, text=True)
    if ok:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    else:
        assert result.returncode != 0, result.stdout[-3000:]
    return result.stdout + result.stderr


def finite_loss_change(output: str) -> tuple[float, float]:
    match = re.search(r"train loss (\S+) \(step 1\) -> (\S+) \(step 3\)", output)
    assert match, output[-3000:]
    first, last = float(match.group(1)), float(match.group(2))
    assert math.isfinite(first) and math.isfinite(last), match.group(0)
    return first, last


def test_every_example_is_tested_and_documents_its_command():
    tested = {"custom_dataset.py", "video_qa.py", "mixed_image_video.py", "generate_with_adapter.py",
              "push_adapter.py"}
    scripts = {path.name for path in EXAMPLES.glob("*.py")}
    assert scripts == tested, f"untested examples: {sorted(scripts - tested)}; missing: {sorted(tested - scripts)}"
    for name in scripts:
        text = (EXAMPLES / name).read_text()
        assert f"python examples/{name}" in text, f"{name}'s docstring must give its command"
        assert re.search(r"took \d+ s|: \d+ s\)", text), f"{name}'s docstring must say how long it took here"


@pytest.fixture(scope="module")
def custom_run(tmp_path_factory, tiny_plm_path):
    folder = tmp_path_factory.mktemp("custom-dataset")
    output = run_example("custom_dataset.py", "--model", tiny_plm_path, "--max-steps", 3, cwd=folder)
    return SimpleNamespace(folder=folder, out=folder / "outputs/custom-dataset", output=output)


def test_custom_dataset_trains_evaluates_and_saves(custom_run):
    out, output = custom_run.out, custom_run.output
    assert "24 records -> 24 valid samples (20 train, 4 held out)" in output
    finite_loss_change(output)
    assert re.search(r"held out  exact_match \S+ -> \S+, rouge_l \S+ -> \S+  \(base -> finetuned\)", output)
    assert "Saved the LoRA adapter to outputs/custom-dataset" in output
    # LoRA's B matrices start at zero: any non-zero one was trained.
    weights = load_file(out / "adapter_model.safetensors")
    lora_b = [tensor for name, tensor in weights.items() if "lora_B" in name]
    assert lora_b and any(tensor.abs().sum() > 0 for tensor in lora_b)
    info = json.loads((out / "plm_tune_training.json").read_text())
    assert (info["method"], info["global_step"], info["max_tiles"]) == ("lora", 3, 4)
    assert math.isfinite(info["metrics"]["train_loss"]) and "eval_rouge_l" in info["metrics"]
    evaluated = json.loads((out / "eval/eval.json").read_text())
    assert len(evaluated["records"]) == 4 and evaluated["base_metrics"] is not None
    assert [r["sample_id"] for r in evaluated["records"]] == [f"case-{i}" for i in range(20, 24)]


def test_custom_dataset_names_a_bad_record_before_loading_the_model(tmp_path, tiny_plm_path):
    (tmp_path / "findings.csv").write_text("id,image,findings\nok-1,missing.png,A red circle.\n")
    output = run_example("custom_dataset.py", "--model", tiny_plm_path, "--csv", tmp_path / "findings.csv",
                         cwd=tmp_path, ok=False)
    assert "sample id='ok-1'" in output and "missing.png" in output, output[-2000:]
    assert "Loading weights" not in output


def test_video_qa_trains_on_timed_clips_with_the_tower_frozen(tmp_path, tiny_plm_path):
    output = run_example("video_qa.py", "--model", tiny_plm_path, "--max-steps", 3, cwd=tmp_path)
    assert "12 clips from 6 videos, 4 frames each (10 train, 2 held out)" in output
    assert "vision 0 (frozen)" in output
    finite_loss_change(output)
    assert "vision tower unchanged: True" in output
    assert re.search(r"held out  accuracy \S+ \(2 clips\)", output)
    assert (tmp_path / "outputs/video-qa/adapter_model.safetensors").is_file()
    table = (tmp_path / "outputs/video-qa-videos/annotations.csv").read_text().splitlines()
    assert table[1:3] == ["ball-00.mp4,0,4,Which way does the ball move?,right",
                          "ball-00.mp4,4,8,Which way does the ball move?,left"]


def test_mixed_image_video_counts_tokens_per_member_then_trains(tmp_path, tiny_plm_path):
    output = run_example("mixed_image_video.py", "--model", tiny_plm_path, "--max-steps", 3, "--samples", 16,
                         cwd=tmp_path)
    assert "mix 3:1 of images (max_tiles 4) and videos (num_frames 8): 16 samples drawn" in output
    table = re.findall(r"^(images|videos) +(\d+) .* (\d+\.\d) +\d+%$", output, re.M)
    rows = {name: (int(count), float(vision)) for name, count, vision in table}
    assert set(rows) == {"images", "videos"}, output[-2000:]
    assert rows["images"][0] + rows["videos"][0] == 16 and rows["images"][0] > rows["videos"][0], output[-2000:]
    # Each member keeps its own budget: 8 frames per video; a 112 px image at 56 px tiles is 4 tiles + thumbnail.
    assert rows["videos"][1] == 8.0 and rows["images"][1] == 5.0, rows
    finite_loss_change(output)
    assert (tmp_path / "outputs/mixed-image-video/adapter_model.safetensors").is_file()


def test_generate_with_adapter_answers_as_the_library_does(custom_run, tiny_plm_path):
    from plm_tune import generate, load_for_inference

    image = custom_run.folder / "outputs/custom-dataset-records/case-00.png"
    output = run_example("generate_with_adapter.py", "--model", tiny_plm_path, "--adapter", "outputs/custom-dataset",
                         "--image", image, "--max-new-tokens", 8, cwd=custom_run.folder)
    assert "(lora, 3 steps), 4 tiles per image" in output
    model, processor = load_for_inference(str(tiny_plm_path), str(custom_run.out))
    sample = {"messages": [{"role": "user", "content": [
        {"type": "image"}, {"type": "text", "text": "Describe the findings in this image."}]}], "images": [str(image)]}
    answer = generate(model, processor, [sample], max_new_tokens=8, max_tiles=4, progress=False)[0]
    assert f"finetuned: {answer}\n" in output
    assert "base:      " in output


def test_push_dry_run_writes_the_upload_folder_without_the_eval_data(custom_run):
    output = run_example("push_adapter.py", "--adapter", "outputs/custom-dataset", "--repo-id", "you/plm-findings",
                         "--dry-run", cwd=custom_run.folder)
    preview = custom_run.folder / "outputs/custom-dataset-upload"
    files = sorted(p.relative_to(preview).as_posix() for p in preview.rglob("*") if p.is_file())
    assert "adapter_model.safetensors" in files and "plm_tune_training.json" in files
    assert not [f for f in files if f.startswith("eval") or f.endswith(".bin")], files
    assert f"Would upload {len(files)} files to https://huggingface.co/you/plm-findings" in output
    card = (preview / "README.md").read_text()
    assert "# plm-findings" in card and "LoRA" in card and "train_loss" in card
    # The adapter folder keeps peft's placeholder card: the dry run wrote nothing into it.
    assert "# Model Card for Model ID" in (custom_run.out / "README.md").read_text()


def test_push_uploads_what_the_dry_run_showed(custom_run, monkeypatch, tmp_path):
    """The real path, with the Hub replaced at its boundary (HfApi): same files, no eval data."""
    import shutil

    import huggingface_hub
    from huggingface_hub.utils import filter_repo_objects

    from plm_tune import files_to_upload

    calls = {}
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, repo_id, **kw: calls.update(repo=repo_id))
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", lambda self, **kw: calls.update(upload=kw)
                        or SimpleNamespace(commit_url="https://huggingface.co/you/plm-findings/commit/abc"))
    adapter = tmp_path / "adapter"
    shutil.copytree(custom_run.out, adapter)
    spec = importlib.util.spec_from_file_location("push_example", EXAMPLES / "push_adapter.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", ["push_adapter.py", "--adapter", str(adapter), "--repo-id", "you/plm-findings"])
    module.main()
    assert calls["repo"] == "you/plm-findings"
    folder = Path(calls["upload"]["folder_path"])
    sent = sorted(filter_repo_objects([p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()],
                                      allow_patterns=calls["upload"]["allow_patterns"]))
    # What --dry-run copies: files_to_upload of the folder (README.md, peft's placeholder, is replaced by the card).
    assert sent == files_to_upload(custom_run.out)
    assert "eval/eval.json" not in sent and "training_args.bin" not in sent
    assert "# plm-findings" in (adapter / "README.md").read_text(), "no model card was written before the upload"
