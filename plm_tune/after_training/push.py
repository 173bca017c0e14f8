"""Push an adapter folder to the Hugging Face Hub: check it, give it plm-tune's model card, upload an allowlist.

What goes is an allowlist (``UPLOAD_ALLOWLIST``), never "everything but": the weights (``*.safetensors``), the
adapter / model configs, the processor, tokenizer and chat-template files, the model card ``README.md`` and
``plm_tune_training.json``, all at the top of the folder; and, only when asked (``include``), the eval report
(``eval/eval.json``, ``eval/report.html``: they quote your eval data). Checkpoints (``checkpoint-*`` at any
depth), pickles, ``.env``, arrays, DICOM and data files never go, and a symlink is never followed.
``push_plan`` says what would go, without any network call (``plm-tune push --dry-run`` prints it).

The token in use (the argument, ``HF_TOKEN`` or the stored login) is never printed or logged: ``redact``
removes it, whatever its format, from every message an error raised here carries.

Example:
    >>> push_adapter("outputs/lora", "me/plm-1b-radiology-lora", private=True)   # doctest: +SKIP
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from plm_tune.after_training.model_card import is_generated_card, model_card_text
from plm_tune.modeling.run_folder import (
    EVAL_DIR,
    EVAL_JSON,
    REPORT_HTML,
    TRAINING_INFO_FILE,
    adapter_folder,
    missing_processor_files,
)

__all__ = [
    "OPTIONAL_FILES",
    "UPLOAD_ALLOWLIST",
    "PushError",
    "PushPlan",
    "files_to_upload",
    "push_adapter",
    "push_plan",
    "redact",
]

logger = logging.getLogger(__name__)

# The only files an upload carries, as fnmatch patterns on names at the top of the folder: what loading the
# adapter (or a merged / fully finetuned model) and its processor needs, the card and the training facts.
UPLOAD_ALLOWLIST = (
    "*.safetensors",  # adapter_model / model / model-0000N-of-0000M: safetensors only, never a pickle
    "model.safetensors.index.json",
    "adapter_config.json",
    "config.json",
    "generation_config.json",
    "processor_config.json",
    "preprocessor_config.json",
    "video_preprocessor_config.json",
    "tokenizer_config.json",
    "tokenizer.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "README.md",
    TRAINING_INFO_FILE,
)
# Files that go only when named in ``include``: the eval report quotes the eval data (maybe private images).
OPTIONAL_FILES = (f"{EVAL_DIR}/{EVAL_JSON}", f"{EVAL_DIR}/{REPORT_HTML}")
_CHECKPOINT = "checkpoint-*"  # a Trainer checkpoint folder, at any depth: optimizer state, never a model to share
_HUB_TOKEN = re.compile(r"hf_[A-Za-z0-9]{8,}")  # any Hub-shaped token, even one we were not told about


class PushError(RuntimeError):
    """Creating the Hub repo or uploading failed; the message is one line, names the repo and holds no token."""


@dataclass
class PushPlan:
    """What ``push_adapter`` would do, decided before any network call.

    Attributes:
        folder: the adapter folder.
        files: folder-relative POSIX paths that would be uploaded, sorted (README.md included: a push always
            publishes a card).
        left_out: files in the folder that are not on the allowlist (checkpoints, logs, data, secrets...).
        symlinks: symlinks found (never followed, never uploaded).
        card: the README.md that would be published.
        card_source: ``"plm-tune"`` (written from the run folder) or ``"yours"`` (a hand-written card, kept).
    """

    folder: Path
    files: list[str]
    left_out: list[str] = field(default_factory=list)
    symlinks: list[str] = field(default_factory=list)
    card: str = ""
    card_source: str = "plm-tune"


def files_to_upload(adapter_dir: str | Path, include: Sequence[str] = ()) -> list[str]:
    """The files ``push_adapter`` would upload from a folder, as sorted folder-relative POSIX paths.

    Only ``UPLOAD_ALLOWLIST`` names at the top of the folder (plus ``include``, which may name only
    ``OPTIONAL_FILES``); symlinks and everything under ``checkpoint-*`` are never listed. README.md is always
    listed: a push writes plm-tune's card when the folder has none.

    Raises:
        FileNotFoundError: ``adapter_dir`` is not a folder or has no ``adapter_config.json``; an ``include``
            file is missing.
        ValueError: ``include`` names a file that is not one of ``OPTIONAL_FILES``.
    """
    folder = adapter_folder(adapter_dir)
    files, _, _ = _scan(folder, _checked_include(folder, include))
    return sorted({*files, "README.md"})


def push_plan(
    adapter_dir: str | Path,
    repo_id: str,
    *,
    include: Sequence[str] = (),
    overwrite_card: bool = False,
    **card_kwargs: Any,
) -> PushPlan:
    """What ``push_adapter`` would upload and the card it would publish; writes nothing, no network.

    Arguments as in ``push_adapter``. A README.md written by a tool (peft's template, TRL's or the Trainer's
    card, an older plm-tune card: ``is_generated_card``) is replaced by plm-tune's card; a hand-written one is
    kept unless ``overwrite_card``.

    Raises:
        FileNotFoundError, ValueError: as ``push_adapter``, before any network call.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f"`repo_id` {repo_id!r} is not a Hub repo id like 'user/name': {error}") from None
    folder = adapter_folder(adapter_dir, needs_weights=True)
    missing = missing_processor_files(folder)
    if missing:
        raise FileNotFoundError(
            f"{folder} lacks {', '.join(missing)}: a Hub adapter needs its processor to be usable. "
            "Save it next to the adapter: processor.save_pretrained(DIR) (trainer.save_model does it)."
        )
    files, left_out, symlinks = _scan(folder, _checked_include(folder, include))
    linked = [name for name in symlinks if _allowed(name)]
    if linked:
        raise ValueError(
            f"{folder}: {', '.join(linked)} {'is a symlink' if len(linked) == 1 else 'are symlinks'}, which a push "
            "never follows. Copy the real file into the folder (cp -L) and push again."
        )
    readme = folder / "README.md"
    own = readme.is_file() and not readme.is_symlink() and not is_generated_card(readme.read_text(errors="replace"))
    if own and not overwrite_card:
        if card_kwargs:
            raise ValueError(
                f"{readme} is a card of your own, so {sorted(card_kwargs)} would be ignored. Pass "
                "`overwrite_card=True` to publish plm-tune's card instead, or delete it."
            )
        card, source = readme.read_text(errors="replace"), "yours"
    else:
        card, source = model_card_text(folder, repo_id=repo_id, **card_kwargs), "plm-tune"
    return PushPlan(folder, sorted({*files, "README.md"}), left_out, symlinks, card, source)


def push_adapter(
    adapter_dir: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
    include: Sequence[str] = (),
    overwrite_card: bool = False,
    **card_kwargs: Any,
) -> str:
    """Upload an adapter folder to a Hub model repo (created if needed), with plm-tune's model card.

    Before any network call the folder is checked (``push_plan``): ``adapter_config.json``,
    ``adapter_model.safetensors`` (weights saved as pickle, ``adapter_model.bin``, are refused), the tokenizer
    (``tokenizer_config.json``, ``tokenizer.json``) and processor (``processor_config.json`` or
    ``preprocessor_config.json``) files, and no allowlisted file may be a symlink. README.md becomes
    plm-tune's card (``write_model_card``) unless it is a card you wrote (kept unless ``overwrite_card``).
    Then ``HfApi(token).create_repo(exist_ok=True)`` and ``upload_folder`` of exactly the planned files
    (``files_to_upload`` lists them). The token is never printed or logged, and is removed from the messages
    of errors raised here.

    Args:
        adapter_dir: the adapter folder (``trainer.save_model``'s output).
        repo_id: ``"user/name"`` or ``"org/name"`` (CLI ``--repo-id``).
        private: create the repo private (an existing repo keeps its visibility).
        token: a Hub token with write access; default: the ``HF_TOKEN`` variable or the ``hf auth login`` one.
        commit_message: default ``"Upload PLM adapter with plm-tune"``.
        include: extra files to upload, among ``OPTIONAL_FILES`` only (the eval report: it quotes your data).
        overwrite_card: replace a README.md you wrote with plm-tune's card.
        **card_kwargs: ``write_model_card`` arguments (``base_model``, ``training``, ``metrics``,
            ``datasets``, ``tags``), used when plm-tune's card is written.

    Returns:
        The URL of the commit on the Hub.

    Raises:
        FileNotFoundError: the folder, one of the files above or an ``include`` file is missing.
        ValueError: ``repo_id`` is not a valid repo id; ``adapter_model.bin`` without safetensors; an
            ``include`` outside ``OPTIONAL_FILES``; an allowlisted file that is a symlink; ``card_kwargs`` given
            while the folder has a card of your own (they would be ignored).
        PushError: (a RuntimeError) creating the repo or uploading failed; one line, without the token.

    Example:
        >>> push_adapter("outputs/lora", "me/plm-1b-radiology-lora", private=True)   # doctest: +SKIP
    """
    import glob

    from huggingface_hub import HfApi

    plan = push_plan(adapter_dir, repo_id, include=include, overwrite_card=overwrite_card, **card_kwargs)
    if plan.card_source == "plm-tune":
        (plan.folder / "README.md").write_text(plan.card, encoding="utf-8", newline="")
    for name in plan.symlinks:
        logger.warning("Not uploaded: %s is a symlink (a push never follows one).", name)
    logger.info("Uploading %d files from %s to https://huggingface.co/%s", len(plan.files), plan.folder, repo_id)

    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=plan.folder,
            repo_type="model",
            commit_message=commit_message or "Upload PLM adapter with plm-tune",
            # Exactly the planned files: escaped, so a name is never read as a pattern.
            allow_patterns=[glob.escape(name) for name in plan.files],
        )
    except Exception as error:
        # Hub errors can echo request details, the Authorization header included; the original exception is
        # dropped (from None) so neither its message nor its traceback can carry the token into a log.
        message = " ".join(redact(f"{type(error).__name__}: {error}", token).split())
        raise PushError(
            f"Pushing {plan.folder} to {repo_id} failed: {message}. Check `repo_id`, that the token (HF_TOKEN or "
            "`hf auth login`) may write to it, and the network."
        ) from None
    url = getattr(commit, "commit_url", None) or str(commit)
    logger.info("Pushed %s: %s", repo_id, url)
    return url


def redact(text: str, token: str | None = None) -> str:
    """``text`` without any Hub token: ``token``, ``HF_TOKEN``, the stored login's, whatever their format.

    Each known token is replaced by ``***``, as typed and URL-encoded; anything shaped like a Hub token
    (``hf_`` + 8 or more letters / digits) becomes ``hf_***`` too.
    """
    for secret in _tokens_in_use(token):
        for form in {secret, quote(secret, safe="")}:
            text = text.replace(form, "***")
    return _HUB_TOKEN.sub("hf_***", text)


def _tokens_in_use(token: str | None) -> list[str]:
    """Every token a Hub call here may send: the argument, the environment and the stored logins."""
    tokens = [token, os.environ.get("HF_TOKEN"), os.environ.get("HUGGING_FACE_HUB_TOKEN")]
    try:
        from huggingface_hub import get_token
        from huggingface_hub.utils import get_stored_tokens

        tokens += [get_token(), *get_stored_tokens().values()]
    except Exception:  # an unreadable token file must not hide the error being reported
        pass
    # Longest first, so a token that contains another is replaced whole.
    return sorted({t.strip() for t in tokens if t and t.strip()}, key=len, reverse=True)


def _allowed(name: str) -> bool:
    return "/" not in name and any(fnmatch.fnmatchcase(name, pattern) for pattern in UPLOAD_ALLOWLIST)


def _checked_include(folder: Path, include: Sequence[str]) -> set[str]:
    """``include`` as folder-relative paths, each one of ``OPTIONAL_FILES`` and present."""
    chosen = {Path(name).as_posix().removeprefix("./") for name in include}
    refused = sorted(name for name in chosen if name not in OPTIONAL_FILES and not _allowed(name))
    if refused:
        raise ValueError(
            f"A push uploads only the model (weights, configs, processor files, card, {TRAINING_INFO_FILE}) and, "
            f"on request, {' / '.join(OPTIONAL_FILES)}; it will not include {', '.join(refused)}. Publish data "
            "deliberately, e.g. as a dataset repo."
        )
    for name in chosen:
        if not (folder / name).is_file():
            raise FileNotFoundError(f"`include` {name}: there is no {folder / name}.")
    return chosen


def _scan(folder: Path, include: set[str]) -> tuple[list[str], list[str], list[str]]:
    """(files to upload, files left out, symlinks) under ``folder``, walked without following symlinks."""
    files, left_out, symlinks = [], [], []
    for root, dirs, names in os.walk(folder, followlinks=False):
        here = Path(root)
        for name in [*dirs, *names]:
            path = here / name
            relative = path.relative_to(folder).as_posix()
            if path.is_symlink():
                symlinks.append(relative)
            elif name in names:
                in_checkpoint = any(fnmatch.fnmatchcase(part, _CHECKPOINT) for part in Path(relative).parts[:-1])
                wanted = _allowed(relative) or relative in include
                (files if wanted and not in_checkpoint else left_out).append(relative)
    return sorted(files), sorted(left_out), sorted(symlinks)
