"""The DPO settings plm-tune refuses before anything runs: ``trl.DPOConfig``'s own checks come late or not at all.

TRL 1.16 refuses an unknown ``loss_type`` only at the first training step (``DPOTrainer._compute_loss``), warns about
``label_smoothing`` out of range for ``robust`` and divides by ``beta`` for ``ipo`` (``trl/trainer/dpo_trainer.py``).
``PLMParser`` calls ``check_dpo_settings`` when it parses a ``DPOConfig`` (before a recipe reads its data or builds a
model), ``preference_finetune`` again for Python callers.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from plm_tune.arguments import SettingError

__all__ = ["check_dpo_settings", "dpo_loss_types"]


def dpo_loss_types() -> tuple[str, ...]:
    """The ``loss_type`` values TRL's ``DPOTrainer`` computes, as ``trl.DPOConfig.loss_type``'s help lists them
    (``'sigmoid'``, ``'hinge'``, ``'ipo'``, ...): TRL itself only refuses an unknown one at the first step."""
    from trl import DPOConfig

    help_text = next(f for f in dataclasses.fields(DPOConfig) if f.name == "loss_type").metadata.get("help", "")
    return tuple(re.findall(r"`'(\w+)'`", help_text))


def check_dpo_settings(args: Any) -> None:
    """Refuse, in one line naming each key, DPO settings that would crash a run late or train silently wrong.

    Raises:
        SettingError: ``beta`` <= 0 (the loss scales by it; IPO divides by it), a ``loss_type`` TRL does not know,
            ``label_smoothing`` outside [0, 0.5] (outside [0, 0.5) for ``robust``, 0 for ``exo_pair``).

    Example:
        >>> from trl import DPOConfig
        >>> check_dpo_settings(DPOConfig(output_dir="out", beta=0, bf16=False))
        Traceback (most recent call last):
        ...
        plm_tune.arguments.SettingError: Setting refused: beta=0 must be > 0 (DPO's inverse temperature: how far \
the tuned model may move from the reference; typical 0.1).
    """
    problems = []
    if not args.beta > 0:
        problems.append(("beta", f"beta={args.beta!r} must be > 0 (DPO's inverse temperature: how far the tuned "
                                 "model may move from the reference; typical 0.1)"))
    known = dpo_loss_types()
    unknown = [loss for loss in args.loss_type if known and loss not in known]
    if unknown:
        problems.append(("loss_type", f"loss_type={', '.join(unknown)} is not one of trl.DPOConfig's losses: "
                                      f"{', '.join(known)}"))
    smoothing, losses = args.label_smoothing, set(args.loss_type)
    if not 0 <= smoothing <= 0.5 or ("robust" in losses and smoothing == 0.5):
        problems.append(("label_smoothing", f"label_smoothing={smoothing!r} must be in [0, 0.5"
                                            f"{')' if 'robust' in losses else ']'} (the share of flipped labels)"))
    elif "exo_pair" in losses and smoothing == 0:
        problems.append(("label_smoothing", "label_smoothing=0 with loss_type exo_pair: EXO needs it > 0 (its "
                                            "paper uses 1e-3)"))
    if problems:
        label = "Setting refused" if len(problems) == 1 else "Settings refused"
        raise SettingError(tuple(key for key, _ in problems), f"{label}: " + "; ".join(t for _, t in problems) + ".")
