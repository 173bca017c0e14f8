"""PLM's released architectures, and what a memory estimate reads off them.

``plm_config("1B" | "3B" | "8B")`` builds the real PLM architectures as ``PerceptionLMConfig``s (the layout of
``facebook/Perception-LM-*``: Llama-3.2-1B / 3B or Llama-3.1-8B decoders, PE-Core-L14 or PE-Core-G14 towers at
448 px, 2x2 pooling, vocabulary 128256). Instantiated on the meta device they hold exactly the parameters the
Hub checkpoints' safetensors metadata report (1,533,524,992 / 3,516,753,920 / 9,794,260,736). ``read_arch`` reads
what ``plm_tune.modeling.memory.estimate_memory`` counts (parameters per part, LoRA linears, widths) off such an instance.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any, Literal

import torch

__all__ = ["Arch", "PLM_SIZES", "count_parameters", "plm_config", "read_arch"]

PLM_SIZES = ("1B", "3B", "8B")

# The decoder and tower of each released PLM. Text: Llama 3.2 1B / 3B (tied embeddings) and Llama 3.1 8B.
# Vision: PE-Core-L14 (1024 wide, 23 blocks, CLS token) for 1B / 3B, PE-Core-G14 (1536 wide, 47 blocks, no
# CLS) for 8B, both with LayerScale and run at 448 px (32 x 32 patches, 256 tokens per tile after 2x2 pooling).
_PLM_ARCHS: dict[str, dict[str, Any]] = {
    "1B": {"hidden": 2048, "layers": 16, "heads": 32, "kv_heads": 8, "intermediate": 8192, "tie": True,
           "vision": "vit_pe_core_large_patch14_336", "vision_width": 1024, "vision_depth": 23, "cls": True},
    "3B": {"hidden": 3072, "layers": 28, "heads": 24, "kv_heads": 8, "intermediate": 8192, "tie": True,
           "vision": "vit_pe_core_large_patch14_336", "vision_width": 1024, "vision_depth": 23, "cls": True},
    "8B": {"hidden": 4096, "layers": 32, "heads": 32, "kv_heads": 8, "intermediate": 14336, "tie": False,
           "vision": "vit_pe_core_gigantic_patch14_448", "vision_width": 1536, "vision_depth": 47, "cls": False},
}


def plm_config(size: Literal["1B", "3B", "8B"]) -> Any:
    """The real architecture of PLM-1B, -3B or -8B as a ``PerceptionLMConfig`` (no download, no weights).

    Args:
        size: ``"1B"``, ``"3B"`` or ``"8B"``.

    Returns:
        A ``PerceptionLMConfig``; ``PerceptionLMForConditionalGeneration(config)`` is the model at random init.

    Raises:
        ValueError: an unknown size.

    Example:
        >>> config = plm_config("1B")
        >>> config.text_config.hidden_size, config.vision_config.model_args["depth"]
        (2048, 23)
    """
    from transformers import LlamaConfig, PerceptionLMConfig, TimmWrapperConfig

    if size not in _PLM_ARCHS:
        raise ValueError(f"size must be one of {', '.join(PLM_SIZES)}, got {size!r}.")
    arch = _PLM_ARCHS[size]
    tile, patch = 448, 14
    vision = TimmWrapperConfig(
        architecture=arch["vision"],
        do_pooling=False,
        model_args={
            "embed_dim": arch["vision_width"],
            "depth": arch["vision_depth"],
            "img_size": (tile, tile),
            "global_pool": "",
            "use_post_transformer_norm": False,
            "init_values": 0.1,
            "ref_feat_shape": (tile // patch, tile // patch),
        },
    )
    text = LlamaConfig(
        hidden_size=arch["hidden"],
        intermediate_size=arch["intermediate"],
        num_attention_heads=arch["heads"],
        num_key_value_heads=arch["kv_heads"],
        num_hidden_layers=arch["layers"],
        vocab_size=128256,
        max_position_embeddings=11520,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        bos_token_id=128000,
        eos_token_id=[128001, 128009],
        tie_word_embeddings=arch["tie"],
    )
    return PerceptionLMConfig(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        vision_use_cls_token=arch["cls"],
        projector_pooling_ratio=2,
        image_token_id=128002,
        video_token_id=128003,
    )


@dataclass(frozen=True)
class Arch:
    """What the estimate needs to know of one architecture, read off a meta-device instance."""

    params: dict[str, int]  # per part: vision / projector / language (tied weights once)
    matmul_params: dict[str, int]  # per part: weights and biases of linears and convolutions (lm_head included)
    lora_linears: dict[str, tuple[tuple[int, int], ...]]  # per part: (in, out) of each LoRA-targeted linear
    quantized: int  # parameters QLoRA stores in 4 bit (the decoder layers' linears)
    hidden: int
    layers: int
    heads: int
    attention: int  # query and attention-output width (heads x head dim)
    kv: int  # key / value width (kv heads x head dim)
    intermediate: int
    vocab: int
    tied: bool  # lm_head is the embedding matrix (1B, 3B)
    vision_width: int
    vision_depth: int
    vision_mlp: int
    vision_heads: int
    tile_tokens: int  # tokens per tile inside the tower (patches + CLS)
    patches: int  # patch tokens per tile fed to the projector
    tile_size: int


def count_parameters(arch: Any) -> dict[str, int]:
    """Parameters per part (``vision``, ``projector``, ``language``) and ``total`` of a PLM architecture.

    Args:
        arch: ``"1B"`` / ``"3B"`` / ``"8B"``, a ``PerceptionLMConfig``, or a local PLM folder.

    Returns:
        ``{"vision": ..., "projector": ..., "language": ..., "total": ...}`` (tied embeddings counted once),
        counted on a meta-device instance: nothing is allocated.
    """
    info = read_arch(arch)
    return {**info.params, "total": sum(info.params.values())}


def _resolve_config(arch: Any) -> Any:
    if isinstance(arch, str) and arch in _PLM_ARCHS:
        return plm_config(arch)
    if isinstance(arch, str):
        from pathlib import Path

        if not (Path(arch) / "config.json").is_file():
            raise ValueError(f"arch {arch!r} is neither one of {', '.join(PLM_SIZES)} nor a folder with a "
                             "config.json; pass a size, a PerceptionLMConfig or a local PLM folder.")
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(arch)
    if getattr(arch, "model_type", None) != "perception_lm":
        raise ValueError(f"arch must be a PLM size, folder or PerceptionLMConfig; got {type(arch).__name__}.")
    return arch


def _config_key(arch: Any) -> str:
    return _resolve_config(arch).to_json_string(use_diff=False)


@functools.lru_cache(maxsize=16)
def _arch_of(config_json: str) -> Arch:
    """Instantiate the model on the meta device (no memory, ~0.3 s) and read its shapes."""
    from transformers import PerceptionLMConfig, PerceptionLMForConditionalGeneration

    from plm_tune.modeling.model import LORA_LINEARS, part_of

    config = PerceptionLMConfig.from_dict(__import__("json").loads(config_json))
    with torch.device("meta"):
        model = PerceptionLMForConditionalGeneration(config)
    model.tie_weights()  # tying happens at load time; here it makes tied weights count once
    params = dict.fromkeys(("vision", "projector", "language"), 0)
    for name, param in model.named_parameters():
        params[part_of(name)] += param.numel()
    lora = {part: [] for part in LORA_LINEARS}
    quantized = 0
    matmul = dict.fromkeys(params, 0)
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            matmul[part_of(name)] += sum(p.numel() for p in module.parameters(recurse=False))
        if not isinstance(module, torch.nn.Linear):
            continue
        for part, pattern in LORA_LINEARS.items():
            if re.fullmatch(pattern, name):
                lora[part].append((module.in_features, module.out_features))
        if name.startswith("model.language_model.layers."):
            quantized += module.weight.numel()
    text = config.text_config
    timm = model.model.vision_tower.timm_model
    block = timm.blocks[0]
    grid = timm.patch_embed.grid_size
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return Arch(
        params=params,
        matmul_params=matmul,
        lora_linears={part: tuple(v) for part, v in lora.items()},
        quantized=quantized,
        hidden=text.hidden_size,
        layers=text.num_hidden_layers,
        heads=text.num_attention_heads,
        attention=text.num_attention_heads * head_dim,
        kv=text.num_key_value_heads * head_dim,
        intermediate=text.intermediate_size,
        vocab=text.vocab_size,
        tied=model.get_output_embeddings().weight is model.get_input_embeddings().weight,
        vision_width=timm.embed_dim,
        vision_depth=len(timm.blocks),
        vision_mlp=block.mlp.fc1.out_features,
        vision_heads=block.attn.num_heads,
        tile_tokens=grid[0] * grid[1] + timm.num_prefix_tokens,
        patches=grid[0] * grid[1],
        tile_size=grid[0] * timm.patch_embed.patch_size[0],
    )


def read_arch(arch: Any) -> Arch:
    """What the memory estimate needs of ``arch`` (a size, a ``PerceptionLMConfig`` or a local folder), cached."""
    return _arch_of(_config_key(arch))
