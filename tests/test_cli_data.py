"""`plm-tune data inspect` and `plm-tune data check` on real folders, through the installed console script."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import make_image


def _run(*args):
    return subprocess.run([sys.executable, "-m", "plm_tune.apps.cli", *map(str, args)], capture_output=True, text=True)


@pytest.fixture
def captioned_folder(tmp_path):
    root = tmp_path / "scans"
    root.mkdir()
    rows = []
    for i in range(4):
        make_image(64 + 8 * i, 48, seed=i).save(root / f"good{i}.png")
        rows.append({"file_name": f"good{i}.png", "caption": f"Scan number {i}."})
    return root, rows


def _write_metadata(root, rows):
    with open(root / "metadata.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def test_data_inspect_shows_formatted_text_trained_tokens_and_counts(captioned_folder, tiny_plm_path):
    root, rows = captioned_folder
    _write_metadata(root, rows)
    result = _run("data", "inspect", "--adapter", "image_folder", "--arg", f"root={root}",
                  "--model-name-or-path", tiny_plm_path, "--max-tiles", "2", "-n", "2")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.count("=== sample") == 2
    assert "Reading records" in result.stderr and "4/4" in result.stderr  # the adapter's scan, with a bar
    assert "[[Scan number 0.<|eot_id|>]]" in out  # the trained span, and only it, is marked
    assert "<|image|>x" in out and "tiles=" in out and "trained_tokens=" in out


def test_data_check_lists_every_planted_bad_record_with_its_reason(captioned_folder, tiny_plm_path, tmp_path):
    root, rows = captioned_folder
    (root / "not_an_image.png").write_text("this is text, not a PNG")
    good = (root / "good0.png").read_bytes()
    (root / "truncated.png").write_bytes(good[: len(good) // 2])  # header fine, body cut: found only by decoding
    (tmp_path / "outside.png").write_bytes(good)
    rows += [
        {"file_name": "missing.png", "caption": "Gone."},
        {"file_name": "not_an_image.png", "caption": "Text file."},
        {"file_name": "good1.png", "caption": ""},
        {"file_name": "../outside.png", "caption": "Escapes the root."},
        {"file_name": "truncated.png", "caption": "Cut short."},
    ]
    _write_metadata(root, rows)
    result = _run("data", "check", "--adapter", "image_folder", "--arg", f"root={root}",
                  "--model-name-or-path", tiny_plm_path, "--max-tiles", "2", "--max-length", "60",
                  "--no-progress")
    assert result.returncode == 1, result.stdout + result.stderr
    report = result.stdout
    for reason, record in [("missing file", "missing.png"), ("undecodable image", "not_an_image.png"),
                           ("no answer text", "good1.png"), ("path outside dataset root", "outside.png"),
                           ("undecodable image", "truncated.png")]:
        line = next((ln for ln in report.splitlines() if reason in ln and record in ln), None)
        assert line is not None, f"{reason} / {record} missing from:\n{report}"
    assert "Tokens per sample" in report and "exceed max_length=60" in report


def test_data_check_exits_zero_on_a_clean_folder(captioned_folder, tiny_plm_path):
    root, rows = captioned_folder
    _write_metadata(root, rows)
    result = _run("data", "check", "--adapter", "image_folder", "--arg", f"root={root}",
                  "--model-name-or-path", tiny_plm_path, "--max-tiles", "2", "--no-progress")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Checked 4 samples: 0 with problems." in result.stdout
    assert "Reading records" not in result.stderr  # --no-progress quiets the adapter's scan too


def test_data_commands_read_a_yaml_config(captioned_folder, tiny_plm_path, tmp_path):
    root, rows = captioned_folder
    _write_metadata(root, rows)
    config = tmp_path / "data.yaml"
    config.write_text(f"model_name_or_path: {tiny_plm_path}\nmax_tiles: 2\n"
                      f"data:\n  adapter: image_folder\n  root: {root}\n  prompt: Describe the scan.\n")
    result = _run("data", "inspect", config, "-n", "1")
    assert result.returncode == 0, result.stderr
    assert "Describe the scan." in result.stdout


def test_unknown_adapter_is_a_clear_error(tiny_plm_path):
    result = _run("data", "check", "--arg", "root=.", "--model-name-or-path", tiny_plm_path)
    assert result.returncode != 0 and "adapter" in result.stderr


def test_data_check_lists_every_kind_of_bad_input_by_reason_and_record(tiny_plm_path, tmp_path):
    """Issue 15: one plm_jsonl folder seeded with each bad kind, and a csv with an unquoted comma."""
    from test_faults import _faststart_mp4, _plm_line

    make_image(32, 32).save(tmp_path / "ok.png")
    (tmp_path / "fake.png").write_text("not a png")
    data = _faststart_mp4(tmp_path / "whole.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: int(len(data) * 0.4)])
    video = json.dumps({"video": "cut.mp4", "conversations": [{"from": "human", "value": "<video>\nWhat?"},
                                                               {"from": "assistant", "value": "Noise."}]})
    lines = [
        _plm_line("ok.png").encode(),                                                      # line 1: good
        _plm_line("ok.png", "ANSWER").encode().replace(b"ANSWER", b"caf\xe9"),             # 2: not UTF-8
        _plm_line("ok.png", "x").replace('"x"', '"\\udc00"').encode(),                     # 3: lone surrogate
        _plm_line("ok\x00.png").encode(),                                                 # 4: NUL in the path
        _plm_line("gone.png").encode(),                                                    # 5: missing file
        _plm_line("fake.png").encode(),                                                    # 6: not an image
        video.encode(),                                                                    # 7: truncated video
        _plm_line("ok.png", turns=[("assistant", "Hi."), ("human", "<image>\nQ?"), ("assistant", "A.")]).encode(),
        _plm_line("ok.png", turns=[("human", "<image>\nQ?"), ("assistant", "A."), ("human", "And?")]).encode(),
    ]
    (tmp_path / "data.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    result = _run("data", "check", "--adapter", "plm_jsonl", "--arg", f"path={tmp_path / 'data.jsonl'}",
                  "--arg", f"media_root={tmp_path}", "--model-name-or-path", tiny_plm_path, "--max-tiles", "1",
                  "--no-progress")
    assert result.returncode == 1, result.stdout + result.stderr
    report = result.stdout
    assert "Checked 1 samples: 8 with problems." in report, report
    for line, reason in [(2, "not UTF-8 text"), (3, "not UTF-8 text"), (4, "bad media path"),
                         (5, "missing file"), (6, "undecodable image"), (7, "truncated video"),
                         (8, "invalid conversation"), (9, "invalid conversation")]:
        row = next((ln for ln in report.splitlines() if reason in ln), "")
        assert f"data.jsonl line {line}" in row, f"line {line} ({reason}) missing from:\n{report}"

    folder = tmp_path / "captions"
    folder.mkdir()
    make_image(32, 32).save(folder / "a.png")
    (folder / "metadata.csv").write_text("file_name,caption\na.png,Grey.\na.png,Grey, noisy and small.\n")
    result = _run("data", "check", "--adapter", "image_folder", "--arg", f"root={folder}",
                  "--model-name-or-path", tiny_plm_path, "--max-tiles", "1", "--no-progress")
    assert result.returncode == 1 and "extra csv fields  (metadata.csv line 3" in result.stdout, result.stdout


def test_arg_with_a_caption_template_reaches_the_adapter_as_text(tiny_plm_path, tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False)).save_as(tmp_path / "a.dcm")
    result = _run("data", "inspect", "--adapter", "dicom", "--arg", f"paths_or_dir={tmp_path}",
                  "--arg", "caption={Modality} {BodyPartExamined}: {StudyDescription}",
                  "--model-name-or-path", tiny_plm_path, "--max-tiles", "1", "-n", "1")
    assert result.returncode == 0, result.stderr
    assert "[[CT" in result.stdout and "Traceback" not in result.stderr
