"""Preference samples (issue 26), the data side: the sample check, the four record layouts on real files and
``datasets`` tables, named and counted bad records, and ``plm-tune data inspect`` on pairs through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
from conftest import make_image
from test_adapters_files import write_video

from data_adapters import BadRecord, from_preference_data
from data_adapters.registry import read_data
from plm_tune.data.preference import is_preference_sample, pair_conversations, validate_preference_sample
from plm_tune.errors import DataError, Reason

REPO = Path(__file__).resolve().parents[1]


def _text(text):
    return [{"type": "text", "text": text}]


def _answer(text):
    return [{"role": "assistant", "content": _text(text)}]


def _user(*parts):
    return {"role": "user", "content": list(parts)}


IMAGE = {"type": "image", "text": None}
VIDEO = {"type": "video", "text": None}


def _pair(**changes):
    sample = {"id": "p1", "messages": [{"role": "user", "content": "What colour is it?"}],
              "chosen": [{"role": "assistant", "content": "Red."}],
              "rejected": [{"role": "assistant", "content": "Blue."}], "images": [], "videos": []}
    return {**sample, **changes}


# ---------------------------------------------------------------------------------------- the sample check


def test_a_valid_pair_passes_and_splits_into_two_conversations_sharing_media(tmp_path):
    make_image(40, 30).save(tmp_path / "a.png")
    images = [str(tmp_path / "a.png")]
    sample = _pair(messages=[_user({"type": "image"}, {"type": "text", "text": "Colour?"})], images=images)
    validate_preference_sample(sample)
    assert is_preference_sample(sample) and not is_preference_sample({"messages": sample["messages"]})
    chosen, rejected = pair_conversations(sample)
    assert chosen["messages"] == sample["messages"] + sample["chosen"]
    assert rejected["messages"] == sample["messages"] + sample["rejected"]
    assert chosen["images"] is images and rejected["images"] is images  # the same objects: read once
    assert "chosen" not in chosen and chosen["id"] == "p1"


@pytest.mark.parametrize("changes, reason, words", [
    ({"rejected": [{"role": "assistant", "content": " Red. "}]}, Reason.IDENTICAL_ANSWERS, "teaches nothing"),
    ({"chosen": [{"role": "assistant", "content": "\u200b "}]}, Reason.NO_ANSWER_TEXT, "'chosen' is empty"),
    ({"chosen": [{"role": "assistant", "content": [{"type": "image"}, {"type": "text", "text": "Red."}]}]},
     Reason.MEDIA_IN_ANSWER, "text only"),
    ({"rejected": [{"role": "assistant", "content": "A"}, {"role": "assistant", "content": "B"}]},
     Reason.INVALID_CONVERSATION, "exactly one assistant message, got 2 items"),
    ({"chosen": [{"role": "user", "content": "Red."}]}, Reason.INVALID_CONVERSATION, "not the assistant"),
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]},
     Reason.INVALID_CONVERSATION, "ends with a assistant message"),
    ({"rejected": None}, Reason.INVALID_SAMPLE, "no 'rejected' answer"),
    ({"images": ["x.png"]}, Reason.MEDIA_COUNT_MISMATCH, "0 {'type': 'image'} placeholder"),
])
def test_validate_preference_sample_names_each_problem(changes, reason, words):
    with pytest.raises(DataError) as caught:
        validate_preference_sample(_pair(**changes))
    assert caught.value.reason == reason
    assert words in str(caught.value) and "id='p1'" in str(caught.value)


# ---------------------------------------------------------------------------------------- the four layouts


@pytest.fixture
def media(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    make_image(48, 32, seed=1).save(root / "a.png")
    make_image(32, 48, seed=2).save(root / "b.png")
    write_video(root / "clip.mp4", seconds=1, fps=4, size=32)
    return root


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _expected(messages, chosen, rejected, images=(), videos=(), sample_id=None):
    return {"id": sample_id, "messages": messages, "images": list(images),
            "videos": [{"path": v, "start": None, "end": None} for v in videos],
            "max_tiles": None, "num_frames": None, "chosen": _answer(chosen), "rejected": _answer(rejected)}


def test_trl_records_in_a_jsonl_file(media):
    path = _write_jsonl(media / "pairs.jsonl", [
        {"prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]}],
         "chosen": [{"role": "assistant", "content": [{"type": "text", "text": "Red."}]}],
         "rejected": [{"role": "assistant", "content": "Blue."}], "images": ["a.png"]},
        {"id": 7, "prompt": "Compare them.", "chosen": "The first is wider.", "rejected": "They match.",
         "images": ["a.png", "b.png"]},
        {"prompt": "Say hi.", "chosen": "Hi.", "rejected": "No."},
    ])
    samples = list(from_preference_data(path, progress=False))
    a, b = str(media / "a.png"), str(media / "b.png")
    assert samples == [
        _expected([_user(IMAGE, *_text("What colour?"))], "Red.", "Blue.", [a]),
        _expected([_user(IMAGE, IMAGE, *_text("Compare them."))], "The first is wider.", "They match.", [a, b],
                  sample_id="7"),
        _expected([_user(*_text("Say hi."))], "Hi.", "No."),
    ]
    for sample in samples:
        validate_preference_sample(sample)  # decodes the media too


def test_trl_rows_of_a_dataset_with_embedded_images():
    rows = datasets.Dataset.from_dict({
        "prompt": [[{"role": "user", "content": [{"type": "image", "text": None},
                                                 {"type": "text", "text": "What shape?"}]}]],
        "chosen": [[{"role": "assistant", "content": [{"type": "text", "text": "A square."}]}]],
        "rejected": [[{"role": "assistant", "content": [{"type": "text", "text": "A circle."}]}]],
        "images": [[make_image(40, 40, seed=3)]],
    }).cast_column("images", datasets.List(datasets.Image()))
    encoded = rows.cast_column("images", datasets.List(datasets.Image(decode=False)))[0]["images"][0]
    [sample] = list(from_preference_data(rows, progress=False))
    assert sample == _expected([_user(IMAGE, *_text("What shape?"))], "A square.", "A circle.",
                               [{"bytes": encoded["bytes"], "path": None}])
    validate_preference_sample(sample)


def test_llama_factory_ranking_sharegpt_with_images_and_a_video(media):
    path = media / "dpo.json"
    path.write_text(json.dumps([
        {"conversations": [{"from": "system", "value": "Be brief."},
                           {"from": "human", "value": "<image>Which is taller?<image>"},
                           {"from": "gpt", "value": "The second."},
                           {"from": "human", "value": "And this clip? <video>"}],
         "chosen": {"from": "gpt", "value": "It is grey."}, "rejected": {"from": "gpt", "value": "It is red."},
         "images": ["a.png", "b.png"], "videos": ["clip.mp4"]},
    ]))
    [sample] = list(from_preference_data(path, progress=False))
    assert sample == _expected(
        [{"role": "system", "content": _text("Be brief.")},
         _user(IMAGE, *_text("Which is taller?"), IMAGE),
         {"role": "assistant", "content": _text("The second.")},
         _user(*_text("And this clip?"), VIDEO)],
        "It is grey.", "It is red.", [str(media / "a.png"), str(media / "b.png")], [str(media / "clip.mp4")])
    validate_preference_sample(sample)


def test_rlaif_v_columns():
    rows = datasets.Dataset.from_dict({
        "ds_name": ["RLAIF-V"], "image": [make_image(30, 30, seed=4)], "question": ["Describe the image."],
        "chosen": ["Grey noise."], "rejected": ["A dog on a beach."], "origin_dataset": ["x"],
        "origin_split": ["{}"], "idx": ["12"], "image_path": ["coco/12.jpg"],  # not a local file: image wins
    }).cast_column("image", datasets.Image())
    encoded = rows.cast_column("image", datasets.Image(decode=False))[0]["image"]
    [sample] = list(from_preference_data(rows, progress=False))
    assert sample == _expected([_user(IMAGE, *_text("Describe the image."))], "Grey noise.", "A dog on a beach.",
                               [{"bytes": encoded["bytes"], "path": None}], sample_id="12")


def _completion(model, response, *ratings):
    aspects = ("Helpfulness", "Visual Faithfulness", "Ethical Considerations")
    return {"model": model, "response": response,
            "annotations": {a: {"Rating": r, "Rationale": "..."} for a, r in zip(aspects, ratings, strict=False)}}


def test_vlfeedback_best_and_worst_rated_completions(media):
    rows = datasets.Dataset.from_dict({
        "id": ["vf-1", "vf-2"], "prompt": ["What is shown?", "Count them."],
        "models": [["a", "b", "c"], ["a", "b"]],
        "completions": [[_completion("a", "Noise.", "4", "4", "5"), _completion("b", "A cat.", "2", "1", "5"),
                         _completion("c", "Grey noise.", "5", "5", "5")],
                        [_completion("a", "Two.", "3", "3", "3"), _completion("b", "Three.", "3", "3", "3")]],
        "img_path": ["a.png", "b.png"],
    })
    data = from_preference_data(rows, media_root=media, on_error="skip", progress=False)
    assert list(data) == [_expected([_user(IMAGE, *_text("What is shown?"))], "Grey noise.", "A cat.",
                                    [str(media / "a.png")], sample_id="vf-1")]
    assert data.skip_report.names == {"no preference": ["dataset row 1 (id='vf-2')"]}  # rated alike: no pair


def test_vlfeedback_jsonl_file_and_the_adapter_by_name(media):
    path = _write_jsonl(media / "vlfeedback.jsonl", [
        {"id": "vf-3", "prompt": "Shape?", "img_path": "b.png",
         "completions": [_completion("a", "A square.", "5", "N/A"), _completion("b", "A star.", "1", "2")]},
    ])
    [sample] = list(read_data({"adapter": "preference", "path": str(path), "progress": False}))
    assert sample == _expected([_user(IMAGE, *_text("Shape?"))], "A square.", "A star.", [str(media / "b.png")],
                               sample_id="vf-3")


# ---------------------------------------------------------------------------------------- bad records


def test_bad_records_are_named_and_counted_under_skip(media, tmp_path):
    make_image(20, 20).save(tmp_path / "outside.png")
    good = {"prompt": "Colour?", "chosen": "Red.", "rejected": "Blue.", "images": ["a.png"]}
    path = _write_jsonl(media / "bad.jsonl", [
        good,
        {"prompt": "Colour?", "rejected": "Blue."},                                        # line 2
        {"prompt": "Colour?", "chosen": "Red.", "rejected": "Red."},                       # line 3
        {"prompt": "Colour?", "chosen": "Red.", "rejected": "\u200b  "},                   # line 4
        {**good, "images": ["../outside.png"]},                                            # line 5
        {"conversations": [{"from": "human", "value": "Hi"}], "chosen": {"from": "gpt", "value": "<image>"},
         "rejected": {"from": "gpt", "value": "Hello."}},                                  # line 6
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hey."}],
         "chosen": {"from": "gpt", "value": "A"}, "rejected": {"from": "gpt", "value": "B"}},  # line 7
        {"question": "Q?", "chosen": "A.", "rejected": "B.", "image": "missing.png"},      # line 8
    ])
    data = from_preference_data(path, on_error="skip", progress=False)
    assert len(data) == 1 and data.skip_report.kept == 1
    assert data.skip_report.names == {
        "missing answer": ["bad.jsonl line 2"],
        Reason.IDENTICAL_ANSWERS: ["bad.jsonl line 3"],
        Reason.NO_ANSWER_TEXT: ["bad.jsonl line 4"],
        "path outside dataset root": ["bad.jsonl line 5"],
        Reason.MEDIA_IN_ANSWER: ["bad.jsonl line 6"],
        Reason.INVALID_CONVERSATION: ["bad.jsonl line 7"],
        Reason.MISSING_FILE: ["bad.jsonl line 8"],
    }
    with pytest.raises(BadRecord, match=r"bad.jsonl line 2: missing answer: the record has no 'chosen'"):
        from_preference_data(path, progress=False)
    outside = from_preference_data(_write_jsonl(media / "one.jsonl", [{**good, "images": ["../outside.png"]}]),
                                   allow_outside_root=True, progress=False)
    assert outside[0]["images"] == [str(tmp_path / "outside.png")]


def test_streaming_gives_the_same_samples(media):
    path = _write_jsonl(media / "pairs.jsonl", [{"prompt": f"Q{i}?", "chosen": f"A{i}.", "rejected": "No.",
                                                 "images": ["a.png"]} for i in range(3)])
    assert list(from_preference_data(path, streaming=True)) == list(from_preference_data(path, progress=False))


# ---------------------------------------------------------------------------------------- data inspect


def test_data_inspect_shows_the_prompt_once_and_both_answers_trained(media, tiny_plm_path):
    path = _write_jsonl(media / "pairs.jsonl", [
        {"prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]}],
         "chosen": [{"role": "assistant", "content": "A red square."}],
         "rejected": [{"role": "assistant", "content": "A blue circle."}], "images": ["a.png"]},
    ])
    result = subprocess.run(
        [sys.executable, "-m", "plm_tune.apps.cli", "data", "inspect", "--data-adapter", "preference",
         "--arg", f"path={path}", "--model-name-or-path", str(tiny_plm_path), "--max-tiles", "1"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.count("=== pair #0") == 1 and out.count("What colour?") == 1  # the prompt, once
    assert out.count("<|image|>x") == 1
    chosen = out.index("chosen:\n[[A red square.<|eot_id|>]]")
    rejected = out.index("rejected:\n[[A blue circle.<|eot_id|>]]")
    assert out.index("What colour?") < chosen < rejected
    assert "[[" not in out[:chosen]  # nothing of the prompt is trained: only each answer and its <|eot_id|>
    assert "chosen: tokens=" in out and "rejected: tokens=" in out


def test_data_check_counts_both_sequences_of_a_pair_and_names_a_bad_one(media, tiny_plm_path):
    path = _write_jsonl(media / "pairs.jsonl", [
        {"prompt": "What colour?", "chosen": "A red square.", "rejected": "A blue circle.", "images": ["a.png"]},
        {"prompt": "What colour?", "chosen": "Red.", "rejected": "A much longer answer about a blue circle.",
         "images": ["a.png"]},
    ])
    result = subprocess.run(
        [sys.executable, "-m", "plm_tune.apps.cli", "data", "check", "--data-adapter", "preference",
         "--arg", f"path={path}", "--model-name-or-path", str(tiny_plm_path), "--max-tiles", "1", "--no-progress"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Checked 2 samples: 0 with problems." in result.stdout
    assert "(2 preference pairs: each answer's sequence counted)" in result.stdout


def test_the_readme_records_read_as_four_pairs(tmp_path):
    readme = (REPO / "README.md").read_text()
    block = readme.split("### Preference data", 1)[1].split("```jsonl\n", 1)[1].split("```", 1)[0]
    (tmp_path / "shapes").mkdir()
    make_image(32, 32).save(tmp_path / "shapes" / "0.png")
    path = tmp_path / "pairs.jsonl"
    path.write_text(block)
    samples = list(from_preference_data(path, progress=False))
    assert [(s["chosen"], s["rejected"]) for s in samples] == [(_answer("Red."), _answer("Blue."))] * 4
    assert all(s["images"] == [str(tmp_path / "shapes" / "0.png")] for s in samples)
