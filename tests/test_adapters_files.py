"""File-based adapters: Hugging Face datasets, image folders, LLaVA json, PLM jsonl, video folders.

Every corpus is made of real files in tmp_path: PNG / JPEG images written with PIL, MPEG-4 videos encoded
with PyAV. For each adapter: the happy path (exact samples), planted bad records in raise mode (the message
names the record) and skip mode (the skip report counts them by reason), and at the end every adapter's output
validates and trains: a batch goes through ``PLMCollator`` into the tiny PLM with a finite loss.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_image

from data_adapters._records import BadRecord
from data_adapters.hf import from_hf_dataset
from data_adapters.image_folder import from_image_folder
from data_adapters.llava import from_llava_json
from data_adapters.plm_jsonl import from_plm_jsonl, to_plm_jsonl
from data_adapters.video_folder import from_video_folder
from plm_tune import PLMCollator, load_image, validate_sample

av = pytest.importorskip("av")
datasets = pytest.importorskip("datasets")


# --------------------------------------------------------------------------------------------------------
# Real media files
# --------------------------------------------------------------------------------------------------------


def write_image(path: Path, seed: int = 0, size: tuple[int, int] = (40, 30)) -> Path:
    """A noise image; the format follows the suffix (PNG or JPEG)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    make_image(*size, seed=seed).save(path)
    return path


def write_video(path: Path, seconds: int = 3, fps: int = 4, size: int = 64) -> Path:
    """An MPEG-4 clip of ``seconds * fps`` frames (grey ramps), ``seconds`` long."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(seconds * fps):
            rgb = np.full((size, size, 3), (7 * i) % 256, np.uint8)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_empty_video(path: Path) -> Path:
    """An MP4 whose header was written but that holds no frame."""
    container = av.open(str(path), "w")
    stream = container.add_stream("mpeg4", rate=4)
    stream.width = stream.height = 64
    stream.pix_fmt = "yuv420p"
    container.start_encoding()
    container.close()
    return path


def write_garbage(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not a media file\n" * 8)
    return path


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def user_texts(sample) -> list:
    """The user content of the first user message as a compact list: 'image', 'video' or the text."""
    message = next(m for m in sample["messages"] if m["role"] == "user")
    return [p["text"] if p["type"] == "text" else p["type"] for p in message["content"]]


def answer(sample) -> str:
    return next(m for m in sample["messages"] if m["role"] == "assistant")["content"][0]["text"]


def check_bad(build, expected: dict[str, int], first_message: list[str]):
    """Raise mode stops on the first bad record with a message naming it; skip mode counts every one."""
    with pytest.raises(BadRecord) as err:
        build(on_error="raise")
    for phrase in first_message:
        assert phrase in str(err.value)
    assert 'on_error="skip"' in str(err.value)
    dataset = build(on_error="skip")
    assert dict(dataset.skip_report.counts) == expected, dataset.skip_report.summary()
    return dataset


# --------------------------------------------------------------------------------------------------------
# Hugging Face datasets (the model card's radiology set is the reference)
# --------------------------------------------------------------------------------------------------------


def radiology_lookalike(folder: Path, rows: int = 4) -> datasets.Dataset:
    """Like unsloth/Radiology_mini: image (Image feature, real PNGs), image_id, caption; plus a modality."""
    paths = [str(write_image(folder / f"ROCO_{i:05d}.png", seed=i)) for i in range(rows)]
    features = datasets.Features({"image": datasets.Image(), "image_id": datasets.Value("string"),
                                  "caption": datasets.Value("string"), "modality": datasets.Value("string")})
    return datasets.Dataset.from_dict(
        {"image": paths, "image_id": [f"ROCO_{i:05d}" for i in range(rows)],
         "caption": [f"Finding number {i}." for i in range(rows)],
         "modality": ["CT", "MRI", "X-ray", "CT"][:rows]},
        features=features,
    )


@pytest.fixture(scope="module")
def radiology_dir(tmp_path_factory):
    base = tmp_path_factory.mktemp("radiology")
    radiology_lookalike(base / "png").save_to_disk(str(base / "saved"))
    return base / "saved"


def test_hf_saved_radiology_set_becomes_lazy_samples(radiology_dir):
    prompt = "You are an expert radiographer. Describe it."
    ds = from_hf_dataset(str(radiology_dir), prompt=prompt, max_tiles=2)
    assert len(ds) == 4 and ds.skip_report.skipped == 0
    sample = ds[1]
    assert sample["id"] == "ROCO_00001" and sample["max_tiles"] == 2 and sample["num_frames"] is None
    assert sample["messages"] == [
        {"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": prompt}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Finding number 1."}]},
    ]
    entry = sample["images"][0]
    assert set(entry) == {"bytes", "path"} and entry["bytes"][:4] == b"\x89PNG"  # encoded, not decoded
    assert load_image(entry).size == (40, 30)


def test_hf_prompt_rule_column_template_or_fixed_text(radiology_dir):
    as_column = from_hf_dataset(str(radiology_dir), prompt="modality")
    assert [user_texts(s)[1] for s in as_column] == ["CT", "MRI", "X-ray", "CT"]
    template = from_hf_dataset(str(radiology_dir), prompt="Describe the {modality} image of {image_id}.")
    assert user_texts(template[2]) == ["image", "Describe the X-ray image of ROCO_00002."]
    fixed = from_hf_dataset(str(radiology_dir), prompt="What is the modality?")  # not a column: fixed text
    assert {user_texts(s)[1] for s in fixed} == {"What is the modality?"}
    with pytest.raises(ValueError, match=r"\['organ'\].*not columns.*image_id"):
        from_hf_dataset(str(radiology_dir), prompt="Describe the {organ}.")
    with pytest.raises(ValueError, match="answer_column='report' is not a column"):
        from_hf_dataset(str(radiology_dir), answer_column="report")


def test_hf_in_memory_dict_streaming_system_prompt_and_class_labels(tmp_path):
    data = radiology_lookalike(tmp_path)
    both = datasets.DatasetDict({"train": data, "test": data.select([0])})
    test_split = from_hf_dataset(both, split="test", system_prompt="You are an expert radiographer.")
    assert len(test_split) == 1
    assert test_split[0]["messages"][0] == {"role": "system", "content": [
        {"type": "text", "text": "You are an expert radiographer."}]}
    with pytest.raises(ValueError, match="no split 'validation'.*'train', 'test'"):
        from_hf_dataset(both, split="validation")
    stream = from_hf_dataset(data, streaming=True)
    assert isinstance(stream, datasets.IterableDataset)
    assert [s["id"] for s in stream] == ["ROCO_00000", "ROCO_00001", "ROCO_00002", "ROCO_00003"]
    labelled = data.cast_column("modality", datasets.ClassLabel(names=["CT", "MRI", "X-ray"]))
    ds = from_hf_dataset(labelled, prompt="Which modality?", answer_column="modality")
    assert [answer(s) for s in ds] == ["CT", "MRI", "X-ray", "CT"]


def test_hf_bad_rows_are_named_by_index_and_id(tmp_path):
    good = write_image(tmp_path / "good.png").read_bytes()
    rows = {
        "image": [{"bytes": good, "path": None}, None, {"bytes": b"GIF89a-truncated-junk", "path": "bad.gif"},
                  {"bytes": good, "path": None}, {"bytes": good, "path": None}],
        "image_id": ["ok", "no-image", "bad-bytes", "empty", "none"],
        "caption": ["Fine.", "x", "x", "  ", None],
    }
    text = datasets.Value("string")
    features = {"image": datasets.Image(), "image_id": text, "caption": text}
    data = datasets.Dataset.from_dict(rows, features=datasets.Features(features))
    ds = check_bad(lambda on_error: from_hf_dataset(data, on_error=on_error),
                   {"missing image": 1, "undecodable image": 1, "no answer text": 2},
                   ["row 1 (image_id='no-image')", "missing image"])
    assert [s["id"] for s in ds] == ["ok"]
    assert "dataset row 4 (image_id='none')" in ds.skip_report.examples["no answer text"]
    parallel = from_hf_dataset(data, on_error="skip", num_proc=2)  # rows read by index in the worker processes
    assert parallel.to_list() == ds.to_list() and parallel.skip_report == ds.skip_report


def test_hf_path_columns_stay_inside_media_root(tmp_path):
    root = tmp_path / "root"
    write_image(root / "a.png")
    outside = write_image(tmp_path / "outside.png")
    write_garbage(root / "notes.png")
    data = datasets.Dataset.from_dict({
        "file": ["a.png", "../outside.png", str(outside), "missing.png", "notes.png"],
        "id": ["in", "dotdot", "absolute", "missing", "garbage"], "caption": ["c"] * 5})
    ds = check_bad(lambda on_error: from_hf_dataset(data, image_column="file", media_root=root,
                                                    on_error=on_error),
                   {"path outside dataset root": 2, "missing file": 1, "undecodable image": 1},
                   ["row 1 (id='dotdot')", "outside the dataset root", "allow_outside_root=True"])
    assert ds[0]["images"] == [str((root / "a.png").resolve())]
    trusted = from_hf_dataset(data.select([0, 1, 2]), image_column="file", media_root=root,
                              allow_outside_root=True)
    assert trusted["id"] == ["in", "dotdot", "absolute"]


# --------------------------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def captioned_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("captioned")
    write_image(root / "scans" / "001.png", seed=1)
    write_image(root / "scans" / "002.jpg", seed=2)
    write_jsonl(root / "metadata.jsonl", [
        {"file_name": "scans/001.png", "caption": "A frontal chest radiograph.", "view": "PA"},
        {"file_name": "scans/002.jpg", "caption": "A lateral view.", "view": "lateral"},
    ])
    return root


def test_image_folder_metadata_jsonl(captioned_folder):
    ds = from_image_folder(captioned_folder, num_frames=4)
    assert ds[0] == {
        "id": "scans/001.png",
        "messages": [
            {"role": "user", "content": [{"type": "image", "text": None},
                                         {"type": "text", "text": "Describe this image."}]},
            {"role": "assistant", "content": [{"type": "text", "text": "A frontal chest radiograph."}]},
        ],
        "images": [str((captioned_folder / "scans" / "001.png").resolve())], "videos": [],
        "max_tiles": None, "num_frames": 4,
    }
    templated = from_image_folder(captioned_folder, prompt="Describe this {view} view.")
    assert user_texts(templated[1]) == ["image", "Describe this lateral view."]


def test_image_folder_metadata_csv_with_text_column_and_question_column(tmp_path):
    write_image(tmp_path / "a.png")
    (tmp_path / "metadata.csv").write_text('file_name,question,text\na.png,"Is it noisy?","Yes, very."\n')
    ds = from_image_folder(tmp_path, prompt="question")
    assert user_texts(ds[0]) == ["image", "Is it noisy?"] and answer(ds[0]) == "Yes, very."
    (tmp_path / "metadata.jsonl").write_text("{}\n")
    with pytest.raises(ValueError, match="both metadata.jsonl and metadata.csv"):
        from_image_folder(tmp_path)
    os.remove(tmp_path / "metadata.jsonl")
    with pytest.raises(ValueError, match="no caption column.*caption_column="):
        from_image_folder(tmp_path, caption_column="label")


def test_image_folder_classes_as_vqa(tmp_path):
    write_image(tmp_path / "cat" / "1.png", seed=1)
    write_image(tmp_path / "dog" / "nested" / "2.jpg", seed=2)
    (tmp_path / "dog" / "README.txt").write_text("not an image: ignored")
    ds = from_image_folder(tmp_path, list_classes=True)
    assert ds["id"] == ["cat/1.png", "dog/nested/2.jpg"]
    assert [answer(s) for s in ds] == ["cat", "dog"]
    assert user_texts(ds[0]) == ["image", "What is shown in this image? Answer with one of: cat, dog."]
    assert user_texts(from_image_folder(tmp_path, prompt="Which animal?")[0]) == ["image", "Which animal?"]


def test_image_folder_without_a_table_says_which_table_to_write(tmp_path):
    """A folder of images with captions in some other file: the error shows the metadata.csv to write."""
    make_image(20, 20).save(tmp_path / "photo_01.png")
    (tmp_path / "captions.txt").write_text("photo_01.png\tA red kite.\n")
    with pytest.raises(ValueError, match="metadata.csv directly in the folder with the header 'file_name,caption'"):
        from_image_folder(tmp_path)


def test_image_folder_bad_records(tmp_path):
    root = tmp_path / "root"
    write_image(root / "ok.png")
    write_garbage(root / "text.png")
    outside = write_image(tmp_path / "outside.png")
    write_jsonl(root / "metadata.jsonl", [
        {"file_name": "ok.png", "caption": "Fine."},
        {"file_name": "gone.png", "caption": "x"},
        {"file_name": "text.png", "caption": "x"},
        {"file_name": "ok.png", "caption": ""},
        {"file_name": "../outside.png", "caption": "x"},
        {"file_name": str(outside), "caption": "x"},
        "{not json",
    ])
    skipped = check_bad(lambda on_error: from_image_folder(root, on_error=on_error),
                        {"missing file": 1, "undecodable image": 1, "no answer text": 1,
                         "path outside dataset root": 2, "bad json": 1},
                        ["metadata.jsonl line 2 (file_name='gone.png')", "missing file", "does not exist"])
    examples = skipped.skip_report.examples
    assert examples["undecodable image"] == ["metadata.jsonl line 3 (file_name='text.png')"]
    assert examples["bad json"] == ["metadata.jsonl line 7"]
    trusted = from_image_folder(root, on_error="skip", allow_outside_root=True)
    assert trusted.skip_report.counts["path outside dataset root"] == 0 and len(trusted) == 3


def _folder_with_bad_files(root: Path) -> Path:
    """Two classes of 12 images, with undecodable, empty and misnamed files among them."""
    for i in range(24):
        write_image(root / ("cat" if i % 2 else "dog") / f"{i:02d}.png", seed=i, size=(20 + i, 20))
    write_garbage(root / "cat" / "05b.png")
    (root / "dog" / "11b.jpg").write_bytes(b"")
    write_garbage(root / "dog" / "20b.webp")
    return root


def test_num_proc_gives_the_same_samples_and_skip_report(tmp_path):
    root = _folder_with_bad_files(tmp_path / "classes")
    serial, parallel = (from_image_folder(root, on_error="skip", num_proc=n, progress=False) for n in (1, 2))
    assert len(serial) == 24 and serial.skip_report.skipped == 3
    assert parallel.to_list() == serial.to_list()  # the same samples, in record order
    assert parallel.skip_report == serial.skip_report  # counts, names, examples and kept
    errors = []
    for n in (1, 2):  # raise mode stops at the same first bad record
        with pytest.raises(BadRecord) as caught:
            from_image_folder(root, num_proc=n, progress=False)
        errors.append(str(caught.value))
    assert errors[0] == errors[1] and "cat/05b.png" in errors[0]

    videos = tmp_path / "videos"  # a process that reads a video remembers its duration for the next rows
    write_video(videos / "v.mp4", seconds=2)
    write_garbage(videos / "junk.mp4")
    rows = [f"v.mp4,{i % 2},,Clip {i}." for i in range(12)] + ["junk.mp4,,,Not a video.", "v.mp4,5,,Past the end."]
    (videos / "annotations.csv").write_text("file,start,end,caption\n" + "\n".join(rows * 2) + "\n")
    serial, parallel = (from_video_folder(videos, on_error="skip", num_proc=n, progress=False) for n in (1, 2))
    assert parallel.to_list() == serial.to_list() and len(serial) == 24
    assert parallel.skip_report == serial.skip_report and serial.skip_report.skipped == 4


def test_building_a_table_shows_a_progress_bar_over_its_records(tmp_path, capsys):
    root = _folder_with_bad_files(tmp_path / "classes")
    from_image_folder(root, on_error="skip", num_proc=2)
    bar = capsys.readouterr().err
    assert "Reading records" in bar and "27/27" in bar  # every file found, the bad ones too
    from_image_folder(root, on_error="skip", progress=False)
    assert "Reading records" not in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------------
# LLaVA conversations
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llava_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("llava")
    for name, seed in (("coco/1.jpg", 1), ("coco/2.png", 2), ("coco/3.png", 3)):
        write_image(root / "images" / name, seed=seed)
    write_video(root / "images" / "clips" / "v.mp4")
    records = [
        {"id": "single", "image": "coco/1.jpg", "conversations": [
            {"from": "human", "value": "<image>\nWhat color is the bus?"},
            {"from": "gpt", "value": "White and red."},
            {"from": "human", "value": "How many wheels?"},
            {"from": "gpt", "value": "Four."}]},
        {"id": "multi", "image": ["coco/2.png", "coco/3.png"], "conversations": [
            {"from": "system", "value": "Compare carefully."},
            {"from": "human", "value": "Is <image> brighter than <image>?"},
            {"from": "gpt", "value": "No."}]},
        {"id": "no-placeholder", "image": ["coco/1.jpg", "coco/2.png"], "conversations": [
            {"from": "human", "value": "Describe both."}, {"from": "gpt", "value": "Two noise patterns."}]},
        {"id": "text-only", "conversations": [
            {"from": "human", "value": "Say hi."}, {"from": "gpt", "value": "Hi."}]},
        {"id": "llava-video", "video": "clips/v.mp4", "conversations": [
            {"from": "human", "value": "<image>\nWhat happens?"},
            {"from": "gpt", "value": "It gets brighter."}]},
    ]
    (root / "llava.json").write_text(json.dumps(records))
    write_jsonl(root / "llava.jsonl", records)
    return root


def test_llava_json_list_and_jsonl(llava_corpus):
    ds = from_llava_json(llava_corpus / "llava.json", image_root=llava_corpus / "images", max_tiles=2)
    images = llava_corpus.resolve() / "images"
    single, multi, unplaced, text_only, video = ds
    assert single["messages"] == [
        {"role": "user", "content": [{"type": "image", "text": None},
                                     {"type": "text", "text": "What color is the bus?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "White and red."}]},
        {"role": "user", "content": [{"type": "text", "text": "How many wheels?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Four."}]},
    ]
    assert single["images"] == [str(images / "coco/1.jpg")] and single["max_tiles"] == 2
    assert multi["messages"][0]["role"] == "system"
    assert user_texts(multi) == ["Is", "image", "brighter than", "image", "?"]
    assert multi["images"] == [str(images / "coco/2.png"), str(images / "coco/3.png")]
    assert user_texts(unplaced) == ["image", "image", "Describe both."]  # LLaVA: images first
    assert user_texts(text_only) == ["Say hi."] and text_only["images"] == []
    assert user_texts(video) == ["video", "What happens?"]
    assert video["videos"] == [{"path": str(images / "clips/v.mp4"), "start": None, "end": None}]
    lines = from_llava_json(llava_corpus / "llava.jsonl", image_root=llava_corpus / "images", max_tiles=2)
    assert lines.to_list() == ds.to_list()
    with_system = from_llava_json(llava_corpus / "llava.json", image_root=llava_corpus / "images",
                                  system_prompt="Be brief.")
    assert with_system[0]["messages"][0]["content"][0]["text"] == "Be brief."
    # The record's own system turn wins over system_prompt.
    assert with_system[1]["messages"][0]["content"][0]["text"] == "Compare carefully."


def test_llava_bad_records(tmp_path):
    root = tmp_path / "images"
    write_image(root / "ok.png")
    write_garbage(root / "fake.jpg")
    write_image(tmp_path / "outside.png")

    def qa(image, question="<image>\nWhat?", reply="This."):
        return {"image": image, "conversations": [{"from": "human", "value": question},
                                                  {"from": "gpt", "value": reply}]}

    records = [
        {"id": "good", **qa("ok.png")},
        {"id": "mismatch", **qa("ok.png", "<image> vs <image>")},
        {"id": "missing", **qa("nope.png")},
        {"id": "fake", **qa("fake.jpg")},
        {"id": "empty-answer", **qa("ok.png", reply="")},
        {"id": "escape", **qa("../outside.png")},
        {"id": "absolute", **qa(str(tmp_path / "outside.png"))},
        {"id": "speaker", "conversations": [{"from": "bot", "value": "?"}, {"from": "gpt", "value": "!"}]},
        {"id": "answer-placeholder", **qa("ok.png", "What?", "<image> is it.")},
    ]
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records))
    check_bad(lambda on_error: from_llava_json(path, image_root=root, on_error=on_error),
              {"media count mismatch": 1, "missing file": 1, "undecodable image": 1, "no answer text": 1,
               "path outside dataset root": 2, "unknown speaker": 1, "misplaced placeholder": 1},
              ["data.json item 1 (id='mismatch')", "2 <image> placeholder(s)", "1 image(s)"])
    trusted = from_llava_json(path, image_root=root, on_error="skip", allow_outside_root=True)
    assert trusted["id"] == ["good", "escape", "absolute"]
    lines = write_jsonl(tmp_path / "data.jsonl", [records[0], "{broken", records[2]])
    with pytest.raises(BadRecord, match=r"data.jsonl line 2: bad json"):
        from_llava_json(lines, image_root=root)


# --------------------------------------------------------------------------------------------------------
# PLM jsonl (read and write)
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plm_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("plm")
    write_image(root / "media" / "a.png", seed=1)
    write_image(root / "media" / "b.jpg", seed=2)
    write_video(root / "media" / "v.mp4", seconds=3)
    write_jsonl(root / "train.jsonl", [
        {"image": "a.png", "conversations": [
            {"from": "human", "value": "Describe the image."}, {"from": "assistant", "value": "Noise."}]},
        {"id": 7, "image": ["a.png", "b.jpg"], "conversations": [
            {"from": "human", "value": "<image>\n<image>\nWhich is sharper?"},
            {"from": "assistant", "value": "The first."},
            {"from": "human", "value": "Why?"}, {"from": "assistant", "value": "PNG is lossless."}]},
        {"video": "v.mp4", "start_time": 0.5, "end_time": 2.5, "conversations": [
            {"from": "human", "value": "<video>\nWhat changes?"},
            {"from": "assistant", "value": "Brightness."}]},
        {"video": "v.mp4", "conversations": [
            {"from": "human", "value": "Summarise."}, {"from": "assistant", "value": "A ramp."}]},
        {"image": "b.jpg", "text": "A caption without a question."},
    ])
    return root


def test_plm_jsonl_reads_images_timed_videos_and_captions(plm_corpus):
    media = plm_corpus.resolve() / "media"
    ds = from_plm_jsonl(plm_corpus / "train.jsonl", media_root=plm_corpus / "media", num_frames=4)
    single, multi, clip, whole, caption = ds
    assert user_texts(single) == ["image", "Describe the image."]
    assert single["images"] == [str(media / "a.png")]
    assert multi["id"] == "7" and user_texts(multi) == ["image", "image", "Which is sharper?"]
    assert [m["role"] for m in multi["messages"]] == ["user", "assistant", "user", "assistant"]
    assert clip["videos"] == [{"path": str(media / "v.mp4"), "start": 0.5, "end": 2.5}]
    assert user_texts(clip) == ["video", "What changes?"] and clip["num_frames"] == 4
    assert whole["videos"] == [{"path": str(media / "v.mp4"), "start": None, "end": None}]
    assert user_texts(whole) == ["video", "Summarise."]
    assert user_texts(caption) == ["image"] and answer(caption) == "A caption without a question."


def test_plm_jsonl_round_trip_is_lossless(plm_corpus, tmp_path):
    media = plm_corpus / "media"
    first = from_plm_jsonl(plm_corpus / "train.jsonl", media_root=media).to_list()
    assert to_plm_jsonl(first, tmp_path / "out.jsonl", media_root=media) == 5
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert lines[1]["image"] == ["a.png", "b.jpg"] and lines[1]["id"] == "7"
    assert lines[2]["video"] == "v.mp4" and (lines[2]["start_time"], lines[2]["end_time"]) == (0.5, 2.5)
    assert lines[0]["conversations"][0] == {"from": "human", "value": "<image>\nDescribe the image."}
    second = from_plm_jsonl(tmp_path / "out.jsonl", media_root=media).to_list()
    assert second == first
    # Hand-made canonical samples (multi-image in place, timed video) survive sample -> jsonl -> sample.
    resolved = media.resolve()
    made = [
        {"id": "m", "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Left"}, {"type": "image"},
                                         {"type": "text", "text": "right"}, {"type": "image"}]},
            {"role": "assistant", "content": "Same noise."}],
         "images": [str(resolved / "b.jpg"), str(resolved / "a.png")]},
        {"id": "t", "messages": [
            {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "When?"}]},
            {"role": "assistant", "content": "At 1 s."}],
         "videos": [{"path": str(resolved / "v.mp4"), "start": 1.0, "end": 3.0}]},
    ]
    to_plm_jsonl(made, tmp_path / "made.jsonl", media_root=media)
    back = from_plm_jsonl(tmp_path / "made.jsonl", media_root=media)
    assert user_texts(back[0]) == ["Left", "image", "right", "image"]
    assert back[0]["images"] == made[0]["images"]
    assert back[1]["videos"] == made[1]["videos"] and answer(back[1]) == "At 1 s."


def test_to_plm_jsonl_refuses_what_the_format_cannot_hold(plm_corpus, tmp_path):
    qa = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q"}]},
          {"role": "assistant", "content": "A"}]
    path = str(plm_corpus / "media" / "a.png")
    with pytest.raises(ValueError, match="sample 0: .*no system turn"):
        system = [{"role": "system", "content": "S"}, *qa]
        to_plm_jsonl([{"messages": system, "images": [path]}], tmp_path / "x")
    with pytest.raises(ValueError, match=r"sample 1 \(id='pil'\).*Save the images to files"):
        pil = {"id": "pil", "messages": qa, "images": [make_image(8, 8)]}
        to_plm_jsonl([{"messages": qa, "images": [path]}, pil], tmp_path / "x")
    with pytest.raises(ValueError, match="outside media_root"):
        to_plm_jsonl([{"messages": qa, "images": [path]}], tmp_path / "x", media_root=tmp_path)


def test_plm_jsonl_bad_records(tmp_path):
    media = tmp_path / "media"
    write_image(media / "a.png")
    write_video(media / "v.mp4", seconds=3)
    write_empty_video(media / "empty.mp4")
    write_garbage(media / "junk.mp4")
    write_image(tmp_path / "outside.png")

    def video(name, **times):
        return {"video": name, **times, "conversations": [{"from": "human", "value": "<video>\nQ"},
                                                          {"from": "assistant", "value": "A"}]}

    def image(name, question="<image>\nQ", reply="A"):
        return {"image": name, "conversations": [{"from": "human", "value": question},
                                                 {"from": "assistant", "value": reply}]}

    path = write_jsonl(tmp_path / "bad.jsonl", [
        image("a.png"),
        video("v.mp4", start_time=2.0, end_time=1.0),
        video("v.mp4", start_time=9.0),
        video("empty.mp4"),
        video("junk.mp4"),
        {"image": "a.png", "video": "v.mp4", "conversations": [{"from": "human", "value": "Q"},
                                                               {"from": "assistant", "value": "A"}]},
        image("missing.png"),
        image(["a.png", "a.png"], question="<image> only one"),
        image("a.png", reply=None),
        image("../outside.png"),
        image(str(tmp_path / "outside.png")),
        {**image("a.png"), "bbox": [[1, 2, 10, 20]], "width": 40, "height": 30},
    ])
    check_bad(lambda on_error: from_plm_jsonl(path, media_root=media, on_error=on_error),
              {"bad clip times": 1, "clip outside video": 1, "no video frames": 1, "unreadable video": 1,
               "image and video": 1, "missing file": 1, "media count mismatch": 1, "no answer text": 1,
               "path outside dataset root": 2, "region task": 1},
              ["bad.jsonl line 2", "end (1.0s) is before start (2.0s)"])


# --------------------------------------------------------------------------------------------------------
# Video folders
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def video_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    write_video(root / "kitchen" / "0001.mp4", seconds=3)
    write_video(root / "street.mp4", seconds=2)
    (root / "annotations.csv").write_text(
        "file,start,end,caption\n"
        "kitchen/0001.mp4,0.5,2.5,A person cracks an egg.\n"
        "kitchen/0001.mp4,,,The whole kitchen scene.\n"
        "street.mp4,1,,Cars pass by.\n"
    )
    write_jsonl(root / "qa.jsonl", [
        {"file": "street.mp4", "question": "How many cars?", "answer": "Two.", "id": "q1"},
        {"file": "kitchen/0001.mp4", "start": 0, "end": 1, "question": "", "answer": "An egg."},
    ])
    return root


def test_video_folder_captions_with_timed_segments(video_folder):
    ds = from_video_folder(video_folder, num_frames=4)
    kitchen = str((video_folder / "kitchen" / "0001.mp4").resolve())
    assert ds[0] == {
        "id": "kitchen/0001.mp4[0.5-2.5]",
        "messages": [
            {"role": "user", "content": [{"type": "video", "text": None},
                                         {"type": "text", "text": "Describe this video."}]},
            {"role": "assistant", "content": [{"type": "text", "text": "A person cracks an egg."}]},
        ],
        "images": [], "videos": [{"path": kitchen, "start": 0.5, "end": 2.5}],
        "max_tiles": None, "num_frames": 4,
    }
    assert ds[1]["videos"] == [{"path": kitchen, "start": None, "end": None}]
    assert ds[1]["id"] == "kitchen/0001.mp4"
    assert ds[2]["videos"][0]["start"] == 1.0 and ds[2]["videos"][0]["end"] is None
    assert ds[2]["id"] == "street.mp4[1-]"


def test_video_folder_questions_and_answers_from_jsonl(video_folder):
    with pytest.raises(BadRecord, match=r"qa.jsonl line 2 .*no prompt text.*'question'"):
        from_video_folder(video_folder, annotations="qa.jsonl")  # an empty question is a bad record
    ds = from_video_folder(video_folder, annotations="qa.jsonl", system_prompt="Watch closely.",
                           on_error="skip")
    assert len(ds) == 1 and dict(ds.skip_report.counts) == {"no prompt text": 1}
    assert ds[0]["id"] == "q1" and answer(ds[0]) == "Two."
    assert user_texts(ds[0]) == ["video", "How many cars?"]
    assert ds[0]["messages"][0]["role"] == "system"
    fixed = from_video_folder(video_folder, annotations="qa.jsonl", prompt="What happens?")
    assert [user_texts(s)[1] for s in fixed] == ["What happens?", "What happens?"]
    with pytest.raises(ValueError, match="no annotations table"):
        from_video_folder(video_folder, annotations="missing.csv")


def test_video_folder_bad_records(tmp_path):
    root = tmp_path / "root"
    write_video(root / "v.mp4", seconds=2)
    write_empty_video(root / "empty.mp4")
    write_garbage(root / "junk.mp4")
    write_video(tmp_path / "outside.mp4", seconds=1)
    (root / "annotations.csv").write_text(
        "file,start,end,caption\n"
        "v.mp4,0,1,Fine.\n"
        "v.mp4,1.5,0.5,Backwards.\n"
        "v.mp4,5,6,Past the end.\n"
        "v.mp4,abc,,Not a time.\n"
        "empty.mp4,,,No frames.\n"
        "junk.mp4,,,Not a video.\n"
        "gone.mp4,,,Missing.\n"
        "v.mp4,,,\n"
        "../outside.mp4,,,Escapes.\n"
        f"{tmp_path / 'outside.mp4'},,,Absolute.\n"
    )
    check_bad(lambda on_error: from_video_folder(root, on_error=on_error),
              {"bad clip times": 2, "clip outside video": 1, "no video frames": 1, "unreadable video": 1,
               "missing file": 1, "no answer text": 1, "path outside dataset root": 2},
              ["annotations.csv line 3 (file='v.mp4')", "end (0.5s) is before start (1.5s)"])
    (root / "one.csv").write_text("file,start,end,caption\nv.mp4,5,6,Past the end.\n")
    with pytest.raises(BadRecord, match=r"one.csv line 2 .*clip outside video.*start 5.0s.*2.00s long"):
        from_video_folder(root, annotations="one.csv")
    trusted = from_video_folder(root, on_error="skip", allow_outside_root=True)
    assert len(trusted) == 3


# --------------------------------------------------------------------------------------------------------
# Every adapter's output validates and trains
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def every_adapter(radiology_dir, captioned_folder, llava_corpus, plm_corpus, video_folder, tmp_path_factory):
    classes = tmp_path_factory.mktemp("classes")
    write_image(classes / "cat" / "1.png", seed=5)
    write_image(classes / "dog" / "2.png", seed=6)
    return {
        "hf": from_hf_dataset(str(radiology_dir)),
        "image_folder captions": from_image_folder(captioned_folder),
        "image_folder classes": from_image_folder(classes, list_classes=True),
        "llava": from_llava_json(llava_corpus / "llava.json", image_root=llava_corpus / "images"),
        "plm_jsonl": from_plm_jsonl(plm_corpus / "train.jsonl", media_root=plm_corpus / "media"),
        "video_folder": from_video_folder(video_folder),
    }


@pytest.mark.parametrize("name", ["hf", "image_folder captions", "image_folder classes", "llava", "plm_jsonl",
                                  "video_folder"])
def test_adapter_output_validates_and_trains_the_tiny_plm(every_adapter, name, processor, model):
    dataset = every_adapter[name]
    samples = list(dataset)
    for sample in samples:
        validate_sample(sample)  # decodes every image and the first frame of every video
    batch = PLMCollator(processor, max_tiles=2, num_frames=4)(samples)
    with torch.no_grad():
        loss = model(**batch).loss
    assert torch.isfinite(loss)
    has_images = any(s["images"] for s in samples)
    has_videos = any(s["videos"] for s in samples)
    assert ("pixel_values" in batch) == has_images and ("pixel_values_videos" in batch) == has_videos
