"""plm_tune.arguments: one default per setting, objects or keywords (never both), the derived training info."""

from __future__ import annotations

import dataclasses

import pytest

from plm_tune import build_trainer, load_model, plan_report
from plm_tune.arguments import EvalArguments, MediaArguments, ModelArguments, settings_from, training_info


def test_keywords_build_the_settings_and_an_object_is_taken_as_given():
    media = settings_from(None, MediaArguments, max_tiles=4, num_frames=8)
    assert media == dataclasses.replace(MediaArguments(), max_tiles=4, num_frames=8)
    given = MediaArguments(max_tiles=9)
    assert settings_from(given, MediaArguments, max_tiles=None, num_frames=MediaArguments.num_frames) is given


@pytest.mark.parametrize("call", [
    lambda: load_model(ModelArguments(model_name_or_path="/nonexistent"), method="full"),
    lambda: build_trainer(None, None, [], media=MediaArguments(), max_tiles=4),
    lambda: build_trainer(None, None, [], eval_args=EvalArguments(), generation_eval_steps=5),
    lambda: plan_report([], ModelArguments(), batch_size=1, lora_r=4),
], ids=["load_model", "build_trainer-media", "build_trainer-eval", "plan_report"])
def test_an_object_and_a_changed_keyword_together_are_refused_before_any_work(call):
    with pytest.raises(ValueError, match=r"Got a \w+Arguments and the keyword\(s\) (method|max_tiles|"
                                         r"generation_eval_steps|lora_r): set them in the"):
        call()


def test_training_info_records_lora_settings_for_adapters_only():
    lora = training_info(ModelArguments(lora_r=8, lora_alpha=16, freeze=[]), MediaArguments(max_tiles=4))
    assert lora == {"method": "lora", "freeze": [], "max_tiles": 4, "num_frames": 32, "lora_r": 8, "lora_alpha": 16}
    full = training_info(ModelArguments(method="full"), MediaArguments(num_frames=4), datasets=["me/scans"])
    assert full == {"method": "full", "freeze": ["vision"], "max_tiles": None, "num_frames": 4,
                    "datasets": ["me/scans"]}
