"""A run folder: what a finished training run leaves on disk, its file names and what can be read from it.

Every module that writes or reads a run folder asks this one: ``finish_run`` writes it, ``merge_adapter``,
``write_model_card``, ``push_adapter``, ``load_for_inference`` and the ``plm-tune`` after-training commands read
it. The layout (``finish_run`` makes all of it; ``trainer.save_model`` alone makes the first two lines)::

    output_dir/
        adapter_config.json, adapter_model.safetensors   an adapter (peft); or config.json + model.safetensors
        processor / tokenizer files, chat_template.jinja  processor_config.json or preprocessor_config.json,
                                                          tokenizer_config.json, tokenizer.json
        plm_tune_training.json     how it was trained (write_training_info; every key optional)
        eval_data/                 the held-out split, a ``datasets`` table (`plm-tune eval --adapter` reuses it)
        eval/eval.json             answers, references and scores of the finetuned (and base) model
        eval/report.html           the same as a self-contained page

peft's ``adapter_config.json`` names the base model (``base_model_name_or_path``) and the LoRA settings but not
QLoRA's 4-bit base, the data, the tiles / frames or the results: ``plm_tune_training.json`` records those.

Example:
    >>> recorded_base_model("outputs/radiology-lora")                 # doctest: +SKIP
    'facebook/Perception-LM-1B'
    >>> read_training_info("outputs/radiology-lora")["max_tiles"]     # doctest: +SKIP
    4
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from plm_tune.hub import check_hub_access
from plm_tune.methods import METHODS, methods_help

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "EVAL_DATA",
    "EVAL_DIR",
    "EVAL_JSON",
    "PROCESSOR_FILES",
    "REPORT_HTML",
    "TOKENIZER_FILES",
    "TRAINING_INFO_FILE",
    "TRAINING_INFO_KEYS",
    "adapter_config",
    "adapter_folder",
    "check_model_path",
    "check_training_info",
    "has_processor",
    "is_adapter",
    "looks_local",
    "missing_processor_files",
    "read_training_info",
    "recorded_base_model",
    "resolve_base_model",
    "run_path",
    "same_model",
    "shape_differences",
    "weight_files",
    "write_training_info",
]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_PICKLE = "adapter_model.bin"  # peft's pickle format: refused, never loaded or uploaded
MODEL_CONFIG = "config.json"  # a full model (a merge or a full finetune)
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")  # either one makes a processor
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json")  # both are needed
TRAINING_INFO_FILE = "plm_tune_training.json"
EVAL_DATA = "eval_data"  # the recipes save their held-out split here
EVAL_DIR = "eval"
EVAL_JSON = "eval.json"
REPORT_HTML = "report.html"

# Every key write_training_info accepts, with what it holds. A fixed set: a typo fails instead of vanishing.
TRAINING_INFO_KEYS = {
    "method": f"how it trained: {methods_help()}",
    "base_model": "the model training started from (a merge records the base it merged into: config.json does not)",
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
    "train_samples": "samples in the training set",
    "eval_samples": "samples in the held-out split",
    "train_seconds": "wall-clock seconds of trainer.train()",
    "eval_max_new_tokens": "longest generated eval answer (plm-tune eval reuses it, so its scores match)",
    "log_history": 'the loss curve: [{"step": 5, "loss": 6.1}, {"step": 5, "eval_loss": 6.3}, ...]',
    "objective": '"dpo" for preference tuning (trl.DPOTrainer); unset: supervised finetuning',
    "beta": "DPO's beta (trl.DPOConfig.beta): how far the tuned model may move from the reference",
    "loss_type": 'DPO loss(es), trl.DPOConfig.loss_type: e.g. ["sigmoid"]',
}
CHECKPOINT_PREFIX = "checkpoint-"  # the Trainer's checkpoint-<step> folders inside a run folder


# ------------------------------------------------------------------------------------ what a folder holds


def is_adapter(folder: str | Path) -> bool:
    """Whether ``folder`` holds a peft adapter (an ``adapter_config.json``), not a full model."""
    return (Path(folder) / ADAPTER_CONFIG).is_file()


def has_processor(folder: str | Path) -> bool:
    """Whether ``folder`` holds a saved processor (``processor_config.json`` or ``preprocessor_config.json``)."""
    return any((Path(folder) / name).is_file() for name in PROCESSOR_FILES)


def missing_processor_files(folder: str | Path) -> list[str]:
    """The tokenizer / processor files ``folder`` lacks, by name (``"a or b"`` where either one is enough)."""
    missing = [name for name in TOKENIZER_FILES if not (Path(folder) / name).exists()]
    if not has_processor(folder):
        missing.append(" or ".join(PROCESSOR_FILES))
    return missing


def adapter_folder(folder: str | Path, *, needs_weights: bool = False) -> Path:
    """``folder`` as a Path, after checking that it holds a peft adapter (and, if asked, its safetensors weights).

    Raises:
        FileNotFoundError: ``folder`` is not a folder, has no ``adapter_config.json`` (the message says when it
            holds a full model instead) or, with ``needs_weights``, no ``adapter_model.safetensors``.
        ValueError: with ``needs_weights``, the weights are only in ``adapter_model.bin`` (a pickle).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"Adapter folder {folder} does not exist: pass `adapter_dir` with a saved adapter folder."
        )
    if not (folder / ADAPTER_CONFIG).exists():
        hint = (
            " It holds a full model (config.json): it needs no merge, load it with from_pretrained."
            if (folder / MODEL_CONFIG).exists()
            else " Pass `adapter_dir` with the folder trainer.save_model / save_pretrained wrote."
        )
        raise FileNotFoundError(
            f"{folder} has no {ADAPTER_CONFIG}, so it is not a peft adapter folder.{hint}"
        )
    if needs_weights and not (folder / ADAPTER_WEIGHTS).exists():
        if (folder / ADAPTER_PICKLE).exists():
            raise ValueError(
                f"{folder} holds {ADAPTER_PICKLE}, a pickle, which plm-tune neither loads nor uploads. "
                "Re-save it as safetensors: PeftModel.from_pretrained(base, DIR).save_pretrained(NEW_DIR), "
                "in a session that trusts the file."
            )
        raise FileNotFoundError(
            f"{folder} has no {ADAPTER_WEIGHTS}: the adapter weights are missing."
        )
    return folder


def adapter_config(folder: str | Path) -> dict[str, Any]:
    """The folder's ``adapter_config.json`` as a dict (check the folder with ``adapter_folder`` first)."""
    return json.loads((Path(folder) / ADAPTER_CONFIG).read_text())


def weight_files(folder: str | Path) -> dict[str, list[Path]]:
    """The saved weights in ``folder`` itself (not its subfolders), by the kind of run that writes them:
    ``"adapter"`` (peft's config and weights: the LoRA methods) and ``"full"`` (transformers' config, generation
    config and weights, one file or shards with their index: a full finetune or a merge)."""
    folder = Path(folder)
    if not folder.is_dir():
        return {"adapter": [], "full": []}
    names = {ADAPTER_CONFIG, ADAPTER_WEIGHTS, ADAPTER_PICKLE}
    adapter = sorted(path for path in folder.iterdir() if path.name in names and path.is_file())
    full = sorted(path for path in folder.iterdir() if path.is_file() and (
        path.name in (MODEL_CONFIG, "generation_config.json", "model.safetensors.index.json",
                      "pytorch_model.bin.index.json")
        or re.fullmatch(r"(model|pytorch_model)(-\d+-of-\d+)?\.(safetensors|bin)", path.name)))
    return {"adapter": adapter, "full": full}


# ------------------------------------------------------------------------------------------ base model


def same_model(first: str | Path, second: str | Path) -> bool:
    """Whether two model names mean the same model: the same text, or local folders that are the same folder."""
    if str(first).rstrip("/") == str(second).rstrip("/"):
        return True
    a, b = Path(str(first)).expanduser(), Path(str(second)).expanduser()
    return a.exists() and b.exists() and a.resolve() == b.resolve()


_SHAPE_WORDS = ("size", "layers", "heads", "dim", "vocab", "depth", "width", "patch")


def shape_differences(first: dict[str, Any], second: dict[str, Any], prefix: str = "") -> list[str]:
    """The sizes two ``config.json`` dicts disagree on (``"text_config.hidden_size 64 vs 96"``): any whole number
    whose key names a size, depth, head count, dimension or vocabulary, at any depth."""
    found = []
    for key in sorted(set(first) & set(second)):
        a, b = first[key], second[key]
        if isinstance(a, dict) and isinstance(b, dict):
            found += shape_differences(a, b, f"{prefix}{key}.")
        elif (isinstance(a, int) and isinstance(b, int) and not isinstance(a, bool) and a != b
              and any(word in key for word in _SHAPE_WORDS)):
            found.append(f"{prefix}{key} {a} vs {b}")
    return found


def recorded_base_model(folder: str | Path | None) -> str | None:
    """The base model an adapter folder was trained on (``base_model_name_or_path`` in its
    ``adapter_config.json``); None for no folder, a folder without an adapter, or an adapter that names none."""
    if folder is None or not is_adapter(folder):
        return None
    return adapter_config(folder).get("base_model_name_or_path") or None


def resolve_base_model(folder: str | Path, override: str | None = None) -> str:
    """The base model to load under the adapter in ``folder``: ``override`` if given, else the one it names.

    Args:
        folder: an adapter folder (checked with ``adapter_folder``).
        override: a Hub id or local folder given by the user (CLI ``--base-model``, ``base_model=...``).

    Raises:
        ValueError: neither ``override`` nor ``adapter_config.json`` names a base.
        FileNotFoundError: the base looks like a local path (``looks_local``) that does not exist here.
    """
    base = override or recorded_base_model(folder)
    if not base:
        raise ValueError(
            f"{folder}/{ADAPTER_CONFIG} names no base_model_name_or_path: pass `base_model` "
            "with the model the adapter was trained on."
        )
    if looks_local(base) and not Path(base).expanduser().exists():
        where = "`base_model`" if override else f"{folder}/{ADAPTER_CONFIG}"
        raise FileNotFoundError(
            f"Base model folder {base} (from {where}) does not exist. Pass `base_model` "
            "with the local folder or Hub id of the model the adapter was trained on."
        )
    return base


def looks_local(name_or_path: str | Path) -> bool:
    """Whether a model name is meant as a folder on this machine rather than a Hub id (``org/name``).

    It is when it exists, starts with ``.``, ``/`` or ``~`` (no Hub id does), has more than one ``/`` (a Hub id
    has one), or its parent folder exists (``outputs/my-photo`` when ``outputs/`` does).
    """
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.exists() or text.startswith((".", "/", "~")) or text.count("/") > 1:
        return True
    return "/" in text and path.parent.is_dir()


def check_model_path(name_or_path: str | Path) -> None:
    """Check a model name before anything loads it: a local path must exist, a Hub id must be loadable now.

    Without it, a typo'd folder is taken for a Hub id, and a Hub id out of reach costs a minute of retries:
    then a message about the network or about repo-id characters that never says what to do.

    Raises:
        FileNotFoundError: ``name_or_path`` looks local (``looks_local``) but is no folder here: "no such folder:
            X", with the nearest existing parent.
        plm_tune.hub.HubUnreachableError: a Hub id that is not cached, with the Hub out of reach or
            ``HF_HUB_OFFLINE=1`` (``plm_tune.hub.check_hub_access``, which also puts the process offline when
            the Hub does not answer, so that a cached model loads without retries).
    """
    path = Path(str(name_or_path)).expanduser()
    if path.exists():
        return
    if not looks_local(name_or_path):
        check_hub_access(str(name_or_path))
        return
    parent = next((p for p in path.parents if p.is_dir()), Path("."))
    where = "the current folder" if parent == Path(".") else str(parent)
    raise FileNotFoundError(
        f"no such folder: {name_or_path} (it looks like a local path, not a Hub id like org/name; "
        f"{where} has no {path.relative_to(parent).parts[0]})"
    )


# --------------------------------------------------------------------------------------- training info


def read_training_info(folder: str | Path) -> dict[str, Any]:
    """The folder's ``plm_tune_training.json`` as a dict; empty when it has none.

    A Trainer checkpoint (``RUN/checkpoint-200``) has none of its own: its run's file, in the parent folder, is
    read instead, so that a checkpoint is answered and evaluated with the tiles / frames it was trained with.
    """
    path = run_path(folder, TRAINING_INFO_FILE)
    return json.loads(path.read_text()) if path.exists() else {}


def run_path(folder: str | Path, name: str) -> Path:
    """``folder / name``; for a Trainer checkpoint (``RUN/checkpoint-200``) lacking it, its run's ``RUN / name``.

    A checkpoint holds the adapter at that step, but the run's ``plm_tune_training.json`` and ``eval_data/``
    are written once, in the run folder above it.
    """
    folder = Path(folder)
    path = folder / name
    if not path.exists() and folder.name.startswith(CHECKPOINT_PREFIX) and (folder.parent / name).exists():
        return folder.parent / name
    return path


def write_training_info(output_dir: str | Path, info: dict[str, Any]) -> Path:
    """Write ``plm_tune_training.json``: how an adapter was trained, for its model card and ``merge_adapter``.

    peft's ``adapter_config.json`` records the LoRA settings but not the method (QLoRA looks like LoRA), the
    data, the tiles / frames or the results; call this after ``trainer.save_model(output_dir)``. Every key is
    optional (the card says "not recorded" for a missing one); ``TRAINING_INFO_KEYS`` lists them:

    ``method``, ``base_model``, ``lora_r``, ``lora_alpha``, ``target_modules``, ``freeze``, ``max_tiles``, ``num_frames``,
    ``datasets``, ``data_mix``, ``max_steps``, ``global_step``, ``metrics``, ``train_samples``, ``eval_samples``,
    ``train_seconds``, ``eval_max_new_tokens``, ``log_history``, ``objective``, ``beta``, ``loss_type``.

    Args:
        output_dir: the adapter (or model) folder; it must exist.
        info: the keys above; values must be JSON-serialisable (tuples become lists). The file is replaced.

    Returns:
        The path of the written file.

    Raises:
        FileNotFoundError: ``output_dir`` does not exist.
        ValueError: an unknown key, or ``method`` not one of ``METHODS``.
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
    check_training_info(info, where="write_training_info")
    path = output_dir / TRAINING_INFO_FILE
    try:
        text = json.dumps(info, indent=2, sort_keys=True)
    except TypeError as error:
        raise TypeError(f"write_training_info: every value must be JSON-serialisable ({error}).") from error
    path.write_text(text + "\n")
    return path


def check_training_info(info: dict[str, Any], *, where: str) -> None:
    """Raise ValueError, naming ``where``, for a key outside ``TRAINING_INFO_KEYS`` or an unknown ``method``."""

    unknown = sorted(set(info) - set(TRAINING_INFO_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; known keys: {', '.join(TRAINING_INFO_KEYS)}.")
    if "method" in info and info["method"] not in METHODS:
        raise ValueError(f"{where}: method must be one of {', '.join(METHODS)}; got {info['method']!r}.")
