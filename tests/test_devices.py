"""``check_gpu_usable``: an NVIDIA GPU that torch cannot use stops a run; a CPU run chosen on purpose does not.

The driver is faked by pointing the check at files of the test's own; torch is the real one. The cases where
the GPU is unusable need a torch that cannot use CUDA, as on the CPU machines the suite runs on.
"""

from __future__ import annotations

import pytest
import torch

from plm_tune.modeling.devices import UnusableGPUError, check_gpu_usable, nvidia_driver_version

OLD_DRIVER = ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.129.03  Thu Oct 19 18:56:32 UTC 2023\n"
              "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n")
OPEN_DRIVER = "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.65.06  Release Build  (dvs-builder@U16)\n"
cuda_unusable = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a torch that cannot use CUDA")


@pytest.fixture
def old_driver(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    driver = tmp_path / "version"
    driver.write_text(OLD_DRIVER)
    return {"driver_file": str(driver), "device_glob": str(tmp_path / "nvidia[0-9]*")}


def test_driver_version_is_read_from_both_kernel_module_lines(tmp_path):
    (tmp_path / "closed").write_text(OLD_DRIVER)
    (tmp_path / "open").write_text(OPEN_DRIVER)
    assert nvidia_driver_version(str(tmp_path / "closed")) == "535.129.03"
    assert nvidia_driver_version(str(tmp_path / "open")) == "580.65.06"
    assert nvidia_driver_version(str(tmp_path / "absent")) is None


@cuda_unusable
def test_a_gpu_torch_cannot_use_stops_the_run_in_one_line(old_driver):
    with pytest.raises(UnusableGPUError) as err:
        check_gpu_usable(**old_driver)
    message, cuda = str(err.value), torch.version.cuda
    assert "\n" not in message and "use_cpu=True" in message
    assert "driver 535.129.03" in message and f"torch {torch.__version__}" in message
    if cuda is None:
        assert "built without CUDA" in message and "download.pytorch.org/whl/cu126" in message
    elif cuda.startswith("13."):  # 535 is older than the 580 branch CUDA 13 needs
        assert f"built for CUDA {cuda}, which needs driver >= 580" in message
        assert "Update the NVIDIA driver to 580 or newer" in message and "download.pytorch.org/whl/cu126" in message
    else:  # 535 runs CUDA 12 (>= 525): the cause is elsewhere, torch's warning says which
        assert f"(CUDA {cuda}) cannot use it" in message


@cuda_unusable
def test_a_device_node_without_the_driver_file_counts_as_a_gpu(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    (tmp_path / "nvidia0").write_text("")
    with pytest.raises(UnusableGPUError, match=r"driver unknown: no .*absent"):
        check_gpu_usable(driver_file=str(tmp_path / "absent"), device_glob=str(tmp_path / "nvidia[0-9]*"))


@pytest.mark.parametrize("hidden", ["", "-1"])
def test_cuda_visible_devices_chosen_empty_is_a_cpu_run(old_driver, monkeypatch, hidden):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", hidden)
    check_gpu_usable(**old_driver)


def test_use_cpu_is_a_cpu_run(old_driver):
    check_gpu_usable(True, **old_driver)


def test_no_nvidia_driver_or_device_is_nothing_to_say(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    check_gpu_usable(driver_file=str(tmp_path / "absent"), device_glob=str(tmp_path / "nvidia[0-9]*"))
    check_gpu_usable()  # this machine as it is: the suite runs where torch can use its GPU, or there is none
