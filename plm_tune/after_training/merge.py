"""Merge a trained adapter into its base: one standalone PLM folder that loads without peft.

Example:
    >>> merge_adapter("outputs/radiology-lora", "outputs/radiology-merged")   # doctest: +SKIP
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from plm_tune.modeling.precision import default_dtype
from plm_tune.modeling.run_folder import (
    ADAPTER_WEIGHTS,
    adapter_folder,
    has_processor,
    is_adapter,
    looks_local,
    read_training_info,
    recorded_base_model,
    resolve_base_model,
    same_model,
    write_training_info,
)

__all__ = ["merge_adapter"]

logger = logging.getLogger(__name__)


def merge_adapter(
    adapter_dir: str | Path,
    output_dir: str | Path,
    *,
    base_model: str | None = None,
    dtype: torch.dtype | None = None,
    allow_other_base: bool = False,
) -> Path:
    """Merge a LoRA / DoRA / QLoRA adapter into its base model and save one standalone PLM folder.

    The base is loaded with ``AutoModelForImageTextToText`` (safetensors only, no remote code), the adapter
    applied with ``PeftModel.from_pretrained``, then ``merge_and_unload`` folds the LoRA deltas into the base
    weights and puts the parts trained in full (``modules_to_save``, e.g. the projector) in place. The folder
    gets ``config.json``, ``generation_config.json``, ``model.safetensors`` and the processor with its chat
    template (the adapter folder's when it has one, else the base's), and the adapter's
    ``plm_tune_training.json`` with ``base_model`` added (when it has one: ``plm-tune push`` reads from it that
    the folder is a merge, and of which base). It loads with
    ``AutoModelForImageTextToText.from_pretrained`` / ``AutoProcessor.from_pretrained`` and no peft.

    QLoRA: the adapter was trained against 4-bit NF4 weights, but merging into 4-bit weights is lossy (the
    sum must be quantised again). The base is therefore always loaded unquantised (``dtype``) and the adapter
    merged into those full-precision weights. The merged model is not bit-identical to the 4-bit model that
    was trained (it is the adapter on the weights before quantisation): evaluate it. A QLoRA adapter is
    recognised by ``"method": "qlora"`` in the folder's ``plm_tune_training.json`` (``write_training_info``;
    peft's own files do not record it); the merge is the same either way, only a warning is added.

    Args:
        adapter_dir: folder written by ``trainer.save_model`` / ``PeftModel.save_pretrained``.
        output_dir: where the merged model goes; created if needed. It must not hold an adapter (a folder with
            ``adapter_config.json`` would load as an adapter again).
        base_model: Hub id or local folder of the base; default: ``base_model_name_or_path`` in
            ``adapter_config.json`` (CLI ``--base-model``). Another model than the one the adapter records (there,
            or as ``base_model`` in its ``plm_tune_training.json``) is refused unless ``allow_other_base`` (a
            recorded local folder gone from this machine cannot be compared: a warning names both).
        allow_other_base: merge onto a ``base_model`` other than the recorded one (CLI ``--allow-other-base``):
            for the same model moved or renamed. Its sizes must still fit the adapter's.
        dtype: weights' dtype of the merged model; default bfloat16 on a CUDA GPU with bf16 support, else
            float32. The merge runs on the CPU in this dtype.

    Returns:
        ``output_dir`` as a ``Path``.

    Raises:
        FileNotFoundError: ``adapter_dir`` missing, without ``adapter_config.json`` or without
            ``adapter_model.safetensors``; a local base folder that does not exist.
        ValueError: no base model named anywhere; ``output_dir`` holds an adapter; ``base_model`` is not the
            recorded base (without ``allow_other_base``); the base's layers are of other sizes than the adapter's
            (one line naming both models and the first layer that differs).
        OSError: the base model (or its processor) cannot be loaded, e.g. a Hub id without network.

    Example:
        >>> merge_adapter("outputs/radiology-lora", "outputs/radiology-merged")   # doctest: +SKIP
        >>> AutoModelForImageTextToText.from_pretrained("outputs/radiology-merged")   # doctest: +SKIP
    """
    from peft import PeftModel
    from transformers import AutoProcessor

    adapter_dir = adapter_folder(adapter_dir, needs_weights=True)
    output_dir = Path(output_dir)
    if is_adapter(output_dir):
        raise ValueError(
            f"The output folder {output_dir} holds an adapter (adapter_config.json): the merged model would "
            "load as that adapter again. Pass another `output_dir`."
        )
    base, recorded = _checked_base(adapter_dir, base_model, allow_other_base)
    dtype = dtype or default_dtype()
    if read_training_info(adapter_dir).get("method") == "qlora":
        logger.warning(
            "%s was trained with QLoRA on a 4-bit base. Merging into the unquantised base (%s): the merged "
            "model is close to, not bit-identical with, the 4-bit model that was trained. Evaluate it.",
            adapter_dir, dtype,
        )

    model = _load_base(base, adapter_dir, dtype)
    source = adapter_dir if has_processor(adapter_dir) else base
    try:
        processor = AutoProcessor.from_pretrained(source, trust_remote_code=False)
    except OSError as error:
        raise OSError(
            f"Could not load the processor from {source} (the adapter folder's when it has processor files, "
            f"else the base's): {error}\nSave the processor next to the adapter (processor.save_pretrained) "
            "or pass `base_model`."
        ) from error

    if misfit := _adapter_misfit(model, adapter_dir):
        raise ValueError(f"The adapter in {adapter_dir} (trained on {recorded or 'an unrecorded base'}) does not fit "
                         f"base model {base}: {misfit}. Pass the base it was trained on as base_model.")
    # safe_merge: checks the merged weights for NaN / inf before anything is written.
    merged = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload(safe_merge=True)
    output_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(output_dir)  # transformers 5 writes safetensors only (no pickle option left)
    processor.save_pretrained(output_dir)  # tokenizer, image processor and chat_template.jinja
    info = read_training_info(adapter_dir)
    if info:  # tiles / frames it was trained with (generate's defaults); the base, which config.json does not name
        write_training_info(output_dir, {**info, "base_model": str(base)})
    logger.info("Merged %s into %s; saved the standalone model to %s", adapter_dir, base, output_dir)
    return output_dir


def _load_base(base: str, adapter_dir: Path, dtype: torch.dtype) -> torch.nn.Module:
    """The base model, safetensors only and no remote code; a base that does not load says which to pass."""
    from transformers import AutoModelForImageTextToText

    logger.info("Loading the base model %s in %s", base, dtype)
    try:
        return AutoModelForImageTextToText.from_pretrained(base, dtype=dtype, use_safetensors=True,
                                                           trust_remote_code=False)
    except OSError as error:
        raise OSError(
            f"Could not load the base model {base!r} of the adapter in {adapter_dir}: {error}\n"
            "Pass `base_model` with the local folder or Hub id of the model it was trained on."
        ) from error


def _checked_base(adapter_dir: Path, base_model: str | None, allow_other_base: bool) -> tuple[str, str | None]:
    """``(base to load, base the adapter records)``: ``base_model`` or the recorded one; another than the recorded
    one refused unless ``allow_other_base`` (the record: ``adapter_config.json``, else ``plm_tune_training.json``).
    A recorded local folder that is gone from this machine cannot be compared: ``base_model`` is taken for it,
    with a warning naming both (the layer sizes are still checked, ``_adapter_misfit``)."""
    base = resolve_base_model(adapter_dir, base_model)
    recorded = recorded_base_model(adapter_dir) or read_training_info(adapter_dir).get("base_model")
    if not recorded or same_model(base, recorded) or allow_other_base:
        return base, recorded
    if looks_local(recorded) and not Path(recorded).expanduser().exists():
        logger.warning("%s records base model %s, which is not on this machine: merging onto %s as its copy.",
                       adapter_dir, recorded, base)
    else:
        raise ValueError(
            f"{adapter_dir} is an adapter of base model {recorded}, but base_model is {base}: merged onto another "
            f"base it gives a model nobody trained. Leave base_model out (or pass {recorded}); if {base} is that "
            "model moved or renamed, pass allow_other_base=True (plm-tune merge --allow-other-base)."
        )
    return base, recorded


def _adapter_misfit(model: torch.nn.Module, adapter_dir: Path) -> str | None:
    """The first adapter tensor whose size does not fit ``model`` (read from the safetensors header, nothing
    loaded), as ``"layer: adapter size vs base size"``; None when all fit. peft would stop on the same tensors
    with a multi-line "size mismatch" that names neither model."""
    from safetensors import safe_open

    modules, params = dict(model.named_modules()), dict(model.named_parameters())
    with safe_open(str(adapter_dir / ADAPTER_WEIGHTS), framework="pt") as weights:
        for key in weights.keys():
            shape = list(weights.get_slice(key).get_shape())
            name = key.removeprefix("base_model.model.")
            for marker, axis, attribute in ((".lora_A.", 1, "in_features"), (".lora_B.", 0, "out_features")):
                if marker in name:
                    layer = name.split(marker)[0]
                    if layer not in modules:
                        return f"{layer} is in the adapter, not in the base"
                    size = getattr(modules[layer], attribute, None)
                    if size != shape[axis]:
                        return f"{layer} has {shape[axis]} {attribute} in the adapter, {size} in the base"
                    break
            else:
                if name in params and list(params[name].shape) != shape:
                    return f"{name} is {shape} in the adapter, {list(params[name].shape)} in the base"
    return None
