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
from plm_tune.data.media import image_size, load_video
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
