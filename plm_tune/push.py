"""Push an adapter folder to the Hugging Face Hub: check it, write its model card if it has none, upload.

What goes: everything in the folder except ``IGNORE_PATTERNS`` (checkpoints, logs, the held-out split and eval
report, every pickle); ``files_to_upload`` lists it without any network call. The token is never printed or
logged, and is removed from the messages of errors raised here.

Example:
    >>> push_adapter("outputs/lora", "me/plm-1b-radiology-lora", private=True)   # doctest: +SKIP
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from plm_tune.model_card import write_model_card
from plm_tune.run_folder import EVAL_DATA, EVAL_DIR, adapter_folder, missing_processor_files

__all__ = ["IGNORE_PATTERNS", "files_to_upload", "push_adapter"]

logger = logging.getLogger(__name__)

# Files an upload never carries: trainer checkpoints and TensorBoard logs (large, not part of the model), the
# recipes' held-out split and eval report (they hold the user's own images: publish them deliberately), and
# every pickle format (torch.save / pickle run code when loaded; training_args.bin is one). Matched by
# huggingface_hub with fnmatch on folder-relative paths, where "*" also crosses "/".
IGNORE_PATTERNS = [
    "checkpoint-*",
    "checkpoints/*",
    "runs/*",
    f"{EVAL_DATA}/*",
    f"{EVAL_DIR}/*",
    "*.bin",
    "*.pt",
    "*.pth",
    "*.pkl",
    "*.pickle",
    "*.ckpt",
]
# peft writes this unfilled template as README.md on every save_pretrained; it is replaced, never kept.
_PEFT_PLACEHOLDER = "# Model Card for Model ID"
_HUB_TOKEN = re.compile(r"hf_[A-Za-z0-9]{8,}")


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

    folder = adapter_folder(adapter_dir)
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
    adapter_dir = adapter_folder(adapter_dir, needs_weights=True)
    missing = missing_processor_files(adapter_dir)
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
