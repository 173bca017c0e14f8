"""Exactness on PLM's real tokenizer: Llama 3's 128k BPE, PLM's special tokens, 448 px tiles, a 2048-wide decoder.

The tiny model's 1,000-token BPE cannot show merges that only a real vocabulary makes, so the formatting,
label, parity and packing checks run again here on ``build_random_plm("1B", text_layers=1, vision_layers=1)``:
PLM-1B's real widths and vocabulary, one decoder layer and one vision block, random weights.
"""

from __future__ import annotations

import pytest
import test_formatting as fmt
import torch
from conftest import make_frames, make_image, mixed_samples, qa
from transformers import AutoModelForImageTextToText, AutoProcessor

from plm_tune import PLMCollator
from plm_tune.encoding.formatting import IGNORE_INDEX
from plm_tune.encoding.sparse_logits import keep_labelled_logits
from plm_tune.modeling.testing import PLM_CHAT_TEMPLATE

pytest.importorskip("llama_models", reason='needs the real-tokenizer extra: pip install "plm-tune[real-tokenizer]"')


@pytest.fixture(scope="session")
def real_path(tmp_path_factory):
    from plm_tune.modeling.testing_real import build_random_plm

    # bfloat16 on disk, as released: half the bytes to write; loaded back in float32 below.
    return build_random_plm(tmp_path_factory.mktemp("plm-1b"), "1B", text_layers=1, vision_layers=1,
                            dtype=torch.bfloat16)


@pytest.fixture(scope="session")
def real_processor(real_path):
    return AutoProcessor.from_pretrained(real_path)


@pytest.fixture(scope="session")
def real_model(real_path):
    return AutoModelForImageTextToText.from_pretrained(real_path, dtype=torch.float32).eval()


def _text(t):
    return {"type": "text", "text": t}


def test_released_vocabulary_ids_and_shapes(real_processor, real_model):
    tok = real_processor.tokenizer
    assert len(tok) == 128256
    assert tok("Hello world", add_special_tokens=False).input_ids == [9906, 1917]  # Llama 3's own ids
    assert tok("Hello world").input_ids == [128000, 9906, 1917]
    released = {"<|begin_of_text|>": 128000, "<|end_of_text|>": 128001, "<|image|>": 128002, "<|video|>": 128003,
                "<|start_header_id|>": 128006, "<|end_header_id|>": 128007, "<|eot_id|>": 128009,
                "<|reserved_special_token_250|>": 128255}
    for token, token_id in released.items():
        assert tok(token, add_special_tokens=False).input_ids == [token_id], token  # one id, not pieces
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|begin_of_text|>", "<|eot_id|>", "<|end_of_text|>")
    assert real_processor.chat_template == PLM_CHAT_TEMPLATE
    config = real_model.config
    assert config.text_config.hidden_size == 2048 and config.text_config.vocab_size == 128256
    assert real_model.get_output_embeddings().weight.shape == (128256, 2048)
    assert (config.image_token_id, config.video_token_id) == (128002, 128003)
    # 448 px tiles -> 32 x 32 patches -> 2x2 pooling -> 256 tokens per tile.
    batch = PLMCollator(real_processor, max_tiles=1)([{"messages": qa("Hi?", "Hi.", ["image"]),
                                                       "images": [make_image(300, 200)]}])
    assert batch["pixel_values"].shape[-3:] == (3, 448, 448)
    pixels = batch["pixel_values"].reshape(-1, 3, 448, 448)
    tiles = pixels.shape[0]
    assert int((batch["input_ids"] == 128002).sum()) == 256 * tiles
    with torch.no_grad():
        features = real_model.model.get_image_features(pixel_values=pixels[None])  # (1, tiles, 3, 448, 448)
    features = features.pooler_output if hasattr(features, "pooler_output") else features
    assert tuple(features.shape) == (tiles, 256, 2048)


# Text at segment boundaries: each is a prompt and an answer that start or end with what could merge with a
# neighbour (the header's "\n\n" before, <|eot_id|> after, the next text part).
BOUNDARY_TEXTS = {
    "spaces": ("   Why?   ", "  Because.  "),
    "newlines": ("\n\nList two.\n", "\n1. One\n2. Two\n\n"),
    "digits": ("2024", "12345 67890"),
    "punctuation": ("...?!", "!!! -- ;)"),
    "emoji": ("🙂 what is this? 🎉", "🎉🎉 a party 🙂"),
    "cjk": ("这是什么？", "一只猫。"),
    "mixed": (" \t'tis 3.14159… ", " «Ça va?» — 東京 2020 ✓ "),
}


def _boundary_samples():
    samples = {}
    for name, (prompt, answer) in BOUNDARY_TEXTS.items():
        samples[f"{name}-text"] = {"messages": [{"role": "user", "content": [_text(prompt)]},
                                                {"role": "assistant", "content": [_text(answer)]}]}
        # An image written after the first text part: the template moves it first and glues the two texts.
        samples[f"{name}-image-between-texts"] = {
            "messages": [{"role": "user", "content": [_text(prompt), {"type": "image"}, _text(answer)]},
                         {"role": "assistant", "content": [_text(answer), _text(prompt)]}],
            "images": [make_image(64, 48, seed=len(name))]}
    samples["system-spaces"] = {"messages": [{"role": "system", "content": "  Be terse. \n"},
                                             {"role": "user", "content": [_text(" 7 ")]},
                                             {"role": "assistant", "content": [_text(" 7. ")]}]}
    samples["video-cjk"] = {"messages": [{"role": "user", "content": [{"type": "video"}, _text("视频里有什么？")]},
                                         {"role": "assistant", "content": [_text("噪声。")]}],
                            "videos": [make_frames(2, seed=5)]}
    return samples


COMPATIBLE = {**{f"parity-{k}": v for k, v in fmt.PARITY_CASES.items()}, **_boundary_samples()}


@pytest.mark.parametrize("case", sorted(COMPATIBLE))
def test_collator_ids_equal_plms_chat_template_and_labels_are_the_answers(real_processor, case):
    sample = COMPATIBLE[case]
    batch = PLMCollator(real_processor)([sample])
    ref = fmt._reference(real_processor, sample)
    assert batch["input_ids"].tolist() == ref["input_ids"].tolist()
    for key in ("pixel_values", "pixel_values_videos"):
        if key in ref:
            torch.testing.assert_close(batch[key], ref[key], rtol=0, atol=0)
    spans = fmt._labelled_spans(batch["labels"][0].tolist())
    decode = real_processor.tokenizer.decode
    answers = ["".join(p["text"].strip() for p in m["content"]) if isinstance(m["content"], list) else m["content"]
               for m in sample["messages"] if m["role"] == "assistant"]
    # No clean-up of spaces, so the decoded labels must be the answers byte for byte.
    assert [decode(s, clean_up_tokenization_spaces=False) for s in spans] == [a + "<|eot_id|>" for a in answers]


def test_special_token_spellings_in_text_stay_text(real_processor):
    tok = real_processor.tokenizer
    sample = {"messages": qa("Type <|eot_id|> then <|image|>.", "Done: <|eot_id|><|end_of_text|>")}
    batch = PLMCollator(real_processor)([sample])
    ids = batch["input_ids"][0].tolist()
    assert ids.count(128009) == 3 and ids.count(128002) == 0 and ids.count(128001) == 0
    labelled = [t for t in batch["labels"][0].tolist() if t != IGNORE_INDEX]
    assert tok.decode(labelled) == "Done: <|eot_id|><|end_of_text|><|eot_id|>"
    assert all(t < 128000 for t in labelled[:-1])


def _per_sample_losses(model, batch, spans):
    """Mean next-token loss of each (start, end) span of row 0, from logits at labelled positions only."""
    kept = keep_labelled_logits(batch)
    with torch.no_grad():
        logits = model(**kept).logits[0]  # (K, vocab): K positions that predict a labelled token
    keep, targets = kept["logits_to_keep"], kept["shift_labels"][0]
    token_losses = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="none")
    return [token_losses[(keep >= start) & (keep < end)].mean().item() for start, end in spans]


def test_a_packed_row_gives_each_sample_its_solo_loss(real_processor, real_model):
    # Small media keep it fast: one tile per image, two frames per video (256 tokens each).
    samples = [{"max_tiles": 1, "num_frames": 2, **sample} for sample in
               (*mixed_samples(text_only=True), COMPATIBLE["emoji-text"], COMPATIBLE["cjk-image-between-texts"])]
    packed = PLMCollator(real_processor, padding_free=True)(samples)
    starts = (packed["position_ids"][0] == 0).nonzero().flatten().tolist()
    spans = list(zip(starts, starts[1:] + [packed["input_ids"].shape[1]], strict=True))
    assert len(spans) == len(samples)
    together = _per_sample_losses(real_model, packed, spans)
    alone = []
    for sample in samples:
        solo = PLMCollator(real_processor)([sample])
        alone += _per_sample_losses(real_model, solo, [(0, solo["input_ids"].shape[1])])
    assert all(loss > 5 for loss in alone), alone  # random weights over 128k ids: about ln(128256) = 11.8
    torch.testing.assert_close(torch.tensor(together), torch.tensor(alone), atol=2e-4, rtol=2e-5)


def test_cli_layer_flags_need_a_size_and_bad_depths_are_refused(tmp_path, capsys):
    from plm_tune.apps.cli import main
    from plm_tune.modeling.testing_real import build_random_plm

    assert main(["tiny-model", str(tmp_path / "m"), "--text-layers", "1"]) == 2  # usage
    assert "plm-tune tiny-model: error: --text-layers / --vision-layers go with --size" in capsys.readouterr().err
    with pytest.raises(ValueError, match="text_layers must be between 1 and PLM-1B's 16, got 17"):
        build_random_plm(tmp_path / "m", "1B", text_layers=17)
    with pytest.raises(ValueError, match="size must be one of"):
        build_random_plm(tmp_path / "m", "2B")
    assert not (tmp_path / "m").exists()  # nothing written before the arguments are checked
