"""The model card of an adapter: its README.md, with Hub metadata, how it trained, final metrics and usage.

The facts come from the run folder (``plm_tune.modeling.run_folder``): peft's ``adapter_config.json`` (base model, LoRA
settings, the parts trained in full) and plm-tune's ``plm_tune_training.json`` (method, tiles, frames, data,
steps, metrics). Whatever neither records reads "not recorded".

Example:
    >>> write_model_card("outputs/lora", repo_id="me/plm-lora", metrics={"loss": 0.5})  # doctest: +SKIP
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from plm_tune.arguments import MAX_NEW_TOKENS
from plm_tune.methods import METHOD_WORDS
from plm_tune.modeling.run_folder import (
    adapter_config,
    adapter_folder,
    check_training_info,
    read_training_info,
    recorded_base_model,
)

__all__ = ["is_generated_card", "model_card_text", "write_model_card"]

NOT_RECORDED = "not recorded"
# Text only tool-written cards hold (see is_generated_card).
_GENERATED_MARKERS = (
    "# Model Card for Model ID",  # peft / huggingface_hub's unfilled template
    "This model is a fine-tuned version of",  # TRL and transformers' Trainer
    "It has been trained using [TRL]",
    "This model card has been generated automatically",  # transformers' Trainer
    "trained with plm-tune.",  # ours (_card_body's first sentence)
)


def write_model_card(adapter_dir: str | Path, *, repo_id: str, **details: Any) -> Path:
    """Write ``model_card_text(adapter_dir, repo_id=repo_id, **details)`` to the folder's README.md.

    ``details``: ``base_model``, ``training``, ``metrics``, ``datasets``, ``tags``, as ``model_card_text``
    takes them; it raises the same errors.

    Returns:
        The path of README.md.

    Example:
        >>> write_model_card("outputs/lora", repo_id="me/plm-lora", metrics={"loss": 0.5})  # doctest: +SKIP
    """
    path = adapter_folder(adapter_dir) / "README.md"
    path.write_text(model_card_text(adapter_dir, repo_id=repo_id, **details), encoding="utf-8", newline="")
    return path


def model_card_text(
    adapter_dir: str | Path,
    *,
    repo_id: str,
    base_model: str | None = None,
    training: dict[str, Any] | None = None,
    metrics: dict[str, float] | None = None,
    datasets: Sequence[str] | None = None,
    tags: Sequence[str] | None = None,
) -> str:
    """The README.md of an adapter folder: Hub metadata, how it was trained, final metrics and usage.

    ``write_model_card`` writes it; ``plm-tune push --dry-run`` shows it.

    The YAML front matter has ``base_model`` (when it is a Hub id: a local path would be rejected by the Hub
    and is named in the text instead), ``library_name: peft``, ``pipeline_tag: image-text-to-text``,
    ``datasets`` (the Hub ids among them) and ``tags`` (``plm-tune``, ``perception-lm``, the method, ``lora``,
    then ``tags``). The text gives the method, LoRA rank / alpha / dropout / target modules and the parts
    trained in full (from ``adapter_config.json``), how each part of PLM trained, tiles and frames, data,
    steps, a metrics table and a Python snippet that loads the base, applies the adapter from ``repo_id`` and
    answers about an image. Training facts come from ``plm_tune_training.json`` (``write_training_info``),
    updated by ``training`` / ``metrics`` / ``datasets``; whatever is missing reads "not recorded".

    Args:
        adapter_dir: the adapter folder.
        repo_id: Hub repo the card describes (used in the title and the snippet), e.g. ``"me/plm-lora"``.
        base_model: base model id; default ``base_model_name_or_path`` in ``adapter_config.json``.
        training: training facts (``TRAINING_INFO_KEYS``) that update the recorded ones.
        metrics: final metrics ``{name: value}``; replace the recorded ones.
        datasets: dataset names; replace the recorded ones.
        tags: extra Hub tags.

    Returns:
        The card's text.

    Raises:
        FileNotFoundError: ``adapter_dir`` missing or without ``adapter_config.json``.
        ValueError: an unknown key in ``training``.

    Example:
        >>> print(model_card_text("outputs/lora", repo_id="me/plm-lora"))  # doctest: +SKIP
    """
    from huggingface_hub import ModelCard, ModelCardData

    adapter_dir = adapter_folder(adapter_dir)
    config = adapter_config(adapter_dir)
    check_training_info(training or {}, where="write_model_card(training=...)")
    info = {**read_training_info(adapter_dir), **(training or {})}
    if metrics is not None:
        info["metrics"] = dict(metrics)
    if datasets is not None:
        info["datasets"] = [datasets] if isinstance(datasets, str) else list(datasets)
    base = base_model or recorded_base_model(adapter_dir) or NOT_RECORDED
    base = _cached_hub_id(base) or base
    method = info.get("method") or ("dora" if config.get("use_dora") else "lora")
    data_names = _as_list(info.get("datasets"))

    card_data = ModelCardData(
        base_model=base if _is_hub_id(base) else None,
        library_name="peft",
        pipeline_tag="image-text-to-text",
        datasets=[name for name in data_names if _is_hub_id(name)] or None,
        tags=list(dict.fromkeys(["plm-tune", "perception-lm", method, "lora", *(tags or [])])),
    )
    body = _card_body(repo_id, base, method, "method" in info, config, info)
    return str(ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}"))


def is_generated_card(text: str) -> bool:
    """Whether a README.md was written by a tool (plm-tune, peft, TRL, transformers' Trainer), not by hand.

    ``plm-tune push`` replaces a generated card with plm-tune's and keeps a hand-written one. The markers:
    peft's unfilled template (``# Model Card for Model ID``, written by every ``save_pretrained``), TRL's card
    ("fine-tuned version of", "trained using [TRL]"; its ``base_model`` is often ``None`` or a local folder),
    transformers' Trainer comment, plm-tune's own card, and front matter whose ``base_model`` is a local path
    (which the Hub rejects, so nobody writes it on purpose).
    """
    if any(marker in text for marker in _GENERATED_MARKERS):
        return True
    front = text.split("\n---", 1)[0] if text.startswith("---\n") else ""
    base = re.search(r"^base_model:[ \t]*(.*)$", front, re.M)
    return bool(base) and base.group(1).strip().strip("'\"").startswith(("/", ".", "~"))


def _card_body(repo_id: str, base: str, method: str, method_recorded: bool, config: dict, info: dict) -> str:
    label = METHOD_WORDS[method].label if method in METHOD_WORDS else method
    if not method_recorded:
        label += " (read from adapter_config.json; a 4-bit QLoRA base is not recorded there)"
    if base == NOT_RECORDED:
        base_text = f"a base model ({NOT_RECORDED})"
    elif _is_hub_id(base):
        base_text = f"[{base}](https://huggingface.co/{base})"
    else:
        base_text = f"`{base}` (a local folder)"
    targets = config.get("target_modules")
    targets = targets if isinstance(targets, str) else _as_list(targets)
    full = _as_list(config.get("modules_to_save"))
    parts = _parts(config)
    steps = NOT_RECORDED
    if info.get("global_step") is not None or info.get("max_steps") is not None:
        steps = f"{_show(info.get('global_step'))} (planned: {_show(info.get('max_steps'))})"
    mix = info.get("data_mix")
    metrics = info.get("metrics") or {}

    lines = [
        f"# {repo_id.split('/')[-1]}",
        "",
        f"A {label} adapter for {base_text}, Meta's Perception Language Model (PLM), trained with plm-tune.",
        "",
        "## Training",
        "",
        f"- **Method:** {label}",
        f"- **LoRA rank (r):** {_show(config.get('r', info.get('lora_r')))}",
        f"- **LoRA alpha:** {_show(config.get('lora_alpha', info.get('lora_alpha')))}",
        f"- **LoRA dropout:** {_show(config.get('lora_dropout'))}",
        f"- **Target modules:** {_code(targets or info.get('target_modules'))}",
        f"- **Trained in full (modules_to_save):** {_code(full) if full else 'none'}",
        f"- **Parts:** {parts}",
        f"- **Frozen parts:** {_show(_frozen(config, info))}",
        f"- **Image tiles (max_tiles):** {_show(info.get('max_tiles'))}",
        f"- **Video frames (num_frames):** {_show(info.get('num_frames'))}",
        f"- **Training steps:** {steps}",
        "",
        "## Data",
        "",
        f"- **Datasets:** {_show(info.get('datasets'))}",
        f"- **Mix:** {_show(mix)}",
        "",
        "## Results",
        "",
    ]
    if metrics:
        lines += ["| metric | value |", "| --- | --- |"]
        lines += [f"| {name} | {_show(value)} |" for name, value in metrics.items()]
    else:
        lines.append(f"Final metrics: {NOT_RECORDED}.")
    lines += ["", "## Usage", "", "```python", _snippet(repo_id, base), "```", ""]
    lines.append(
        "To get one standalone model, merge the adapter into the base: "
        "`plm-tune merge --adapter DIR --output DIR` (or `model.merge_and_unload()`)."
    )
    if method == "qlora":
        lines += [
            "",
            "The adapter was trained on a 4-bit NF4 base. For the trained model's exact behaviour load the "
            "base with `quantization_config=BitsAndBytesConfig(load_in_4bit=True, "
            "bnb_4bit_quant_type=\"nf4\", bnb_4bit_use_double_quant=True, "
            "bnb_4bit_compute_dtype=torch.bfloat16, llm_int8_skip_modules="
            "[\"model.vision_tower\", \"model.multi_modal_projector\", \"lm_head\"])`; a merge goes into the "
            "unquantised base, which is close to but not bit-identical with the trained model.",
        ]
    return "\n".join(lines) + "\n"


def _snippet(repo_id: str, base: str) -> str:
    return f'''import torch
from PIL import Image
from peft import PeftModel
from transformers import AutoModelForImageTextToText, AutoProcessor

base = AutoModelForImageTextToText.from_pretrained("{base}", dtype="auto", device_map="auto")
processor = AutoProcessor.from_pretrained("{repo_id}")
model = PeftModel.from_pretrained(base, "{repo_id}").eval()

messages = [
    {{"role": "user", "content": [
        {{"type": "image", "image": Image.open("image.png")}},
        {{"type": "text", "text": "Describe the image."}},
    ]}},
]
inputs = processor.apply_chat_template(
    messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
).to(model.device)
with torch.no_grad():
    output = model.generate(**inputs, max_new_tokens={MAX_NEW_TOKENS})
print(processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))'''


def _parts(config: dict) -> str:
    """How each PLM part trained: 'language model: LoRA, vision tower: frozen, projector: trained in full'."""
    how = _how_parts(config)
    if how is None:
        return NOT_RECORDED
    names = {"language": "language model", "vision": "vision tower", "projector": "projector"}
    return ", ".join(f"{names[part]}: {how[part]}" for part in names)


def _how_parts(config: dict) -> dict[str, str] | None:
    """From plm-tune's anchored target regex and modules_to_save; None for adapters made elsewhere."""
    targets = str(config.get("target_modules") or "")
    keys = {"language": "language_model", "vision": "vision_tower", "projector": "multi_modal_projector"}
    lora = {part for part in ("language", "vision") if keys[part] in targets}
    if not lora:
        return None
    full = " ".join(_as_list(config.get("modules_to_save")))
    return {
        part: "LoRA" if part in lora else "trained in full" if key in full else "frozen"
        for part, key in keys.items()
    }


def _frozen(config: dict, info: dict) -> list[str] | str | None:
    how = _how_parts(config)
    if how is not None:  # exact for plm-tune adapters: every part neither adapted nor saved was frozen
        return [part for part, way in how.items() if way == "frozen"] or "none"
    return info.get("freeze")


def _cached_hub_id(path: str) -> str | None:
    """The Hub id of a folder in the Hub's download cache (``.../models--org--name/snapshots/REV``), else None.

    A base loaded from the Hub and recorded by its cache path is that Hub model: the card names it so.
    """
    match = re.search(r"(?:^|/)models--([^/]+?)--([^/]+)/snapshots/[^/]+/?$", path.replace("\\", "/"))
    return f"{match.group(1)}/{match.group(2)}" if match else None


def _is_hub_id(name: str) -> bool:
    """A plausible Hub repo id ("org/name" or "name") that is not a folder on this machine."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if name == NOT_RECORDED or Path(name).expanduser().exists() or name.startswith(("/", ".", "~")):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _show(value: Any) -> str:
    if value is None or value == [] or value == {}:
        return NOT_RECORDED
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{key}: {_show(item)}" for key, item in value.items())
    if isinstance(value, Iterable) and not isinstance(value, str):
        return ", ".join(_show(item) for item in value)
    return str(value)


def _code(value: Any) -> str:
    if not value:
        return NOT_RECORDED
    return ", ".join(f"`{item}`" for item in _as_list(value))
