"""The offline tiny PLM: real architecture families, PLM's tokens and template, deterministic, small."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from plm_tune.modeling.testing import PLM_CHAT_TEMPLATE, build_tiny_plm


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_loads_through_the_auto_classes_like_the_real_checkpoint(tiny_plm_path):
    model = AutoModelForImageTextToText.from_pretrained(tiny_plm_path)
    processor = AutoProcessor.from_pretrained(tiny_plm_path)
    assert type(model).__name__ == "PerceptionLMForConditionalGeneration"
    assert type(processor).__name__ == "PerceptionLMProcessor"
    # The timm Perception Encoder and a Llama decoder, as in PLM-1B/3B.
    assert model.config.vision_config.architecture.startswith("vit_pe_core_")
    assert type(model.model.vision_tower.timm_model).__name__ == "Eva"
    assert model.config.text_config.model_type == "llama"
    assert model.config.projector_pooling_ratio == 2 and model.config.vision_use_cls_token
    assert (tiny_plm_path / "model.safetensors").exists()
    assert not list(tiny_plm_path.glob("*.bin"))  # safetensors only


def test_tokenizer_has_plms_special_tokens_with_their_roles(processor, tiny_plm_path):
    tok = processor.tokenizer
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|begin_of_text|>", "<|end_of_text|>", "<|image|>",
                                                     "<|video|>", "<|start_header_id|>", "<|end_header_id|>",
                                                     "<|eot_id|>")}
    base = ids["<|begin_of_text|>"]
    # Same relative layout as Llama 3 / PLM (128000, 128001, 128002, 128003, 128006, 128007, 128009).
    assert [v - base for v in ids.values()] == [0, 1, 2, 3, 6, 7, 9]
    assert tok.bos_token == "<|begin_of_text|>"
    assert tok.eos_token == "<|eot_id|>"
    assert tok.pad_token == "<|end_of_text|>"
    assert processor.image_token_id == ids["<|image|>"] and processor.video_token_id == ids["<|video|>"]
    model = AutoModelForImageTextToText.from_pretrained(tiny_plm_path)
    assert model.config.image_token_id == ids["<|image|>"]
    assert model.config.video_token_id == ids["<|video|>"]
    assert set(model.generation_config.eos_token_id) == {ids["<|end_of_text|>"], ids["<|eot_id|>"]}
    assert processor.chat_template == PLM_CHAT_TEMPLATE


def test_chat_template_is_the_conversion_scripts(processor):
    """Spot-check the rendering against what PLM's template is documented to produce."""
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "text", "text": " Hi "}]}], tokenize=False, add_generation_prompt=True
    )
    assert text == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "You are a helpful language and vision assistant. You are able to understand the visual content that the "
        "user provides, and assist the user with a variety of tasks using natural language.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_same_seed_same_bytes_other_seed_other_weights(tmp_path):
    a = build_tiny_plm(tmp_path / "a", seed=0)
    b = build_tiny_plm(tmp_path / "b", seed=0)
    c = build_tiny_plm(tmp_path / "c", seed=1)
    assert _digest(a) == _digest(b)
    assert _digest(a)["model.safetensors"] != _digest(c)["model.safetensors"]
    assert _digest(a)["tokenizer.json"] == _digest(c)["tokenizer.json"]
    size = sum(p.stat().st_size for p in a.iterdir())
    assert size < 3 * 1024 * 1024, f"tiny model is {size / 1e6:.1f} MB"


def test_forward_backward_with_image(processor, tiny_plm_path):
    from conftest import make_image

    model = AutoModelForImageTextToText.from_pretrained(tiny_plm_path)
    inputs = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image", "image": make_image(80, 60)},
                                      {"type": "text", "text": "Describe."}]}],
        tokenize=True, return_dict=True, return_tensors="pt",
    )
    out = model(**inputs, labels=inputs["input_ids"])
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert inputs["pixel_values"].shape[-1] == 56  # the small tile size


def test_cli_writes_a_loadable_model(tmp_path):
    result = subprocess.run([sys.executable, "-m", "plm_tune.apps.cli", "tiny-model", str(tmp_path / "m")],
                            capture_output=True, text=True, check=True)
    assert "Wrote a tiny random-init PLM" in result.stdout
    AutoModelForImageTextToText.from_pretrained(tmp_path / "m")


def test_a_demo_rebuilds_a_tiny_plm_of_an_older_build_and_warns_about_one_without_a_record(tmp_path, caplog):
    """build_tiny_if_asked: missing -> built; recorded by an older build -> rebuilt in place with the same
    arguments; no record (a folder from before the record, or made by hand) -> used as it is, with a warning."""
    import json
    import logging

    from transformers import TrainingArguments

    from plm_tune.apps.finetune import build_tiny_if_asked
    from plm_tune.arguments import ModelArguments
    from plm_tune.modeling.testing import TINY_BUILD, TINY_RECORD, tiny_plm_build

    training = TrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none")
    path = tmp_path / "tiny-plm"
    asked = ModelArguments(model_name_or_path=str(path), build_tiny_if_missing=True)
    build_tiny_if_asked(asked, training)
    assert tiny_plm_build(path) == {"build": TINY_BUILD, "arguments": json.loads(
        (path / TINY_RECORD).read_text())["arguments"]}
    fresh = _digest(path)
    assert fresh == _digest(build_tiny_plm(tmp_path / "again", seed=0))  # the record is part of the same bytes

    record = json.loads((path / TINY_RECORD).read_text())
    (path / TINY_RECORD).write_text(json.dumps({**record, "build": TINY_BUILD - 1}))
    (path / "tokenizer.json").write_text("{}")  # what an older build wrote differs
    with caplog.at_level(logging.WARNING):
        build_tiny_if_asked(asked, training)
    assert f"Rebuilding the tiny PLM at {path}" in caplog.text
    assert _digest(path) == fresh

    caplog.clear()
    (path / TINY_RECORD).unlink()
    (path / "tokenizer.json").write_text("{}")
    with caplog.at_level(logging.WARNING):
        build_tiny_if_asked(asked, training)
    assert "holds no record of how it was built" in caplog.text and "Delete the folder to rebuild it" in caplog.text
    assert (path / "tokenizer.json").read_text() == "{}"  # not ours to replace
