"""The model card of a trained PLM: its README.md, with Hub metadata, how it trained, held-out metrics and usage.

Three kinds of folder get a card (``folder_kind``): a peft adapter, a full finetune and an adapter merged into its
base (``merge_adapter``). The facts come from the run folder (``plm_tune.modeling.run_folder``): peft's
``adapter_config.json`` (base model, LoRA settings, the parts trained in full), plm-tune's
``plm_tune_training.json`` (method, base, tiles, frames, data, steps, metrics) and the held-out scores in
``eval/eval.json`` (``finish_run``), which also become the Hub's ``model-index`` metadata. Whatever none of them
records reads "not recorded".

Example:
    >>> write_model_card("outputs/lora", repo_id="me/plm-lora", metrics={"loss": 0.5})  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

from plm_tune.arguments import MAX_NEW_TOKENS
from plm_tune.methods import METHOD_WORDS
from plm_tune.modeling.run_folder import (
    ADAPTER_CONFIG,
    EVAL_DIR,
    EVAL_JSON,
    TRAINING_INFO_FILE,
    adapter_config,
    adapter_folder,
    check_training_info,
    read_training_info,
    recorded_base_model,
)

__all__ = ["FolderKind", "folder_kind", "is_generated_card", "model_card_text", "write_model_card"]

FolderKind = Literal["adapter", "full", "merged"]
MODEL_CONFIG = "config.json"  # transformers' config: a whole model, not an adapter
TASK = "image-text-to-text"  # the Hub's pipeline tag and model-index task of every PLM

NOT_RECORDED = "not recorded"
# Text only tool-written cards hold (see is_generated_card).
_GENERATED_MARKERS = (
    "# Model Card for Model ID",  # peft / huggingface_hub's unfilled template
    "This model is a fine-tuned version of",  # TRL and transformers' Trainer
    "It has been trained using [TRL]",
    "This model card has been generated automatically",  # transformers' Trainer
    "trained with plm-tune.",  # ours (_card_body's first sentence)
)


def folder_kind(folder: str | Path) -> FolderKind:
    """What a folder holds: ``"adapter"`` (peft's ``adapter_config.json``), else, with transformers'
    ``config.json``, ``"merged"`` when its ``plm_tune_training.json`` records a LoRA method (lora / dora /
    qlora: ``merge_adapter`` keeps the adapter's record) and ``"full"`` otherwise (a ``method: full`` run, or a
    model that records nothing).

    Raises:
        FileNotFoundError: ``folder`` is not a folder, or holds neither file.

    Example:
        >>> folder_kind("outputs/radiology-merged")   # doctest: +SKIP
        'merged'
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder: pass the folder a training run or `plm-tune merge` wrote.")
    if (folder / ADAPTER_CONFIG).is_file():
        return "adapter"
    if not (folder / MODEL_CONFIG).is_file():
        raise FileNotFoundError(
            f"{folder} has neither {ADAPTER_CONFIG} (an adapter) nor {MODEL_CONFIG} (a model): pass the folder "
            "trainer.save_model, save_pretrained or `plm-tune merge` wrote."
        )
    method = read_training_info(folder).get("method")
    return "merged" if method in METHOD_WORDS and method != "full" else "full"


def write_model_card(folder: str | Path, *, repo_id: str, **details: Any) -> Path:
    """Write ``model_card_text(folder, repo_id=repo_id, **details)`` to the folder's README.md.

    ``details``: ``base_model``, ``training``, ``metrics``, ``datasets``, ``tags``, as ``model_card_text``
    takes them; it raises the same errors.

    Returns:
        The path of README.md.

    Example:
        >>> write_model_card("outputs/lora", repo_id="me/plm-lora", metrics={"loss": 0.5})  # doctest: +SKIP
    """
    text = model_card_text(folder, repo_id=repo_id, **details)
    path = Path(folder) / "README.md"
    path.write_text(text, encoding="utf-8", newline="")
    return path


def model_card_text(
    folder: str | Path,
    *,
    repo_id: str,
    base_model: str | None = None,
    training: dict[str, Any] | None = None,
    metrics: dict[str, float] | None = None,
    datasets: Sequence[str] | None = None,
    tags: Sequence[str] | None = None,
) -> str:
    """The README.md of an adapter, full-finetune or merged-model folder: Hub metadata, training, metrics, usage.

    ``write_model_card`` writes it; ``plm-tune push --dry-run`` shows it.

    The YAML front matter has ``base_model`` (when it is a Hub id: a local path would be rejected by the Hub
    and is named in the text instead), ``library_name`` (``peft`` for an adapter, ``transformers`` for a
    model), ``pipeline_tag: image-text-to-text``, ``datasets`` (the Hub ids among them), ``tags``
    (``plm-tune``, ``perception-lm``, the method, ``lora`` for LoRA methods, ``merged`` for a merged model, then
    ``tags``) and, when the folder holds ``eval/eval.json``, ``model-index``: one ``EvalResult`` per held-out
    score of the trained model, named as eval.json names it (``exact_match``, ``bleu``, ``rouge_l``, ...).
    The text gives the method and its settings (an adapter's from ``adapter_config.json``: rank / alpha /
    dropout / targets / parts trained in full), tiles and frames, data, steps, a metrics table and a Python
    snippet that loads the model from ``repo_id`` (an adapter: the base, then ``PeftModel.from_pretrained``; a
    model: ``AutoModelForImageTextToText.from_pretrained``) and answers about an image. Training facts come
    from ``plm_tune_training.json`` (``write_training_info``), updated by ``training`` / ``metrics`` /
    ``datasets``; whatever is missing reads "not recorded".

    Args:
        folder: the adapter or model folder (``folder_kind`` says which).
        repo_id: Hub repo the card describes (used in the title and the snippet), e.g. ``"me/plm-lora"``.
        base_model: the model training started from; default ``base_model_name_or_path`` in
            ``adapter_config.json``, else ``base_model`` in ``plm_tune_training.json`` (``merge_adapter`` records
            it), else the model ``eval/eval.json`` names (a full finetune's start).
        training: training facts (``TRAINING_INFO_KEYS``) that update the recorded ones.
        metrics: final metrics ``{name: value}`` for the text's table; replace the recorded ones.
        datasets: dataset names; replace the recorded ones.
        tags: extra Hub tags.

    Returns:
        The card's text.

    Raises:
        FileNotFoundError: ``folder`` missing or without ``adapter_config.json`` / ``config.json``.
        ValueError: an unknown key in ``training``.

    Example:
        >>> print(model_card_text("outputs/lora", repo_id="me/plm-lora"))  # doctest: +SKIP
    """
    from huggingface_hub import ModelCard, ModelCardData

    kind = folder_kind(folder)
    folder = adapter_folder(folder) if kind == "adapter" else Path(folder)
    config = adapter_config(folder) if kind == "adapter" else {}
    check_training_info(training or {}, where="write_model_card(training=...)")
    info = {**read_training_info(folder), **(training or {})}
    if metrics is not None:
        info["metrics"] = dict(metrics)
    if datasets is not None:
        info["datasets"] = [datasets] if isinstance(datasets, str) else list(datasets)
    held_out = _held_out(folder)
    base = base_model or recorded_base_model(folder) or info.get("base_model") or held_out.get("model")
    base = _cached_hub_id(base or NOT_RECORDED) or base or NOT_RECORDED
    method = info.get("method") or ("dora" if config.get("use_dora") else "lora" if kind == "adapter" else "full")
    data_names = _as_list(info.get("datasets"))
    hub_data = [name for name in data_names if _is_hub_id(name)]
    # A model folder that records no method may be a merge of an adapter with no record, or anything else.
    named = [method] if kind == "adapter" or "method" in info else []
    lora = ["lora"] if method != "full" else []
    merged = ["merged"] if kind == "merged" else []
    results = _eval_results(held_out.get("metrics") or {}, data_names, hub_data)

    card_data = ModelCardData(
        base_model=base if _is_hub_id(base) else None,
        library_name="peft" if kind == "adapter" else "transformers",
        pipeline_tag=TASK,
        datasets=hub_data or None,
        tags=list(dict.fromkeys(["plm-tune", "perception-lm", *named, *lora, *merged, *(tags or [])])),
        model_name=repo_id.split("/")[-1] if results else None,
        eval_results=results or None,
    )
    if kind == "adapter":
        body = _card_body(repo_id, base, method, "method" in info, config, info)
    else:
        body = _model_body(repo_id, base, method, kind, info)
    return str(ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}"))


def _held_out(folder: Path) -> dict[str, Any]:
    """``{"metrics": {name: value}, "model": name}`` from ``eval/eval.json`` (``finish_run`` / ``plm-tune eval``
    write it as ``EvalResult.to_dict``: the trained model's ``metrics`` and ``info["model"]``, the model the run
    started from); empty without one."""
    path = folder / EVAL_DIR / EVAL_JSON
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return {"metrics": data.get("metrics") or {}, "model": (data.get("info") or {}).get("model") or None}


def _eval_results(metrics: dict[str, Any], data_names: list[str], hub_data: list[str]) -> list[Any]:
    """The held-out scores as huggingface_hub ``EvalResult`` s, for the card's ``model-index``.

    The dataset is the Hub id when the run trained on one Hub dataset (its held-out share was scored), else a
    named held-out split; ``samples`` is a count, not a score, and a non-finite value has no YAML the Hub reads.
    """
    from huggingface_hub import EvalResult

    one_hub_id = hub_data[0] if len(data_names) == 1 and hub_data else None
    dataset = one_hub_id or "held-out"
    name = f"{one_hub_id} (held-out share)" if one_hub_id else "held-out split"
    return [
        EvalResult(task_type=TASK, task_name="Image-Text-to-Text", dataset_type=dataset, dataset_name=name,
                   metric_type=metric, metric_name=metric, metric_value=float(value))
        for metric, value in metrics.items()
        if metric != "samples" and isinstance(value, (int, float)) and math.isfinite(value)
    ]


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


def _base_text(base: str) -> str:
    if base == NOT_RECORDED:
        return f"a base model ({NOT_RECORDED})"
    if _is_hub_id(base):
        return f"[{base}](https://huggingface.co/{base})"
    return f"`{base}` (a local folder)"


def _steps(info: dict) -> str:
    if info.get("global_step") is None and info.get("max_steps") is None:
        return NOT_RECORDED
    return f"{_show(info.get('global_step'))} (planned: {_show(info.get('max_steps'))})"


def _data_results_usage(repo_id: str, base: str, kind: FolderKind, info: dict) -> list[str]:
    """The Data, Results and Usage sections, the same for every kind of folder."""
    metrics = info.get("metrics") or {}
    lines = [
        "## Data",
        "",
        f"- **Datasets:** {_show(info.get('datasets'))}",
        f"- **Mix:** {_show(info.get('data_mix'))}",
        "",
        "## Results",
        "",
    ]
    if metrics:
        lines += ["| metric | value |", "| --- | --- |"]
        lines += [f"| {name} | {_show(value)} |" for name, value in metrics.items()]
    else:
        lines.append(f"Final metrics: {NOT_RECORDED}.")
    snippet = _snippet(repo_id, base) if kind == "adapter" else _model_snippet(repo_id)
    return [*lines, "", "## Usage", "", "```python", snippet, "```", ""]


def _model_body(repo_id: str, base: str, method: str, kind: FolderKind, info: dict) -> str:
    """The text of a full finetune's or a merged model's card (no peft needed to load either)."""
    label = METHOD_WORDS[method].label if method in METHOD_WORDS else method
    if kind == "merged":
        opening = (f"{_base_text(base)} with a {label} adapter merged into its weights: one standalone model "
                   "of Meta's Perception Language Model (PLM), no peft needed, trained with plm-tune.")
        how = f"{label} adapter, merged into the base (`plm-tune merge`)"
    elif "method" in info:
        opening = f"A full finetune of {_base_text(base)}, Meta's Perception Language Model (PLM), trained with plm-tune."
        how = label
    else:
        opening = (f"A model finetuned from {_base_text(base)}, Meta's Perception Language Model (PLM), trained "
                   "with plm-tune.")
        how = f"{NOT_RECORDED} (no {TRAINING_INFO_FILE})"
    freeze = info.get("freeze")
    lines = [f"# {repo_id.split('/')[-1]}", "", opening, "", "## Training", "", f"- **Method:** {how}"]
    if kind == "merged":
        lines += [
            f"- **LoRA rank (r):** {_show(info.get('lora_r'))}",
            f"- **LoRA alpha:** {_show(info.get('lora_alpha'))}",
            f"- **Target modules:** {_code(info.get('target_modules'))}",
        ]
    lines += [
        f"- **Frozen parts:** {'none' if freeze == [] else _show(freeze)}",
        f"- **Image tiles (max_tiles):** {_show(info.get('max_tiles'))}",
        f"- **Video frames (num_frames):** {_show(info.get('num_frames'))}",
        f"- **Training steps:** {_steps(info)}",
        "",
        *_data_results_usage(repo_id, base, kind, info),
    ]
    if method == "qlora":
        lines += ["The adapter was trained on a 4-bit NF4 base and merged into the unquantised base: close to, "
                  "not bit-identical with, the model that was trained.", ""]
    return "\n".join(lines)


def _card_body(repo_id: str, base: str, method: str, method_recorded: bool, config: dict, info: dict) -> str:
    label = METHOD_WORDS[method].label if method in METHOD_WORDS else method
    if not method_recorded:
        label += " (read from adapter_config.json; a 4-bit QLoRA base is not recorded there)"
    targets = config.get("target_modules")
    targets = targets if isinstance(targets, str) else _as_list(targets)
    full = _as_list(config.get("modules_to_save"))
    lines = [
        f"# {repo_id.split('/')[-1]}",
        "",
        f"A {label} adapter for {_base_text(base)}, Meta's Perception Language Model (PLM), trained with plm-tune.",
        "",
        "## Training",
        "",
        f"- **Method:** {label}",
        f"- **LoRA rank (r):** {_show(config.get('r', info.get('lora_r')))}",
        f"- **LoRA alpha:** {_show(config.get('lora_alpha', info.get('lora_alpha')))}",
        f"- **LoRA dropout:** {_show(config.get('lora_dropout'))}",
        f"- **Target modules:** {_code(targets or info.get('target_modules'))}",
        f"- **Trained in full (modules_to_save):** {_code(full) if full else 'none'}",
        f"- **Parts:** {_parts(config)}",
        f"- **Frozen parts:** {_show(_frozen(config, info))}",
        f"- **Image tiles (max_tiles):** {_show(info.get('max_tiles'))}",
        f"- **Video frames (num_frames):** {_show(info.get('num_frames'))}",
        f"- **Training steps:** {_steps(info)}",
        "",
        *_data_results_usage(repo_id, base, "adapter", info),
    ]
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


_ANSWER = f'''
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


def _snippet(repo_id: str, base: str) -> str:
    return f'''import torch
from PIL import Image
from peft import PeftModel
from transformers import AutoModelForImageTextToText, AutoProcessor

base = AutoModelForImageTextToText.from_pretrained("{base}", dtype="auto", device_map="auto")
processor = AutoProcessor.from_pretrained("{repo_id}")
model = PeftModel.from_pretrained(base, "{repo_id}").eval()
{_ANSWER}'''


def _model_snippet(repo_id: str) -> str:
    return f'''import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

model = AutoModelForImageTextToText.from_pretrained("{repo_id}", dtype="auto", device_map="auto").eval()
processor = AutoProcessor.from_pretrained("{repo_id}")
{_ANSWER}'''


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
