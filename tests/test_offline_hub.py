"""Without the Hub, a Hub id fails in seconds with one line (no minute of huggingface_hub's retries), a cached
model still loads, and `--plan true` plans PLM-1B from its released settings rebuilt offline.

Each command runs in a fresh process with an empty Hugging Face cache (HF_HOME in tmp_path) and either
HF_HUB_OFFLINE=1 or HF_ENDPOINT at a closed local port (nothing listens: the connection is refused at once).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from plm_tune.apps.exits import USAGE

ROOT = Path(__file__).resolve().parent.parent


def _closed_port() -> int:
    """A local port nothing listens on: bound, noted, closed."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(tmp_path: Path, mode: str) -> dict[str, str]:
    """The environment of a run: an empty Hub cache, and the Hub either offline by choice or out of reach."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HOME": str(tmp_path / "hf-home")}
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_ENDPOINT", "PLM_TUNE_DEBUG"):
        env.pop(name, None)
    if mode == "offline":
        env["HF_HUB_OFFLINE"] = "1"
    else:
        env["HF_ENDPOINT"] = f"http://127.0.0.1:{_closed_port()}"
    return env


def _run(command: list, tmp_path: Path, mode: str) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    result = subprocess.run([sys.executable, *map(str, command)], capture_output=True, text=True,
                            env=_env(tmp_path, mode), cwd=tmp_path)
    return result, time.monotonic() - start


FIX = {"offline": "unset HF_HUB_OFFLINE and connect", "unreachable": "connect and run again"}


@pytest.mark.parametrize("mode", ["unreachable", "offline"])
@pytest.mark.parametrize("model", ["tinyy", "someone/model"])
def test_a_model_id_not_in_the_cache_fails_in_seconds_with_one_line(tmp_path, mode, model):
    result, seconds = _run(["-m", "plm_tune.apps.cli", "generate", "--model", model, "--prompt", "Hi."], tmp_path, mode)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == USAGE and len(lines) == 1, result.stderr
    assert lines[0].startswith("plm-tune generate: error: ") and f"the model {model!r}" in lines[0], lines[0]
    assert FIX[mode] in lines[0] and "local model folder" in lines[0]
    assert seconds < 5, f"{seconds:.1f} s"  # the bound: huggingface_hub's retries took about 60 s


@pytest.mark.parametrize("mode", ["unreachable", "offline"])
def test_a_hub_dataset_not_in_the_cache_is_one_line(tmp_path, tiny_plm_path, mode):
    result, _ = _run(["-m", "plm_tune.apps.cli", "data", "check", "--data-adapter", "hf", "--arg",
                      "name_or_path=org/name", "--model-name-or-path", tiny_plm_path], tmp_path, mode)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == USAGE and len(lines) == 1, result.stderr
    assert lines[0].startswith("plm-tune data check: error: cannot reach the Hugging Face Hub") and "'org/name'" in lines[0]


def test_a_cached_model_loads_from_the_cache_when_the_hub_does_not_answer(tmp_path, tiny_plm_path):
    # The Hub cache's layout (huggingface_hub's file_download): refs/main names the snapshot holding the files.
    repo = tmp_path / "hf-home" / "hub" / "models--someone--tiny-plm"
    commit = "0" * 40
    shutil.copytree(tiny_plm_path, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    result, _ = _run(["-m", "plm_tune.apps.cli", "generate", "--model", "someone/tiny-plm", "--prompt", "Hi.",
                      "--max-new-tokens", "2"], tmp_path, "unreachable")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "did not answer within 3 s: loading someone/tiny-plm from the local cache" in result.stderr
    assert "Retrying" not in result.stderr  # the process went offline: no request was tried again


def _plan(tmp_path: Path, mode: str) -> subprocess.CompletedProcess:
    result, _ = _run([ROOT / "recipes/radiology_lora.py", "--config", ROOT / "recipes/configs/radiology_lora.yaml",
                      "--dicom_dir", "pydicom-testdata", "--dicom_caption", "{Modality}", "--on_error", "skip",
                      "--plan", "true"], tmp_path, mode)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.parametrize("mode", ["unreachable", "offline"])
def test_plan_of_the_plm_1b_recipe_config_works_offline_from_the_released_settings(tmp_path, mode):
    pytest.importorskip("llama_models", reason='needs the real-tokenizer extra: pip install "plm-tune[real-tokenizer]"')
    report = _plan(tmp_path, mode).stdout
    why = "HF_HUB_OFFLINE=1" if mode == "offline" else "the Hub out of reach"
    assert report.startswith(f"processor: facebook/Perception-LM-1B's released settings rebuilt offline ({why}"), report
    totals = re.search(r"media ([\d,]+) .*; ([\d,]+) image tiles, ([\d,]+) video frames", report)
    media, tiles, frames = (int(x.replace(",", "")) for x in totals.groups())
    assert tiles > 0 and frames > 0 and media == 256 * (tiles + frames)  # PLM-1B: 256 tokens per 448 px tile
    # max_tiles 4: at most a thumbnail and 4 tiles per image, so no sample above 5 x 256 image tokens + its text.
    longest = int(re.search(r"max ([\d,]+)", report).group(1).replace(",", ""))
    assert 5 * 256 < longest < 5 * 256 + 100
    assert re.search(r"^  PLM-1B lora ", report, re.MULTILINE)


def test_the_rebuilt_processor_is_plm_1b_s_and_the_plan_counts_what_the_collator_builds(tmp_path, monkeypatch):
    pytest.importorskip("llama_models", reason='needs the real-tokenizer extra: pip install "plm-tune[real-tokenizer]"')
    from huggingface_hub import constants
    from PIL import Image

    from plm_tune import PLMCollator, estimate_cost
    from plm_tune.training.plan import plan_processor

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # nothing cached
    processor, source = plan_processor("facebook/Perception-LM-1B")
    assert "released settings rebuilt offline (HF_HUB_OFFLINE=1" in source
    assert processor.image_processor.tile_size == 448 and processor.image_processor.max_num_tiles == 36
    assert processor.tokenizer("Hello world").input_ids == [128000, 9906, 1917]  # Llama 3's ids
    collator = PLMCollator(processor, max_tiles=1)
    sample = {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]},
                           {"role": "assistant", "content": "A grey square."}],
              "images": [Image.new("RGB", (448, 448), "grey")]}
    batch = collator([sample])
    image_tokens = int((batch["input_ids"] == processor.tokenizer.convert_tokens_to_ids("<|image|>")).sum())
    assert image_tokens == 2 * 256  # max_tiles 1: the tile and the thumbnail, 256 tokens each
    assert estimate_cost(sample, collator).tokens == batch["input_ids"].shape[1]


def test_without_the_real_tokenizer_extra_plan_says_what_to_install(tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    from plm_tune.apps.exits import run_main
    from plm_tune.training.plan import plan_processor

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setitem(sys.modules, "llama_models", None)  # as if llama-models were not installed
    assert run_main(plan_processor, "facebook/Perception-LM-1B", program="plan") == USAGE
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("plan: error: facebook/Perception-LM-1B is not in the local")
    assert 'pip install "plm-tune[real-tokenizer]"' in lines[0]
