"""A fast and quiet CLI: `--help` imports nothing heavy, the public API still imports by name, and commands print
no warning that plm-tune's own code or configs cause. (Help *time* is measured by benchmarks/cli_startup.py,
not asserted here.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = {"torch", "transformers", "peft", "trl", "accelerate", "datasets", "deepspeed", "bitsandbytes"}
# What our own code or configs used to make the libraries underneath print on every command.
OUR_NOISE = ("Setting accelerator to CPU", "clean_up_tokenization_spaces", "FutureWarning")


def _python(code: str, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    env.pop("ACCELERATE_USE_DEEPSPEED", None)
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=cwd)


def test_the_cli_and_its_help_import_no_heavy_package():
    code = ("import contextlib, io, sys\nimport plm_tune.apps.cli\n"
            "for argv in (['--help'], ['push', '--help'], ['data', 'check', '--help'], ['generate', '--help']):\n"
            "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
            "        plm_tune.apps.cli.build_parser().parse_args(argv)\n"
            "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))")
    result = _python(code)
    assert result.returncode == 0, result.stderr
    assert not HEAVY & set(result.stdout.split()), result.stdout


def test_the_public_api_imports_by_name_on_first_use():
    code = ("import sys\nimport plm_tune\nassert 'torch' not in sys.modules\n"
            "from plm_tune import build_trainer, load_model\n"
            "assert callable(build_trainer) and callable(load_model) and 'torch' in sys.modules\n"
            "missing = [name for name in plm_tune.__all__ if not hasattr(plm_tune, name)]\n"
            "assert not missing, missing\nassert set(plm_tune.__all__) <= set(dir(plm_tune))\n"
            "try:\n    plm_tune.no_such_name\nexcept AttributeError as error:\n    print(error)\n")
    result = _python(code)
    assert result.returncode == 0, result.stderr
    assert "module 'plm_tune' has no attribute 'no_such_name'" in result.stdout


def test_tiny_model_and_a_lora_load_print_no_warning_of_ours(tmp_path):
    """tiny-model saves a model (accelerate imports DeepSpeed there) and the load wraps it with peft."""
    code = ("import sys\nfrom plm_tune.apps.cli import main\nassert main(['tiny-model', sys.argv[1]]) == 0\n"
            "from plm_tune import load_model\nload_model(sys.argv[1], method='lora')\n")
    result = _python(code, str(tmp_path / "tiny"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    printed = result.stdout + result.stderr
    assert not [noise for noise in OUR_NOISE if noise in printed], printed[-3000:]


def test_the_demo_prints_no_warning_of_ours(radiology_demo):
    """The README's first command (the radiology demo, 3 steps here, building its tiny PLM)."""
    assert not [noise for noise in OUR_NOISE if noise in radiology_demo.output], radiology_demo.output[-5000:]
