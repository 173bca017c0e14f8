"""Padding-free packing (``PLMCollator(padding_free=True)``): several samples in one row, position ids restarting
per sample, attention never crossing samples. On the tiny PLM in float32: each sample's logits in the packed row
equal its logits alone, the packed loss equals the padded loss (and gradients too), perturbing one sample's
tokens or pixels changes no other sample's logits, and a training run through ``build_trainer`` logs the
padded run's losses."""

from __future__ import annotations

import pytest
import torch
from conftest import make_image, mixed_samples, qa
from transformers import AutoModelForImageTextToText
from trl import SFTConfig

from plm_tune import PLMCollator, build_trainer
from plm_tune.encoding.formatting import IGNORE_INDEX
from plm_tune.encoding.sparse_logits import keep_labelled_logits


def _spans(batch):
    """(start, end) of each sample in a packed row, from its position ids."""
    starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist()
    return list(zip(starts, starts[1:] + [batch["input_ids"].shape[1]], strict=True))


def test_packed_layout(processor):
    samples = mixed_samples(text_only=True)
    padded_collator, packed_collator = PLMCollator(processor), PLMCollator(processor, padding_free=True)
    padded, packed = padded_collator(samples), packed_collator(samples)
    lengths = padded["attention_mask"].sum(1).tolist()

    assert packed["input_ids"].shape == (1, sum(lengths))
    assert "attention_mask" not in packed
    assert [end - start for start, end in _spans(packed)] == lengths
    assert packed["cu_seq_lens_q"].tolist() == [0, *torch.tensor(lengths).cumsum(0).tolist()]
    assert packed["cu_seq_lens_q"].dtype == torch.int32 and packed["max_length_q"] == max(lengths)
    for row, (start, end) in enumerate(_spans(packed)):
        assert packed["input_ids"][0, start:end].tolist() == padded["input_ids"][row, : end - start].tolist()
        assert packed["position_ids"][0, start:end].tolist() == list(range(end - start))
        # The first label is never a target (nothing in its own sample predicts it); the rest are unchanged.
        assert packed["labels"][0, start] == IGNORE_INDEX
        assert packed["labels"][0, start + 1 : end].tolist() == padded["labels"][row, 1 : end - start].tolist()
    assert torch.equal(packed["pixel_values"], padded["pixel_values"])
    assert torch.equal(packed["pixel_values_videos"], padded["pixel_values_videos"])
    # Padding is counted: none packed, plenty padded.
    assert packed_collator.stats["token_slots"] == packed_collator.stats["tokens"] == sum(lengths)
    assert padded_collator.stats["token_slots"] == len(lengths) * max(lengths) > padded_collator.stats["tokens"]


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_each_sample_in_the_row_sees_only_itself(tiny_plm_path, processor, attn_implementation, mode):
    model = AutoModelForImageTextToText.from_pretrained(
        tiny_plm_path, dtype=torch.float32, attn_implementation=attn_implementation)
    getattr(model, mode)()  # train mode: the path the Trainer takes (dropout is 0 in the tiny model)
    samples = mixed_samples(text_only=True)
    collator = PLMCollator(processor, padding_free=True)
    packed = collator(samples)
    with torch.no_grad():
        logits = model(**packed).logits[0]
        for sample, (start, end) in zip(samples, _spans(packed), strict=True):
            alone = model(**PLMCollator(processor)([sample])).logits[0]
            torch.testing.assert_close(logits[start:end], alone, atol=1e-4, rtol=1e-4)


def test_perturbing_one_sample_changes_no_other(processor, model):
    samples = mixed_samples(text_only=True)
    collator = PLMCollator(processor, padding_free=True)
    packed = collator(samples)
    spans = _spans(packed)
    with torch.no_grad():
        reference = model(**packed).logits[0]

        # Tokens: rewrite the answer text of sample 1 (the video).
        changed_text = [dict(s) for s in samples]
        changed_text[1] = {**samples[1], "messages": qa("What happens?", "Static noise flickers fast.", ["video"])}
        text_batch = collator(changed_text)
        text_logits = model(**text_batch).logits[0]
        # Pixels: another image for sample 0.
        changed_pixels = [dict(s) for s in samples]
        changed_pixels[0] = {**samples[0], "images": [make_image(160, 60, seed=11), samples[0]["images"][1]]}
        pixel_logits = model(**collator(changed_pixels)).logits[0]

    new_spans = _spans(text_batch)
    for index in (0, 2, 3):  # the other samples' logits are bit-for-bit where they were (shifted by the new length)
        (start, end), (new_start, new_end) = spans[index], new_spans[index]
        torch.testing.assert_close(text_logits[new_start:new_end], reference[start:end], atol=1e-5, rtol=1e-5)
    start, end = spans[1]
    assert not torch.allclose(text_logits[new_spans[1][0] : new_spans[1][1]][: end - start], reference[start:end])

    for index in (1, 2, 3):
        start, end = spans[index]
        torch.testing.assert_close(pixel_logits[start:end], reference[start:end], atol=1e-5, rtol=1e-5)
    start, end = spans[0]
    assert (pixel_logits[start:end] - reference[start:end]).abs().max() > 1e-3


@pytest.mark.parametrize("train_on", ["assistant", "all"])
def test_packed_loss_and_gradients_equal_padded(processor, model, train_on):
    samples = mixed_samples(text_only=True)
    params = [p for name, p in model.named_parameters() if "layers.0.self_attn.q_proj" in name or "patch_embed" in name]
    results = []
    for padding_free in (False, True):
        batch = PLMCollator(processor, train_on=train_on, padding_free=padding_free)(samples)
        loss = model(**batch).loss
        results.append((loss, torch.autograd.grad(loss, params)))
        # Labelled-only logits compose with packing: same loss.
        sparse = model(**keep_labelled_logits(batch)).loss
        torch.testing.assert_close(sparse, loss, atol=1e-6, rtol=1e-6)
    (padded_loss, padded_grads), (packed_loss, packed_grads) = results
    assert abs(packed_loss.item() - padded_loss.item()) < 1e-4, (packed_loss.item(), padded_loss.item())
    for packed_grad, padded_grad in zip(packed_grads, padded_grads, strict=True):
        torch.testing.assert_close(packed_grad, padded_grad, atol=1e-5, rtol=1e-4)


def test_training_packed_logs_the_padded_losses(tiny_plm_path, processor, tmp_path):
    """Same data, same order, same seed: the packed run's per-step losses are the padded run's."""
    samples = mixed_samples(text_only=True) * 3
    losses = {}
    for padding_free in (False, True):
        torch.manual_seed(0)
        model = AutoModelForImageTextToText.from_pretrained(tiny_plm_path, dtype=torch.float32)
        args = SFTConfig(output_dir=str(tmp_path / f"packed-{padding_free}"), max_steps=3, logging_steps=1,
                         per_device_train_batch_size=4, learning_rate=1e-3, report_to=[], save_strategy="no",
                         dataloader_pin_memory=False, seed=0, max_length=None, use_cpu=True)
        collator = PLMCollator(processor, padding_free=padding_free)
        trainer = build_trainer(model, processor, samples, args=args, collator=collator)
        trainer.train()
        losses[padding_free] = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        if padding_free:
            assert collator.stats["token_slots"] == collator.stats["tokens"]  # no padding at all
    assert len(losses[True]) == 3
    for packed, padded in zip(losses[True], losses[False], strict=True):
        assert abs(packed - padded) < 1e-4 * max(1.0, abs(padded)), losses
