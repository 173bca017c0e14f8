"""``plm-tune data inspect`` for preference samples: the shared prompt once, then each answer as it is trained.

Each side of a pair is the SFT sample ``pair_conversations`` makes, rendered by ``render_sample`` (the SFT
collator's formatting, trained tokens marked), so what is shown is what that formatting trains. The shared prompt
is the two renderings' common text up to the end of the last role header (``<|end_header_id|>`` and its blank
line, in PLM's template) before they differ; each answer is shown from there.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any, TextIO

from plm_tune.data.preference import pair_conversations
from plm_tune.encoding.collator import PLMCollator
from plm_tune.encoding.preflight import render_sample

__all__ = ["inspect_preference_samples", "render_pair"]

HEADER_END = "<|end_header_id|>"  # PLM's (Llama 3's) role header ends with it, then "\n\n"


def render_pair(collator: PLMCollator, sample: dict[str, Any], *, color: bool = False) -> tuple[str, str, str, str]:
    """``(prompt, chosen, rejected, counts)``: the shared prompt as text, each answer's rendering after it
    (trained tokens marked), and a line of each side's counts. The prompt is empty when the renderings share no
    role header (a side longer than ``max_length``): each side is then shown whole."""
    (chosen, chosen_counts), (rejected, rejected_counts) = (render_sample(collator, side, color=color)
                                                            for side in pair_conversations(sample))
    common = os.path.commonprefix([chosen, rejected])
    cut = common.rfind(HEADER_END)
    if cut < 0:
        cut = 0
    else:
        cut += len(HEADER_END)
        while cut < len(common) and common[cut] == "\n":
            cut += 1
    counts = "; ".join(f"{name}: " + ", ".join(f"{k}={v}" for k, v in side.items())
                       for name, side in (("chosen", chosen_counts), ("rejected", rejected_counts)))
    return chosen[:cut], chosen[cut:], rejected[cut:], counts


def inspect_preference_samples(dataset: Iterable[dict[str, Any]], collator: PLMCollator, n: int = 5,
                               out: TextIO = sys.stdout) -> None:
    """Print the first ``n`` preference samples: the prompt once, then ``chosen:`` and ``rejected:``."""
    color = hasattr(out, "isatty") and out.isatty()
    for index, sample in enumerate(dataset):
        if index >= n:
            break
        prompt, chosen, rejected, counts = render_pair(collator, sample, color=color)
        name = f"#{index}" + (f" id={sample['id']}" if sample.get("id") is not None else "")
        print(f"=== pair {name}: {counts}", file=out)
        print(prompt, end="" if prompt.endswith("\n") else "\n", file=out)  # its own blank line, as tokenised
        print(f"chosen:\n{chosen}", file=out)
        print(f"rejected:\n{rejected}", file=out)
        print(file=out)
    print("(trained tokens shown in " + ("green" if color else "[[...]]") + ")", file=out)
