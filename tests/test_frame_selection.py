"""PLM's frame selection, reproduced on frame indices (perception_models ``core/transforms/video_transform.py``,
``VideoTransform.load_video`` and ``uniform_sample``).

The expected indices are worked out by hand from Meta's rule (1 fps candidates ``int(s * fps)`` .. ``int(e * fps)``
every ``round(fps)`` frames; ``int(round(i * stride))`` picks; a clip with fewer candidates than asked gets
``max_frames`` spread over all its frames). The videos are lossless (x264 RGB at qp 0 in MP4, FFV1 in Matroska,
PNG in AVI) and frame i holds the colour ``(i % 256, i // 256, 77)``, so a decoded frame names its index exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from plm_tune import PLMCollator
from plm_tune.data.frame_decoding import decode_seeking
from plm_tune.data.media import load_video, pick_uniform, select_frame_indices, video_frame_count
from plm_tune.encoding.costs import estimate_cost

av = pytest.importorskip("av")


def encode_indexed_video(path: Path, count: int, fps: int, codec: str = "libx264rgb") -> str:
    """A lossless clip of ``count`` frames at ``fps`` whose frame i is the colour (i % 256, i // 256, 77)."""
    pix_fmt, options = {"libx264rgb": ("rgb24", {"qp": "0"}), "ffv1": ("bgr0", {}), "png": ("rgb24", {})}[codec]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width = stream.height = 16
        stream.pix_fmt = pix_fmt
        stream.options = options
        for i in range(count):
            rgb = np.zeros((16, 16, 3), dtype=np.uint8)
            rgb[..., 0], rgb[..., 1], rgb[..., 2] = i % 256, i // 256, 77
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return str(path)


def decoded_indices(frames: np.ndarray) -> list[int]:
    """The source index of each decoded frame (each frame is checked to be one uniform, exact colour)."""
    indices = []
    for frame in frames:
        assert (frame == frame[0, 0]).all() and frame[0, 0, 2] == 77, "not a lossless frame of the clip"
        indices.append(int(frame[0, 0, 0]) + 256 * int(frame[0, 0, 1]))
    return indices


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("indexed")
    return {
        "25fps_40s": encode_indexed_video(folder / "long25.mp4", 1000, 25),
        "25fps_6s": encode_indexed_video(folder / "six25.mp4", 150, 25),
        "25fps_5s": encode_indexed_video(folder / "short25.mp4", 125, 25),
        "2fps_20s": encode_indexed_video(folder / "long2.mkv", 40, 2, codec="ffv1"),  # no frame count in the header
        "2fps_10s": encode_indexed_video(folder / "short2.avi", 20, 2, codec="png"),
    }


# (video, start, end, max_frames) -> the frames PLM's trainer decodes, worked out by hand.
CASES = {
    # Long clips: 1 fps candidates, then a uniform pick.
    "25fps whole, 8 of 40 candidates": ("25fps_40s", None, None, 8, [0, 150, 275, 425, 550, 700, 825, 975]),
    "25fps clip 3-30 s": ("25fps_40s", 3.0, 30.0, 8, [75, 175, 275, 375, 450, 550, 650, 750]),
    "25fps 6 candidates, 3 picked: round(2.5) is 2": ("25fps_6s", None, None, 3, [0, 50, 125]),
    "2fps whole, 8 of 20 candidates": ("2fps_20s", None, None, 8, [0, 6, 10, 16, 22, 28, 32, 38]),
    "2fps clip 3.2-7.9 s": ("2fps_20s", 3.2, 7.9, 4, [6, 8, 12, 14]),
    # Short clips: fewer 1 fps candidates than asked -> max_frames over all the clip's frames.
    "25fps 5 s, 32 asked: every 4th frame": ("25fps_5s", None, None, 32, list(range(0, 125, 4))),
    "25fps clip 2-3 s: all its 26 frames": ("25fps_40s", 2.0, 3.0, 32, list(range(50, 76))),
    "25fps clip 2-4.5 s, 16 of its 63 frames": (
        "25fps_40s", 2.0, 4.5, 16, [50 + i for i in (0, 4, 8, 12, 17, 21, 25, 29, 33, 37, 41, 45, 50, 54, 58, 62)]),
    "2fps 10 s, 32 asked: all 20 frames": ("2fps_10s", None, None, 32, list(range(20))),
    # Exactly max_frames candidates: all of them.
    "25fps 40 candidates, 40 asked": ("25fps_40s", None, None, 40, list(range(0, 1000, 25))),
    # start == end (as frame indices): the frame and the next.
    "start == end": ("25fps_40s", 4.0, 4.0, 32, [100, 101]),
    "start and end on one frame": ("25fps_40s", 4.0, 4.03, 32, [100, 101]),
    "start == end, 1 asked": ("25fps_40s", 4.0, 4.0, 1, [100]),
    "the last frame alone": ("25fps_40s", 39.99, None, 32, [999]),
    "end past the video": ("2fps_20s", 15.0, 99.0, 32, list(range(30, 40))),
}

FRAMES = {"25fps_40s": (1000, 25), "25fps_6s": (150, 25), "25fps_5s": (125, 25), "2fps_20s": (40, 2),
          "2fps_10s": (20, 2)}


@pytest.mark.parametrize("case", sorted(CASES))
def test_select_frame_indices_is_plms_rule(case):
    video, start, end, max_frames, expected = CASES[case]
    total, fps = FRAMES[video]
    assert select_frame_indices(total, fps, start, end, max_frames) == expected


@pytest.mark.parametrize("case", sorted(CASES))
def test_decoding_returns_exactly_those_frames_and_the_plan_counts_them(videos, case):
    video, start, end, max_frames, expected = CASES[case]
    entry = videos[video] if start is None and end is None else {"path": videos[video], "start": start, "end": end}
    frames = load_video(entry, num_frames=max_frames)
    assert decoded_indices(frames) == expected
    assert video_frame_count(entry, max_frames) == len(expected)  # plan's header-only count, same rule


def test_the_decoding_cases_run_through_the_seeking_decoder(videos):
    """load_video seeks to keyframes, and decodes from the start only where it cannot trust a stream: these
    lossless videos (MP4, Matroska without a frame count, AVI) are decoded by seeking, so the cases above hold
    for it."""
    for path in videos.values():
        with av.open(path) as container:
            stream = container.streams.video[0]
            indices = pick_uniform(stream.frames or 20, 4)  # Matroska records no count: its first 20 frames
            assert decode_seeking(container, stream, indices) is not None, path


def test_short_clip_rule_gives_max_frames_where_one_per_second_gave_five(videos):
    """The issue's case: a 5 s clip at 25 fps, 32 frames asked. PLM's trainer trains on 32 frames of it."""
    assert len(load_video(videos["25fps_5s"], num_frames=32)) == 32
    assert select_frame_indices(125, 25.0, None, None, 32) != list(range(0, 125, 25))  # not 1 per second


def test_refused_clips_say_why():
    with pytest.raises(ValueError, match=r"end \(2\.0s\) is before its start \(5\.0s\)\. Swap"):
        select_frame_indices(1000, 25.0, 5.0, 2.0, 8)
    with pytest.raises(ValueError, match=r"start 41\.0s is past the end of the video \(1000 frames at 25 fps: 40\.00s\)"):
        select_frame_indices(1000, 25.0, 41.0, None, 8)
    with pytest.raises(ValueError, match="num_frames must be >= 1"):
        select_frame_indices(1000, 25.0, None, None, 0)
    with pytest.raises(ValueError, match="no frames"):
        select_frame_indices(0, 25.0, None, None, 8)
    with pytest.raises(ValueError, match="frame rate must be positive"):
        select_frame_indices(10, 0.0, None, None, 8)


def test_refused_clip_of_a_file_names_the_file(videos):
    with pytest.raises(ValueError, match=r"past the end of the video.*long25\.mp4"):
        load_video({"path": videos["25fps_40s"], "start": 50.0})
    with pytest.raises(ValueError, match=r"before its start.*long25\.mp4"):
        video_frame_count({"path": videos["25fps_40s"], "start": 6.0, "end": 3.0}, 8)


def test_frame_rates_that_are_not_whole_numbers():
    # NTSC 29.97 fps: stride round(29.97) = 30 frames, clip bounds int(s * 29.97).
    assert select_frame_indices(900, 29.97, 1.0, 3.0, 64) == list(range(29, 90))  # 3 candidates < 64: all 61 frames
    assert select_frame_indices(9000, 29.97, None, None, 4) == [0, 3000, 5970, 8970]
    # A time-lapse under 0.5 fps: round(fps) would be a zero stride; every frame is a candidate instead.
    assert select_frame_indices(10, 0.4, None, None, 4) == [0, 3, 6, 9]


def test_indices_are_increasing_inside_the_clip_and_never_more_than_asked():
    for total, fps in ((1000, 25.0), (40, 2.0), (300, 29.97), (7, 1.0)):
        for start, end in ((None, None), (0.5, None), (1.0, 1.0), (1.2, 3.7)):
            for max_frames in (1, 2, 3, 8, 32):
                picked = select_frame_indices(total, fps, start, end, max_frames)
                assert picked == sorted(set(picked)) and 1 <= len(picked) <= max_frames
                first = 0 if start is None else int(start * fps)
                assert first == picked[0] and picked[-1] < total


def test_pick_uniform_for_given_frames_uses_the_same_rounding():
    assert pick_uniform(6, 3) == [0, 2, 5]  # round(2.5) == 2, as uniform_sample
    assert pick_uniform(4, 3) == [0, 2, 3]  # round(1.5) == 2
    assert pick_uniform(3, 8) == [0, 1, 2] and pick_uniform(0, 4) == []


def test_collator_and_plan_agree_on_the_short_clip_rule(processor, videos):
    sample = {"messages": [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What?"}]},
                           {"role": "assistant", "content": "Colours."}],
              "videos": [{"path": videos["25fps_40s"], "start": 2.0, "end": 4.5}], "images": [],
              "num_frames": 16}
    collator = PLMCollator(processor)
    encoded = collator.encode(sample)
    assert encoded.videos[0].shape[0] == 16
    estimate = estimate_cost(sample, collator)
    assert (estimate.frames, estimate.tokens) == (16, len(encoded.input_ids))


def test_generation_prompts_take_a_clip_through_the_video_entry(processor, videos):
    """generate encodes prompts with encode_prompt: a {"path", "start", "end"} entry gives that clip's frames,
    the same as training (what `plm-tune generate --video PATH --start S --end E` needs)."""
    clip = {"path": videos["25fps_40s"], "start": 3.0, "end": 30.0}
    prompt = {"messages": [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What?"}]}],
              "videos": [clip], "num_frames": 8}
    encoded, reference = PLMCollator(processor).encode_prompt(prompt)
    trained = PLMCollator(processor).encode({**prompt, "messages": [*prompt["messages"],
                                                                    {"role": "assistant", "content": "Colours."}]})
    assert reference is None and encoded.videos[0].shape[0] == 8
    assert torch.equal(encoded.videos[0], trained.videos[0])
    whole = PLMCollator(processor).encode_prompt({**prompt, "videos": [clip["path"]]})[0]
    assert not torch.equal(encoded.videos[0], whole.videos[0])  # the clip, not the whole video
