"""Preflight checks before training: see samples as the model will, and find every bad record up front.

``inspect_samples`` renders the first samples exactly as the collator formats them, trained tokens marked;
``check_dataset`` walks the whole dataset, decodes every media item, and tabulates problems by reason with
token counts against ``max_length``. Both back the ``plm-tune data inspect`` / ``data check`` commands.
"""

from __future__ import annotations

import statistics
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from plm_tune.encoding.collator import PLMCollator
from plm_tune.errors import Reason, reason_of

__all__ = ["inspect_samples", "check_dataset", "CheckResult", "render_sample"]

# Terminal highlight for trained tokens; plain markers when not writing to a terminal.
_ANSI_ON, _ANSI_OFF = "\033[1;32m", "\033[0m"
_PLAIN_ON, _PLAIN_OFF = "[[", "]]"


def _record_name(sample: dict[str, Any], index: int) -> str:
    return f"#{index}" + (f" id={sample['id']}" if sample.get("id") is not None else "")


def render_sample(collator: PLMCollator, sample: dict[str, Any], *, color: bool = False) -> tuple[str, dict[str, int]]:
    """The sample's token sequence as text, trained spans marked, media runs collapsed; plus counts."""
    encoded = collator.encode(sample)
    if encoded is None:
        return "(rejected: longer than max_length)", {}
    tok = collator.processor.tokenizer
    on, off = (_ANSI_ON, _ANSI_OFF) if color else (_PLAIN_ON, _PLAIN_OFF)
    media_ids = {collator.encoder.media_ids["image"]: "<|image|>", collator.encoder.media_ids["video"]: "<|video|>"}
    pieces: list[str] = []
    i, n = 0, len(encoded.input_ids)
    while i < n:
        token = encoded.input_ids[i]
        if token in media_ids:  # collapse a run of placeholders into one readable marker
            j = i
            while j < n and encoded.input_ids[j] == token:
                j += 1
            pieces.append(f"{media_ids[token]}x{j - i}")
            i = j
            continue
        trained = encoded.labels[i] != -100
        j = i
        while j < n and encoded.input_ids[j] not in media_ids and (encoded.labels[j] != -100) == trained:
            j += 1
        text = tok.decode(encoded.input_ids[i:j])
        pieces.append(f"{on}{text}{off}" if trained else text)
        i = j
    counts = {
        "tokens": n,
        "trained_tokens": sum(label != -100 for label in encoded.labels),
        "media_tokens": sum(t in media_ids for t in encoded.input_ids),
        "tiles": sum(t.shape[0] for t in encoded.images),
        "frames": sum(f.shape[0] for f in encoded.videos),
    }
    return "".join(pieces), counts


def inspect_samples(dataset: Iterable[dict[str, Any]], collator: PLMCollator, n: int = 5,
                    out=sys.stdout) -> None:
    """Print the first ``n`` samples as the model will see them."""
    color = hasattr(out, "isatty") and out.isatty()
    for index, sample in enumerate(dataset):
        if index >= n:
            break
        text, counts = render_sample(collator, sample, color=color)
        summary = ", ".join(f"{k}={v}" for k, v in counts.items())
        print(f"=== sample {_record_name(sample, index)}: {summary}", file=out)
        print(text, file=out)
        print(file=out)
    marker = "green" if color else f"{_PLAIN_ON}...{_PLAIN_OFF}"
    print(f"(trained tokens shown in {marker})", file=out)


@dataclass
class CheckResult:
    """Outcome of ``check_dataset``."""

    total: int = 0
    problems: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    token_counts: list[int] = field(default_factory=list)
    max_length: int | None = None
    pairs: int = 0  # preference pairs: two sequences each in token_counts

    @property
    def ok(self) -> bool:
        return not self.problems

    def add_problem(self, reason: str, record: str, max_examples: int = 5) -> None:
        self.problems[reason] += 1
        names = self.examples.setdefault(reason, [])
        if len(names) < max_examples:
            names.append(record)

    def report(self) -> str:
        lines = [f"Checked {self.total} samples: {sum(self.problems.values())} with problems."]
        if self.problems:
            lines.append(f"{'count':>7}  reason  (first records)")
            for reason, count in self.problems.most_common():
                lines.append(f"{count:>7}  {reason}  ({'; '.join(self.examples[reason])})")
        if self.token_counts:
            counts = sorted(self.token_counts)
            p95 = counts[min(len(counts) - 1, int(0.95 * len(counts)))]
            lines.append(f"Tokens per sample: min {counts[0]}, median {int(statistics.median(counts))}, "
                         f"p95 {p95}, max {counts[-1]}."
                         + (f" ({self.pairs} preference pairs: each answer's sequence counted)" if self.pairs else ""))
            if self.max_length:
                over = sum(c > self.max_length for c in counts)
                lines.append(f"{over} of {len(counts)} samples exceed max_length={self.max_length} "
                             "(trailing turns are dropped; samples whose first exchange does not fit are skipped).")
        return "\n".join(lines)


def check_dataset(dataset: Iterable[dict[str, Any]], collator: PLMCollator, *, progress: bool = True,
                  total: int | None = None) -> CheckResult:
    """Decode every media item of every sample and count problems by reason (``plm_tune.errors.Reason``, the
    codes the adapters' skip reports use; ``"invalid sample"`` for an error that carries none).

    Adapter-level skips (``dataset.skip_report``) are included, so one table shows everything wrong.
    """
    from tqdm.auto import tqdm

    from plm_tune.data.preference import is_preference_sample, pair_conversations, validate_preference_sample
    from plm_tune.data.sample import validate_sample

    result = CheckResult(max_length=collator.max_length)
    report = getattr(dataset, "skip_report", None)
    if report is not None:
        for reason, count in report.counts.items():
            result.problems[reason] += count
            result.examples[reason] = list(report.examples[reason])
    measuring = collator.settings.without_length_limit()  # the same formatting, to measure full lengths
    if total is None and hasattr(dataset, "__len__"):
        total = len(dataset)
    for index, sample in enumerate(tqdm(dataset, total=total, disable=not progress, desc="checking", unit="sample")):
        result.total += 1
        name = _record_name(sample, index)
        try:
            if is_preference_sample(sample):  # a pair: both sequences (prompt + chosen, prompt + rejected)
                validate_preference_sample(sample, decode_media=False)
                rows = pair_conversations(sample)
                result.pairs += 1
            else:
                validate_sample(sample, decode_media=False)
                rows = (sample,)
            # decodes every medium (a pair's twice: a check, not a training step)
            lengths = [len(collator.build(row, collator.plan(row, settings=measuring)).input_ids) for row in rows]
        except ValueError as err:  # the collator's and validate_sample's errors carry their cause's reason
            result.add_problem(reason_of(err) or Reason.INVALID_SAMPLE, f"{name}: {str(err)[:160]}")
            continue
        result.token_counts.extend(lengths)
    return result
