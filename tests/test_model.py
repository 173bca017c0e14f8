"""load_model and parameter_groups on the tiny PLM: real steps, frozen parts, where LoRA sits, reloads."""

from __future__ import annotations

import logging
import sys

import pytest
import torch
from conftest import make_image
from transformers import AutoModelForImageTextToText

from plm_tune import PLMCollator
from plm_tune.modeling.model import enable_gradient_checkpointing, load_model, parameter_groups, part_of

LANGUAGE_LINEARS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
VISION_LINEARS = {"qkv", "proj", "fc1", "fc2"}
LRS = {"language": 1e-2, "vision": 2e-2, "projector": 3e-2}


def _batch(processor):
    samples = [
        {
            "messages": [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe it."}]},
                {"role": "assistant", "content": f"A red circle and {n} squares."},
            ],
            "images": [make_image(90, 50, seed=n)],
        }
        for n in range(2)
    ]
    return PLMCollator(processor, max_tiles=2)(samples)


def _lora_layers(model) -> dict[str, str]:
    """{module name: its last name part} for every module that holds LoRA adapters."""
    return {name: name.rsplit(".", 1)[-1] for name, m in model.named_modules() if hasattr(m, "lora_A")}


def _saved_in_full(model) -> set[str]:
    """Last name part of every module wrapped by peft's modules_to_save."""
    return {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if hasattr(m, "modules_to_save")}


FREEZES = [("vision",), ("vision", "projector"), ()]
CASES = [
    *[(method, freeze, "language") for method in ("lora", "dora") for freeze in FREEZES],
    ("lora", (), "language+vision"),
    *[("full", freeze, "language") for freeze in [*FREEZES, ("language",)]],
    ("qlora", ("vision",), "language"),
]


@pytest.mark.parametrize(("method", "freeze", "lora_targets"), CASES)
def test_training_changes_exactly_the_trainable_weights_and_the_save_reloads(
    tiny_plm_path, tmp_path, method, freeze, lora_targets
):
    torch.manual_seed(0)
    model, processor = load_model(tiny_plm_path, method=method, freeze=freeze, lora_targets=lora_targets)
    unfrozen = {"language", "vision", "projector"} - set(freeze)
    trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    assert {part_of(name) for name in trainable} == unfrozen

    # Where LoRA sits, and which parts train in full.
    if method != "full":
        lora = _lora_layers(model)
        vision_lora = lora_targets == "language+vision"
        assert all("language_model.layers." in n or "vision_tower.timm_model.blocks." in n for n in lora)
        assert not [n for n in lora if "patch_embed" in n or "lm_head" in n or "multi_modal_projector" in n]
        assert {v for n, v in lora.items() if "language_model" in n} == LANGUAGE_LINEARS
        expected_vision = VISION_LINEARS if vision_lora else set()
        assert {v for n, v in lora.items() if "vision_tower" in n} == expected_vision
        assert ("multi_modal_projector" in _saved_in_full(model)) == ("projector" in unfrozen)
        assert ("vision_tower" in _saved_in_full(model)) == ("vision" in unfrozen and not vision_lora)
    if method == "qlora":
        import bitsandbytes as bnb

        quantized = {n for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
        assert len(quantized) == 7 * model.config.text_config.num_hidden_layers
        assert all("language_model.layers." in n and n.endswith("base_layer") for n in quantized)
        base = model.get_base_model()
        kept = [m for n, m in base.named_modules() if "vision_tower" in n or "multi_modal_projector" in n]
        kept = [base.lm_head, *[m for m in kept if isinstance(m, torch.nn.Linear)]]
        assert len(kept) > 4 and all(type(m) is torch.nn.Linear for m in kept)  # Linear4bit subclasses Linear

    # A few AdamW steps, one learning rate per part.
    batch = _batch(processor)
    before = {name: param.detach().clone() for name, param in model.named_parameters()}
    groups = parameter_groups(
        model, lr=LRS["language"], vision_lr=LRS["vision"], projector_lr=LRS["projector"]
    )
    assert {g["name"]: g["lr"] for g in groups} == {part: LRS[part] for part in unfrozen}
    optimizer = torch.optim.AdamW(groups)
    model.train()
    for _ in range(3):
        loss = model(**batch).loss
        assert torch.isfinite(loss)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    for name, param in model.named_parameters():
        if name in trainable:
            assert not torch.equal(param, before[name]), f"trainable {name} did not change"
        else:
            assert torch.equal(param, before[name]), f"frozen {name} changed"

    # The saved folder gives back the same model.
    model.eval()
    model.save_pretrained(tmp_path / "out")
    if method == "full":
        reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path / "out", dtype=torch.float32)
    else:
        from peft import PeftModel

        base_kwargs = {}
        if method == "qlora":
            base_kwargs["quantization_config"] = model.base_model.model.config.quantization_config
        base = AutoModelForImageTextToText.from_pretrained(tiny_plm_path, dtype=torch.float32, **base_kwargs)
        reloaded = PeftModel.from_pretrained(base, tmp_path / "out")
    with torch.no_grad():
        expected = model(**batch).logits
        got = reloaded.eval()(**batch).logits
    # QLoRA too: the reload quantises the same float32 weights the same way, so no looser tolerance is needed.
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def _counted(forward, count, key):
    def wrapper(*args, **kwargs):
        count[key] += 1
        return forward(*args, **kwargs)

    return wrapper


@pytest.mark.parametrize("method", ["full", "lora"])
def test_gradient_checkpointing_reaches_decoder_and_vision_tower_with_equal_gradients(tiny_plm_path, method):
    grads, calls = {}, {}
    for checkpointing in (False, True):
        torch.manual_seed(0)  # same LoRA initialisation in both models
        lora = {} if method == "full" else {"lora_dropout": 0.0}  # full refuses a LoRA setting it would ignore
        model, processor = load_model(tiny_plm_path, method=method, freeze=(), gradient_checkpointing=checkpointing,
                                      **lora)
        timm_models = [m for n, m in model.named_modules() if n.endswith("timm_model")]
        decoder_layers = [m for n, m in model.named_modules() if n.endswith(("layers.0", "layers.1"))]
        assert timm_models and all(m.grad_checkpointing == checkpointing for m in timm_models)
        assert decoder_layers and all(m.gradient_checkpointing == checkpointing for m in decoder_layers)
        # A checkpointed block runs twice: once, and again in the backward pass. Counted on its attention by
        # wrapping forward (torch skips forward hooks during the recomputation; transformers checkpoints the
        # layer's class forward, so an instance wrapper on the layer itself sees only the first run).
        count = {"vision": 0, "language": 0}
        for name, module in model.named_modules():
            if name.endswith(("timm_model.blocks.0.attn", "language_model.layers.0.self_attn")):
                module.forward = _counted(module.forward, count, part_of(name))
        model.train()
        model(**_batch(processor)).loss.backward()
        calls[checkpointing] = count
        grads[checkpointing] = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert calls == {False: {"vision": 1, "language": 1}, True: {"vision": 2, "language": 2}}
    assert grads[True].keys() == grads[False].keys()
    for name, grad in grads[False].items():
        torch.testing.assert_close(grads[True][name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_enable_gradient_checkpointing_on_a_plain_model(tiny_plm_path):
    model = AutoModelForImageTextToText.from_pretrained(tiny_plm_path)
    enable_gradient_checkpointing(model)
    assert model.model.vision_tower.timm_model.grad_checkpointing
    assert all(layer.gradient_checkpointing for layer in model.model.language_model.layers)


def test_parameter_groups_on_a_plain_model_cover_every_parameter(model):
    groups = parameter_groups(model, lr=1e-4, projector_lr=1e-3, weight_decay=0.1)
    assert [(g["name"], g["lr"], g["weight_decay"]) for g in groups] == [
        ("language", 1e-4, 0.1),
        ("vision", 1e-4, 0.1),
        ("projector", 1e-3, 0.1),
    ]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    vision = {id(p) for g in groups if g["name"] == "vision" for p in g["params"]}
    assert vision == {id(p) for n, p in model.named_parameters() if n.startswith("model.vision_tower.")}


def test_dtype_defaults_to_float32_on_cpu_and_can_be_chosen_and_a_summary_is_logged(tiny_plm_path, caplog):
    with caplog.at_level(logging.INFO, logger="plm_tune.modeling.model"):
        model, _ = load_model(tiny_plm_path, method="full", freeze=("vision",))
        assert {p.dtype for p in model.parameters()} == {torch.float32}
        model, _ = load_model(tiny_plm_path, method="lora", dtype=torch.bfloat16)
        patch_embed = model.get_base_model().model.vision_tower.timm_model.patch_embed.proj
        assert patch_embed.weight.dtype == torch.bfloat16
    summaries = [r.message for r in caplog.records if r.message.startswith("Trainable parameters")]
    assert len(summaries) == 2
    assert "vision 0 (frozen)" in summaries[0] and "language 0." in summaries[0] and "(full)" in summaries[0]
    assert "(LoRA)" in summaries[1] and "projector 0." in summaries[1]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "adapter"}, "method must be one of 'lora', 'dora', 'qlora', 'full'; got 'adapter'"),
        ({"freeze": ("vision", "llm")}, "got unknown ['llm']"),
        ({"method": "full", "freeze": ("vision", "projector", "language")}, "leaves nothing to train"),
        ({"freeze": ("language",)}, "freeze cannot include 'language'"),
        ({"lora_targets": "language+vision"}, "but freeze includes 'vision'. Pass freeze=()"),
        ({"lora_targets": "vision"}, "lora_targets must be one of 'language', 'language+vision'"),
        ({"quantization_config": object()}, "Do not pass quantization_config"),
    ],
)
def test_bad_choices_fail_before_loading(kwargs, message):
    with pytest.raises(ValueError) as error:
        load_model("/nonexistent", **kwargs)
    assert message in str(error.value)


def test_qlora_without_bitsandbytes_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # what `import bitsandbytes` meets when absent
    with pytest.raises(ImportError, match=r'pip install "plm-tune\[qlora\]"'):
        load_model("/nonexistent", method="qlora")


def test_qlora_where_bitsandbytes_cannot_quantise_says_so(monkeypatch):
    import bitsandbytes as bnb

    def unsupported(*args, **kwargs):
        raise NotImplementedError("no 4-bit kernel for this device")

    monkeypatch.setattr(bnb.functional, "quantize_4bit", unsupported)
    with pytest.raises(RuntimeError, match="cannot quantise to 4-bit on cpu.*Use method='lora'"):
        load_model("/nonexistent", method="qlora")


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_on_cuda_the_default_dtype_is_bf16_and_a_step_runs(tiny_plm_path, method):
    model, processor = load_model(tiny_plm_path, method=method)
    if method == "lora":
        model.to("cuda")
        assert model.get_base_model().model.language_model.embed_tokens.weight.dtype == torch.bfloat16
    batch = {k: v.to("cuda") for k, v in _batch(processor).items()}
    optimizer = torch.optim.AdamW(parameter_groups(model, lr=1e-3))
    model.train()
    loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
