"""Quiet by default, everything with PLM_TUNE_VERBOSE=1: skip summaries with short names, short training lines."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from conftest import make_image
from trl import SFTConfig

from data_adapters import BadRecord, SkipReport
from plm_tune.training.quiet_log import short_log_line
from plm_tune.verbosity import VERBOSE_ENV, is_verbose


def _report() -> SkipReport:
    report = SkipReport("from_dicom(/site-packages/pydicom/data/test_files)", kept=117)
    for i in range(14):
        report.add(BadRecord(f"/site-packages/pydicom/data/test_files/nopixels{i}.dcm", "no pixel data", "none"))
    report.add(BadRecord("/site-packages/data_store/data/bad.dcm", "corrupt header", "bad"))
    report.add(BadRecord("captions.csv row 3", "no caption", "empty"))
    return report


def test_skip_summary_is_one_line_per_reason_with_three_short_names(monkeypatch):
    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    lines = _report().summary().splitlines()
    assert lines[1].split(":", 1)[1].strip() == "nopixels0.dcm, nopixels1.dcm, nopixels2.dcm (+11 more)"
    assert lines[1].split()[:4] == ["14", "no", "pixel", "data:"]
    assert lines[2].endswith("corrupt header: bad.dcm") and lines[3].endswith("no caption: captions.csv row 3")
    assert "site-packages" not in "\n".join(lines[1:]) and VERBOSE_ENV in lines[-1]


def test_verbose_skip_summary_names_every_record_in_full(monkeypatch):
    monkeypatch.setenv(VERBOSE_ENV, "1")
    text = _report().summary()
    assert all(f"/site-packages/pydicom/data/test_files/nopixels{i}.dcm" in text for i in range(14))
    assert "more)" not in text and _report().summary(verbose=False) != text


@pytest.mark.parametrize("value, verbose", [("", False), ("0", False), (" False ", False), ("no", False),
                                            ("1", True), ("yes", True)])
def test_one_switch_sets_the_skip_summaries_and_the_training_log(monkeypatch, value, verbose):
    from transformers import ProgressCallback
    from transformers.trainer_callback import CallbackHandler

    from plm_tune.training.quiet_log import quiet_training_log

    monkeypatch.setenv(VERBOSE_ENV, value)
    assert is_verbose() is verbose
    assert ("(+11 more)" not in _report().summary()) is verbose
    trainer = SimpleNamespace(callback_handler=CallbackHandler([ProgressCallback()], None, None, None, None))
    quiet_training_log(trainer)  # reads only the trainer's callbacks
    assert (type(trainer.callback_handler.callbacks[0]) is ProgressCallback) is verbose


def test_short_log_line_keeps_loss_rate_epoch():
    logs = {"loss": 5.8974, "grad_norm": 0.38, "learning_rate": 0.005, "entropy": 6.7, "epoch": 1.818,
            "tokens_per_second": 1253.0, "collator/dropped_turns": 0}
    assert short_log_line(logs, 40, 150) == "step 40/150: loss 5.897, learning_rate 0.005, epoch 1.818"
    assert short_log_line({"tokens_per_second": 3.0}, 1, 2) is None
    dpo = {"loss": 0.0626, "rewards/accuracies": 0.975, "rewards/margins": 3.345, "logps/chosen": -11.57,
           "learning_rate": 0.002, "epoch": 18.12}  # a TRL DPOTrainer log: its reward accuracy and margin shown
    assert short_log_line(dpo, 290, 300) == ("step 290/300: loss 0.0626, rewards/accuracies 0.975, rewards/margins "
                                             "3.345, learning_rate 0.002, epoch 18.12")


def _train(tiny_plm_path, tmp_path):
    from plm_tune import build_trainer, load_model

    samples = [{"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]},
                             {"role": "assistant", "content": "Noise."}], "images": [make_image(60, 40, seed=i)]}
               for i in range(2)]
    model, processor = load_model(tiny_plm_path, method="lora")
    args = SFTConfig(output_dir=str(tmp_path / "run"), max_steps=2, logging_steps=1, per_device_train_batch_size=2,
                     report_to="none", bf16=False, max_length=None, save_strategy="no", dataloader_pin_memory=False)
    trainer = build_trainer(model, processor, samples, args=args)
    trainer.train()
    return trainer


def test_training_prints_short_lines_and_the_full_dicts_when_verbose(tiny_plm_path, tmp_path, capfd, monkeypatch):
    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    trainer = _train(tiny_plm_path, tmp_path / "quiet")
    printed = "".join(capfd.readouterr())
    assert "step 1/2: loss " in printed and "step 2/2: loss " in printed and "train_runtime" in printed
    assert "grad_norm" not in printed and "collator/" not in printed
    assert "grad_norm" in trainer.state.log_history[0]  # logged as before: only the console is shorter

    monkeypatch.setenv(VERBOSE_ENV, "1")
    _train(tiny_plm_path, tmp_path / "verbose")
    printed = "".join(capfd.readouterr())
    assert "'grad_norm'" in printed and "step 1/2:" not in printed


def test_pydicoms_notes_are_one_summary_line_and_every_note_when_verbose(monkeypatch, caplog):
    import logging
    import warnings
    from pathlib import Path

    import pydicom.data

    from data_adapters import from_dicom
    from plm_tune.data.media import load_image

    padded = Path(pydicom.data.__file__).parent / "test_files" / "MR_small_padded.dcm"  # pydicom warns on it
    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    with warnings.catch_warnings(record=True) as escaped, caplog.at_level(logging.WARNING, logger="data_adapters"):
        warnings.simplefilter("always")
        samples = from_dicom([str(padded)], caption="{Modality}")
        load_image(samples[0]["images"][0])  # training decodes it again: still quiet
    assert not [w for w in escaped if "pydicom" in w.filename], [str(w.message) for w in escaped]
    lines = [r.getMessage() for r in caplog.records if "pydicom read" in r.getMessage()]
    assert len(lines) == 1 and "1 file(s)" in lines[0] and "MR_small_padded.dcm: The pixel data" in lines[0]

    caplog.clear()
    monkeypatch.setenv(VERBOSE_ENV, "1")
    with caplog.at_level(logging.WARNING, logger="data_adapters"):
        from_dicom([str(padded)], caption="{Modality}")
    notes = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(f"{padded}: pydicom: The pixel data") for m in notes), notes
    assert not any("pydicom read" in m for m in notes)
