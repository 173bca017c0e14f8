"""The numeric side of a run: the dtype weights load in, the dtype trainable weights train in, and the attention
kernel each sub-model of PLM runs.

The rules, one place each:

* ``default_dtype``: load in bfloat16 on a CUDA GPU that supports it, float32 elsewhere.
* ``set_training_dtypes``: frozen weights keep the load dtype; trainable ones are float32 outside DeepSpeed (the
  Trainer's ``bf16=True`` autocast computes in bf16) and the engine's dtype under DeepSpeed (``deepspeed_dtype``),
  which keeps float32 master weights itself.
* ``mixed_precision_context``: what the Trainer's autocast is for a training step, for forwards outside it
  (generation, eval loss) on a model whose frozen weights are bf16 and trained ones float32.
* ``attention_by_part``: flash / flex / hub kernels go to the Llama decoder; the timm tower keeps sdpa.
* ``vision_dtype``: pixels go in the dtype of the vision tower's weights.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

__all__ = ["apply_run_dtypes", "attention_by_part", "default_dtype", "deepspeed_dtype", "load_dtype",
           "mixed_precision_context",
           "set_training_dtypes", "vision_dtype"]

# Attention kernels every sub-model of PLM takes. transformers copies a string attn_implementation into every
# sub-config, and the timm tower (TimmWrapperModel) supports only these two: flash / flex / hub kernels go to the
# Llama decoder alone, the tower keeps sdpa.
_TOWER_ATTENTION = ("sdpa", "eager")


def attention_by_part(requested: str | dict[str, str] | None) -> str | dict[str, str] | None:
    """The ``attn_implementation`` to give ``from_pretrained`` for PLM: the requested kernel for the decoder,
    sdpa for the vision tower when the tower cannot run the requested one.

    ``None``, ``"sdpa"`` and ``"eager"`` suit both sub-models and pass through unchanged. Anything else
    (``"flash_attention_2"``, ``"flash_attention_3"``, ``"flex_attention"``, a hub kernel) becomes
    ``{"": kernel, "text_config": kernel, "vision_config": "sdpa"}``: transformers would otherwise hand it to the timm
    tower too, which refuses it and stops the load. A dict is checked: a kernel the tower cannot run is refused.

    Raises:
        ValueError: a dict that gives the vision tower a kernel other than sdpa / eager.
    """
    if requested is None or isinstance(requested, str) and requested in _TOWER_ATTENTION:
        return requested
    if isinstance(requested, dict):
        tower = requested.get("vision_config", "sdpa")
        if tower not in _TOWER_ATTENTION:
            raise ValueError(f"attn_implementation['vision_config']={tower!r}: PLM's timm vision tower runs only "
                             f"{' or '.join(_TOWER_ATTENTION)}. Give the kernel to 'text_config' (the decoder) and "
                             "leave the tower on sdpa, or pass the kernel as a string and plm-tune splits it so.")
        return requested
    return {"": requested, "text_config": requested, "vision_config": "sdpa"}


def default_dtype() -> torch.dtype:
    """bfloat16 on a CUDA GPU that supports it, float32 otherwise (CPU, older GPUs)."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


# ModelArguments.dtype's names (and TRL's / torch's spellings of them) -> the dtype; "auto" / None: default_dtype.
_DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
           "half": torch.float16, "float32": torch.float32, "fp32": torch.float32, "float": torch.float32}


def load_dtype(name: str | torch.dtype | None) -> torch.dtype:
    """The dtype to load weights in for ``ModelArguments.dtype`` (a name, a ``torch.dtype``, ``"auto"`` or None).

    Raises:
        ValueError: a name that is not a floating dtype plm-tune loads in.

    Example:
        >>> load_dtype("bfloat16"), load_dtype("float32")
        (torch.bfloat16, torch.float32)
    """
    if isinstance(name, torch.dtype):
        return name
    if name is None or name == "auto":
        return default_dtype()
    key = str(name).removeprefix("torch.")
    if key not in _DTYPES:
        raise ValueError(f"dtype {name!r} is not one plm-tune loads weights in: use bfloat16, float16, float32 "
                         "or auto (bfloat16 on a GPU with bf16, else float32).")
    return _DTYPES[key]


def vision_dtype(model: Any) -> torch.dtype:
    """The dtype pixels should have: that of the vision tower's first weight (QLoRA never quantises it)."""
    named = list(model.named_parameters())
    for name, parameter in named:
        if "vision" in name and parameter.is_floating_point():
            return parameter.dtype
    return next((p.dtype for _, p in named if p.is_floating_point()), torch.float32)


def set_training_dtypes(model: Any, engine_dtype: torch.dtype | None = None) -> int:
    """Trainable parameters in the dtype they train in; frozen ones keep the dtype they were loaded in.

    Outside DeepSpeed (``engine_dtype=None``) every trainable parameter becomes float32, whatever the method:
    LoRA / DoRA adapters, the projector's ``modules_to_save`` copy, a fully trained part. The optimizer then steps
    float32 weights (a 2e-5 Adam step on a bf16 weight of std 0.02 is below its rounding step and mostly
    vanishes), and the Trainer's ``bf16=True`` autocast still computes in bf16. Under DeepSpeed the engine keeps
    float32 master weights in its optimizer and wants every parameter in its own dtype (ZeRO-3 gathers them into one
    buffer per dtype and asserts a single one), so trainable parameters take ``engine_dtype`` instead. Parameters
    ZeRO-3 already partitioned (``ds_id``) are left alone: their data lives in DeepSpeed's shards.

    Called by ``load_model``, and by ``build_trainer`` after TRL's ``SFTTrainer`` has cast a quantised model's
    trainable parameters to bf16.

    Returns:
        How many weights (elements) were cast.
    """
    target = engine_dtype or torch.float32
    cast = 0
    for param in model.parameters():
        if param.requires_grad and param.is_floating_point() and param.dtype != target and not hasattr(param, "ds_id"):
            param.data = param.data.to(target)
            cast += param.numel()
    return cast


def deepspeed_dtype() -> torch.dtype | None:
    """The dtype a DeepSpeed engine of this run will hold parameters in; None when the run is not under DeepSpeed.

    Known once ``SFTConfig`` / ``TrainingArguments`` exist with a DeepSpeed config (accelerate's launcher sets one;
    the recipes create their arguments before the model, so ZeRO-3 can shard weights as they load).
    """
    from transformers.integrations import deepspeed_config

    config = deepspeed_config()  # the run's DeepSpeed config, its "auto" values filled from the arguments
    if config is None:
        return None
    if (config.get("bf16") or {}).get("enabled") is True:
        return torch.bfloat16
    if (config.get("fp16") or {}).get("enabled") is True:
        return torch.float16
    return torch.float32


def mixed_precision_context(model: Any) -> contextlib.AbstractContextManager:
    """Autocast to the model's half dtype when it holds half-precision and float32 weights side by side.

    ``set_training_dtypes`` leaves a bf16 load with float32 trained weights (the projector's copy, a part trained in
    full): in training the Trainer's ``bf16=True`` autocast joins them; a forward outside it (``generate``, the eval
    loss, generation eval between steps) would multiply bf16 activations by float32 weights and fail. Nothing for a
    model in one dtype (a float32 run, a merged or reloaded bf16 model): a null context.
    """
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    half = dtypes & {torch.bfloat16, torch.float16}
    if not half or torch.float32 not in dtypes:
        return contextlib.nullcontext()
    device = next(p.device for p in model.parameters() if p.is_floating_point())
    return torch.autocast(device.type, dtype=torch.bfloat16 if torch.bfloat16 in half else torch.float16)


def apply_run_dtypes(trainer: Any) -> None:
    """Every trainable weight in the dtype it trains in (``set_training_dtypes``), now that the run is known.

    TRL's ``SFTTrainer.__init__`` casts a quantised model's trainable parameters (LoRA and the projector copy)
    to bf16; outside DeepSpeed they go back to float32 here. Under DeepSpeed they take the engine's dtype.
    Outside DeepSpeed, half-precision frozen weights next to float32 trainable ones need autocast, so a bf16 /
    fp16 load without ``bf16`` / ``fp16`` in the arguments is refused.
    """
    args, model = trainer.args, trainer.model
    if trainer.is_deepspeed_enabled:
        engine = torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else torch.float32
        set_training_dtypes(model, engine)
        return
    set_training_dtypes(model)
    half = sorted({str(p.dtype) for p in model.parameters() if p.dtype in (torch.bfloat16, torch.float16)})
    if half and not (args.bf16 or args.fp16):
        raise ValueError(
            f"The model holds {' and '.join(half)} weights but the training arguments have bf16=False and fp16=False: "
            "its frozen half-precision weights would meet float32 trainable ones with no autocast between them. Set "
            "bf16=True (autocast computes in bf16, the optimizer steps float32 weights; also on a CPU with "
            "use_cpu=True), or load the model with dtype=torch.float32.")
