"""The eval gallery in the trackers: a real 2-step LoRA run on the tiny PLM reporting to TensorBoard and W&B
(offline: WANDB_MODE=offline writes the run to disk, nothing is sent), then ``finish_run``; the event file is read
back with TensorBoard's EventAccumulator, the W&B table from the offline run's files."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import make_frames, make_image, qa
from PIL import Image
from trl import SFTConfig

from data_adapters.synthetic import synthetic_shapes
from plm_tune import build_trainer, load_model
from plm_tune.after_training.outputs import finish_run
from plm_tune.after_training.trackers import GALLERY_TAG, gallery_markdown, gallery_rows, log_eval_gallery
from plm_tune.data.media import load_image
from plm_tune.inference.evaluation import EvalRecord, EvalResult, load_eval

try:
    import wandb
except ImportError:  # the TensorBoard test runs without it; the W&B one is skipped
    wandb = None


def _eval_set() -> list[dict]:
    """Six held-out samples: a large image (thumbnailed to 256 x 160), two images side by side, text only,
    and three synthetic shapes."""
    shapes = [{**s, "images": [load_image(b) for b in s["images"]]} for s in synthetic_shapes(3, seed=1, max_tiles=1)]
    return [
        {"id": "large", "messages": qa("What colour is the noise?", "Grey | mostly.", ["image"]),
         "images": [make_image(320, 200, seed=1)], "max_tiles": 1},
        {"id": "pair", "messages": qa("Compare them.", "The left is brighter.", ["image", "image"]),
         "images": [make_image(160, 60, seed=2), make_image(56, 56, seed=3)], "max_tiles": 1},
        {"id": "text", "messages": qa("Say hi.", "Hi.")},
        *[{key: s[key] for key in ("id", "messages", "images", "max_tiles")} for s in shapes],
    ]


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_plm_path):
    """Train 2 steps reporting to TensorBoard and offline W&B, then finish_run (evaluate, report, gallery)."""
    folder = tmp_path_factory.mktemp("trackers")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("WANDB_MODE", "offline")
        # Everything W&B writes stays in the test's folder: the run, staged artifacts (the table), caches, config.
        for name in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
            env.setenv(name, str(folder / "wandb-home" if name != "WANDB_DIR" else folder))
        env.setenv("WANDB_SILENT", "true")
        env.setenv("WANDB_PROJECT", "plm-tune-test")
        torch.manual_seed(0)
        model, processor = load_model(tiny_plm_path, method="lora")
        args = SFTConfig(output_dir=str(folder / "out"), max_steps=2, per_device_train_batch_size=2,
                         learning_rate=1e-3, logging_steps=1, save_strategy="no",
                         report_to=["tensorboard", "wandb"] if wandb is not None else ["tensorboard"],
                         bf16=False, max_length=None, dataloader_num_workers=0, seed=0, disable_tqdm=True)
        trainer = build_trainer(model, processor, synthetic_shapes(8, seed=0, max_tiles=1), args=args)
        trainer.train()
        eval_set = _eval_set()
        outputs = finish_run(trainer, eval_set=eval_set, max_new_tokens=4, eval_batch_size=6)
        if wandb is not None:
            wandb.finish()
    return SimpleNamespace(out=folder / "out", outputs=outputs, eval_set=eval_set, trainer=trainer,
                           wandb_staging=folder / "wandb-home/artifacts/staging")


def test_tensorboard_holds_the_gallerys_images_and_its_text(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = load_eval(run.out / "eval/eval.json")
    _, rows = gallery_rows(result, run.eval_set)
    pictured = [row for row in rows if row.picture is not None]
    assert len(rows) == 6 and len(pictured) == 5  # every sample shown; the text-only one has no picture

    logs = sorted(run.out.glob("runs/*"))
    assert len(logs) == 1, logs  # the Trainer's own TensorBoard run, not a second one
    board = EventAccumulator(str(logs[0]), size_guidance={"images": 0, "tensors": 0})
    board.Reload()
    images = [tag for tag in board.Tags()["images"] if tag.startswith(GALLERY_TAG + "/")]
    assert len(images) == len(pictured)
    assert "train/loss" in board.Tags()["scalars"]  # the same run as the training scalars

    index = {record.sample_id: record.index for record in result.records}
    by_sample = {int(tag.rsplit("_", 1)[1]): tag for tag in images}
    assert set(by_sample) == {row.record.index for row in pictured}
    for sample_id, size in (("large", (256, 160)), ("pair", (160 + 4 + 56, 60))):  # thumbnail; side by side
        event = board.Images(by_sample[index[sample_id]])
        assert len(event) == 1 and event[0].step == run.trainer.state.global_step == 2
        with Image.open(io.BytesIO(event[0].encoded_image_string)) as picture:
            assert picture.size == size == (event[0].width, event[0].height)
    with Image.open(io.BytesIO(board.Images(by_sample[index["large"]])[0].encoded_image_string)) as picture:
        expected = make_image(320, 200, seed=1)
        expected.thumbnail((256, 256))
        # The noise image itself, pixel for pixel (PNG in the event file), not a blank or another sample's.
        assert np.array_equal(np.asarray(picture.convert("RGB")), np.asarray(expected))

    text = board.Tensors(GALLERY_TAG + "/text_summary")[0].tensor_proto.string_val[0].decode()
    assert text == gallery_markdown(rows, "rouge_l")
    assert text.count("\n") == 1 + len(rows)  # header, rule, one line per sample
    assert "What colour is the noise?" in text and "Grey \\| mostly." in text  # the cell's | is escaped
    for record in result.records:
        assert record.answer.strip() == "" or " ".join(record.answer.split()).replace("|", "\\|") in text


@pytest.mark.skipif(wandb is None, reason="the W&B path needs wandb: pip install 'plm-tune[wandb]'")
def test_wandb_gets_a_table_with_one_image_per_pictured_sample(run):
    """An offline run keeps what it would upload: wandb logs a Table as a run artifact, staged on disk (under
    WANDB_DATA_DIR) as the table's JSON and one PNG per image cell, which the JSON names by sha256."""
    result = load_eval(run.out / "eval/eval.json")
    _, rows = gallery_rows(result, run.eval_set)
    staged = {hashlib.sha256(path.read_bytes()).hexdigest(): path for path in run.wandb_staging.iterdir()}
    tables = {json.dumps(table) for table in (_json(path) for path in staged.values()) if table.get("_type") == "table"}
    assert len(tables) == 1
    table = json.loads(tables.pop())
    columns = table["columns"]
    assert columns == ["case", "index", "sample_id", "media", "prompt", "reference", "base", "finetuned",
                       "base rouge_l", "finetuned rouge_l"]
    data = [dict(zip(columns, row, strict=True)) for row in table["data"]]
    assert [(d["case"], d["index"]) for d in data] == [(row.section, row.record.index) for row in rows]
    assert [d["finetuned"] for d in data] == [row.record.answer for row in rows]
    assert [d["finetuned rouge_l"] for d in data] == [row.record.scores["rouge_l"] for row in rows]
    pictured = [d for d in data if d["media"] is not None]
    assert len(pictured) == 5 and all(d["media"]["_type"] == "image-file" for d in pictured)
    for d in pictured:
        with Image.open(staged[d["media"]["sha256"]]) as picture:  # the PNG the cell points to
            assert picture.size == (d["media"]["width"], d["media"]["height"])
    large = next(d for d in data if d["sample_id"] == "large")
    with Image.open(staged[large["media"]["sha256"]]) as picture:
        expected = make_image(320, 200, seed=1)
        expected.thumbnail((256, 256))
        assert np.array_equal(np.asarray(picture.convert("RGB")), np.asarray(expected))


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError):  # a staged PNG
        return {}


def test_only_the_trackers_in_report_to_get_the_gallery(tmp_path, tiny_plm_path):
    model, processor = load_model(tiny_plm_path, method="lora")
    args = SFTConfig(output_dir=str(tmp_path / "out"), report_to="none", bf16=False, max_length=None)
    trainer = build_trainer(model, processor, synthetic_shapes(2, seed=0, max_tiles=1), args=args)
    result = EvalResult(metrics={}, records=[EvalRecord(index=0, sample_id=None, prompt="q", reference="r",
                                                        answer="a")])
    assert log_eval_gallery(trainer, result, _eval_set()) == []
    assert not list(tmp_path.rglob("events.out.tfevents.*"))


def test_a_video_is_its_frames_side_by_side_and_text_cells_stay_one_line():
    samples = [{"videos": [make_frames(5, size=40, seed=3)]}, {"images": ["/no/such.png"]}]
    records = [EvalRecord(index=i, sample_id=None, prompt="Line one\nline two", reference=None, answer="a | b",
                          base_answer=None) for i in range(2)]
    metric, rows = gallery_rows(EvalResult(metrics={}, records=records), samples)
    assert metric is None
    assert rows[0].picture.size == (5 * 40 + 4 * 4, 40)  # 5 frames (never enlarged), 4 px apart
    assert rows[1].picture is None  # the missing file: no picture (the HTML report shows the error)
    lines = gallery_markdown(rows, metric).splitlines()
    assert len(lines) == 4
    assert lines[2] == "| unscored | #0 | Line one line two | — | — | a \\| b | — → — |"
