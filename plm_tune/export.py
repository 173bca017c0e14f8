"""Ship a trained adapter: merge it into its base, describe it in a model card, push it to the Hub.

A plm-tune adapter folder is what ``trainer.save_model(output_dir)`` writes: ``adapter_config.json`` (with
``base_model_name_or_path``), ``adapter_model.safetensors`` (LoRA weights and the parts trained in full
through ``modules_to_save``) and the processor files (tokenizer, image processor, ``chat_template.jinja``).
peft records no trace of 4-bit training and no training settings, so whoever saves may add
``plm_tune_training.json`` (``write_training_info``): the model card and ``merge_adapter`` read it, and every
key is optional.

* ``merge_adapter``: base + adapter -> one standalone PLM folder (safetensors + processor).
* ``write_model_card``: the folder's README.md, with Hub metadata, training settings, metrics and usage.
* ``push_adapter``: check the folder, write a card if it has none, create the Hub repo and upload.

Example:
    >>> write_training_info("outputs/lora", {"method": "lora", "global_step": 200})   # doctest: +SKIP
    >>> merge_adapter("outputs/lora", "outputs/merged")                                 # doctest: +SKIP
    >>> push_adapter("outputs/lora", "me/plm-1b-radiology-lora", private=True)          # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from plm_tune.model import METHODS, _default_dtype

__all__ = [
    "TRAINING_INFO_FILE",
    "TRAINING_INFO_KEYS",
    "files_to_upload",
    "merge_adapter",
    "push_adapter",
    "read_training_info",
    "write_model_card",
    "write_training_info",
]

logger = logging.getLogger(__name__)

TRAINING_INFO_FILE = "plm_tune_training.json"
# Every key write_training_info accepts, with what it holds. A fixed set: a typo fails instead of vanishing.
TRAINING_INFO_KEYS = {
    "method": 'how it trained: "lora", "dora", "qlora" (LoRA on a 4-bit NF4 base) or "full"',
    "lora_r": "LoRA rank (adapter_config.json's r wins when both exist)",
    "lora_alpha": "LoRA alpha (adapter_config.json's lora_alpha wins when both exist)",
    "target_modules": "LoRA target modules (adapter_config.json's wins when both exist)",
    "freeze": 'frozen parts, e.g. ["vision"] (for adapters the card derives them from adapter_config.json)',
    "max_tiles": "image tiles per image the collator used",
    "num_frames": "frames per video the collator used",
    "datasets": "dataset names (Hub ids go to the card's metadata, local paths only to its text)",
    "data_mix": "{dataset name: share or weight} when several datasets were mixed",
    "max_steps": "planned optimizer steps",
    "global_step": "optimizer steps done",
    "metrics": '{name: final value}, e.g. {"train_loss": 0.41, "eval_loss": 0.52}',
}
NOT_RECORDED = "not recorded"

# Files an upload never carries: trainer checkpoints and TensorBoard logs (large, not part of the model), the
# recipes' held-out split and eval report (they hold the user's own images: publish them deliberately), and
# every pickle format (torch.save / pickle run code when loaded; training_args.bin is one). Matched by
# huggingface_hub with fnmatch on folder-relative paths, where "*" also crosses "/".
IGNORE_PATTERNS = [
    "checkpoint-*",
    "checkpoints/*",
    "runs/*",
    "eval_data/*",
    "eval/*",
    "*.bin",
    "*.pt",
    "*.pth",
    "*.pkl",
    "*.pickle",
    "*.ckpt",
]
_PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
_TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json")
_METHOD_LABELS = {
    "lora": "LoRA",
    "dora": "DoRA (weight-decomposed LoRA)",
    "qlora": "QLoRA (LoRA on a language model quantised to 4-bit NF4)",
    "full": "full finetuning",
}
# peft writes this unfilled template as README.md on every save_pretrained; it is replaced, never kept.
_PEFT_PLACEHOLDER = "# Model Card for Model ID"
_HUB_TOKEN = re.compile(r"hf_[A-Za-z0-9]{8,}")


# ---------------------------------------------------------------------------------------------- merge


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
    template (the adapter folder's when it has one, else the base's): it loads with
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

    adapter_dir = _adapter_folder(adapter_dir, needs_weights=True)
    output_dir = Path(output_dir)
    if (output_dir / "adapter_config.json").exists():
        raise ValueError(
            f"The output folder {output_dir} holds an adapter (adapter_config.json): the merged model would "
            "load as that adapter again. Pass another --output folder."
        )
    base = _base_model(adapter_dir, base_model)
    dtype = dtype or _default_dtype()
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
            "Pass --base-model (base_model=...) with the local folder or Hub id of the model it was trained "
            "on."
        ) from error
    has_processor = any((adapter_dir / name).exists() for name in _PROCESSOR_FILES)
    source = adapter_dir if has_processor else base
    try:
        processor = AutoProcessor.from_pretrained(source, trust_remote_code=False)
    except OSError as error:
        raise OSError(
            f"Could not load the processor from {source} (the adapter folder's when it has processor files, "
            f"else the base's): {error}\nSave the processor next to the adapter (processor.save_pretrained) "
            "or pass --base-model."
        ) from error

    # safe_merge: checks the merged weights for NaN / inf before anything is written.
    merged = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload(safe_merge=True)
    output_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(output_dir)  # transformers 5 writes safetensors only (no pickle option left)
    processor.save_pretrained(output_dir)  # tokenizer, image processor and chat_template.jinja
    if (adapter_dir / TRAINING_INFO_FILE).is_file():  # tiles / frames it was trained with: generate's defaults
        (output_dir / TRAINING_INFO_FILE).write_text((adapter_dir / TRAINING_INFO_FILE).read_text())
    logger.info("Merged %s into %s; saved the standalone model to %s", adapter_dir, base, output_dir)
    return output_dir


# ----------------------------------------------------------------------------------------- model card


def write_training_info(output_dir: str | Path, info: dict[str, Any]) -> Path:
    """Write ``plm_tune_training.json``: how an adapter was trained, for its model card and ``merge_adapter``.

    peft's ``adapter_config.json`` records the LoRA settings but not the method (QLoRA looks like LoRA), the
    data, the tiles / frames or the results; call this after ``trainer.save_model(output_dir)``. Every key is
    optional (the card says "not recorded" for a missing one); ``TRAINING_INFO_KEYS`` lists them:

    ``method``, ``lora_r``, ``lora_alpha``, ``target_modules``, ``freeze``, ``max_tiles``, ``num_frames``,
    ``datasets``, ``data_mix``, ``max_steps``, ``global_step``, ``metrics``.

    Args:
        output_dir: the adapter (or model) folder; it must exist.
        info: the keys above; values must be JSON-serialisable (tuples become lists). The file is replaced.

    Returns:
        The path of the written file.

    Raises:
        FileNotFoundError: ``output_dir`` does not exist.
        ValueError: an unknown key, or ``method`` not one of lora / dora / qlora / full.
        TypeError: a value JSON cannot hold.

    Example:
        >>> write_training_info(args.output_dir, {"method": "qlora", "max_tiles": 4, "num_frames": 8,
        ...     "datasets": ["unsloth/Radiology_mini"], "global_step": trainer.state.global_step,
        ...     "metrics": {"train_loss": 0.41}})                                         # doctest: +SKIP
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        raise FileNotFoundError(
            f"{output_dir} is not a folder: save the adapter there first (trainer.save_model)."
        )
    _check_training_info(info, where="write_training_info")
    path = output_dir / TRAINING_INFO_FILE
    try:
        text = json.dumps(info, indent=2, sort_keys=True)
    except TypeError as error:
        raise TypeError(f"write_training_info: every value must be JSON-serialisable ({error}).") from error
    path.write_text(text + "\n")
    return path


def write_model_card(
    adapter_dir: str | Path,
    *,
    repo_id: str,
    base_model: str | None = None,
    training: dict[str, Any] | None = None,
    metrics: dict[str, float] | None = None,
    datasets: Sequence[str] | None = None,
    tags: Sequence[str] | None = None,
) -> Path:
    """Write the adapter folder's README.md: Hub metadata, how it was trained, final metrics and usage.

    The YAML front matter has ``base_model`` (when it is a Hub id: a local path would be rejected by the Hub
    and is named in the text instead), ``library_name: peft``, ``pipeline_tag: image-text-to-text``,
    ``datasets`` (the Hub ids among them) and ``tags`` (``plm-tune``, ``perception-lm``, the method, ``lora``,
    then ``tags``). The text gives the method, LoRA rank / alpha / dropout / target modules and the parts
    trained in full (from ``adapter_config.json``), how each part of PLM trained, tiles and frames, data,
    steps, a metrics table and a Python snippet that loads the base, applies the adapter from ``repo_id`` and
    answers about an image. Training facts come from ``plm_tune_training.json`` (``write_training_info``),
    updated by ``training`` / ``metrics`` / ``datasets``; whatever is missing reads "not recorded".

    Args:
        adapter_dir: the adapter folder; README.md is (over)written there.
        repo_id: Hub repo the card describes (used in the title and the snippet), e.g. ``"me/plm-lora"``.
        base_model: base model id; default ``base_model_name_or_path`` in ``adapter_config.json``.
        training: training facts (``TRAINING_INFO_KEYS``) that update the recorded ones.
        metrics: final metrics ``{name: value}``; replace the recorded ones.
        datasets: dataset names; replace the recorded ones.
        tags: extra Hub tags.

    Returns:
        The path of README.md.

    Raises:
        FileNotFoundError: ``adapter_dir`` missing or without ``adapter_config.json``.
        ValueError: an unknown key in ``training``.

    Example:
        >>> write_model_card("outputs/lora", repo_id="me/plm-lora", metrics={"loss": 0.5})  # doctest: +SKIP
    """
    from huggingface_hub import ModelCard, ModelCardData

    adapter_dir = _adapter_folder(adapter_dir)
    config = _adapter_config(adapter_dir)
    _check_training_info(training or {}, where="write_model_card(training=...)")
    info = {**read_training_info(adapter_dir), **(training or {})}
    if metrics is not None:
        info["metrics"] = dict(metrics)
    if datasets is not None:
        info["datasets"] = [datasets] if isinstance(datasets, str) else list(datasets)
    base = base_model or config.get("base_model_name_or_path") or NOT_RECORDED
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
    path = adapter_dir / "README.md"
    ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}").save(path)
    return path


def _card_body(repo_id: str, base: str, method: str, method_recorded: bool, config: dict, info: dict) -> str:
    label = _METHOD_LABELS.get(method, method)
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
    output = model.generate(**inputs, max_new_tokens=256)
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


# ---------------------------------------------------------------------------------------------- push


def files_to_upload(adapter_dir: str | Path) -> list[str]:
    """The files ``push_adapter`` would upload from a folder now, as sorted folder-relative POSIX paths.

    Checkpoints (``checkpoint-*``, ``checkpoints/``), TensorBoard logs (``runs/``) and every pickle
    (``*.bin``, ``*.pt``, ``*.pth``, ``*.pkl``, ``*.pickle``, ``*.ckpt``, e.g. ``training_args.bin``) are left
    out, with the same patterns ``upload_folder`` gets (``IGNORE_PATTERNS``). A README.md that
    ``push_adapter`` would write first is not listed yet.

    Raises:
        FileNotFoundError: ``adapter_dir`` is not a folder or has no ``adapter_config.json``.
    """
    from huggingface_hub.utils import filter_repo_objects

    folder = _adapter_folder(adapter_dir)
    paths = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
    # upload_folder also always skips .git/ and huggingface_hub's .cache/huggingface/.
    paths = [p for p in paths if not p.startswith((".git/", ".cache/huggingface/"))]
    return sorted(filter_repo_objects(paths, ignore_patterns=IGNORE_PATTERNS))


def push_adapter(
    adapter_dir: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
    **card_kwargs: Any,
) -> str:
    """Upload an adapter folder to a Hub model repo (created if needed), with a model card.

    Before any network call the folder is checked: ``adapter_config.json``, ``adapter_model.safetensors``
    (weights saved as pickle, ``adapter_model.bin``, are refused), the tokenizer (``tokenizer_config.json``,
    ``tokenizer.json``) and processor (``processor_config.json`` or ``preprocessor_config.json``) files. When
    README.md is missing or is peft's unfilled template, ``write_model_card`` writes one; a card of your own
    is kept. Then ``HfApi(token).create_repo(exist_ok=True)`` and ``upload_folder`` with ``IGNORE_PATTERNS``
    (``files_to_upload`` lists what goes). The token is never printed or logged, and is removed from the
    messages of errors raised here.

    Args:
        adapter_dir: the adapter folder (``trainer.save_model``'s output).
        repo_id: ``"user/name"`` or ``"org/name"`` (CLI ``--repo-id``).
        private: create the repo private (an existing repo keeps its visibility).
        token: a Hub token with write access; default: the ``HF_TOKEN`` variable or the ``hf auth login`` one.
        commit_message: default ``"Upload PLM adapter with plm-tune"``.
        **card_kwargs: ``write_model_card`` arguments (``base_model``, ``training``, ``metrics``,
            ``datasets``, ``tags``), used when a card is written.

    Returns:
        The URL of the commit on the Hub.

    Raises:
        FileNotFoundError: the folder or one of the files above is missing.
        ValueError: ``repo_id`` is not a valid repo id; ``adapter_model.bin`` without safetensors;
            ``card_kwargs`` given while the folder already has its own README.md (they would be ignored).
        RuntimeError: creating the repo or uploading failed (message without the token).

    Example:
        >>> push_adapter("outputs/lora", "me/plm-1b-radiology-lora", private=True)   # doctest: +SKIP
    """
    from huggingface_hub import HfApi
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f"--repo-id {repo_id!r} is not a Hub repo id like 'user/name': {error}") from None
    adapter_dir = _adapter_folder(adapter_dir, needs_weights=True)
    missing = [name for name in _TOKENIZER_FILES if not (adapter_dir / name).exists()]
    if not any((adapter_dir / name).exists() for name in _PROCESSOR_FILES):
        missing.append(" or ".join(_PROCESSOR_FILES))
    if missing:
        raise FileNotFoundError(
            f"{adapter_dir} lacks {', '.join(missing)}: a Hub adapter needs its processor to be usable. "
            "Save it next to the adapter: processor.save_pretrained(DIR) (trainer.save_model does it)."
        )
    readme = adapter_dir / "README.md"
    if not readme.exists() or _PEFT_PLACEHOLDER in readme.read_text(errors="replace"):
        write_model_card(adapter_dir, repo_id=repo_id, **card_kwargs)
    elif card_kwargs:
        raise ValueError(
            f"{readme} is a card of your own, so {sorted(card_kwargs)} would be ignored. Delete it to get a "
            "written one, or call write_model_card(...) before pushing."
        )
    files = files_to_upload(adapter_dir)
    logger.info("Uploading %d files from %s to https://huggingface.co/%s", len(files), adapter_dir, repo_id)

    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=adapter_dir,
            repo_type="model",
            commit_message=commit_message or "Upload PLM adapter with plm-tune",
            ignore_patterns=IGNORE_PATTERNS,
        )
    except Exception as error:
        # Hub errors can echo request details; the original exception is dropped (from None) so neither its
        # message nor its traceback can carry the token into a log.
        message = _redact(f"{type(error).__name__}: {error}", token)
        raise RuntimeError(
            f"Pushing {adapter_dir} to {repo_id} failed: {message}\n"
            "Check --repo-id, that the token (HF_TOKEN or `hf auth login`) may write to it, and the network."
        ) from None
    url = getattr(commit, "commit_url", None) or str(commit)
    logger.info("Pushed %s: %s", repo_id, url)
    return url


def _redact(text: str, token: str | None) -> str:
    if token:
        text = text.replace(token, "***")
    return _HUB_TOKEN.sub("hf_***", text)


# -------------------------------------------------------------------------------------------- helpers


def _adapter_folder(adapter_dir: str | Path, *, needs_weights: bool = False) -> Path:
    """The folder as a Path, after checking it holds a peft adapter (and its safetensors weights)."""
    folder = Path(adapter_dir)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"Adapter folder {folder} does not exist: pass --adapter with a saved adapter folder."
        )
    if not (folder / "adapter_config.json").exists():
        hint = (
            " It holds a full model (config.json): it needs no merge, load it with from_pretrained."
            if (folder / "config.json").exists()
            else " Pass --adapter with the folder trainer.save_model / save_pretrained wrote."
        )
        raise FileNotFoundError(
            f"{folder} has no adapter_config.json, so it is not a peft adapter folder.{hint}"
        )
    if needs_weights and not (folder / "adapter_model.safetensors").exists():
        if (folder / "adapter_model.bin").exists():
            raise ValueError(
                f"{folder} holds adapter_model.bin, a pickle, which plm-tune neither loads nor uploads. "
                "Re-save it as safetensors: PeftModel.from_pretrained(base, DIR).save_pretrained(NEW_DIR), "
                "in a session that trusts the file."
            )
        raise FileNotFoundError(
            f"{folder} has no adapter_model.safetensors: the adapter weights are missing."
        )
    return folder


def _adapter_config(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "adapter_config.json").read_text())


def _base_model(adapter_dir: Path, base_model: str | None) -> str:
    base = base_model or _adapter_config(adapter_dir).get("base_model_name_or_path")
    if not base:
        raise ValueError(
            f"{adapter_dir}/adapter_config.json names no base_model_name_or_path: pass --base-model "
            "(base_model=...) with the model the adapter was trained on."
        )
    # A Hub id cannot start like a path; anything that does must exist here.
    if base.startswith(("/", "./", "../", "~")) and not Path(base).expanduser().exists():
        where = "--base-model" if base_model else f"{adapter_dir}/adapter_config.json"
        raise FileNotFoundError(
            f"Base model folder {base} (from {where}) does not exist. Pass --base-model (base_model=...) "
            "with the local folder or Hub id of the model the adapter was trained on."
        )
    return base


def read_training_info(folder: str | Path) -> dict[str, Any]:
    """The folder's ``plm_tune_training.json`` as a dict; empty when it has none."""
    path = Path(folder) / TRAINING_INFO_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def _check_training_info(info: dict[str, Any], *, where: str) -> None:
    unknown = sorted(set(info) - set(TRAINING_INFO_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; known keys: {', '.join(TRAINING_INFO_KEYS)}.")
    if "method" in info and info["method"] not in METHODS:
        raise ValueError(f"{where}: method must be one of {', '.join(METHODS)}; got {info['method']!r}.")


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
