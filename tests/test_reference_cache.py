"""precompute_ref_log_probs for image and video pairs (plm_tune.training.reference_cache) on the tiny PLM: the same
training as TRL's reference pass, no reference forward while training, a cache on disk (JSON) reused by a second
build, recomputed only for what changed, and full finetuning's frozen copy freed."""

from __future__ import annotations

import gc
import json
import os

import numpy as np
import pytest
import torch
from conftest import make_image
from peft.tuners.lora import LoraLayer
from test_frame_selection import encode_indexed_video
from trl import DPOConfig

from data_adapters.synthetic import synthetic_shape_pairs
from plm_tune import MediaArguments, load_model
from plm_tune.training.preference_trainer import build_dpo_trainer

MEDIA = MediaArguments(max_tiles=1, num_frames=2)


def _args(tmp_path, **overrides) -> DPOConfig:
    """A few CPU steps: float32, no checkpointing, no reporting, nothing saved (as tests/test_dpo.py)."""
    config = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, max_steps=3, learning_rate=1e-2,
                  logging_steps=1, save_strategy="no", report_to="none", bf16=False, gradient_checkpointing=False,
                  max_length=None, dataloader_num_workers=0, dataloader_pin_memory=False, seed=0, disable_tqdm=True,
                  beta=1.0)
    return DPOConfig(**{**config, **overrides})


@pytest.fixture(scope="module")
def video_path(tmp_path_factory):
    """A 12-frame lossless clip, every frame another colour (tests/test_frame_selection.py's)."""
    return encode_indexed_video(tmp_path_factory.mktemp("video") / "clip.mp4", 12, 4)


@pytest.fixture(scope="module")
def pairs(video_path):
    """Five image pairs (in-memory PIL images) and a video pair (a file)."""
    images = synthetic_shape_pairs(5, seed=0, max_tiles=1)
    video = {"messages": [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What moves?"}]}],
             "chosen": [{"role": "assistant", "content": "Noise."}],
             "rejected": [{"role": "assistant", "content": "A red square."}], "images": [], "videos": [video_path]}
    return [dict(images[i]) for i in range(5)] + [video]


def _lora(tiny_plm_path):
    torch.manual_seed(0)
    model, processor = load_model(tiny_plm_path, method="lora", freeze=(), lora_dropout=0.0)
    return model, processor


class _Forwards:
    """Counts the tiny PLM's forwards (pairs in each) with its adapter on (policy) and off (reference)."""

    def __init__(self, model):
        self.lora = next(module for module in model.modules() if isinstance(module, LoraLayer))
        self.calls = {"policy": 0, "reference": 0}
        self.pairs = 0
        self.handle = model.get_base_model().register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs):
        self.calls["reference" if self.lora.disable_adapters else "policy"] += 1
        self.pairs += kwargs["input_ids"].shape[0] // 2


def _step_logs(trainer) -> list[dict[str, float]]:
    logs = [log for log in trainer.state.log_history if "loss" in log]
    return [{key: value for key, value in log.items() if key not in ("epoch",)} for log in logs]


def test_precomputed_reference_trains_as_the_reference_pass_without_running_it(tiny_plm_path, tmp_path, pairs):
    runs = {}
    for precompute in (False, True):
        model, processor = _lora(tiny_plm_path)
        args = _args(tmp_path / str(precompute), precompute_ref_log_probs=precompute)
        trainer = build_dpo_trainer(model, processor, pairs, eval_dataset=pairs[3:], args=args, media=MEDIA)
        forwards = _Forwards(model)
        trainer.train()
        calls = dict(forwards.calls)
        runs[precompute] = (_step_logs(trainer), calls, trainer.evaluate())
    (plain, plain_calls, plain_eval), (cached, cached_calls, cached_eval) = runs[False], runs[True]
    # Every logged number of each step (loss, rewards, logps of chosen / rejected, margins, grad norm) is the same.
    assert len(plain) == 3 and [log.keys() for log in plain] == [log.keys() for log in cached]
    for expected, got in zip(plain, cached, strict=True):
        for key in expected:
            if key == "rewards/accuracies" and abs(expected["rewards/margins"]) < 1e-4:
                # A tie (step 1: the policy is the reference): chosen > rejected is decided by float noise of the
                # order of 1e-7 (a precomputed batch's tiles go through the tower in other company), not by training.
                continue
            assert got[key] == pytest.approx(expected[key], abs=1e-4), (key, str(expected), str(got))
    assert plain[-1]["rewards/margins"] != 0  # the reference mattered: the policy moved away from it
    assert plain_calls == {"policy": 3, "reference": 3}  # the hook sees TRL's reference pass when it runs
    assert cached_calls == {"policy": 3, "reference": 0}
    # The eval set's reference values were precomputed too: the trained policy is scored against the same base.
    for key in ("eval_loss", "eval_rewards/margins", "eval_rewards/chosen"):
        assert cached_eval[key] == pytest.approx(plain_eval[key], abs=1e-4), key
    assert plain_eval["eval_rewards/margins"] != 0


def test_a_second_build_reuses_the_cache_and_recomputes_only_what_changed(tiny_plm_path, tmp_path, pairs,
                                                                          video_path):
    cache = tmp_path / "cache"

    def build(samples, loaded=None):
        model, processor = loaded or _lora(tiny_plm_path)
        forwards = _Forwards(model)
        trainer = build_dpo_trainer(model, processor, samples, args=_args(tmp_path, precompute_ref_log_probs=True),
                                    media=MEDIA, reference_cache=cache)
        forwards.handle.remove()
        values = [(row["ref_chosen_logps"], row["ref_rejected_logps"]) for row in trainer.train_dataset]
        return trainer.reference_cache, forwards, values

    first, forwards, values = build(pairs)
    assert (first["cached"], first["computed"], forwards.calls["reference"], forwards.pairs) == (0, 6, 3, 6)
    assert all(np.isfinite(values).ravel()) and len(set(values)) == 6
    # (d) the file is JSON (no pickle): a value per sample, the numbers the trainer's rows carry
    stored = json.loads(open(first["path"]).read())
    assert sorted(map(tuple, stored["logps"].values())) == sorted(values)
    assert [p.name for p in cache.iterdir()] == [os.path.basename(first["path"])]

    again, forwards, same = build(pairs)
    assert (again["cached"], again["computed"], forwards.calls) == (6, 0, {"policy": 0, "reference": 0})
    assert same == values

    changed = [dict(pair) for pair in pairs]
    changed[0]["chosen"] = [{"role": "assistant", "content": "Purple."}]
    changed[1]["images"] = [make_image(112, 112, seed=7)]
    os.utime(video_path, ns=(os.stat(video_path).st_atime_ns, os.stat(video_path).st_mtime_ns + 10**9))
    third, forwards, new = build(changed)
    assert (third["cached"], third["computed"], forwards.pairs) == (3, 3, 3)
    assert new[2:5] == values[2:5] and new[0][1] == pytest.approx(values[0][1], abs=1e-4)  # the same rejected answer
    assert new[0][0] != values[0][0] and new[1] != values[1]

    model, processor = _lora(tiny_plm_path)
    with torch.no_grad():
        model.get_base_model().lm_head.weight.mul_(1.01)  # another reference model
    other, forwards, moved = build(pairs, (model, processor))
    assert (other["cached"], other["computed"], forwards.pairs) == (0, 6, 6) and other["path"] != first["path"]
    assert all(a != b for a, b in zip(moved, values, strict=True))


def test_full_finetuning_frees_the_frozen_copy_after_precompute(tiny_plm_path, tmp_path, pairs):
    from transformers import PerceptionLMForConditionalGeneration

    def models_alive() -> int:
        gc.collect()
        return sum(isinstance(o, PerceptionLMForConditionalGeneration) for o in gc.get_objects())

    torch.manual_seed(0)
    model, processor = load_model(tiny_plm_path, method="full", freeze=("vision",))
    alive = models_alive()
    trainer = build_dpo_trainer(model, processor, pairs[:4], args=_args(tmp_path, max_steps=1, learning_rate=1e-3,
                                                                        precompute_ref_log_probs=True), media=MEDIA)
    assert trainer.ref_model is None and trainer.reference_cache["computed"] == 4
    assert models_alive() == alive  # the copy was made (TRL needs one at construction) and is gone
    trainer.train()
    assert np.isfinite(trainer.state.log_history[0]["loss"])


def test_a_streamed_train_set_is_refused_in_one_line(tiny_plm_path, tmp_path):
    model, processor = load_model(tiny_plm_path, method="lora")
    stream = synthetic_shape_pairs(4, max_tiles=1, streaming=True)
    with pytest.raises(ValueError, match="without streaming"):
        build_dpo_trainer(model, processor, stream, args=_args(tmp_path, precompute_ref_log_probs=True, max_steps=1))
