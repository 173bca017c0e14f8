"""Checkpoints that are whole, and output folders that can be written: what ``PLMTrainer.train`` checks.

transformers writes ``trainer_state.json`` last when it saves ``checkpoint-N``, so a folder without it was cut
short (a full disk, a kill mid-save). ``resume_from_checkpoint=True`` picks the newest folder whatever its
state; ``last_complete_checkpoint`` picks the newest whole one and names the others. ``write_failure`` tells a
write that failed for want of room or permission (which torch reports as an internal ``RuntimeError``) from
other errors, so that it can be said in one line.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from plm_tune.modeling.run_folder import adapter_config, same_model, shape_differences, weight_files

__all__ = ["CheckpointWriteError", "OutputFolderError", "check_output_dir", "check_resume", "ensure_writable",
           "guarded_train", "incomplete_checkpoints", "last_complete_checkpoint", "write_failure"]

logger = logging.getLogger(__name__)

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_WRITE_ERRNOS = {errno.ENOSPC: "the disk is full", errno.EFBIG: "a file-size limit was reached",
                 errno.EDQUOT: "the disk quota is used up", errno.EROFS: "the file system is read-only"}
# What torch / safetensors say when the OS refused a write (their errors carry no errno).
_WRITE_MESSAGES = (("no space left", "the disk is full"), ("storagefull", "the disk is full"),
                   ("file too large", "a file-size limit was reached"),
                   ("filetoolarge", "a file-size limit was reached"),
                   ("read-only file system", "the file system is read-only"),
                   ("file write failed", "a file could not be written (disk full or no permission)"))


class CheckpointWriteError(OSError):
    """Training stopped because its output folder could not be written; the message is one line."""


class OutputFolderError(ValueError):
    """An output folder or checkpoint from another run setup (another method or base model); one line."""


def _checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """``(step, path)`` of every ``checkpoint-N`` folder, newest first."""
    if not os.path.isdir(output_dir):
        return []
    found = [(int(m.group(1)), os.path.join(output_dir, name)) for name in os.listdir(output_dir)
             if (m := _CHECKPOINT.match(name)) and os.path.isdir(os.path.join(output_dir, name))]
    return sorted(found, reverse=True)


def incomplete_checkpoints(output_dir: str) -> list[str]:
    """``checkpoint-N`` folders without ``trainer_state.json`` (a save that was cut short), newest first."""
    return [path for _, path in _checkpoints(output_dir)
            if not os.path.isfile(os.path.join(path, "trainer_state.json"))]


def last_complete_checkpoint(output_dir: str) -> str:
    """The newest ``checkpoint-N`` of ``output_dir`` holding ``trainer_state.json``; incomplete newer ones are
    logged by name and passed over.

    Raises:
        ValueError: no complete checkpoint (naming the incomplete ones, if any).
    """
    skipped = []
    for _, path in _checkpoints(output_dir):
        if os.path.isfile(os.path.join(path, "trainer_state.json")):
            if skipped:
                logger.warning("Resuming from %s: passed over %s, incomplete (no trainer_state.json: the save "
                               "was cut short). Delete them to free the space.", path, ", ".join(skipped))
            return path
        skipped.append(path)
    detail = f" ({', '.join(skipped)} are incomplete: no trainer_state.json)" if skipped else ""
    raise ValueError(f"resume_from_checkpoint=True but '{output_dir}' holds no complete checkpoint{detail}. "
                     "Start without resume_from_checkpoint, or point it at a checkpoint folder.")


def write_failure(error: BaseException) -> str | None:
    """Why a write failed, if ``error`` (or an error it was raised from) is the OS refusing a write; else None."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _WRITE_ERRNOS:
            return _WRITE_ERRNOS[error.errno]
        lowered = str(error).lower()
        for needle, reason in _WRITE_MESSAGES:
            if needle in lowered:
                return reason
        error = error.__cause__ or error.__context__
    return None


def _global_main_process() -> bool:
    """Rank 0 of the run, as the Trainer counts ranks (torch.distributed's rank, which torchrun, ``accelerate
    launch`` and the DeepSpeed launcher pass as ``RANK``); a process on its own is rank 0."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def ensure_writable(output_dir: str, should_save: bool | None = None) -> None:
    """Create ``output_dir`` and write a byte there, so an unwritable folder fails before training, not at the
    first save.

    Only the process that saves probes (the Trainer's own rule), so ranks sharing a folder (one node, or
    several on a shared file system) do not all write there at once; the probe file is named by host and
    process as well, so that two probes in one folder never remove each other's file.

    Args:
        output_dir: the folder the Trainer saves to.
        should_save: whether this process saves: ``TrainingArguments.should_save`` (the global main process;
            with ``save_on_each_node``, each node's local main process). None: the global main process.

    Raises:
        CheckpointWriteError: one line naming the folder and the reason.
    """
    if not (_global_main_process() if should_save is None else should_save):
        return
    probe = os.path.join(output_dir, f".plm_tune_write_test.{socket.gethostname()}.{os.getpid()}")
    blocker = next((p for p in (Path(output_dir), *Path(output_dir).parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise CheckpointWriteError(f"output_dir '{output_dir}' cannot be written: {blocker} is a file, not a folder. "
                                   "Choose another `output_dir`, or move that file away.")
    try:
        os.makedirs(output_dir, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"0")
        os.remove(probe)
    except OSError as err:
        reason = write_failure(err) or err.strerror or str(err)
        raise CheckpointWriteError(f"output_dir '{output_dir}' cannot be written: {reason}. Choose another "
                                   "`output_dir` or free / unlock this one.") from None


def guarded_train(train: Callable[..., Any], output_dir: str, resume_from_checkpoint: Any = None, *,
                  should_save: bool | None = None, **kwargs: Any) -> Any:
    """``Trainer.train`` with ``resume_from_checkpoint=True`` meaning the newest *complete* checkpoint, an
    unwritable ``output_dir`` refused before the first step (by the saving process: ``ensure_writable``'s
    ``should_save``), and a save that fails for want of room said in one line (``CheckpointWriteError``)
    instead of torch's internal error.
    """
    if resume_from_checkpoint is True:
        resume_from_checkpoint = last_complete_checkpoint(output_dir)
    ensure_writable(output_dir, should_save)
    try:
        return train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
    except Exception as err:
        reason = write_failure(err)
        if reason is None:
            raise
        partial = incomplete_checkpoints(output_dir)
        left = f" The cut-short {partial[0]} is skipped by resume_from_checkpoint=True." if partial else ""
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise CheckpointWriteError(f"Training stopped: writing to '{output_dir}' failed: {reason} ({first}).{left} "
                                   "Free space (or set save_total_limit), then resume.") from None


def _kind(method: str) -> str:
    return "full" if method == "full" else "adapter"


_KIND_WORDS = {"adapter": "an adapter (a LoRA / DoRA / QLoRA run)", "full": "a full model (a full finetune or merge)"}


def check_output_dir(output_dir: str, method: str, *, overwrite: bool = False, should_save: bool = True) -> list[str]:
    """Before anything loads: ``output_dir`` can be written (``ensure_writable``), and neither it nor its
    ``checkpoint-N`` folders hold the weights of another kind of run than ``method`` saves (a full model where an
    adapter goes, or the reverse), which would be left beside the new ones for ``push`` to upload and ``generate``
    to load. Weights of the same kind are replaced by the run's own save, so they pass.

    Args:
        output_dir: the run's folder (``SFTConfig.output_dir``).
        method: the run's method; ``"full"`` saves a full model, the others an adapter.
        overwrite: delete the other kind's weight files and checkpoints (``EvalArguments.overwrite_output_dir``),
            logging each; only where ``should_save`` (the process that saves).
        should_save: whether this process writes the folder (``TrainingArguments.should_save``).

    Returns:
        The paths deleted (empty without ``overwrite``).

    Raises:
        CheckpointWriteError: ``output_dir`` (or a folder above it) is a file, or it cannot be written.
        OutputFolderError: another kind's weights, named, without ``overwrite``.
    """
    other = "adapter" if _kind(method) == "full" else "full"
    stale = [str(path) for path in weight_files(output_dir)[other]]
    stale += [path for _, path in _checkpoints(output_dir) if weight_files(path)[other]]
    if stale and not overwrite:
        names = ", ".join(os.path.basename(path) for path in stale[:6]) + (" ..." if len(stale) > 6 else "")
        raise OutputFolderError(
            f"output_dir '{output_dir}' holds {_KIND_WORDS[other]} from an earlier run ({names}), and this "
            f"method={method} run saves {_KIND_WORDS[_kind(method)]}: both would be left there. Choose another "
            "`output_dir`, or set overwrite_output_dir: true to delete those files.")
    if not should_save:
        return []
    ensure_writable(output_dir, should_save)
    for path in stale:
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        logger.warning("overwrite_output_dir: deleted %s (%s, not what a method=%s run saves).", path,
                       _KIND_WORDS[other], method)
    return stale


def check_resume(checkpoint: str, *, method: str, base: str, lora_r: int | None = None,
                 base_config: dict[str, Any] | None = None) -> None:
    """Refuse, in one line, to resume from a checkpoint another run setup wrote: another kind of method (an adapter
    into a full finetune, or the reverse), an adapter of another base model, rank or DoRA-ness, or a full model whose
    sizes differ from the base's ``config.json``. Without this, the Trainer loads it and fails on a tensor shape, or
    trains an adapter on a base it was not trained on without a word.

    Args:
        checkpoint: the ``checkpoint-N`` folder (``resume_from_checkpoint``; ``True`` resolved first).
        method, base, lora_r: the run's ``ModelArguments.method``, ``model_name_or_path`` and ``lora_r``.
        base_config: the base's ``config.json`` as a dict, when at hand (sizes are compared for a full checkpoint).

    Raises:
        OutputFolderError: naming the checkpoint, what it holds and the setting to change.
    """
    weights = weight_files(checkpoint)
    found = "adapter" if weights["adapter"] else "full" if weights["full"] else None
    fix = "or start without resume_from_checkpoint"
    if found is None:
        return  # not a checkpoint of weights: the Trainer says so
    if found != _kind(method):
        raise OutputFolderError(f"resume_from_checkpoint '{checkpoint}' holds {_KIND_WORDS[found]}, but method is "
                                f"{method}: set method to the one it was trained with, {fix}.")
    if found == "adapter":
        config = adapter_config(checkpoint)
        recorded = config.get("base_model_name_or_path")
        if recorded and not same_model(recorded, base):
            raise OutputFolderError(f"resume_from_checkpoint '{checkpoint}' is an adapter of base model {recorded}, "
                                    f"but model_name_or_path is {base}: set model_name_or_path to {recorded}, {fix}.")
        if lora_r is not None and config.get("r", lora_r) != lora_r:
            raise OutputFolderError(f"resume_from_checkpoint '{checkpoint}' is a rank {config['r']} adapter, but "
                                    f"lora_r is {lora_r}: set lora_r to {config['r']}, {fix}.")
        if bool(config.get("use_dora")) != (method == "dora"):
            raise OutputFolderError(f"resume_from_checkpoint '{checkpoint}' is a "
                                    f"{'DoRA' if config.get('use_dora') else 'LoRA'} adapter, but method is {method}: "
                                    f"set method to {'dora' if config.get('use_dora') else 'lora'}, {fix}.")
    elif base_config is not None:
        sizes = shape_differences(json.loads((Path(checkpoint) / "config.json").read_text()), base_config)
        if sizes:
            raise OutputFolderError(f"resume_from_checkpoint '{checkpoint}' is a model of other sizes than "
                                    f"model_name_or_path {base} ({'; '.join(sizes[:3])}, checkpoint vs base): "
                                    f"set model_name_or_path to the model it was trained from, {fix}.")
