"""One taxonomy of data problems: every error the library raises about a sample or its media carries a
``Reason``, and whoever groups problems (``data check``, the adapters' skip reports) reads it, never the text."""

from __future__ import annotations

import pickle

import pytest
from conftest import make_image, qa

from data_adapters._records import BadRecord
from plm_tune.data.dicom import DicomError
from plm_tune.data.dicom_render import RenderError
from plm_tune.data.sample import validate_sample
from plm_tune.encoding.collator import PLMCollator
from plm_tune.encoding.preflight import check_dataset
from plm_tune.errors import DataError, MediaError, Reason, reason_of


def test_check_dataset_counts_each_problem_by_the_reason_its_error_carries(processor, tmp_path):
    # A file name full of other reasons' words: sorting by message text called this an undecodable video.
    (tmp_path / "video_dicom_placeholder.png").write_text("not a png")
    (tmp_path / "notes.mp4").write_text("not a video")
    picture = make_image(32, 32)
    samples = {
        "ok": {"messages": qa("What?", "Noise.", ["image"]), "images": [picture]},
        "missing file": {"messages": qa("What?", "Noise.", ["image"]), "images": [str(tmp_path / "gone.png")]},
        "undecodable image": {"messages": qa("What?", "Noise.", ["image"]),
                              "images": [str(tmp_path / "video_dicom_placeholder.png")]},
        "unreadable video": {"messages": qa("What?", "Noise.", ["video"]), "videos": [str(tmp_path / "notes.mp4")]},
        "no answer text": {"messages": [{"role": "user", "content": "Hi"}]},
        "invalid conversation": {"messages": [{"role": "human", "content": "Hi"},
                                              {"role": "assistant", "content": "Hello"}]},
        "media count mismatch": {"messages": qa("What?", "Noise.", ["image"]), "images": []},
        "not UTF-8 text": {"messages": qa("What?", "caf\udce9")},
    }
    dataset = [{**sample, "id": name} for name, sample in samples.items()]
    result = check_dataset(dataset, PLMCollator(processor, max_tiles=1), progress=False)
    assert dict(result.problems) == {name: 1 for name in samples if name != "ok"}
    for name in result.problems:
        assert result.examples[name][0].startswith(f"#{list(samples).index(name)} id={name}:")  # the record


def test_an_error_that_wraps_a_media_error_keeps_its_reason(processor, tmp_path):
    sample = {"id": "scan-7", "messages": qa("What?", "Noise.", ["image"]), "images": [str(tmp_path / "gone.png")]}
    with pytest.raises(ValueError, match="scan-7") as collated:
        PLMCollator(processor, max_tiles=1).encode(sample)  # the collator names the sample around the cause
    assert reason_of(collated.value) == Reason.MISSING_FILE
    with pytest.raises(DataError, match=r"scan-7.*images\[0\]") as validated:
        validate_sample(sample)
    assert validated.value.reason == "missing file"  # a Reason is its string
    assert reason_of(ValueError("no reason here")) is None


@pytest.mark.parametrize("error", [
    MediaError(Reason.TRUNCATED_VIDEO, "'a.mp4' header says 10.00s, but packets stop at 4.00s.", "Re-encode it."),
    DicomError("a.dcm", Reason.NO_PIXEL_DATA, "it holds no image.", "pass image files."),
    RenderError(Reason.CORRUPT_HEADER, "a colour frame decoded to shape (2, 2)."),
    BadRecord("rows.csv line 3", "bad json", "the line is not valid JSON.", "fix the line."),
])
def test_reasoned_errors_come_back_whole_from_another_process(error):
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), copy.reason, copy.detail, copy.fix, str(copy)) == \
        (type(error), error.reason, error.detail, error.fix, str(error))
    assert isinstance(copy, DataError)
