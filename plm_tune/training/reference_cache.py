"""Reference log-probs of every preference pair, computed once before DPO training and cached on disk per sample.

DPO compares the policy's summed answer log-probs with the reference model's. TRL 1.16 can precompute the reference
ones (``precompute_ref_log_probs``) only for text data: ``DPOTrainer.__init__`` refuses it for a dataset with
``"images"``, and its ``_precompute_ref_logps`` maps tokenised columns that vision data never has. What its loss
reads is small (``_compute_loss`` in ``trl/trainer/dpo_trainer.py``): when the trainer's ``precompute_ref_logps``
attribute is set, it takes ``inputs["ref_chosen_logps"]`` / ``inputs["ref_rejected_logps"]`` (``(B,)``, pair order)
from the batch and runs no reference forward. ``precompute_reference`` supplies exactly that:

1. every pair is scored by TRL's own ``DPOTrainer.compute_ref_log_probs`` (the model with the adapter disabled, or
   the frozen copy; the same fused LM head, autocast and ``ld_alpha`` as the reference pass inside the loss), in
   batches of a ``PLMPreferenceCollator`` with the training collator's settings;
2. the values are stored per sample in a JSON file (no pickle), ``<folder>/<reference key>.json``, where the
   reference key fingerprints the reference model (``model_fingerprint``) and everything else that turns a sample
   into tokens and log-probs (``settings_fingerprint``), and each entry's key fingerprints the sample
   (``sample_fingerprint``): a second run finds every pair and runs no reference forward; a changed sample is
   computed again alone; another model or setting is another file;
3. the train (and eval) set is handed to the trainer as rows carrying ``ref_chosen_logps`` / ``ref_rejected_logps``,
   which ``PLMPreferenceCollator`` puts in the batch, and ``trainer.precompute_ref_logps`` is set.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from plm_tune.data.sample import sample_columns
from plm_tune.encoding.preference_collator import REFERENCE_KEYS, PLMPreferenceCollator

__all__ = ["ReferenceCache", "model_fingerprint", "precompute_reference", "sample_fingerprint",
           "settings_fingerprint"]

# The sample fields that decide a pair's tokens and pixels (plm_tune.data.preference); "id" and other metadata do not.
CONTENT_KEYS = ("messages", "chosen", "rejected", "images", "videos", "max_tiles", "num_frames")
SAMPLED_VALUES = 1024  # values per weight tensor that model_fingerprint hashes (evenly spaced over the tensor)
_SAVE_EVERY = 64  # batches between writes of the cache file, so an interrupted precompute keeps most of its work


class ReferenceCache:
    """``{sample fingerprint: (chosen, rejected)}`` of one reference model and settings, in one JSON file.

    Args:
        folder: where the cache files live (created on ``save``).
        reference_key: ``model_fingerprint`` and ``settings_fingerprint`` together; names the file.
        about: written beside the values for whoever opens the file (which model, which settings).
    """

    def __init__(self, folder: str | os.PathLike, reference_key: str, about: dict[str, Any] | None = None) -> None:
        self.path = Path(folder) / f"reference_logps-{reference_key[:24]}.json"
        self.about = about or {}
        self.values: dict[str, list[float]] = {}
        if self.path.is_file():
            self.values = json.loads(self.path.read_text())["logps"]

    def __contains__(self, key: str) -> bool:
        return key in self.values

    def __getitem__(self, key: str) -> tuple[float, float]:
        chosen, rejected = self.values[key]
        return chosen, rejected

    def __setitem__(self, key: str, logps: tuple[float, float]) -> None:
        self.values[key] = [float(logps[0]), float(logps[1])]

    def save(self) -> None:
        """Write the file atomically (a reader never sees half of it)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(json.dumps({"format": "plm-tune reference log-probs", "version": 1, **self.about,
                                       "logps": self.values}))
        os.replace(partial, self.path)


def model_fingerprint(model: Any) -> str:
    """A hash of the reference model: the base without its adapters (a PeftModel) or the model itself.

    It hashes the config (without its path), the attention kernel, and every weight's name, shape, dtype and
    ``SAMPLED_VALUES`` values evenly spaced over it. Content, not the model's path: a model moved or downloaded
    again keeps its cache, and another checkpoint at the same path (a merged adapter saved over it, a new
    download) does not reuse it. Sampled, not every value: an 8B model hashes in about a second instead of reading
    16 GB, and any training or requantisation moves sampled values; a single edited weight would go unseen.
    LoRA's own layers and ``modules_to_save`` copies are left out (the reference runs with them disabled) and
    peft's wrapper names removed, so runs of another rank or target set on the same base share the cache.
    """
    adapters = set(getattr(model, "peft_config", None) or {})
    base = model.get_base_model() if adapters else model
    config = base.config.to_dict()
    config.pop("_name_or_path", None)
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    digest.update(str(getattr(base.config, "_attn_implementation", None)).encode())
    for name, param in base.named_parameters():
        parts = name.split(".")
        if adapters & set(parts):  # lora_A.default.weight, modules_to_save.default.*: the adapter's
            continue
        name = ".".join(part for part in parts if part not in ("base_layer", "original_module"))
        flat = param.detach().reshape(-1)
        values = flat[:: max(1, flat.numel() // SAMPLED_VALUES)][:SAMPLED_VALUES]
        digest.update(f"{name}:{tuple(param.shape)}:{param.dtype}".encode())
        digest.update(values.float().cpu().numpy().tobytes())
    return digest.hexdigest()


def settings_fingerprint(collator: PLMPreferenceCollator, **scoring: Any) -> str:
    """A hash of what turns a sample into tokens and pixels (the collator's resolved settings, its processor's image
    settings and vocabulary) and of ``scoring`` (how the trainer computes the log-probs:
    autocast, ``ld_alpha``)."""
    inner = collator.collator
    tokenizer = inner.processor.tokenizer
    settings = {
        "plan": dataclasses.asdict(inner.settings), "on_too_long": inner.on_too_long,
        "pixel_dtype": str(inner.pixel_dtype), "keep_media_order": inner.encoder.keep_media_order,
        "image_processor": inner.processor.image_processor.to_dict(),
        "vocabulary": hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest(),
        "scoring": scoring,
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def sample_fingerprint(sample: dict[str, Any]) -> str:
    """A hash of a pair's ``CONTENT_KEYS``: texts as they are; media files by absolute path, size and modification
    time (not their bytes: a second run would read the whole data set again); in-memory media (PIL images, arrays,
    bytes) by their pixels or bytes.

    Raises:
        ValueError: a medium of another kind, which has no stable fingerprint.
    """
    content = {key: _canonical(sample.get(key), media=key in ("images", "videos")) for key in CONTENT_KEYS}
    for key in ("images", "videos"):
        content[key] = content[key] or None  # no key, None and [] all mean no media
    return hashlib.sha256(json.dumps(content, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:32]


def _canonical(value: Any, *, media: bool) -> Any:
    """``value`` as JSON whose text changes exactly when the value's content does (for ``sample_fingerprint``)."""
    from PIL import Image

    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str | os.PathLike):
        if media and os.path.isfile(value):
            stat = os.stat(value)
            return {"file": os.path.abspath(value), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        return os.fspath(value)
    if isinstance(value, dict):
        return {str(key): _canonical(item, media=media) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(item, media=media) for item in value]
    if isinstance(value, bytes | bytearray):
        return {"sha256": hashlib.sha256(value).hexdigest()}
    if isinstance(value, Image.Image):
        header = f"{value.mode}:{value.size}".encode()
        return {"pixels": hashlib.sha256(header + value.tobytes()).hexdigest()}
    if hasattr(value, "__array__"):  # numpy frames (T, H, W, 3), tensors
        array = value.numpy(force=True) if isinstance(value, torch.Tensor) else value.__array__()
        header = f"{array.dtype}:{array.shape}".encode()
        return {"array": hashlib.sha256(header + array.tobytes()).hexdigest()}
    raise ValueError(f"precompute_ref_log_probs: cannot fingerprint a {type(value).__name__} in a sample; give media "
                     "as paths, bytes, PIL images or arrays, or set precompute_ref_log_probs=False.")


def precompute_reference(trainer: Any, collator: PLMPreferenceCollator, train_dataset: Any, eval_dataset: Any,
                         folder: str | os.PathLike) -> dict[str, Any]:
    """Score every pair of ``train_dataset`` (and ``eval_dataset``: one set or a dict of them) with ``trainer``'s
    reference, through the cache in ``folder``, and make ``trainer`` read them from its batches.

    Args:
        trainer: a ``DPOTrainer`` built with ``precompute_ref_log_probs`` off (TRL's check) whose ``data_collator``
            is a ``PLMPreferenceCollator``; its ``train_dataset`` / ``eval_dataset`` are replaced by the samples with
            their reference values, its ``precompute_ref_logps`` set, and its ``ref_model`` (full finetuning's
            frozen copy) dropped: the loss no longer runs it.
        collator: a ``PLMPreferenceCollator`` with the trainer's settings, whose counts nobody reads (scoring must
            not count in the training collator's ``stats``).
        train_dataset, eval_dataset: the samples as given to the trainer (a list or a ``datasets.Dataset``).
        folder: where the cache files live.

    Returns:
        ``{"path": the cache file, "cached": pairs found in it, "computed": pairs scored now}``.
    """
    eval_sets = eval_dataset if isinstance(eval_dataset, dict) else {"eval": eval_dataset}
    # The main process scores and writes; the others then read every value from the file.
    with trainer.accelerator.main_process_first():
        report, train, evals = _annotate(trainer, collator, train_dataset, eval_sets, folder)
    trainer.train_dataset = train
    trainer.eval_dataset = evals if isinstance(eval_dataset, dict) else evals.get("eval")
    trainer.precompute_ref_logps = True
    if trainer.ref_model is not None:  # full finetuning: free the frozen copy (the accelerator lists it too)
        trainer.accelerator._models = [m for m in trainer.accelerator._models if m is not trainer.ref_model]
        trainer.ref_model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return report


def _annotate(trainer: Any, collator: PLMPreferenceCollator, train_dataset: Any, eval_sets: dict[str, Any],
              folder: str | os.PathLike) -> tuple[dict[str, Any], Any, dict[str, Any]]:
    """The cache report, and the train set and eval sets with their reference values."""
    reference = trainer.ref_model or trainer.model
    scoring = {"autocast": trainer.accelerator.mixed_precision, "ld_alpha": trainer.args.ld_alpha}
    key = hashlib.sha256((model_fingerprint(reference) + settings_fingerprint(collator, **scoring)).encode())
    cache = ReferenceCache(folder, key.hexdigest(), {"model": reference.config._name_or_path, "scoring": scoring})
    report = {"path": str(cache.path), "cached": 0, "computed": 0}
    score = _scorer(trainer, reference)
    sizes = trainer.args.precompute_ref_batch_size
    train = _with_reference(train_dataset, score, collator, cache, report, "train",
                            sizes or trainer.args.per_device_train_batch_size)
    evals = {name: _with_reference(dataset, score, collator, cache, report, name,
                                   sizes or trainer.args.per_device_eval_batch_size)
             for name, dataset in eval_sets.items() if dataset is not None}
    return report, train, evals


def _scorer(trainer: Any, reference: Any) -> Any:
    """batch -> ``(chosen, rejected)`` float lists: TRL's reference pass, the model in eval mode (no dropout)."""
    device = next(reference.parameters()).device

    def score(batch: dict[str, torch.Tensor]) -> tuple[list[float], list[float]]:
        training = reference.training
        reference.eval()
        try:
            chosen, rejected = trainer.compute_ref_log_probs(reference, {k: v.to(device) for k, v in batch.items()})
        finally:
            reference.train(training)
        return chosen.float().tolist(), rejected.float().tolist()

    return score


def _with_reference(samples: Any, score: Any, collator: PLMPreferenceCollator, cache: ReferenceCache,
                    report: dict[str, Any], name: str, batch_size: int) -> Any:
    """``samples`` as a ``datasets`` table whose rows carry ``ref_chosen_logps`` / ``ref_rejected_logps``, the
    values from ``cache`` or scored now (and saved). A pair the collator rejects as too long gets NaN: it is
    skipped in training too, so the value is never read."""
    import datasets
    from tqdm.auto import tqdm

    keys = [sample_fingerprint(samples[i]) for i in range(len(samples))]
    report["cached"] += sum(key in cache for key in keys)
    first: dict[str, int] = {}  # a sample given twice is scored once
    for i, key in enumerate(keys):
        if key not in cache:
            first.setdefault(key, i)
    todo = [i for i in first.values() if collator.plan(samples[i]).outcome != "rejected"]
    batches = range(0, len(todo), batch_size)
    for count, start in enumerate(tqdm(batches, desc=f"Reference log-probs ({name})", unit="batch",
                                       disable=not batches), 1):
        rows = todo[start:start + batch_size]
        for i, chosen, rejected in zip(rows, *score(collator([samples[i] for i in rows])), strict=True):
            cache[keys[i]] = (chosen, rejected)
        if count % _SAVE_EVERY == 0:
            cache.save()
    if todo:
        cache.save()
    report["computed"] += len(todo)
    values = [cache[key] if key in cache else (math.nan, math.nan) for key in keys]
    rows = datasets.Dataset.from_dict({_ROW: list(range(len(keys)))})
    return rows.with_transform(_ReferenceRows(samples, values))


_ROW = "_plm_tune_reference_row"


class _ReferenceRows:
    """``Dataset.with_transform`` function: row numbers -> the samples with their reference values (picklable)."""

    def __init__(self, samples: Any, values: list[tuple[float, float]]) -> None:
        self.samples = samples
        self.values = values

    def __call__(self, batch: dict[str, list[int]]) -> dict[str, list[Any]]:
        rows = [{**self.samples[i], **dict(zip(REFERENCE_KEYS, self.values[i], strict=True))} for i in batch[_ROW]]
        return sample_columns(rows)
