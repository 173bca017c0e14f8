"""Seeking decode (plm_tune.data.frame_decoding) against a decode from the start: the same arrays, bit for bit.

Each clip is H.264 (x264's defaults: B-frames, CABAC) of a random texture that moves one pixel a frame, so P-
and B-frames really reference their neighbours (a frame decoded from the wrong references differs) and no two
frames are alike (a frame one index off differs). ``select_frame_indices`` (tested in test_frame_selection.py on
lossless videos) picks the indices; here each seeking decode is compared with ``decode_in_order``, the decoder
that counts frames from the start, and must have skipped most of the packets the latter decodes.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from plm_tune.data.frame_decoding import decode_in_order, decode_seeking, scan_packets
from plm_tune.data.frame_selection import select_frame_indices
from plm_tune.data.media import load_video

av = pytest.importorskip("av")

SIZE = 48
TEXTURE = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)


def encode_moving(path: Path, count: int, fps: int, gop: int, *, pts: list[int] | None = None,
                  time_base: Fraction | None = None, x264: str = "") -> str:
    """``count`` frames of TEXTURE shifted right one pixel a frame (down one each SIZE frames): all distinct.

    ``gop`` fixes the keyframe interval (scene cuts off: noise would cut everywhere); ``pts`` sets each frame's
    timestamp in ``time_base`` (a stream that starts late, or a variable frame rate).
    """
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        stream.options = {"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0",
                          **({"x264-params": x264} if x264 else {})}
        if time_base is not None:
            stream.codec_context.time_base = time_base
        for i in range(count):
            frame = av.VideoFrame.from_ndarray(np.roll(TEXTURE, (i // SIZE, i), (0, 1)), format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = pts[i], time_base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return str(path)


def decode_both(path: str, indices: list[int]):
    """``(decode_seeking's result, decode_in_order's frames)`` for the same indices, each on a fresh open."""
    with av.open(path) as container:
        seeked = decode_seeking(container, container.streams.video[0], indices)
    with av.open(path) as container:
        in_order = decode_in_order(container, container.streams.video[0], indices, path)
    return seeked, in_order


def assert_identical(seeked, in_order: list[np.ndarray]) -> None:
    assert seeked is not None, "the seeking decode gave up on a stream it should handle"
    assert len(seeked.frames) == len(in_order)
    for i, (a, b) in enumerate(zip(seeked.frames, in_order, strict=True)):
        assert a.dtype == b.dtype == np.uint8 and a.shape == b.shape == (SIZE, SIZE, 3)
        assert np.array_equal(a, b), f"frame {i} differs from the decode from the start"
    assert len({a.tobytes() for a in in_order}) == len(in_order), "the clip's frames should all differ"


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gops")
    return {
        "90s_gop20": encode_moving(folder / "long.mp4", 900, 10, gop=20),  # a keyframe every 2 s
        "24s_gop250": encode_moving(folder / "gop250.mp4", 600, 25, gop=250),  # x264's default interval
        "20s_gop5": encode_moving(folder / "gop5.mp4", 200, 10, gop=5),
        "12s_open_gop": encode_moving(folder / "open.mp4", 300, 25, gop=30, x264="open-gop=1"),
    }


def test_sparse_frames_of_a_long_clip_decode_a_fraction_of_it(clips):
    indices = select_frame_indices(900, 10.0, None, None, 8)  # 8 of 90 one-per-second candidates
    seeked, in_order = decode_both(clips["90s_gop20"], indices)
    assert_identical(seeked, in_order)
    assert seeked.packets_scanned == 900
    # From the start: every frame up to the last wanted (890). Seeking: for each of the 8 frames at most a GOP
    # (20) and the packets the decoder takes before a frame comes out (FFmpeg's frame threads, 16 at most, and
    # B-frame reordering).
    assert seeked.packets_decoded <= 8 * (20 + 20) < indices[-1] // 2


def test_frames_near_the_start_of_a_long_video_read_only_its_first_gops(clips):
    """The scan stops once no later packet can show before the last wanted frame: a clip at 0-3 s of a 90 s
    video reads about 5 s of packets (two keyframes past frame 30), not all 900."""
    indices = select_frame_indices(900, 10.0, 0.0, 3.0, 8)
    seeked, in_order = decode_both(clips["90s_gop20"], indices)
    assert_identical(seeked, in_order)
    assert indices[-1] == 30 and seeked.packets_scanned <= 60


@pytest.mark.parametrize(("start", "end", "num_frames"), [(61.3, 67.9, 32), (41.0, 80.0, 8), (88.0, None, 4)])
def test_a_clip_deep_inside_the_video_starts_at_its_keyframe(clips, start, end, num_frames):
    indices = select_frame_indices(900, 10.0, start, end, num_frames)
    seeked, in_order = decode_both(clips["90s_gop20"], indices)
    assert_identical(seeked, in_order)
    assert seeked.packets_decoded < indices[0] // 2  # nothing decoded from the video's start


def test_large_gop_seeks_to_the_keyframe_before_each_frame(clips):
    path = clips["24s_gop250"]
    indices = select_frame_indices(600, 25.0, None, None, 8)
    with av.open(path) as container:
        table = scan_packets(container, container.streams.video[0], indices[-1])
    assert table is not None
    # Keyframes at frames 0, 250, 500: each wanted frame starts from the one at or before it, although
    # B-frames put packets and frames in different orders.
    assert [table.index[table.start_of(i).pts] for i in indices] == [250 * (i // 250) for i in indices]
    assert_identical(*decode_both(path, indices))


def test_small_gop_and_every_frame_of_a_short_clip(clips):
    path = clips["20s_gop5"]
    assert_identical(*decode_both(path, select_frame_indices(200, 10.0, None, None, 8)))
    assert_identical(*decode_both(path, select_frame_indices(200, 10.0, 3.0, 6.0, 32)))  # 31 consecutive frames


def test_open_gop_frames_shown_before_their_keyframe_use_the_keyframe_before(clips):
    path = clips["12s_open_gop"]
    with av.open(path) as container:
        table = scan_packets(container, container.streams.video[0], 299)
    leading = [pts for key in table.keyframes[1:] for pts in table.order
               if pts < key.pts and table.position[pts] > key.position]
    assert leading, "x264's open GOP should send frames after a keyframe that show before it"
    indices = sorted(table.index[pts] for pts in leading)[::3]
    assert_identical(*decode_both(path, indices))


def test_a_stream_whose_first_pts_is_not_zero(tmp_path):
    """Matroska keeps a start at 7 s; MPEG-TS adds its own offset and seeks by dts."""
    late = encode_moving(tmp_path / "late.mkv", 250, 25, gop=25, pts=[7000 + 40 * i for i in range(250)],
                         time_base=Fraction(1, 1000))
    ts = encode_moving(tmp_path / "clip.ts", 250, 25, gop=25)
    for path in (late, ts):
        with av.open(path) as container:
            table = scan_packets(container, container.streams.video[0], 249)
        assert table is not None and table.order[0] > 0
        assert_identical(*decode_both(path, [0, 3, 60, 99, 180, 249]))


def test_variable_frame_rate_indices_count_frames_not_seconds(tmp_path):
    durations = [20, 40, 80, 33]  # ms: 25 fps on average, no two neighbours alike
    pts = np.cumsum([0] + [durations[i % 4] for i in range(249)]).tolist()
    for name in ("vfr.mkv", "vfr.mp4"):
        path = encode_moving(tmp_path / name, 250, 25, gop=25, pts=pts, time_base=Fraction(1, 1000))
        assert_identical(*decode_both(path, [1, 2, 50, 77, 130, 248]))


def test_load_video_gives_the_frames_of_a_decode_from_the_start(clips):
    path = clips["90s_gop20"]
    entry = {"path": path, "start": 12.5, "end": 70.0}
    indices = select_frame_indices(900, 10.0, 12.5, 70.0, 16)
    with av.open(path) as container:
        in_order = decode_in_order(container, container.streams.video[0], indices, path)
    assert np.array_equal(load_video(entry, num_frames=16), np.stack(in_order))


def test_streams_without_timestamps_decode_from_the_start(clips, tmp_path):
    """Raw H.264 has no pts (and AVI gives H.264 B-frames decode-order pts): the seeking decode declines, and
    ``load_video`` decodes from the start instead (its frames checked in test_frame_selection.py)."""
    raw = tmp_path / "clip.h264"
    with av.open(clips["20s_gop5"]) as source, av.open(str(raw), "w", format="h264") as target:
        copy = target.add_stream_from_template(source.streams.video[0])
        for packet in source.demux(source.streams.video[0]):
            if packet.size:
                packet.stream = copy
                target.mux(packet)
    with av.open(str(raw)) as container:
        assert scan_packets(container, container.streams.video[0], 10) is None
    avi = encode_moving(tmp_path / "clip.avi", 100, 10, gop=25)
    seeked, in_order = decode_both(avi, select_frame_indices(100, 10.0, None, None, 4))
    assert seeked is None and len(in_order) == 4
    assert np.array_equal(load_video(avi, num_frames=4), np.stack(in_order))
