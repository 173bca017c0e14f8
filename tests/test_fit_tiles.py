"""PLMCollator(fit_tiles=True): a too-long sample loses image tiles before it loses turns or is rejected."""

from __future__ import annotations

import pytest
import torch
from conftest import make_frames, make_image

from plm_tune import PLMCollator

ANSWER = "The picture is random noise in many colours, with no objects, no text and no structure at all."


def _sample(n_exchanges=1, **extra):
    """A 336 px square image (a 6 x 6 grid of the tiny processor's 56 px tiles, 249 tokens at 36 tiles)."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]},
                {"role": "assistant", "content": ANSWER}]
    for i in range(1, n_exchanges):
        messages += [{"role": "user", "content": f"And question {i}?"}, {"role": "assistant", "content": f"Answer {i}."}]
    return {"id": "big", "messages": messages, "images": [make_image(336, 336, seed=1)], **extra}


def _length(processor, sample, **kwargs):
    return PLMCollator(processor, **kwargs)([sample])["input_ids"].shape[1]


def _image_tokens_match_tiles(collator, batch):
    n_tokens = int((batch["input_ids"] == collator.processor.image_token_id).sum())
    return n_tokens == batch["pixel_values"].shape[1] * collator.pixels.tokens_per_tile(56, 56)


def test_fit_tiles_lowers_tiles_until_a_rejected_sample_fits(processor, caplog):
    sample = _sample()
    assert _length(processor, sample) == 249 and _length(processor, sample, max_tiles=9) == 141
    strict = PLMCollator(processor, max_length=150)
    with pytest.raises(ValueError, match="Every sample"):
        strict([sample])
    assert strict.stats["rejected_too_long"] == 1

    collator = PLMCollator(processor, max_length=150, fit_tiles=True)
    batch = collator([sample])
    assert batch["input_ids"].shape[1] <= 150
    assert batch["pixel_values"].shape[1] == 1 + 9  # thumbnail + the largest grid that fits (36 -> 25 -> 16 -> 9)
    assert _image_tokens_match_tiles(collator, batch)
    labelled = batch["labels"][0][batch["labels"][0] != -100]
    assert processor.tokenizer.decode(labelled) == ANSWER + "<|eot_id|>"
    # Exactly what asking for 9 tiles gives.
    asked_for_9 = PLMCollator(processor, max_tiles=9)([sample])
    assert all(torch.equal(batch[k], asked_for_9[k]) for k in asked_for_9)
    stats = dict(collator.stats)
    assert stats["fitted_samples"] == 1 and stats["tiles_removed"] == 36 - 9
    assert stats["rejected_too_long"] == 0 and stats["truncated_samples"] == 0
    assert "id='big'" in caplog.text and "fit_tiles=True" in caplog.text and "36 -> 9" in caplog.text


def test_fit_tiles_keeps_every_turn_where_the_turn_policy_would_drop_some(processor):
    sample = _sample(n_exchanges=3)
    limit = 260  # the first exchange fits at 36 tiles (249 tokens), the whole sample (315) does not
    truncating = PLMCollator(processor, max_length=limit)
    assert truncating([sample])["input_ids"].shape[1] == 249 and truncating.stats["dropped_turns"] == 4
    collator = PLMCollator(processor, max_length=limit, fit_tiles=True)
    batch = collator([sample])
    assert batch["input_ids"].shape[1] == _length(processor, sample, max_tiles=16) <= limit
    assert batch["pixel_values"].shape[1] == 1 + 16
    assert collator.stats["dropped_turns"] == 0 and collator.stats["fitted_samples"] == 1


def test_a_sample_that_fits_is_untouched(processor):
    samples = [_sample(), {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hi."}]}]
    plain = PLMCollator(processor, max_length=249)
    fitting = PLMCollator(processor, max_length=249, fit_tiles=True)
    expected, batch = plain(samples), fitting(samples)
    assert batch.keys() == expected.keys()
    assert all(torch.equal(batch[k], expected[k]) for k in expected)
    assert batch["pixel_values"].shape[1] == 37
    assert fitting.stats["fitted_samples"] == 0 and fitting.stats["tiles_removed"] == 0


def test_falls_back_to_the_turn_policy_when_one_tile_does_not_fit(processor):
    sample = _sample()
    one_tile = _length(processor, sample, max_tiles=1)
    text = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hi."}]}
    collator = PLMCollator(processor, max_length=one_tile - 1, fit_tiles=True)
    batch = collator([sample, text])
    assert batch["input_ids"].shape[0] == 1 and "pixel_values" not in batch
    assert collator.stats["rejected_too_long"] == 1
    assert collator.stats["fitted_samples"] == 0 and collator.stats["tiles_removed"] == 0
    with pytest.raises(ValueError, match="id='big'.*too long"):
        PLMCollator(processor, max_length=one_tile - 1, fit_tiles=True, on_too_long="raise")([sample])

    # The first exchange fits at the tiles asked for, the whole sample not even at 1 tile: trailing turns
    # go as without fit_tiles, and the image keeps the tiles it asked for.
    long_tail = _sample(n_exchanges=30, max_tiles=4)
    limit = _length(processor, _sample(max_tiles=4)) + 2
    assert _length(processor, long_tail, max_tiles=1) > limit
    collator = PLMCollator(processor, max_length=limit, fit_tiles=True)
    batch = collator([long_tail])
    expected = PLMCollator(processor, max_length=limit)([long_tail])
    assert all(torch.equal(batch[k], expected[k]) for k in expected)
    assert batch["pixel_values"].shape[1] == 1 + 4
    assert collator.stats["truncated_samples"] == 1 and collator.stats["fitted_samples"] == 0


def test_per_sample_max_tiles_is_the_upper_bound(processor):
    collator = PLMCollator(processor, max_tiles=36, max_length=150, fit_tiles=True)
    batch = collator([_sample(max_tiles=16)])
    assert batch["pixel_values"].shape[1] == 1 + 9
    assert collator.stats["tiles_removed"] == 16 - 9
    # Room to spare is not filled with more tiles than the sample asked for.
    roomy = PLMCollator(processor, max_tiles=36, max_length=300, fit_tiles=True)
    assert roomy([_sample(max_tiles=4)])["pixel_values"].shape[1] == 1 + 4
    assert roomy.stats["fitted_samples"] == 0


def test_model_runs_on_a_fitted_batch_and_frames_are_left_alone(processor, model):
    with_video = {
        "id": "image-and-video",
        "messages": [{"role": "user", "content": [{"type": "image"}, {"type": "video"}, {"type": "text",
                                                                                        "text": "Match them."}]},
                     {"role": "assistant", "content": ANSWER}],
        "images": [make_image(336, 336, seed=2)], "videos": [make_frames(4, seed=3)],
    }
    limit = 170
    assert _length(processor, with_video) > limit
    collator = PLMCollator(processor, max_length=limit, fit_tiles=True)
    batch = collator([_sample(), with_video])
    assert batch["input_ids"].shape[1] <= limit
    assert collator.stats["fitted_samples"] == 2 and collator.stats["rejected_too_long"] == 0
    assert batch["pixel_values_videos"].shape[1] == 4  # frames are not part of the fitting
    assert _image_tokens_match_tiles(collator, batch)
    with torch.no_grad():
        loss = model(**batch).loss
    assert torch.isfinite(loss)
