"""An offline, random-init PLM with PLM's real architecture families, tokenizer roles and chat template.

No machine here reaches the Hugging Face Hub, so tests, benchmarks and the offline demo use a tiny PLM built
locally and saved with ``save_pretrained``. It is loaded through the very same ``from_pretrained`` path as
``facebook/Perception-LM-1B``:

    >>> path = build_tiny_plm("/tmp/tiny-plm")                        # doctest: +SKIP
    >>> model = AutoModelForImageTextToText.from_pretrained(path)     # doctest: +SKIP
    >>> processor = AutoProcessor.from_pretrained(path)               # doctest: +SKIP

What is real: the timm Perception Encoder ViT (``vit_pe_core_large_patch14_336``, as in PLM-1B/3B, with a CLS
token, RoPE and no pooling head), the 2-layer MLP projector with 2x2 pooling, a Llama decoder with Llama-3
RoPE scaling, PLM's special tokens at the same relative ids, and PLM's chat template verbatim.
What is shrunk: widths, depths, the tile size (56 px: 4x4 patches -> 2x2 = 4 tokens per tile instead of 256),
and the vocabulary (a byte-level BPE trained here with Llama 3's pre-tokenizer on a small built-in corpus).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from plm_tune.encoding.formatting import DEFAULT_SYSTEM_PROMPT as PLM_DEFAULT_SYSTEM_PROMPT

__all__ = ["TINY_BUILD", "TINY_PRESETS", "build_tiny_plm", "tiny_plm_build", "PLM_CHAT_TEMPLATE", "PLM_SPECIAL_TOKENS",
           "PLM_DEFAULT_SYSTEM_PROMPT"]

# PLM's chat template exactly as transformers' convert_perception_lm_weights_to_hf.py writes it.
PLM_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "    {%- set system_message = messages[0]['content']|trim %}\n"
    "    {%- set messages = messages[1:] %}\n"
    "{%- else %}"
    "    {%- set system_message = '" + PLM_DEFAULT_SYSTEM_PROMPT + "' %}"
    "{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{{- system_message }}"
    "{{- '<|eot_id|>' }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{%- for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<|image|>' }}"
    "{%- endfor %}"
    "{%- for content in message['content'] | selectattr('type', 'equalto', 'video') %}"
    "{{ '<|video|>' }}"
    "{%- endfor %}"
    "{%- for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{- content['text'] | trim }}"
    "{%- endfor %}"
    "{{'<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}"
)

# PLM's 256 special tokens in PLM's order, appended after the BPE vocabulary (so ids keep PLM's offsets:
# begin_of_text + 0, end_of_text + 1, image + 2, video + 3, start_header + 6, end_header + 7, eot + 9).
PLM_SPECIAL_TOKENS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|image|>",
    "<|video|>",
    "<|reserved_special_token_2|>",
    "<|reserved_special_token_3|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|reserved_special_token_4|>",
    "<|eot_id|>",
] + [f"<|reserved_special_token_{i}|>" for i in range(5, 256 - 5)]

# Llama 3's pre-tokenizer split pattern (tiktoken cl100k style).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)

# A small corpus so the BPE learns common words of our tests, demo and prompts (not needed for correctness).
_CORPUS = [
    PLM_DEFAULT_SYSTEM_PROMPT,
    "You are an expert radiographer. Describe accurately what you see in this image.",
    "Describe the image. What is in the video? What colour is the shape? How many objects are there?",
    "A red circle, a green square, a blue triangle, a yellow star, a purple cross on a white background.",
    "Frontal chest radiograph. CT of the abdomen. MR of the brain. Ultrasound of the heart. Nuclear medicine.",
    "The lungs are clear. No pleural effusion or pneumothorax. The heart size is normal. Fracture of the rib.",
    "left right upper lower small large top bottom middle centre center one two three four five six 0123456789",
    "The answer is yes. The answer is no. A person walks, runs, jumps and sits in a room, outside, at night.",
    # The synthetic answers as an answer starts (no leading space): one token each, as in Llama 3's vocabulary.
    # Otherwise "red" is 2 tokens and "blue" 3 here, and a random model's summed log-probs favour the shorter
    # word by ~7 nats whatever the image (the preference demo's base would rank answers by length).
    "red\ngreen\nblue\nyellow\ncircle\nsquare\ntriangle\nleft\nright\nup\ndown",
]


def _train_tokenizer(vocab_size: int):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return tokenizer


def plm_tokenizer(raw: Any) -> Any:
    """Wrap a ``tokenizers.Tokenizer`` that holds PLM's special tokens the way PLM's converted tokenizer is wrapped.

    Shared by ``build_tiny_plm`` and ``plm_tune.modeling.testing_real.build_random_plm``: the roles (bos, eos, pad,
    image / video tokens), the bos-prepending post-processor and the released context length.
    """
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    bos_id = raw.token_to_id("<|begin_of_text|>")
    # As in PLM's converted tokenizer: plain encoding prepends <|begin_of_text|>; chat templates add it themselves.
    raw.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(
            single="<|begin_of_text|> $A",
            pair="<|begin_of_text|>:0 $A:0 <|begin_of_text|>:1 $B:1",
            special_tokens=[("<|begin_of_text|>", bos_id)],
        ),
    ])
    return PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|end_of_text|>",
        model_input_names=["input_ids", "attention_mask"],
        model_max_length=11520,
        # PLM's config says True, which transformers ignores for BPE tokenizers, with a warning on every load.
        clean_up_tokenization_spaces=False,
        extra_special_tokens={"image_token": "<|image|>", "video_token": "<|video|>"},
    )


def _build_tokenizer(vocab_size: int):
    from tokenizers import AddedToken

    raw = _train_tokenizer(vocab_size)
    raw.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in PLM_SPECIAL_TOKENS])
    return plm_tokenizer(raw)


def save_random_model(config: Any, tokenizer: Any, out: Path, seed: int, dtype: Any = None) -> None:
    """Instantiate ``config`` at random init (seeded), set PLM's greedy generation defaults, save safetensors.

    ``dtype`` (e.g. ``torch.bfloat16``, the released checkpoints' dtype) casts the weights before saving.
    """
    import torch
    from transformers import PerceptionLMForConditionalGeneration

    torch.manual_seed(seed)
    model = PerceptionLMForConditionalGeneration(config).eval()
    if dtype is not None:
        model = model.to(dtype)
    eos_ids = [tokenizer.convert_tokens_to_ids(t) for t in ("<|end_of_text|>", "<|eot_id|>")]
    model.generation_config.do_sample = False
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = eos_ids
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)  # safetensors


def save_plm_processor(out: Path, tokenizer: Any, tile_size: int) -> None:
    """Save PLM's processor (thumb+tile images up to 36 tiles, [-1, 1] pixels, patch 14, 2x2 pooling) to ``out``."""
    from transformers import PerceptionLMImageProcessor, PerceptionLMProcessor, PerceptionLMVideoProcessor

    square = {"height": tile_size, "width": tile_size}
    image_processor = PerceptionLMImageProcessor(
        vision_input_type="thumb+tile",
        tile_size=tile_size,
        max_num_tiles=36,
        size=square,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    video_processor = PerceptionLMVideoProcessor(size=square, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    processor = PerceptionLMProcessor(
        image_processor=image_processor,
        video_processor=video_processor,
        tokenizer=tokenizer,
        patch_size=14,
        pooling_ratio=2,
        chat_template=PLM_CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)


# Named sizes for build_tiny_plm. "test" (the defaults) is the fastest and what tests and the CPU demos use;
# "learner" is the smallest size found (sweeping tile size, vision width / depth, text width / depth) at
# which the whole pipeline learns synthetic_shapes' circle-versus-square with the vision tower trained:
# 112 px tiles (16 tokens each) and a 64-wide tower. Wider text or deeper towers did not help.
TINY_PRESETS: dict[str, dict[str, int]] = {
    "test": {},
    "learner": {"tile_size": 112, "vision_width": 64},
}

# What build_tiny_plm writes changes now and then (2: the answer words of the synthetic data are one token each, as
# in Llama 3's vocabulary); each build records it with its arguments in TINY_RECORD, so a demo's cached folder built
# by an older plm-tune is found and rebuilt (plm_tune.apps.finetune.build_tiny_if_asked) instead of silently used.
TINY_BUILD = 2
TINY_RECORD = "plm_tune_tiny.json"


def build_tiny_plm(
    path: str | Path,
    seed: int = 0,
    *,
    tile_size: int = 56,
    vision_width: int = 32,
    vision_depth: int = 2,
    text_hidden: int = 64,
    text_layers: int = 2,
    bpe_vocab: int = 1000,
    vision_init_values: float = 0.1,
) -> Path:
    """Write a random-init ``PerceptionLMForConditionalGeneration`` and ``PerceptionLMProcessor`` to ``path``.

    Args:
        path: output folder (created). Load it with ``AutoModelForImageTextToText.from_pretrained(path)``
            and ``AutoProcessor.from_pretrained(path)``.
        seed: weights and everything else are a pure function of the arguments (same seed, same bytes).
        tile_size: tile / frame side in pixels, a multiple of 28 (patch 14, 2x2 pooling).
        vision_width, vision_depth: PE ViT width and depth.
        text_hidden, text_layers: Llama decoder width and depth.
        bpe_vocab: BPE vocabulary size before PLM's 256 special tokens.
        vision_init_values: initial LayerScale of the vision blocks (timm's ``init_values``); small values keep
            a random tower close to its patch embedding, larger ones let it mix patches from the start.

    Returns:
        ``Path(path)``.
    """
    from transformers import LlamaConfig, PerceptionLMConfig, TimmWrapperConfig

    if tile_size % 28:
        raise ValueError(f"tile_size must be a multiple of 28 (patch 14 x pooling 2), got {tile_size}.")
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = _build_tokenizer(bpe_vocab)
    eos_ids = [tokenizer.convert_tokens_to_ids(t) for t in ("<|end_of_text|>", "<|eot_id|>")]
    patch = 14
    grid = tile_size // patch
    vision_config = TimmWrapperConfig(
        architecture="vit_pe_core_large_patch14_336",
        do_pooling=False,
        model_args={
            "embed_dim": vision_width,
            "depth": vision_depth,
            "num_heads": 2,
            "img_size": (tile_size, tile_size),
            "global_pool": "",
            "use_post_transformer_norm": False,
            "init_values": vision_init_values,
            "ref_feat_shape": (grid, grid),
        },
    )
    text_config = LlamaConfig(
        hidden_size=text_hidden,
        intermediate_size=text_hidden * 2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_hidden_layers=text_layers,
        vocab_size=len(tokenizer),
        rms_norm_eps=1e-5,
        max_position_embeddings=11520,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos_ids,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    config = PerceptionLMConfig(
        vision_config=vision_config.to_dict(),
        text_config=text_config.to_dict(),
        vision_use_cls_token=True,
        projector_pooling_ratio=2,
        image_token_id=tokenizer.convert_tokens_to_ids("<|image|>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<|video|>"),
    )
    save_random_model(config, tokenizer, out, seed)
    save_plm_processor(out, tokenizer, tile_size)
    arguments = dict(seed=seed, tile_size=tile_size, vision_width=vision_width, vision_depth=vision_depth,
                     text_hidden=text_hidden, text_layers=text_layers, bpe_vocab=bpe_vocab,
                     vision_init_values=vision_init_values)
    (out / TINY_RECORD).write_text(json.dumps({"build": TINY_BUILD, "arguments": arguments}, indent=2) + "\n")
    return out


def tiny_plm_build(path: str | Path) -> dict[str, Any] | None:
    """What ``build_tiny_plm`` recorded in the folder at ``path`` (``{"build", "arguments"}``); None when the folder
    holds no record (not built by it, or by a plm-tune from before ``TINY_BUILD`` 2)."""
    record = Path(path) / TINY_RECORD
    if not record.is_file():
        return None
    return json.loads(record.read_text())
