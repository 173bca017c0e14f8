"""decode_padding_free: the decoder runs a padded pair batch's real tokens packed into one row, with the log-probs
and gradients of the padded forward, on the real tiny PLM and real ragged pair batches; DPOConfig(padding_free=True)
trains as padded does (TRL 1.16 disables its own)."""

from __future__ import annotations

import logging

import pytest
import torch
from test_dpo import _args
from test_pair_media import logps_and_grads
from test_preference_collator import _collator, ragged_pairs
from transformers import AutoModelForImageTextToText

from plm_tune import load_model, sequence_logps
from plm_tune.modeling.padding_free import decode_padding_free, padding_free_calls
from plm_tune.training.preference_trainer import build_dpo_trainer


def _load(path):
    return AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()


def _decoder_rows(model):
    """The (rows, tokens) of every batch that reaches the first decoder layer (a pre-hook on the real layer)."""
    seen = []
    layer = model.model.language_model.layers[0]
    layer.register_forward_pre_hook(lambda _module, args, kwargs: seen.append(tuple(
        (args[0] if args else kwargs["hidden_states"]).shape[:2])), with_kwargs=True)
    return seen


def test_a_padded_pair_batch_decodes_packed_with_the_same_log_probs_and_gradients(tiny_plm_path, processor):
    batch = _collator(processor)(ragged_pairs())
    real = int(batch["attention_mask"].sum())
    assert real < batch["attention_mask"].numel()  # the ragged batch is padded
    padded, packed = _load(tiny_plm_path), _load(tiny_plm_path)
    assert decode_padding_free(packed) == 1 and decode_padding_free(packed) == 1  # idempotent
    seen_padded, seen_packed = _decoder_rows(padded), _decoder_rows(packed)

    expected_logps, expected_grads = logps_and_grads(padded, batch)
    logps, grads = logps_and_grads(packed, batch)

    torch.testing.assert_close(logps, expected_logps, rtol=0, atol=1e-4)
    assert grads.keys() == expected_grads.keys() and len(grads) > 10
    for name, grad in grads.items():  # the decoder, projector and tower: the same training signal
        torch.testing.assert_close(grad, expected_grads[name], rtol=1e-3, atol=1e-5, msg=name)
    assert seen_padded == [tuple(batch["input_ids"].shape)] and seen_packed == [(1, real)]  # no padding decoded
    assert padding_free_calls(packed) == {"packed": 1, "whole": 0}


def test_generation_and_unpadded_batches_go_through_as_given(tiny_plm_path, processor):
    model = _load(tiny_plm_path)
    decode_padding_free(model)
    pair = ragged_pairs()[0]
    batch = _collator(processor)([pair])
    batch["attention_mask"][:] = 1  # one pair, no padding: nothing to pack
    inputs = {key: value for key, value in batch.items() if key != "completion_mask"}
    with torch.no_grad():
        sequence_logps(model, batch)
        model.generate(**{key: value[:1] for key, value in inputs.items() if key not in ("pixel_values",
                                                                                        "pixel_values_videos")},
                       max_new_tokens=2, do_sample=False)
    assert padding_free_calls(model)["packed"] == 0 and padding_free_calls(model)["whole"] >= 2


def test_dpo_padding_free_trains_as_padded(tiny_plm_path, tmp_path, caplog):
    """DPOConfig(padding_free=True) on pairs of different tile counts: the same logged steps as padded batches,
    the decoder never sees padding, the run's arguments say padding_free, and sdpa's (tokens x tokens) mask is
    warned about."""
    pairs = [pair for pair in ragged_pairs() if pair["id"] in ("wide", "small", "two-images", "turns")]
    runs = {}
    for padding_free in (False, True):
        torch.manual_seed(0)
        model, processor = load_model(tiny_plm_path, method="lora", freeze=(), lora_dropout=0.0)
        args = _args(tmp_path / str(padding_free), max_steps=2, per_device_train_batch_size=2, logging_steps=1,
                     padding_free=padding_free)
        with caplog.at_level(logging.WARNING):
            trainer = build_dpo_trainer(model, processor, pairs, args=args)
        trainer.train()
        logs = [log for log in trainer.state.log_history if "loss" in log]
        runs[padding_free] = (logs, padding_free_calls(model), trainer.args.padding_free)
    (padded, padded_calls, _), (packed, packed_calls, recorded) = runs[False], runs[True]
    assert len(padded) == 2
    for expected, got in zip(padded, packed, strict=True):
        for key in ("loss", "grad_norm", "logps/chosen", "logps/rejected", "rewards/margins"):
            assert got[key] == pytest.approx(expected[key], rel=1e-3, abs=1e-4), (key, expected, got)
    assert padded_calls == {"packed": 0, "whole": 0}
    assert packed_calls["packed"] == 4  # 2 steps x (policy + reference with the adapter off)
    assert recorded is True
    assert "padding_free with sdpa attention" in caplog.text
