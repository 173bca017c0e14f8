"""`plm-tune generate` on a tiny random PLM, as a user runs it: a clip of a video with --start / --end."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

av = pytest.importorskip("av")


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "plm_tune.apps.cli", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})


@pytest.fixture(scope="module")
def two_scene_video(tmp_path_factory):
    """A 10 s, 4 fps clip: dark noise for the first 5 s, bright stripes after, so a clip sees other pixels."""
    path = tmp_path_factory.mktemp("video") / "scenes.mp4"
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264rgb", rate=4)
        stream.width = stream.height = 32
        stream.pix_fmt, stream.options = "rgb24", {"qp": "0"}
        for i in range(40):
            if i < 20:
                rgb = rng.integers(0, 60, (32, 32, 3), dtype=np.uint8)
            else:
                rgb = np.zeros((32, 32, 3), dtype=np.uint8)
                rgb[::4] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return str(path)


def test_generate_answers_about_the_clip_between_start_and_end(tiny_plm_path, model, processor, two_scene_video):
    from plm_tune import generate

    def library(video) -> str:
        sample = {"messages": [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What?"}]}],
                  "videos": [video], "num_frames": 4}
        return generate(model, processor, [sample], max_new_tokens=12, progress=False)[0]

    clip = library({"path": two_scene_video, "start": 6.0, "end": 9.5})
    whole = library(two_scene_video)
    assert clip != whole, "the test video must make the clip's answer differ from the whole video's"

    result = _cli("generate", "--model", tiny_plm_path, "--video", two_scene_video, "--start", 6, "--end", 9.5,
                  "--num-frames", 4, "--prompt", "What?", "--max-new-tokens", 12)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == clip.strip()


def test_start_without_a_video_is_one_line_with_the_fix(tiny_plm_path, tmp_path):
    image = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (16, 16)).save(image)
    result = _cli("generate", "--model", tiny_plm_path, "--image", image, "--start", 2, "--prompt", "What?")
    assert result.returncode == 2  # usage
    assert "--start / --end" in result.stderr and "add --video PATH" in result.stderr
    assert "Traceback" not in result.stderr
