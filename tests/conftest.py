"""Shared fixtures: one tiny random-init PLM per test session, loaded through the real from_pretrained path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from plm_tune.testing import build_tiny_plm


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


def make_frames(count: int, size: int = 40, seed: int = 0) -> np.ndarray:
    """Deterministic (T, H, W, 3) uint8 video frames."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)
