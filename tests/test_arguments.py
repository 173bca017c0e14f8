"""plm_tune.arguments: one default per setting, objects or keywords (never both), the derived training info."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.overrides import TorchFunctionMode

from plm_tune import load_model, plan_report
from plm_tune.arguments import (
    MediaArguments,
    ModelArguments,
    dora_dropout_note,
    settings_from,
    training_info,
)


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
