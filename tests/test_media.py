"""Tests for plm_tune.data.media: image loading and video decoding (PLM's frame selection: test_frame_selection.py).

Videos are real files encoded with PyAV into tmp_path. Every frame is a uniform grey whose level encodes
its index (``20 + 4 * index``), so a decoded frame tells exactly which source frame it came from.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from plm_tune.data.media import (
    MediaError,
    image_size,
    load_image,
    load_video,
    pick_uniform,
    select_frame_indices,
    video_duration,
    video_frame_count,
)

av = pytest.importorskip("av")

SIZE = 64
BASE, STEP = 20, 4  # grey level of frame i is BASE + STEP * i (50 frames stay below 255)


def _grey_level(index: int) -> int:
    return BASE + STEP * index


def encode_grey_video(path: Path, num_frames: int, fps: int) -> Path:
    """Write a lossless H.264 clip of ``num_frames`` uniform grey frames at ``fps`` (duration num_frames/fps).

    Lossless (crf 0) keeps decoded levels within +-1 of the source, far below the 4-level step between
    frames, so the frame index read back is unambiguous.
    """
    try:
        av.codec.Codec("libx264", "w")
    except Exception:  # a PyAV build without x264
        pytest.skip("this PyAV build has no libx264 encoder")
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "0"}
        for i in range(num_frames):
            rgb = np.full((SIZE, SIZE, 3), _grey_level(i), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():  # flush the encoder
            container.mux(packet)
    return path


def frame_indices(frames: np.ndarray) -> list[int]:
    """The source index of every decoded frame, checking each frame is (nearly) the uniform grey it encodes."""
    indices = []
    for frame in frames:
        level = float(frame.mean())
        index = round((level - BASE) / STEP)
        assert int(frame.max()) - int(frame.min()) <= 2, "decoded frame is not uniform"
        assert abs(level - _grey_level(index)) <= 1.5, f"level {level} is between two source frames"
        indices.append(index)
    return indices


CLIP_FPS, CLIP_FRAMES = 5, 50  # a 10 s clip


@pytest.fixture(scope="module")
def clip_10s(tmp_path_factory) -> Path:
    return encode_grey_video(tmp_path_factory.mktemp("video") / "clip.mp4", CLIP_FRAMES, CLIP_FPS)


# --------------------------------------------------------------------------------------------------------
# pick_uniform (frames given directly, DICOM cines)
# --------------------------------------------------------------------------------------------------------


def test_pick_uniform_keeps_both_ends_without_duplicates():
    for total in range(1, 70):
        for wanted in range(1, 40):
            picked = pick_uniform(total, wanted)
            assert len(picked) == min(total, wanted)
            assert picked == sorted(set(picked)), "indices must be strictly increasing (no duplicates)"
            assert picked[0] == 0
            assert all(0 <= i < total for i in picked)
            if wanted >= 2:
                assert picked[-1] == total - 1, "the last item must always be kept"


def test_pick_uniform_small_cases():
    assert pick_uniform(0, 4) == []
    assert pick_uniform(3, 8) == [0, 1, 2]  # fewer items than wanted: all of them
    assert pick_uniform(5, 5) == [0, 1, 2, 3, 4]
    assert pick_uniform(10, 1) == [0]
    assert pick_uniform(10, 2) == [0, 9]
    assert pick_uniform(11, 4) == [0, 3, 7, 10]


# --------------------------------------------------------------------------------------------------------
# load_video on real files
# --------------------------------------------------------------------------------------------------------


def test_encoded_clip_round_trips_every_frame(clip_10s):
    # Sanity check of the fixture itself: all 50 frames decode to their own index, 0.2 s apart.
    with av.open(str(clip_10s)) as container:
        stream = container.streams.video[0]
        decoded = [(float(f.time), f.to_ndarray(format="rgb24")) for f in container.decode(stream)]
        assert float(stream.duration * stream.time_base) == pytest.approx(10.0)
    assert [t for t, _ in decoded] == pytest.approx([i / CLIP_FPS for i in range(CLIP_FRAMES)])
    assert frame_indices(np.stack([f for _, f in decoded])) == list(range(CLIP_FRAMES))


def test_load_video_whole_clip_picks_plm_frames(clip_10s):
    frames = load_video(str(clip_10s), num_frames=4)
    assert frames.dtype == np.uint8
    assert frames.shape == (4, SIZE, SIZE, 3)
    # 1 fps candidates are every 5th frame (0, 5, ..., 45); a uniform pick of 4 of those 10 -> 0, 3, 6, 9.
    assert frame_indices(frames) == [0, 15, 30, 45]
    assert frame_indices(frames) == select_frame_indices(CLIP_FRAMES, CLIP_FPS, None, None, 4)


def test_load_video_accepts_pathlike_and_more_frames_than_candidates(clip_10s):
    # 10 one-per-second candidates < 32 wanted: PLM's short-clip rule, 32 frames over all 50 of the clip.
    frames = load_video(clip_10s, num_frames=32)
    assert frames.shape == (32, SIZE, SIZE, 3)
    assert frame_indices(frames) == select_frame_indices(CLIP_FRAMES, CLIP_FPS, None, None, 32)
    assert frame_indices(frames)[0] == 0 and frame_indices(frames)[-1] == CLIP_FRAMES - 1


def test_load_video_segment_frames_come_from_inside_segment(clip_10s):
    start, end = 2.25, 6.9
    frames = load_video({"path": str(clip_10s), "start": start, "end": end}, num_frames=3)
    assert frames.shape == (3, SIZE, SIZE, 3)
    # Frames int(2.25 * 5) = 11 .. int(6.9 * 5) = 34; candidates 11, 16, 21, 26, 31; 3 of them.
    assert frame_indices(frames) == [11, 21, 31]
    assert all(start * CLIP_FPS - 0.5 <= i <= end * CLIP_FPS + 0.5 for i in frame_indices(frames))


def test_load_video_segment_bounds_are_frame_indices_rounded_down(clip_10s):
    # 2.35 s -> frame int(11.75) = 11 and 4.5 s -> frame 22: a short clip (3 candidates), 8 of its 12 frames.
    frames = load_video({"path": str(clip_10s), "start": 2.35, "end": 4.5}, num_frames=8)
    assert frame_indices(frames) == [11, 13, 14, 16, 17, 19, 20, 22]
    # 2.15 s is frame int(10.75) = 10, never the nearer frame 11: PLM's trainer truncates, it does not round.
    frames = load_video({"path": str(clip_10s), "start": 2.15, "end": 3.1}, num_frames=2)
    assert frame_indices(frames) == [10, 15]
    frames = load_video({"path": str(clip_10s), "start": 3.05, "end": 4.1}, num_frames=2)
    assert frame_indices(frames) == [15, 20]


def test_load_video_start_only_runs_to_end_of_video(clip_10s):
    frames = load_video({"path": str(clip_10s), "start": 7.0}, num_frames=8)
    assert frame_indices(frames) == [35, 37, 39, 41, 43, 45, 47, 49]  # frames 35..49: 3 candidates < 8


def test_load_video_end_past_duration_is_clamped(clip_10s):
    frames = load_video({"path": str(clip_10s), "start": 5.0, "end": 100.0}, num_frames=3)
    # Clamped to frames 25..49: candidates 25, 30, ..., 45, a pick of 3. Unclamped, the candidates would
    # run to frame 500 and the pick land mostly past the video.
    assert frame_indices(frames) == [25, 35, 45]


def test_load_video_short_clip_gives_its_frames(tmp_path):
    path = encode_grey_video(tmp_path / "short.mp4", num_frames=10, fps=4)  # 2.5 s
    frames = load_video(str(path), num_frames=32)
    assert frames.dtype == np.uint8
    assert frames.shape == (10, SIZE, SIZE, 3)  # 3 candidates < 32 wanted: every frame of the clip (10 < 32)
    assert frame_indices(frames) == list(range(10))


def test_load_video_start_past_end_of_video_raises(clip_10s):
    with pytest.raises(ValueError, match=r"start 20\.0s is past the end of the video \(50 frames at 5 fps: 10\.00s\).*clip\.mp4"):
        load_video({"path": str(clip_10s), "start": 20.0, "end": 30.0})


def test_load_video_start_after_end_raises(clip_10s):
    # A reversed segment is a data error; it must not silently decode one frame at `start`.
    with pytest.raises(ValueError, match="before its start"):
        load_video({"path": str(clip_10s), "start": 6.0, "end": 3.0})


def test_load_video_rejects_non_positive_num_frames(clip_10s):
    with pytest.raises(ValueError, match="num_frames must be >= 1"):
        load_video(str(clip_10s), num_frames=0)
    with pytest.raises(ValueError, match="num_frames must be >= 1"):
        load_video(np.zeros((4, 8, 8, 3), dtype=np.uint8), num_frames=0)


def test_load_video_dict_without_path_raises():
    with pytest.raises(ValueError, match="has no 'path'"):
        load_video({"start": 1.0, "end": 2.0})


def test_load_video_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nope" / "missing.mp4"
    with pytest.raises(ValueError, match=r"Video file '.*missing\.mp4' does not exist"):
        load_video(str(missing))
    with pytest.raises(ValueError, match=r"missing\.mp4"):
        load_video({"path": str(missing), "start": 0.0, "end": 1.0})


def test_load_video_file_that_is_not_a_video_raises(tmp_path):
    path = tmp_path / "x.mp4"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match=r"x\.mp4"):
        load_video(str(path))


def test_load_video_unsupported_entry_type_raises():
    with pytest.raises(ValueError, match="Unsupported video entry of type int"):
        load_video(42)


# --------------------------------------------------------------------------------------------------------
# load_video with frames given directly
# --------------------------------------------------------------------------------------------------------


def _indexed_frames(count: int) -> np.ndarray:
    return np.stack([np.full((8, 8, 3), i, dtype=np.uint8) for i in range(count)])


def test_load_video_array_is_uniformly_subsampled_keeping_ends():
    frames = _indexed_frames(10)
    out = load_video(frames, num_frames=4)
    assert out.dtype == np.uint8
    assert out.shape == (4, 8, 8, 3)
    assert [int(f[0, 0, 0]) for f in out] == [0, 3, 6, 9]


def test_load_video_array_with_few_frames_is_returned_whole():
    frames = _indexed_frames(3)
    out = load_video(frames, num_frames=8)
    np.testing.assert_array_equal(out, frames)


def test_load_video_list_of_pil_images():
    images = [Image.fromarray(f) for f in _indexed_frames(6)]
    images[1] = images[1].convert("L")  # non-RGB frames are converted
    out = load_video(images, num_frames=3)
    assert out.dtype == np.uint8
    assert out.shape == (3, 8, 8, 3)
    assert [int(f[0, 0, 0]) for f in out] == [0, 2, 5]  # pick_uniform(6, 3) rounds 2.5 to 2


def test_load_video_array_wrong_dtype_raises():
    with pytest.raises(ValueError, match="must be uint8.*float32"):
        load_video(np.zeros((4, 8, 8, 3), dtype=np.float32))


@pytest.mark.parametrize("shape", [(4, 8, 8), (4, 8, 8, 4), (8, 8, 3), (0, 8, 8, 3)])
def test_load_video_array_wrong_shape_raises(shape):
    with pytest.raises(ValueError, match=r"non-empty \(T, H, W, 3\) array, got shape"):
        load_video(np.zeros(shape, dtype=np.uint8))


def test_load_video_empty_list_raises():
    with pytest.raises(ValueError, match="empty list of frames"):
        load_video([])


# --------------------------------------------------------------------------------------------------------
# load_image
# --------------------------------------------------------------------------------------------------------


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def rgb_image() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8))


def test_load_image_pil_rgb_is_returned_as_is(rgb_image):
    assert load_image(rgb_image) is rgb_image


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16"])
def test_load_image_pil_non_rgb_is_converted(rgb_image, mode):
    out = load_image(rgb_image.convert(mode))
    assert out.mode == "RGB"
    assert out.size == (16, 12)


def test_load_image_from_path_and_pathlike(tmp_path, rgb_image):
    path = tmp_path / "img.png"
    rgb_image.save(path)
    for entry in (str(path), path):
        out = load_image(entry)
        assert out.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(out), np.asarray(rgb_image))


def test_load_image_grayscale_file_becomes_rgb(tmp_path, rgb_image):
    path = tmp_path / "grey.jpg"
    rgb_image.convert("L").save(path)
    out = load_image(str(path))
    assert out.mode == "RGB"
    assert out.size == (16, 12)


def test_load_image_from_bytes_and_dicts(tmp_path, rgb_image):
    data = _png_bytes(rgb_image)
    path = tmp_path / "img.png"
    path.write_bytes(data)
    entries = [
        data,
        bytearray(data),
        {"bytes": data, "path": None},
        {"bytes": data, "path": "ignored-when-bytes-are-present.png"},  # bytes win over path
        {"bytes": None, "path": str(path)},  # datasets Image(decode=False) for a file on disk
    ]
    for entry in entries:
        out = load_image(entry)
        assert out.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(out), np.asarray(rgb_image))


def test_load_image_dict_without_bytes_or_path_raises():
    with pytest.raises(ValueError, match="neither 'bytes' nor 'path'"):
        load_image({"bytes": None, "path": None})


def test_load_image_missing_path_names_it(tmp_path):
    missing = tmp_path / "missing.png"
    with pytest.raises(ValueError, match=r"Image file '.*missing\.png' does not exist"):
        load_image(str(missing))
    with pytest.raises(ValueError, match=r"missing\.png' does not exist"):
        load_image({"bytes": None, "path": str(missing)})


def test_load_image_corrupt_bytes_raise(rgb_image):
    with pytest.raises(ValueError, match=r"Could not decode image from 9 bytes"):
        load_image(b"not a png")
    truncated = _png_bytes(rgb_image)[:40]  # a PNG header without its data
    with pytest.raises(ValueError, match=r"Could not decode image from 40 bytes"):
        load_image(truncated)


def test_load_image_corrupt_file_names_it(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG but not really an image")
    with pytest.raises(ValueError, match=r"Could not decode image file '.*broken\.png'"):
        load_image(str(path))


def test_load_image_unsupported_type_raises():
    with pytest.raises(ValueError, match="Unsupported image entry of type int"):
        load_image(3)


# ------------------------------------------------------------------------------------------ headers only
def test_headers_agree_with_decoding(clip_10s, tmp_path):
    """image_size / video_frame_count read headers only, and say what load_image / load_video will give."""
    path = tmp_path / "wide.png"
    Image.new("RGB", (123, 45)).save(path)
    for entry in (str(path), path.read_bytes(), {"bytes": None, "path": str(path)}, Image.open(path)):
        assert image_size(entry) == load_image(entry).size == (123, 45)
    assert video_duration(str(clip_10s)) == pytest.approx(10.0, abs=0.25)
    for entry, num_frames in [(str(clip_10s), 4), ({"path": str(clip_10s), "start": 2.0, "end": 5.0}, 32),
                              (np.zeros((7, 8, 8, 3), dtype=np.uint8), 5)]:
        assert video_frame_count(entry, num_frames) == len(load_video(entry, num_frames=num_frames))


def test_header_errors_carry_a_stable_reason(tmp_path):
    """The adapters group skipped records by ``MediaError.reason``."""
    (tmp_path / "text.mp4").write_text("not a video")
    cases = [(tmp_path / "missing.mp4", "missing file"), (tmp_path / "text.mp4", "unreadable video")]
    for path, reason in cases:
        with pytest.raises(MediaError, match=path.name) as caught:
            video_duration(str(path))
        assert caught.value.reason == reason
    with pytest.raises(ValueError, match="text.mp4"):
        image_size(str(tmp_path / "text.mp4"))
