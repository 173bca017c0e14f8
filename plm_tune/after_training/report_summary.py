"""The top of the HTML report: what was trained, on what, for how long and what changed, and the loss curve.

Both are read from an ``EvalResult``'s ``info``: ``info["training"]`` is the run's ``plm_tune_training.json``
(``finish_run`` and ``plm-tune eval`` put it there), whose ``log_history`` holds the losses the Trainer logged.
The curve is an inline SVG (no JavaScript, no external file). ``html_text`` is the report's one way to put
text into the page: escaped for HTML, with control characters (a random model's answers contain them) shown
as ``\\x07``-style escapes instead of reaching the page raw.
"""

from __future__ import annotations

import html
import math
import re
from typing import Any

from plm_tune.methods import METHOD_WORDS

__all__ = ["html_text", "loss_curve_svg", "summary_html"]

# C0 controls except tab / newline / carriage return, DEL and the C1 controls: invisible or invalid in HTML.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# The headline score of "what changed", first present wins: the ones a reader grasps without a definition.
_HEADLINE = ("accuracy", "exact_match", "rouge_l", "corpus_bleu")


def html_text(value: Any) -> str:
    """``value`` as HTML text: escaped (quotes included), control characters written as visible escapes."""
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(value))
    return html.escape(text, quote=True)


def summary_html(info: dict[str, Any], metrics: dict[str, float], base_metrics: dict[str, float] | None,
                 baseline: tuple[str, float] | None = None) -> str:
    """Up to four sentences (trained / data / time / change) as ``<section id="summary">``; facts the run did not
    record are left out rather than guessed. ``baseline``: ``(most common reference, its exact-match share)``."""
    training = info.get("training") or {}
    lines = []
    fallback = "an adapter" if info.get("adapter") else "the model"
    method = METHOD_WORDS[training["method"]].trained if training.get("method") in METHOD_WORDS else fallback
    trained = f"Trained {method}"
    if info.get("model"):
        trained += f" on {info['model']}"
    if info.get("adapter"):
        trained += f", saved in {info['adapter']}"
    lines.append(("trained", trained + "."))
    data = []
    if training.get("train_samples") is not None:
        names = ", ".join(map(str, training.get("datasets") or []))
        data.append(f"{training['train_samples']} training samples" + (f" from {names}" if names else ""))
    data.append(f"evaluated on {info.get('answered', info.get('samples', 0))} held-out samples")
    lines.append(("data", "; ".join(data).capitalize() + "."))
    if training.get("global_step") is not None:
        took = f" in {_duration(training['train_seconds'])}" if training.get("train_seconds") is not None else ""
        lines.append(("time", f"{training['global_step']} optimizer steps{took}."))
    changes = []
    for name in [next((m for m in _HEADLINE if m in metrics), None), "eval_loss"]:
        if name is None or not _finite(metrics.get(name)):
            continue
        before = (base_metrics or {}).get(name)
        changes.append(f"{name} {before:.3g} (base) \u2192 {metrics[name]:.3g} (finetuned)" if _finite(before)
                       else f"{name} {metrics[name]:.3g} (finetuned; no base model evaluated)")
    if baseline is not None:
        changes.append(f"always answering the most common reference ({baseline[0]!r}) would score {baseline[1]:.3g}")
    if changes:
        lines.append(("change", "Held-out: " + "; ".join(changes) + "."))
    items = "".join(f'<li data-fact="{key}">{html_text(text)}</li>' for key, text in lines)
    return f'<section id="summary"><ul>{items}</ul>{loss_curve_svg(training.get("log_history") or [])}</section>'


def loss_curve_svg(history: list[dict[str, Any]], *, width: int = 560, height: int = 220) -> str:
    """Training (and eval) loss against step as an inline ``<svg id="loss-curve">``; empty without two points.

    Args:
        history: ``[{"step": 5, "loss": 6.1}, {"step": 5, "eval_loss": 6.3}, ...]`` (the Trainer's
            ``log_history`` entries work too).
        width, height: the picture's size in CSS pixels.
    """
    series = {key: [(float(e.get("step", 0)), float(e[key])) for e in history if _finite(e.get(key))]
              for key in ("loss", "eval_loss")}
    points = [p for values in series.values() for p in values]
    if len(series["loss"]) + len(series["eval_loss"]) < 2:
        return ""
    left, right, top, bottom = 52, 12, 12, 34  # margins for the axis labels, px
    steps, losses = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = min(steps), max(steps) if max(steps) > min(steps) else min(steps) + 1
    y0, y1 = min(losses), max(losses) if max(losses) > min(losses) else min(losses) + 1

    def xy(step: float, loss: float) -> tuple[float, float]:
        return (left + (step - x0) / (x1 - x0) * (width - left - right),
                top + (y1 - loss) / (y1 - y0) * (height - top - bottom))

    paths, legend = [], []
    for i, (key, colour, label) in enumerate((("loss", "#2563eb", "train loss"), ("eval_loss", "#dc6b19", "eval loss"))):
        if not series[key]:
            continue
        coords = [xy(*p) for p in series[key]]
        d = "M" + " L".join(f"{x:.1f},{y:.1f}" for x, y in coords)
        # Dots mark the logged values while they are few enough to tell apart.
        dots = "".join(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{colour}"/>'
                       for x, y in coords) if len(coords) < 30 else ""
        paths.append(f'<path class="{key}" d="{d}" fill="none" stroke="{colour}" stroke-width="2"/>{dots}')
        legend.append(f'<text x="{width - right - 150 + i * 80}" y="{top + 10}" fill="{colour}">{label}</text>')
    plot_bottom, plot_right = height - bottom, width - right
    axes = (f'<path class="axes" d="M{left},{top} L{left},{plot_bottom} L{plot_right},{plot_bottom}" '
            'fill="none" stroke="#9aa1aa"/>'
            f'<text x="{left - 6}" y="{top + 4}" text-anchor="end">{y1:.3g}</text>'
            f'<text x="{left - 6}" y="{plot_bottom}" text-anchor="end">{y0:.3g}</text>'
            f'<text x="{left}" y="{plot_bottom + 16}" text-anchor="middle">{x0:g}</text>'
            f'<text x="{plot_right}" y="{plot_bottom + 16}" text-anchor="end">{x1:g}</text>'
            f'<text x="{(left + plot_right) / 2:.0f}" y="{height - 4}" text-anchor="middle">step</text>')
    return (f'<svg id="loss-curve" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="training loss against step" '
            f'font-size="11" fill="#39414b"><title>loss against optimizer step</title>{axes}{"".join(paths)}'
            f'{"".join(legend)}</svg>')


def _duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{seconds:.3g} s"


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
