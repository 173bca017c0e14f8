"""One self-contained HTML page from an evaluation: metrics (base vs finetuned) and a gallery of eval samples.

The page has no external resources (thumbnails are base64 ``data:`` URIs, CSS is inline, no JavaScript), so it
can be mailed, attached to a CI run or opened from any folder. The gallery shows the best cases first, then
the worst, ranked by how much the finetuned model gained over the base model on one per-sample score::

    result = evaluate(...)                                   # an EvalResult
    write_report(result, eval_samples, "runs/radiology/report.html")

The page opens with a human summary and the loss curve (``plm_tune.after_training.report_summary``); the raw run facts
follow, folded. Stable hooks for tools and tests: ``section#summary`` with ``li[data-fact=trained|data|time|
change]``, ``svg#loss-curve`` (``path.loss``, ``path.eval_loss``), ``table#metrics`` with one ``tr[data-metric=NAME]`` per metric, sections
``#best``, ``#worst`` and ``#unscored``, ``p#bleu-signature`` (sacreBLEU's signatures), cards ``.case[data-index=I]``, media errors ``.media-error``.
"""

from __future__ import annotations

import base64
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from plm_tune.after_training.report_summary import html_text, summary_html
from plm_tune.data.media import describe_media, load_image, load_video
from plm_tune.data.path_privacy import hide_identifying
from plm_tune.inference.evaluation import EvalRecord, EvalResult, majority_baseline

__all__ = ["write_report", "rank_records", "gallery_media", "Thumbnail"]

# Per-sample score that orders the gallery, first one present wins: graded scores before binary ones, so
# that ranks are not mostly ties. Without any of them the alphabetically first score is used.
_SORT_PREFERENCE = ("rouge_l", "sentence_bleu", "accuracy", "exact_match")
_DASH = "\u2014"


def write_report(result: EvalResult, samples: Sequence[dict[str, Any]], path: str | Path, *,
                 title: str = "plm-tune evaluation", max_samples: int = 50, frames_per_video: int = 6,
                 thumb_size: int = 256, self_check: bool = False) -> Path:
    """Write an evaluation as one self-contained HTML file.

    Args:
        result: what ``evaluate`` returned: metrics, optional base metrics, per-sample records and info.
        samples: the evaluated canonical samples; ``samples[record.index]`` gives a record's media.
        path: the ``.html`` file to write (parent folders are created).
        title: page heading.
        max_samples: the most samples in the gallery: half best cases, half worst cases.
        frames_per_video: frames shown per video, picked uniformly with both ends kept.
        thumb_size: longest side of an image thumbnail in pixels (video frames get half of it).
        self_check: add a tiny inline script that writes ``data-images-ok`` / ``data-images-total`` /
            ``data-metric-rows`` on ``<body>`` once the page has loaded (for headless-browser tests).

    Returns:
        The path written.

    Raises:
        ValueError: ``max_samples``, ``frames_per_video`` or ``thumb_size`` out of range.

    Media that is missing or cannot be decoded shows as a visible placeholder with the error, never an
    exception: one bad file should not cost the whole report.

    >>> write_report(result, samples, "report.html", title="radiology LoRA")   # doctest: +SKIP
    PosixPath('report.html')
    """
    if max_samples < 1:
        raise ValueError(f"max_samples must be >= 1, got {max_samples}.")
    if frames_per_video < 1:
        raise ValueError(f"frames_per_video must be >= 1, got {frames_per_video}.")
    if thumb_size < 16:
        raise ValueError(f"thumb_size must be >= 16 pixels, got {thumb_size}.")

    metric, sections = rank_records(result, max_samples)
    has_base = result.base_metrics is not None or any(r.base_answer is not None for r in result.records)
    shown = sum(len(records) for _, _, records in sections)
    media_errors: list[str] = []  # filled while rendering cards, reported in the header
    gallery = []
    for section_id, heading, records in sections:
        if not records:
            continue
        cards = "".join(_case(r, samples, metric, has_base, frames_per_video, thumb_size, media_errors)
                        for r in records)
        gallery.append(f'<section id="{section_id}"><h2>{_e(heading)}</h2>{cards}</section>')

    body = (_header(result, title, shown, metric, media_errors) + _metrics_table(result) + _bleu_note(result)
            + "".join(gallery))
    check = _SELF_CHECK if self_check else ""
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            # The media column is as wide as a thumbnail, but never so narrow that a 3-frame row is unreadable.
            f"<style>:root {{ --thumb: {max(thumb_size, 200)}px; }}{_CSS}</style>{check}</head>"
            f"<body>{body}</body></html>\n")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def rank_records(result: EvalResult,
                 max_samples: int) -> tuple[str | None, list[tuple[str, str, list[EvalRecord]]]]:
    """Pick the records the gallery shows: best cases, then worst cases, then records without the score.

    The rank of a record is its finetuned score minus its base score on one per-sample metric (the first of
    rouge_l, sentence_bleu, accuracy, exact_match that the records have), or the finetuned score alone when no base
    model was evaluated. For a metric named like a loss or perplexity lower is better, so the sign flips.

    Args:
        result: the evaluation.
        max_samples: the most records returned over all sections.

    Returns:
        ``(metric, sections)``: the metric ranked on (None when records have no scores) and
        ``[(section_id, heading, records), ...]`` for ``best`` (best first), ``worst`` (worst first) and
        ``unscored`` (records lacking the metric, shown only while the cap leaves room).
    """
    names = {name for r in result.records for name in r.scores}
    metric = next((m for m in _SORT_PREFERENCE if m in names), min(names) if names else None)
    with_base = result.base_metrics is not None or any(r.base_scores for r in result.records)
    keyed, unscored = [], []
    for record in result.records:
        gain = _gain(record, metric, with_base)
        if gain is None:
            unscored.append(record)
        else:
            keyed.append((gain, record))
    # Stable sort on gain alone: equal gains keep dataset order, so the page is the same run to run.
    ranked = [r for _, r in sorted(keyed, key=lambda pair: -pair[0])]
    if len(ranked) > max_samples:
        n_best = math.ceil(max_samples / 2)
        best, worst = ranked[:n_best], ranked[len(ranked) - (max_samples - n_best):]
    else:
        n_best = math.ceil(len(ranked) / 2)
        best, worst = ranked[:n_best], ranked[n_best:]
    worst = worst[::-1]  # the worst case leads its section
    unscored = unscored[:max_samples - len(best) - len(worst)]
    what = f"gain in {metric} over the base model" if with_base else f"finetuned {metric}"
    return metric, [
        ("best", f"Best cases (highest {what})", best),
        ("worst", f"Worst cases (lowest {what})", worst),
        ("unscored", f"Not scored (no {metric} score)" if metric else "Not scored", unscored),
    ]


def _gain(record: EvalRecord, metric: str | None, with_base: bool) -> float | None:
    """Signed improvement on ``metric`` (higher is better), or None when a score it needs is missing."""
    if metric is None or not _is_number(record.scores.get(metric)):
        return None
    value = record.scores[metric]
    if with_base:
        if not _is_number(record.base_scores.get(metric)):
            return None
        value -= record.base_scores[metric]
    return -value if _lower_is_better(metric) else value


def _header(result: EvalResult, title: str, shown: int, metric: str | None, media_errors: list[str]) -> str:
    summary = summary_html(result.info, result.metrics, result.base_metrics, majority_baseline(result))
    info = dict(result.info)
    info.pop("training", None)  # told by the summary above
    info.pop("samples", None)  # the "samples" row below says it with the number shown
    info.pop("sacrebleu_signature", None)  # under the metrics table, next to the BLEU it qualifies
    lead = [("model", info.pop("model", None)), ("adapter", info.pop("adapter", None)),
            ("samples", f"{len(result.records)} evaluated, {shown} shown")]
    if metric is not None:
        lead.append(("ranked by", metric))
    items = [(k, v) for k, v in lead if v is not None] + sorted(info.items())
    rows = "".join(f'<dt>{_e(k)}</dt><dd data-key="{_e(k)}">{_e(_text_of(v))}</dd>' for k, v in items)
    warning = ""
    if media_errors:
        warning = (f'<p class="warning" id="media-warning">{len(media_errors)} media '
                   f'entr{"y" if len(media_errors) == 1 else "ies"} could not be shown; '
                   "see the red boxes below.</p>")
    return (f'<header><h1>{_e(title)}</h1>{summary}{warning}<details id="details"><summary>run details</summary>'
            f'<dl id="info">{rows}</dl></details></header>')


def _metrics_table(result: EvalResult) -> str:
    base = result.base_metrics
    names = list(result.metrics) + [m for m in (base or {}) if m not in result.metrics]
    rows = []
    for name in names:
        tuned, before = result.metrics.get(name), (base or {}).get(name)
        rows.append(f'<tr data-metric="{_e(name)}"><th scope="row">{_e(name)}</th><td>{_num(before)}</td>'
                    f"<td>{_num(tuned)}</td>{_change_cell(name, before, tuned)}</tr>")
    return ('<table id="metrics"><thead><tr><th>metric</th><th>base</th><th>finetuned</th><th>change</th>'
            f'</tr></thead><tbody>{"".join(rows)}</tbody></table>')


def _bleu_note(result: EvalResult) -> str:
    """Under the metrics table: what the BLEU rows are, with sacreBLEU's signatures (``metrics.bleu_signatures``)."""
    signatures = result.info.get("sacrebleu_signature")
    if not isinstance(signatures, dict):
        return ""
    named = "; ".join(f"{_e(name)} <code>{_e(signature)}</code>" for name, signature in signatures.items())
    return ('<p id="bleu-signature">BLEU is sacreBLEU&#x27;s on the raw answers, divided by 100 (0-1 here; '
            f"sacreBLEU prints it &times; 100). Signatures: {named}.</p>")


def _change_cell(name: str, before: Any, after: Any) -> str:
    if not (_is_number(before) and _is_number(after)):
        return f'<td class="change">{_DASH}</td>'
    delta = after - before
    better = -delta if _lower_is_better(name) else delta
    kind = "up" if better > 0 else "down" if better < 0 else "same"
    return f'<td class="change {kind}">{delta:+.4g}</td>'


def _case(record: EvalRecord, samples: Sequence[dict[str, Any]], metric: str | None, has_base: bool,
          frames_per_video: int, thumb_size: int, media_errors: list[str]) -> str:
    media = _media(record.index, samples, frames_per_video, thumb_size, media_errors)
    sid = f' &middot; {_e(record.sample_id)}' if record.sample_id is not None else ""
    badge = ""
    if metric is not None and _is_number(record.scores.get(metric)):
        badge = (f'<span class="badge">{_e(metric)} {_num(record.base_scores.get(metric))} &rarr; '
                 f"{_num(record.scores[metric])}</span>" if has_base else
                 f'<span class="badge">{_e(metric)} {_num(record.scores[metric])}</span>')
    answers = f'<div class="answer finetuned"><h4>finetuned</h4><pre>{_e(record.answer)}</pre></div>'
    if has_base:
        base = _e(record.base_answer) if record.base_answer is not None else f'<span class="none">{_DASH}</span>'
        answers = f'<div class="answer base"><h4>base</h4><pre>{base}</pre></div>' + answers
    reference = _e(record.reference) if record.reference is not None else f'<span class="none">{_DASH}</span>'
    return (f'<article class="case" data-index="{record.index}">'
            f'<h3>#{record.index}{sid}{badge}</h3><div class="body">{media}<div class="text">'
            f'<div class="prompt"><h4>prompt</h4><pre>{_e(record.prompt)}</pre></div>'
            f'<div class="reference"><h4>reference</h4><pre>{reference}</pre></div>'
            f'<div class="answers{" two" if has_base else ""}">{answers}</div>'
            f"{_scores_table(record, has_base)}</div></div></article>")


def _scores_table(record: EvalRecord, has_base: bool) -> str:
    names = list(record.scores) + [m for m in record.base_scores if m not in record.scores]
    if not names:
        return ""
    head = "<th>score</th><th>base</th><th>finetuned</th><th>change</th>" if has_base else \
        "<th>score</th><th>finetuned</th>"
    rows = []
    for name in names:
        tuned, before = record.scores.get(name), record.base_scores.get(name)
        cells = f"<td>{_num(before)}</td><td>{_num(tuned)}</td>{_change_cell(name, before, tuned)}" if has_base \
            else f"<td>{_num(tuned)}</td>"
        rows.append(f'<tr data-score="{_e(name)}"><th scope="row">{_e(name)}</th>{cells}</tr>')
    return f'<table class="scores"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


@dataclass
class Thumbnail:
    """One media entry of a gallery sample as the report shows it: its frames as small RGB pictures, or the error
    that kept it from being shown."""

    label: str  # "image 0", "video 1", or "sample 7" when the sample itself is missing
    frames: list[Image.Image] = field(default_factory=list)  # 1 for an image, <= frames_per_video for a video
    error: str | None = None  # why nothing is shown, for a visible placeholder


def gallery_media(samples: Sequence[dict[str, Any]], index: int, *, frames_per_video: int = 6,
                  thumb_size: int = 256) -> list[Thumbnail]:
    """Thumbnails of every image and video of ``samples[index]``, as the report's gallery shows them.

    An image becomes one RGB thumbnail (longest side ``thumb_size`` px, never enlarged); a video up to
    ``frames_per_video`` frames, picked uniformly with both ends kept, at half that size. Media that is missing
    or cannot be decoded, and a sample that is not there, come back as a ``Thumbnail`` with ``error`` set and
    no frames, never as an exception: one bad file should not cost the whole gallery.

    Args:
        samples: the evaluated canonical samples.
        index: the sample's position (``EvalRecord.index``).
        frames_per_video: frames kept per video.
        thumb_size: longest side of an image thumbnail in pixels.

    Returns:
        One ``Thumbnail`` per media entry, images first; empty for a text-only sample.
    """
    try:
        sample = samples[index]
    except (IndexError, KeyError):
        return [Thumbnail(f"sample {index}", error=f"sample {index} is not in the samples given "
                                                   f"({len(samples)} of them)")]
    if not isinstance(sample, dict):
        return [Thumbnail(f"sample {index}",
                          error=f"sample {index} is a {type(sample).__name__}, not a canonical sample dict")]
    shown = []
    for i, entry in enumerate(sample.get("images") or []):
        try:
            shown.append(Thumbnail(f"image {i}", [_thumbnail(load_image(entry), thumb_size)]))
        # Whatever a decoder raises (PIL, pydicom, a missing file) becomes a visible placeholder instead; the
        # report may be shared, so path parts with names, IDs or dates are hidden (plm_tune.data.path_privacy).
        except Exception as err:
            error = f"image {i} ({describe_media(entry)}): {err}"
            shown.append(Thumbnail(f"image {i}", error=hide_identifying(error)))
    for i, entry in enumerate(sample.get("videos") or []):
        try:
            frames = load_video(entry, frames_per_video)  # (T, H, W, 3) uint8, T <= frames_per_video
            shown.append(Thumbnail(f"video {i}", [_thumbnail(Image.fromarray(f), thumb_size // 2) for f in frames]))
        except Exception as err:
            error = f"video {i} ({describe_media(entry)}): {err}"
            shown.append(Thumbnail(f"video {i}", error=hide_identifying(error)))
    return shown


def _media(index: int, samples: Sequence[dict[str, Any]], frames_per_video: int, thumb_size: int,
           media_errors: list[str]) -> str:
    """Thumbnails of every image and video of ``samples[index]``; a red placeholder for each that fails."""
    parts = []
    for thumb in gallery_media(samples, index, frames_per_video=frames_per_video, thumb_size=thumb_size):
        if thumb.error is not None:
            parts.append(_media_error(thumb.error, media_errors))
        elif thumb.label.startswith("image"):
            parts.append(f'<figure class="image"><img alt="{thumb.label}" src="{_data_uri(thumb.frames[0])}">'
                         "</figure>")
        else:
            strip = "".join(f'<img alt="{thumb.label} frame {t}" src="{_data_uri(frame)}">'
                            for t, frame in enumerate(thumb.frames))
            parts.append(f'<figure class="video"><div class="strip">{strip}</div>'
                         f"<figcaption>{thumb.label}: {len(thumb.frames)} frames</figcaption></figure>")
    if not parts:
        return '<div class="media"><p class="none">text only</p></div>'
    return f'<div class="media">{"".join(parts)}</div>'


def _media_error(message: str, media_errors: list[str]) -> str:
    media_errors.append(message)
    return f'<div class="media-error" role="alert">could not show {_e(message)}</div>'


def _thumbnail(image: Image.Image, size: int) -> Image.Image:
    """An RGB copy whose longest side is at most ``size`` px (never enlarged), aspect ratio kept."""
    thumb = image.convert("RGB")
    thumb.thumbnail((size, size))
    return thumb


def _data_uri(thumb: Image.Image) -> str:
    """A thumbnail as a base64 JPEG ``data:`` URI."""
    buffer = io.BytesIO()
    thumb.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _lower_is_better(metric: str) -> bool:
    return "loss" in metric.lower() or "perplexity" in metric.lower()


def _is_number(value: Any) -> bool:
    """A finite score: NaN (a failed metric) would make the ranking meaningless, so it counts as missing."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _num(value: Any) -> str:
    return f"{value:.4g}" if _is_number(value) else _DASH


def _text_of(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"  # 1.027, not 1.027413005000085
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _e(value: Any) -> str:
    return html_text(value)


_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; color: #1d232a;
       margin: 0 auto; padding: 24px; max-width: 1240px; background: #f5f6f8; }
h1 { margin: 0 0 8px; font-size: 24px; } h2 { margin: 28px 0 12px; font-size: 18px; }
h3 { margin: 0 0 10px; font-size: 14px; display: flex; gap: 10px; align-items: center; }
h4 { margin: 0 0 2px; font-size: 11px; text-transform: uppercase; letter-spacing: .05em; color: #68717d; }
#summary { display: flex; flex-wrap: wrap; gap: 8px 24px; align-items: flex-start; margin: 0 0 12px; }
#summary ul { flex: 1 1 420px; margin: 0; padding-left: 18px; font-size: 15px; }
#summary li { margin: 0 0 4px; } #loss-curve { background: #fff; border-radius: 4px; }
details#details { margin: 0 0 16px; } details#details summary { cursor: pointer; color: #68717d; }
dl#info { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; margin: 0 0 16px; }
dt { color: #68717d; } dd { margin: 0; font-family: ui-monospace, "DejaVu Sans Mono", monospace; }
table { border-collapse: collapse; background: #fff; }
th, td { padding: 4px 12px; border-bottom: 1px solid #e3e6ea; text-align: right; }
th:first-child { text-align: left; } thead th { background: #eef0f3; font-weight: 600; }
#metrics { min-width: 480px; box-shadow: 0 1px 2px rgba(0,0,0,.08); }
td.up { color: #11803b; font-weight: 600; } td.down { color: #c0262d; font-weight: 600; }
.warning { background: #fff4d6; border: 1px solid #e8c66a; padding: 6px 10px; border-radius: 4px; }
.case { background: #fff; border-radius: 6px; box-shadow: 0 1px 3px rgba(0,0,0,.1); padding: 14px;
        margin: 0 0 14px; }
.badge { font-weight: 500; background: #eef0f3; border-radius: 10px; padding: 1px 9px; color: #39414b; }
.body { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
.media { flex: 0 0 var(--thumb); max-width: 100%; display: flex; flex-direction: column; gap: 8px; }
.media figure { margin: 0; } .media img { display: block; border-radius: 3px; }
/* Small images (a 128 px CT slice) are enlarged to the column; tall ones are capped and keep their shape. */
.media .image img { width: 100%; height: auto; max-height: calc(var(--thumb) * 1.25); object-fit: contain;
                    object-position: left top; }
.strip { display: grid; grid-template-columns: repeat(3, 1fr); gap: 3px; }
.strip img { width: 100%; height: auto; }
figcaption { font-size: 11px; color: #68717d; margin-top: 2px; }
.media-error { background: #fdecec; border: 1px dashed #c0262d; color: #8d1b20; padding: 8px;
               border-radius: 4px; font-size: 12px; overflow-wrap: anywhere; }
.text { flex: 1 1 420px; min-width: 0; display: flex; flex-direction: column; gap: 8px; }
pre { margin: 0; white-space: pre-wrap; overflow-wrap: anywhere; font: inherit; max-height: 14em;
      overflow: auto; }
.reference pre { color: #39414b; }
.answers { display: grid; grid-template-columns: 1fr; gap: 10px; }
.answers.two { grid-template-columns: 1fr 1fr; }
.answer { border-radius: 4px; padding: 6px 9px; } .answer.base { background: #f2f3f5; }
.answer.finetuned { background: #eaf3ff; }
.scores { font-size: 12px; align-self: flex-start; }
.none { color: #9aa1aa; }
"""

# Only with write_report(..., self_check=True): counts the images the browser really decoded.
_SELF_CHECK = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const body = document.body.dataset;
  body.imagesTotal = images.length;
  body.imagesOk = images.filter((img) => img.complete && img.naturalWidth > 0).length;
  body.metricRows = document.querySelectorAll("#metrics tr[data-metric]").length;
});
</script>"""
