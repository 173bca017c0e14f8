"""``plm-tune --version`` and ``plm-tune env``: what a bug report needs, in a fresh process as a user runs them."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata

import torch

from plm_tune.apps.environment import PACKAGES


def _plm_tune(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "plm_tune.apps.cli", *args], capture_output=True, text=True,
                          timeout=300)


def test_version_prints_the_installed_version_and_exits_0():
    done = _plm_tune("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"plm-tune {metadata.version('plm-tune')}"


def test_env_lists_python_torch_cuda_and_every_training_library():
    done = _plm_tune("env")
    assert done.returncode == 0, done.stderr
    rows = dict(line.removeprefix("- ").split(": ", 1) for line in done.stdout.splitlines())
    assert rows["plm-tune"] == metadata.version("plm-tune")
    assert rows["Python"] == sys.version.split()[0]
    assert rows["torch"] == metadata.version("torch") and torch.__version__.startswith(rows["torch"])
    assert rows["torch CUDA build"] == (torch.version.cuda or "none (CPU build)")
    assert rows["CUDA available"] == str(torch.cuda.is_available())
    for name in PACKAGES:  # installed or not, each is named, so a report shows what is missing too
        try:
            expected = metadata.version(name)
        except metadata.PackageNotFoundError:
            expected = "not installed"
        assert rows[name] == expected, name
