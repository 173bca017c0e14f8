"""PLMCollator: mixed batches, per-sample equality with solo runs, truncation policy, workers, stats."""

from __future__ import annotations

import pickle

import pytest
import torch
import torch.nn.functional as F
from conftest import make_frames, make_image, qa
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader

from plm_tune import PLMCollator


def mixed_samples():
    """Images with different tile counts, multi-image, videos with different frame counts, both, text only."""
    return [
        {"id": "wide", "messages": qa("Describe.", "A wide noisy picture.", ["image"]),
         "images": [make_image(160, 60, seed=1)], "max_tiles": 6},
        {"id": "two-images", "messages": qa("Compare them.", "The left is brighter.", ["image", "image"]),
         "images": [make_image(56, 56, seed=2), make_image(90, 140, seed=3)], "max_tiles": 4},
        {"id": "video-5", "messages": qa("What happens?", "Noise flickers.", ["video"]),
         "videos": [make_frames(5, seed=4)]},
        {"id": "video-3-and-image", "messages": qa("Match them.", "They differ.", ["image", "video"]),
         "images": [make_image(70, 50, seed=5)], "videos": [make_frames(3, seed=6)], "max_tiles": 2},
        {"id": "text", "messages": qa("Say yes.", "Yes.")},
    ]


def _per_token_loss(logits, labels):
    """Per-position next-token loss (B, L-1); 0 where unlabelled."""
    shift_logits, shift_labels = logits[:, :-1].float(), labels[:, 1:]
    loss = F.cross_entropy(shift_logits.transpose(1, 2), shift_labels, ignore_index=-100, reduction="none")
    return loss


def test_mixed_batch_matches_each_sample_run_alone(processor, model):
    collator = PLMCollator(processor)
    samples = mixed_samples()
    batch = collator(samples)
    assert batch["pixel_values"].shape[0] == 1 and batch["pixel_values_videos"].shape[0] == 1
    # Tiles of every image in token order: their count matches the placeholders.
    tokens_per_tile = collator.pixels.tokens_per_tile(*batch["pixel_values"].shape[-2:])
    n_image_tokens = int((batch["input_ids"] == processor.image_token_id).sum())
    assert n_image_tokens == batch["pixel_values"].shape[1] * tokens_per_tile
    with torch.no_grad():
        batched = model(**batch)
        batch_token_loss = _per_token_loss(batched.logits, batch["labels"])
        for row, sample in enumerate(samples):
            alone = collator([sample])
            out = model(**alone)
            n = alone["input_ids"].shape[1]
            assert torch.equal(batch["input_ids"][row, :n], alone["input_ids"][0])
            torch.testing.assert_close(batched.logits[row, :n], out.logits[0], rtol=1e-5, atol=1e-5)
            labelled = alone["labels"][0, 1:] != -100
            solo_loss = _per_token_loss(out.logits, alone["labels"])[0][labelled].mean()
            batch_loss = batch_token_loss[row, : n - 1][labelled].mean()
            torch.testing.assert_close(batch_loss, solo_loss, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(out.loss, solo_loss, rtol=1e-5, atol=1e-5)


def test_mixed_batch_trains_forward_and_backward(processor, tiny_plm_path):
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny_plm_path).train()
    batch = PLMCollator(processor)(mixed_samples())
    loss = model(**batch).loss
    loss.backward()
    assert torch.isfinite(loss)
    vision_grad = model.model.vision_tower.timm_model.patch_embed.proj.weight.grad
    assert vision_grad is not None and vision_grad.abs().sum() > 0  # pixels reached the loss


def test_tile_counts_follow_max_tiles_per_sample_and_globally(processor):
    image = make_image(300, 120, seed=7)
    sample = {"messages": qa("Describe.", "Noise.", ["image"]), "images": [image]}
    tiles = {}
    for budget in (1, 4, 9, 36):
        batch = PLMCollator(processor, max_tiles=budget)([sample])
        tiles[budget] = batch["pixel_values"].shape[1]
        assert tiles[budget] <= budget + 1  # the thumbnail plus at most `budget` tiles
    assert tiles[1] < tiles[4] < tiles[9] < tiles[36]
    per_sample = PLMCollator(processor, max_tiles=36)([{**sample, "max_tiles": 4}])
    assert per_sample["pixel_values"].shape[1] == tiles[4]
    vanilla = PLMCollator(processor, vision_input_type="vanilla")([sample])
    assert vanilla["pixel_values"].shape[1] == 1


def test_several_images_get_one_plain_tile_each_by_default_as_plms_trainer(processor):
    """perception_models' preprocessor sends a multi-image row through the video transform: one resized frame per
    image. Single images keep thumb+tile."""
    images = [make_image(300, 120, seed=7), make_image(90, 140, seed=8)]
    two = {"messages": qa("Compare them.", "Different.", ["image", "image"]), "images": images, "max_tiles": 9}
    one = [{"messages": qa("Describe.", "Noise.", ["image"]), "images": [image], "max_tiles": 9} for image in images]
    default = PLMCollator(processor)([two])["pixel_values"]
    plain = [PLMCollator(processor, vision_input_type="vanilla")([s])["pixel_values"] for s in one]
    assert default.shape[1] == 2
    torch.testing.assert_close(default, torch.cat(plain, dim=1), rtol=0, atol=0)  # the vanilla tile of each
    singles = [PLMCollator(processor)([s])["pixel_values"] for s in one]
    assert all(t.shape[1] > 2 for t in singles)  # a single image is still thumb+tile with max_tiles
    # The old behaviour, explicitly: several images tiled like single ones (the sample's max_tiles each).
    as_single = PLMCollator(processor, multi_image_tiles=None)([two])["pixel_values"]
    torch.testing.assert_close(as_single, torch.cat(singles, dim=1), rtol=0, atol=0)
    # A budget of their own: thumb+tile with at most 4 tiles each.
    four = PLMCollator(processor, multi_image_tiles=4)([two])["pixel_values"]
    assert 2 < four.shape[1] <= 2 * 5 and four.shape[1] < as_single.shape[1]
    with pytest.raises(ValueError, match="multi_image_tiles must be a positive number of tiles or None"):
        PLMCollator(processor, multi_image_tiles=0)


def test_num_frames_per_sample_overrides_default(processor):
    sample = {"messages": qa("What happens?", "Noise.", ["video"]), "videos": [make_frames(20)]}
    assert PLMCollator(processor, num_frames=8)([sample])["pixel_values_videos"].shape[1] == 8
    assert PLMCollator(processor, num_frames=8)([{**sample, "num_frames": 4}])["pixel_values_videos"].shape[1] == 4
    # A short clip gives fewer frames than asked, never an error.
    short = {"messages": qa("What happens?", "Noise.", ["video"]), "videos": [make_frames(3)]}
    assert PLMCollator(processor, num_frames=32)([short])["pixel_values_videos"].shape[1] == 3


def model_card_collate(processor, examples):
    """The model card's collate_fn (without its CUDA moves): concatenates each sample's pixel_values."""
    instances = [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "text", "text": "Describe."}, {"type": "image", "image": ex}]},
             {"role": "assistant", "content": [{"type": "text", "text": "Noise."}]}],
            add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
        )
        for ex in examples
    ]
    input_ids = pad_sequence([i["input_ids"].squeeze(0) for i in instances], batch_first=True,
                             padding_value=processor.tokenizer.pad_token_id)
    pixel_values = torch.cat([i["pixel_values"] for i in instances], dim=0)
    return {"input_ids": input_ids, "pixel_values": pixel_values}


def test_model_card_collate_cannot_batch_different_tile_counts_but_ours_can(processor):
    images = [make_image(56, 56, seed=1), make_image(300, 100, seed=2)]
    with pytest.raises(RuntimeError, match="Sizes of tensors must match"):
        model_card_collate(processor, images)
    ours = PLMCollator(processor)(
        [{"messages": qa("Describe.", "Noise.", ["image"]), "images": [img]} for img in images]
    )
    assert ours["input_ids"].shape[0] == 2


def test_train_on_all_versus_assistant_token_counts(processor):
    samples = mixed_samples()
    ours = PLMCollator(processor, train_on="assistant")(samples)
    baseline = PLMCollator(processor, train_on="all")(samples)
    n_ours, n_all = int((ours["labels"] != -100).sum()), int((baseline["labels"] != -100).sum())
    # Printed for the record (pytest -s): how many more tokens the baseline trains on.
    print(f"labelled tokens: assistant={n_ours} all={n_all} ratio={n_all / n_ours:.1f}x")
    assert n_all > 5 * n_ours


# ------------------------------------------------------------------ max_length policy
def _long_conversation():
    return {
        "id": "chatty",
        "messages": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "First question?"}]},
            {"role": "assistant", "content": "First answer."},
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Second question?"}]},
            {"role": "assistant", "content": "Second answer."},
            {"role": "user", "content": "Third question, no image?"},
            {"role": "assistant", "content": "Third answer."},
        ],
        "images": [make_image(56, 56, seed=1), make_image(56, 56, seed=2)],
        "max_tiles": 1,
    }


@pytest.mark.parametrize("multi_image_tiles", [None, 1])
def test_max_length_drops_whole_trailing_turns_with_their_media(processor, multi_image_tiles):
    """The kept image keeps the tiling of the sample it came from: with multi_image_tiles=None a two-image sample
    tiles like single images, so its first exchange equals the one-image sample; by default (1) its images get
    one plain tile each, also the one left after truncation (PLM's trainer decides per row, before cutting)."""
    sample = _long_conversation()
    options = {"multi_image_tiles": multi_image_tiles, "vision_input_type": "vanilla" if multi_image_tiles else None}
    full = PLMCollator(processor, multi_image_tiles=multi_image_tiles)([sample])
    full_len = full["input_ids"].shape[1]
    one_exchange = PLMCollator(processor, **options)([{**sample, "messages": sample["messages"][:2],
                                                       "images": sample["images"][:1]}])
    limit = one_exchange["input_ids"].shape[1] + 3  # room for the first exchange only
    collator = PLMCollator(processor, max_length=limit, multi_image_tiles=multi_image_tiles)
    batch = collator([sample])
    assert batch["input_ids"].shape[1] <= limit < full_len
    assert torch.equal(batch["input_ids"], one_exchange["input_ids"])
    assert torch.equal(batch["pixel_values"], one_exchange["pixel_values"])  # the second image went too
    assert batch["pixel_values"].shape[1] == (1 if multi_image_tiles == 1 else 2)  # 1 plain tile / thumb + 1 tile
    assert collator.stats["truncated_samples"] == 1
    assert collator.stats["dropped_turns"] == 4
    assert collator.stats["dropped_images"] == 1
    # No media token was cut: every remaining placeholder has its pixels.
    n_tokens = int((batch["input_ids"] == processor.image_token_id).sum())
    assert n_tokens == batch["pixel_values"].shape[1] * collator.pixels.tokens_per_tile(56, 56)


def test_sample_whose_first_exchange_does_not_fit_is_rejected_and_counted(processor, caplog):
    fits = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hi."}]}
    fits_len = PLMCollator(processor)([fits])["input_ids"].shape[1]
    collator = PLMCollator(processor, max_length=fits_len)
    batch = collator([_long_conversation(), fits])
    assert batch["input_ids"].shape[0] == 1
    assert collator.stats["rejected_too_long"] == 1
    assert "id='chatty'" in caplog.text and "max_length" in caplog.text
    with pytest.raises(ValueError, match="id='chatty'.*too long"):
        PLMCollator(processor, max_length=fits_len, on_too_long="raise")([_long_conversation()])
    with pytest.raises(ValueError, match="Every sample of this batch"):
        collator([_long_conversation()])


def test_truncate_turns_false_rejects_instead_of_cutting(processor):
    sample = _long_conversation()
    full_len = PLMCollator(processor)([sample])["input_ids"].shape[1]
    collator = PLMCollator(processor, max_length=full_len - 1, truncate_turns=False)
    with pytest.raises(ValueError, match="Every sample"):
        collator([sample])
    assert collator.stats["rejected_too_long"] == 1 and collator.stats["truncated_samples"] == 0


# ------------------------------------------------------------------ processes and devices
class _ListDataset(torch.utils.data.Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_collator_pickles_and_runs_in_dataloader_workers_with_shared_stats(processor):
    fits = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hi."}]}
    limit = PLMCollator(processor)([fits])["input_ids"].shape[1]
    collator = PLMCollator(processor, max_length=limit)
    clone = pickle.loads(pickle.dumps(collator))
    assert clone([fits])["input_ids"].shape == (1, limit)
    items = [fits, _long_conversation()] * 4  # every batch of 2 has one sample to reject
    loader = DataLoader(_ListDataset(items), batch_size=2, num_workers=2, collate_fn=collator)
    batches = list(loader)
    assert len(batches) == 4 and all(b["input_ids"].shape[0] == 1 for b in batches)
    assert all(b["input_ids"].device.type == "cpu" for b in batches)  # no device moves inside
    # Counted inside the worker processes, readable here.
    assert collator.stats["rejected_too_long"] == 4
    assert collator.stats["samples"] == 8 and collator.stats["batches"] == 4


def test_pixel_dtype_is_configurable(processor):
    sample = {"messages": qa("Describe.", "Noise.", ["image"]), "images": [make_image(56, 56)]}
    batch = PLMCollator(processor, pixel_dtype=torch.bfloat16)([sample])
    assert batch["pixel_values"].dtype == torch.bfloat16
    assert batch["input_ids"].dtype == torch.long
