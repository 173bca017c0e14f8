"""build_trainer on the tiny PLM: real SFTTrainer steps on CPU, per-part learning rates, the metrics it logs
(up to TensorBoard), a saved folder that loads on its own, and a resume that replays the uninterrupted run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from peft import PeftModel, get_peft_model_state_dict
from transformers import AutoModelForImageTextToText, AutoProcessor, TrainerCallback
from trl import SFTConfig

from data_adapters.synthetic import synthetic_shapes
from plm_tune import ModelArguments, PLMCollator, build_trainer, load_model
from plm_tune.modeling.model import part_of

LRS = {"language": 1e-3, "vision": 2e-4, "projector": 5e-3}
PART_LRS = ModelArguments(vision_lr=LRS["vision"], projector_lr=LRS["projector"])  # the language's: learning_rate
PLM_METRICS = ("tokens_per_second", "labelled_tokens_per_step", "media_token_share")
COLLATOR_COUNTS = tuple(
    f"collator/{key}"
    for key in ("truncated_samples", "dropped_turns", "dropped_images", "dropped_videos", "rejected_too_long")
)


def _args(tmp_path, **overrides) -> SFTConfig:
    """A few CPU steps: float32, no reporting, logs every step, nothing saved unless asked."""
    config = {
        "output_dir": str(tmp_path / "out"),
        "per_device_train_batch_size": 2,
        "max_steps": 3,
        "learning_rate": LRS["language"],
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "bf16": False,
        "max_length": None,
        "dataloader_num_workers": 0,
        "seed": 0,
        "disable_tqdm": True,
    }
    return SFTConfig(**{**config, **overrides})


@pytest.fixture(scope="module")
def shapes():
    # max_tiles=1: a thumbnail and one 56 px tile per image, 8 image tokens in a ~75-token sample.
    return synthetic_shapes(24, seed=0, max_tiles=1)


class _Recorder(TrainerCallback):
    """Every log dict as the loggers get it (after PLMMetricsCallback, which runs first), and the optimizer's
    parameter groups as the first step begins (``trainer.optimizer`` exists once ``train()`` has started)."""

    def __init__(self) -> None:
        self.trainer = None
        self.logs: list[dict] = []
        self.groups: list[dict] | None = None

    def on_step_begin(self, args, state, control, **kwargs):
        if self.groups is None:
            self.groups = [dict(group) for group in self.trainer.optimizer.param_groups]

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs))


def _train(model, processor, dataset, args, **kwargs):
    recorder = _Recorder()
    trainer = build_trainer(model, processor, dataset, args=args, callbacks=[recorder], **kwargs)
    recorder.trainer = trainer
    trainer.train()
    return trainer, recorder


def test_trains_only_trainable_weights_with_one_learning_rate_per_part(tiny_plm_path, tmp_path, shapes):
    torch.manual_seed(0)
    # freeze=(): LoRA on the language model, vision tower and projector in full: three parameter groups.
    model, processor = load_model(tiny_plm_path, method="lora", freeze=())
    before = {name: param.detach().clone() for name, param in model.named_parameters()}
    trainable = {name for name, param in model.named_parameters() if param.requires_grad}

    trainer, recorder = _train(model, processor, shapes, _args(tmp_path), model_args=PART_LRS)

    # The optimizer the Trainer stepped holds our groups: each part's parameters at its own rate.
    assert {group["name"]: group["lr"] for group in recorder.groups} == LRS
    names = {id(param): name for name, param in model.named_parameters()}
    for group in trainer.optimizer.param_groups:
        assert {part_of(names[id(p)]) for p in group["params"]} == {group["name"]}
    assert sum(len(group["params"]) for group in trainer.optimizer.param_groups) == len(trainable)

    losses = [log["loss"] for log in recorder.logs if "loss" in log]
    assert len(losses) == 3 and all(math.isfinite(loss) for loss in losses)
    for name, param in model.named_parameters():
        if name in trainable:
            assert not torch.equal(param, before[name]), f"trainable {name} did not change"
        else:
            assert torch.equal(param, before[name]), f"frozen {name} changed"


def _two_exchanges(sample: dict) -> dict:
    """The sample with a second question and a long answer, which a tight max_length drops."""
    extra = [
        {"role": "user", "content": [{"type": "text", "text": "Describe the image."}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A shape on a plain background. " * 8}]},
    ]
    return {**sample, "messages": [*sample["messages"], *extra]}


def test_logs_per_part_rates_throughput_and_collator_counts_up_to_tensorboard(tiny_plm_path, tmp_path, shapes):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    torch.manual_seed(0)
    model, processor = load_model(tiny_plm_path, method="lora", freeze=())
    samples = [_two_exchanges(shapes[i]) for i in range(8)]
    # 120 tokens hold the first exchange (~75) but not the second: every sample loses its last two turns.
    args = _args(tmp_path, max_steps=2, max_length=120, report_to="tensorboard")
    trainer, recorder = _train(model, processor, samples, args, model_args=PART_LRS)
    stats = trainer.plm_collator.stats

    logs = [log for log in recorder.logs if "loss" in log]
    assert len(logs) == 2 and stats["truncated_samples"] >= 4
    for log in logs:
        # Each part's rate is the one its step used, as the Trainer's own learning_rate (linear decay).
        for part, lr in LRS.items():
            assert log[f"learning_rate/{part}"] == pytest.approx(lr * log["learning_rate"] / LRS["language"])
        assert log["tokens_per_second"] > 0
        assert 0 < log["labelled_tokens_per_step"] <= 2 * 120  # at most every token of a 2-sample batch
        assert 0 < log["media_token_share"] < 0.5
    assert logs[0]["learning_rate/vision"] == LRS["vision"]  # the first step runs at the full rate
    assert logs[-1]["collator/truncated_samples"] >= 4
    assert logs[-1]["collator/dropped_turns"] == 2 * logs[-1]["collator/truncated_samples"]
    assert logs[-1]["collator/dropped_images"] == logs[-1]["collator/rejected_too_long"] == 0

    events = sorted((tmp_path / "out").rglob("events.out.tfevents.*"))
    assert events, f"no TensorBoard event file under {tmp_path / 'out'}"
    board = EventAccumulator(str(events[0].parent))
    board.Reload()
    scalars = set(board.Tags()["scalars"])
    expected = {f"train/learning_rate/{part}" for part in LRS} | {f"train/{key}" for key in PLM_METRICS}
    assert expected | {f"train/{key}" for key in COLLATOR_COUNTS} <= scalars
    assert [e.value for e in board.Scalars("train/learning_rate/vision")] == pytest.approx(
        [log["learning_rate/vision"] for log in logs], rel=1e-6
    )
    assert board.Scalars("train/collator/truncated_samples")[-1].value == logs[-1]["collator/truncated_samples"]


def test_saved_folder_loads_on_its_own_and_gives_the_same_logits(tiny_plm_path, tmp_path, shapes):
    torch.manual_seed(0)
    model, processor = load_model(tiny_plm_path, method="lora")  # projector in full, vision frozen
    trainer, _ = _train(model, processor, shapes, _args(tmp_path, max_steps=2, learning_rate=1e-2))
    saved = tmp_path / "saved"
    trainer.save_model(str(saved))

    files = {path.name for path in saved.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= files
    assert {"processor_config.json", "tokenizer.json", "tokenizer_config.json"} <= files
    assert not {"model.safetensors", "pytorch_model.bin"} & files  # the adapter only, not a full copy

    base = AutoModelForImageTextToText.from_pretrained(tiny_plm_path, dtype=torch.float32)
    reloaded = PeftModel.from_pretrained(base, saved).eval()
    reloaded_processor = AutoProcessor.from_pretrained(saved)
    held_out = list(synthetic_shapes(4, seed=1, max_tiles=1))
    batch = PLMCollator(reloaded_processor)(held_out)
    expected_batch = PLMCollator(processor)(held_out)
    assert batch.keys() == expected_batch.keys()
    for key, value in expected_batch.items():
        assert torch.equal(batch[key], value), key
    model.eval()
    with torch.no_grad():
        expected = model(**expected_batch).logits
        got = reloaded(**batch).logits
        with reloaded.disable_adapter():
            untrained = reloaded(**batch).logits
    assert not torch.allclose(got, untrained, rtol=0, atol=1e-3)  # the adapter is applied and matters
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


class _IdCollator(PLMCollator):
    """Records the sample ids of every batch it builds, in order."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.batches: list[list[str]] = []

    def __call__(self, samples):
        self.batches.append([sample["id"] for sample in samples])
        return super().__call__(samples)


class _StopAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def _resume_run(tiny_plm_path, dataset, args, resume_from=None, callbacks=None):
    torch.manual_seed(0)  # same LoRA initialisation in every run
    model, processor = load_model(tiny_plm_path, method="lora")  # lora_dropout 0.05: RNG state matters too
    collator = _IdCollator(processor)
    trainer = build_trainer(model, processor, dataset, args=args, collator=collator, callbacks=callbacks)
    trainer.train(resume_from_checkpoint=resume_from)
    return trainer, model, collator.batches


def test_resume_from_checkpoint_replays_the_uninterrupted_run(tiny_plm_path, tmp_path, shapes):
    def args(name):  # identical configs: same max_steps, so the same linear schedule
        return _args(tmp_path / name, max_steps=6, save_strategy="steps", save_steps=3, logging_steps=3)

    trainer_a, model_a, batches_a = _resume_run(tiny_plm_path, shapes, args("a"))
    trainer_b, _, batches_b = _resume_run(tiny_plm_path, shapes, args("b"), callbacks=[_StopAt(3)])
    checkpoint = tmp_path / "b" / "out" / "checkpoint-3"
    assert trainer_b.state.global_step == 3 and not (tmp_path / "b" / "out" / "checkpoint-6").exists()
    assert {"adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth"} <= {
        path.name for path in checkpoint.iterdir()
    }
    trainer_c, model_c, batches_c = _resume_run(tiny_plm_path, shapes, args("b"), resume_from=str(checkpoint))

    assert trainer_a.state.global_step == trainer_c.state.global_step == 6
    # The DataLoader may build one batch ahead of the optimizer, so only the first batches built count.
    assert batches_b[:3] == batches_a[:3]
    assert batches_c[:3] == batches_a[3:6]  # the resumed run skips what was trained, without building it
    expected = get_peft_model_state_dict(model_a)
    got = get_peft_model_state_dict(model_c)
    assert got.keys() == expected.keys() and any("multi_modal_projector" in key for key in got)
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=1e-6, msg=key)
    assert [log["loss"] for log in trainer_c.state.log_history if "loss" in log][-1] == pytest.approx(
        [log["loss"] for log in trainer_a.state.log_history if "loss" in log][-1], abs=1e-6
    )


def test_plain_lists_of_mixed_samples_train_and_save(tiny_plm_path, tmp_path):
    """A list whose first sample has no video and whose second holds frames in memory: nothing is lost on the way
    into the trainer (every key of every sample reaches the collator) or into the saved eval split."""
    import datasets
    from conftest import make_frames, make_image

    from plm_tune import build_trainer, load_model
    from plm_tune.after_training.outputs import finish_run
    from plm_tune.data.media import load_video

    def qa(question, answer, media):
        return [{"role": "user", "content": [{"type": media}, {"type": "text", "text": question}]},
                {"role": "assistant", "content": answer}]

    frames = make_frames(3, seed=5)
    samples = [
        {"messages": qa("What is it?", "Noise.", "image"), "images": [make_image(70, 50, seed=1)], "max_tiles": 2},
        {"messages": qa("What happens?", "It flickers.", "video"), "videos": [frames]},
    ]
    model, processor = load_model(tiny_plm_path, method="lora")
    args = SFTConfig(output_dir=str(tmp_path / "run"), max_steps=1, per_device_train_batch_size=2, report_to="none",
                     bf16=False, max_length=None, save_strategy="no", disable_tqdm=True, dataloader_pin_memory=False)
    trainer = build_trainer(model, processor, samples, args=args)
    trainer.train()
    collator = trainer.plm_collator
    assert collator.stats["samples"] == 2 and collator.stats["media_tokens"] > 0
    finish_run(trainer, eval_set=samples, generate_eval=False)

    saved = datasets.load_from_disk(str(tmp_path / "run/eval_data"))
    assert saved[0]["videos"] is None and len(saved[0]["images"]) == 1
    np.testing.assert_array_equal(load_video(saved[1]["videos"][0]), frames)
    assert saved[1]["messages"][1]["content"][0]["text"] == "It flickers."


def test_group_by_length_and_padding_free_from_the_training_arguments(tiny_plm_path, tmp_path):
    """`train_sampling_strategy="group_by_length"` and `padding_free=True`, as a recipe passes them in SFTConfig:
    the Trainer's batches are LengthGroupedBatchSampler's, and packing leaves no padding."""
    from plm_tune.encoding.costs import sample_cost
    from plm_tune.encoding.sampler import GroupedOrder, LengthGroupedBatchSampler

    samples = synthetic_shapes(16, seed=0, image_size=56)
    samples = [{**samples[i], "max_tiles": 1 + i % 4, "id": i} for i in range(len(samples))]  # 2 to 5 tiles: ragged
    model, processor = load_model(tiny_plm_path, method="lora")
    runs = {}
    for strategy, padding_free in (("random", False), ("group_by_length", False), ("group_by_length", True)):
        args = SFTConfig(output_dir=str(tmp_path / strategy), max_steps=4, per_device_train_batch_size=4,
                         report_to="none", bf16=False, max_length=None, save_strategy="no", disable_tqdm=True,
                         dataloader_pin_memory=False, seed=3, train_sampling_strategy=strategy,
                         padding_free=padding_free)
        trainer = build_trainer(model, processor, samples, args=args)
        loader = trainer.get_train_dataloader()
        if strategy == "group_by_length":  # the DataLoader cuts LengthGroupedBatchSampler's order into its batches
            assert isinstance(loader.batch_sampler.sampler, GroupedOrder)
            costs = [sample_cost(s, PLMCollator(processor)) for s in samples]
            assert list(loader.batch_sampler) == list(LengthGroupedBatchSampler(costs, 4, seed=3))
        trainer.train()
        stats = trainer.plm_collator.stats
        runs[(strategy, padding_free)] = 1 - stats["tokens"] / stats["token_slots"]
    assert runs[("group_by_length", True)] == 0.0  # packed: no padding at all
    assert runs[("group_by_length", False)] < 0.5 * runs[("random", False)], runs



def test_build_trainer_takes_settings_objects_and_returns_a_plm_trainer(tiny_plm_path, tmp_path, shapes):
    """One way in: settings come as MediaArguments / ModelArguments / EvalArguments, never as loose keywords; the
    result is the importable PLMTrainer, whose settings are constructor arguments."""
    import inspect

    import plm_tune
    from plm_tune import MediaArguments, PLMTrainer
    from plm_tune.training.trainer import run_config

    assert list(inspect.signature(build_trainer).parameters) == [
        "model", "processor", "train_dataset", "eval_dataset", "args", "media", "model_args", "eval_args",
        "collator", "callbacks"]
    model, processor = load_model(tiny_plm_path, method="lora")
    args = _args(tmp_path, train_sampling_strategy="group_by_length")
    trainer = build_trainer(model, processor, list(shapes), args=args, media=MediaArguments(train_on="all"),
                            model_args=ModelArguments(labelled_logits_loss=False))
    assert isinstance(trainer, plm_tune.PLMTrainer)
    assert trainer.plm_group_by_length and not trainer.plm_labelled_logits_loss
    assert trainer.plm_collator is trainer.data_collator and trainer.plm_collator.train_on == "all"
    # TRL sees grouping off (PLMTrainer groups), the caller's SFTConfig is left as it was.
    assert trainer.args.train_sampling_strategy == "random" and args.train_sampling_strategy == "group_by_length"
    with pytest.raises(ValueError, match="both media= and collator="):
        build_trainer(model, processor, list(shapes), args=args, media=MediaArguments(),
                      collator=PLMCollator(processor))

    class Subclassed(PLMTrainer):
        pass

    built = Subclassed(model=model, args=run_config(_args(tmp_path), list(shapes)),
                       data_collator=PLMCollator(processor), train_dataset=shapes, processing_class=processor)
    assert isinstance(built, PLMTrainer) and built.plm_labelled_logits_loss  # default: True off CUDA / XPU
    assert not built.plm_group_by_length


def test_import_plm_tune_and_build_trainer_do_not_import_trl():
    """TRL is imported by plm_tune.training.plm_trainer alone, when a trainer is built or PLMTrainer is named."""
    import subprocess
    import sys

    code = ("import sys\nimport plm_tune\nfrom plm_tune import build_trainer\nassert 'trl' not in sys.modules\n"
            "from trl import SFTTrainer\nassert issubclass(plm_tune.PLMTrainer, SFTTrainer)\nprint('ok')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
