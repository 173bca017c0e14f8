"""Push a trained PLM to the Hugging Face Hub: check the folder, give it plm-tune's model card, upload an allowlist.

Three kinds of folder go (``plm_tune.after_training.model_card.folder_kind``): a peft adapter, a full finetune
(``method: full``) and a merged model (``merge_adapter``). Each must be complete: its weights in safetensors
(``adapter_model.safetensors``; ``model.safetensors`` or every shard its index names), its config
(``adapter_config.json`` / ``config.json``) and the processor and tokenizer files.

What goes is an allowlist (``UPLOAD_ALLOWLIST``), never "everything but": the weights (``*.safetensors``), the
adapter / model configs, the processor, tokenizer and chat-template files, the model card ``README.md`` and
``plm_tune_training.json``, all at the top of the folder; and, only when asked (``include``), the eval report
(``eval/eval.json``, ``eval/report.html``: they quote your eval data). Checkpoints (``checkpoint-*`` at any
depth), pickles, ``.env``, arrays, DICOM and data files never go, and a symlink is never followed.
``push_plan`` says what would go, without any network call (``plm-tune push --dry-run`` prints it).
``check_push_ready`` checks a push asked for at train time (``push_to_hub``) before training starts.

The token in use (the argument, ``HF_TOKEN`` or the stored login) is never printed or logged: ``redact``
removes it, whatever its format, from every message an error raised here carries.

Example:
    >>> push_folder("outputs/lora", "me/plm-1b-radiology-lora", private=True)   # doctest: +SKIP
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from plm_tune.after_training.model_card import FolderKind, folder_kind, is_generated_card, model_card_text
from plm_tune.methods import METHODS
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
    "check_push_ready",
    "files_to_upload",
    "hub_repo_id",
    "push_adapter",
    "push_folder",
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
_WHOLE_TOKEN = re.compile(r"hf_[A-Za-z0-9]{30,}")  # a whole Hub token (hf_ + 34 characters), not a repo name
_MODEL_WEIGHTS, _MODEL_INDEX = "model.safetensors", "model.safetensors.index.json"
_MODEL_PICKLES = ("pytorch_model.bin", "pytorch_model.bin.index.json")  # torch pickles: never loaded or uploaded
_WHAT = {"adapter": "PLM adapter", "full": "fully finetuned PLM", "merged": "merged PLM"}  # commit messages


class PushError(RuntimeError):
    """Creating the Hub repo or uploading failed; the message is one line, names the repo and holds no token."""


@dataclass
class PushPlan:
    """What ``push_folder`` would do, decided before any network call.

    Attributes:
        folder: the folder to upload.
        files: folder-relative POSIX paths that would be uploaded, sorted (README.md included: a push always
            publishes a card).
        left_out: files in the folder that are not on the allowlist (checkpoints, logs, data, secrets...).
        symlinks: symlinks found (never followed, never uploaded).
        card: the README.md that would be published.
        card_source: ``"plm-tune"`` (written from the run folder) or ``"yours"`` (a hand-written card, kept).
        kind: ``"adapter"``, ``"full"`` or ``"merged"`` (``folder_kind``).
        sizes: bytes of each file in ``files`` (README.md: the card that would be published).
        stray_weights: ``*.safetensors`` files that the folder's model or adapter does not load (not
            ``adapter_model.safetensors``, ``model.safetensors`` or a shard its index names): left out, never
            uploaded; often a data file saved in the format.
    """

    folder: Path
    files: list[str]
    left_out: list[str] = field(default_factory=list)
    symlinks: list[str] = field(default_factory=list)
    card: str = ""
    card_source: str = "plm-tune"
    kind: FolderKind = "adapter"
    sizes: dict[str, int] = field(default_factory=dict)
    stray_weights: list[str] = field(default_factory=list)

    def listing(self) -> list[str]:
        """One line per file to upload with its size, then what is left out and why (``plm-tune push --dry-run``)."""
        lines = [f"  {name} ({_size(self.sizes.get(name, 0))})" for name in self.files]
        lines.append(f"  total: {_size(sum(self.sizes.values()))}")
        lines += [f"Not uploaded: {name} ({_size((self.folder / name).stat().st_size)}) is a .safetensors file "
                  f"this {self.kind} folder's {'adapter' if self.kind == 'adapter' else 'model'} does not load."
                  for name in self.stray_weights]
        return lines


def files_to_upload(folder: str | Path, include: Sequence[str] = ()) -> list[str]:
    """The files ``push_folder`` would upload from a folder, as sorted folder-relative POSIX paths.

    Only ``UPLOAD_ALLOWLIST`` names at the top of the folder (plus ``include``, which may name only
    ``OPTIONAL_FILES``); symlinks and everything under ``checkpoint-*`` are never listed. README.md is always
    listed: a push writes plm-tune's card when the folder has none.

    Raises:
        FileNotFoundError: ``folder`` is not a folder or has neither ``adapter_config.json`` nor
            ``config.json``; an ``include`` file is missing.
        ValueError: ``include`` names a file that is not one of ``OPTIONAL_FILES``.
    """
    kind = folder_kind(folder)
    folder = Path(folder)
    files, _, _, _ = _planned(folder, kind, _checked_include(folder, include))
    return sorted({*files, "README.md"})


def push_plan(
    folder: str | Path,
    repo_id: str,
    *,
    include: Sequence[str] = (),
    overwrite_card: bool = False,
    token: str | None = None,
    **card_kwargs: Any,
) -> PushPlan:
    """What ``push_folder`` would upload and the card it would publish; writes nothing, no network.

    Arguments as in ``push_folder``. The folder is checked complete (``push_folder`` says what that takes). A
    README.md written by a tool (peft's template, TRL's or the Trainer's card, an older plm-tune card:
    ``is_generated_card``) is replaced by plm-tune's card; a hand-written one is kept unless ``overwrite_card``.

    Raises:
        FileNotFoundError, ValueError: as ``push_folder``, before any network call.
    """
    _check_repo_id(repo_id, token, name="`repo_id`")
    folder, kind = _complete_folder(folder)
    files, left_out, symlinks, stray = _planned(folder, kind, _checked_include(folder, include))
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
    files = sorted({*files, "README.md"})
    sizes = {name: (folder / name).stat().st_size for name in files if name != "README.md"}
    sizes["README.md"] = len(card.encode())
    return PushPlan(folder, files, left_out, symlinks, card, source, kind, sizes, stray)


def push_folder(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    include: Sequence[str] = (),
    overwrite_card: bool = False,
    **card_kwargs: Any,
) -> str:
    """Upload an adapter, a full finetune or a merged model to a Hub model repo (created if needed), with its card.

    Before any network call the folder is checked (``push_plan``): its kind (``folder_kind``), its config
    (``adapter_config.json`` / ``config.json``), its weights in safetensors (``adapter_model.safetensors``;
    ``model.safetensors``, or ``model.safetensors.index.json`` and every shard it names; pickles such as
    ``adapter_model.bin`` / ``pytorch_model.bin`` are refused), the tokenizer (``tokenizer_config.json``,
    ``tokenizer.json``) and processor (``processor_config.json`` or ``preprocessor_config.json``) files, and
    no allowlisted file may be a symlink. README.md becomes plm-tune's card (``write_model_card``: for a model
    its snippet loads with ``AutoModelForImageTextToText``, for an adapter with ``PeftModel``) unless it is a
    card you wrote (kept unless ``overwrite_card``). Then, as ``hf upload`` does (huggingface_hub's
    ``cli/upload.py``): ``HfApi(token).create_repo(exist_ok=True)``; with ``revision``, the branch is created
    from main when ``repo_info`` finds no such revision; then ``upload_folder`` of exactly the planned files
    (``files_to_upload`` lists them). The token is never printed or logged, and is removed from the messages
    of errors raised here. ``push_adapter`` is this function under its older name.

    Args:
        folder: the adapter or model folder (``trainer.save_model``'s or ``merge_adapter``'s output).
        repo_id: ``"user/name"`` or ``"org/name"`` (CLI ``--repo-id``); a bare ``"name"`` goes to the token's
            user, as ``create_repo`` says.
        private: create the repo private (an existing repo keeps its visibility).
        token: a Hub token with write access; default: the ``HF_TOKEN`` variable or the ``hf auth login`` one.
        commit_message: default ``"Upload PLM adapter with plm-tune"`` (``fully finetuned PLM`` /
            ``merged PLM`` for the other kinds).
        revision: the branch to commit to (created from main if missing); default the main branch.
        create_pr: open a pull request against the main branch with the commit instead of committing to it
            (huggingface_hub opens it against the default branch only: not with ``revision``).
        include: extra files to upload, among ``OPTIONAL_FILES`` only (the eval report: it quotes your data).
        overwrite_card: replace a README.md you wrote with plm-tune's card.
        **card_kwargs: ``write_model_card`` arguments (``base_model``, ``training``, ``metrics``,
            ``datasets``, ``tags``), used when plm-tune's card is written.

    Returns:
        The URL of the commit on the Hub; with ``create_pr``, of the pull request.

    Raises:
        FileNotFoundError: the folder, one of the files above or an ``include`` file is missing.
        ValueError: ``repo_id`` is not a valid repo id or is a token; weights as a pickle only; an ``include``
            outside ``OPTIONAL_FILES``; an allowlisted file that is a symlink; ``card_kwargs`` given while the
            folder has a card of your own (they would be ignored); both ``revision`` and ``create_pr``.
        PushError: (a RuntimeError) creating the repo, the branch or uploading failed; one line, without the token.

    Example:
        >>> push_folder("outputs/radiology-merged", "me/plm-1b-radiology", private=True)   # doctest: +SKIP
    """
    from huggingface_hub import HfApi

    if create_pr and revision not in (None, "main"):
        raise ValueError(
            f"A pull request is always opened against the main branch (huggingface_hub's rule), so it cannot go to "
            f"{revision!r}: pass either the revision or create_pr, not both."
        )
    plan = push_plan(folder, repo_id, include=include, overwrite_card=overwrite_card, token=token, **card_kwargs)
    if plan.card_source == "plm-tune":
        (plan.folder / "README.md").write_text(plan.card, encoding="utf-8", newline="")
    for name in plan.symlinks:
        logger.warning("Not uploaded: %s is a symlink (a push never follows one).", name)
    for line in plan.listing()[len(plan.files) + 1:]:
        logger.warning("%s", line)
    logger.info("Uploading %d files (%s) from %s to https://huggingface.co/%s", len(plan.files),
                _size(sum(plan.sizes.values())), plan.folder, repo_id)

    try:
        commit, full_id = _upload(HfApi(token=token), plan, repo_id, private=private, revision=revision,
                                  create_pr=create_pr, commit_message=commit_message, card_kwargs=card_kwargs)
    except Exception as error:
        # Hub errors can echo request details, the Authorization header included; the original exception is
        # dropped (from None) so neither its message nor its traceback can carry the token into a log.
        message = " ".join(redact(f"{type(error).__name__}: {error}", token).split())
        raise PushError(
            f"Pushing {plan.folder} to {repo_id} failed: {message}. Check `repo_id`, that the token (HF_TOKEN or "
            "`hf auth login`) may write to it, and the network."
        ) from None
    url = (create_pr and getattr(commit, "pr_url", None)) or getattr(commit, "commit_url", None) or str(commit)
    logger.info("Pushed %s: %s", full_id, url)
    return url


push_adapter = push_folder  # the older name, from when only adapters could be pushed


def _upload(api: Any, plan: PushPlan, repo_id: str, *, private: bool, revision: str | None, create_pr: bool,
            commit_message: str | None, card_kwargs: dict[str, Any]) -> tuple[Any, str]:
    """Create the repo, the branch if needed, and upload the planned files: ``(CommitInfo, full repo id)``."""
    import glob

    created = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    # A bare "name" lands in the token's namespace: the card's snippet must name the full id.
    full_id = getattr(created, "repo_id", None) or repo_id
    if full_id != repo_id and plan.card_source == "plm-tune":
        card = model_card_text(plan.folder, repo_id=full_id, **card_kwargs)
        (plan.folder / "README.md").write_text(card, encoding="utf-8", newline="")
    if revision is not None and not create_pr:
        _ensure_branch(api, full_id, revision)
    commit = api.upload_folder(
        repo_id=full_id,
        folder_path=plan.folder,
        repo_type="model",
        commit_message=commit_message or f"Upload {_WHAT[plan.kind]} with plm-tune",
        revision=revision,
        create_pr=create_pr,
        # Exactly the planned files: escaped, so a name is never read as a pattern.
        allow_patterns=[glob.escape(name) for name in plan.files],
    )
    return commit, full_id


def hub_repo_id(repo_id: str | None, output_dir: str | Path | None = None) -> str:
    """The repo a train-time push goes to: ``repo_id`` (``hub_model_id``), else the output folder's name.

    The default is transformers' (``Trainer.init_hf_repo``: ``Path(output_dir).absolute().name``, created in
    the token's namespace), so that ``push_to_hub`` without ``hub_model_id`` goes where the Trainer would send it.

    Raises:
        ValueError: neither is given.
    """
    if repo_id:
        return repo_id
    if output_dir is None:
        raise ValueError("push_to_hub needs a repo: set `hub_model_id` (user/name) or `output_dir`.")
    return Path(output_dir).absolute().name


def check_push_ready(
    repo_id: str | None,
    *,
    output_dir: str | Path | None = None,
    token: str | None = None,
    method: str | None = None,
) -> str:
    """Check, before training starts and without any network call, that the push at its end can happen.

    A token must be available (``token``, else as huggingface_hub's ``get_token`` finds one: ``HF_TOKEN`` /
    ``HUGGING_FACE_HUB_TOKEN``, the ``hf auth login`` token file, or a CI's ``HF_OIDC_RESOURCE``); the Hub must
    not be switched off (``HF_HUB_OFFLINE``); the repo id (``hub_repo_id``: ``repo_id``, else the output
    folder's name) must be valid (``validate_repo_id``) and must not be a token pasted into the wrong field; and
    ``method`` must be one whose output ``push_folder`` takes (every one of ``METHODS``: an adapter or, for
    ``full``, a model). Whether the token may write to the repo only the Hub can say, at push time.

    Args:
        repo_id: ``hub_model_id``; None: the output folder's name, as transformers defaults it.
        output_dir: the run's output folder.
        token: ``hub_token``, when the config sets one.
        method: the finetuning method.

    Returns:
        The repo id the push will use.

    Raises:
        ValueError: one line with the fix; it never holds the token.

    Example:
        >>> check_push_ready("me/plm-radiology", output_dir="outputs/radiology", method="lora")  # doctest: +SKIP
        'me/plm-radiology'
    """
    from huggingface_hub import constants

    repo_id = hub_repo_id(repo_id, output_dir)
    _check_repo_id(repo_id, token, name="push_to_hub: `hub_model_id`")
    if method is not None and method not in METHODS:
        raise ValueError(f"push_to_hub: method {method!r} is none of {', '.join(METHODS)}, so nothing to push.")
    if constants.is_offline_mode():
        raise ValueError("push_to_hub with HF_HUB_OFFLINE set: the push at the end of training would fail. Unset "
                         "HF_HUB_OFFLINE, or set push_to_hub false and run `plm-tune push` later.")
    if not _token_available(token):
        raise ValueError("push_to_hub: no Hugging Face token (HF_TOKEN, `hf auth login`), so the push at the end of "
                         "training would fail. Run `hf auth login` with a write token, or set push_to_hub false.")
    return repo_id


def _token_available(token: str | None) -> bool:
    """Whether a push would have a token, found as huggingface_hub's ``get_token`` looks (utils/_auth.py), but
    without its network steps (an OIDC exchange, an OAuth refresh): set, not checked."""
    from huggingface_hub import constants

    if token and token.strip():
        return True
    if any(os.environ.get(name, "").strip() for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE")):
        return True
    try:
        return bool(Path(constants.HF_TOKEN_PATH).read_text().strip())
    except OSError:
        return False


def _check_repo_id(repo_id: str, token: str | None, *, name: str) -> None:
    """A valid Hub repo id that is not a token (``name``: how the message calls it). A token is never echoed."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    secrets = [secret for secret in _stored_tokens(token) if len(secret) >= 8]  # a short one would match names
    if any(secret in repo_id for secret in secrets) or _WHOLE_TOKEN.search(repo_id):
        raise ValueError(f"{name} holds a Hub token, not a repo id: set it to 'user/name' and keep the token in "
                         "HF_TOKEN or `hf auth login` (and revoke the token if this config was shared).")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f"{name} {redact(repo_id, token)!r} is not a Hub repo id like 'user/name': "
                         f"{redact(str(error), token)}") from None


def _complete_folder(folder: str | Path) -> tuple[Path, FolderKind]:
    """``folder`` and its kind, after checking that it holds everything loading it from the Hub takes."""
    kind = folder_kind(folder)
    folder = adapter_folder(folder, needs_weights=True) if kind == "adapter" else Path(folder)
    if kind != "adapter":
        _check_model_weights(folder)
    missing = missing_processor_files(folder)
    if missing:
        raise FileNotFoundError(
            f"{folder} lacks {', '.join(missing)}: a model on the Hub needs its processor to be usable. "
            "Save it next to the weights: processor.save_pretrained(DIR) (trainer.save_model does it)."
        )
    return folder, kind


def _check_model_weights(folder: Path) -> None:
    """A model folder's safetensors weights: ``model.safetensors``, or the index and every shard it names."""
    index = folder / _MODEL_INDEX
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text()).get("weight_map", {}).values()))
        missing = [name for name in shards if not (folder / name).is_file()]
        if missing or not shards:
            raise FileNotFoundError(
                f"{folder}: {_MODEL_INDEX} names {', '.join(missing) or 'no shard'}, which the folder lacks: copy "
                "the whole folder save_pretrained wrote."
            )
    elif not (folder / _MODEL_WEIGHTS).is_file():
        if any((folder / name).is_file() for name in _MODEL_PICKLES):
            raise ValueError(
                f"{folder} holds its weights as pytorch_model.bin, a pickle, which plm-tune neither loads nor "
                "uploads. Re-save them as safetensors: AutoModelForImageTextToText.from_pretrained(DIR)"
                ".save_pretrained(NEW_DIR), in a session that trusts the file."
            )
        raise FileNotFoundError(
            f"{folder} has config.json but no {_MODEL_WEIGHTS}: the model weights are missing. Save them with "
            "trainer.save_model(DIR) or model.save_pretrained(DIR)."
        )


def _ensure_branch(api: Any, repo_id: str, revision: str) -> None:
    """Create ``revision`` as a branch from main when the repo has no such revision, as ``hf upload --revision``
    does (huggingface_hub's cli/upload.py: ``repo_info``, then ``create_branch(exist_ok=True)``)."""
    from huggingface_hub.errors import RevisionNotFoundError

    try:
        api.repo_info(repo_id=repo_id, repo_type="model", revision=revision)
    except RevisionNotFoundError:
        logger.info("Branch %r not found in %s: creating it from main.", revision, repo_id)
        api.create_branch(repo_id=repo_id, repo_type="model", branch=revision, exist_ok=True)


def redact(text: str, token: str | None = None) -> str:
    """``text`` without any Hub token: ``token``, ``HF_TOKEN``, the stored login's, whatever their format.

    A server or proxy may echo a token in any encoding, so each known token is replaced by ``***`` as typed,
    URL-encoded (``quote`` with and without its default ``safe="/"``, ``quote_plus``, twice), as JSON or
    HTML escapes and as hex; then every word that decodes (base64 at any alignment, e.g. HTTP Basic auth's
    ``base64("user:token")``, URL / JSON / HTML escapes, hex, up to two layers) to a known token or to
    anything Hub-shaped (``hf_`` + 8 or more letters / digits) becomes ``***``; a bare Hub-shaped token
    becomes ``hf_***``. A token shorter than 4 characters is not searched for (it would match ordinary words).

    >>> redact("Authorization: Basic dXNlcjpoZl9BYmNkZWZnaDEyMzQ=")
    'Authorization: Basic ***'
    """
    secrets = [secret for secret in _tokens_in_use(token) if len(secret) >= 4]
    for secret in secrets:
        for form in sorted(_encodings(secret), key=len, reverse=True):
            text = text.replace(form, "***")
    text = _HUB_TOKEN.sub("hf_***", text)
    return _ENCODED.sub(lambda m: "***" if _reveals(m.group(0), secrets) else m.group(0), text)


# A word that may carry an encoded token: base64 (standard or URL-safe, with padding), hex, and URL, JSON
# (\u0068), Python (\x68) and HTML (&#104;) escapes. "=" and "*" are left out between words, so that
# "token=***" keeps its name and a word already redacted is not taken again.
_ENCODED = re.compile(r"(?:\\u[0-9a-fA-F]{4}|\\x[0-9a-fA-F]{2}|%[0-9a-fA-F]{2}|&#x?[0-9a-fA-F]+;|[A-Za-z0-9+/_.~-])"
                      r"{8,}={0,2}")


def _encodings(secret: str) -> set[str]:
    """The forms ``secret`` takes in URLs, JSON, HTML and hex dumps (the searched ones; ``_reveals`` decodes)."""
    import html
    from urllib.parse import quote_plus

    forms = {secret, quote(secret), quote(secret, safe=""), quote_plus(secret), quote(quote(secret, safe=""), safe=""),
             quote_plus(quote_plus(secret)), html.escape(secret), json.dumps(secret)[1:-1],
             "".join(f"\\u{ord(c):04x}" for c in secret), "".join(f"&#{ord(c)};" for c in secret),
             secret.encode().hex(), secret.encode().hex().upper()}
    forms |= {form.lower() for form in forms if "%" in form} | {_lower_percent(form) for form in forms}
    return {form for form in forms if form}


def _lower_percent(form: str) -> str:
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), form)


def _reveals(word: str, secrets: Sequence[str], depth: int = 2) -> bool:
    """Whether ``word``, decoded up to ``depth`` times, holds one of ``secrets`` or a Hub-shaped token."""
    if any(secret in word for secret in secrets) or _HUB_TOKEN.search(word):
        return True
    return depth > 0 and any(_reveals(decoded, secrets, depth - 1) for decoded in _decodings(word) if decoded != word)


def _decodings(word: str) -> set[str]:
    """What ``word`` may be an encoding of: URL, JSON / Python and HTML escapes undone, base64 at each of its
    four alignments (the token may start anywhere in ``base64(user + ":" + token)``), hex at both."""
    import base64
    import binascii
    import html
    from urllib.parse import unquote_plus

    found = {unquote_plus(word), html.unescape(word),
             re.sub(r"\\(?:u([0-9a-fA-F]{4})|x([0-9a-fA-F]{2}))", lambda m: chr(int(m.group(1) or m.group(2), 16)),
                    word)}
    standard = word.rstrip("=").replace("-", "+").replace("_", "/")
    for start in range(4):
        chunk = standard[start:]
        chunk = chunk[:-1] if len(chunk) % 4 == 1 else chunk + "=" * (-len(chunk) % 4)  # the padding it lost
        try:
            found.add(base64.b64decode(chunk, validate=True).decode("latin-1"))
        except (binascii.Error, ValueError):
            pass
    for start in range(2):
        chunk = word[start:]
        try:
            found.add(bytes.fromhex(chunk[: len(chunk) - len(chunk) % 2]).decode("latin-1"))
        except ValueError:
            pass
    return found


def _tokens_in_use(token: str | None) -> list[str]:
    """Every token a Hub call here may send: ``_stored_tokens`` and whatever ``get_token`` adds (CI, Colab)."""
    tokens = _stored_tokens(token)
    try:
        from huggingface_hub import get_token

        tokens.append(get_token() or "")
    except Exception:  # an unreadable token file must not hide the error being reported
        pass
    # Longest first, so a token that contains another is replaced whole.
    return sorted({t.strip() for t in tokens if t and t.strip()}, key=len, reverse=True)


def _stored_tokens(token: str | None) -> list[str]:
    """The argument, the environment's and the stored logins' tokens, read without any network call."""
    tokens = [token, os.environ.get("HF_TOKEN"), os.environ.get("HUGGING_FACE_HUB_TOKEN")]
    try:
        from huggingface_hub import constants
        from huggingface_hub.utils import get_stored_tokens

        path = Path(constants.HF_TOKEN_PATH)
        tokens += [path.read_text() if path.is_file() else None, *get_stored_tokens().values()]
    except Exception:  # an unreadable token file must not hide the error being reported
        pass
    return [t.strip() for t in tokens if t and t.strip()]


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


def _planned(folder: Path, kind: FolderKind, include: set[str]) -> tuple[list[str], list[str], list[str], list[str]]:
    """``_scan``'s (files, left out, symlinks) with the stray weights (``PushPlan.stray_weights``) moved from the
    files to the left-out ones, and listed fourth."""
    files, left_out, symlinks = _scan(folder, include)
    expected = _expected_weights(folder, kind)
    stray = [name for name in files if name.endswith(".safetensors") and name not in expected]
    return [name for name in files if name not in stray], sorted([*left_out, *stray]), symlinks, stray


def _expected_weights(folder: Path, kind: FolderKind) -> set[str]:
    """The safetensors files loading the folder reads: peft's ``adapter_model.safetensors`` for an adapter; for a
    model, the shards ``model.safetensors.index.json`` names, else ``model.safetensors`` (transformers'
    ``from_pretrained`` reads no other)."""
    if kind == "adapter":
        return {"adapter_model.safetensors"}
    index = folder / _MODEL_INDEX
    if index.is_file():
        try:
            return set(json.loads(index.read_text()).get("weight_map", {}).values())
        except (ValueError, AttributeError):  # _check_model_weights names the broken index
            return set()
    return {_MODEL_WEIGHTS}


def _size(size: int) -> str:
    """``1.5 GB``, ``23.4 MB``, ``512 B``: decimal units, as the Hub shows file sizes."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"
