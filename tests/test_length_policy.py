"""plm_tune.length_policy: the max_length decision from counts (the collator and the cost estimate both call it)."""

from __future__ import annotations

import pytest
from conftest import make_image

from plm_tune import PLMCollator
from plm_tune.length_policy import MessageCount, SampleCounts, fit_sample
from plm_tune.sample import normalize_messages

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


def policy(max_length, *, fit_tiles=False, truncate_turns=True, counts=COUNTS, calls=None):
    def tiles_at(image, budget):
        if calls is not None:
            calls.append((image, budget))
        return GRIDS[image][budget]

    return fit_sample(counts, max_length=max_length, fit_tiles=fit_tiles, truncate_turns=truncate_turns,
                      tiles_at=tiles_at)


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

    def encode(tiles, prompt=False):
        counts = {"image": [t * tile_tokens for t in tiles], "video": [3 * tile_tokens]}
        return collator.encoder.encode(turns, counts, add_generation_prompt=prompt)

    for prompt in (False, True):
        counts = SampleCounts.measure(turns, encode((7, 2), prompt), image_tiles=(7, 2), tile_tokens=tile_tokens,
                                      video_tokens=[3 * tile_tokens], thumbnails=True)
        assert counts.has_system and len(counts.messages) == 4
        for tiles in [(7, 2), (2, 2), (37, 10)]:
            other = encode(tiles, prompt)
            assert counts.length(tiles) == len(other.input_ids)
            assert counts.block_ends(tiles) == [end for _, end in other.blocks]


@pytest.mark.parametrize("max_length", [None, 10**6])
def test_no_limit_or_room_to_spare_keeps_everything(max_length):
    fit = policy(max_length)
    assert fit.outcome == "fits" and fit.kept_turns == 4 and fit.videos == () and fit.tokens == 58
