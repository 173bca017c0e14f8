"""Generated shapes with known answers: data for smoke runs and learnability tests, no download needed.

``synthetic_shapes`` draws one coloured shape on a plain grey background and asks its colour or its shape::

    {"id": "shape-00003",
     "messages": [{"role": "user", "content": [{"type": "image", "text": None},
                                               {"type": "text", "text": "What colour is the shape?"}]},
                  {"role": "assistant", "content": [{"type": "text", "text": "blue"}]}],
     "images": [b"\\x89PNG..."], "videos": [], "max_tiles": None, "num_frames": None}

``synthetic_shape_pairs`` asks the colour question as a preference pair (``plm_tune.data.preference``): the
true colour is chosen, another colour rejected::

    {"id": "pair-00003",
     "messages": [{"role": "user", "content": [{"type": "image", "text": None},
                                               {"type": "text", "text": "What colour is the shape?"}]}],
     "chosen": [{"role": "assistant", "content": [{"type": "text", "text": "blue"}]}],
     "rejected": [{"role": "assistant", "content": [{"type": "text", "text": "red"}]}],
     "images": [b"\\x89PNG..."], "videos": [], "max_tiles": None, "num_frames": None}

``synthetic_videos`` moves a shape across the frame and asks which way it goes (``"left"``, ``"right"``,
``"up"``, ``"down"``). Its frames are PNG bytes kept in the table (``"videos": [[b"\\x89PNG...", ...]]``), which
``plm_tune.data.media.load_video`` reads as a list of images: the dataset is self-contained (no cache folder to
carry along), lossless (no codec blur on a small shape) and decoded only when the collator needs the frames.

Everything is drawn from ``seed`` alone (same seed, identical bytes), answers are balanced (counts differ by at
most one), and shapes are large, saturated and unrotated so that the answer survives a 56 px thumbnail.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from functools import partial
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageDraw

from data_adapters._records import build_dataset, make_sample, media_part, text_part
from plm_tune.data.sample import table_messages

__all__ = ["synthetic_shapes", "synthetic_shape_pairs", "synthetic_videos", "COLOURS", "SHAPES", "DIRECTIONS", "QUESTIONS"]

# Far apart in hue and never grey, so a colour is unambiguous against any background below.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 160, 50), "blue": (30, 70, 220), "yellow": (240, 200, 0),
}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = ("left", "right", "up", "down")
BACKGROUNDS = ((255, 255, 255), (225, 225, 225), (190, 190, 190))
QuestionKind = Literal["colour", "shape"]
QUESTIONS: dict[str, str] = {
    "colour": "What colour is the shape?",
    "shape": "What shape is it?",
    "direction": "Which way does the shape move?",
}


def _balanced_plan(n: int, choices: list[tuple[str, Sequence[str]]], seed: int) -> list[tuple[str, str]]:
    """``n`` (question kind, answer) pairs: kinds in turn, each kind's answers in turn, then shuffled."""
    plan = []
    for i in range(n):
        kind, answers = choices[i % len(choices)]
        plan.append((kind, answers[(i // len(choices)) % len(answers)]))
    order = np.random.default_rng(seed).permutation(n)
    return [plan[j] for j in order]


def _draw(draw: ImageDraw.ImageDraw, shape: str, x: float, y: float, r: float, colour: str) -> None:
    """A shape of half-width ``r`` px centred on (x, y); all three share the bounding box, so size says nothing."""
    box = [x - r, y - r, x + r, y + r]
    fill = COLOURS[colour]
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:  # an upright triangle: apex up, base at the bottom of the box
        draw.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=fill)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")  # zlib output is a pure function of the pixels: same seed, same bytes
    return buffer.getvalue()


def _pick(rng: np.random.Generator, options: Sequence[Any]) -> Any:
    return options[int(rng.integers(len(options)))]


def _check(n: int, size: int, name: str) -> None:
    if n < 1:
        raise ValueError(f"{name}: n must be >= 1, got {n}.")
    if size < 32:
        raise ValueError(f"{name}: size must be >= 32 px so the shape stays recognisable, got {size}.")


def _shape_sample(i: int, *, plan: list[tuple[str, str]], seed: int, size: int,
                  max_tiles: int | None) -> dict[str, Any]:
    rng = np.random.default_rng([seed, i])  # per-sample stream: sample i does not depend on n
    kind, answer = plan[i]
    colour = answer if kind == "colour" else _pick(rng, list(COLOURS))
    shape = answer if kind == "shape" else _pick(rng, SHAPES)
    r = size * rng.uniform(0.22, 0.36)  # 44-72 % of the side: >= 24 px across in a 56 px thumbnail
    x, y = rng.uniform(r + 2, size - r - 2, size=2)
    image = Image.new("RGB", (size, size), _pick(rng, BACKGROUNDS))
    _draw(ImageDraw.Draw(image), shape, x, y, r, colour)
    messages = [{"role": "user", "content": [media_part("image"), text_part(QUESTIONS[kind])]},
                {"role": "assistant", "content": answer}]
    return make_sample(messages, images=[_png(image)], sample_id=f"shape-{i:05d}", max_tiles=max_tiles)


def synthetic_shapes(n: int, *, seed: int = 0, image_size: int = 112,
                     questions: Sequence[QuestionKind] = ("colour", "shape"), max_tiles: int | None = None,
                     streaming: bool = False):
    """``n`` images of one coloured shape, each with a question about its colour or its shape.

    Args:
        n: number of samples.
        seed: the only source of randomness (position, size, background, the attribute not asked about).
        image_size: side of the square image in pixels.
        questions: which questions to ask, in equal shares: ``"colour"`` (answers ``red``, ``green``,
            ``blue``, ``yellow``) and / or ``"shape"`` (``circle``, ``square``, ``triangle``).
        max_tiles: stamped into every sample (None: the collator's default).
        streaming: return an ``IterableDataset`` that draws each sample as it is read, in up to 64 shards of
            consecutive samples (DataLoader workers and processes each read whole shards of their own).

    Returns:
        A ``datasets.Dataset`` (``IterableDataset`` when streaming) of canonical samples with
        ``images: [PNG bytes]``.

    Example:
        >>> ds = synthetic_shapes(100, questions=["colour"])
        >>> ds[0]["messages"][1]["content"][0]["text"] in COLOURS
        True
    """
    _check(n, image_size, "synthetic_shapes")
    unknown = [q for q in questions if q not in ("colour", "shape")]
    if unknown or not questions:
        raise ValueError(f"questions must be a non-empty list of 'colour' / 'shape', got {list(questions)!r}.")
    answers = {"colour": list(COLOURS), "shape": list(SHAPES)}
    plan = _balanced_plan(n, [(q, answers[q]) for q in dict.fromkeys(questions)], seed)
    to_sample = partial(_shape_sample, plan=plan, seed=seed, size=image_size, max_tiles=max_tiles)
    return build_dataset(lambda: range(n), to_sample, source="synthetic_shapes", streaming=streaming)


def _pair_sample(i: int, *, plan: list[tuple[str, str]], seed: int, size: int,
                 max_tiles: int | None) -> dict[str, Any]:
    sample = _shape_sample(i, plan=plan, seed=seed, size=size, max_tiles=max_tiles)
    prompt, answer = sample["messages"][:-1], plan[i][1]
    # Its own stream (not the image's), so every wrong colour is rejected equally often whatever the image.
    rng = np.random.default_rng([seed, i, 1])
    wrong = _pick(rng, [colour for colour in COLOURS if colour != answer])
    return {**sample, "id": f"pair-{i:05d}", "messages": prompt,
            "chosen": table_messages([{"role": "assistant", "content": answer}]),
            "rejected": table_messages([{"role": "assistant", "content": wrong}])}


def synthetic_shape_pairs(n: int, *, seed: int = 0, image_size: int = 112, max_tiles: int | None = None,
                          streaming: bool = False):
    """``n`` preference pairs on images of one coloured shape: "What colour is the shape?", the true colour
    chosen and one of the other three rejected (each drawn evenly).

    The images are ``synthetic_shapes(n, questions=["colour"], seed=seed)``'s (same seed, same images), so a
    true colour is balanced over the pairs and a model that prefers one colour word is right half the time.

    Args:
        n: number of pairs.
        seed: the only source of randomness.
        image_size: side of the square image in pixels.
        max_tiles: stamped into every sample (None: the collator's default).
        streaming: return an ``IterableDataset`` (as ``synthetic_shapes``).

    Returns:
        A ``datasets.Dataset`` (``IterableDataset`` when streaming) of canonical preference samples.

    Example:
        >>> pair = synthetic_shape_pairs(4)[0]
        >>> pair["chosen"][0]["content"][0]["text"] != pair["rejected"][0]["content"][0]["text"]
        True
    """
    _check(n, image_size, "synthetic_shape_pairs")
    plan = _balanced_plan(n, [("colour", list(COLOURS))], seed)
    to_sample = partial(_pair_sample, plan=plan, seed=seed, size=image_size, max_tiles=max_tiles)
    return build_dataset(lambda: range(n), to_sample, source="synthetic_shape_pairs", streaming=streaming)


def _video_sample(i: int, *, plan: list[tuple[str, str]], seed: int, size: int, num_frames: int) -> dict[str, Any]:
    rng = np.random.default_rng([seed, i])
    direction = plan[i][1]
    colour, shape = _pick(rng, list(COLOURS)), _pick(rng, SHAPES)
    background = _pick(rng, BACKGROUNDS)
    r = size * 0.15  # 30 % of the side: 17 px across at 56 px, while leaving room to travel
    first, last = r + 2, size - r - 2  # the shape crosses the whole frame: ~60 % of the side
    if direction in ("left", "up"):
        first, last = last, first
    across = rng.uniform(r + 2, size - r - 2)  # the fixed coordinate
    frames = []
    for t in range(num_frames):
        along = first + (last - first) * t / (num_frames - 1)
        x, y = (along, across) if direction in ("left", "right") else (across, along)
        image = Image.new("RGB", (size, size), background)
        _draw(ImageDraw.Draw(image), shape, x, y, r, colour)
        frames.append(_png(image))
    messages = [{"role": "user", "content": [media_part("video"), text_part(QUESTIONS["direction"])]},
                {"role": "assistant", "content": direction}]
    sample = make_sample(messages, sample_id=f"video-{i:05d}", num_frames=num_frames)
    # make_sample wraps a video entry as a file {"path", ...}; in-table frames go in as the list itself.
    sample["videos"] = [frames]
    return sample


def synthetic_videos(n: int, *, seed: int = 0, num_frames: int = 8, size: int = 112, streaming: bool = False):
    """``n`` clips of a shape crossing the frame, asking ``"Which way does the shape move?"``.

    Args:
        n: number of samples; directions are balanced over ``left``, ``right``, ``up``, ``down``.
        seed: the only source of randomness (shape, colour, background, the fixed coordinate).
        num_frames: frames per clip (>= 2), also stamped as the sample's ``num_frames`` so the collator keeps
            them all. Fewer sampled frames still show the motion: frame sampling keeps the first and last.
        size: side of the square frames in pixels.
        streaming: return an ``IterableDataset`` that draws each sample as it is read, in up to 64 shards of
            consecutive samples (DataLoader workers and processes each read whole shards of their own).

    Returns:
        A ``datasets.Dataset`` (``IterableDataset`` when streaming) of canonical samples with
        ``videos: [[PNG bytes per frame]]``.
    """
    _check(n, size, "synthetic_videos")
    if num_frames < 2:
        raise ValueError(f"synthetic_videos: num_frames must be >= 2 to show motion, got {num_frames}.")
    plan = _balanced_plan(n, [("direction", DIRECTIONS)], seed)
    to_sample = partial(_video_sample, plan=plan, seed=seed, size=size, num_frames=num_frames)
    return build_dataset(lambda: range(n), to_sample, source="synthetic_videos", streaming=streaming)
