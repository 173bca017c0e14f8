"""Data written for other toolkits loads as meant: LLaMA-Factory's multimodal ShareGPT (``data/mllm_demo.json``),
TRL's conversational rows (string content with an ``images`` list, a singular ``image`` column, list content),
and Qwen-VL's inline ``<img>`` tags refused by name. Ends with the acceptance run: a LLaMA-Factory file with a
multi-turn conversation, two images and a video trains for 3 steps on the tiny PLM."""

from __future__ import annotations

import json
import math

import datasets
import pytest
import torch
from conftest import make_image
from test_frame_selection import encode_indexed_video
from trl import SFTConfig

from data_adapters import BadRecord, from_hf_dataset, from_llava_json
from plm_tune import PLMCollator, build_trainer, load_model, validate_sample


def _parts(message):
    return [(p["type"], p["text"]) for p in message["content"]]


@pytest.fixture(scope="module")
def llamafactory(tmp_path_factory):
    """A file in LLaMA-Factory's mllm_demo.json layout, paths relative to its data folder."""
    data = tmp_path_factory.mktemp("LLaMA-Factory") / "data"
    (data / "mllm_demo_data").mkdir(parents=True)
    for i, (w, h) in enumerate([(96, 64), (60, 90)], start=1):
        make_image(w, h, seed=i).save(data / f"mllm_demo_data/{i}.jpg")
    encode_indexed_video(data / "mllm_demo_data/1.mp4", 30, 10)
    records = [
        {"messages": [{"content": "<image>Who are they?", "role": "user"},
                      {"content": "They're Kane and Gretzka from Bayern Munich.", "role": "assistant"},
                      {"content": "What are they doing?", "role": "user"},
                      {"content": "They are celebrating on the soccer field.", "role": "assistant"}],
         "images": ["mllm_demo_data/1.jpg"]},
        {"messages": [{"content": "Compare <image> with <image>.", "role": "user"},
                      {"content": "The second is taller.", "role": "assistant"},
                      {"content": "Which is darker?", "role": "user"},
                      {"content": "The first.", "role": "assistant"}],
         "images": ["mllm_demo_data/1.jpg", "mllm_demo_data/2.jpg"], "system": "Answer briefly."},
        {"messages": [{"content": "<video>Why is this video funny?", "role": "user"},
                      {"content": "Because the colours count up.", "role": "assistant"}],
         "videos": ["mllm_demo_data/1.mp4"]},
    ]
    path = data / "mllm_demo.json"
    path.write_text(json.dumps(records, ensure_ascii=False, indent=2))
    return path


def test_llamafactory_mllm_demo_layout_loads(llamafactory):
    data = llamafactory.parent
    samples = list(from_llava_json(llamafactory, image_root=data))
    one, two, video = samples
    assert _parts(one["messages"][0]) == [("image", None), ("text", "Who are they?")]
    assert [m["role"] for m in one["messages"]] == ["user", "assistant", "user", "assistant"]
    assert one["images"] == [str(data / "mllm_demo_data/1.jpg")]
    assert two["messages"][0] == {"role": "system", "content": [{"type": "text", "text": "Answer briefly."}]}
    assert _parts(two["messages"][1]) == [("text", "Compare"), ("image", None), ("text", "with"), ("image", None),
                                         ("text", ".")]
    assert len(two["images"]) == 2
    assert _parts(video["messages"][0]) == [("video", None), ("text", "Why is this video funny?")]
    assert video["videos"] == [{"path": str(data / "mllm_demo_data/1.mp4"), "start": None, "end": None}]
    for sample in samples:
        validate_sample(sample)


def test_llamafactory_record_without_placeholders_gets_its_media_at_the_first_user_turn(tmp_path):
    make_image(32, 32).save(tmp_path / "a.jpg")
    record = {"messages": [{"role": "user", "content": "Who is he?"}, {"role": "assistant", "content": "Muller."}],
              "images": ["a.jpg"]}
    (tmp_path / "d.json").write_text(json.dumps([record]))
    sample = from_llava_json(tmp_path / "d.json", image_root=tmp_path)[0]
    assert _parts(sample["messages"][0]) == [("image", None), ("text", "Who is he?")]


@pytest.mark.parametrize("record, reason", [
    ({"messages": [{"role": "user", "content": "<image><image>Hi"}, {"role": "assistant", "content": "Hi."}],
      "images": ["a.jpg"]}, "media count mismatch"),
    ({"messages": [{"role": "user", "content": "<audio>Hi"}, {"role": "assistant", "content": "Hi."}],
      "audios": ["a.wav"]}, "audio"),
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hi."}],
      "image": "a.jpg", "images": ["a.jpg"]}, "ambiguous media"),
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "function", "content": "{}"}]}, "unknown speaker"),
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "  "}]}, "no answer text"),
    ({"conversations": [{"from": "user", "value": "Picture 1: <img>a.jpg</img>\nWhat is this?"},
                        {"from": "assistant", "value": "A square."}]}, "inline image tag"),
])
def test_bad_records_are_named_with_a_reason(tmp_path, record, reason):
    make_image(32, 32).save(tmp_path / "a.jpg")
    good = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hi."}]}
    (tmp_path / "d.json").write_text(json.dumps([record, good]))
    with pytest.raises(BadRecord, match=rf"d\.json item 0: {reason}"):
        from_llava_json(tmp_path / "d.json", image_root=tmp_path)
    skipped = from_llava_json(tmp_path / "d.json", image_root=tmp_path, on_error="skip")
    assert len(skipped) == 1 and skipped.skip_report.counts[reason] == 1


def test_qwen_vl_tag_is_refused_naming_the_turn_and_the_fix(tmp_path):
    record = {"conversations": [{"from": "user", "value": "Picture 1: <img>demo.jpeg</img>\nWhat is this?"},
                                {"from": "assistant", "value": "A dog."}], "id": "qwen-1"}
    (tmp_path / "q.json").write_text(json.dumps([record]))
    with pytest.raises(BadRecord, match=r"id='qwen-1'.*turn 0 \(user\) holds '<img>demo\.jpeg</img>'.*Qwen-VL.*"
                                        r"write <image> where the tag was"):
        from_llava_json(tmp_path / "q.json", image_root=tmp_path)


def test_trl_string_content_with_an_images_list_puts_them_at_the_first_user_turn():
    rows = datasets.Dataset.from_dict({
        "messages": [[{"role": "user", "content": "What is in the picture?"},
                      {"role": "assistant", "content": "Noise."},
                      {"role": "user", "content": "And now?"}, {"role": "assistant", "content": "Still noise."}],
                     [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi."}]],
        "images": [[make_image(40, 30, seed=1), make_image(30, 40, seed=2)], []],
    }).cast_column("images", datasets.List(datasets.Image()))
    samples = list(from_hf_dataset(rows, messages_column="messages"))
    assert _parts(samples[0]["messages"][0]) == [("image", None), ("image", None),
                                                 ("text", "What is in the picture?")]
    assert _parts(samples[0]["messages"][2]) == [("text", "And now?")]
    assert len(samples[0]["images"]) == 2 and samples[0]["images"][0]["bytes"]
    assert samples[1]["images"] == [] and _parts(samples[1]["messages"][0]) == [("text", "Say hi.")]
    for sample in samples:
        validate_sample(sample)


def test_trl_singular_image_column_and_list_content():
    rows = datasets.Dataset.from_dict({
        "messages": [[{"role": "user", "content": [{"type": "text", "text": "Colour?"}, {"type": "image"}]},
                      {"role": "assistant", "content": [{"type": "text", "text": "Grey."}]}]],
        "image": [make_image(40, 30)],
    })
    sample = from_hf_dataset(rows, messages_column="messages")[0]
    assert _parts(sample["messages"][0]) == [("text", "Colour?"), ("image", None)]
    assert len(sample["images"]) == 1
    validate_sample(sample)


def test_trl_rows_given_straight_to_the_collator_say_which_adapter_reads_them():
    row = {"messages": [{"role": "user", "content": "What is it?"}, {"role": "assistant", "content": "Noise."}],
           "images": [make_image(40, 30)]}
    with pytest.raises(ValueError, match=r"0 \{'type': 'image'\} placeholder.*messages_column='messages'"):
        validate_sample(row)
    singular = {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hm?"}]},
                             {"role": "assistant", "content": "Noise."}], "image": make_image(40, 30)}
    with pytest.raises(ValueError, match=r"'image' \(singular\): a canonical sample lists them under 'images'"):
        validate_sample(singular)


def test_a_llamafactory_file_trains_for_3_steps(tiny_plm_path, llamafactory, tmp_path):
    """The acceptance run: multi-turn, two images in one sample, a video; PLM's defaults (one plain tile per image
    of the two-image sample, PLM's frame selection, media placement)."""
    torch.manual_seed(0)
    samples = from_llava_json(llamafactory, image_root=llamafactory.parent, num_frames=8)
    model, processor = load_model(tiny_plm_path, method="lora", freeze=("vision",))
    collator = PLMCollator(processor)
    encoded = [collator.encode(s) for s in samples]
    assert [t.shape[0] for t in encoded[1].images] == [1, 1]  # two images: one plain tile each
    assert encoded[2].videos[0].shape[0] == 8  # 3 s at 10 fps, 8 asked: 3 candidates < 8, so 8 of its frames
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    args = SFTConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, max_steps=3,
                     learning_rate=1e-3, logging_steps=1, save_strategy="no", report_to="none", bf16=False,
                     max_length=None, dataloader_num_workers=0, seed=0, disable_tqdm=True)
    trainer = build_trainer(model, processor, samples, args=args)
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) == 3 and all(math.isfinite(loss) for loss in losses)
    changed = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert any("lora_" in n for n in changed) and not any("vision_tower" in n for n in changed)
