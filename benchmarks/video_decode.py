"""Video decoding: ``load_video`` (keyframe seeks, frame threads) vs the decoder it replaced (every frame from the start).

    .venv/bin/python benchmarks/video_decode.py               # 3 to 5 min on 2 shared cores, half of it encoding
    .venv/bin/python benchmarks/video_decode.py --gop 250     # x264's default keyframe interval

The clip, encoded here into a temporary folder: 90 s of 1280x720 at 30 fps, H.264 by libx264 (preset veryfast,
crf 23: High profile, CABAC, 3 B-frames; about 3 Mbit/s), a keyframe every ``--gop`` frames (default 60, 2 s:
phone and action cameras write one every 0.5 to 2 s; 250 is x264's default, for streaming encodes). The picture
is a blocky random texture the camera pans over, so every frame has real motion to decode.

Cases: the whole video at 32 frames (PLM's default; 90 one-per-second candidates, 32 picked), a 5 s clip at
80-85 s (32 frames over its 150), and one at 0-5 s (where the old decoder stops early too, and the new one must
not read the rest of the file). The baseline is the decoder as it was before seeking (copied below: one
forward pass from frame 0, no frame threads). Each round times both, in alternating order, and asserts that
they return identical arrays. Printed per case: each decoder's median seconds with min and max, the ratio of
the medians, and the per-round ratios (median, min - max): rounds share the machine's load, so the per-round
ratio is the number that survives a machine shared with other work.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import av
import numpy as np

from plm_tune.data.frame_decoding import decode_in_order, decode_seeking
from plm_tune.data.media import clip_frame_indices, load_video, open_video_stream

WIDTH, HEIGHT, FPS, SECONDS, NUM_FRAMES = 1280, 720, 30, 90, 32


def encode_clip(path: Path, gop: int) -> None:
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, (HEIGHT // 8 + 64, WIDTH // 8 + 64, 3), dtype=np.uint8)
    scene = np.repeat(np.repeat(blocks, 8, 0), 8, 1)  # 512 pixels wider and taller than the frame
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "23", "g": str(gop), "keyint_min": str(gop),
                          "sc_threshold": "0"}  # keyframes exactly every gop frames
        for i in range(SECONDS * FPS):
            y, x = int(200 + 180 * np.sin(i / 50)), int(250 + 240 * np.sin(i / 70))  # a slow handheld pan
            frame = np.ascontiguousarray(scene[y:y + HEIGHT, x:x + WIDTH])
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


# ------------------------------------------------------------------------------- the baseline, as it was
def old_load_video(path: str, start: float | None, end: float | None, num_frames: int) -> np.ndarray:
    """``load_video`` of a file before seeking: the same frame indices, decoded in one pass from frame 0 by the
    sequential decoder that ``load_video`` still falls back to (``frame_decoding.decode_in_order``)."""
    with open_video_stream(path) as (container, stream):
        indices = clip_frame_indices(container, stream, path, start, end, num_frames)
        return np.stack(decode_in_order(container, stream, indices, path))


def timed(decode, *args) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    frames = decode(*args)
    return time.perf_counter() - start, frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gop", type=int, default=60, help="keyframe interval in frames (default 60: 2 s)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds of each decoder per case")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "clip.mp4")
        start = time.perf_counter()
        encode_clip(Path(path), args.gop)
        print(f"encoded {SECONDS} s of {WIDTH}x{HEIGHT} at {FPS} fps, keyframe every {args.gop} frames: "
              f"{Path(path).stat().st_size * 8 / SECONDS / 1e6:.1f} Mbit/s, in {time.perf_counter() - start:.0f} s")
        cases = {"whole video, 32 frames": (None, None), "clip 80-85 s, 32 frames": (80.0, 85.0),
                 "clip 0-5 s, 32 frames": (0.0, 5.0)}  # the old decoder's best case: it stops at 5 s
        for case, (clip_start, clip_end) in cases.items():
            with open_video_stream(path) as (container, stream):
                indices = clip_frame_indices(container, stream, path, clip_start, clip_end, NUM_FRAMES)
                seeked = decode_seeking(container, stream, indices)
            assert seeked is not None, "the seeking decode declined this clip"
            entry = {"path": path, "start": clip_start, "end": clip_end}
            old, new = [], []
            for round_ in range(args.rounds):
                runs = [("old", old_load_video, (path, clip_start, clip_end, NUM_FRAMES)),
                        ("new", load_video, (entry, NUM_FRAMES))]
                frames = {}
                for name, decode, decode_args in runs if round_ % 2 == 0 else runs[::-1]:
                    seconds, frames[name] = timed(decode, *decode_args)
                    (old if name == "old" else new).append(seconds)
                assert frames["old"].shape == (len(indices), HEIGHT, WIDTH, 3)
                assert np.array_equal(frames["old"], frames["new"]), f"{case}: the frames differ"
            ratios = sorted(o / n for o, n in zip(old, new, strict=True))
            print(f"{case} (frames {indices[0]}..{indices[-1]}; the seeking decode reads {seeked.packets_scanned} "
                  f"packets and decodes {seeked.packets_decoded}, the old one decodes {indices[-1] + 1}); "
                  f"identical frames in all {args.rounds} rounds")
            for name, seconds in (("before", old), ("after", new)):
                print(f"  {name:<6} median {statistics.median(seconds):6.2f} s (min {min(seconds):.2f}, "
                      f"max {max(seconds):.2f})")
            print(f"  ratio of medians {statistics.median(old) / statistics.median(new):.2f}x; per-round ratio "
                  f"median {statistics.median(ratios):.2f}x ({ratios[0]:.2f} - {ratios[-1]:.2f})")


if __name__ == "__main__":
    main()
