"""plm_tune.arguments: one default per setting, objects or keywords (never both), the derived training info."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode
from transformers import HfArgumentParser

from plm_tune import PLMCollator, load_model, plan_report
from plm_tune.after_training.outputs import finish_run
from plm_tune.after_training.report_summary import summary_html
from plm_tune.apps.cli import build_parser
from plm_tune.arguments import (
    MAX_NEW_TOKENS,
    TRAIN_ON,
    EvalArguments,
    MediaArguments,
    ModelArguments,
    dora_dropout_note,
    settings_from,
    training_info,
)
from plm_tune.inference.evaluation import evaluate
from plm_tune.inference.generation import generate
from plm_tune.methods import METHOD_WORDS, METHODS
from plm_tune.training.callbacks import GenerationEvalCallback

LIBRARY = Path(__file__).resolve().parent.parent / "plm_tune"


def test_keywords_build_the_settings_and_an_object_is_taken_as_given():
    media = settings_from(None, MediaArguments, max_tiles=4, num_frames=8)
    assert media == dataclasses.replace(MediaArguments(), max_tiles=4, num_frames=8)
    given = MediaArguments(max_tiles=9)
    assert settings_from(given, MediaArguments, max_tiles=None, num_frames=MediaArguments.num_frames) is given


@pytest.mark.parametrize("call", [
    lambda: load_model(ModelArguments(model_name_or_path="/nonexistent"), method="full"),
    lambda: plan_report([], ModelArguments(), batch_size=1, lora_r=4),
], ids=["load_model", "plan_report"])
def test_an_object_and_a_changed_keyword_together_are_refused_before_any_work(call):
    with pytest.raises(ValueError, match=r"Got a \w+Arguments and the keyword\(s\) (method|lora_r): set them in the"):
        call()


def test_training_info_records_lora_settings_for_adapters_only():
    lora = training_info(ModelArguments(lora_r=8, lora_alpha=16, freeze=[]), MediaArguments(max_tiles=4))
    assert lora == {"method": "lora", "freeze": [], "max_tiles": 4, "num_frames": 32, "lora_r": 8, "lora_alpha": 16}
    full = training_info(ModelArguments(method="full"), MediaArguments(num_frames=4), datasets=["me/scans"])
    assert full == {"method": "full", "freeze": ["vision"], "max_tiles": None, "num_frames": 4,
                    "datasets": ["me/scans"]}


class _CountMatmulsWith(TorchFunctionMode):
    """Counts ``F.linear`` calls whose weight is ``weight`` (the same storage), whoever makes them."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight, self.calls = weight, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.linear:
            weight = args[1] if len(args) > 1 else kwargs["weight"]
            self.calls += weight.data_ptr() == self.weight.data_ptr()
        return func(*args, **kwargs)


@pytest.mark.parametrize(("dropout", "training", "base_matmuls"), [(0.05, True, 2), (0.0, True, 1), (0.05, False, 1)])
def test_dora_with_dropout_runs_the_base_matmul_twice_in_training(dropout, training, base_matmuls):
    """What ``dora_dropout_note`` warns about, in peft itself: a real DoRA layer, the base matmuls counted."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(torch.nn.Sequential(torch.nn.Linear(32, 24)),
                           LoraConfig(r=4, lora_dropout=dropout, use_dora=True, target_modules=["0"]))
    model.train(training)
    base_weight = model.base_model.model[0].get_base_layer().weight
    with _CountMatmulsWith(base_weight) as counted:
        model(torch.randn(3, 32)).sum().backward()
    assert counted.calls == base_matmuls


def test_dora_dropout_note_names_the_cost_and_the_fix():
    note = dora_dropout_note("dora", 0.05)
    assert "lora_dropout=0.05" in note and "second time" in note and "1.5x" in note
    assert "Set lora_dropout=0.0" in note and "\n" not in note
    assert dora_dropout_note("dora", 0.0) is None
    assert dora_dropout_note("lora", 0.05) is None and dora_dropout_note("qlora", 0.1) is None


def _choices(parser: argparse.ArgumentParser, dest: str, command: str | None = None) -> tuple[str, ...]:
    """The choices of ``parser``'s option ``dest`` (in its sub-command ``command`` when given)."""
    if command is not None:
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = commands.choices[command]
    return tuple(next(action for action in parser._actions if action.dest == dest).choices)


def test_every_list_of_methods_is_the_one_in_plm_tune_methods():
    assert _choices(HfArgumentParser(ModelArguments), "method") == METHODS  # the recipes' --method
    assert _choices(build_parser(), "method", "plan") == METHODS  # plm-tune plan --method
    for method in METHODS:  # the report says what each trained
        html = summary_html({"training": {"method": method}}, {}, None)
        assert f"Trained {METHOD_WORDS[method].trained}." in html
    # No other module writes two or more method names out as a tuple, list, set or dict keys of its own (a
    # typing.Literal[...] is a type, not a list the code reads).
    spelled = []
    for path in sorted(LIBRARY.glob("*.py")):
        tree = ast.parse(path.read_text())
        types = {id(node.slice) for node in ast.walk(tree) if isinstance(node, ast.Subscript)}
        for node in ast.walk(tree):
            values = node.keys if isinstance(node, ast.Dict) else getattr(node, "elts", [])
            names = {value.value for value in values if isinstance(value, ast.Constant)}
            if len(names & set(METHODS)) >= 2 and id(node) not in types:
                spelled.append(f"{path.name}:{node.lineno}")
    assert [where.split(":")[0] for where in spelled] == ["methods.py"], spelled


def test_train_on_plm_is_a_run_setting_as_it_is_a_collator_setting(processor):
    media, = HfArgumentParser(MediaArguments).parse_args_into_dataclasses(["--train_on", "plm"])
    assert media.train_on == "plm" and _choices(HfArgumentParser(MediaArguments), "train_on") == TRAIN_ON
    assert _choices(build_parser(), "train_on", "plan") == TRAIN_ON  # plm-tune plan / data --train-on
    assert PLMCollator(processor, train_on=media.train_on).train_on == "plm"
    with pytest.raises(SystemExit):
        HfArgumentParser(MediaArguments).parse_args_into_dataclasses(["--train_on", "answers"])


def test_every_generation_reads_the_one_max_new_tokens_default():
    keywords = {generate: "max_new_tokens", evaluate: "max_new_tokens", finish_run: "max_new_tokens",
                GenerationEvalCallback: "max_new_tokens"}
    defaults = {f.__name__: inspect.signature(f).parameters[name].default for f, name in keywords.items()}
    assert defaults == dict.fromkeys(defaults, MAX_NEW_TOKENS)
    assert EvalArguments().eval_max_new_tokens == MAX_NEW_TOKENS  # build_trainer's generation checks read it too
    generate_command = build_parser().parse_args(["generate", "--prompt", "Hi?"])
    assert generate_command.max_new_tokens == MAX_NEW_TOKENS
