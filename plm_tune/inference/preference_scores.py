"""How a model ranks the two answers of held-out preference pairs: preference accuracy and DPO's reward margins.

For a pair, ``logp`` is ``sequence_logps``' summed answer log-prob. The model prefers the chosen answer when
``logp(chosen) > logp(rejected)``; DPO's implicit reward of an answer is ``logp - logp_ref`` (times ``beta``),
and the reward margin of a pair is ``(logp(chosen) - ref(chosen)) - (logp(rejected) - ref(rejected))``: what
TRL's ``DPOTrainer`` logs as ``rewards/margins`` (over ``beta``) and ``rewards/accuracies`` (the share above 0).
"""

from __future__ import annotations

from typing import Any

import torch

from plm_tune.encoding.sequence_logps import sequence_logps

__all__ = ["pair_logps", "preference_metrics"]


@torch.no_grad()
def pair_logps(model: Any, collator: Any, samples: Any, *, batch_size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """``(chosen, rejected)`` summed answer log-probs, ``(n,)`` float32 each, for every pair of ``samples``.

    Args:
        model: a ``PerceptionLMForConditionalGeneration`` (peft-wrapped or plain), in eval mode.
        collator: a ``PLMPreferenceCollator``.
        samples: preference samples (a list or a ``datasets`` table).
        batch_size: pairs per forward.

    Example:
        >>> chosen, rejected = pair_logps(model, collator, held_out)                              # doctest: +SKIP
        >>> with model.disable_adapter():                            # the reference of a LoRA run: the base
        ...     ref_chosen, ref_rejected = pair_logps(model, collator, held_out)                  # doctest: +SKIP
    """
    device = next(model.parameters()).device
    chosen, rejected = [], []
    for start in range(0, len(samples), batch_size):
        batch = collator([samples[i] for i in range(start, min(start + batch_size, len(samples)))])
        logps = sequence_logps(model, {key: value.to(device) for key, value in batch.items()})
        first, second = logps.cpu().chunk(2)
        chosen.append(first)
        rejected.append(second)
    return torch.cat(chosen), torch.cat(rejected)


def preference_metrics(policy: tuple[torch.Tensor, torch.Tensor],
                       reference: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, float]:
    """The ranking of ``policy``'s ``(chosen, rejected)`` log-probs, and against ``reference``'s when given.

    Returns:
        ``preference_accuracy``: share of pairs with ``logp(chosen) > logp(rejected)``; ``mean_logp_gap``: mean of
        ``logp(chosen) - logp(rejected)``; with ``reference``: ``reward_accuracy`` (share of pairs with a reward
        margin above 0) and ``mean_reward_margin`` (in nats, not scaled by ``beta``).

    Example:
        >>> preference_metrics((torch.tensor([-1.0, -5.0]), torch.tensor([-2.0, -4.0])))
        {'pairs': 2, 'preference_accuracy': 0.5, 'mean_logp_gap': 0.0}
    """
    chosen, rejected = policy
    gap = chosen - rejected
    metrics = {"pairs": len(gap), "preference_accuracy": (gap > 0).float().mean().item(),
               "mean_logp_gap": gap.mean().item()}
    if reference is not None:
        margin = gap - (reference[0] - reference[1])
        metrics |= {"reward_accuracy": (margin > 0).float().mean().item(), "mean_reward_margin": margin.mean().item()}
    return metrics
