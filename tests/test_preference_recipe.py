"""The DPO recipe (recipes/preference_lora.py) as a user runs it, in fresh processes: the offline demo config trains
the tiny PLM, scores the held-out pairs with the base and the tuned model and writes eval.json and the report; its
parser is DPOConfig's; a bad DPO setting is one line; the PLM-1B config plans offline.

The demo runs shortened (40 of the config's 60 steps, which take about 2 minutes on 2 busy CPU cores); the full demo's
figures are in the README.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from plm_tune.apps.exits import USAGE

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes/preference_lora.py"
DEMO = ROOT / "recipes/configs/preference_demo.yaml"


def _recipe(*args, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = env or {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(RECIPE), *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env=env)


@pytest.fixture(scope="module")
def demo(tmp_path_factory, tiny_plm_path):
    """The demo config as shipped (96 pairs, 32 held out, 300 steps: about 30 s of training on 2 CPU cores)."""
    folder = tmp_path_factory.mktemp("preference-demo")
    done = _recipe("--config", DEMO, "--model_name_or_path", tiny_plm_path, "--output_dir", "out",
                   "--disable_tqdm", "true", cwd=folder)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return folder / "out", done.stdout


def test_the_demo_moves_the_held_out_preferences_towards_the_chosen_answers(demo):
    out, printed = demo
    evaluation = json.loads((out / "eval/eval.json").read_text())
    base, tuned = evaluation["base_metrics"], evaluation["metrics"]
    assert evaluation["objective"] == "dpo" and base["pairs"] == tuned["pairs"] == len(evaluation["records"]) == 32
    # The colours are balanced: the random base prefers the chosen answer about half the time.
    assert 0.2 <= base["preference_accuracy"] <= 0.8
    # The learnability acceptance of issue 26: from about chance to near 1 on held-out images.
    assert tuned["preference_accuracy"] >= 0.9 and tuned["reward_accuracy"] >= 0.9
    assert tuned["mean_logp_gap"] > base["mean_logp_gap"] + 1.0 and tuned["mean_reward_margin"] > 1.0
    # The records are the pairs scored: their gaps give the metrics back.
    gaps = [r["tuned"]["chosen"] - r["tuned"]["rejected"] for r in evaluation["records"]]
    assert sum(gap > 0 for gap in gaps) / len(gaps) == pytest.approx(tuned["preference_accuracy"])
    assert all(r["prompt"] == "What colour is the shape?" and r["chosen"] != r["rejected"] for r in evaluation["records"])
    line = next(line for line in printed.splitlines() if line.startswith("Held-out preference accuracy (32 pairs)"))
    assert f"base {base['preference_accuracy']:.2f} -> tuned {tuned['preference_accuracy']:.2f}" in line, line

    info = json.loads((out / "plm_tune_training.json").read_text())
    assert (info["objective"], info["beta"], info["loss_type"], info["global_step"]) == ("dpo", 1.0, ["sigmoid"], 300)
    assert (out / "adapter_model.safetensors").is_file() and (out / "processor_config.json").is_file()


def test_the_demo_report_shows_base_and_tuned_with_each_pair(demo):
    out, printed = demo
    page = (out / "eval/report.html").read_text()
    evaluation = json.loads((out / "eval/eval.json").read_text())
    row = re.search(r'<tr data-metric="preference_accuracy">.*?<td class="base">(.*?)</td><td class="tuned">(.*?)</td>',
                    page)
    assert row and row.groups() == (f"{evaluation['base_metrics']['preference_accuracy']:.4g}",
                                    f"{evaluation['metrics']['preference_accuracy']:.4g}")
    assert "(base) \u2192" in page and "(tuned)" in page
    assert '<svg id="loss-curve"' in page
    assert len(re.findall(r'<article class="pair" data-index="\d+"', page)) == 32
    assert page.count('src="data:image/jpeg;base64,') == 32 and 'class="media-error"' not in page
    assert "Report: out/eval/report.html" in printed


def test_the_recipe_reads_dpo_config_and_names_it_for_an_unknown_key(tmp_path):
    sys.path.insert(0, str(ROOT))  # the recipe imports data_adapters, as a script run from the repository does
    import importlib.util

    spec = importlib.util.spec_from_file_location("preference_recipe", RECIPE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    *_, dpo_args, _ = module.make_parser().parse_args_and_config(["--config", str(DEMO)])
    assert type(dpo_args).__name__ == "DPOConfig" and dpo_args.beta == 1.0 and dpo_args.loss_type == ["sigmoid"]

    config = tmp_path / "typo.yaml"
    config.write_text(DEMO.read_text() + "betta: 0.5\n")
    with pytest.raises(ValueError, match=r"betta \(did you mean beta\?\).*any trl\.DPOConfig field") as error:
        module.make_parser().parse_args_and_config(["--config", str(config)])
    assert "SFTConfig" not in str(error.value)


@pytest.mark.parametrize(("flags", "says"), [
    (["--beta", "0"], "beta=0.0 must be > 0"),
    (["--loss_type", "sigmoidd"], "loss_type=sigmoidd is not one of trl.DPOConfig's losses: sigmoid, hinge, ipo"),
])
def test_a_bad_dpo_setting_is_one_line_and_exit_2_before_anything_loads(tmp_path, flags, says):
    done = _recipe("--config", DEMO, "--model_name_or_path", tmp_path / "never-built", *flags, cwd=tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == USAGE and len(lines) == 1, done.stderr
    assert says in lines[0], lines[0]
    assert not (tmp_path / "never-built").exists()  # refused before the tiny PLM was built


def test_the_plm_1b_config_plans_offline_from_the_released_settings(tmp_path):
    """No Hub: PLM-1B's processor is rebuilt from its released settings, the pairs are generated."""
    pytest.importorskip("llama_models", reason='needs the real-tokenizer extra: pip install "plm-tune[real-tokenizer]"')
    env = {key: value for key, value in os.environ.items() if key not in ("HF_ENDPOINT", "PLM_TUNE_DEBUG")}
    env |= {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home"), "PYTHONPATH": str(ROOT)}
    done = _recipe("--config", ROOT / "recipes/configs/preference_lora.yaml", "--synthetic_pairs", 16,
                   "--eval_split", 4, "--plan", "true", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("processor: facebook/Perception-LM-1B's released settings rebuilt offline")
    assert "preference pairs: 2 rows per sample (chosen, rejected)" in done.stdout
    assert re.search(r"^  PLM-1B lora ", done.stdout, re.MULTILINE), done.stdout
