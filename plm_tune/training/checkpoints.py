"""Checkpoints that are whole, and output folders that can be written: what ``PLMTrainer.train`` checks.

transformers writes ``trainer_state.json`` last when it saves ``checkpoint-N``, so a folder without it was cut
short (a full disk, a kill mid-save). ``resume_from_checkpoint=True`` picks the newest folder whatever its
state; ``last_complete_checkpoint`` picks the newest whole one and names the others. ``write_failure`` tells a
write that failed for want of room or permission (which torch reports as an internal ``RuntimeError``) from
other errors, so that it can be said in one line.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import socket
from collections.abc import Callable
from typing import Any

__all__ = ["CheckpointWriteError", "ensure_writable", "guarded_train", "incomplete_checkpoints",
           "last_complete_checkpoint", "write_failure"]

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
