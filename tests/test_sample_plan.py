"""Plan once, build once: the collator decodes and processes each kept medium once, at its planned size, and never
decodes the media of dropped turns (``plm_tune.encoding.sample_plan``)."""

from __future__ import annotations

from collections import Counter

import pytest
from conftest import make_image
from PIL import ImageFile

import plm_tune.encoding.sample_plan
from plm_tune import PLMCollator
from plm_tune.encoding.costs import estimate_cost

ANSWER = "Random noise in many colours, with no objects, no text and no structure at all."


def _several_images(tmp_path, n_exchanges: int, later_answers: str = ANSWER) -> dict:
    """One 336 px image per exchange (a 6 x 6 grid of the tiny processor's 56 px tiles), saved as PNG files."""
    messages, images = [], []
    for i in range(n_exchanges):
        path = tmp_path / f"image{i}.png"
        make_image(336, 336, seed=i).save(path)
        images.append(str(path))
        messages += [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": f"Describe {i}."}]},
                     {"role": "assistant", "content": ANSWER if i == 0 else later_answers}]
    return {"id": "several", "messages": messages, "images": images}


@pytest.fixture
def watched(monkeypatch, processor):
    """Counts image processor calls and PNG decodes (by file name) while the real ones run."""
    calls = Counter()
    processor_class = type(processor.image_processor)
    process, load = processor_class.__call__, ImageFile.ImageFile.load

    def counted_process(self, *args, **kwargs):
        calls["processed"] += 1
        return process(self, *args, **kwargs)

    def counted_load(self):
        if getattr(self, "filename", None) and self.tile:  # tiles left to read: the pixels are read from the file now
            calls[self.filename] += 1
        return load(self)

    monkeypatch.setattr(processor_class, "__call__", counted_process)
    monkeypatch.setattr(ImageFile.ImageFile, "load", counted_load)
    return calls


def test_a_fitted_sample_processes_each_image_once_at_its_planned_budget(tmp_path, processor, watched):
    sample = _several_images(tmp_path, n_exchanges=3)
    collator = PLMCollator(processor, max_length=400, multi_image_tiles=None, fit_tiles=True)
    plan = collator.plan(sample)
    assert plan.outcome == "fitted" and plan.fit.kept_turns == 6 and sum(plan.image_tiles) < 3 * 37
    assert watched["processed"] == 0 and not any(k != "processed" for k in watched)  # planning decodes nothing

    batch = collator([sample])
    assert watched["processed"] == 3  # not once at the asked budget and again at each lower one
    assert [watched[path] for path in sample["images"]] == [1, 1, 1]
    assert batch["pixel_values"].shape[1] == sum(plan.image_tiles) and batch["input_ids"].shape[1] <= 400
    assert collator.stats["fitted_samples"] == 1 and collator.stats["tiles_removed"] == 3 * 37 - sum(plan.image_tiles)


def test_images_of_dropped_turns_are_never_decoded(tmp_path, processor, watched):
    sample = _several_images(tmp_path, n_exchanges=3, later_answers=" ".join([ANSWER] * 4))
    collator = PLMCollator(processor, max_length=300, multi_image_tiles=None, fit_tiles=True)
    plan = collator.plan(sample)
    assert plan.outcome == "truncated" and plan.fit.full_tokens > 300  # even 1 tile per image is too long

    batch = collator([sample])
    assert plan.images == (0,) and batch["pixel_values"].shape[1] == 37
    assert [watched[path] for path in sample["images"]] == [1, 0, 0]
    assert watched["processed"] == 1
    assert collator.stats["dropped_images"] == 2 and collator.stats["dropped_turns"] == 4


def test_encode_counts_nothing_and_agrees_with_the_estimate(tmp_path, processor):
    sample = _several_images(tmp_path, n_exchanges=2)
    collator = PLMCollator(processor, max_length=300, multi_image_tiles=None, fit_tiles=True)
    encoded = collator.encode(sample)
    assert dict(collator.stats) == dict.fromkeys(collator.stats.keys(), 0)
    estimate = estimate_cost(sample, collator)
    assert (estimate.tokens, estimate.tiles) == (len(encoded.input_ids), sum(t.shape[0] for t in encoded.images))


def test_the_processor_is_checked_against_the_plan_on_every_sample(monkeypatch, tmp_path, processor):
    """If plm_tune.encoding.tiling and the processor ever disagree, the sample fails loudly instead of training on
    placeholder counts that do not match the pixels."""
    sample = _several_images(tmp_path, n_exchanges=1)
    rule = plm_tune.encoding.sample_plan.image_tiles
    monkeypatch.setattr(plm_tune.encoding.sample_plan, "image_tiles", lambda *a, **k: rule(*a, **k) - 1)  # a drifted rule
    with pytest.raises(RuntimeError, match=r"images\[0\].*37 tiles.*planned 36.*plm_tune.encoding.tiling"):
        PLMCollator(processor, multi_image_tiles=None)([sample])
