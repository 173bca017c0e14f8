"""encode_pair_media_once: the vision tower runs on a pair batch's tiles and frames once, with the log-probs and
gradients of running it on every row, on the real tiny PLM and real ragged pair batches (images of different tile
counts, a video, several images, text only)."""

from __future__ import annotations

import copy

import torch
from test_preference_collator import _collator, ragged_pairs
from transformers import AutoModelForImageTextToText

from plm_tune import PLMCollator, sequence_logps
from plm_tune.modeling.padding_free import decode_padding_free, padding_free_calls
from plm_tune.modeling.pair_media import encode_pair_media_once, pair_media_calls


def _load(path):
    return AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()


def _tiles_seen(model):
    """Count the tiles / frames that reach the vision tower (a forward pre-hook on the real tower)."""
    seen = []
    model.model.vision_tower.register_forward_pre_hook(lambda _module, args: seen.append(args[0].shape[0]))
    return seen


def logps_and_grads(model, batch, prefixes=("",)):
    """Each row's answer log-prob and the gradients of their sum for the weights whose names start with one of
    ``prefixes`` (default: all)."""
    model.zero_grad()
    logps = sequence_logps(model, batch)
    logps.sum().backward()
    grads = {name: param.grad.clone() for name, param in model.named_parameters()
             if param.grad is not None and name.startswith(tuple(prefixes))}
    return logps.detach(), grads


TOWER = ("model.vision_tower", "model.multi_modal_projector")


def test_a_pair_batch_encodes_its_media_once_with_the_same_log_probs_and_gradients(tiny_plm_path, processor):
    batch = _collator(processor)(ragged_pairs())
    plain, shared = _load(tiny_plm_path), _load(tiny_plm_path)
    assert encode_pair_media_once(shared) == 1 and encode_pair_media_once(shared) == 1  # idempotent
    seen_plain, seen_shared = _tiles_seen(plain), _tiles_seen(shared)

    expected_logps, expected_grads = logps_and_grads(plain, batch, TOWER)
    logps, grads = logps_and_grads(shared, batch, TOWER)

    torch.testing.assert_close(logps, expected_logps, rtol=0, atol=1e-5)
    assert grads.keys() == expected_grads.keys() and grads
    for name, grad in grads.items():  # each shared feature's gradient: the sum over both rows, as two passes give
        torch.testing.assert_close(grad, expected_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    tiles = batch["pixel_values"].shape[1] + batch["pixel_values_videos"].shape[1]
    assert sum(seen_plain) == tiles and sum(seen_shared) == tiles // 2  # images and the video: half the work
    assert pair_media_calls(shared) == {"shared": 2, "whole": 0}


def test_other_batches_go_through_whole(tiny_plm_path, processor):
    """An SFT batch (no pair halves) and a batch whose halves differ by one pixel are encoded tile by tile."""
    model = _load(tiny_plm_path)
    encode_pair_media_once(model)
    seen = _tiles_seen(model)
    pairs = ragged_pairs()[:2]
    sft = [{"messages": pair["messages"] + pair["chosen"], "images": pair["images"], "max_tiles": pair["max_tiles"]}
           for pair in pairs]
    sft_batch = PLMCollator(processor)(sft)
    pair_batch = _collator(processor)(pairs)
    pair_batch["pixel_values"][0, -1, 0, 0, 0] += 0.5  # the last rejected tile no longer equals its chosen one
    with torch.no_grad():
        model(**{key: value for key, value in sft_batch.items() if key != "labels"})
        sequence_logps(model, pair_batch)
    assert seen == [sft_batch["pixel_values"].shape[1], pair_batch["pixel_values"].shape[1]]
    assert pair_media_calls(model) == {"shared": 0, "whole": 2}


def test_a_deep_copy_runs_the_wrapped_methods_with_its_own_weights(tiny_plm_path, processor):
    """DPO's frozen reference for full finetuning is a deepcopy: its wrapped methods (the tower once per pair, the
    decoder padding-free) must run the copy's weights."""
    batch = _collator(processor)(ragged_pairs()[:2])
    model = _load(tiny_plm_path)
    encode_pair_media_once(model)
    decode_padding_free(model)
    reference = copy.deepcopy(model)
    with torch.no_grad():
        before = sequence_logps(reference, batch)
        for param in model.model.multi_modal_projector.parameters():  # train the policy's projector a little
            param.add_(0.05)
        torch.testing.assert_close(sequence_logps(reference, batch), before, rtol=0, atol=0)
        assert not torch.allclose(sequence_logps(model, batch), before, atol=1e-3)
    assert pair_media_calls(reference)["shared"] == 2 and pair_media_calls(model)["shared"] == 1
    assert padding_free_calls(reference)["packed"] == 2 and padding_free_calls(model)["packed"] == 1
