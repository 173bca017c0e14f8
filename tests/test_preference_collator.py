"""PLMPreferenceCollator: each answer's row token-identical to PLM's chat template, completion masks on the answer
only, the media of a pair processed once, ragged batches scoring each pair as alone, TRL's DPO forward on the batch."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_frames, make_image

from plm_tune import PLMCollator, PLMPreferenceCollator, sequence_logps


def _text(t):
    return {"type": "text", "text": t}


def _answer(text):
    return [{"role": "assistant", "content": [_text(text)]}]


PAIR_CASES = {
    "text_only": {
        "messages": [{"role": "user", "content": [_text("Say yes.")]}],
        "chosen": _answer("The answer is yes."), "rejected": _answer("No."),
    },
    "one_image": {
        "messages": [{"role": "user", "content": [{"type": "image"}, _text("Describe the image.")]}],
        "chosen": _answer("A red circle on white."), "rejected": _answer("A blue square on a long black road."),
        "images": [make_image(120, 80)],
    },
    "multi_image": {  # both images first, where the template puts them (PLM keeps several images where written);
        # one size: the processor's own apply_chat_template cannot stack images of different tile counts
        "messages": [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, _text("Compare them.")]}],
        "chosen": _answer("The first is brighter."), "rejected": _answer("Same."),
        "images": [make_image(90, 140, seed=1), make_image(90, 140, seed=2)],
    },
    "one_video": {
        "messages": [{"role": "user", "content": [{"type": "video"}, _text("What happens in the video?")]}],
        "chosen": _answer("A person walks."), "rejected": _answer("Nothing at all happens in it."),
        "videos": [make_frames(5)],
    },
    "custom_system": {
        "messages": [{"role": "system", "content": "You are an expert radiographer."},
                     {"role": "user", "content": [{"type": "image"}, _text("Describe accurately what you see.")]}],
        "chosen": _answer("Frontal chest radiograph; the lungs are clear."), "rejected": _answer("A cat."),
        "images": [make_image(70, 70, seed=2)],
    },
    "multi_turn_prompt": {
        "messages": [{"role": "user", "content": [{"type": "image"}, _text("What colour is the shape?")]},
                     {"role": "assistant", "content": [_text("Red.")]},
                     {"role": "user", "content": [_text("How many are there?")]}],
        "chosen": _answer("Three."), "rejected": _answer("Two, both small."),
        "images": [make_image(60, 90, seed=1)],
    },
}


def _collator(processor, case=None, **options):
    # The processor tiles every image thumb+tile with its max_num_tiles; PLM's default for several images is one
    # plain tile each, so the multi-image parity case asks for the processor's tiling.
    if case == "multi_image":
        options.setdefault("multi_image_tiles", None)
    return PLMPreferenceCollator(PLMCollator(processor, **options))


def _inline(messages, sample):
    """``messages`` in the processor's format: the sample's media objects inline in their parts."""
    images, videos = iter(sample.get("images", [])), iter(sample.get("videos", []))
    messages = copy.deepcopy(messages)
    for message in messages:
        for part in message["content"] if isinstance(message["content"], list) else []:
            if part["type"] in ("image", "video"):
                part[part["type"]] = next(images if part["type"] == "image" else videos)
    return messages


def _template(processor, sample, answer):
    return processor.apply_chat_template(_inline([*sample["messages"], *sample[answer]], sample), tokenize=True,
                                         return_dict=True, return_tensors="pt")


def _row(batch, row):
    """A row's real tokens and completion mask (padding removed)."""
    keep = batch["attention_mask"][row].bool()
    return batch["input_ids"][row][keep], batch["completion_mask"][row][keep]


@pytest.mark.parametrize("case", sorted(PAIR_CASES))
def test_each_answer_row_is_token_identical_to_the_chat_template_of_prompt_plus_answer(processor, case):
    sample = PAIR_CASES[case]
    batch = _collator(processor, case)([sample])
    assert batch["input_ids"].shape[0] == 2 and set(batch) <= {
        "input_ids", "attention_mask", "completion_mask", "pixel_values", "pixel_values_videos"}
    for row, answer in enumerate(("chosen", "rejected")):
        ref = _template(processor, sample, answer)
        ids, _ = _row(batch, row)
        assert ids.tolist() == ref["input_ids"][0].tolist()
        for key in ("pixel_values", "pixel_values_videos"):
            assert (key in batch) == (key in ref)
            if key in ref:  # the rows' pixels in row order: [chosen's, rejected's], each the template's
                expected = ref[key].flatten(0, 1).unsqueeze(0)  # (images, tiles, ...) -> (1, images * tiles, ...)
                half = expected.shape[1]
                assert batch[key].shape[1] == 2 * half
                torch.testing.assert_close(batch[key][:, row * half:(row + 1) * half], expected, rtol=0, atol=0)


@pytest.mark.parametrize("case", sorted(PAIR_CASES))
def test_completion_mask_decodes_to_exactly_the_answer_and_eot(processor, case):
    sample = PAIR_CASES[case]
    batch = _collator(processor, case)([sample])
    for row, answer in enumerate(("chosen", "rejected")):
        ids, mask = _row(batch, row)
        text = processor.tokenizer.decode(ids[mask.bool()])
        assert text == sample[answer][0]["content"][0]["text"] + "<|eot_id|>"
        # One contiguous span at the end of the row: nothing of the prompt (an earlier answer included) is scored.
        assert mask.tolist() == [0] * (len(mask) - int(mask.sum())) + [1] * int(mask.sum())
    assert (batch["completion_mask"] <= batch["attention_mask"]).all()  # padding never scored


def test_labels_as_trl_builds_them_equal_the_sft_labels_of_prompt_plus_answer(processor):
    """TRL's DPOTrainer labels ``input_ids`` where ``completion_mask`` is set; on a one-exchange prompt that is exactly
    what the SFT collator labels for the same conversation."""
    sample = PAIR_CASES["one_image"]
    batch = _collator(processor)([sample])
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    for row, answer in enumerate(("chosen", "rejected")):
        sft = PLMCollator(processor)([{**sample, "messages": sample["messages"] + sample[answer]}])
        n = sft["labels"].shape[1]
        assert labels[row, :n].tolist() == sft["labels"][0].tolist()
        assert (labels[row, n:] == -100).all()


def test_string_answers_and_prompts_format_as_their_text_parts(processor):
    parts = PAIR_CASES["multi_turn_prompt"]
    strings = copy.deepcopy(parts)
    for message in [*strings["messages"], *strings["chosen"], *strings["rejected"]]:
        if all(p["type"] == "text" for p in message["content"]):
            message["content"] = message["content"][0]["text"]
    collator = _collator(processor)
    assert torch.equal(collator([strings])["input_ids"], collator([parts])["input_ids"])


def ragged_pairs():
    """Different tile counts, a video pair, several images, a text-only pair, a multi-turn prompt."""
    return [
        {**PAIR_CASES["one_image"], "id": "wide", "images": [make_image(160, 60, seed=3)], "max_tiles": 6},
        {**PAIR_CASES["custom_system"], "id": "small", "max_tiles": 2},
        {**PAIR_CASES["one_video"], "id": "video"},
        {**PAIR_CASES["multi_image"], "id": "two-images"},
        {**PAIR_CASES["text_only"], "id": "text"},
        {**PAIR_CASES["multi_turn_prompt"], "id": "turns"},
    ]


class _CountingCalls:
    """Wraps a real method and counts its calls (the real method still runs)."""

    def __init__(self, method):
        self.method, self.calls = method, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.method(*args, **kwargs)


def test_the_media_of_a_pair_are_processed_once_and_shared_by_both_rows(processor):
    collator = _collator(processor)
    pixels = collator.collator.pixels
    pixels.image, pixels.video = _CountingCalls(pixels.image), _CountingCalls(pixels.video)
    pairs = ragged_pairs()
    batch = collator(pairs)
    n_images = sum(len(p.get("images", [])) for p in pairs)
    n_videos = sum(len(p.get("videos", [])) for p in pairs)
    assert (pixels.image.calls, pixels.video.calls) == (n_images, n_videos) == (5, 1)
    # Per pair, both rows hold the very same tensors.
    for sample in pairs:
        chosen, rejected = collator.build_pair(sample, collator.plan(sample))
        assert len(chosen.images) == len(sample.get("images", []))
        assert all(a is b for a, b in zip(chosen.images + chosen.videos, rejected.images + rejected.videos,
                                          strict=True))
    # The batch's pixels: every chosen row's, then every rejected row's (the same ones, in the same order).
    for key in ("pixel_values", "pixel_values_videos"):
        first, second = batch[key].chunk(2, dim=1)
        assert torch.equal(first, second)
    tokens_per_tile = pixels.tokens_per_tile(*batch["pixel_values"].shape[-2:])
    assert int((batch["input_ids"] == processor.image_token_id).sum()) == batch["pixel_values"].shape[1] * tokens_per_tile
    stats = collator.stats
    assert stats["samples"] == len(pairs) and stats["tokens"] == int(batch["attention_mask"].sum())


def test_ragged_batch_gives_each_pair_the_log_probs_it_gets_alone(processor, model):
    collator = _collator(processor)
    pairs = ragged_pairs()
    with torch.no_grad():
        chosen, rejected = sequence_logps(model, collator(pairs)).chunk(2)
        for i, sample in enumerate(pairs):
            alone = sequence_logps(model, collator([sample]))
            torch.testing.assert_close(torch.stack([chosen[i], rejected[i]]), alone, rtol=0, atol=1e-4)
    assert torch.isfinite(chosen).all() and (chosen < 0).all() and (rejected < 0).all()
    assert not torch.equal(chosen, rejected)


def test_answer_log_prob_equals_minus_the_sft_loss_times_its_tokens(processor, model):
    """The log-prob DPO compares is the SFT loss of the same conversation, summed instead of averaged."""
    sample = PAIR_CASES["one_video"]
    with torch.no_grad():
        chosen, rejected = sequence_logps(model, _collator(processor)([sample]))
        for answer, logp in (("chosen", chosen), ("rejected", rejected)):
            sft = PLMCollator(processor)([{**sample, "messages": sample["messages"] + sample[answer]}])
            n = int((sft["labels"] != -100).sum())
            torch.testing.assert_close(logp, -model(**sft).loss * n, rtol=1e-5, atol=1e-4)


def test_trls_dpo_forward_reads_the_batch_as_its_own_collator_would_give_it(processor, tiny_plm_path, model):
    """TRL's DPOTrainer._compute_loss, as written in trl 1.16: every key but completion_mask to the model, labels
    from completion_mask, its fused LM head's per-token log-probs summed per row, then chunk(2)."""
    from transformers import AutoModelForImageTextToText
    from trl.trainer.utils import add_fused_lm_head

    trl_model = AutoModelForImageTextToText.from_pretrained(tiny_plm_path, dtype=torch.float32).eval()
    add_fused_lm_head(trl_model)
    batch = _collator(processor)(ragged_pairs())
    inputs = {k: v for k, v in batch.items() if k not in {"completion_mask", "ref_chosen_logps", "ref_rejected_logps"}}
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    with torch.no_grad():
        trl_logps = trl_model(**inputs, use_cache=False, labels=labels, fused_lm_head=True).log_probs.sum(dim=1)
        ours = sequence_logps(model, batch)
    torch.testing.assert_close(trl_logps, ours, rtol=1e-5, atol=1e-4)


def test_a_pair_too_long_is_fitted_with_the_same_media_for_both_rows_or_rejected(processor):
    sample = {**PAIR_CASES["one_image"], "images": [make_image(300, 120, seed=7)], "max_tiles": 9}
    full = _collator(processor)([sample])
    longest = int(full["attention_mask"].sum(dim=1).max())
    fitted = _collator(processor, max_length=longest - 1, fit_tiles=True)
    batch = fitted([sample])
    assert int(batch["attention_mask"].sum(dim=1).max()) <= longest - 1
    first, second = batch["pixel_values"].chunk(2, dim=1)
    assert torch.equal(first, second) and first.shape[1] < full["pixel_values"].shape[1] // 2
    assert fitted.stats["fitted_samples"] == 1
    # Without fitting, a pair is rejected whole: never cut (that would drop the answers).
    with pytest.raises(ValueError, match="a pair is never cut"):
        _collator(processor, max_length=longest - 1, on_too_long="raise")([sample])
    skipping = _collator(processor, max_length=longest - 1)
    assert skipping([sample, PAIR_CASES["text_only"]])["input_ids"].shape[0] == 2
    assert skipping.stats["rejected_too_long"] == 1


def test_malformed_pairs_and_settings_are_refused_with_the_fix(processor):
    collator = _collator(processor)
    good = PAIR_CASES["text_only"]
    with pytest.raises(ValueError, match="a preference prompt ends with the user turn"):
        collator([{**good, "messages": good["messages"] + good["chosen"]}])
    with pytest.raises(ValueError, match="'rejected' must be a list of exactly one assistant message, got 2 items"):
        collator([{**good, "rejected": good["rejected"] * 2}])
    with pytest.raises(ValueError, match="train_on at its default"):
        PLMPreferenceCollator(PLMCollator(processor, train_on="all"))
    with pytest.raises(ValueError, match="padding_free at its default"):
        PLMPreferenceCollator(PLMCollator(processor, padding_free=True))


# ------------------------------------------------------------------ plan: a pair is two rows, its media once
def test_estimate_of_a_pair_counts_both_rows_tokens_and_its_media_once(processor):
    from plm_tune import estimate_cost

    for sample in ragged_pairs():
        sft = PLMCollator(processor)
        batch = PLMPreferenceCollator(sft)([sample])
        estimate = estimate_cost(sample, sft)
        assert estimate.rows == 2
        assert estimate.row_tokens == tuple(batch["attention_mask"].sum(dim=1).tolist())
        assert estimate.tokens == int(batch["attention_mask"].sum())
        assert estimate.labelled_tokens == int(batch["completion_mask"].sum())
        media = (batch["input_ids"] == processor.image_token_id) | (batch["input_ids"] == processor.video_token_id)
        assert estimate.media_tokens == int(media.sum())
        assert estimate.tiles == (batch["pixel_values"].shape[1] // 2 if "pixel_values" in batch else 0)
        assert estimate.frames == (batch["pixel_values_videos"].shape[1] // 2 if "pixel_values_videos" in batch else 0)


def test_estimate_of_a_fitted_and_a_rejected_pair(processor):
    sample = {**PAIR_CASES["one_image"], "images": [make_image(300, 120, seed=7)], "max_tiles": 9}
    whole = _collator(processor)([sample])["attention_mask"].sum(dim=1)
    longest = int(whole.max())
    fitting = PLMCollator(processor, max_length=longest - 1, fit_tiles=True)
    batch = PLMPreferenceCollator(fitting)([sample])
    from plm_tune import estimate_cost

    fitted = estimate_cost(sample, fitting)
    assert fitted.outcome == "fitted" and fitted.tiles_removed > 0
    assert fitted.row_tokens == tuple(batch["attention_mask"].sum(dim=1).tolist())
    assert fitted.tiles == batch["pixel_values"].shape[1] // 2
    rejected = estimate_cost(sample, PLMCollator(processor, max_length=longest - 1))
    assert rejected.outcome == "rejected" and rejected.tokens == 0 and rejected.full_tokens == int(whole.sum())


def test_plan_dataset_of_pairs_counts_rows_padding_and_memory_rows(processor, tiny_plm_path):
    from plm_tune import plan_dataset, plan_report

    pairs = ragged_pairs()
    collator = PLMCollator(processor)
    batches = [PLMPreferenceCollator(collator)([p]) for p in pairs]
    plan = plan_dataset(pairs, collator, batch_size=1, progress=False)
    assert plan.totals()["tokens"] == sum(int(b["attention_mask"].sum()) for b in batches)
    assert plan.rows_per_sample == 2
    # Batch size 1: each batch is one pair, padded to its longer row: the padding the collator really makes.
    padded = sum(b["input_ids"].numel() - int(b["attention_mask"].sum()) for b in batches)
    assert plan.padding["random"] == pytest.approx(padded / sum(b["input_ids"].numel() for b in batches))
    assert plan.padding["random"] > 0
    seq_len, _ = plan.worst_batch()
    assert seq_len == max(b["input_ids"].shape[1] for b in batches)
    report = plan_report(pairs, tiny_plm_path, batch_size=3, progress=False)
    assert "preference pairs: 2 rows per sample" in report
    assert "at the longest batch: 6 x " in report  # 3 pairs per batch = 6 rows


def test_memory_of_a_pair_batch_counts_the_tower_once_per_pair_and_its_pixels_twice():
    """build_dpo_trainer runs the tower once per pair (plm_tune.modeling.pair_media): 4 rows of 2 pairs cost the
    tower what 2 rows do, their pixel tensors what 4 rows' do; the decoder is 4 rows either way."""
    from plm_tune.modeling.memory import estimate_memory, plm_config

    common = dict(seq_len=1400, tiles_per_sample=37, freeze=(), gradient_checkpointing=False)
    pairs = estimate_memory("1B", "lora", batch_size=4, rows_per_media=2, **common)
    rows = estimate_memory("1B", "lora", batch_size=4, **common)
    half = estimate_memory("1B", "lora", batch_size=2, **common)
    vision = plm_config("1B").vision_config.model_args
    pixel_bytes = 2 * 37 * 3 * vision["img_size"][0] ** 2 * 2  # two more rows of 37 bf16 tiles
    assert pairs.activations_vision == half.activations_vision + pixel_bytes
    assert pairs.activations_vision < rows.activations_vision * 0.6
    assert pairs.activations_text == rows.activations_text
    with pytest.raises(ValueError, match="rows_per_media=2 must be at least 1 and divide batch_size=3"):
        estimate_memory("1B", "lora", batch_size=3, rows_per_media=2, **common)
