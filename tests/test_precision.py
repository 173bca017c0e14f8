"""What a first bf16 GPU run gets, checked on CPU: the attention kernel of each sub-model, and the dtype of every
weight after ``build_trainer`` (trainable float32, frozen in the load dtype) for every method."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_image, qa
from transformers import AutoModelForImageTextToText
from trl import SFTConfig

from plm_tune import build_trainer, generate, load_model
from plm_tune.inference.evaluation import _eval_loss
from plm_tune.modeling.model import part_of
from plm_tune.modeling.precision import attention_by_part

# (method, freeze) as a user asks for them, and the parts that then train.
METHODS = {
    "lora": ("lora", ("vision",)),
    "dora": ("dora", ("vision",)),
    "qlora": ("qlora", ("vision",)),
    "projector": ("full", ("vision", "language")),
    "full": ("full", ("vision",)),
}


@pytest.fixture
def flash_attention_available(monkeypatch):
    """flash-attention 2 as transformers sees it on a GPU machine with flash-attn installed, and its real refusal
    of models without flash support (TimmWrapperModel): only the environment checks are faked."""
    from transformers import modeling_flash_attention_utils as fa_utils
    from transformers import modeling_utils

    def can_dispatch(self, flash_attn_version, is_init_check=False):
        if not self._supports_flash_attn:
            raise ValueError(f"{type(self).__name__} does not support Flash Attention {flash_attn_version} yet.")
        return True

    matrix = {**fa_utils.FLASH_ATTENTION_COMPATIBILITY_MATRIX}
    matrix[2] = {**matrix[2], "general_availability_check": lambda *args, **kwargs: True}
    monkeypatch.setattr(modeling_utils, "FLASH_ATTENTION_COMPATIBILITY_MATRIX", matrix)
    monkeypatch.setattr(modeling_utils.PreTrainedModel, "_flash_attn_can_dispatch", can_dispatch)
    monkeypatch.setattr(modeling_utils, "lazy_import_flash_attention", lambda *args, **kwargs: None)


def test_flash_attention_goes_to_the_decoder_and_the_tower_keeps_sdpa(tiny_plm_path, flash_attention_available):
    # Without the split, transformers hands the kernel to the timm tower as well, which stops the load.
    with pytest.raises(ValueError, match="TimmWrapperModel does not support Flash Attention"):
        AutoModelForImageTextToText.from_pretrained(tiny_plm_path, attn_implementation="flash_attention_2")

    model, _ = load_model(tiny_plm_path, method="lora", attn_implementation="flash_attention_2")
    base = model.get_base_model()
    assert base.config.text_config._attn_implementation == "flash_attention_2"
    assert base.model.language_model.config._attn_implementation == "flash_attention_2"
    assert base.config.vision_config._attn_implementation == "sdpa"
    assert base.model.vision_tower.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("kernel", ["sdpa", "eager", None])
def test_kernels_the_tower_runs_reach_both_sub_models(tiny_plm_path, kernel):
    assert attention_by_part(kernel) == kernel
    model, _ = load_model(tiny_plm_path, method="full", freeze=("vision",), attn_implementation=kernel)
    expected = kernel or "sdpa"
    assert model.config.text_config._attn_implementation == expected
    assert model.config.vision_config._attn_implementation == expected


def test_a_tower_kernel_it_cannot_run_is_refused_before_loading():
    with pytest.raises(ValueError, match=r"timm vision tower runs only sdpa or eager.*'text_config'"):
        load_model("/nonexistent", attn_implementation={"text_config": "sdpa", "vision_config": "flash_attention_2"})


def _samples(count: int = 4) -> list[dict]:
    return [{"messages": qa("Describe the image.", f"A noisy picture, number {i}.", ["image"]),
             "images": [make_image(56 + 8 * i, 48, seed=i)], "max_tiles": 2} for i in range(count)]


def _bf16_trainer(tiny_plm_path, tmp_path, method: str, *, lr: float = 2e-5):
    how, freeze = METHODS[method]
    model, processor = load_model(tiny_plm_path, method=how, freeze=freeze, dtype=torch.bfloat16, seed=0)
    args = SFTConfig(output_dir=str(tmp_path), bf16=True, use_cpu=True, max_steps=1, per_device_train_batch_size=2,
                     learning_rate=lr, lr_scheduler_type="constant", warmup_steps=0, max_length=None,
                     report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True, seed=0,
                     dataloader_pin_memory=False)
    return build_trainer(model, processor, _samples(), args=args)


def _dtype_table(model) -> dict[tuple[str, bool], set[str]]:
    """(part, trainable) -> the dtypes its parameters are held in."""
    table: dict[tuple[str, bool], set[str]] = {}
    for name, param in model.named_parameters():
        table.setdefault((part_of(name), param.requires_grad), set()).add(str(param.dtype).removeprefix("torch."))
    return table


@pytest.mark.parametrize("method", list(METHODS))
def test_after_build_trainer_in_bf16_trainable_weights_are_float32_and_frozen_ones_stay_bf16(
    tiny_plm_path, tmp_path, method
):
    trainer = _bf16_trainer(tiny_plm_path, tmp_path, method)
    table = _dtype_table(trainer.model)
    # 4-bit weights are uint8 storage; every other frozen weight stays in the bf16 it was loaded in, QLoRA's
    # vision tower, embeddings, lm_head and norms included (peft's kbit preparation would upcast them).
    frozen_dtypes = {"bfloat16", "uint8"} if method == "qlora" else {"bfloat16"}
    expected_trainable = {
        "lora": {"language", "projector"}, "dora": {"language", "projector"}, "qlora": {"language", "projector"},
        "projector": {"projector"}, "full": {"language", "projector"},
    }[method]
    assert {part for part, trainable in table if trainable} == expected_trainable
    for (part, trainable), dtypes in table.items():
        assert dtypes == ({"float32"} if trainable else dtypes & frozen_dtypes), (part, trainable, dtypes)
        assert trainable or dtypes <= frozen_dtypes, (part, dtypes)
    if method == "qlora":
        base = trainer.model.get_base_model()
        assert base.model.vision_tower.timm_model.patch_embed.proj.weight.dtype == torch.bfloat16
        assert base.model.language_model.embed_tokens.weight.dtype == torch.bfloat16
        assert base.model.language_model.norm.weight.dtype == torch.bfloat16


@pytest.mark.parametrize("method", ["lora", "qlora", "projector"])
def test_a_2e_5_step_in_bf16_moves_every_projector_weight(tiny_plm_path, tmp_path, method):
    trainer = _bf16_trainer(tiny_plm_path, tmp_path, method, lr=2e-5)
    projector = {n: p.detach().clone() for n, p in trainer.model.named_parameters()
                 if p.requires_grad and part_of(n) == "projector"}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    moved = sum(int((after[n].detach() != before).sum()) for n, before in projector.items())
    total = sum(before.numel() for before in projector.values())
    # Adam's first step is lr * sign(grad): 2e-5 on every weight with a gradient. In bf16 (8 bits of mantissa) it
    # is below half a rounding step for most weights of the projector's size, so most would not move at all.
    assert moved / total > 0.99, f"{method}: {moved} of {total} projector weights moved"
    steps = torch.cat([(after[n].detach() - before).abs().flatten() for n, before in projector.items()])
    assert steps.max().item() == pytest.approx(2e-5, rel=0.05)

    # Outside the Trainer's autocast (generation, the eval loss) bf16 frozen and float32 trained weights still meet:
    # generate and evaluate autocast as training did.
    sample = _samples(1)[0]
    answer = generate(trainer.model, trainer.plm_collator.processor, [sample], max_new_tokens=3, progress=False)
    assert len(answer) == 1 and isinstance(answer[0], str)
    loss, labelled = _eval_loss(trainer.model, trainer.plm_collator, [sample], batch_size=1, progress=False)
    assert labelled > 0 and math.isfinite(loss)


def test_a_bf16_load_without_autocast_is_refused_with_the_fix(tiny_plm_path, tmp_path, processor):
    model, processor = load_model(tiny_plm_path, method="lora", dtype=torch.bfloat16)
    args = SFTConfig(output_dir=str(tmp_path), bf16=False, use_cpu=True, report_to="none", max_length=None)
    with pytest.raises(ValueError, match=r"bfloat16 weights but .*bf16=False.*Set bf16=True.*dtype=torch.float32"):
        build_trainer(model, processor, _samples(), args=args)
