"""How much plm-tune prints: one switch, ``PLM_TUNE_VERBOSE``, read here for the training log
(``plm_tune.training.quiet_log``) and the data adapters' skip summaries and reader notes alike.

An environment variable so that it reaches the data adapters and the Trainer's callbacks without being passed
through every call (and into the forked processes that build a table); the recipes' ``--verbose`` sets it.
This module imports nothing, so ``data_adapters`` may import it without the training side of plm-tune.
"""

from __future__ import annotations

import os

__all__ = ["VERBOSE_ENV", "is_verbose"]

VERBOSE_ENV = "PLM_TUNE_VERBOSE"  # "1": full Trainer log dicts, every skipped record's name, every reader note


def is_verbose() -> bool:
    """Whether ``PLM_TUNE_VERBOSE`` asks for everything (any value but "", "0", "false", "no")."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")
