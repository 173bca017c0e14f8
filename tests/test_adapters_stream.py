"""Streaming adapters: WebDataset shards (split over workers and ranks), weighted mixes, synthetic shapes."""

from __future__ import annotations

import io
import os
import tarfile
from collections import Counter

import av
import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from data_adapters._records import (
    BadRecord,
    build_dataset,
    contiguous_shards,
    make_sample,
    media_part,
    text_part,
)
from data_adapters._shards import expand_braces
from data_adapters.mix import mix
from data_adapters.synthetic import COLOURS, DIRECTIONS, SHAPES, synthetic_shapes, synthetic_videos
from data_adapters.webdataset import expand_shards, from_webdataset, select_shards
from plm_tune import PLMCollator, load_video, validate_sample

wds = pytest.importorskip("webdataset", reason='writing test shards needs `pip install "plm-tune[dev]"`')

N_SHARDS, PER_SHARD = 4, 6


# ---------------------------------------------------------------- helpers
def png_bytes(colour=(200, 40, 40), size=40) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def mp4_bytes(num_frames=10, size=32, fps=1) -> bytes:
    """An MPEG-4 part 2 clip (FFmpeg's built-in encoder: no libx264 needed); 10 frames at 1 fps = 10 s."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), 20 * i, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def write_shard(path, records):
    with wds.TarWriter(str(path)) as sink:
        for record in records:
            sink.write(record)
    return str(path)


def record(key, kind, shard=0):
    """One record of each kind the adapter reads, by ``kind``."""
    image = {"png": png_bytes((40 * shard, 100, 200))}
    if kind == "caption":
        return {"__key__": key, **image, "json": {"caption": f"A blue square {key}."}}
    if kind == "qa":
        return {"__key__": key, **image, "json": {"question": "What colour?", "answer": "Blue."}}
    if kind == "messages":
        return {"__key__": key, **image, "json": {"messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Look:"}, {"type": "image"}]},
            {"role": "assistant", "content": "A square."}]}}
    if kind == "messages-no-media":
        return {"__key__": key, **image, "json": {"messages": [
            {"role": "user", "content": "What is it?"}, {"role": "assistant", "content": "A square."}]}}
    if kind == "video":
        return {"__key__": key, "mp4": mp4_bytes(), "json": {"caption": "Fading in."}}
    raise AssertionError(kind)


KINDS = ("caption", "qa", "messages", "messages-no-media", "video", "caption")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards")
    for s in range(N_SHARDS):
        write_shard(folder / f"shard-{s:03d}.tar",
                    [record(f"s{s}-{i:02d}", KINDS[i], shard=s) for i in range(PER_SHARD)])
    ids = {f"shard-{s:03d}.tar/s{s}-{i:02d}" for s in range(N_SHARDS) for i in range(PER_SHARD)}
    return folder, ids


def ids_of(samples):
    return [s["id"] for s in samples]


# ---------------------------------------------------------------- finding shards
def test_expand_shards_paths_globs_braces_urls(shards, tmp_path):
    folder, _ = shards
    by_brace = expand_shards(f"{folder}/shard-{{000..003}}.tar")
    assert [os.path.basename(s) for s in by_brace] == [f"shard-{s:03d}.tar" for s in range(4)]
    assert expand_shards(folder / "shard-*.tar") == by_brace
    assert expand_shards([by_brace[1], f"{folder}/shard-{{000,003}}.tar"]) == [by_brace[i] for i in (1, 0, 3)]
    url = f"file://{by_brace[0]}"
    assert expand_shards(url) == [url]
    assert len(list(from_webdataset(url, video_dir=tmp_path))) == PER_SHARD
    with pytest.raises(ValueError, match=r"shard-004\.tar' does not exist"):
        expand_shards(f"{folder}/shard-{{000..004}}.tar")
    with pytest.raises(ValueError, match=r"No shard matches"):
        expand_shards(f"{folder}/nothing-*.tar")
    with pytest.raises(ValueError, match=r"more than once"):
        expand_shards([by_brace[0], f"{folder}/shard-000.tar"])
    # WebDataset users' patterns: counting down, a step
    assert expand_shards(f"{folder}/shard-{{003..000}}.tar") == by_brace[::-1]
    assert expand_shards(f"{folder}/shard-{{000..003..2}}.tar") == by_brace[::2]
    with pytest.raises(ValueError, match=r"unbalanced braces"):
        expand_shards(f"{folder}/shard-{{000..003.tar")


# Patterns as WebDataset users write them, and the corners of the syntax (escapes, nesting, empty items).
BRACE_PATTERNS = [
    "shard-{000..003}.tar", "{3..1}", "{00..10..5}", "{0..10..3}", "{10..0..3}", "{07..10}", "{10..07}", "{1..1}",
    "{-2..2}", "{-05..5}", "{2..-1}", "{0..-03}", "{1..3..0}", "{1..9..-4}", "{a..e}", "{e..a..2}", "{Y..b}", "{A..A}",
    "{a,b}-{1..2}", "x{,.bak}", "{a,{b,c}d}", "p{1..2}{x,{y..z}}", "{x}", "{}", "{,}", "a}b{", "}{",
    r"a\{1,2\}", r"{1\,2,3}", r"a\\{b,c}", "s3://bucket/train-{0000..0002}.tar", "{{1..2}}",
]


@pytest.mark.parametrize("pattern", BRACE_PATTERNS)
def test_brace_patterns_expand_as_webdataset_expands_them(pattern):
    braceexpand = pytest.importorskip("braceexpand")  # what webdataset.shardlists.expand_urls calls
    assert expand_braces(pattern) == list(braceexpand.braceexpand(pattern))


@pytest.mark.parametrize("pattern", ["{1{2,3}", "a{b", "a}b", "x{0..3"])
def test_unbalanced_braces_are_refused_as_webdataset_refuses_them(pattern):
    braceexpand = pytest.importorskip("braceexpand")
    with pytest.raises(braceexpand.UnbalancedBracesError):
        list(braceexpand.braceexpand(pattern))
    with pytest.raises(ValueError, match="unbalanced braces"):
        expand_braces(pattern)


# ---------------------------------------------------------------- records -> samples
def test_records_become_canonical_samples(shards, tmp_path):
    folder, ids = shards
    samples = list(from_webdataset(f"{folder}/shard-{{000..003}}.tar", video_dir=tmp_path, max_tiles=3,
                                   num_frames=5))
    assert set(ids_of(samples)) == ids and len(samples) == len(ids)
    by_id = {s["id"]: s for s in samples}
    for sample in samples:
        validate_sample(sample)
        assert (sample["max_tiles"], sample["num_frames"]) == (3, 5)
    caption = by_id["shard-001.tar/s1-00"]
    assert caption["images"] == [png_bytes((40, 100, 200))]  # the member's bytes, untouched
    assert caption["messages"][0]["content"] == [media_part("image"), text_part("Describe the image.")]
    assert caption["messages"][1]["content"] == [text_part("A blue square s1-00.")]
    assert by_id["shard-000.tar/s0-01"]["messages"][0]["content"][1] == text_part("What colour?")
    conversation = by_id["shard-000.tar/s0-02"]["messages"]  # its own placeholder position is kept
    assert [m["role"] for m in conversation] == ["system", "user", "assistant"]
    assert [p["type"] for p in conversation[1]["content"]] == ["text", "image"]
    no_media = by_id["shard-000.tar/s0-03"]["messages"][0]["content"]  # media open the first user turn
    assert [p["type"] for p in no_media] == ["image", "text"]
    video = by_id["shard-002.tar/s2-04"]
    assert video["images"] == [] and video["messages"][0]["content"][1] == text_part("Describe the video.")
    (entry,) = video["videos"]
    assert os.path.dirname(entry["path"]) == str(tmp_path) and entry["start"] is None
    assert open(entry["path"], "rb").read() == mp4_bytes()
    assert len(os.listdir(tmp_path)) == 1  # one identical clip in four shards: one file


def test_txt_captions(tmp_path):
    shard = write_shard(tmp_path / "txt.tar", [{"__key__": "a", "jpg": png_bytes(), "txt": " A red box. "}])
    (sample,) = from_webdataset(shard, caption_key="txt", prompt="Caption it.", video_dir=tmp_path)
    assert sample["messages"][0]["content"][1] == text_part("Caption it.")
    assert sample["messages"][1]["content"] == [text_part("A red box.")]
    with pytest.raises(BadRecord, match=r"txt\.tar key 'a': missing caption: no \.json member.*caption_key=\"txt\""):
        list(from_webdataset(shard, video_dir=tmp_path))


# ---------------------------------------------------------------- workers and ranks
def test_shards_split_over_ranks_and_workers_without_loss_or_duplicates(shards, tmp_path, monkeypatch):
    folder, ids = shards
    everything = expand_shards(f"{folder}/shard-{{000..003}}.tar")
    seen = []
    for rank in range(2):
        mine = select_shards(everything, rank=rank, world_size=2)
        assert mine == everything[rank::2]
        loader = DataLoader(from_webdataset(mine, video_dir=tmp_path), batch_size=None, num_workers=2)
        got = ids_of(loader)
        assert len(got) == 2 * PER_SHARD  # each worker read one shard of this rank's two
        assert {i.split("/")[0] for i in got} == {os.path.basename(s) for s in mine}
        seen += got
    assert Counter(seen) == Counter(ids)  # the union is the whole set, each record exactly once

    monkeypatch.setenv("RANK", "1")  # the torchrun contract, as read by split_by_rank=True
    monkeypatch.setenv("WORLD_SIZE", "2")
    by_env = ids_of(from_webdataset(everything, split_by_rank=True, video_dir=tmp_path))
    assert {i.split("/")[0] for i in by_env} == {"shard-001.tar", "shard-003.tar"}

    with pytest.raises(ValueError, match=r"4 shard\(s\) for 8 ranks.*from_webdataset\(split_by_rank=True\)"):
        select_shards(everything, rank=0, world_size=8)
    with pytest.raises(ValueError, match=r"rank must be in"):
        select_shards(everything, rank=2, world_size=2)


def test_fewer_shards_than_ranks_are_split_by_record(shards, tmp_path, monkeypatch, caplog):
    folder, ids = shards
    two = expand_shards(f"{folder}/shard-{{000..001}}.tar")
    seen = []
    for rank in range(3):  # torchrun's contract, as read by split_by_rank=True
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "3")
        stream = from_webdataset(two, split_by_rank=True, video_dir=tmp_path)
        got = ids_of(DataLoader(stream, batch_size=None, num_workers=2))  # a shard for each worker
        assert len(got) == 2 * PER_SHARD // 3
        seen += got
    assert Counter(seen) == Counter(i for i in ids if i.startswith(("shard-000", "shard-001")))
    assert "2 shard(s) for 3 ranks: every rank reads all of them and keeps every 3-th record" in caplog.text


# ---------------------------------------------------------------- bad records
def truncated(path, where="data", member=3, into=100):
    """The shard cut ``into`` bytes into a member (the second record's last by default): into its data, or into
    its headers (``webdataset.TarWriter`` writes a PAX header and its data block, 1,024 bytes, before each
    member's own header)."""
    with tarfile.open(path) as tar:
        member = tar.getmembers()[member]
    cut = (member.offset_data if where == "data" else member.offset) + into
    data = open(path, "rb").read()
    with open(path, "wb") as out:
        out.write(data[:cut])
    return path


BAD = {
    "undecodable json": ({"__key__": "bad", "png": png_bytes(), "json": b"{not json"},
                         r"undecodable json: the \.json member is not UTF-8 JSON"),
    "missing caption": ({"__key__": "bad", "png": png_bytes(), "json": {"width": 40}},
                        r"missing caption: the \.json has keys \['width'\]"),
    "no media": ({"__key__": "bad", "json": {"caption": "Orphan."}, "txt": "Orphan."},
                 r"no media: members are \.json, \.txt; expected an image"),
    "invalid conversation": ({"__key__": "bad", "png": png_bytes(), "json": {"messages": [
        {"role": "human", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}},
        r"invalid conversation: .*unknown role 'human'"),
}


@pytest.mark.parametrize("reason", sorted(BAD))
def test_bad_member_raises_naming_shard_and_key(tmp_path, reason):
    member, message = BAD[reason]
    shard = write_shard(tmp_path / "mixed.tar", [record("good", "caption"), member])
    stream = iter(from_webdataset(shard, video_dir=tmp_path))
    assert next(stream)["id"] == "mixed.tar/good"  # records before the bad one arrive
    with pytest.raises(BadRecord, match=rf"mixed\.tar key 'bad': {message}") as caught:
        next(stream)
    assert caught.value.reason == reason and 'on_error="skip"' in str(caught.value)


@pytest.mark.parametrize("where", ["data", "header"])  # tarfile alone ends silently on a cut header
def test_truncated_shard_raises(tmp_path, where):
    shard = truncated(write_shard(tmp_path / "cut.tar", [record(f"k{i}", "video") for i in range(3)]), where)
    stream = iter(from_webdataset(shard, video_dir=tmp_path))
    assert next(stream)["id"] == "cut.tar/k0"
    with pytest.raises(BadRecord, match=r"cut\.tar at key 'k1': unreadable shard: the tar stream broke"):
        next(stream)


# Video records: members k0.json k0.mp4 k1.json k1.mp4 k2.json k2.mp4 (0 to 5).
CUTS = {  # where the shard is cut -> (records read, what the skip names)
    "in k1.mp4's data": (("data", 3, 100), ["k0"], "at key 'k1'"),
    "in k1.mp4's PAX header: k1 has no media": (("header", 3, 100), ["k0"], "at key 'k1'"),
    "in k2.json's data": (("data", 4, 10), ["k0", "k1"], "at key 'k2'"),
    "in k2.json's header, past its name": (("header", 4, 1024 + 100), ["k0", "k1"], "at key 'k2'"),
    "in k2.json's PAX header: k1 has media and text": (("header", 4, 100), ["k0", "k1"], "after key 'k1'"),
    "after k1, no end-of-archive marker": (("header", 4, 0), ["k0", "k1"], "after key 'k1'"),
}


@pytest.mark.parametrize("cut", sorted(CUTS))
def test_a_cut_shard_keeps_every_whole_record_before_the_cut(tmp_path, cut):
    (where, member, into), kept, skip = CUTS[cut]
    shard = truncated(write_shard(tmp_path / "cut.tar", [record(f"k{i}", "video") for i in range(3)]),
                      where, member, into)
    dataset = from_webdataset(shard, on_error="skip", video_dir=tmp_path)
    assert ids_of(dataset) == [f"cut.tar/{key}" for key in kept]
    assert dataset.skip_report.names == {"unreadable shard": [f"{shard} {skip}"]}  # the cut record, once
    stream = iter(from_webdataset(shard, video_dir=tmp_path))
    assert [next(stream)["id"] for _ in kept] == [f"cut.tar/{key}" for key in kept]
    with pytest.raises(BadRecord, match=rf"cut\.tar {skip}: unreadable shard: the tar stream broke"):
        next(stream)


def test_bad_members_skipped_and_counted(tmp_path):
    records = [record("good-1", "caption")] + [{**member, "__key__": reason.replace(" ", "-")}
                                              for reason, (member, _) in BAD.items()] + [record("good-2", "qa")]
    good = write_shard(tmp_path / "a.tar", records)
    cut = truncated(write_shard(tmp_path / "b.tar", [record(f"v{i}", "video") for i in range(3)]))
    dataset = from_webdataset([good, cut], on_error="skip", video_dir=tmp_path)
    kept = list(dataset)
    assert ids_of(kept)[:2] == ["a.tar/good-1", "a.tar/good-2"] and len(kept) <= 4  # b.tar: what came before the cut
    report = dataset.skip_report
    assert report.counts == Counter({reason: 1 for reason in [*BAD, "unreadable shard"]})
    assert report.kept == len(kept) and "a.tar key 'no-media'" in report.summary()


# ---------------------------------------------------------------- synthetic data
def downscaled(png, px=56):
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB").resize((px, px), Image.BILINEAR)).astype(int)


def shape_mask(pixels):
    background = pixels[0, 0]  # corners are never covered: shapes keep a margin
    return np.abs(pixels - background).sum(-1) > 60


def read_answer(png, question):
    """What a 56 px thumbnail shows: the palette colour nearest the shape, or its fill of its bounding box."""
    pixels = downscaled(png)
    mask = shape_mask(pixels)
    if question.startswith("What colour"):
        mean = pixels[mask].mean(0)
        return min(COLOURS, key=lambda name: np.abs(mean - COLOURS[name]).sum())
    rows, cols = np.nonzero(mask)
    fill = mask.sum() / ((np.ptp(rows) + 1) * (np.ptp(cols) + 1))  # square ~1, circle ~0.79, triangle ~0.5
    return "square" if fill > 0.9 else "circle" if fill > 0.65 else "triangle"


def answer_of(sample):
    return sample["messages"][1]["content"][0]["text"]


def test_synthetic_shapes_deterministic_balanced_and_visible_at_56px():
    dataset = synthetic_shapes(84, seed=3, max_tiles=2)
    assert dataset.to_list() == synthetic_shapes(84, seed=3, max_tiles=2).to_list()  # identical bytes too
    assert dataset[0]["images"] != synthetic_shapes(84, seed=4)[0]["images"]
    by_question = {}
    for sample in dataset:
        validate_sample(sample, decode_media=False)
        question = sample["messages"][0]["content"][1]["text"]
        by_question.setdefault(question, Counter())[answer_of(sample)] += 1
        assert read_answer(sample["images"][0], question) == answer_of(sample), sample["id"]
    colours, shapes = by_question["What colour is the shape?"], by_question["What shape is it?"]
    assert set(colours) == set(COLOURS) and max(colours.values()) - min(colours.values()) <= 1
    assert set(shapes) == set(SHAPES) and max(shapes.values()) - min(shapes.values()) <= 1
    assert {answer_of(s) for s in synthetic_shapes(8, questions=["colour"])} == set(COLOURS)


def test_synthetic_videos_deterministic_balanced_and_visible_at_56px():
    dataset = synthetic_videos(16, seed=1, num_frames=6)
    assert dataset.to_list() == synthetic_videos(16, seed=1, num_frames=6).to_list()
    assert Counter(answer_of(s) for s in dataset) == Counter({d: 4 for d in DIRECTIONS})
    for sample in dataset:
        assert sample["num_frames"] == 6
        frames = load_video(sample["videos"][0], num_frames=3)  # first, middle, last: the ends are kept
        assert frames.shape == (3, 112, 112, 3)
        centres = []
        for png in (sample["videos"][0][0], sample["videos"][0][-1]):
            rows, cols = np.nonzero(shape_mask(downscaled(png)))
            centres.append(np.array([cols.mean(), rows.mean()]))  # (x, y) at 56 px
        dx, dy = centres[1] - centres[0]
        seen = ("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("down" if dy > 0 else "up")
        assert seen == answer_of(sample) and max(abs(dx), abs(dy)) > 20, sample["id"]
    with pytest.raises(ValueError, match=r"num_frames must be >= 2"):
        synthetic_videos(2, num_frames=1)


def test_a_streamed_list_of_records_is_cut_into_shards_that_workers_share():
    pieces = contiguous_shards(list(range(130)))
    assert len(pieces) == 64 and {len(p) for p in pieces} == {2, 3}
    assert [i for piece in pieces for i in piece] == list(range(130))
    assert contiguous_shards([]) == [[]]  # an empty source is one empty shard, not none

    stream = synthetic_shapes(10, seed=2, streaming=True)
    assert stream.num_shards == 10  # fewer records than SHARDS_PER_TABLE: one shard each
    table = synthetic_shapes(10, seed=2).to_list()
    assert list(stream) == table
    read = ids_of(DataLoader(stream, batch_size=None, num_workers=2))
    assert Counter(read) == Counter(s["id"] for s in table)  # each once, by one of the workers


# ---------------------------------------------------------------- mixing
def text_samples(prefix, n):
    return [make_sample([{"role": "user", "content": f"Say {prefix}."}, {"role": "assistant", "content": prefix}],
                        sample_id=f"{prefix}{i}") for i in range(n)]


def test_mix_follows_weights_and_seed():
    a = datasets.Dataset.from_list(text_samples("a", 3000))
    # Another adapter's table: integer ids, no videos / max_tiles / num_frames columns.
    b = datasets.Dataset.from_list([{"id": i, "messages": s["messages"]} for i, s in enumerate(text_samples("b", 3000))])
    mixed = mix([(a, 3), (b, 1)], seed=7)
    first = list(mixed.take(2000))
    share = sum(s["id"].startswith("a") for s in first) / len(first)
    assert abs(share - 0.75) < 0.04
    assert ids_of(first) == ids_of(mixed.take(2000))  # same seed, same sequence
    assert ids_of(first) != ids_of(mix([(a, 3), (b, 1)], seed=8).take(2000))
    everything = list(mix([(a.select(range(30)), 1), (b.select(range(10)), 1)], stopping="all_exhausted"))
    assert {s["id"] for s in everything} >= {f"a{i}" for i in range(30)} | {str(i) for i in range(10)}


def test_mix_splits_members_over_workers():
    a = datasets.Dataset.from_list(text_samples("a", 40))
    b = datasets.Dataset.from_list(text_samples("b", 40))
    got = ids_of(DataLoader(mix([(a, 1), (b, 1)]), batch_size=None, num_workers=2))
    assert len(got) == len(set(got)) and len(got) >= 40  # no worker replays another's rows


@pytest.fixture(scope="module")
def radiographs_and_clips(shards, tmp_path_factory):
    """Members as different adapters make them: PNG bytes, path strings, an HF Image column, a tar stream."""
    folder = tmp_path_factory.mktemp("media")
    paths = []
    for i in range(6):
        paths.append(str(folder / f"cxr-{i}.png"))
        Image.new("RGB", (120, 90), (10 * i, 10 * i, 10 * i)).save(paths[-1])
    question = make_sample([{"role": "user", "content": [media_part("image"), text_part("Findings?")]},
                            {"role": "assistant", "content": "Clear."}])["messages"]
    as_paths = datasets.Dataset.from_list(
        [{"id": f"path-{i}", "messages": question, "images": [p]} for i, p in enumerate(paths)])
    as_hf_images = datasets.Dataset.from_list(
        [{"id": f"hf-{i}", "messages": question, "images": [p]} for i, p in enumerate(paths)]
    ).cast_column("images", datasets.List(datasets.Image()))
    # A streaming adapter's output: a plain generator, features unknown until read.
    as_stream = build_dataset(lambda: range(6), lambda i: make_sample(question, images=[paths[i]], sample_id=f"gen-{i}"),
                              source="generator", streaming=True)
    clip_shard = write_shard(folder / "clips.tar", [record(f"clip-{i}", "video") for i in range(6)])
    return {
        "stream": as_stream,
        "shapes": synthetic_shapes(12, seed=0, max_tiles=16),  # stamped by its adapter
        "paths": as_paths,
        "hf": as_hf_images,
        "clips": from_webdataset(clip_shard, video_dir=folder),
    }


def test_mix_aligns_features_and_keeps_member_media_settings(radiographs_and_clips, processor):
    members = radiographs_and_clips
    assert members["hf"].features["images"] != members["paths"].features["images"]
    assert members["stream"].features is None
    mixed = mix([(members["shapes"], 2), (members["paths"], 1, {"max_tiles": 6}), (members["hf"], 1),
                 (members["stream"], 1, {"max_tiles": 3}), (members["clips"], 2, {"num_frames": 8})],
                seed=0, stopping="all_exhausted")
    samples = list(mixed)
    sources = Counter(s["id"].split("-")[0] for s in samples)
    assert set(sources) == {"shape", "path", "hf", "gen", "clips.tar/clip"}
    collator = PLMCollator(processor, max_tiles=2, num_frames=4)
    for sample in samples:
        validate_sample(sample)
        source = sample["id"].split("-")[0]
        expected = {"shape": (16, None), "path": (6, None), "hf": (None, None), "gen": (3, None),
                    "clips.tar/clip": (None, 8)}[source]
        assert (sample["max_tiles"], sample["num_frames"]) == expected
    by_source = {s["id"].split("-")[0]: s for s in samples}
    # The settings reach the pixels: more tiles / frames than the collator's own default of 2 / 4.
    assert collator.encode(by_source["shape"]).images[0].shape[0] > collator.encode(by_source["hf"]).images[0].shape[0]
    assert collator.encode(by_source["clips.tar/clip"]).videos[0].shape[0] == 8


def test_mix_of_in_table_frames_and_refusals(radiographs_and_clips):
    videos = synthetic_videos(4, num_frames=4)
    mixed = list(mix([(videos, 1), (radiographs_and_clips["shapes"], 1)], stopping="all_exhausted"))
    assert any(s["videos"] for s in mixed) and any(s["images"] for s in mixed)
    for sample in mixed:
        validate_sample(sample)
    with pytest.raises(ValueError, match=r"members \[1\] hold video files but members \[0\] hold in-table frames"):
        mix([(videos, 1), (radiographs_and_clips["clips"], 1)])
    with pytest.raises(ValueError, match=r"mix member 0: weight must be a positive number, got 0"):
        mix([(videos, 0)])
    with pytest.raises(ValueError, match=r"mix member 0: unknown setting\(s\) \['tiles'\]"):
        mix([(videos, 1, {"tiles": 4})])
    with pytest.raises(ValueError, match=r"expected a datasets.Dataset or IterableDataset"):
        mix([([{"messages": []}], 1)])


# ---------------------------------------------------------------- into the model
@pytest.fixture(scope="module")
def adapter_outputs(shards, radiographs_and_clips, tmp_path_factory):
    folder, _ = shards
    stream = from_webdataset(f"{folder}/shard-*.tar", video_dir=tmp_path_factory.mktemp("videos"))
    members = radiographs_and_clips
    return {
        "webdataset": list(stream.take(6)),  # captions, q/a, conversations and a video
        "synthetic_shapes": list(synthetic_shapes(3, seed=5)),
        "synthetic_videos": list(synthetic_videos(2, num_frames=6)),
        "mix": list(mix([(members["hf"], 1), (members["clips"], 1, {"num_frames": 3}), (members["shapes"], 1)],
                        stopping="all_exhausted").take(6)),
    }


@pytest.mark.parametrize("adapter", ["webdataset", "synthetic_shapes", "synthetic_videos", "mix"])
def test_adapter_batch_trains_the_tiny_model(adapter, adapter_outputs, processor, model):
    samples = adapter_outputs[adapter]
    for sample in samples:
        validate_sample(sample)
    batch = PLMCollator(processor, max_tiles=2, num_frames=4)(samples)
    with torch.no_grad():
        loss = model(**batch).loss
    assert torch.isfinite(loss)
