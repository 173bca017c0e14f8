"""The built wheel, installed as a pip user gets it (not editable, no clone on the path): ``plm-tune train`` runs
the radiology demo config offline, and ``plm-tune recipes cp`` then ``accelerate launch`` runs the copy.

The wheel is built from this checkout and installed without dependencies into a fresh venv; the dependencies
come from this test's own environment through a path entry (not its ``.pth`` files, so an editable install of
plm-tune there is not seen). Every command runs from an empty folder: nothing of the clone can be imported.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _run(command: list, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(list(map(str, command)), cwd=cwd, env=env, capture_output=True, text=True)


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory) -> Path:
    """A fresh venv with plm-tune installed from a wheel built from this checkout."""
    folder = tmp_path_factory.mktemp("wheel")
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", folder / "dist",
                  ROOT], cwd=folder)
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = next((folder / "dist").glob("plm_tune-*.whl"))
    env = folder / "venv"
    venv.EnvBuilder(with_pip=False).create(env)
    site = Path(sysconfig.get_paths(vars={"base": str(env), "platbase": str(env)})["purelib"])
    site.mkdir(parents=True, exist_ok=True)
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # a path line: its .pth files unread
    installed = _run([sys.executable, "-m", "pip", "--python", env / "bin/python", "install", "--no-deps",
                      "--no-index", wheel], cwd=folder)
    assert installed.returncode == 0, installed.stderr[-3000:]
    return env


def test_the_wheel_trains_the_radiology_demo_offline_and_a_copied_recipe_runs(wheel_venv, tmp_path, tiny_plm_path):
    python = wheel_venv / "bin/python"
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "HF_HUB_OFFLINE": "1"}
    where = _run([python, "-c", "import plm_tune, plm_tune_recipes; print(plm_tune.__file__); "
                                "print(plm_tune_recipes.__file__)"], cwd=tmp_path, env=env)
    assert where.returncode == 0, where.stderr[-2000:]
    assert all(str(wheel_venv) in line and str(ROOT) not in line for line in where.stdout.splitlines()), where.stdout

    # The demo config as shipped (it builds its tiny PLM in .cache/tiny-plm), 2 steps.
    trained = _run([wheel_venv / "bin/plm-tune", "train", "radiology_demo", "--max_steps", "2", "--logging_steps",
                    "1", "--generate_eval", "false", "--report_to", "none"], cwd=tmp_path, env=env)
    assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr[-4000:]
    assert str(wheel_venv) in trained.stderr.splitlines()[0]  # the packaged recipe ran
    assert (tmp_path / "outputs/radiology-demo/adapter_model.safetensors").is_file()
    assert "87 train / 30 eval samples" in trained.stdout

    copied = _run([wheel_venv / "bin/plm-tune", "recipes", "cp", "radiology_demo", "mine"], cwd=tmp_path, env=env)
    assert copied.returncode == 0, copied.stderr[-2000:]
    launched = _run([python, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
                     "--mixed_precision", "no", "--dynamo_backend", "no", "mine/radiology_lora.py", "--config",
                     "mine/radiology_demo.yaml", "--model_name_or_path", tiny_plm_path, "--max_steps", "2",
                     "--generate_eval", "false", "--report_to", "none", "--output_dir", "copy-out"],
                    cwd=tmp_path, env=env)
    assert launched.returncode == 0, launched.stdout[-2000:] + launched.stderr[-4000:]
    assert (tmp_path / "copy-out/adapter_model.safetensors").is_file()
