"""Peak training memory of PLM, from the architecture alone: weights, gradients, optimizer states, activations.

``plm_config("1B" | "3B" | "8B")`` builds the real PLM architectures as ``PerceptionLMConfig``s (the layout of
``facebook/Perception-LM-*``: Llama-3.2-1B / 3B or Llama-3.1-8B decoders, PE-Core-L14 or PE-Core-G14 towers at
448 px, 2x2 pooling, vocabulary 128256). Instantiated on the meta device they hold exactly the parameters the
Hub checkpoints' safetensors metadata report (1,533,524,992 / 3,516,753,920 / 9,794,260,736).

``estimate_memory`` counts bytes per component. Activations are the tensors autograd saves for the backward
pass, enumerated op by op for transformers' Llama decoder layer (sdpa attention) and timm's Eva block (the PE
tower); which of them are saved depends on what trains (a frozen linear saves its weight, not its input), on
the dtype (RMSNorm keeps a float32 copy of a bf16 input) and on LoRA (peft casts a bf16 input to the float32
adapter dtype). The counts were checked against ``torch.autograd.graph.saved_tensors_hooks`` on CPU and the
total against the measured peak RSS of a training step (``benchmarks/plan_memory.py``, ``tests/test_plan.py``).

Peak = weights + optimizer states + the largest of (activations + logits and loss, gradients, the transient
of a frozen vision tower's forward) + overhead: during a step the saved activations and the loss tensors are
alive together at the start of the backward pass; gradients of a full finetune fill up as activations are
freed; optimizer states persist from the first step on.

Example:
    >>> estimate = estimate_memory("3B", "lora", batch_size=4, seq_len=4096, tiles_per_sample=5)  # doctest: +SKIP
    >>> print(estimate)                                                                              # doctest: +SKIP
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any, Literal

import torch

__all__ = ["MemoryEstimate", "PLM_SIZES", "estimate_memory", "plm_config", "count_parameters"]

PLM_SIZES = ("1B", "3B", "8B")
Optimizer = Literal["adamw", "adamw_8bit"]

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
class _Arch:
    """What the estimate needs to know of one architecture, read off a meta-device instance."""

    params: dict[str, int]  # per part: vision / projector / language (tied weights once)
    lora_linears: dict[str, tuple[tuple[int, int], ...]]  # per part: (in, out) of each LoRA-targeted linear
    quantized: int  # parameters QLoRA stores in 4 bit (the decoder layers' linears)
    hidden: int
    layers: int
    heads: int
    kv: int  # key / value width (kv heads x head dim)
    intermediate: int
    vocab: int
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
    info = _arch(_config_key(arch))
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
def _arch(config_json: str) -> _Arch:
    """Instantiate the model on the meta device (no memory, ~0.3 s) and read its shapes."""
    from transformers import PerceptionLMConfig, PerceptionLMForConditionalGeneration

    from plm_tune.model import LORA_LINEARS, part_of

    config = PerceptionLMConfig.from_dict(__import__("json").loads(config_json))
    with torch.device("meta"):
        model = PerceptionLMForConditionalGeneration(config)
    model.tie_weights()  # tying happens at load time; here it makes tied weights count once
    params = dict.fromkeys(("vision", "projector", "language"), 0)
    for name, param in model.named_parameters():
        params[part_of(name)] += param.numel()
    lora = {part: [] for part in LORA_LINEARS}
    quantized = 0
    for name, module in model.named_modules():
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
    return _Arch(
        params=params,
        lora_linears={part: tuple(v) for part, v in lora.items()},
        quantized=quantized,
        hidden=text.hidden_size,
        layers=text.num_hidden_layers,
        heads=text.num_attention_heads,
        kv=text.num_key_value_heads * head_dim,
        intermediate=text.intermediate_size,
        vocab=text.vocab_size,
        vision_width=timm.embed_dim,
        vision_depth=len(timm.blocks),
        vision_mlp=block.mlp.fc1.out_features,
        vision_heads=block.attn.num_heads,
        tile_tokens=grid[0] * grid[1] + timm.num_prefix_tokens,
        patches=grid[0] * grid[1],
        tile_size=grid[0] * timm.patch_embed.patch_size[0],
    )


_GIB = 1024**3


@dataclass
class MemoryEstimate:
    """Estimated peak memory of one training step, in bytes, by component.

    ``peak`` = ``weights + optimizer + max(activations_text + activations_vision + logits, gradients,
    vision_transient) + overhead``.
    """

    weights: int  # every parameter, adapters and modules_to_save copies included
    gradients: int  # of the trainable parameters
    optimizer: int  # AdamW's two moments
    activations_text: int  # saved for backward by the decoder (+ the batch's ids, labels, mask)
    activations_vision: int  # saved by the tower and projector (+ the pixel tensors)
    logits: int  # logits, their float32 log-softmax and its gradient at the start of the backward
    vision_transient: int  # a frozen tower's forward working set (saves nothing, but allocates)
    overhead: int  # device context (CUDA), 0 on CPU
    trainable_params: int
    total_params: int

    @property
    def peak(self) -> int:
        """Estimated peak bytes of a training step (from the second step on, once optimizer states exist)."""
        step = max(self.activations_text + self.activations_vision + self.logits, self.gradients,
                   self.vision_transient)
        return self.weights + self.optimizer + step + self.overhead

    def breakdown(self) -> dict[str, int]:
        """Every byte component by name, plus ``peak``."""
        return {f.name: getattr(self, f.name) for f in fields(self) if not f.name.endswith("params")} | {
            "peak": self.peak}

    def __str__(self) -> str:
        parts = ", ".join(f"{k} {v / _GIB:.2f}" for k, v in self.breakdown().items() if k != "peak")
        return f"peak {self.peak / _GIB:.2f} GiB ({parts})"


def estimate_memory(
    arch: Any,
    method: Literal["lora", "dora", "qlora", "full"] = "lora",
    *,
    batch_size: int = 1,
    seq_len: int,
    tiles_per_sample: float = 0,
    frames_per_sample: float = 0,
    gradient_checkpointing: bool = False,
    dtype: torch.dtype = torch.bfloat16,
    freeze: Iterable[str] = ("vision",),
    lora_r: int = 16,
    lora_dropout: float = 0.0,
    lora_targets: str = "language",
    optimizer: Optimizer = "adamw",
    logit_tokens: int | None = None,
    fused_lm_head: bool = False,
    device: Literal["cuda", "cpu"] = "cuda",
) -> MemoryEstimate:
    """Estimate the peak memory of one training step of PLM (forward, backward, optimizer step).

    Args:
        arch: ``"1B"`` / ``"3B"`` / ``"8B"`` (``plm_config``), a ``PerceptionLMConfig`` or a local PLM folder.
        method: as ``plm_tune.load_model``: ``"lora"``, ``"dora"``, ``"qlora"`` or ``"full"``.
        batch_size: rows per step (per device).
        seq_len: tokens per row after padding (the longest sample of the batch; with padding-free packing,
            ``batch_size=1`` and the batch's total tokens).
        tiles_per_sample, frames_per_sample: image tiles (thumbnails included) and video frames per row; the
            tower sees ``batch_size * (tiles + frames)`` crops.
        gradient_checkpointing: as ``load_model``: decoder layers and vision blocks recompute in backward.
        dtype: the weights' and activations' dtype (``load_model``: bfloat16 on a bf16 GPU, float32 on CPU).
        freeze: parts that do not train (``"vision"``, ``"projector"``, ``"language"``).
        lora_r, lora_dropout, lora_targets: as ``load_model`` (``lora_dropout > 0`` saves a dropped copy of each
            adapted linear's input).
        optimizer: ``"adamw"`` (two moments in the parameter's dtype, as ``torch.optim.AdamW``) or
            ``"adamw_8bit"`` (bitsandbytes, 2 bytes per parameter).
        logit_tokens: positions projected onto the vocabulary (default ``batch_size * seq_len``: a plain
            ``model(**batch).loss``; the labelled positions with ``build_trainer`` off CUDA, which keeps only those).
        fused_lm_head: TRL's fused LM head (``build_trainer`` on CUDA): ``logit_tokens`` are scored in tiles of at
            most 4096 positions x 32768 vocabulary entries, a float32 buffer in the forward and one in the
            backward (TRL 1.16's kernel constants; estimated from its code, not measured).
        device: ``"cuda"`` adds the CUDA context (about 0.5 GiB, assumed, not measured here); ``"cpu"`` adds none.

    Returns:
        A ``MemoryEstimate`` with the breakdown and ``.peak``.

    Raises:
        ValueError: an unknown method, part or optimizer, or a non-positive batch / sequence.

    Accuracy against the measured peak RSS of CPU steps in float32 (``benchmarks/plan_memory.py``): within
    2.3% on an 18M-parameter PLM (32k vocabulary) and within 6% on a 160M one (448 px tiles) for LoRA and full
    finetuning, except full finetuning with checkpointing on the 160M one, 10.6% under (its gradients and the
    recomputed layer overlap more than ``peak`` assumes); the 0.2M tiny model is within 21% (tens of MiB). DoRA, QLoRA, LoRA on the vision
    tower and the bf16 / CUDA path follow the same counting but were not measured here.
    """
    from plm_tune.model import METHODS, PARTS

    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}.")
    frozen = {freeze} if isinstance(freeze, str) else set(freeze)
    if frozen - set(PARTS):
        raise ValueError(f"freeze takes parts among {', '.join(PARTS)}; got {sorted(frozen - set(PARTS))}.")
    if optimizer not in ("adamw", "adamw_8bit"):
        raise ValueError(f"optimizer must be 'adamw' or 'adamw_8bit', got {optimizer!r}.")
    if batch_size < 1 or seq_len < 1:
        raise ValueError(f"batch_size and seq_len must be positive, got {batch_size} and {seq_len}.")
    a = _arch(_config_key(arch))
    d = torch.finfo(dtype).bits // 8  # weight / activation bytes
    lora = method != "full"
    adapted = set(lora_targets.split("+")) if lora else set()
    trains = {part: part not in frozen for part in PARTS}

    # ---- parameters: weights, gradients, optimizer states
    adapters = sum(lora_r * (i + o) + (o if method == "dora" else 0)
                   for part in adapted for i, o in a.lora_linears[part])
    full_parts = [p for p in PARTS if trains[p] and p not in adapted] if lora else [p for p in PARTS if trains[p]]
    full_trained = sum(a.params[p] for p in full_parts)
    if method == "qlora":
        # NF4 with double quantisation: 4 bits + an 8-bit absmax per 64 + a float32 per 256 absmaxes. peft's
        # prepare_model_for_kbit_training upcasts every other weight (embeddings, lm_head, tower) to float32.
        nf4 = a.quantized * (0.5 + 1 / 64 + 4 / (64 * 256))
        weights = int(nf4) + 4 * (sum(a.params.values()) - a.quantized) + 4 * (adapters + full_trained)
        trained_bytes = 4 * (adapters + full_trained)
    elif lora:
        # peft keeps adapters in float32; modules_to_save trains a copy of each fully trained part.
        weights = d * sum(a.params.values()) + 4 * adapters + d * full_trained
        trained_bytes = 4 * adapters + d * full_trained
    else:
        weights = d * sum(a.params.values())
        trained_bytes = d * full_trained
    trainable = adapters + full_trained
    gradients = trained_bytes
    states = 2 * trainable if optimizer == "adamw_8bit" else 2 * trained_bytes

    # ---- activations: bytes autograd saves, per token
    ad = 4 if method == "qlora" else d  # QLoRA's residual stream is float32 (upcast embeddings and norms)
    rows, tokens = batch_size, batch_size * seq_len
    lang_weights_train = trains["language"] and not lora
    h, kv, i = a.hidden, a.kv, a.intermediate
    norm = 4 * h + 4 + (ad * h if lang_weights_train else 0)  # float32 input copy, rsqrt, normalised input
    layer = 2 * norm + ad * (2 * h + 2 * kv) + 4 * a.heads + 3 * ad * i  # + q, k, v, attention out, lse, MLP
    if lang_weights_train:
        layer += ad * (2 * h + i)  # inputs of q/k/v, gate/up and down (o's is the attention output)
    if "language" in adapted:
        layer += 4 * lora_r * 7 + _adapter_inputs(h, i, ad, lora_dropout)
        if method == "dora":
            layer += 2 * ad * (3 * h + 2 * kv + 2 * i)  # base and adapter outputs rescaled by the magnitude
    head = 4 * h + 4 + (2 * ad * h if lang_weights_train else 0)  # final norm (+ lm_head's input)
    inputs = 3 * 8 * tokens  # input_ids, labels, attention_mask (int64)
    mask = rows * seq_len * seq_len  # sdpa's boolean 4D mask, when rows are padded
    if gradient_checkpointing:
        text = tokens * (a.layers * ad * h + layer + head)  # each layer's input, one layer recomputed
    else:
        text = tokens * (a.layers * layer + head)
    activations_text = text + inputs + mask

    crops = batch_size * (tiles_per_sample + frames_per_sample)
    vtok = crops * a.tile_tokens
    w, m = a.vision_width, a.vision_mlp
    block = ad * (13 * w + 2 * m) + 4 * ad + 4 * a.vision_heads  # LN x2, qkv, rope, sdpa, proj, MLP, LayerScale
    if "vision" in adapted:
        block += 4 * lora_r * 4 + _adapter_inputs(w, m, ad, lora_dropout, linears=(2 * w, m))
    pixels = int(crops * 3 * a.tile_size**2 * d)
    tower_trains = trains["vision"]
    if tower_trains:
        tower = vtok * ((a.vision_depth * ad * w + block) if gradient_checkpointing else a.vision_depth * block)
        tower += vtok * ad * w  # pre-norm and patch embedding outputs
    else:
        tower = 0
    patches = crops * a.patches
    if trains["projector"]:
        projector = patches * ad * (w + 3 * h)  # linear_1 input, GELU input and output, pooling input
    elif tower_trains:
        projector = patches * ad * 2 * h
    else:
        projector = 0
    activations_vision = int(tower + projector) + pixels
    vision_transient = 0 if tower_trains else int(vtok * block + pixels)

    # ---- logits: (tokens, vocab) logits, their float32 log-softmax and its gradient alive at once
    positions = tokens if logit_tokens is None else logit_tokens
    logits = 12 * positions * a.vocab
    if fused_lm_head:
        logits = 2 * 4 * min(positions, 4096) * min(a.vocab, 32768)

    overhead = _GIB // 2 if device == "cuda" else 0
    return MemoryEstimate(
        weights=int(weights), gradients=int(gradients), optimizer=int(states),
        activations_text=int(activations_text), activations_vision=activations_vision, logits=int(logits),
        vision_transient=vision_transient, overhead=overhead,
        trainable_params=int(trainable), total_params=sum(a.params.values()),
    )


def _adapter_inputs(h: int, i: int, d: int, dropout: float, linears: tuple[int, int] | None = None) -> int:
    """Bytes per token peft's LoRA adds to a layer for the adapters' inputs.

    Inputs of the adapted linears: q / k / v / o / gate / up (width ``h``, six of them) and down (``i``).
    With dropout each adapter saves its dropped float32 input and a boolean mask; without, a bf16 input is
    cast to the float32 adapter dtype (a copy per adapter); a float32 input is shared with the frozen base.
    """
    wide, narrow = linears if linears is not None else (6 * h, i)
    if dropout > 0:
        return 5 * (wide + narrow)
    if d != 4:
        return 4 * (wide + narrow)
    return 4 * (2 * h + i)  # the shared float32 inputs: attention input, MLP input, down's input
