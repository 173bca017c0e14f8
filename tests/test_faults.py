"""Fault injection (issue 15): bad inputs built for real on disk, one group of cases per row of the issue.

Each case is named, counted, or refused with a message naming its record; none may give a silently wrong
result. ``BAD_INPUTS`` lists the cases (the README's figure counts them).

| row | cases |
| --- | --- |
| patient identifiers | name / ID / birth date / accession / date and ID shapes in free-text DICOM tags |
| pixels | 16-bit PNG ramp, EXIF-rotated JPEG (pixels and header size), transparent palette PNG |
| video | truncated faststart MP4 (decoder and adapter) |
| bad bytes | non-UTF-8 and lone surrogate in jsonl / csv / json, NUL in a path, skip skips only the record |
| unnamed errors | undecodable image in a shard, surrogate in text at the collator, empty dataset, --arg template |
| policy gaps | assistant first, user last, max_tiles 0 (sample, collator, planner), unquoted csv comma |
| checkpoints | disk full mid-save, unwritable output, resume past an incomplete checkpoint |
| determinism | the same seed gives bit-identical LoRA adapters after real training steps |

Round three (issue 25), each area's cases in its ``BAD_INPUTS_<AREA>`` above its section at the end:

| area | cases |
| --- | --- |
| PHI | values in sequences / private tags, name groups, scripts and transliterations, date / ID spellings, SSN, phones, Annex E, empty elements |
| tokens and paths | names, IDs and dates in PACS-style paths kept out of a run's files (more in ``tests/test_push.py``) |
| pixels | float (NaN, inf), signed 16-bit and 32-bit TIFFs, RescaleSlope 0, rotated and variable-frame-rate video, unknown transfer syntax |
| records | invisible-only text, duplicate JSON keys, 1e400, deep nesting, BOMs, a report on a JSON that is no eval.json |
| settings | out-of-range numbers, settings the method ignores, unwritable / reused output folders, resume and merge across bases |
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from data_adapters import from_image_folder, from_llava_json, from_plm_jsonl, from_video_folder
from data_adapters._records import BadRecord
from plm_tune import PLMCollator, build_trainer, load_image, load_model, validate_sample
from plm_tune.apps.cli import _parse_value
from plm_tune.data.media import image_size, load_video, video_frame_count
from plm_tune.encoding.costs import estimate_cost

BAD_INPUTS = (
    "DICOM free text with the patient's name, ID, birth date, accession number (redacted)",
    "DICOM free text with identifying text under free_text_phi='refuse' (counted skip)",
    "DICOM free text with date and ID shapes of nobody in the header (redacted)",
    "16-bit greyscale PNG ramp", "EXIF-rotated JPEG (pixels)", "EXIF-rotated JPEG (header size in plan)",
    "transparent palette PNG",
    "truncated faststart MP4 (decoder)", "truncated faststart MP4 (adapter, counted skip)",
    "non-UTF-8 byte in a jsonl line", "lone surrogate escape in a jsonl line", "non-UTF-8 byte in a csv row",
    "NUL in a csv path", "non-UTF-8 byte in a json list", "an unexpected exception in one record under skip",
    "undecodable image in a webdataset shard (adapter)", "undecodable image bytes at the collator",
    "lone surrogate in a sample's text at the collator", "build_trainer on an empty dataset",
    "--arg caption={Modality}", "--arg prompt='Question: what?'",
    "conversation starting with the assistant", "conversation ending with a user turn",
    "max_tiles 0 in a sample (validate, collator, plan)", "PLMCollator(max_tiles=0)",
    "unquoted comma in a csv caption",
    "disk full mid-save", "unwritable output_dir", "resume with an incomplete newest checkpoint",
    "same seed, two LoRA runs",
)


# ------------------------------------------------------------------------------------------- patient identifiers
def _dicom_with_free_text(folder, name, **tags):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    header = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
    header.PatientName, header.PatientID = "Smith^Johanna^Quinn", "PX0048213"
    header.PatientBirthDate, header.AccessionNumber = "19610423", "ACC7781"
    for keyword, value in tags.items():
        setattr(header, keyword, value)
    folder.mkdir(exist_ok=True)
    header.save_as(folder / name)
    return folder / name


FREE_TEXT = "{Modality}: {StudyDescription}; {SeriesDescription}; {ProtocolName}; {ImageComments}"
IDENTIFYING = ("Johanna", "Smith", "Quinn", "PX0048213", "ACC7781", "1961", "23/04", "2021", "5550123")


def test_phi_in_free_text_tags_is_redacted_by_default_and_refused_on_request(tmp_path):
    from data_adapters.dicom import from_dicom

    scans = tmp_path / "scans"
    _dicom_with_free_text(scans, "named.dcm", StudyDescription="CT HEAD for JOHANNA SMITH PX0048213",
                          SeriesDescription="born 23/04/1961, accession ACC7781", ProtocolName="Quinn head",
                          ImageComments="seen 4 Mar 2021 (ref 5550123) and 2021-03-04")
    _dicom_with_free_text(scans, "clean.dcm", StudyDescription="CT HEAD", SeriesDescription="AXIAL 5mm",
                          ProtocolName="HEAD ROUTINE", ImageComments="no contrast")
    samples = {s["id"]: s["messages"][-1]["content"][0]["text"] for s in from_dicom(scans, caption=FREE_TEXT)}
    assert samples["clean.dcm"] == "CT: CT HEAD; AXIAL 5mm; HEAD ROUTINE; no contrast"  # nothing clinical lost
    named = samples["named.dcm"]
    assert named.startswith("CT: CT HEAD for") and "head" in named.lower()
    assert not [value for value in IDENTIFYING if value.lower() in named.lower()], named

    refused = from_dicom(scans, caption=FREE_TEXT, free_text_phi="refuse", on_error="skip")
    assert refused["id"] == ["clean.dcm"]
    assert refused.skip_report.counts == {"identifying text": 1}
    with pytest.raises(BadRecord, match=r"named\.dcm: identifying text: StudyDescription holds .*PatientName") as err:
        from_dicom(scans, caption=FREE_TEXT, free_text_phi="refuse")
    assert "Johanna" not in str(err.value) and "PX0048213" not in str(err.value)  # the error names kinds, not values


# ------------------------------------------------------------------------------------------------------- pixels
def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (8, 1))
    Image.fromarray(ramp).save(tmp_path / "ramp16.png")
    assert Image.open(tmp_path / "ramp16.png").mode.startswith("I")
    grey = np.asarray(load_image(str(tmp_path / "ramp16.png")))[..., 0].astype(int)
    assert (grey == 255).mean() < 0.01  # clipping made 99.6% of the ramp white
    assert np.all(np.diff(grey[0]) >= 0) and grey[0, 0] == 0 and grey[0, -1] == 255
    assert abs(grey[0, 128] - 128) <= 1


def test_exif_orientation_applies_to_pixels_and_to_the_header_size_plan_reads(tmp_path):
    stored = np.zeros((40, 60, 3), np.uint8)
    stored[:, :30] = (255, 0, 0)  # left half red as stored; orientation 6 shows it turned 90 degrees clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    shown = load_image(str(tmp_path / "rotated.jpg"))
    assert shown.size == (40, 60)
    top, bottom = np.asarray(shown)[5, 20], np.asarray(shown)[55, 20]
    assert top[0] > 200 and top[2] < 60 and bottom[0] < 60  # the red half is on top once turned
    assert image_size(str(tmp_path / "rotated.jpg")) == (40, 60)


def test_transparent_palette_png_is_composited_on_white(tmp_path):
    palette = Image.new("P", (16, 16), 1)
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)  # index 0 red, index 1 blue
    palette.paste(0, (0, 0, 8, 16))  # left half index 0, declared transparent below
    palette.save(tmp_path / "pal.png", transparency=0)
    pixels = np.asarray(load_image(str(tmp_path / "pal.png")))
    assert tuple(pixels[4, 2]) == (255, 255, 255)  # the hidden red stays hidden, as transformers shows it
    assert tuple(pixels[4, 12]) == (0, 0, 255)


# -------------------------------------------------------------------------------------------------------- video
def _faststart_mp4(path, frames=30, fps=10):
    av = pytest.importorskip("av")
    rng = np.random.default_rng(0)
    with av.open(str(path), "w", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=fps)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        for _ in range(frames):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_truncated_faststart_mp4_is_an_error_not_repeated_frames(tmp_path):
    whole = _faststart_mp4(tmp_path / "whole.mp4")
    data = whole.read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: int(len(data) * 0.4)])  # header (moov first) promises 3 s
    assert load_video(str(whole), num_frames=4).shape[0] == 4
    with pytest.raises(ValueError, match=r"cut\.mp4' stops decoding at .*truncated"):
        load_video(str(tmp_path / "cut.mp4"), num_frames=4)

    (tmp_path / "annotations.csv").write_text("file_name,caption\nwhole.mp4,Noise.\ncut.mp4,Noise cut.\n")
    dataset = from_video_folder(tmp_path, on_error="skip")
    assert [os.path.basename(v[0]["path"]) for v in dataset["videos"]] == ["whole.mp4"]
    assert dataset.skip_report.counts == {"truncated video": 1}
    assert "line 3" in dataset.skip_report.examples["truncated video"][0]


# ---------------------------------------------------------------------------------------------------- bad bytes
def _png(path, colour=(10, 200, 30)):
    Image.new("RGB", (24, 24), colour).save(path)
    return path.name


def _plm_line(image, answer="A square.", turns=None):
    turns = turns or [("human", "<image>\nWhat is it?"), ("assistant", answer)]
    return json.dumps({"image": image, "conversations": [{"from": f, "value": v} for f, v in turns]})


def test_non_utf8_and_lone_surrogates_in_jsonl_are_named_and_skipped_alone(tmp_path):
    _png(tmp_path / "a.png")
    lines = [_plm_line("a.png").encode(), _plm_line("a.png", "ANSWER").encode().replace(b"ANSWER", b"caf\xe9"),
             _plm_line("a.png", "x").replace('"x"', '"\\ud800"').encode(), _plm_line("a.png", "Fine.").encode()]
    (tmp_path / "data.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    dataset = from_plm_jsonl(tmp_path / "data.jsonl", media_root=tmp_path, on_error="skip")
    assert len(dataset) == 2 and dataset.skip_report.skipped == 2
    named = [name for names in dataset.skip_report.examples.values() for name in names]
    assert sorted(named) == ["data.jsonl line 2", "data.jsonl line 3"]
    with pytest.raises(BadRecord, match=r"data\.jsonl line 2: not UTF-8 text: .*byte 0xe9"):
        from_plm_jsonl(tmp_path / "data.jsonl", media_root=tmp_path)


def test_non_utf8_and_nul_path_in_csv_are_named_and_skipped_alone(tmp_path):
    _png(tmp_path / "a.png")
    rows = b"file_name,caption\na.png,Green.\na.png,caf\xe9 au lait\na\x00.png,Nul.\na.png,Still green.\n"
    (tmp_path / "metadata.csv").write_bytes(rows)
    dataset = from_image_folder(tmp_path, on_error="skip")
    assert [m[-1]["content"][0]["text"] for m in dataset["messages"]] == ["Green.", "Still green."]
    assert dataset.skip_report.counts == {"not UTF-8 text": 1, "bad media path": 1}
    assert dataset.skip_report.examples["bad media path"][0].startswith("metadata.csv line 4")
    with pytest.raises(BadRecord, match=r"metadata\.csv line 3: not UTF-8 text"):
        from_image_folder(tmp_path)


def test_non_utf8_in_a_json_list_names_the_item(tmp_path):
    _png(tmp_path / "a.png")
    item = {"image": "a.png", "conversations": [{"from": "human", "value": "<image>\nQ?"},
                                                {"from": "gpt", "value": "ANSWER"}]}
    text = json.dumps([item, item]).encode()
    (tmp_path / "mix.json").write_bytes(text.replace(b"ANSWER", b"caf\xe9", 1))
    dataset = from_llava_json(tmp_path / "mix.json", image_root=tmp_path, on_error="skip")
    assert len(dataset) == 1 and dataset.skip_report.skipped == 1
    assert dataset.skip_report.examples[next(iter(dataset.skip_report.counts))][0].startswith("mix.json item 0")


def test_skip_skips_exactly_the_record_whatever_the_exception():
    from data_adapters._records import build_dataset

    def to_sample(record):
        where, value = record
        if value == 2:
            raise KeyError("boom")  # not a BadRecord: a bug or an odd record
        return {"id": where, "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}

    records = [(f"rows.csv line {i}", i) for i in (1, 2, 3)]
    dataset = build_dataset(lambda: records, to_sample, source="rows.csv", on_error="skip")
    assert dataset["id"] == ["rows.csv line 1", "rows.csv line 3"]
    assert dataset.skip_report.examples == {"unexpected KeyError": ["rows.csv line 2"]}
    with pytest.raises(BadRecord, match=r"rows\.csv line 2: unexpected KeyError"):
        build_dataset(lambda: records, to_sample, source="rows.csv")


# ----------------------------------------------------------------------------------------------- unnamed errors
def _shard(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


def test_undecodable_image_in_a_shard_is_named_by_shard_and_key(tmp_path, processor):
    from data_adapters.webdataset import from_webdataset

    good = io.BytesIO()
    Image.new("RGB", (32, 32), (0, 0, 255)).save(good, format="PNG")
    caption = json.dumps({"caption": "Blue."}).encode()
    shard = _shard(tmp_path / "s0.tar", [("k1.png", good.getvalue()), ("k1.json", caption),
                                         ("k2.png", b"\x89PNG not really"), ("k2.json", caption),
                                         ("k3.png", good.getvalue()), ("k3.json", caption)])
    with pytest.raises(BadRecord, match=r"s0\.tar key 'k2': undecodable image"):
        list(from_webdataset(shard))
    skipping = from_webdataset(shard, on_error="skip")
    assert [s["id"] for s in skipping] == ["s0.tar/k1", "s0.tar/k3"]
    # Bytes with a good header but a cut body pass the header check; the collator then names the sample.
    cut = {"id": "s0.tar/k9", "messages": [{"role": "user", "content": [{"type": "image"}]},
                                           {"role": "assistant", "content": "Blue."}],
           "images": [good.getvalue()[:60]]}
    with pytest.raises(ValueError, match=r"id='s0\.tar/k9', images\[0\]: Could not decode"):
        PLMCollator(processor, max_tiles=1)([cut])


def test_surrogate_text_fails_naming_the_sample_not_in_the_tokenizer(processor):
    sample = {"id": "case-7", "messages": [{"role": "user", "content": "What is \ud83d?"},
                                           {"role": "assistant", "content": "Nothing."}]}
    with pytest.raises(ValueError, match=r"sample id='case-7': message 0: the text holds a lone surrogate U\+D83D"):
        PLMCollator(processor).encode(sample)


def test_build_trainer_on_an_empty_dataset_says_so(tiny_plm_path, tmp_path):
    from trl import SFTConfig

    model, processor = load_model(tiny_plm_path, method="lora")
    with pytest.raises(ValueError, match="train_dataset is empty"):
        build_trainer(model, processor, [], args=SFTConfig(output_dir=str(tmp_path), bf16=False, report_to="none"))


def test_arg_values_that_are_templates_or_prompts_stay_text():
    assert _parse_value("{Modality}") == "{Modality}"
    assert _parse_value("{Modality} {BodyPartExamined}: {StudyDescription}") == \
        "{Modality} {BodyPartExamined}: {StudyDescription}"
    assert _parse_value("Question: what is shown?") == "Question: what is shown?"
    assert _parse_value("4") == 4 and _parse_value("[a, b]") == ["a", "b"] and _parse_value("{a: 1}") == {"a": 1}


# -------------------------------------------------------------------------------------------------- policy gaps
def test_conversation_must_start_with_the_user_and_end_with_the_assistant():
    starts = {"id": "s1", "messages": [{"role": "system", "content": "Be brief."},
                                       {"role": "assistant", "content": "Hello."},
                                       {"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Yes."}]}
    ends = {"id": "s2", "messages": [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Yes."},
                                     {"role": "user", "content": "And?"}]}
    with pytest.raises(ValueError, match=r"id='s1': message 1: the conversation starts with the assistant"):
        validate_sample(starts)
    with pytest.raises(ValueError, match=r"id='s2': message 2: the conversation ends with a user message"):
        validate_sample(ends)


def test_max_tiles_0_is_refused_by_validation_collator_and_planner(processor):
    sample = {"id": "z", "messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "?"}]},
                                      {"role": "assistant", "content": "Grey."}],
              "images": [Image.new("RGB", (64, 64))], "max_tiles": 0}
    collator = PLMCollator(processor, max_tiles=2)
    for check in (validate_sample, collator, lambda s: estimate_cost(s, collator)):
        with pytest.raises(ValueError, match=r"id='z': 'max_tiles' must be a positive integer, got 0"):
            check(sample if check is not collator else [sample])
    with pytest.raises(ValueError, match="'max_tiles' must be a positive integer, got 0"):
        PLMCollator(processor, max_tiles=0)


def test_unquoted_comma_in_a_csv_caption_is_named_not_cut(tmp_path):
    _png(tmp_path / "a.png")
    (tmp_path / "metadata.csv").write_text("file_name,caption\na.png,Green.\na.png,Green, square and small.\n")
    with pytest.raises(BadRecord, match=r"metadata\.csv line 3: extra csv fields: the row has 3 fields but the "
                                        r"header has 2"):
        from_image_folder(tmp_path)
    assert from_image_folder(tmp_path, on_error="skip").skip_report.counts == {"extra csv fields": 1}


# -------------------------------------------------------------------------------------------------- checkpoints
TRAIN = textwrap.dedent("""
    import resource, signal, sys
    from trl import SFTConfig
    from data_adapters.synthetic import synthetic_shapes
    from plm_tune import build_trainer, load_model
    model, processor = load_model(sys.argv[1], method="lora")
    args = SFTConfig(output_dir=sys.argv[2], max_steps=2, save_steps=1, per_device_train_batch_size=2,
                     report_to="none", bf16=False, max_length=None, disable_tqdm=True, seed=0)
    trainer = build_trainer(model, processor, synthetic_shapes(4, seed=0, max_tiles=1), args=args)
    if len(sys.argv) > 3:  # a disk that fills up: writes past this many bytes fail with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[3]), int(sys.argv[3])))
    trainer.train()
""")


def _train(tiny_plm_path, output_dir, *limit):
    env = {**os.environ, "PYTHONPATH": os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-c", TRAIN, tiny_plm_path, str(output_dir), *map(str, limit)],
                          capture_output=True, text=True, env=env)


def test_disk_full_mid_save_is_one_line_and_resume_skips_the_partial_checkpoint(tiny_plm_path, tmp_path):
    out = tmp_path / "out"
    full = _train(tiny_plm_path, out, 20_000)
    assert full.returncode != 0
    last = full.stderr.strip().splitlines()[-1]
    assert last.startswith("plm_tune.training.checkpoints.CheckpointWriteError: Training stopped: writing to"), full.stderr[-2000:]
    assert "a file-size limit was reached" in last and "checkpoint-1 is skipped" in last
    assert (out / "checkpoint-1").is_dir() and not (out / "checkpoint-1" / "trainer_state.json").exists()

    whole = _train(tiny_plm_path, tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-2000:]
    (out / "checkpoint-1").rename(out / "checkpoint-9")  # a newer, incomplete checkpoint beside a complete one
    (tmp_path / "whole" / "checkpoint-1").rename(out / "checkpoint-1")
    model, processor = load_model(tiny_plm_path, method="lora")
    from trl import SFTConfig

    from data_adapters.synthetic import synthetic_shapes

    args = SFTConfig(output_dir=str(out), max_steps=2, per_device_train_batch_size=2, report_to="none",
                     bf16=False, max_length=None, disable_tqdm=True, save_strategy="no")
    trainer = build_trainer(model, processor, synthetic_shapes(4, seed=0, max_tiles=1), args=args)
    trainer.train(resume_from_checkpoint=True)  # transformers alone picks checkpoint-9 and fails
    assert trainer.state.global_step == 2


def test_unwritable_output_dir_is_one_line_before_training(tmp_path):
    from plm_tune.training.checkpoints import CheckpointWriteError, ensure_writable

    (tmp_path / "file").write_text("a file where a folder should be")
    with pytest.raises(CheckpointWriteError, match=r"output_dir '.*file/out' cannot be written") as err:
        ensure_writable(str(tmp_path / "file" / "out"))
    assert "\n" not in str(err.value) and err.value.__cause__ is None


# -------------------------------------------------------------------------------------------------- determinism
def test_the_same_seed_gives_bit_identical_lora_adapters(tiny_plm_path, tmp_path):
    from peft import get_peft_model_state_dict
    from trl import SFTConfig

    from data_adapters.synthetic import synthetic_shapes

    adapters, initial = [], []
    for run, global_seed in enumerate((1, 2)):
        torch.manual_seed(global_seed)  # whatever ran before: only the training seed may matter
        model, processor = load_model(tiny_plm_path, method="lora", seed=7)
        initial.append({k: v.clone() for k, v in get_peft_model_state_dict(model).items()})
        args = SFTConfig(output_dir=str(tmp_path / str(run)), max_steps=2, per_device_train_batch_size=2, seed=7,
                         report_to="none", bf16=False, max_length=None, disable_tqdm=True, save_strategy="no")
        build_trainer(model, processor, synthetic_shapes(4, seed=0, max_tiles=1), args=args).train()
        adapters.append(get_peft_model_state_dict(model))
    assert adapters[0].keys() == adapters[1].keys() and len(adapters[0]) > 0
    assert all(torch.equal(adapters[0][k], adapters[1][k]) for k in adapters[0])
    assert all(torch.equal(initial[0][k], initial[1][k]) for k in initial[0])
    other, _ = load_model(tiny_plm_path, method="lora", seed=8)  # another seed, another initialisation
    assert not all(torch.equal(initial[0][k], v) for k, v in get_peft_model_state_dict(other).items() if "lora_A" in k)


BAD_INPUTS_TOKENS_AND_PATHS = (
    "a PACS export layout DOE_JOHN_PX0048213/Doe_John_19610312_0N.dcm (real DICOM) trained on, evaluated, carded",
    "a dataset folder named after a second patient ROE^JANE with a birth date, recorded in datasets",
    "a missing DICOM under a patient-named path, shown as a media error in the report",
)


# ---- round three: TOKENS_AND_PATHS
_PATIENTS = {"DOE_JOHN_PX0048213": "Doe_John_19610312", "ROE^JANE_PX0051234": "Roe_Jane_19700101"}
_IDENTIFYING = ["DOE", "JOHN", "Doe_John", "PX0048213", "19610312", "ROE", "JANE", "Roe_Jane", "PX0051234", "19700101"]


def test_names_ids_and_dates_in_a_pacs_layout_reach_no_file_of_the_run(tiny_plm_path, tmp_path):
    """A real 2-step LoRA run through ``finetune`` on DICOM files laid out as a PACS export, with TensorBoard on,
    an eval with the report and the model card that a push would publish: no file in the output folder (but
    ``eval_data/``, the local copy of the held-out samples, which keeps their paths to re-run the eval and which
    a push never uploads) holds any part of the names, IDs or dates; ``record_media_paths`` brings them back."""
    import shutil

    from pydicom.data import get_testdata_file
    from trl import SFTConfig

    from data_adapters.dicom import from_dicom
    from plm_tune.after_training.push import files_to_upload, push_plan
    from plm_tune.after_training.report import write_report
    from plm_tune.apps.finetune import finetune
    from plm_tune.arguments import EvalArguments, MediaArguments, ModelArguments

    root = tmp_path / "export"
    for (folder, stem), source in zip(_PATIENTS.items(), ("CT_small.dcm", "MR_small.dcm"), strict=True):
        (root / folder).mkdir(parents=True)
        for k in range(3):
            shutil.copy(get_testdata_file(source, download=False), root / folder / f"{stem}_0{k}.dcm")
    samples = from_dicom(str(root), caption="{Modality}", max_tiles=1, progress=False)
    assert samples[0]["id"].startswith(next(iter(_PATIENTS)))  # the adapter's id is the path under the root

    def run(name: str, record_media_paths: bool = False):
        out = tmp_path / name
        args = SFTConfig(output_dir=str(out), max_steps=2, per_device_train_batch_size=2, report_to="tensorboard",
                         bf16=False, max_length=None, save_steps=1, logging_steps=1, disable_tqdm=True)
        finetune(samples.select([0, 1, 3, 4]), samples.select([2, 5]),
                 ModelArguments(model_name_or_path=str(tiny_plm_path), method="lora"), MediaArguments(max_tiles=1),
                 args, EvalArguments(eval_max_new_tokens=2, record_media_paths=record_media_paths),
                 datasets=[f"DICOM files in {root / 'ROE^JANE_PX0051234'}", str(root)])
        (out / "README.md").write_text(push_plan(out, "me/plm-scans").card)  # the card a push publishes
        return out

    out = run("out")
    # A media error in a shared report: a file gone from a patient-named folder.
    gone = {**samples[2], "images": [str(root / "DOE_JOHN_PX0048213" / "Doe_John_19610312_09.dcm")]}
    result = json.loads((out / "eval/eval.json").read_text())
    from plm_tune.inference.evaluation import EvalResult

    write_report(EvalResult.from_dict(result), [gone, samples[5]], out / "eval/report-missing.html")
    assert "could not show" in (out / "eval/report-missing.html").read_text()

    written = [p for p in out.rglob("*") if p.is_file() and "eval_data" not in p.relative_to(out).parts]
    names = {p.relative_to(out).as_posix() for p in written}
    assert {"eval/eval.json", "eval/report.html", "README.md", "plm_tune_training.json",
            "checkpoint-2/trainer_state.json"} <= names and any("tfevents" in n for n in names)
    leaks = {p.relative_to(out).as_posix(): [w for w in _IDENTIFYING if w.encode() in p.read_bytes()]
             for p in written}
    assert {name: words for name, words in leaks.items() if words} == {}
    records = result["records"]
    assert all(r["sample_id"].startswith("ref-") and r["sample_id"].endswith(".dcm") for r in records)
    datasets = json.loads((out / "plm_tune_training.json").read_text())["datasets"]
    assert datasets[0].startswith("DICOM files in /") and "export/ref-" in datasets[0]
    assert not [f for f in files_to_upload(out, include=["eval/eval.json", "eval/report.html"])
                if f.startswith("eval_data")]

    # Opted in: recorded as they are.
    kept = run("kept", record_media_paths=True)
    ids = [r["sample_id"] for r in json.loads((kept / "eval/eval.json").read_text())["records"]]
    assert ids == [samples[2]["id"], samples[5]["id"]]
    assert "ROE^JANE_PX0051234" in json.loads((kept / "plm_tune_training.json").read_text())["datasets"][0]

BAD_INPUTS_PIXELS = (
    "float TIFF with one NaN", "float TIFF in 0..1 with NaN and +inf",
    "signed 16-bit TIFF of CT Hounsfield units (little endian)", "signed 16-bit TIFF (big endian)",
    "32-bit integer TIFF", "32-bit integer TIFF, all negative",
    "DICOM with RescaleSlope 0", "enhanced-style DICOM with RescaleSlope 0 in a functional group",
    "DICOM with an unknown transfer syntax UID", "DICOM with a SOP class UID as its transfer syntax",
    "DICOM with a private (GE) transfer syntax",
    "MP4 with a 90-degree display matrix", "MP4 with a 180-degree display matrix",
    "variable-frame-rate MP4, clip 2.0-5.2 s", "variable-frame-rate MKV, clip 0.5-1.5 s",
)


# ---- round three: pixels
def _tiff16_signed(path, values, big_endian=False):
    """A baseline 16-bit signed greyscale TIFF (SampleFormat 2), written by hand: Pillow cannot write one."""
    import struct

    order = ">" if big_endian else "<"
    height, width = values.shape
    data = values.astype(order + "i2").tobytes()
    tags = [(256, 3, width), (257, 3, height), (258, 3, 16), (259, 3, 1), (262, 3, 1), (273, 4, 8),
            (277, 3, 1), (278, 3, height), (279, 4, len(data)), (339, 3, 2)]
    ifd = struct.pack(order + "H", len(tags))
    for tag, kind, value in tags:  # a SHORT sits in the first two bytes of the 4-byte value field
        ifd += struct.pack(order + "HHI", tag, kind, 1) + (struct.pack(order + "HH", value, 0) if kind == 3
                                                         else struct.pack(order + "I", value))
    header = (b"MM\x00\x2a" if big_endian else b"II\x2a\x00") + struct.pack(order + "I", 8 + len(data))
    path.write_bytes(header + data + ifd + b"\x00\x00\x00\x00")
    return str(path)


def _grey(path):
    return np.asarray(load_image(str(path)))[..., 0].astype(int)


def test_float_tiff_with_nan_or_inf_is_windowed_by_its_finite_values(tmp_path):
    ramp = np.tile(np.linspace(-3.0, 5.0, 64, dtype=np.float32), (4, 1))
    ramp[2, 10] = np.nan
    Image.fromarray(ramp).save(tmp_path / "nan.tif")
    assert Image.open(tmp_path / "nan.tif").mode == "F"
    grey = _grey(tmp_path / "nan.tif")
    assert grey[0, 0] == 0 and grey[0, -1] == 255 and abs(grey[0, 32] - 129) <= 1  # was all 0 (black)
    assert grey[2, 10] == 0  # NaN drawn at the window's low end

    unit = np.tile(np.linspace(0.0, 0.5, 64, dtype=np.float32), (4, 1))  # within 0..1: shown on 0..1
    unit[0, 0], unit[0, 1] = np.nan, np.inf
    Image.fromarray(unit).save(tmp_path / "unit.tif")
    grey = _grey(tmp_path / "unit.tif")
    assert grey[1, -1] == 128 and grey[1, 0] == 0 and grey[0, 0] == 0 and grey[0, 1] == 255


def test_signed_16_bit_tiff_is_windowed_by_its_range_not_clipped(tmp_path):
    hounsfield = np.tile(np.linspace(-1024, 3071, 128).astype(np.int16), (4, 1))
    for name, big in (("ct.tif", False), ("ct_mm.tif", True)):
        opened = Image.open(_tiff16_signed(tmp_path / name, hounsfield, big_endian=big))
        assert opened.mode == "I" and np.asarray(opened).min() == -1024  # PIL reads I;16S / I;16BS as I
        grey = _grey(tmp_path / name)
        assert grey[0, 0] == 0 and grey[0, -1] == 255 and np.all(np.diff(grey[0]) >= 0)
        assert len(np.unique(grey[0])) > 100  # was 0..11: the whole scan in 12 shades of near-black
        air_to_water = np.searchsorted(hounsfield[0], 0)
        assert abs(grey[0, air_to_water] - round(1024 / 4095 * 255)) <= 2


def test_32_bit_integer_tiff_is_scaled_by_its_range(tmp_path):
    counts = np.tile(np.linspace(0, 200_000, 100).astype(np.int32), (4, 1))
    Image.fromarray(counts).save(tmp_path / "counts.tif")
    assert Image.open(tmp_path / "counts.tif").mode == "I"
    grey = _grey(tmp_path / "counts.tif")
    assert (grey == 255).mean() < 0.02 and grey[0, 0] == 0 and abs(grey[0, 50] - 129) <= 2  # was 67% white
    Image.fromarray(-counts - 5).save(tmp_path / "negative.tif")
    grey = _grey(tmp_path / "negative.tif")
    assert grey[0, 0] == 255 and grey[0, -1] == 0 and len(np.unique(grey)) > 90  # was all black


def _ct_with(tmp_path, name, **tags):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    ds.save_as(tmp_path / name)
    return str(tmp_path / name)


def test_dicom_rescale_slope_0_is_read_as_1_with_a_warning_naming_the_file(tmp_path, caplog):
    from plm_tune.data.dicom import dicom_to_frames

    reference = dicom_to_frames(_ct_with(tmp_path, "good.dcm"))
    broken = _ct_with(tmp_path, "slope0.dcm", RescaleSlope=0)
    with caplog.at_level("WARNING", logger="plm_tune.data.dicom_render"):
        frames = dicom_to_frames(broken)
    assert frames.std() > 10 and np.array_equal(frames, reference)  # CT_small's slope is 1: the same image
    assert "slope0.dcm': RescaleSlope is 0" in caplog.text


def test_dicom_rescale_slope_0_in_a_functional_group_is_read_as_1(tmp_path, caplog):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset

    from plm_tune.data.dicom import dicom_to_frames

    reference = dicom_to_frames(_ct_with(tmp_path, "flat.dcm"))
    ds = pydicom.dcmread(_ct_with(tmp_path, "grouped.dcm"))
    transform = Dataset()
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = 0, -1024, "HU"
    group = Dataset()
    group.PixelValueTransformationSequence = [transform]
    ds.SharedFunctionalGroupsSequence = [group]
    ds.save_as(tmp_path / "grouped.dcm")
    with caplog.at_level("WARNING", logger="plm_tune.data.dicom_render"):
        frames = dicom_to_frames(str(tmp_path / "grouped.dcm"))
    assert frames.std() > 10 and np.array_equal(frames, reference)
    assert "grouped.dcm': RescaleSlope is 0" in caplog.text


@pytest.mark.parametrize("uid", ["1.2.3.4.5", "1.2.840.10008.5.1.4.1.1.2", "1.2.840.113619.5.2"])
def test_dicom_with_an_unknown_transfer_syntax_names_the_file_and_the_fix(tmp_path, uid):
    pydicom = pytest.importorskip("pydicom")
    from plm_tune.data.dicom import DicomError, dicom_to_frames

    path = _ct_with(tmp_path, "odd.dcm")
    ds = pydicom.dcmread(path)
    placeholder = ("1." + "9" * 64)[: len(uid)]  # pydicom refuses to write a known UID that is no syntax
    ds.file_meta.TransferSyntaxUID = placeholder
    ds.save_as(path)
    with open(path, "rb") as fp:
        data = fp.read()
    with open(path, "wb") as fp:
        fp.write(data.replace(placeholder.encode(), uid.encode(), 1))
    for read in (dicom_to_frames, load_image):  # was a bare "ValueError: UID is not a transfer syntax."
        with pytest.raises(DicomError, match=rf"odd\.dcm': unsupported compression: its Transfer Syntax UID "
                                             rf"'{uid}' is not a transfer syntax .* Fix: .*gdcmconv") as err:
            read(path)
        assert "\n" not in str(err.value)


def _encode(path, frames, rate=10, times=None, rotation=None):
    """Encode RGB frames with PyAV; ``times`` (seconds) sets each frame's pts, ``rotation`` (degrees,
    counter-clockwise) the container's display matrix, as a phone writes a portrait video."""
    av = pytest.importorskip("av")
    from fractions import Fraction

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=rate)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        if times is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for i, pixels in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            if times is not None:
                frame.pts, frame.time_base = round(times[i] * 1000), Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return str(path)


def test_rotated_phone_video_is_decoded_as_a_player_shows_it(tmp_path, processor):
    stored = np.zeros((32, 64, 3), np.uint8)
    stored[:16, :16] = 255  # a white block in the stored top-left corner
    sample = {"id": "phone", "messages": [{"role": "user", "content": [{"type": "video"}]},
                                          {"role": "assistant", "content": "A block."}]}
    collator = PLMCollator(processor)
    for rotation, (rows, cols) in ((90, (slice(48, 64), slice(0, 16))), (180, (slice(16, 32), slice(48, 64)))):
        path = _encode(tmp_path / f"r{rotation}.mp4", [stored] * 5, rotation=rotation)
        frames = load_video(path, num_frames=3)
        assert frames.shape == ((3, 64, 32, 3) if rotation == 90 else (3, 32, 64, 3))  # was (3, 32, 64, 3)
        white = frames[0, ..., 0] > 128
        assert white[rows, cols].all() and white.sum() == 16 * 16  # turned counter-clockwise, as players do
        # The plan reads only frame counts for videos (each frame is resized to one tile): they agree.
        assert video_frame_count(path, 3) == len(frames)
        assert estimate_cost({**sample, "videos": [path]}, collator).frames == len(load_video(path)) == 5


def test_variable_frame_rate_clip_picks_frames_by_their_timestamps(tmp_path):
    av = pytest.importorskip("av")
    # 2 s of sparse frames (a still scene), then 20 fps: the average rate (~13.9 fps) puts index 27 at 2.0 s.
    times = [0.0, 0.09, 0.5, 1.0, 1.3, 1.95] + [round(1.95 + 0.05 * k, 2) for k in range(1, 90)]
    frames = [np.full((32, 32, 3), 2 * i, np.uint8) for i in range(len(times))]  # frame i has grey level 2i
    for name, (start, end) in (("vfr.mp4", (2.0, 5.2)), ("vfr.mkv", (0.5, 1.5))):
        path = _encode(tmp_path / name, frames, rate=20, times=times)
        with av.open(path) as container:
            assert [round(float(f.pts * f.time_base), 2) for f in container.decode(video=0)] == times
        shown = load_video({"path": path, "start": start, "end": end}, num_frames=8)
        picked = [int(round(level / 2)) for level in shown[:, 16, 16, 0].astype(int)]  # back to frame indices
        on_screen = [i for i, t in enumerate(times) if t <= end and (i + 1 == len(times) or times[i + 1] > start)]
        assert picked[0] == on_screen[0] and picked[-1] == on_screen[-1], (picked, on_screen)
        assert all(abs(p - q) <= 1 for p, q in zip(picked, sorted(picked), strict=True))
        assert all(start - 0.5 <= times[p] <= end for p in picked), [times[p] for p in picked]
        assert video_frame_count({"path": path, "start": start, "end": end}, 8) == len(picked)

BAD_INPUTS_PHI = (
    "IDs only in OtherPatientIDsSequence / RequestAttributesSequence and a name only in a private tag, in free text",
    "a private copy of SeriesDescription and a one-letter initial (nothing identifying: kept)",
    "person names in alphabetic, ideographic and phonetic groups, a one-character CJK name, umlaut transliterations",
    "a birth date in ten spellings, an accession number with a space, an SSN and phone numbers in free text",
    "caption templates naming Annex E attributes outside the old 46 (RequestedProcedureID, DeviceUID, ...)",
    "pydicom's MR_small.dcm (empty dates, '----' names) under redact and refuse",
    "empty PatientName / PatientID / whitespace AccessionNumber under redact and refuse",
)


# ---- round three: PHI
def _phi_dicom(folder, name, private=(), **tags):
    """CT_small.dcm with ``tags`` set (sequences as lists of dicts) and ``private`` LO values in a private block."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file
    from pydicom.dataset import Dataset

    header = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
    header.SpecificCharacterSet = "ISO_IR 192"  # UTF-8, for the names in other scripts
    for keyword, value in tags.items():
        if isinstance(value, list):
            value = [Dataset() for _ in value] if not value else [_item(Dataset(), **v) for v in value]
        setattr(header, keyword, value)
    block = header.private_block(0x0009, "PLMTUNE TEST", create=True)
    for offset, value in enumerate(private):
        block.add_new(0x10 + offset, "LO", value)
    folder.mkdir(exist_ok=True)
    header.save_as(folder / name)
    return folder / name


def _item(item, **tags):
    for keyword, value in tags.items():
        setattr(item, keyword, value)
    return item


def _captions(folder, template, **options):
    from data_adapters.dicom import from_dicom

    dataset = from_dicom(folder, caption=template, **options)
    return {s["id"]: s["messages"][-1]["content"][0]["text"] for s in dataset}, dataset


def test_identifying_values_in_sequences_and_private_tags_are_found_in_free_text(tmp_path, caplog):
    scans = tmp_path / "scans"
    # none of these has the shape of an ID (letters then 5+ digits, 6+ digits): only the header can name them
    _phi_dicom(scans, "nested.dcm", private=["Zhang Wei"], PatientName="Anon^Nobody", PatientID="X1",
               OtherPatientIDsSequence=[{"PatientID": "KX-2290", "IssuerOfPatientID": "StMary"}],
               RequestAttributesSequence=[{"RequestedProcedureID": "RQ4471", "ScheduledProcedureStepID": "SPS3390"}],
               StudyDescription="CT HEAD KX-2290 for ZHANG WEI", SeriesDescription="req RQ4471 step SPS3390 StMary")
    _phi_dicom(scans, "copied.dcm", private=["AXIAL 5mm", "HEAD"], PatientName="Doe^J", StudyDescription="CT HEAD",
               SeriesDescription="AXIAL 5mm", ImageComments="J shaped artefact, grade A")
    template = "{StudyDescription}; {SeriesDescription}; {ImageComments}"
    captions, _ = _captions(scans, template)
    assert captions["nested.dcm"] == "CT HEAD for; req step; Uncompressed", captions
    assert captions["copied.dcm"] == "CT HEAD; AXIAL 5mm; J shaped artefact, grade A"  # copies, words, initials
    assert "removed identifying text from the captions of 1 file(s)" in caplog.text
    with pytest.raises(BadRecord, match=r"nested\.dcm: identifying text: StudyDescription holds .*PatientID.*"
                                        r"private tag; SeriesDescription holds .*RequestedProcedureID") as err:
        _captions(scans, template, free_text_phi="refuse")
    assert not [v for v in ("KX-2290", "Zhang", "RQ4471", "SPS3390") if v.lower() in str(err.value).lower()]


def test_person_names_are_found_in_every_group_script_and_transliteration(tmp_path):
    scans = tmp_path / "scans"
    _phi_dicom(scans, "names.dcm", PatientName="Yamada^Tarou=山田^太郎=やまだ^たろう", ReferringPhysicianName="王^小明",
               OperatorsName="Müller^Jürgen", PerformingPhysicianName="Mueller^Anna",
               StudyDescription="MR BRAIN 山田太郎", SeriesDescription="やまだ たろう T2 FLAIR",
               ProtocolName="Mueller protocol, JUERGEN", ImageComments="read by 王 and Muller; Dr. Müller agrees")
    _phi_dicom(scans, "clean.dcm", PatientName="Li^Na=李^娜", SeriesDescription="T2 FLAIR NAVIGATOR, CLINICAL")
    captions, _ = _captions(scans, "{StudyDescription}; {SeriesDescription}; {ProtocolName}; {ImageComments}")
    assert captions["names.dcm"] == "MR BRAIN; T2 FLAIR; protocol, read by and; Dr. agrees", captions
    assert captions["clean.dcm"].endswith("T2 FLAIR NAVIGATOR, CLINICAL; Uncompressed")  # Li, Na: whole words only
    refused, dataset = _captions(scans, "{SeriesDescription}", free_text_phi="refuse", on_error="skip")
    assert refused == {"clean.dcm": "T2 FLAIR NAVIGATOR, CLINICAL"}
    assert dataset.skip_report.counts == {"identifying text": 1}


BIRTH_DATE_SPELLINGS = ("12-MAR-1961", "1961年3月12日", "12.03.1961", "03/12/1961", "March 12, 1961", "12 March 1961",
                        "1961-03-12", "12th of March 1961", "12.03.61", "１９６１−０３−１２")


def test_other_spellings_of_dates_accession_numbers_ssn_and_phones_are_removed(tmp_path):
    scans = tmp_path / "scans"
    for i, spelling in enumerate(BIRTH_DATE_SPELLINGS):
        _phi_dicom(scans, f"born{i}.dcm", PatientBirthDate="19610312", StudyDescription=f"CT HEAD born {spelling}")
    for i, text in enumerate(("ACC 7781", "acc-7781", "accession 7781", "SSN 123-45-6789", "ssn 123 45 6789",
                              "call (555) 012-3456", "ph 555-0123", "tel +44 20 7946 0958")):
        _phi_dicom(scans, f"id{i}.dcm", AccessionNumber="ACC7781", StudyDescription=f"CT HEAD {text}")
    _phi_dicom(scans, "clean.dcm", PatientBirthDate="19610312", AccessionNumber="ACC7781",
               StudyDescription="CT 120 kV 250 mAs 2.5-5.0 mm 512x512, 100-120 kV, 3 of 12")
    captions, _ = _captions(scans, "{StudyDescription}")
    assert captions.pop("clean.dcm") == "CT 120 kV 250 mAs 2.5-5.0 mm 512x512, 100-120 kV, 3 of 12"
    left = {name: text for name, text in captions.items() if text not in ("CT HEAD born", "CT HEAD")}
    assert left == {"id2.dcm": "CT HEAD accession", "id3.dcm": "CT HEAD SSN", "id4.dcm": "CT HEAD ssn",
                    "id5.dcm": "CT HEAD call"}, left
    _, refused = _captions(scans, "{StudyDescription}", free_text_phi="refuse", on_error="skip")
    assert refused["id"] == ["clean.dcm"]
    assert refused.skip_report.counts == {"identifying text": len(BIRTH_DATE_SPELLINGS) + 8}


def test_every_annex_e_attribute_is_refused_in_caption_templates(tmp_path):
    from pydicom.datadict import keyword_dict

    from data_adapters._annex_e import ANNEX_E, ANNEX_E_GROUPS, in_annex_e
    from data_adapters.dicom import FREE_TEXT_TAGS, PHI_TAGS, from_dicom

    # 2026c edition as transcribed by dicom-anonymizer 2.1.0: 652 attributes + 3 repeating groups; 627 in pydicom
    assert (len(ANNEX_E), len(ANNEX_E_GROUPS)) == (652, 3)
    keywords = {k for k in ANNEX_E.values() if k}
    assert len(keywords) == 627 and keywords <= set(keyword_dict)
    assert PHI_TAGS | FREE_TEXT_TAGS == keywords and not PHI_TAGS & FREE_TEXT_TAGS
    assert in_annex_e(0x60024000) and in_annex_e(0x50021234) and not in_annex_e(0x00080060)  # overlay, curve, Modality
    scans = tmp_path / "scans"
    _phi_dicom(scans, "a.dcm", StudyDescription="CT HEAD")
    for keyword in ("RequestedProcedureID", "PerformedStationName", "ClinicalTrialSubjectID", "DeviceUID",
                    "GantryID", "ScheduledStationName", "PatientInsurancePlanCodeSequence"):
        with pytest.raises(ValueError, match=rf"\{{{keyword}\}}.*(identifies the patient|sequence)"):
            from_dicom(scans, caption=f"{{Modality}} {{{keyword}}}")
    assert _captions(scans, "{Modality} {GantryID}", allow_phi_tags=("GantryID",))[0] == {"a.dcm": "CT"}


def test_empty_identifying_elements_are_not_search_strings(tmp_path, caplog):
    from pydicom.data import get_testdata_file

    scans = tmp_path / "scans"
    scans.mkdir()
    (scans / "MR_small.dcm").write_bytes(open(get_testdata_file("MR_small.dcm", download=False), "rb").read())
    _phi_dicom(scans, "blank.dcm", PatientName="", PatientID="", AccessionNumber="  ", PatientBirthDate="",
               StudyDescription="CT HEAD", ImageComments="no contrast")
    for policy in ("redact", "refuse"):
        caplog.clear()
        captions, dataset = _captions(scans, "{Modality} {StudyDescription} {ImageComments}", free_text_phi=policy)
        assert captions == {"MR_small.dcm": "MR Uncompressed", "blank.dcm": "CT CT HEAD no contrast"}, policy
        assert dataset.skip_report.skipped == 0 and "identifying text" not in caplog.text

BAD_INPUTS_RECORDS = (
    "csv captions of only U+200B / U+FEFF+U+2060 / soft hyphen (counted skip)",
    "jsonl answer of only U+200C U+200D joiners (counted skip)",
    "sample answers of only U+3164 Hangul filler / NUL / variation selector (validate_sample)",
    "webdataset .txt caption of only U+200B", "webdataset .json caption 1e400",
    "duplicate 'caption' key in a metadata.jsonl line", "duplicate 'value' key in a LLaVA json list turn",
    "duplicate key in a webdataset .json member",
    "metadata.jsonl caption 1e400", "metadata.jsonl caption NaN", "metadata.jsonl caption 3.10 (kept as written)",
    "LLaVA answer 1e400", "integer of 5000 digits in a jsonl line",
    "HF dataset float answer column", "HF dataset inf in a float answer column",
    "jsonl line 1 nested 100000 deep (image folder, counted skip)", "LLaVA .jsonl line 1 nested 100000 deep",
    "LLaVA .json list, item 0 nested 100000 deep (file-level error)",
    "metadata.csv with a BOM", "metadata.jsonl with a BOM", "LLaVA .json list with a BOM",
    "report on a training log json", "report on a json list", "report on {}", "report on metrics of strings",
    "report on records of the wrong type", "report on info.data.limit 'x'", "report on a file that is not json",
)


# ---- round three: records
def _caption_folder(folder, name, body):
    _png(folder / "a.png")
    (folder / name).write_bytes(body if isinstance(body, bytes) else body.encode())
    return folder


def test_invisible_only_captions_and_answers_count_as_empty(tmp_path):
    from plm_tune.data.sample import is_blank

    rows = "file_name,caption\na.png,\u200b\na.png,\ufeff\u2060\na.png,Green.\na.png,\u00ad\n"
    dataset = from_image_folder(_caption_folder(tmp_path, "metadata.csv", rows), on_error="skip")
    assert [m[-1]["content"][0]["text"] for m in dataset["messages"]] == ["Green."]
    assert dataset.skip_report.counts == {"no answer text": 3}
    with pytest.raises(BadRecord, match=r"metadata\.csv line 2 .*'\\u200b' \(only invisible characters\)"):
        from_image_folder(tmp_path)

    lines = [_plm_line("a.png", "\u200c\u200d"), _plm_line("a.png", "Fine.")]
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    dataset = from_plm_jsonl(tmp_path / "data.jsonl", media_root=tmp_path, on_error="skip")
    assert len(dataset) == 1 and dataset.skip_report.examples == {"no answer text": ["data.jsonl line 1"]}

    for blank in ("\u3164", "\x00", "\ufe0f \u200b"):  # Hangul filler, NUL, a variation selector
        assert is_blank(blank)
        sample = {"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": blank}]}
        with pytest.raises(ValueError, match="content is empty: its text .* is only invisible characters") as err:
            validate_sample(sample)
        assert err.value.reason == "empty content"
    assert not is_blank("\u200bA")


def test_webdataset_invisible_caption_duplicate_key_and_1e400_are_named_skips(tmp_path):
    from data_adapters.webdataset import from_webdataset

    png = io.BytesIO()
    Image.new("RGB", (32, 32), (0, 0, 255)).save(png, format="PNG")
    shard = _shard(tmp_path / "s.tar", [("k1.png", png.getvalue()), ("k1.json", b'{"caption": "Blue."}'),
                                        ("k2.png", png.getvalue()), ("k2.json", b'{"caption": "A", "caption": "B"}'),
                                        ("k3.png", png.getvalue()), ("k3.json", b'{"caption": 1e400}'),
                                        ("k4.png", png.getvalue()), ("k4.json", b'{"caption": "\\u200b"}')])
    dataset = from_webdataset(shard, on_error="skip", video_dir=str(tmp_path / "v"))
    assert [m[-1]["content"][0]["text"] for m in dataset["messages"]] == ["Blue."]
    assert dataset.skip_report.counts == {"duplicate key": 1, "non-finite number": 1, "missing caption": 1}
    txt = _shard(tmp_path / "t.tar", [("k1.png", png.getvalue()), ("k1.txt", "\ufeffBlue.".encode()),
                                      ("k2.png", png.getvalue()), ("k2.txt", "\u200b".encode())])
    dataset = from_webdataset(txt, caption_key="txt", on_error="skip", video_dir=str(tmp_path / "v"))
    assert [m[-1]["content"][0]["text"] for m in dataset["messages"]] == ["Blue."]  # the BOM is not text
    assert dataset.skip_report.counts == {"missing caption": 1}


def test_duplicate_json_keys_are_a_named_bad_record(tmp_path):
    lines = ['{"file_name": "a.png", "caption": "Green."}',
             '{"file_name": "a.png", "caption": "Red.", "caption": "Green."}']
    _caption_folder(tmp_path, "metadata.jsonl", "\n".join(lines) + "\n")
    dataset = from_image_folder(tmp_path, on_error="skip")
    assert len(dataset) == 1 and dataset.skip_report.examples == {"duplicate key": ["metadata.jsonl line 2"]}
    with pytest.raises(BadRecord, match=r"line 2: duplicate key: the key 'caption' appears twice .*'Red\.'"):
        from_image_folder(tmp_path)

    item = {"image": "a.png", "conversations": [{"from": "human", "value": "<image>\nQ?"},
                                                {"from": "gpt", "value": "ANSWER"}]}
    text = json.dumps([item, item, item]).replace('"value": "ANSWER"', '"value": "No.", "value": "Yes."', 1)
    (tmp_path / "mix.json").write_text(text)
    dataset = from_llava_json(tmp_path / "mix.json", image_root=tmp_path, on_error="skip")
    assert len(dataset) == 2 and dataset.skip_report.examples == {"duplicate key": ["mix.json item 0"]}


def test_numbers_as_captions_are_text_as_written_or_refused(tmp_path):
    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature

    from data_adapters import from_hf_dataset

    lines = ['{"file_name": "a.png", "caption": 1e400}', '{"file_name": "a.png", "caption": NaN}',
             '{"file_name": "a.png", "caption": 3.10}', '{"file_name": "a.png", "caption": 7}',
             '{"file_name": "a.png", "caption": "x", "n": ' + "9" * 5000 + "}"]
    _caption_folder(tmp_path, "metadata.jsonl", "\n".join(lines) + "\n")
    dataset = from_image_folder(tmp_path, on_error="skip")
    assert [m[-1]["content"][0]["text"] for m in dataset["messages"]] == ["3.10", "7"]
    assert dataset.skip_report.counts == {"non-finite number": 2, "bad json": 1}
    with pytest.raises(BadRecord, match=r"line 1: non-finite number: the number 1e400 is beyond a float's range"):
        from_image_folder(tmp_path)

    (tmp_path / "l.jsonl").write_text(_plm_line("a.png", "ANSWER").replace('"ANSWER"', "1e400") + "\n")
    with pytest.raises(BadRecord, match=r"l\.jsonl line 1: non-finite number"):
        from_llava_json(tmp_path / "l.jsonl", image_root=tmp_path)

    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, format="PNG")
    rows = Dataset.from_dict({"image": [{"bytes": png.getvalue(), "path": None}] * 3, "caption": [0.1, float("inf"), 2.5],
                              "count": [3, 4, 5]},
                             features=Features({"image": ImageFeature(), "caption": Value("float32"),
                                                "count": Value("int64")}))
    with pytest.raises(ValueError, match=r"no usable records.*\n +3  number, not text"):  # 0.1 reads 0.1000000015
        from_hf_dataset(rows, on_error="skip")
    with pytest.raises(BadRecord, match=r"row 0: number, not text: 'caption' holds the number 0\.1000000014"):
        from_hf_dataset(rows)
    counts = from_hf_dataset(rows, answer_column="count")
    assert [m[-1]["content"][0]["text"] for m in counts["messages"]] == ["3", "4", "5"]


def test_deeply_nested_json_is_a_named_bad_record_not_a_recursion_error(tmp_path):
    deep = '{"file_name": "a.png", "caption": ' + "[" * 100_000 + "]" * 100_000 + "}"
    _caption_folder(tmp_path, "metadata.jsonl", deep + '\n{"file_name": "a.png", "caption": "Fine."}\n')
    dataset = from_image_folder(tmp_path, on_error="skip")  # line 1 is also where the columns are read
    assert len(dataset) == 1 and dataset.skip_report.examples == {"too deeply nested": ["metadata.jsonl line 1"]}

    line = _plm_line("a.png").replace('"image"', '"deep": ' + "[" * 100_000 + "]" * 100_000 + ', "image"', 1)
    (tmp_path / "l.jsonl").write_text(line + "\n" + _plm_line("a.png") + "\n")
    dataset = from_llava_json(tmp_path / "l.jsonl", image_root=tmp_path, on_error="skip")
    assert len(dataset) == 1 and dataset.skip_report.examples == {"too deeply nested": ["l.jsonl line 1"]}

    (tmp_path / "l.json").write_text("[" + line + ", " + _plm_line("a.png") + "]")
    with pytest.raises(ValueError, match=r"'.*l\.json': item 0 \(line 1\) is nested deeper than"):
        from_llava_json(tmp_path / "l.json", image_root=tmp_path, on_error="skip")


def test_a_bom_changes_nothing_in_csv_jsonl_and_json_lists(tmp_path):
    def texts(dataset):
        return [m[-1]["content"][0]["text"] for m in dataset["messages"]]

    for name, body in (("metadata.csv", "file_name,caption\na.png,Green.\n"),
                       ("metadata.jsonl", '{"file_name": "a.png", "caption": "Green."}\n')):
        plain, bom = tmp_path / f"plain-{name}", tmp_path / f"bom-{name}"
        for folder, data in ((plain, body.encode()), (bom, b"\xef\xbb\xbf" + body.encode())):
            folder.mkdir()
            _caption_folder(folder, name, data)
        with_bom = from_image_folder(bom)
        assert texts(with_bom) == texts(from_image_folder(plain)) == ["Green."]
        assert with_bom["id"] == ["a.png"] and with_bom.skip_report.skipped == 0

    item = {"image": "a.png", "conversations": [{"from": "human", "value": "<image>\nQ?"}, {"from": "gpt", "value": "A."}]}
    _png(tmp_path / "a.png")
    (tmp_path / "mix.json").write_bytes(b"\xef\xbb\xbf" + json.dumps([item]).encode())
    assert texts(from_llava_json(tmp_path / "mix.json", image_root=tmp_path)) == ["A."]


@pytest.mark.parametrize(("content", "problem"), [
    ({"loss": 1.0, "step": 3}, "it has no 'metrics' (its keys: ['loss', 'step'])"),
    ([{"metrics": {}}], "the file holds a JSON list, not an object"),
    ({}, "it has no 'metrics' (its keys: [])"),
    ({"metrics": {"exact_match": "high"}, "records": []}, "'metrics.exact_match' is 'high', not a number"),
    ({"metrics": {}, "records": {"0": {}}}, "'records' is a object, not a list"),
    ({"metrics": {}, "records": [], "info": {"data": {"saved": "x", "limit": "x"}}}, "'info.data.limit' is 'x'"),
    ("not json {", "is not JSON (JSONDecodeError"),
])
def test_report_on_a_json_that_is_not_an_eval_json_is_one_usage_line(tmp_path, capsys, content, problem):
    from plm_tune.apps.cli import main
    from plm_tune.apps.exits import USAGE

    path = tmp_path / "trainer_state.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    assert main(["report", str(path)]) == USAGE
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"plm-tune report: error: {path}") and "\n" not in err, err
    assert problem in err and "an eval.json written by `plm-tune eval` or a recipe" in err

BAD_INPUTS_SETTINGS = (
    "learning_rate -1e-5", "per_device_train_batch_size 0", "gradient_accumulation_steps 0",
    "max_steps 0 and num_train_epochs 0", "warmup_steps 10 with max_steps 2", "max_length 0", "lora_r 0",
    "lora_alpha 0", "lora_dropout 1.5 (parser and load_model)", "vision_lr 0", "max_grad_norm -1", "num_frames 0",
    "method full with lora_r 64", "method full with lora_targets language+vision",
    "vision_lr with the vision tower frozen (config, and build_trainer on a loaded model)",
    "output_dir that is a file", "output_dir under a file", "output_dir on a read-only file system",
    "LoRA run into a full finetune's output_dir", "full run into a LoRA run's output_dir",
    "resume a LoRA run from a full finetune's checkpoint", "resume a LoRA checkpoint on another base",
    "resume a rank-16 LoRA checkpoint with lora_r 8", "resume a full checkpoint on a wider base",
    "merge onto a same-shape base of another seed", "merge onto a wider base",
)


# ------------------------------------------------------------------------------------------ round three: settings
def _settings(*argv):
    from plm_tune.apps.finetune import recipe_parser

    base = ["--max_steps", "2", "--per_device_train_batch_size", "2", "--report_to", "none", "--max_length", "4096",
            "--generate_eval", "false", "--disable_tqdm", "true", "--logging_steps", "1"]
    return recipe_parser().parse_args_and_config(base + [str(a) for a in argv])


def _finetune(*argv):
    from data_adapters.synthetic import synthetic_shapes
    from plm_tune.apps.finetune import finetune

    model_args, media_args, training_args, eval_args = _settings(*argv)
    return finetune(synthetic_shapes(4, seed=0, max_tiles=1), None, model_args, media_args, training_args, eval_args)


@pytest.fixture(scope="module")
def other_plms(tmp_path_factory):
    """A tiny PLM of another seed (same sizes) and one of another width, for base-mismatch cases."""
    from plm_tune.modeling.testing import build_tiny_plm

    folder = tmp_path_factory.mktemp("other-plms")
    return build_tiny_plm(folder / "seed1", seed=1), build_tiny_plm(folder / "wide", seed=0, text_hidden=96)


@pytest.fixture(scope="module")
def two_runs(tiny_plm_path, tmp_path_factory):
    """A real 2-step full finetune with checkpoints in ``full``; then a LoRA run refused there, and let in with
    overwrite_output_dir; the same LoRA run again, with checkpoints, in ``lora``."""
    from plm_tune.training.checkpoints import OutputFolderError

    folder = tmp_path_factory.mktemp("two-runs")
    full, lora = folder / "full", folder / "lora"
    common = ("--model_name_or_path", tiny_plm_path, "--save_strategy", "steps", "--save_steps", "1")
    _finetune(*common, "--method", "full", "--output_dir", full)
    shutil.copytree(full, folder / "full-copy")  # the full run as it was, for the resume and reverse cases
    with pytest.raises(OutputFolderError) as refused:
        _finetune(*common, "--output_dir", full)
    _finetune(*common, "--output_dir", full, "--overwrite_output_dir", "true")
    shutil.copytree(full, lora)
    return SimpleNamespace(full=folder / "full-copy", lora=lora, mixed=full, refused=str(refused.value))


@pytest.mark.parametrize(("flag", "value"), [
    ("learning_rate", "-1e-5"), ("per_device_train_batch_size", "0"), ("gradient_accumulation_steps", "0"),
    ("num_train_epochs", "0"), ("warmup_steps", "10"), ("max_length", "0"), ("lora_r", "0"), ("lora_alpha", "0"),
    ("lora_dropout", "1.5"), ("vision_lr", "0"), ("max_grad_norm", "-1"), ("num_frames", "0"),
])
def test_a_setting_out_of_range_is_one_line_naming_it_before_any_weight_loads(tmp_path, flag, value):
    from plm_tune.arguments import SettingError

    extra = ["--max_steps", "0"] if flag == "num_train_epochs" else ["--freeze", "projector"] if flag == "vision_lr" else []
    # A model folder that does not exist: had the check come after loading, this would be "no such folder".
    with pytest.raises(SettingError) as err:
        _finetune("--model_name_or_path", tmp_path / "missing", "--output_dir", tmp_path / "out", f"--{flag}={value}",
                  *extra)
    assert err.value.keys == (flag,) and f"{flag}=" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_lora_dropout_out_of_range_is_named_by_load_model_too(tiny_plm_path):
    from plm_tune.arguments import SettingError

    with pytest.raises(SettingError, match=r"lora_dropout=1\.5 must be in \[0, 1\)"):
        load_model(tiny_plm_path, method="lora", lora_dropout=1.5)


@pytest.mark.parametrize("argv", [("--lora_r", "64"), ("--lora_targets", "language+vision", "--freeze", "projector"),
                                  ("--vision_lr", "1e-5")])
def test_a_setting_the_method_or_freeze_would_ignore_is_refused(tmp_path, argv):
    from plm_tune.arguments import SettingError

    method = ("--method", "full") if argv[0] != "--vision_lr" else ()  # vision_lr: the tower is frozen by default
    with pytest.raises(SettingError) as err:
        _finetune("--model_name_or_path", tmp_path / "missing", "--output_dir", tmp_path / "out", *method, *argv)
    assert err.value.keys == (argv[0][2:],) and "\n" not in str(err.value)


def test_packaged_configs_set_no_setting_their_method_ignores():
    from plm_tune.apps.config import read_config
    from plm_tune.apps.finetune import parse_settings, settings_keys
    from plm_tune.arguments import check_settings

    keys = {key for names in settings_keys().values() for key in names} | {"use_peft", "use_dora", "load_in_4bit"}
    configs = sorted((Path(__file__).parent.parent / "recipes" / "configs").glob("*.yaml"))
    assert len(configs) >= 10
    for path in configs:
        config = {k: v for k, v in read_config(path).items() if k in keys}
        model_args, media_args, training_args, eval_args = parse_settings(config)
        check_settings(model_args, media_args, training_args, eval_args)


def test_vision_lr_for_a_frozen_tower_is_refused_by_build_trainer(tiny_plm_path, tmp_path):
    from trl import SFTConfig

    from data_adapters.synthetic import synthetic_shapes
    from plm_tune.arguments import ModelArguments, SettingError

    model, processor = load_model(tiny_plm_path, method="lora", freeze=("vision",))
    args = SFTConfig(output_dir=str(tmp_path), max_steps=1, report_to="none", bf16=False, max_length=None)
    with pytest.raises(SettingError, match=r"vision_lr=1e-05 is set but the vision does not train"):
        build_trainer(model, processor, synthetic_shapes(2, seed=0, max_tiles=1), args=args,
                      model_args=ModelArguments(vision_lr=1e-5, freeze=[]))


@pytest.mark.parametrize("case", ["file", "under a file", "read-only"])
def test_an_unwritable_output_dir_is_one_line_before_any_weight_loads(tmp_path, case):
    from plm_tune.training.checkpoints import CheckpointWriteError

    (tmp_path / "file").write_text("a file where a folder should be")
    if case == "read-only" and os.geteuid() == 0:  # root writes through chmod: /sys refuses a new folder to anyone
        out, reason = "/sys/plm_tune_out", "cannot be written"
    elif case == "read-only":
        (tmp_path / "ro").mkdir()
        (tmp_path / "ro").chmod(0o500)
        out, reason = tmp_path / "ro" / "out", "cannot be written"
    else:
        out, reason = tmp_path / "file" / ("out" if case == "under a file" else ""), "is a file, not a folder"
    with pytest.raises(CheckpointWriteError) as err:
        _finetune("--model_name_or_path", tmp_path / "missing", "--output_dir", out)
    assert reason in str(err.value) and "output_dir" in str(err.value) and "\n" not in str(err.value)


def test_another_methods_weights_in_output_dir_are_refused_or_deleted_on_request(two_runs, tmp_path):
    from plm_tune.training.checkpoints import OutputFolderError

    assert "holds a full model" in two_runs.refused and "model.safetensors" in two_runs.refused
    assert "overwrite_output_dir" in two_runs.refused and "\n" not in two_runs.refused
    left = sorted(p.name for p in two_runs.mixed.iterdir())  # after overwrite_output_dir: the adapter alone
    assert "adapter_model.safetensors" in left and "model.safetensors" not in left and "config.json" not in left
    assert all((two_runs.mixed / c / "adapter_config.json").is_file() for c in ("checkpoint-1", "checkpoint-2"))
    with pytest.raises(OutputFolderError, match=r"holds an adapter .*adapter_config\.json"):  # the reverse
        _finetune("--model_name_or_path", tmp_path / "missing", "--method", "full", "--output_dir", two_runs.lora)


def test_resume_from_another_runs_checkpoint_is_one_line_before_loading(two_runs, tiny_plm_path, other_plms, tmp_path):
    from plm_tune.training.checkpoints import OutputFolderError

    seed1, wide = other_plms
    cases = [
        (("--model_name_or_path", tiny_plm_path), two_runs.full / "checkpoint-1", r"holds a full model .*method is lora"),
        (("--model_name_or_path", seed1), two_runs.lora / "checkpoint-1", r"adapter of base model .*tiny-plm"),
        (("--model_name_or_path", tiny_plm_path, "--lora_r", "8"), two_runs.lora / "checkpoint-1", r"rank 16 adapter"),
        (("--model_name_or_path", wide, "--method", "full"), two_runs.full / "checkpoint-2", r"hidden_size 64 vs 96"),
    ]
    for argv, checkpoint, message in cases:
        with pytest.raises(OutputFolderError, match=message) as err:
            _finetune(*argv, "--output_dir", tmp_path / "out", "--resume_from_checkpoint", checkpoint)
        assert "\n" not in str(err.value) and str(checkpoint) in str(err.value)


def test_merge_onto_another_base_is_refused_naming_both(two_runs, other_plms, tmp_path):
    from transformers import AutoModelForImageTextToText

    from plm_tune.after_training.merge import merge_adapter
    from plm_tune.apps.cli import main

    seed1, wide = other_plms
    with pytest.raises(ValueError, match=r"adapter of base model .*tiny-plm.*, but base_model is .*seed1"):
        merge_adapter(two_runs.lora, tmp_path / "m", base_model=str(seed1))
    assert not (tmp_path / "m").exists()
    merged = merge_adapter(two_runs.lora, tmp_path / "m", base_model=str(seed1), allow_other_base=True)
    assert AutoModelForImageTextToText.from_pretrained(merged) is not None
    with pytest.raises(ValueError, match=r"does not fit base model .*wide: .* has 128 in_features in the adapter, "
                                         r"192 in the base"):
        merge_adapter(two_runs.lora, tmp_path / "w", base_model=str(wide), allow_other_base=True)
    code = main(["merge", "--adapter", str(two_runs.lora), "--output", str(tmp_path / "c"), "--base-model", str(wide)])
    assert code != 0 and not (tmp_path / "c").exists()


def test_the_readme_counts_every_bad_input():
    """The README's fault table is the sum of the suites' case lists, round by round."""
    import re
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    import test_push

    round_three = sum(len(cases) for module in (sys.modules[__name__], test_push)
                      for name, cases in vars(module).items() if name.startswith("BAD_INPUTS_"))
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    rows = dict(re.findall(r"^\| issue (\d+) \(`BAD_INPUTS[^|]*\| (\d+) \| \2 \|", readme, re.MULTILINE))
    assert rows == {"15": str(len(BAD_INPUTS)), "25": str(round_three)}, rows
