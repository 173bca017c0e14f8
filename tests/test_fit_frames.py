"""PLMCollator(fit_frames=True): a too-long sample loses video frames, re-picked by PLM's rule, before turns.

The clip is lossless and its frame i is the colour ``(i % 256, i // 256, 77)`` (``test_frame_selection``), so
the frames a batch holds can be told apart exactly: they must be the ones ``select_frame_indices`` picks for
the lower count, not the first frames of the count asked for.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_image
from test_frame_selection import encode_indexed_video

from plm_tune import PLMCollator, build_trainer, load_model, plan_report
from plm_tune.arguments import MediaArguments
from plm_tune.data.media import load_video, select_frame_indices
from plm_tune.encoding.costs import estimate_cost, sample_cost

ANSWER = "Colours change slowly from dark red to a lighter red over the whole clip."
TOTAL, FPS = 500, 25  # 20 s: 20 candidates at 1 frame per second
FRAME_TOKENS = 4  # the tiny processor: a 56 px frame, 14 px patches, 2 x 2 pooling


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return encode_indexed_video(tmp_path_factory.mktemp("fit-frames") / "clip.mp4", TOTAL, FPS)


def _sample(clip, n_exchanges=1, **extra):
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What happens?"}]},
                {"role": "assistant", "content": ANSWER}]
    for i in range(1, n_exchanges):
        messages += [{"role": "user", "content": f"And question {i}?"}, {"role": "assistant", "content": f"Answer {i}."}]
    return {"id": "long-clip", "messages": messages, "videos": [clip], **extra}


def _length(processor, sample, **kwargs):
    return PLMCollator(processor, **kwargs)([sample])["input_ids"].shape[1]


def _pixels_of(processor, indices):
    """What PLM's video processor makes of the clip's frames at ``indices`` (built from the colours, not decoded)."""
    frames = np.zeros((len(indices), 16, 16, 3), dtype=np.uint8)
    for row, i in enumerate(indices):
        frames[row] = (i % 256, i // 256, 77)
    return processor.video_processor(videos=[frames], return_tensors="pt")["pixel_values_videos"][0]


def test_fit_frames_re_picks_the_fewest_frames_that_fit_by_plms_rule(processor, clip, caplog):
    sample = _sample(clip)
    assert _length(processor, sample, num_frames=16) == 171 and _length(processor, sample, num_frames=11) == 151
    limit = 152  # 19 tokens over at 16 frames: 5 frames of 4 tokens
    strict = PLMCollator(processor, max_length=limit, num_frames=16)
    with pytest.raises(ValueError, match="Every sample"):
        strict([sample])
    assert strict.stats["rejected_too_long"] == 1

    collator = PLMCollator(processor, max_length=limit, num_frames=16, fit_frames=True)
    batch = collator([sample])
    assert batch["input_ids"].shape[1] == 151 and batch["pixel_values_videos"].shape[1] == 11
    assert int((batch["input_ids"] == processor.video_token_id).sum()) == 11 * FRAME_TOKENS
    labelled = batch["labels"][0][batch["labels"][0] != -100]
    assert processor.tokenizer.decode(labelled) == ANSWER + "<|eot_id|>"
    # The frames PLM's rule picks for 11, spread over the clip: not the first 11 of the 16 asked for.
    picked = select_frame_indices(TOTAL, FPS, None, None, 11)
    assert picked == [0, 50, 100, 150, 200, 250, 275, 325, 375, 425, 475]
    assert picked != select_frame_indices(TOTAL, FPS, None, None, 16)[:11]
    assert torch.equal(batch["pixel_values_videos"][0], _pixels_of(processor, picked))
    # Exactly what asking for 11 frames gives.
    asked_for_11 = PLMCollator(processor, num_frames=11)([sample])
    assert batch.keys() == asked_for_11.keys() and all(torch.equal(batch[k], asked_for_11[k]) for k in batch)
    stats = dict(collator.stats)
    assert stats["fitted_samples"] == 1 and stats["frames_removed"] == 16 - 11 and stats["tiles_removed"] == 0
    assert stats["rejected_too_long"] == 0 and stats["truncated_samples"] == 0
    assert "id='long-clip'" in caplog.text and "fit_frames=True" in caplog.text
    assert "video 0: 16 -> 11 frames" in caplog.text


def test_the_plan_counts_the_fitted_sample_as_the_collator_builds_it(processor, clip):
    sample = _sample(clip, n_exchanges=3)
    collator = PLMCollator(processor, max_length=200, num_frames=16, fit_frames=True)
    estimate = estimate_cost(sample, collator)
    encoded = collator.encode(sample)
    assert (estimate.outcome, estimate.tokens, estimate.frames) == ("fitted", len(encoded.input_ids),
                                                                     encoded.videos[0].shape[0])
    collator([sample])  # the batch counts (encode counts nothing)
    assert estimate.frames_removed == collator.stats["frames_removed"] == 16 - estimate.frames > 0
    assert estimate.tokens <= 200 < estimate.full_tokens
    assert sample_cost(sample, collator) == (len(encoded.input_ids), encoded.videos[0].shape[0])


def test_fit_frames_off_keeps_the_turn_policy(processor, clip):
    sample = _sample(clip, n_exchanges=3)
    limit = 200  # the first exchange fits at 16 frames (171 tokens), the whole sample (237) does not
    assert _length(processor, sample, num_frames=16) > limit
    truncating = PLMCollator(processor, max_length=limit, num_frames=16)
    batch = truncating([sample])
    assert batch["input_ids"].shape[1] == 171 and batch["pixel_values_videos"].shape[1] == 16
    assert truncating.stats["dropped_turns"] == 4 and truncating.stats["frames_removed"] == 0
    whole = PLMCollator(processor, max_length=limit, num_frames=16, truncate_turns=False, on_too_long="raise")
    with pytest.raises(ValueError, match="id='long-clip'.*truncate_turns=False"):
        whole([sample])
    fitting = PLMCollator(processor, max_length=limit, num_frames=16, fit_frames=True)
    batch = fitting([sample])
    assert batch["input_ids"].shape[1] <= limit and batch["pixel_values_videos"].shape[1] < 16
    assert fitting.stats["dropped_turns"] == 0 and fitting.stats["fitted_samples"] == 1


def test_too_long_at_one_frame_follows_the_turn_policy(processor, clip):
    sample = _sample(clip)
    one_frame = _length(processor, sample, num_frames=1)
    collator = PLMCollator(processor, max_length=one_frame - 1, num_frames=16, fit_frames=True)
    text = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hi."}]}
    batch = collator([sample, text])
    assert batch["input_ids"].shape[0] == 1 and "pixel_values_videos" not in batch
    assert collator.stats["rejected_too_long"] == 1 and collator.stats["frames_removed"] == 0
    with pytest.raises(ValueError, match="id='long-clip'.*too long"):
        PLMCollator(processor, max_length=one_frame - 1, fit_frames=True, on_too_long="raise")([sample])

    # The first exchange fits at the frames asked for, the whole sample not even at 1 frame: trailing turns go
    # and the video keeps its frames.
    long_tail = _sample(clip, n_exchanges=30, num_frames=4)
    limit = _length(processor, _sample(clip, num_frames=4)) + 2
    assert _length(processor, long_tail, num_frames=1) > limit
    collator = PLMCollator(processor, max_length=limit, fit_frames=True)
    batch = collator([long_tail])
    expected = PLMCollator(processor, max_length=limit)([long_tail])
    assert all(torch.equal(batch[k], expected[k]) for k in expected)
    assert batch["pixel_values_videos"].shape[1] == 4
    assert collator.stats["truncated_samples"] == 1 and collator.stats["fitted_samples"] == 0


def test_a_samples_own_num_frames_is_the_upper_bound(processor, clip):
    roomy = PLMCollator(processor, num_frames=32, max_length=400, fit_frames=True)
    assert roomy([_sample(clip, num_frames=8)])["pixel_values_videos"].shape[1] == 8
    assert roomy.stats["fitted_samples"] == 0
    limit = _length(processor, _sample(clip, num_frames=5))
    tight = PLMCollator(processor, num_frames=32, max_length=limit, fit_frames=True)
    batch = tight([_sample(clip, num_frames=8)])
    assert batch["pixel_values_videos"].shape[1] == 5 and tight.stats["frames_removed"] == 8 - 5
    assert torch.equal(batch["pixel_values_videos"][0],
                       _pixels_of(processor, select_frame_indices(TOTAL, FPS, None, None, 5)))


def test_frames_go_before_tiles_and_the_model_trains_on_the_result(processor, model, clip):
    """An image and a video: frames are lowered first; tiles only once 1 frame is not enough, and then the
    video gets back the frames that fit beside the lowered image. Frames given as an array re-pick the same way."""
    frames = load_video(clip, num_frames=20)  # (20, 16, 16, 3): one frame a second, as an in-memory video
    both = {"id": "image-and-video", "images": [make_image(336, 336, seed=2)], "videos": [frames],
            "messages": [{"role": "user", "content": [{"type": "image"}, {"type": "video"},
                                                      {"type": "text", "text": "Match them."}]},
                         {"role": "assistant", "content": ANSWER}]}
    settings = {"num_frames": 16, "fit_tiles": True, "fit_frames": True}
    full = _length(processor, both, num_frames=16)
    frames_only = PLMCollator(processor, max_length=full - 3 * FRAME_TOKENS, **settings)
    batch = frames_only([both])
    assert batch["pixel_values_videos"].shape[1] == 13 and batch["pixel_values"].shape[1] == 37
    assert frames_only.stats["tiles_removed"] == 0 and frames_only.stats["frames_removed"] == 3
    assert torch.equal(batch["pixel_values_videos"], PLMCollator(processor, num_frames=13)([both])["pixel_values_videos"])

    one_frame = _length(processor, both, num_frames=1)  # the image's 36 tiles beside 1 frame
    collator = PLMCollator(processor, max_length=one_frame - 1, **settings)
    batch = collator([both])
    tiles, kept = batch["pixel_values"].shape[1], batch["pixel_values_videos"].shape[1]
    assert tiles < 37 and kept > 1 and batch["input_ids"].shape[1] <= one_frame - 1
    # The largest grid that fits beside 1 frame, then as many frames as fit beside it: one more would not.
    assert batch["input_ids"].shape[1] + FRAME_TOKENS > one_frame - 1 or kept == 16
    estimate = estimate_cost(both, collator)
    assert (estimate.tokens, estimate.tiles, estimate.frames) == (batch["input_ids"].shape[1], tiles, kept)
    with torch.no_grad():
        loss = model(**batch).loss
    assert torch.isfinite(loss)


def test_a_runs_media_settings_plan_and_train_with_fewer_frames(tiny_plm_path, clip, tmp_path):
    """``MediaArguments(fit_frames=True)``, as a recipe's YAML sets it: the plan counts the fitted sample and
    training steps on it with 11 of its 16 frames."""
    from trl import SFTConfig

    media = MediaArguments(num_frames=16, fit_frames=True)
    sample = _sample(clip)
    report = plan_report([sample], str(tiny_plm_path), batch_size=1, max_length=153, media=media, progress=False)
    assert "over max_length: 1 (truncated 0, tiles / frames lowered 1, rejected 0)" in report
    assert "0 image tiles, 11 video frames" in report
    model, processor = load_model(tiny_plm_path, method="lora")
    args = SFTConfig(output_dir=str(tmp_path / "out"), max_length=153, max_steps=1, per_device_train_batch_size=1,
                     save_strategy="no", report_to="none", bf16=False, dataloader_num_workers=0, disable_tqdm=True)
    trainer = build_trainer(model, processor, [sample], args=args, media=media)
    result = trainer.train()
    stats = trainer.plm_collator.stats
    assert stats["fitted_samples"] >= 1 and stats["frames_removed"] == 5 * stats["fitted_samples"]
    assert stats["media_tokens"] == 11 * FRAME_TOKENS * stats["batches"] and stats["rejected_too_long"] == 0
    assert np.isfinite(result.training_loss)
