"""One self-contained HTML page from a preference (DPO) evaluation: base vs tuned, the loss curve, one card a pair.

The page reads what ``eval/eval.json`` of a DPO run holds (``preference_finetune`` writes both): ``metrics`` (the
tuned model's ``preference_metrics`` against the base), ``base_metrics``, ``info["training"]`` (the run's
``plm_tune_training.json``, whose ``log_history`` draws the loss curve) and ``records``, one a held-out pair with
its answers' summed log-probs before and after training. Like ``report.py``'s page it has no external resources
(thumbnails are base64 ``data:`` URIs, CSS inline, no JavaScript).

Stable hooks for tools and tests: ``section#summary`` with ``li[data-fact=trained|data|time|change]``,
``svg#loss-curve``, ``table#preference-metrics`` with one ``tr[data-metric=NAME]`` per metric (``td.base``,
``td.tuned``), cards ``.pair[data-index=I]`` (``data-tuned-prefers=chosen|rejected``), media errors ``.media-error``.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from plm_tune.after_training.report import gallery_media
from plm_tune.after_training.report_summary import html_text, loss_curve_svg

__all__ = ["write_preference_report"]

# (metric, what it means), in the table's order.
_METRICS = (("preference_accuracy", "share of pairs where the chosen answer is the likelier one"),
            ("mean_logp_gap", "mean log p(chosen) - log p(rejected), nats"),
            ("reward_accuracy", "share of pairs whose DPO reward margin (against the base) is above 0"),
            ("mean_reward_margin", "mean DPO reward margin against the base, nats (not scaled by beta)"),
            ("pairs", "held-out pairs scored"))


def write_preference_report(evaluation: dict[str, Any], pairs: Sequence[dict[str, Any]], path: str | Path, *,
                            title: str = "plm-tune preference tuning", max_pairs: int = 50,
                            thumb_size: int = 192) -> Path:
    """Write a DPO run's held-out evaluation as one HTML file.

    Args:
        evaluation: the content of a DPO run's ``eval/eval.json`` (module docstring).
        pairs: the held-out preference samples; ``pairs[record["index"]]`` gives a card's images and videos.
        path: the ``.html`` file to write (parent folders are created).
        title: page heading.
        max_pairs: the most cards shown (the pairs in their held-out order).
        thumb_size: longest side of an image thumbnail in pixels (video frames get half of it).

    Returns:
        The path written.

    Raises:
        ValueError: ``max_pairs`` < 1 or ``thumb_size`` < 16.

    Example:
        >>> write_preference_report(json.loads(Path("out/eval/eval.json").read_text()), held_out,
        ...                         "out/eval/report.html")                                  # doctest: +SKIP
    """
    if max_pairs < 1:
        raise ValueError(f"max_pairs must be >= 1, got {max_pairs}.")
    if thumb_size < 16:
        raise ValueError(f"thumb_size must be >= 16 pixels, got {thumb_size}.")
    info = evaluation.get("info") or {}
    records = list(evaluation.get("records") or [])
    tuned, base = evaluation.get("metrics") or {}, evaluation.get("base_metrics") or {}
    cards = "".join(_card(record, pairs, thumb_size) for record in records[:max_pairs])
    shown = f"{min(len(records), max_pairs)} of {len(records)} held-out pairs"
    body = (f"<h1>{html_text(title)}</h1>{_summary(info, base, tuned)}{_metrics_table(base, tuned)}"
            f"<h2>Held-out pairs ({shown})</h2>{cards}")
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html_text(title)}</title>'
            f"<style>{_CSS}</style></head><body>{body}</body></html>\n")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def _summary(info: dict[str, Any], base: dict[str, Any], tuned: dict[str, Any]) -> str:
    """What was trained, on what, for how long, what changed; then the loss curve (facts not recorded left out)."""
    training = info.get("training") or {}
    lines = []
    trained = f"Preference-tuned (DPO, {', '.join(training.get('loss_type') or ['sigmoid'])} loss"
    trained += f", beta {training['beta']:g})" if _finite(training.get("beta")) else ")"
    trained += f" with {training['method']}" if training.get("method") else ""
    trained += f" from {info['model']}" if info.get("model") else ""
    lines.append(("trained", trained + "."))
    if training.get("train_samples") is not None:
        names = ", ".join(map(str, training.get("datasets") or []))
        lines.append(("data", f"{training['train_samples']} training pairs" + (f" from {names}" if names else "")
                      + f"; evaluated on {tuned.get('pairs', 0)} held-out pairs."))
    if training.get("global_step") is not None:
        took = f" in {training['train_seconds']:.3g} s" if _finite(training.get("train_seconds")) else ""
        lines.append(("time", f"{training['global_step']} optimizer steps{took}."))
    if _finite(base.get("preference_accuracy")) and _finite(tuned.get("preference_accuracy")):
        change = (f"Held-out preference accuracy {base['preference_accuracy']:.3g} (base) \u2192 "
                  f"{tuned['preference_accuracy']:.3g} (tuned)")
        if _finite(tuned.get("mean_reward_margin")):
            change += f"; mean reward margin {tuned['mean_reward_margin']:.3g} nats"
        lines.append(("change", change + "."))
    items = "".join(f'<li data-fact="{key}">{html_text(text)}</li>' for key, text in lines)
    return f'<section id="summary"><ul>{items}</ul>{loss_curve_svg(training.get("log_history") or [])}</section>'


def _metrics_table(base: dict[str, Any], tuned: dict[str, Any]) -> str:
    rows = []
    for name, meaning in _METRICS:
        if name not in base and name not in tuned:
            continue
        rows.append(f'<tr data-metric="{name}"><th title="{html_text(meaning)}">{name}</th>'
                    f'<td class="base">{_num(base.get(name))}</td><td class="tuned">{_num(tuned.get(name))}</td></tr>')
    return ('<table id="preference-metrics"><thead><tr><th>held-out metric</th><th>base</th><th>tuned</th></tr>'
            f'</thead><tbody>{"".join(rows)}</tbody></table>')


def _card(record: dict[str, Any], pairs: Sequence[dict[str, Any]], thumb_size: int) -> str:
    """One pair: its media, prompt, both answers, and their log-prob gap before and after training."""
    base_gap = record["base"]["chosen"] - record["base"]["rejected"]
    tuned_gap = record["tuned"]["chosen"] - record["tuned"]["rejected"]
    prefers = "chosen" if tuned_gap > 0 else "rejected"
    answers = "".join(
        f'<div class="answer {key}"><h4>{key}</h4><p>{html_text(record[key])}</p>'
        f'<p class="logp">log p: base {_num(record["base"][key])} \u2192 tuned {_num(record["tuned"][key])}</p></div>'
        for key in ("chosen", "rejected"))
    gaps = (f'<p class="gap">log p(chosen) \u2212 log p(rejected): base {_num(base_gap)} \u2192 tuned '
            f'{_num(tuned_gap)} (reward margin {_num(tuned_gap - base_gap)})</p>')
    name = f" {html_text(record['id'])}" if record.get("id") else ""
    return (f'<article class="pair" data-index="{record["index"]}" data-tuned-prefers="{prefers}">'
            f'<h3>pair {record["index"]}{name}<span class="{prefers}">tuned prefers {prefers}</span></h3>'
            f'{_media(pairs, record["index"], thumb_size)}<div class="text"><p class="prompt">'
            f'{html_text(record["prompt"])}</p>{answers}{gaps}</div></article>')


def _media(pairs: Sequence[dict[str, Any]], index: int, thumb_size: int) -> str:
    parts = []
    for thumb in gallery_media(pairs, index, thumb_size=thumb_size):
        if thumb.error is not None:
            parts.append(f'<div class="media-error" role="alert">could not show {html_text(thumb.error)}</div>')
        else:
            parts += [f'<img alt="{thumb.label}" src="{_data_uri(frame)}">' for frame in thumb.frames]
    return f'<div class="media">{"".join(parts) or "text only"}</div>'


def _data_uri(image: Any) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _num(value: Any) -> str:
    return f"{value:.4g}" if _finite(value) else "\u2014"


_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; color: #1d232a;
       margin: 0 auto; padding: 24px; max-width: 1100px; background: #f5f6f8; }
table { border-collapse: collapse; background: #fff; margin: 12px 0; }
th, td { border: 1px solid #d8dce1; padding: 4px 10px; text-align: left; } td { font-variant-numeric: tabular-nums; }
.pair { display: flex; gap: 16px; background: #fff; border: 1px solid #d8dce1; border-radius: 6px; padding: 12px;
        margin: 10px 0; flex-wrap: wrap; }
.pair h3 { flex-basis: 100%; margin: 0; font-size: 14px; display: flex; gap: 10px; }
.pair h3 .chosen { color: #1a7f37; } .pair h3 .rejected { color: #c62828; }
.media img { max-width: 192px; display: block; margin-bottom: 4px; } .text { flex: 1; min-width: 300px; }
.answer { border-left: 3px solid #9aa1aa; padding-left: 8px; margin: 6px 0; }
.answer.chosen { border-color: #1a7f37; } .answer.rejected { border-color: #c62828; }
h4 { margin: 0; font-size: 11px; text-transform: uppercase; color: #68717d; }
.logp, .gap { color: #39414b; font-size: 12px; margin: 2px 0; } .media-error { color: #c62828; }
"""
