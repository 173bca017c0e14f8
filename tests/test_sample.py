"""Tests for plm_tune.data.sample: the canonical sample's validation and message normalisation.

Every error must say what is wrong and how to fix it, so each test asserts on the key phrases of the message.
"""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest
from PIL import Image

from plm_tune.data.sample import Part, Turn, normalize_messages, validate_sample


def _image(seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (10, 12, 3), dtype=np.uint8))


def _frames(count: int = 4) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (count, 8, 8, 3), dtype=np.uint8)


def _sample(**overrides):
    """A valid sample with one image and one video; keyword arguments replace its keys."""
    sample = {
        "messages": [
            {"role": "system", "content": "You are an expert radiographer."},
            {
                "role": "user",
                "content": [{"type": "image"}, {"type": "video"}, {"type": "text", "text": "Describe."}],
            },
            {"role": "assistant", "content": "A frontal chest radiograph."},
        ],
        "images": [_image()],
        "videos": [_frames()],
    }
    sample.update(overrides)
    return sample


# --------------------------------------------------------------------------------------------------------
# Valid samples
# --------------------------------------------------------------------------------------------------------


def test_valid_sample_with_string_content():
    validate_sample(
        {
            "messages": [
                {"role": "user", "content": "What is 2 + 2?"},
                {"role": "assistant", "content": "4"},
            ]
        }
    )


def test_valid_sample_with_list_content_image_and_video():
    validate_sample(_sample(max_tiles=16, num_frames=8))


def test_valid_sample_with_media_paths(tmp_path):
    # Media given as paths are opened when decode_media=True; video dict entries too.
    av = pytest.importorskip("av")
    image_path = tmp_path / "scan.png"
    _image().save(image_path)
    video_path = tmp_path / "clip.mp4"
    with av.open(str(video_path), "w") as container:
        stream = container.add_stream("mpeg4", rate=2)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        for i in range(4):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 40 * i, dtype=np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    validate_sample(
        _sample(images=[str(image_path)], videos=[{"path": str(video_path), "start": 0.5, "end": 1.5}])
    )


def test_valid_sample_from_hf_datasets_table():
    # A sample read back from a datasets table carries every key of the union schema: an image part has
    # "text": None, and the Image() column decodes to PIL images. It must validate as it comes.
    datasets = pytest.importorskip("datasets")
    from datasets import Features, List, Value

    features = Features(
        {
            "id": Value("string"),
            "messages": List(
                {
                    "role": Value("string"),
                    "content": List({"type": Value("string"), "text": Value("string")}),
                }
            ),
            "images": List(datasets.Image()),
        }
    )
    rows = [
        {
            "id": "case-1",
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image"}, {"type": "text", "text": "Describe the scan."}],
                },
                {"role": "assistant", "content": [{"type": "text", "text": "Normal chest."}]},
            ],
            "images": [_image(1)],
        },
        {
            "id": "case-2",
            "messages": [
                {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
                {
                    "role": "user",
                    "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Compare."}],
                },
                {"role": "assistant", "content": [{"type": "text", "text": "Unchanged."}]},
            ],
            "images": [_image(2), _image(3)],
        },
    ]
    table = datasets.Dataset.from_list(rows, features=features)
    for row in table:
        # Check the round-trip really produced what the test is about.
        assert row["messages"][-2]["content"][0] == {"type": "image", "text": None}
        assert all(isinstance(img, Image.Image) for img in row["images"])
        validate_sample(row)
        turns = normalize_messages(row)
        assert turns[-1] == Turn("assistant", (Part("text", text=row["messages"][-1]["content"][0]["text"]),))


def test_valid_sample_without_media_keys_or_with_none():
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    validate_sample({"messages": messages, "images": None, "videos": None})
    validate_sample({"messages": messages, "images": [], "videos": []})


def test_validate_sample_does_not_modify_the_sample():
    # Validation runs on the user's data before training: it must only read it.
    sample = _sample()
    messages = copy.deepcopy(sample["messages"])
    validate_sample(sample)
    assert sample["messages"] == messages
    assert set(sample) == {"messages", "images", "videos"}


# --------------------------------------------------------------------------------------------------------
# normalize_messages
# --------------------------------------------------------------------------------------------------------


def test_normalize_messages_numbers_media_in_order_across_messages():
    sample = {
        "messages": [
            {"role": "system", "content": "Be precise."},
            {
                "role": "user",
                "content": [
                    {"type": "image"},
                    {"type": "text", "text": "and"},
                    {"type": "video"},
                    {"type": "image"},
                ],
            },
            {"role": "assistant", "content": "First answer."},
            {"role": "user", "content": [{"type": "video", "text": None}, {"type": "image", "text": None}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Second answer."}]},
        ],
        "images": ["a.png", "b.png", "c.png"],  # not opened: normalize_messages checks structure only
        "videos": ["a.mp4", "b.mp4"],
    }
    turns = normalize_messages(sample)
    assert turns == [
        Turn("system", (Part("text", text="Be precise."),)),
        Turn(
            "user",
            (
                Part("image", index=0),
                Part("text", text="and"),
                Part("video", index=0),
                Part("image", index=1),
            ),
        ),
        Turn("assistant", (Part("text", text="First answer."),)),
        Turn("user", (Part("video", index=1), Part("image", index=2))),
        Turn("assistant", (Part("text", text="Second answer."),)),
    ]


def test_normalize_messages_string_content_becomes_one_text_part():
    turns = normalize_messages(
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}
    )
    assert turns == [Turn("user", (Part("text", text="Hi"),)), Turn("assistant", (Part("text", text="Yo"),))]


# --------------------------------------------------------------------------------------------------------
# Structural errors
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "images", "placeholders", "given", "noun"),
    [
        ([{"type": "image"}, {"type": "text", "text": "?"}], [], 1, 0, "entries"),  # placeholder, no image
        ([{"type": "image"}, {"type": "image"}], ["a.png"], 2, 1, "entry"),
        ([{"type": "text", "text": "?"}], ["a.png"], 0, 1, "entry"),  # image, no placeholder
        ("Describe.", ["a.png", "b.png"], 0, 2, "entries"),
    ],
)
def test_image_placeholder_count_mismatch(content, images, placeholders, given, noun):
    sample = {
        "messages": [{"role": "user", "content": content}, {"role": "assistant", "content": "x"}],
        "images": images,
    }
    match = (
        rf"{placeholders} \{{'type': 'image'\}} placeholder\(s\) in the messages but {given} {noun} "
        rf"in 'images'\..*add or remove placeholders"
    )
    with pytest.raises(ValueError, match=match):
        validate_sample(sample, decode_media=False)


@pytest.mark.parametrize(
    ("content", "videos", "placeholders", "given"),
    [
        ([{"type": "video"}, {"type": "text", "text": "?"}], None, 1, 0),  # placeholder, no video
        ([{"type": "text", "text": "?"}], ["a.mp4"], 0, 1),  # video, no placeholder
    ],
)
def test_video_placeholder_count_mismatch(content, videos, placeholders, given):
    sample = {
        "messages": [{"role": "user", "content": content}, {"role": "assistant", "content": "x"}],
        "videos": videos,
    }
    with pytest.raises(
        ValueError,
        match=rf"{placeholders} \{{'type': 'video'\}} placeholder\(s\) .* {given} "
        r"entr(y|ies) in 'videos'",
    ):
        validate_sample(sample, decode_media=False)


def test_unknown_role_suggests_mapping():
    sample = {"messages": [{"role": "human", "content": "Hi"}, {"role": "gpt", "content": "Hello"}]}
    with pytest.raises(
        ValueError, match=r"message 0: unknown role 'human'.*'human' -> 'user'.*'gpt' -> 'assistant'"
    ):
        validate_sample(sample)


def test_missing_role_is_reported():
    with pytest.raises(ValueError, match="message 1: unknown role None"):
        validate_sample({"messages": [{"role": "user", "content": "Hi"}, {"content": "Hello"}]})


def test_system_message_not_first():
    sample = {
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "system", "content": "Be brief."},
            {"role": "assistant", "content": "Hello"},
        ]
    }
    with pytest.raises(ValueError, match="message 1: a system message must be the first message"):
        validate_sample(sample)


def test_system_message_with_media_is_rejected():
    sample = {
        "messages": [
            {"role": "system", "content": [{"type": "image"}]},
            {"role": "assistant", "content": "x"},
        ],
        "images": [_image()],
    }
    with pytest.raises(ValueError, match="system message can only hold text"):
        validate_sample(sample)


def test_no_assistant_turn():
    with pytest.raises(
        ValueError, match=r"no assistant turn: there is nothing to train on.*'role': 'assistant'"
    ):
        validate_sample({"messages": [{"role": "user", "content": "Hi"}]})


@pytest.mark.parametrize("messages", [None, [], "Hi", {"role": "user"}])
def test_messages_missing_or_not_a_list(messages):
    with pytest.raises(ValueError, match=r"'messages' must be a non-empty list"):
        validate_sample({"messages": messages})


def test_message_not_a_dict():
    with pytest.raises(ValueError, match="message 0: expected a dict with 'role' and 'content', got str"):
        validate_sample({"messages": ["Hi", {"role": "assistant", "content": "x"}]})


def test_sample_not_a_dict():
    with pytest.raises(ValueError, match="A sample must be a dict with a 'messages' key, got list"):
        validate_sample([{"role": "user", "content": "Hi"}])


@pytest.mark.parametrize("content", ["   ", "", [], [{"type": "text", "text": " \n "}]])
def test_empty_content(content):
    sample = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": content}]}
    with pytest.raises(ValueError, match=r"message 1 \(assistant\): content is empty.*or remove the message"):
        validate_sample(sample)


def test_content_of_wrong_type():
    sample = {"messages": [{"role": "user", "content": 42}, {"role": "assistant", "content": "x"}]}
    with pytest.raises(ValueError, match="message 0: content must be a string or a list of parts, got int"):
        validate_sample(sample)


def test_unknown_part_type():
    sample = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "audio"}]},
            {"role": "assistant", "content": "x"},
        ]
    }
    with pytest.raises(
        ValueError, match=r"message 0, part 1: unknown part type 'audio'; use 'text', 'image' or 'video'"
    ):
        validate_sample(sample)


@pytest.mark.parametrize("part", ["just a string", {"text": "no type key"}])
def test_part_that_is_not_a_typed_dict(part):
    sample = {"messages": [{"role": "user", "content": [part]}, {"role": "assistant", "content": "x"}]}
    with pytest.raises(ValueError, match=r"message 0, part 0: expected a dict with a 'type' key"):
        validate_sample(sample)


@pytest.mark.parametrize("text", [None, 3, ["a"]])
def test_text_part_with_non_string_text(text):
    sample = {
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": [{"type": "text", "text": text}]},
        ]
    }
    with pytest.raises(
        ValueError,
        match=r"message 1, part 0: a text part needs a string 'text', got " + re.escape(repr(text)),
    ):
        validate_sample(sample)


@pytest.mark.parametrize("key", ["max_tiles", "num_frames"])
@pytest.mark.parametrize("value", [0, -3, 2.5, "8", True])
def test_non_positive_or_non_int_max_tiles_and_num_frames(key, value):
    with pytest.raises(ValueError, match=rf"'{key}' must be a positive integer, got {value!r}"):
        validate_sample(_sample(**{key: value}), decode_media=False)


@pytest.mark.parametrize("key", ["max_tiles", "num_frames"])
def test_positive_max_tiles_and_num_frames_and_none_are_accepted(key):
    validate_sample(_sample(**{key: 1}), decode_media=False)
    validate_sample(_sample(**{key: None}), decode_media=False)


def test_sample_id_appears_in_error_messages():
    sample = {"id": "case-42", "messages": [{"role": "user", "content": "Hi"}]}
    with pytest.raises(ValueError, match=r"^sample id='case-42': no assistant turn"):
        validate_sample(sample)
    sample = {"id": 7, "messages": [{"role": "bot", "content": "Hi"}]}
    with pytest.raises(ValueError, match=r"^sample id=7: message 0: unknown role 'bot'"):
        validate_sample(sample)
    # Datasets keyed by image use "image_id"; it names the sample just the same.
    with pytest.raises(
        ValueError, match=r"^sample image_id='xray-9\.png': 'max_tiles' must be a positive integer"
    ):
        validate_sample(_sample(image_id="xray-9.png", max_tiles=0), decode_media=False)


def test_no_sample_id_prefix_without_id():
    with pytest.raises(ValueError, match=r"^no assistant turn"):
        validate_sample({"messages": [{"role": "user", "content": "Hi"}]})


# --------------------------------------------------------------------------------------------------------
# Unreadable media
# --------------------------------------------------------------------------------------------------------


def test_missing_image_file_raises_only_when_decoding(tmp_path):
    missing = str(tmp_path / "missing.png")
    sample = _sample(id="case-3", images=[missing])
    with pytest.raises(
        ValueError,
        match=r"sample id='case-3': images\[0\] \('.*missing\.png'\) is unreadable: "
        r"Image file '.*missing\.png' does not exist",
    ):
        validate_sample(sample)
    validate_sample(sample, decode_media=False)  # structure only: the file is not touched


def test_corrupt_image_bytes_raise_only_when_decoding():
    sample = _sample(images=[b"definitely not a png"])
    with pytest.raises(ValueError, match=r"images\[0\] \(20 bytes\) is unreadable: Could not decode image"):
        validate_sample(sample)
    validate_sample(sample, decode_media=False)


def test_corrupt_video_raises_only_when_decoding(tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(np.random.default_rng(0).integers(0, 256, 2048, dtype=np.uint8).tobytes())
    sample = _sample(videos=[{"path": str(broken), "start": 0.0, "end": 2.0}])
    with pytest.raises(
        ValueError,
        match=r"videos\[0\] \(\{path: '.*broken\.mp4'\}\) is unreadable: "
        r"Could not open video",
    ):
        validate_sample(sample)
    validate_sample(sample, decode_media=False)


def test_missing_video_file_raises_only_when_decoding(tmp_path):
    sample = _sample(videos=[str(tmp_path / "gone.mp4")])
    with pytest.raises(
        ValueError, match=r"videos\[0\] .* is unreadable: Video file '.*gone\.mp4' does not exist"
    ):
        validate_sample(sample)
    validate_sample(sample, decode_media=False)


def test_bad_video_frames_array_raises_only_when_decoding():
    sample = _sample(videos=[np.zeros((4, 8, 8, 3), dtype=np.float32)])
    with pytest.raises(
        ValueError, match=r"videos\[0\] \(array of shape \(4, 8, 8, 3\)\) is unreadable: .*uint8"
    ):
        validate_sample(sample)
    validate_sample(sample, decode_media=False)


# --------------------------------------------------------------------------------------------------------
# Table form
# --------------------------------------------------------------------------------------------------------


def test_to_table_keeps_every_key_and_the_same_conversation(tmp_path):
    from plm_tune.data.sample import sample_columns, to_table

    image = tmp_path / "a.png"
    _image().save(image)
    with_image = {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]},
                               {"role": "assistant", "content": "A scan."}], "images": [str(image)]}
    with_video = {"id": "v", "messages": [{"role": "user", "content": [{"type": "video"}]},
                                          {"role": "assistant", "content": "It moves."}],
                  "videos": [{"path": "clip.mp4", "start": 1.0, "end": 2.0}]}
    assert sample_columns([with_image, with_video])["videos"] == [None, with_video["videos"]]
    table = to_table([with_image, with_video])
    assert set(table.column_names) == {"messages", "images", "id", "videos"}
    assert table[1]["videos"] == with_video["videos"] and table[0]["videos"] is None
    assert table[0]["messages"][1]["content"] == [{"type": "text", "text": "A scan."}]
    for row, sample in zip(table, (with_image, with_video), strict=True):
        assert normalize_messages(row) == normalize_messages(sample)
    assert to_table(table) is table  # a plain table is saved as it is


@pytest.mark.parametrize(("images", "videos"), [("image", "files"), ("bytes", "files"), ("image", "frames")])
def test_make_sample_fills_exactly_the_features_schema(images, videos):
    import datasets

    from data_adapters._records import make_sample, media_part, text_part
    from plm_tune.data.sample import sample_features

    png = _image().tobytes() if images == "bytes" else {"bytes": None, "path": "a.png"}
    sample = make_sample([{"role": "user", "content": [media_part("image"), media_part("video"), text_part("Q?")]},
                          {"role": "assistant", "content": "A."}], images=[png], videos=["clip.mp4"],
                         sample_id="s1", max_tiles=2)
    if videos == "frames":
        sample["videos"] = [[{"bytes": None, "path": "f0.png"}, {"bytes": None, "path": "f1.png"}]]
    features = sample_features(images=images, videos=videos)
    assert list(sample) == list(features)
    row = datasets.Dataset.from_list([sample], features=features)[0]
    assert row == sample
    assert normalize_messages(row) == normalize_messages(sample)
