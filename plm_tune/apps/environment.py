"""``plm-tune env``: the versions and hardware a bug report needs, as ``trl env`` and ``accelerate env`` print them.

Package versions come from the installed distributions' metadata (nothing is imported for them); torch is
imported for its CUDA build and the GPUs it sees, and ``nvidia-smi``, when present, gives the driver.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys
from importlib import metadata

__all__ = ["PACKAGES", "environment", "format_environment"]

# The distributions whose versions decide how a PLM finetune behaves (and how bugs show), in report order.
PACKAGES = ("torch", "torchvision", "transformers", "trl", "peft", "accelerate", "datasets", "deepspeed",
            "bitsandbytes", "flash-attn", "timm", "av", "pydicom")


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def _gpus() -> list[tuple[str, str]]:
    """``(label, value)`` rows on torch's CUDA build, the GPUs it sees and the NVIDIA driver."""
    try:
        import torch
    except ImportError:
        return []
    rows = [("torch CUDA build", torch.version.cuda or "none (CPU build)"),
            ("CUDA available", str(torch.cuda.is_available()))]
    if torch.cuda.is_available():
        rows += [(f"GPU {i}", torch.cuda.get_device_name(i)) for i in range(torch.cuda.device_count())]
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
        try:
            driver = subprocess.run(query, capture_output=True, text=True, timeout=10).stdout.split()
        except (OSError, subprocess.TimeoutExpired):
            driver = []
        rows.append(("NVIDIA driver", driver[0] if driver else "nvidia-smi gave none"))
    return rows


def environment() -> list[tuple[str, str]]:
    """``(label, value)`` rows: plm-tune, Python, the platform, each of ``PACKAGES``, then torch's CUDA and GPUs."""
    rows = [("plm-tune", _version("plm-tune")), ("Python", sys.version.split()[0]),
            ("platform", platform.platform())]
    rows += [(name, _version(name)) for name in PACKAGES]
    return rows + _gpus()


def format_environment(rows: list[tuple[str, str]]) -> str:
    """The rows as a Markdown list, to paste into a bug report as they are."""
    return "\n".join(f"- {label}: {value}" for label, value in rows)
