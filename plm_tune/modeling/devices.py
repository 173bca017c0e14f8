"""Is there an NVIDIA GPU here that torch cannot use, and why: asked before a run loads its model.

``torch.cuda.is_available()`` is False both on a machine without a GPU and on one whose NVIDIA driver is older
than the CUDA torch was built for (torch only prints a warning). Everything downstream then reads the second
case as the first: ``load_model`` picks float32, the recipes leave ``bf16`` off and the Trainer runs on the
CPU, hundreds of times slower, without an error. ``check_gpu_usable`` tells the two apart from what the
kernel driver exposes, without initialising CUDA.

Example:
    >>> check_gpu_usable(driver_file="/nonexistent", device_glob="/nonexistent*")  # no NVIDIA GPU: nothing to say
"""

from __future__ import annotations

import glob
import os
import re

__all__ = ["DEVICE_GLOB", "DRIVER_FILE", "UnusableGPUError", "check_gpu_usable", "nvidia_driver_version"]

DRIVER_FILE = "/proc/driver/nvidia/version"  # written by the loaded NVIDIA kernel module (Linux)
DEVICE_GLOB = "/dev/nvidia[0-9]*"  # one device node per GPU; a container may have these without DRIVER_FILE
# The oldest driver branch that runs each CUDA major version (NVIDIA, "CUDA Compatibility", minor version
# compatibility table: https://docs.nvidia.com/deploy/cuda-compatibility/minor-version-compatibility.html).
_MIN_DRIVER = {11: 450, 12: 525, 13: 580}
_OLDER_TORCH = "pip install torch --index-url https://download.pytorch.org/whl/cu126"  # CUDA 12.6: driver >= 525
_ON_PURPOSE = "or set SFTConfig's use_cpu=True (use_cpu: true in a config) to train on the CPU on purpose."


class UnusableGPUError(RuntimeError):
    """An NVIDIA GPU is present but torch cannot use it; the message is one line with the cause and the fix."""


def nvidia_driver_version(driver_file: str = DRIVER_FILE) -> str | None:
    """The loaded NVIDIA driver's version (``"535.129.03"``) from ``driver_file``; None if it is absent.

    Its first line reads ``NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.129.03  Thu Oct 19 ...`` (or
    ``... Open Kernel Module for x86_64  580.65.06  Release Build ...``).
    """
    try:
        with open(driver_file, encoding="utf-8", errors="replace") as f:
            first = f.readline()
    except OSError:
        return None
    found = re.search(r"\s(\d+\.\d+(?:\.\d+)?)\s", first)
    return found.group(1) if found else "unknown"


def check_gpu_usable(use_cpu: bool = False, *, driver_file: str = DRIVER_FILE, device_glob: str = DEVICE_GLOB) -> None:
    """Stop a run that would silently train on the CPU of a machine with an NVIDIA GPU.

    Nothing happens when the run chose the CPU (``use_cpu``, or ``CUDA_VISIBLE_DEVICES`` set to ``""`` or
    ``"-1"``), when there is no NVIDIA GPU (no ``driver_file``, no ``device_glob`` match), or when torch can use
    CUDA.

    Args:
        use_cpu: the run trains on the CPU on purpose (``SFTConfig.use_cpu``).
        driver_file, device_glob: where the NVIDIA kernel driver shows itself (parameters so that tests can
            point them at files of their own).

    Raises:
        UnusableGPUError: one line naming the driver found, torch's CUDA version and the fix.
    """
    if use_cpu or os.environ.get("CUDA_VISIBLE_DEVICES", "0").strip() in ("", "-1"):
        return
    driver = nvidia_driver_version(driver_file)
    if driver is None and not glob.glob(device_glob):
        return
    import torch

    if torch.cuda.is_available():
        return
    found = f"An NVIDIA GPU is present (driver {driver or f'unknown: no {driver_file}'}) but torch {torch.__version__}"
    cuda = torch.version.cuda
    needed = _MIN_DRIVER.get(int(cuda.split(".")[0])) if cuda else None
    major = int(driver.split(".")[0]) if driver and driver[0].isdigit() else None
    if cuda is None:
        message = (f"{found} is built without CUDA, so training would run on the CPU in float32. Install a CUDA "
                   f"build of torch ({_OLDER_TORCH} runs on drivers >= 525), {_ON_PURPOSE}")
    elif needed is not None and major is not None and major < needed:
        message = (f"{found} cannot use it: torch is built for CUDA {cuda}, which needs driver >= {needed}, so "
                   f"training would run on the CPU in float32. Update the NVIDIA driver to {needed} or newer, or "
                   f"install a torch built for an older CUDA that this driver runs ({_OLDER_TORCH} needs "
                   f">= 525), {_ON_PURPOSE}")
    else:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        shown = f"CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else "CUDA_VISIBLE_DEVICES unset"
        message = (f"{found} (CUDA {cuda}) cannot use it ({shown}), so training would run on the CPU in float32. "
                   "The warning torch printed when it looked for CUDA says why; check the GPU with nvidia-smi, "
                   f"{_ON_PURPOSE}")
    raise UnusableGPUError(message)
