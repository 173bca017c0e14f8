"""Logits only where labels are set: ``keep_labelled_logits`` gives the full-logits loss and gradients on the tiny
PLM, on K positions; training through ``build_trainer`` projects only the labelled positions on a CPU (TRL's fused
LM head on request) and logs the full-logits loss, token accuracy and entropy either way."""

from __future__ import annotations

import pytest
import torch
from conftest import make_image, mixed_samples, qa
from transformers import AutoModelForImageTextToText, TrainerCallback
from trl import SFTConfig

from plm_tune import ModelArguments, PLMCollator, build_trainer
from plm_tune.encoding.formatting import IGNORE_INDEX
from plm_tune.encoding.sparse_logits import keep_labelled_logits, labelled_positions, project_labelled_only


def _some_parameters(model):
    """One parameter each of the LM head, the decoder, the projector and the vision tower."""
    picked = {}
    for name, param in model.named_parameters():
        for part in ("lm_head", "language_model.layers.0", "multi_modal_projector", "vision_tower"):
            if part in name and part not in picked and param.requires_grad:
                picked[part] = param
    assert len(picked) == 4, picked.keys()
    return list(picked.values())


def test_labelled_positions_is_the_union_of_next_token_labels():
    labels = torch.tensor([[-100, -100, 5, 6], [-100, 7, -100, -100]])
    keep, shift = labelled_positions(labels)
    assert keep.tolist() == [0, 1, 2]
    assert shift.tolist() == [[-100, 5, 6], [7, -100, -100]]


@pytest.mark.parametrize("train_on", ["assistant", "all"])
def test_same_loss_and_gradients_as_full_logits(processor, model, train_on):
    batch = PLMCollator(processor, train_on=train_on)(mixed_samples())
    params = _some_parameters(model)

    full = model(**batch)
    full_grads = torch.autograd.grad(full.loss, params)
    sparse = model(**keep_labelled_logits(batch))
    sparse_grads = torch.autograd.grad(sparse.loss, params)

    assert torch.isfinite(full.loss)
    assert abs(sparse.loss.item() - full.loss.item()) < 1e-6
    for full_grad, sparse_grad in zip(full_grads, sparse_grads, strict=True):
        assert full_grad.abs().max() > 0
        torch.testing.assert_close(sparse_grad, full_grad, atol=1e-5, rtol=1e-5)


def test_logits_cover_only_the_labelled_positions(processor, model):
    # Image-heavy: four images of up to 16 tiles + thumbnail each (multi_image_tiles=None: tiled as single images,
    # not the default one plain tile each), answers of a few tokens.
    samples = [
        {"messages": qa("Describe.", "Noise.", ["image"] * 4), "max_tiles": 16,
         "images": [make_image(400, 300, seed=4 * s + i) for i in range(4)]}
        for s in range(2)
    ]
    batch = PLMCollator(processor, labelled_logits_only=True, multi_image_tiles=None)(samples)
    labels = batch["labels"]
    expected = sorted({t for row in labels.tolist() for t in range(len(row) - 1) if row[t + 1] != IGNORE_INDEX})

    with torch.no_grad():
        out = model(**batch)

    seq_len = labels.shape[1]
    assert batch["logits_to_keep"].tolist() == expected
    assert out.logits.shape == (2, len(expected), model.config.text_config.vocab_size)
    assert len(expected) * 20 < seq_len, (len(expected), seq_len)
    print(f"\nK={len(expected)} labelled next-token positions of seq_len={seq_len}")


def test_project_labelled_only_gives_the_full_logits_at_each_labelled_pair(processor, model):
    batch = PLMCollator(processor)(mixed_samples())
    labels = batch["labels"]
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    with torch.no_grad():
        full = model(**inputs).logits
        with project_labelled_only(model, labels) as targets:
            sparse = model(**inputs, logits_to_keep=0).logits
        after = model(**inputs).logits  # the hook is gone
    rows, positions = (labels[:, 1:] != IGNORE_INDEX).nonzero(as_tuple=True)
    assert sparse.shape == (1, len(rows), full.shape[-1]) and len(rows) < 0.5 * labels.numel()
    torch.testing.assert_close(sparse[0], full[rows, positions], atol=1e-5, rtol=1e-5)
    assert targets.tolist() == labels[rows, positions + 1].tolist()
    assert after.shape == full.shape


class _Logs(TrainerCallback):
    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs or {}))


def _full_logits_loss(outputs, labels, num_items_in_batch=None):
    """The model's own loss on its full ``(batch, seq_len, vocab)`` logits."""
    vocab = outputs.logits.shape[-1]
    return torch.nn.functional.cross_entropy(
        outputs.logits[:, :-1].reshape(-1, vocab).float(), labels[:, 1:].reshape(-1),
        ignore_index=IGNORE_INDEX, reduction="sum",
    ) / (num_items_in_batch if num_items_in_batch is not None else (labels[:, 1:] != IGNORE_INDEX).sum())


def _train(tiny_plm_path, processor, tmp_path, mode: str):
    """3 steps; mode: "labelled" (plm-tune's labelled-only logits), "fused" (TRL's fused LM head), "full"."""
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_pretrained(tiny_plm_path, dtype=torch.float32)
    args = SFTConfig(
        output_dir=str(tmp_path / mode), per_device_train_batch_size=2, max_steps=3,
        learning_rate=1e-3, logging_steps=1, save_strategy="no", report_to="none", bf16=False, max_length=None,
        dataloader_num_workers=0, seed=0, disable_tqdm=True,
    )
    logs = _Logs()
    labelled_logits_loss = {"labelled": None, "fused": False, "full": False}[mode]
    trainer = build_trainer(model, processor, mixed_samples(), args=args, callbacks=[logs],
                            model_args=ModelArguments(labelled_logits_loss=labelled_logits_loss))
    lm_head_rows = []
    model.lm_head.register_forward_hook(lambda module, inputs, output: lm_head_rows.append(output.shape[:-1]))
    if mode == "full":
        trainer.compute_loss_func = _full_logits_loss  # TRL's route for a custom loss: the model's full logits
    trainer.train()
    return [entry for entry in logs.logs if "loss" in entry], lm_head_rows


def test_trainer_never_builds_full_logits_and_logs_the_full_logits_loss(tiny_plm_path, processor, tmp_path):
    """On a CPU the default projects only the labelled positions (TRL's fused head would score them all, in tiles);
    every route logs the same loss and token accuracy."""
    labelled, labelled_rows = _train(tiny_plm_path, processor, tmp_path, "labelled")
    fused, fused_rows = _train(tiny_plm_path, processor, tmp_path, "fused")
    full, full_rows = _train(tiny_plm_path, processor, tmp_path, "full")

    assert fused_rows == []  # TRL's fused head projects in tiles, not through lm_head
    # lm_head rows per batch: one row of the labelled (row, position) pairs only, versus every position of the batch.
    assert len(labelled_rows) == len(full_rows) == 3
    for (rows, positions), (full_batch, full_positions) in zip(labelled_rows, full_rows, strict=True):
        assert rows == 1 and 0 < positions < 0.2 * full_batch * full_positions, (labelled_rows, full_rows)
    assert len(labelled) == len(fused) == len(full) == 3
    for a, b, c in zip(labelled, fused, full, strict=True):
        assert abs(a["loss"] - c["loss"]) < 1e-5 and abs(b["loss"] - c["loss"]) < 1e-5, (a, b, c)
        for key in ("mean_token_accuracy", "entropy"):
            assert a[key] == pytest.approx(c[key], abs=1e-5), key
            assert b[key] == pytest.approx(c[key], abs=1e-5), key
        assert a["num_tokens"] == b["num_tokens"]


def test_build_trainer_refuses_a_labelled_logits_only_collator(processor, model, tmp_path):
    collator = PLMCollator(processor, labelled_logits_only=True)
    args = SFTConfig(output_dir=str(tmp_path), bf16=False, report_to="none")
    with pytest.raises(ValueError, match="labelled_logits_only"):
        build_trainer(model, processor, mixed_samples(), args=args, collator=collator)
