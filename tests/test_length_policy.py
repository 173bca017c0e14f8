"""plm_tune.encoding.length_policy: the max_length decision from counts (the collator and the cost estimate both call it)."""

from __future__ import annotations

import pytest
from conftest import make_image

from plm_tune import PLMCollator
from plm_tune.data.sample import normalize_messages
from plm_tune.encoding.length_policy import MessageCount, SampleCounts, fit_sample

# prefix 10; user 5 + image 0; answer 4; user 3 + image 1; answer 6. 2 tokens per tile.
COUNTS = SampleCounts(
    prefix_tokens=10,
    messages=(MessageCount("user", 5, images=(0,)), MessageCount("assistant", 4),
              MessageCount("user", 3, images=(1,)), MessageCount("assistant", 6)),
    image_tiles=(10, 5),
    tile_tokens=2,
)
# Tiles (thumbnail included) per budget: image 0 has a grid of 9 at the budget asked for, image 1 a grid of 4.
GRIDS = {0: {8: 5, 3: 4, 2: 3, 1: 2}, 1: {3: 2, 2: 2, 1: 2}}


def policy(max_length, *, fit_tiles=False, fit_frames=False, truncate_turns=True, counts=COUNTS, calls=None):
    def tiles_at(image, budget):
        if calls is not None:
            calls.append((image, budget))
        return GRIDS[image][budget]

    return fit_sample(counts, max_length=max_length, fit_tiles=fit_tiles, fit_frames=fit_frames,
                      truncate_turns=truncate_turns, tiles_at=tiles_at)


def test_counts_give_block_ends_and_length():
    assert COUNTS.block_ends(COUNTS.image_tiles) == [35, 39, 52, 58]
    assert COUNTS.length((2, 2)) == 10 + 5 + 4 + 4 + 3 + 4 + 6


def test_each_outcome_from_counts():
    fits = policy(58)
    assert (fits.outcome, fits.tokens, fits.kept_turns, fits.images) == ("fits", 58, 4, (0, 1))
    truncated = policy(57)
    assert (truncated.outcome, truncated.tokens, truncated.kept_turns, truncated.images) == ("truncated", 39, 2, (0,))
    assert truncated.image_tiles == (10, 5) and truncated.tiles_removed == 0
    rejected = policy(38)
    assert (rejected.outcome, rejected.tokens, rejected.kept_turns, rejected.images) == ("rejected", 0, 0, ())
    assert (rejected.full_tokens, rejected.first_exchange_tokens) == (58, 39)
    whole_or_nothing = policy(57, truncate_turns=False)
    assert whole_or_nothing.outcome == "rejected" and whole_or_nothing.first_exchange_tokens <= 57


def test_fit_tiles_lowers_the_largest_grid_first_one_size_at_a_time():
    calls = []
    fitted = policy(56, fit_tiles=True, calls=calls)  # 2 tokens short: image 0 goes from a grid of 9 to 4
    assert (fitted.outcome, fitted.image_tiles, fitted.tokens, fitted.kept_turns) == ("fitted", (5, 5), 48, 4)
    assert fitted.tiles_removed == 5
    # The floor first (budget 1 for every image whose grid exceeds it), then the ladder; image 1's grid of 4
    # is not above the cap 8, so it is left alone.
    assert calls == [(0, 1), (1, 1), (0, 8)]
    lower = policy(46, fit_tiles=True)  # cap 3: both grids lowered
    assert (lower.image_tiles, lower.tokens) == ((4, 2), 40)
    calls = []
    floor = policy(36, fit_tiles=True, calls=calls)  # no step of the ladder fits, the floor does
    assert floor.outcome == "fitted" and floor.image_tiles == (2, 2) and floor.tokens == 36
    assert calls == [(0, 1), (1, 1), (0, 8), (0, 3), (1, 3), (0, 2)]


def test_fit_tiles_falls_back_to_the_turn_policy_when_one_tile_is_too_long():
    fallback = policy(35, fit_tiles=True)  # 1 tile per image is 36 tokens
    assert fallback.outcome == "rejected" and fallback.image_tiles == (10, 5)
    vanilla = SampleCounts(COUNTS.prefix_tokens, COUNTS.messages, (1, 1), 2, thumbnails=False)
    calls = []
    assert policy(20, fit_tiles=True, counts=vanilla, calls=calls).outcome == "rejected" and calls == []


def test_measure_reads_the_encoders_layout(processor):
    """Counts measured on one real encoding predict the encoder's length and blocks at other tile counts."""
    collator = PLMCollator(processor)
    sample = {"messages": [{"role": "system", "content": "Be brief."},
                           {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]},
                           {"role": "assistant", "content": "Noise."},
                           {"role": "user", "content": [{"type": "image"}, {"type": "video"}, {"type": "text",
                                                                                                "text": "And?"}]},
                           {"role": "assistant", "content": "More noise, in colour."}],
              "images": [make_image(300, 100), make_image(40, 40)], "videos": ["clip.mp4"]}
    turns = normalize_messages(sample)
    tile_tokens = collator.pixels.tokens_per_tile(56, 56)

    frame_tokens = collator.pixels.tokens_per_tile(56, 56) + 1  # a different cost, to tell the two apart

    def encode(tiles, frames, prompt=False):
        counts = {"image": [t * tile_tokens for t in tiles], "video": [f * frame_tokens for f in frames]}
        return collator.encoder.encode(turns, counts, add_generation_prompt=prompt)

    for prompt in (False, True):
        counts = SampleCounts.measure(turns, encode((7, 2), (3,), prompt), image_tiles=(7, 2), tile_tokens=tile_tokens,
                                      video_frames=(3,), frame_tokens=frame_tokens, thumbnails=True)
        assert counts.has_system and len(counts.messages) == 4
        for tiles, frames in [((7, 2), (3,)), ((2, 2), (3,)), ((37, 10), (3,)), ((7, 2), (1,)), ((2, 2), (32,))]:
            other = encode(tiles, frames, prompt)
            assert counts.length(tiles, frames) == len(other.input_ids)
            assert counts.block_ends(tiles, frames) == [end for _, end in other.blocks]
        assert counts.length((7, 2)) == len(encode((7, 2), (3,), prompt).input_ids)  # default: the frames asked for


@pytest.mark.parametrize("max_length", [None, 10**6])
def test_no_limit_or_room_to_spare_keeps_everything(max_length):
    fit = policy(max_length)
    assert fit.outcome == "fits" and fit.kept_turns == 4 and fit.videos == () and fit.tokens == 58


# prefix 10; user 5 + video 0 (8 frames); answer 4; user 3 + video 1 (4 frames); answer 6. 3 tokens per frame.
VIDEOS = SampleCounts(
    prefix_tokens=10,
    messages=(MessageCount("user", 5, videos=(0,)), MessageCount("assistant", 4),
              MessageCount("user", 3, videos=(1,)), MessageCount("assistant", 6)),
    video_frames=(8, 4),
    frame_tokens=3,
)


def test_fit_frames_removes_the_fewest_frames_from_the_longest_video_first():
    assert VIDEOS.length(()) == 64 and VIDEOS.block_ends(()) == [39, 43, 58, 64]
    one = policy(61, fit_frames=True, counts=VIDEOS)  # 3 tokens over: one frame
    assert (one.outcome, one.video_frames, one.asked_frames, one.tokens) == ("fitted", (7, 4), (8, 4), 61)
    assert one.frames_removed == 1 and one.kept_turns == 4 and one.videos == (0, 1) and one.tiles_removed == 0
    assert one.changes() == "video 0: 8 -> 7 frames"
    # 15 tokens over, 5 frames: video 0 down to video 1's 4 frames, then the earlier of the tie.
    five = policy(49, fit_frames=True, counts=VIDEOS)
    assert (five.video_frames, five.frames_removed, five.tokens) == ((3, 4), 5, 49)
    # 14 tokens over still costs 5 whole frames (one frame is 3 tokens): 1 token to spare.
    assert policy(50, fit_frames=True, counts=VIDEOS).video_frames == (3, 4)
    floor = policy(34, fit_frames=True, counts=VIDEOS)  # 1 frame per video is exactly 34 tokens
    assert (floor.outcome, floor.video_frames, floor.tokens) == ("fitted", (1, 1), 34)


def test_fit_frames_off_or_too_long_at_one_frame_follows_the_turn_policy():
    off = policy(61, counts=VIDEOS)
    assert (off.outcome, off.kept_turns, off.videos, off.video_frames) == ("truncated", 2, (0,), (8, 4))
    rejected = policy(33, fit_frames=True, counts=VIDEOS)  # 1 frame per video is 34 tokens
    assert rejected.outcome == "rejected" and rejected.video_frames == (8, 4) and rejected.frames_removed == 0
    # The first exchange fits with the frames asked for, the whole sample not even at 1 frame: turns go.
    long_tail = SampleCounts(10, (*VIDEOS.messages[:2], MessageCount("user", 40), MessageCount("assistant", 6)),
                             video_frames=(8,), frame_tokens=3)
    truncated = policy(60, fit_frames=True, counts=long_tail)
    assert (truncated.outcome, truncated.kept_turns, truncated.video_frames, truncated.tokens) == (
        "truncated", 2, (8,), 43)
    single = SampleCounts(10, VIDEOS.messages[:2], video_frames=(1,), frame_tokens=30)  # nothing to lower
    assert policy(40, fit_frames=True, counts=single).outcome == "rejected"


# prefix 10; user 5 + image 0 (10 tiles, a grid of 9: GRIDS) + video 0 (8 frames); answer 4. 2 tokens a tile,
# 3 a frame: 63 tokens.
BOTH = SampleCounts(10, (MessageCount("user", 5, images=(0,), videos=(0,)), MessageCount("assistant", 4)),
                    image_tiles=(10,), tile_tokens=2, video_frames=(8,), frame_tokens=3)


def test_fit_frames_goes_before_fit_tiles_and_frames_come_back_beside_lowered_tiles():
    assert BOTH.length(BOTH.image_tiles) == 63
    calls = []
    frames_only = policy(45, fit_tiles=True, fit_frames=True, counts=BOTH, calls=calls)
    assert (frames_only.image_tiles, frames_only.video_frames, frames_only.tokens) == ((10,), (2,), 45)
    assert calls == []  # frames alone fit: no tile budget is tried
    # 1 frame beside 10 tiles is 42 tokens: tiles go down to the largest grid that fits beside 1 frame (a
    # grid of 4: 32 tokens), then frames come back while they fit (3 frames: 38 tokens).
    both = policy(40, fit_tiles=True, fit_frames=True, counts=BOTH)
    assert (both.outcome, both.image_tiles, both.video_frames, both.tokens) == ("fitted", (5,), (3,), 38)
    assert (both.tiles_removed, both.frames_removed) == (5, 5)
    assert both.changes() == "image 0: 9 -> 4 tiles, video 0: 8 -> 3 frames"
    # Either alone cannot fit 40 tokens (1 tile beside 8 frames is 47, 1 frame beside 10 tiles 42).
    assert policy(40, fit_tiles=True, counts=BOTH).outcome == "rejected"
    assert policy(40, fit_frames=True, counts=BOTH).outcome == "rejected"
    floor = policy(26, fit_tiles=True, fit_frames=True, counts=BOTH)  # 1 tile + thumbnail, 1 frame
    assert (floor.image_tiles, floor.video_frames, floor.tokens) == ((2,), (1,), 26)
    too_long = policy(25, fit_tiles=True, fit_frames=True, counts=BOTH)
    assert too_long.outcome == "rejected" and (too_long.image_tiles, too_long.video_frames) == ((10,), (8,))
