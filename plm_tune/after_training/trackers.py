"""The eval gallery in the run's trackers: what ``report.html`` shows per sample, also in TensorBoard and W&B.

``finish_run`` calls ``log_eval_gallery`` after writing the report. It logs only to the trackers in the run's
``report_to`` (``TrainingArguments.report_to``), only from the main process, at the run's last step, the same
samples the report's gallery shows (``report.rank_records``: best cases, then worst), each sample's media
side by side in one picture (``report.gallery_media``: images, and a video's frames):

* ``tensorboard``: one image per sample with media, tag ``eval/gallery/NN_sample_I`` (NN: its place in the
  gallery), and one text, ``eval/gallery``: a Markdown table of prompt / reference / base / finetuned answer
  and the ranking score. Written into the Trainer's own log folder (``TensorBoardCallback.logging_dir``,
  ``output_dir/runs/<date>_<host>`` by default), so it is the same run in TensorBoard's list.
* ``wandb``: a ``wandb.Table`` under ``eval/gallery`` in the run the Trainer's ``WandbCallback`` opened, one
  row per sample with its picture as a ``wandb.Image`` cell.

Other trackers (``mlflow``, ``trackio``, ...) get the Trainer's scalars only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from plm_tune.after_training.report import gallery_media, rank_records
from plm_tune.inference.evaluation import EvalRecord, EvalResult

__all__ = ["GalleryRow", "gallery_rows", "gallery_markdown", "log_eval_gallery", "GALLERY_TAG"]

GALLERY_TAG = "eval/gallery"
_GAP = 4  # px between the pictures of one sample


@dataclass
class GalleryRow:
    """One sample of the gallery: the record, which section it sits in, and its media as one picture."""

    section: str  # "best", "worst" or "unscored"
    record: EvalRecord
    picture: Image.Image | None  # RGB, every media entry side by side; None for text only (or undecodable media)


def gallery_rows(result: EvalResult, samples: Sequence[dict[str, Any]], *, max_samples: int = 50,
                 frames_per_video: int = 6, thumb_size: int = 256) -> tuple[str | None, list[GalleryRow]]:
    """The samples the report's gallery shows, in its order, each with its media joined into one picture.

    Args:
        result: what ``evaluate`` returned.
        samples: the evaluated canonical samples (``samples[record.index]``).
        max_samples, frames_per_video, thumb_size: as in ``write_report`` (the same defaults).

    Returns:
        ``(metric, rows)``: the per-sample score the gallery is ranked on (None without scores) and the rows.
    """
    metric, sections = rank_records(result, max_samples)
    rows = []
    for section, _, records in sections:
        for record in records:
            thumbs = gallery_media(samples, record.index, frames_per_video=frames_per_video, thumb_size=thumb_size)
            frames = [frame for thumb in thumbs for frame in thumb.frames]
            rows.append(GalleryRow(section, record, _side_by_side(frames) if frames else None))
    return metric, rows


def gallery_markdown(rows: Sequence[GalleryRow], metric: str | None) -> str:
    """The gallery's text as a Markdown table: one row per sample, base and finetuned answers side by side."""
    score = f"{metric} (base → finetuned)" if metric else "score"
    lines = [f"| case | sample | prompt | reference | base | finetuned | {score} |", "|---" * 7 + "|"]
    for row in rows:
        record = row.record
        before, after = record.base_scores.get(metric) if metric else None, record.scores.get(metric) if metric else None
        cells = [row.section, f"#{record.index}" + (f" {record.sample_id}" if record.sample_id is not None else ""),
                 record.prompt, record.reference, record.base_answer, record.answer,
                 f"{_number(before)} → {_number(after)}"]
        lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    return "\n".join(lines)


def log_eval_gallery(trainer: Any, result: EvalResult, samples: Sequence[dict[str, Any]], *,
                     max_samples: int = 50) -> list[str]:
    """Log the eval gallery to the trackers of the trainer's ``report_to`` that show media: TensorBoard, W&B.

    Args:
        trainer: the trained ``build_trainer`` result (its args, callbacks and step count are read).
        result: the evaluation ``finish_run`` made.
        samples: the evaluated samples.
        max_samples: the most samples in the gallery (``write_report``'s).

    Returns:
        The trackers logged to (``[]``: none of them is on, or not the main process).
    """
    report_to = set(trainer.args.report_to or [])
    wanted = [name for name in ("tensorboard", "wandb") if name in report_to]
    if not wanted or not trainer.is_world_process_zero():
        return []
    metric, rows = gallery_rows(result, samples, max_samples=max_samples)
    step = trainer.state.global_step
    logged = []
    if "tensorboard" in wanted and _to_tensorboard(trainer, rows, metric, step):
        logged.append("tensorboard")
    if "wandb" in wanted and _to_wandb(rows, metric, step):
        logged.append("wandb")
    return logged


def _to_tensorboard(trainer: Any, rows: list[GalleryRow], metric: str | None, step: int) -> bool:
    """Images and the Markdown table into the Trainer's TensorBoard run; False when it has no TensorBoard logger."""
    import numpy as np
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    callback = next((c for c in trainer.callback_handler.callbacks if isinstance(c, TensorBoardCallback)), None)
    if callback is None or (callback.tb_writer is None and callback.logging_dir is None):
        return False
    # TensorBoardCallback.on_train_end closes its writer and drops it (transformers/integrations/
    # integration_utils.py); a writer on the same folder adds an event file to the same TensorBoard run.
    writer = callback.tb_writer or SummaryWriter(log_dir=callback.logging_dir)
    try:
        for place, row in enumerate(rows):
            if row.picture is not None:
                writer.add_image(f"{GALLERY_TAG}/{place:02d}_sample_{row.record.index}", np.asarray(row.picture),
                                 step, dataformats="HWC")
        writer.add_text(GALLERY_TAG, gallery_markdown(rows, metric), step)
        writer.flush()
    finally:
        if writer is not callback.tb_writer:
            writer.close()
    return True


def _to_wandb(rows: list[GalleryRow], metric: str | None, step: int) -> bool:
    """A ``wandb.Table`` into the run the Trainer's ``WandbCallback`` opened; False when no run is open."""
    import wandb

    # WandbCallback.setup opens the run with wandb.init and leaves it open after training, for the caller.
    if wandb.run is None:
        print("W&B: no run open (it was finished before finish_run); the eval gallery is in eval/report.html only.")
        return False
    columns = ["case", "index", "sample_id", "media", "prompt", "reference", "base", "finetuned"]
    if metric:
        columns += [f"base {metric}", f"finetuned {metric}"]
    table = wandb.Table(columns=columns)
    for row in rows:
        record = row.record
        cells = [row.section, record.index, record.sample_id,
                 wandb.Image(row.picture) if row.picture is not None else None,
                 record.prompt, record.reference, record.base_answer, record.answer]
        if metric:
            cells += [record.base_scores.get(metric), record.scores.get(metric)]
        table.add_data(*cells)
    # "train/global_step": the x-axis WandbCallback defines for every key.
    wandb.run.log({GALLERY_TAG: table, "train/global_step": step})
    return True


def _side_by_side(frames: list[Image.Image]) -> Image.Image:
    """RGB pictures in one row, tops aligned, on white, ``_GAP`` px apart (one picture: itself)."""
    if len(frames) == 1:
        return frames[0]
    width = sum(frame.width for frame in frames) + _GAP * (len(frames) - 1)
    canvas = Image.new("RGB", (width, max(frame.height for frame in frames)), "white")
    left = 0
    for frame in frames:
        canvas.paste(frame, (left, 0))
        left += frame.width + _GAP
    return canvas


def _cell(value: Any) -> str:
    """Text for one Markdown table cell: ``|`` escaped, line breaks as spaces, a dash for None."""
    if value is None:
        return "—"
    return " ".join(str(value).replace("|", "\\|").split()) or " "


def _number(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, int | float) and not isinstance(value, bool) else "—"
