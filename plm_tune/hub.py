"""Whether a Hugging Face Hub id can be loaded, answered in seconds, before a library spends a minute retrying.

Out of reach, the Hub costs about a minute and 22 lines of ``Retrying in 8s [Retry 5/5]`` per model:
huggingface_hub retries a failed request 5 times, waiting 1, 2, 4, 8, 8 s (``utils/_http.py``:
``http_backoff(max_retries=5, base_wait_time=1, max_wait_time=8)``, on httpx ``TimeoutException`` /
``NetworkError``), and transformers asks for several files in turn (``adapter_config.json``, ``config.json``).
So every Hub load of plm-tune (``plm_tune.modeling.run_folder.check_model_path``, the ``hf`` data adapter) asks
``check_hub_access`` first:

1. ``HF_HUB_OFFLINE=1`` (``huggingface_hub.constants.HF_HUB_OFFLINE``, which ``TRANSFORMERS_OFFLINE`` sets
   too): the local cache only. A model that is not cached fails at once.
2. Otherwise one ``HEAD`` request to the endpoint (``HF_ENDPOINT``: ``constants.ENDPOINT``) through
   huggingface_hub's own client (``get_session``: the user's proxy and certificates), ``HUB_TIMEOUT_S`` at most,
   once per process. Any HTTP answer, even an error status, means the Hub is there.
3. No answer: the process goes offline (``constants.HF_HUB_OFFLINE``, which huggingface_hub's request hook and
   transformers' ``is_offline_mode`` read at each call), so a cached model loads from the cache without
   retries, and a model that is not cached fails at once.

This module imports nothing from plm-tune, so every module (and ``data_adapters``) may import it.

    >>> check_hub_access("facebook/Perception-LM-1B")       # doctest: +SKIP
    Traceback (most recent call last):
    HubUnreachableError: cannot reach the Hugging Face Hub at https://huggingface.co within 3 s ...
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from typing import Literal

__all__ = ["HUB_TIMEOUT_S", "HubUnreachableError", "check_hub_access", "go_offline", "hub_reachable", "in_hub_cache",
           "is_offline"]

logger = logging.getLogger(__name__)

HUB_TIMEOUT_S = 3.0  # seconds to wait for the endpoint's answer: a reachable Hub answers a HEAD in well under 1 s
_LOCAL_FOLDER_HINT = "(`plm-tune tiny-model DIR` makes a tiny one to try things offline)"


class HubUnreachableError(ConnectionError):
    """A Hub id that cannot be loaded here: the Hub is out of reach (or ``HF_HUB_OFFLINE=1``) and the id is not
    in the local cache. The message names the id and the fix."""

    def __init__(self, repo_id: str, *, repo_type: str = "model", offline_mode: bool) -> None:
        self.repo_id, self.repo_type, self.offline_mode = repo_id, repo_type, offline_mode
        from huggingface_hub import constants

        if offline_mode:
            reason = (f"HF_HUB_OFFLINE=1 and the {repo_type} {repo_id!r} is not in the local Hugging Face cache "
                      f"({constants.HF_HUB_CACHE})")
            fix = "unset HF_HUB_OFFLINE and connect to download it"
        else:
            reason = (f"cannot reach the Hugging Face Hub at {constants.ENDPOINT} within {HUB_TIMEOUT_S:g} s "
                      f"(offline or no network) to download the {repo_type} {repo_id!r}, and it is not in the "
                      "local cache")
            fix = "connect and run again"
        where = f"a local model folder instead {_LOCAL_FOLDER_HINT}" if repo_type == "model" else \
            "a local folder instead"
        super().__init__(f"{reason}: {fix}, or use {where}")


def is_offline() -> bool:
    """Whether huggingface_hub is in offline mode now (``HF_HUB_OFFLINE=1``, or set by ``check_hub_access``)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


@functools.lru_cache(maxsize=1)
def hub_reachable() -> bool:
    """Whether the Hub endpoint answers an HTTP request within ``HUB_TIMEOUT_S`` (asked once per process)."""
    from huggingface_hub import constants, get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=HUB_TIMEOUT_S)
    except Exception:  # noqa: BLE001 - any failure before an HTTP answer (DNS, connect, TLS, proxy, timeout):
        return False   # huggingface_hub's client is httpx2 (2.x) or httpx (1.x), so no one error class to name
    return True


def in_hub_cache(repo_id: str) -> bool:
    """Whether the model ``repo_id`` (its ``config.json``, default revision) is in the local Hub cache."""
    from huggingface_hub import try_to_load_from_cache

    # A str is the cached file's path; None (unknown) or a sentinel (known missing) means not cached.
    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def go_offline() -> None:
    """Put this process, and those it starts, in huggingface_hub's offline mode: the cache only, no requests.

    huggingface_hub's request hook (``utils/_http.py: hf_request_event_hook``) and transformers (through
    ``huggingface_hub.is_offline_mode``) read ``constants.HF_HUB_OFFLINE`` at each call; ``datasets`` copies it
    into ``datasets.config.HF_HUB_OFFLINE`` at import, so an imported ``datasets`` is told too.
    """
    from huggingface_hub import constants

    constants.HF_HUB_OFFLINE = True
    os.environ["HF_HUB_OFFLINE"] = "1"
    if "datasets.config" in sys.modules:
        sys.modules["datasets.config"].HF_HUB_OFFLINE = True


def check_hub_access(repo_id: str, *, repo_type: Literal["model", "dataset"] = "model") -> None:
    """Return when ``repo_id`` can be loaded without a minute of retries; else raise ``HubUnreachableError``.

    Call it before loading a Hub id (not a local folder). With the Hub out of reach the process goes offline
    (``go_offline``) and a cached model loads from the cache; a dataset is left to ``datasets``, which keeps its
    own cache and, offline, fails at once with ``Couldn't reach 'org/name' on the Hub``.

    Args:
        repo_id: a Hub id (``org/name``).
        repo_type: ``"model"`` (its cache is checked here) or ``"dataset"``.

    Raises:
        HubUnreachableError: a model that is not cached, with ``HF_HUB_OFFLINE=1`` or the Hub out of reach.
    """
    offline_mode = is_offline()
    if not offline_mode:
        if hub_reachable():
            return
        go_offline()
    if repo_type == "dataset":
        return
    if not in_hub_cache(repo_id):
        raise HubUnreachableError(repo_id, repo_type=repo_type, offline_mode=offline_mode)
    if not offline_mode:
        from huggingface_hub import constants

        logger.warning("The Hugging Face Hub at %s did not answer within %g s: loading %s from the local cache.",
                       constants.ENDPOINT, HUB_TIMEOUT_S, repo_id)
