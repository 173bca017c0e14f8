"""Replace one method of a module instance, and count how the replacement handled its calls.

``plm_tune.modeling.pair_media`` and ``plm_tune.modeling.padding_free`` change what a PLM sub-module does on DPO
batches without touching its class: the replacement is bound to the instance (``types.MethodType``), so
``copy.deepcopy`` (full finetuning's frozen reference) rebinds it to the copy, which then runs with its own weights;
the instance carries a counter per outcome that tests and benchmarks read.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["wrap_method", "wrapped_calls"]


def wrap_method(module: Any, name: str, replacement: Callable[..., Any], counter: str, outcomes: Iterable[str]) -> None:
    """Bind ``replacement`` as ``module.<name>`` once (idempotent), with ``module.<counter>`` counting ``outcomes``.
    The replacement reaches the class's method as ``getattr(type(self), name)``."""
    if not hasattr(module, counter):
        setattr(module, name, types.MethodType(replacement, module))
        setattr(module, counter, dict.fromkeys(outcomes, 0))


def wrapped_calls(model: Any, counter: str, outcomes: Iterable[str]) -> dict[str, int]:
    """The ``counter`` totals over every module inside ``model``."""
    totals = dict.fromkeys(outcomes, 0)
    for module in model.modules():
        for key, count in getattr(module, counter, {}).items():
            totals[key] += count
    return totals
