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
    adapter_folder,
    has_processor,
    is_adapter,
    read_training_info,
    resolve_base_model,
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
            ``adapter_config.json`` (CLI ``--base-model``).
        dtype: weights' dtype of the merged model; default bfloat16 on a CUDA GPU with bf16 support, else
            float32. The merge runs on the CPU in this dtype.

    Returns:
        ``output_dir`` as a ``Path``.

    Raises:
        FileNotFoundError: ``adapter_dir`` missing, without ``adapter_config.json`` or without
            ``adapter_model.safetensors``; a local base folder that does not exist.
        ValueError: no base model named anywhere; ``output_dir`` holds an adapter.
        OSError: the base model (or its processor) cannot be loaded, e.g. a Hub id without network.

    Example:
        >>> merge_adapter("outputs/radiology-lora", "outputs/radiology-merged")   # doctest: +SKIP
        >>> AutoModelForImageTextToText.from_pretrained("outputs/radiology-merged")   # doctest: +SKIP
    """
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    adapter_dir = adapter_folder(adapter_dir, needs_weights=True)
    output_dir = Path(output_dir)
    if is_adapter(output_dir):
        raise ValueError(
            f"The output folder {output_dir} holds an adapter (adapter_config.json): the merged model would "
            "load as that adapter again. Pass another `output_dir`."
        )
    base = resolve_base_model(adapter_dir, base_model)
    dtype = dtype or default_dtype()
    if read_training_info(adapter_dir).get("method") == "qlora":
        logger.warning(
            "%s was trained with QLoRA on a 4-bit base. Merging into the unquantised base (%s): the merged "
            "model is close to, not bit-identical with, the 4-bit model that was trained. Evaluate it.",
            adapter_dir, dtype,
        )

    logger.info("Loading the base model %s in %s", base, dtype)
    try:
        model = AutoModelForImageTextToText.from_pretrained(
            base, dtype=dtype, use_safetensors=True, trust_remote_code=False
        )
    except OSError as error:
        raise OSError(
            f"Could not load the base model {base!r} of the adapter in {adapter_dir}: {error}\n"
            "Pass `base_model` with the local folder or Hub id of the model it was trained on."
        ) from error
    source = adapter_dir if has_processor(adapter_dir) else base
    try:
        processor = AutoProcessor.from_pretrained(source, trust_remote_code=False)
    except OSError as error:
        raise OSError(
            f"Could not load the processor from {source} (the adapter folder's when it has processor files, "
            f"else the base's): {error}\nSave the processor next to the adapter (processor.save_pretrained) "
            "or pass `base_model`."
        ) from error

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
