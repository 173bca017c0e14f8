"""Shared fixtures: one tiny random-init PLM per test session, loaded through the real from_pretrained path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from plm_tune.modeling.testing import build_tiny_plm


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_plm_path(tmp_path_factory):
    return build_tiny_plm(tmp_path_factory.mktemp("tiny-plm"), seed=0)


@pytest.fixture(scope="session")
def processor(tiny_plm_path):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_plm_path)


@pytest.fixture(scope="session")
def model(tiny_plm_path):
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(0)
    return AutoModelForImageTextToText.from_pretrained(tiny_plm_path, dtype=torch.float32).eval()


def make_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """A deterministic noise image of the given size."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def qa(question: str, answer: str, media: tuple[str, ...] | list[str] = ()) -> list[dict]:
    """One user turn (media placeholders, then the question) and the assistant's answer."""
    return [
        {"role": "user", "content": [{"type": m} for m in media] + [{"type": "text", "text": question}]},
        {"role": "assistant", "content": answer},
    ]


def mixed_samples(*, text_only: bool = False) -> list[dict]:
    """Ragged in every way: two images (one plain tile each by default), a video, a multi-turn conversation (and a
    text-only sample)."""
    multi_turn = qa("Describe.", "Noise.", ["image"]) + qa("And the colour?", "Mostly grey, some red.")
    samples = [
        {"messages": qa("Compare them.", "The left is brighter.", ["image", "image"]),
         "images": [make_image(160, 60, seed=1), make_image(56, 56, seed=2)], "max_tiles": 4},
        {"messages": qa("What happens?", "Noise flickers.", ["video"]), "videos": [make_frames(5, seed=3)]},
        {"messages": multi_turn, "images": [make_image(90, 140, seed=4)], "max_tiles": 2},
    ]
    return samples + [{"messages": qa("Say hi.", "Hi.")}] if text_only else samples


def make_frames(count: int, size: int = 40, seed: int = 0) -> np.ndarray:
    """Deterministic (T, H, W, 3) uint8 video frames."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)


ROOT = Path(__file__).resolve().parent.parent


def run_recipe(tmp_path: Path, command: list[str]) -> str:
    """Run a recipe from tmp_path with 3 steps; return its stdout + stderr; check the loss summary it prints."""
    import math
    import re

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([*command, "--max_steps", "3", "--logging_steps", "1", "--output_dir", "out"],
                            cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    summary = re.search(r"train loss (\S+) \(step 1\) -> (\S+) \(step 3\); eval loss (\S+) -> (\S+)", result.stdout)
    assert summary, result.stdout[-3000:]
    assert all(math.isfinite(float(loss)) for loss in summary.groups()), summary.group(0)
    assert not (tmp_path / "runs").exists(), "TensorBoard logs went to the working directory, not output_dir/runs"
    return result.stdout + result.stderr


@pytest.fixture(scope="session")
def radiology_demo(tmp_path_factory):
    """The README's first command, 3 steps: the radiology recipe on the demo config, through accelerate launch.

    Returns ``out`` (the output folder), ``output`` (what it printed) and ``tiny`` (the PLM it built).
    """
    folder = tmp_path_factory.mktemp("radiology-demo")
    tiny = folder / "tiny-plm"  # missing: the recipe builds it (build_tiny_if_missing)
    output = run_recipe(folder, [
        sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", str(ROOT / "recipes/radiology_lora.py"),
        "--config", str(ROOT / "recipes/configs/radiology_demo.yaml"), "--model_name_or_path", str(tiny),
    ])
    return SimpleNamespace(out=folder / "out", output=output, tiny=tiny)
