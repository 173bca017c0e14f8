"""Peak training memory of PLM, from the architecture alone: weights, gradients, optimizer states, activations.

``plm_config("1B" | "3B" | "8B")`` builds the real PLM architectures as ``PerceptionLMConfig``s (the layout of
``facebook/Perception-LM-*``: Llama-3.2-1B / 3B or Llama-3.1-8B decoders, PE-Core-L14 or PE-Core-G14 towers at
448 px, 2x2 pooling, vocabulary 128256). Instantiated on the meta device they hold exactly the parameters the
Hub checkpoints' safetensors metadata report (1,533,524,992 / 3,516,753,920 / 9,794,260,736); they live in
``plm_tune/modeling/architecture.py``, re-exported here.

``estimate_memory`` counts bytes per component, in the dtypes the run uses: frozen weights in the load dtype,
trained ones (and their gradients and AdamW states) in float32, activations in the autocast dtype. Activations
are the tensors autograd saves for the backward pass, enumerated op by op for transformers' Llama decoder layer
(sdpa attention) and timm's Eva block (the PE tower); which of them are saved depends on what trains (a frozen
linear saves its weight, not its input), on the dtypes (RMSNorm keeps a float32 copy of a bf16 input; a trained
embedding makes the residual stream float32; autocast casts a float32 input once per linear and keeps a bf16
copy of each trained weight) and on LoRA (peft casts an adapter's input to float32, autocast back to bf16). The
counts were checked against ``torch.autograd.graph.saved_tensors_hooks`` on CPU and the total against the
measured peak RSS of training steps (``benchmarks/plan_memory.py``, ``tests/test_plan.py``).

Peak = weights + optimizer states + the largest of (activations + the LM head's loss tensors, gradients, the
transient of a frozen vision tower's forward) + overhead: during a step the saved activations and the loss
tensors are alive together at the start of the backward pass; gradients of a full finetune fill up as
activations are freed; optimizer states persist from the first step on.

Example:
    >>> estimate = estimate_memory("3B", "lora", batch_size=4, seq_len=4096, tiles_per_sample=5)  # doctest: +SKIP
    >>> print(estimate)                                                                              # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any, Literal

import torch

from plm_tune.arguments import ModelArguments
from plm_tune.methods import Method
from plm_tune.modeling.architecture import PLM_SIZES, count_parameters, plm_config, read_arch

__all__ = ["MemoryEstimate", "PLM_SIZES", "estimate_memory", "plm_config", "count_parameters"]

# The architectures live in architecture.py; re-exported here, where plan and the docs have always named them.

_GIB = 1024**3
Optimizer = Literal["adamw", "adamw_8bit"]
_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


@dataclass
class MemoryEstimate:
    """Estimated peak memory of one training step, in bytes, by component.

    ``peak`` = ``weights + optimizer + max(activations_text + activations_vision + weight_copies + max(logits,
    recomputed), gradients, gradients - embedding_gradient + recomputed, vision_transient) + overhead``: the
    saved activations and the loss tensors are alive together at the start of the backward pass; gradients fill
    up as activations are freed; a checkpointed layer is rebuilt once the loss tensors are gone, the last one
    next to every gradient but the embedding's, which comes last.
    """

    weights: int  # every parameter, adapters and modules_to_save copies included
    gradients: int  # of the trainable parameters (float32), + a tied embedding's second one (see estimate_memory)
    optimizer: int  # AdamW's two moments
    activations_text: int  # saved for backward by the decoder (+ the batch's ids, labels, mask)
    activations_vision: int  # saved by the tower and projector (+ the pixel tensors)
    weight_copies: int  # autocast's copies of weights in another dtype than it computes in, saved for backward
    logits: int  # the LM head's loss tensors, + the float32 gradient of a trained LM head from its backward on
    recomputed: int  # with gradient checkpointing: one decoder layer (or trained vision block) rebuilt in backward
    embedding_gradient: int  # a trained embedding's float32 gradient, the backward's last one
    vision_transient: int  # a frozen tower's forward working set (saves nothing, but allocates)
    overhead: int  # device context (CUDA), 0 on CPU
    trainable_params: int
    total_params: int
    precision: str = ""  # the dtypes counted, e.g. "weights bf16 (frozen) / fp32 (trained), autocast bf16"

    @property
    def peak(self) -> int:
        """Estimated peak bytes of a training step (from the second step on, once optimizer states exist)."""
        saved = self.activations_text + self.activations_vision + self.weight_copies
        step = max(saved + max(self.logits, self.recomputed), self.gradients,
                   self.gradients - self.embedding_gradient + self.recomputed, self.vision_transient)
        return self.weights + self.optimizer + step + self.overhead

    def breakdown(self) -> dict[str, int]:
        """Every byte component by name, plus ``peak`` (``embedding_gradient`` is a part of ``gradients``)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if not f.name.endswith("params")
                and f.name not in ("precision", "embedding_gradient")} | {"peak": self.peak}

    def __str__(self) -> str:
        parts = ", ".join(f"{k} {v / _GIB:.2f}" for k, v in self.breakdown().items() if k != "peak")
        return f"peak {self.peak / _GIB:.2f} GiB ({parts}; {self.precision})"


def estimate_memory(
    arch: Any,
    method: Method = "lora",
    *,
    batch_size: int = 1,
    seq_len: int,
    tiles_per_sample: float = 0,
    frames_per_sample: float = 0,
    rows_per_media: int = 1,
    gradient_checkpointing: bool = False,
    dtype: torch.dtype = torch.bfloat16,
    autocast: torch.dtype | None = torch.bfloat16,
    freeze: Iterable[str] = tuple(ModelArguments().freeze),
    lora_r: int = ModelArguments.lora_r,
    lora_dropout: float = ModelArguments.lora_dropout,
    lora_targets: str = ModelArguments.lora_targets,
    optimizer: Optimizer = "adamw",
    logit_tokens: int | None = None,
    fused_lm_head: bool = False,
    device: Literal["cuda", "cpu"] = "cuda",
) -> MemoryEstimate:
    """Estimate the peak memory of one training step of PLM (forward, backward, optimizer step).

    The dtypes are the run's (outside DeepSpeed): frozen weights stay in ``dtype`` (QLoRA: 4-bit decoder linears,
    everything else frozen in bfloat16, its compute dtype); trained weights (LoRA / DoRA adapters, parts trained
    in full) are float32, and so are their gradients and AdamW states; with ``autocast`` (the Trainer's
    ``bf16=True``) linears, convolutions and attention compute in bfloat16 while norms keep float32 statistics.

    Args:
        arch: ``"1B"`` / ``"3B"`` / ``"8B"`` (``plm_config``), a ``PerceptionLMConfig`` or a local PLM folder.
        method: as ``plm_tune.load_model``: ``"lora"``, ``"dora"``, ``"qlora"`` or ``"full"``.
        batch_size: rows per step (per device).
        seq_len: tokens per row after padding (the longest sample of the batch; with padding-free packing,
            ``batch_size=1`` and the batch's total tokens).
        tiles_per_sample, frames_per_sample: image tiles (thumbnails included) and video frames per row; the
            tower sees ``batch_size * (tiles + frames)`` crops.
        rows_per_media: rows that carry the same tiles and frames, which the tower encodes once: 2 for DPO's
            pairs (chosen and rejected, ``plm_tune.modeling.pair_media``), whose pixels are still in the batch twice.
        gradient_checkpointing: as ``load_model``: decoder layers and vision blocks recompute in backward.
        dtype: the load dtype of the frozen weights and the pixels (``plm_tune.modeling.model.default_dtype()``: bfloat16
            on a bf16 GPU, float32 on CPU).
        autocast: the dtype the Trainer's autocast computes in (``bf16=True``: ``torch.bfloat16``), or None
            (``bf16=False``): every tensor then follows the weights' dtype.
        freeze: parts that do not train (``"vision"``, ``"projector"``, ``"language"``).
        lora_r, lora_dropout, lora_targets: as ``load_model`` (``lora_dropout > 0`` saves a dropped copy of each
            adapted linear's input).
        optimizer: ``"adamw"`` (two float32 moments, as ``torch.optim.AdamW``) or ``"adamw_8bit"``
            (bitsandbytes, 2 bytes per parameter).
        logit_tokens: positions projected onto the vocabulary (default ``batch_size * seq_len``: a plain
            ``model(**batch).loss``; the labelled positions with ``build_trainer``, which scores only those).
        fused_lm_head: TRL's fused LM head (``build_trainer`` on CUDA): ``logit_tokens`` are scored in tiles of
            at most 4096 positions x 32768 vocabulary entries in the compute dtype, with float32 gradient buffers
            for the hidden states and, when the LM head trains, for its whole ``[vocab, hidden]`` weight (TRL
            1.16's ``ChunkedLogProbFunction``; counted from its code, not measured).
        device: ``"cuda"`` adds the CUDA context (about 0.5 GiB, assumed, not measured here); ``"cpu"`` adds none,
            but counts the float32 buffer in which torch's CPU bf16 matmul computes a trained LM head's gradient
            (measured on a CPU without native bf16).

    Returns:
        A ``MemoryEstimate`` with the breakdown, ``.peak`` and ``.precision`` (the dtypes counted).

    Raises:
        ValueError: an unknown method, part or optimizer, or a non-positive batch / sequence.

    Accuracy against the measured peak RSS of two CPU steps (``benchmarks/plan_memory.py``), LoRA and full
    finetuning with and without checkpointing: in float32, within 1.9% on an 18M-parameter PLM (32k vocabulary)
    and 1.5% on a 160M one (448 px tiles), 9% on the 0.2M tiny model (tens of MiB); in a bf16 GPU's dtypes (bf16
    frozen weights, float32 trained ones, bf16 autocast; ``--bf16``), within 3.4% on the 18M one. DoRA, QLoRA,
    LoRA on the vision tower, the fused LM head and CUDA's own autocast rules (LayerNorm in float32, which only the
    vision tower has) follow the same counting but were not measured here.
    """
    frozen = {freeze} if isinstance(freeze, str) else set(freeze)
    _check_choices(method, frozen, optimizer, batch_size, seq_len)
    if rows_per_media < 1 or batch_size % rows_per_media:
        raise ValueError(f"estimate_memory: rows_per_media={rows_per_media} must be at least 1 and divide "
                         f"batch_size={batch_size} (a pair batch has 2 rows per pair).")
    crops = batch_size * (tiles_per_sample + frames_per_sample)
    run = _run(read_arch(arch), method, frozen, batch_size=batch_size, seq_len=seq_len,
               crops=crops / rows_per_media, pixel_crops=crops, gradient_checkpointing=gradient_checkpointing,
               dtype=dtype, autocast=autocast, lora_r=lora_r, lora_dropout=lora_dropout, lora_targets=lora_targets,
               logit_tokens=logit_tokens, fused_lm_head=fused_lm_head, device=device)
    weights, gradients, states, trainable, total = _parameter_bytes(run, optimizer)
    activations_text, recomputed_layer = _text_activations(run)
    activations_vision, vision_transient, recomputed_block = _vision_activations(run)
    return MemoryEstimate(
        weights=int(weights), gradients=int(gradients), optimizer=int(states),
        activations_text=int(activations_text), activations_vision=activations_vision,
        weight_copies=int(_weight_copies(run)), logits=int(_loss_bytes(run)),
        recomputed=int(max(recomputed_layer, recomputed_block)),
        embedding_gradient=4 * run.arch.vocab * run.arch.hidden if run.lang_full else 0,
        vision_transient=vision_transient, overhead=_GIB // 2 if device == "cuda" else 0,
        trainable_params=int(trainable), total_params=total,
        precision=_precision(method, dtype, autocast),
    )


def _check_choices(method: str, frozen: set[str], optimizer: str, batch_size: int, seq_len: int) -> None:
    """Refuse an unknown method, part or optimizer, or a non-positive batch / sequence (ValueError)."""
    from plm_tune.methods import METHODS
    from plm_tune.modeling.model import PARTS

    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}.")
    if frozen - set(PARTS):
        raise ValueError(f"freeze takes parts among {', '.join(PARTS)}; got {sorted(frozen - set(PARTS))}.")
    if optimizer not in ("adamw", "adamw_8bit"):
        raise ValueError(f"optimizer must be 'adamw' or 'adamw_8bit', got {optimizer!r}.")
    if batch_size < 1 or seq_len < 1:
        raise ValueError(f"batch_size and seq_len must be positive, got {batch_size} and {seq_len}.")


@dataclass(frozen=True)
class _Run:
    """What the counting needs to know of a run, derived once from ``estimate_memory``'s arguments.

    The byte sizes per element, named as in the formulas below: ``d`` frozen weights (QLoRA's unquantised ones
    are in its bf16 compute dtype); ``r`` the decoder's residual stream, in the embedding's dtype (a trained
    embedding is float32, and adding a bf16 output to it stays float32); ``c`` what matmuls and attention
    return; ``lora_in`` what an adapter saves of its input (peft casts it to float32, autocast back).
    """

    arch: Any  # plm_tune.modeling.architecture.Arch
    method: str
    adapted: frozenset[str]  # parts with LoRA / DoRA adapters
    trains: dict[str, bool]  # part -> whether it trains (adapted or in full)
    full_parts: tuple[str, ...]  # parts trained in full
    lang_full: bool  # the embedding, every decoder weight and the LM head train
    d: int
    r: int
    c: int
    lora_in: int
    autocast: bool
    rows: int
    seq_len: int
    crops: float  # tiles + frames the tower sees in one step
    pixel_crops: float  # tiles + frames in the batch's pixel tensors (a pair's twice, encoded once)
    positions: int  # positions projected onto the vocabulary
    gradient_checkpointing: bool
    lora_r: int
    lora_dropout: float
    fused_lm_head: bool
    device: str


def _run(arch: Any, method: str, frozen: set[str], *, batch_size: int, seq_len: int, crops: float, pixel_crops: float,
         gradient_checkpointing: bool, dtype: torch.dtype, autocast: torch.dtype | None, lora_r: int,
         lora_dropout: float, lora_targets: str, logit_tokens: int | None, fused_lm_head: bool, device: str) -> _Run:
    """The ``_Run`` of ``estimate_memory``'s (checked) arguments."""
    from plm_tune.modeling.model import PARTS

    lora = method != "full"
    adapted = frozenset(lora_targets.split("+")) if lora else frozenset()
    trains = {part: part not in frozen for part in PARTS}
    full_parts = tuple(p for p in PARTS if trains[p] and p not in adapted)
    lang_full = "language" in full_parts
    d = 2 if method == "qlora" else torch.finfo(dtype).bits // 8
    r = 4 if lang_full else d
    c = torch.finfo(autocast).bits // 8 if autocast is not None else r
    return _Run(arch=arch, method=method, adapted=adapted, trains=trains, full_parts=full_parts, lang_full=lang_full,
                d=d, r=r, c=c, lora_in=c if autocast is not None else 4, autocast=autocast is not None,
                rows=batch_size, seq_len=seq_len, crops=crops, pixel_crops=pixel_crops,
                positions=batch_size * seq_len if logit_tokens is None else logit_tokens,
                gradient_checkpointing=gradient_checkpointing, lora_r=lora_r, lora_dropout=lora_dropout,
                fused_lm_head=fused_lm_head, device=device)


def _parameter_bytes(run: _Run, optimizer: Optimizer) -> tuple[float, int, int, int, int]:
    """Weights, gradients and optimizer-state bytes, and the trainable and total parameter counts."""
    a, d = run.arch, run.d
    adapters = sum(run.lora_r * (i + o) + (o if run.method == "dora" else 0)
                   for part in run.adapted for i, o in a.lora_linears[part])
    full_trained = sum(a.params[p] for p in run.full_parts)
    total = sum(a.params.values())
    if run.method == "qlora":
        # NF4 with double quantisation: 4 bits + an 8-bit absmax per 64 + a float32 per 256 absmaxes.
        nf4 = a.quantized * (0.5 + 1 / 64 + 4 / (64 * 256))
        weights = int(nf4) + d * (total - a.quantized) + 4 * (adapters + full_trained)
    elif run.method != "full":
        # modules_to_save keeps the frozen original of a fully trained part next to its float32 trained copy.
        weights = d * total + 4 * (adapters + full_trained)
    else:
        weights = d * (total - full_trained) + 4 * full_trained
    trainable = adapters + full_trained
    gradients = 4 * trainable
    if run.lang_full and a.tied:
        # The tied matrix gets a gradient from the LM head early in the backward and one from the embedding at
        # its end; autograd sums the two there: a second float32 [vocab, hidden] next to every other gradient.
        gradients += 4 * a.vocab * a.hidden
    states = 2 * trainable if optimizer == "adamw_8bit" else 8 * trainable
    return weights, gradients, states, trainable, total


def _decoder_layer_bytes(run: _Run) -> int:
    """Bytes per token that one decoder layer saves for backward (without the attention mask)."""
    a, r, c = run.arch, run.r, run.c
    h, q, kv, i = a.hidden, a.attention, a.kv, a.intermediate
    norm = 4 * h + 4 + (r * h if run.lang_full else 0)  # float32 input copy, rsqrt (+ normalised input, for its weight)
    layer = 2 * norm + c * (2 * q + 2 * kv) + 4 * a.heads + 3 * c * i  # + q, k, v, attention out, lse, MLP
    if run.lang_full:
        # Each trained linear saves its input: one tensor per group (q/k/v; gate/up) when the norm output is
        # already in the compute dtype, else autocast casts a copy for each linear. Then down's input.
        layer += (2 * c * h if r == c else 5 * c * h) + c * i
    if "language" in run.adapted:
        layer += _adapter_inputs(a.lora_linears["language"], a.layers, shared=2 * h + i, saved=run.lora_in,
                                 copies=run.autocast or r != 4, dropout=run.lora_dropout, rank=run.lora_r)
        if run.method == "dora":
            layer += 2 * c * sum(o for _, o in a.lora_linears["language"]) // a.layers  # base and adapter outputs
    return layer


def _text_activations(run: _Run) -> tuple[int, int]:
    """What the decoder saves for backward (+ the batch's ids, labels, mask), and with gradient checkpointing the
    bytes of the one layer rebuilt in backward (else 0)."""
    a, r, c = run.arch, run.r, run.c
    h = a.hidden
    tokens = run.rows * run.seq_len
    layer = _decoder_layer_bytes(run)
    head = 4 * h + 4 + (r * h if run.lang_full else 0)  # the final norm
    inputs = 3 * 8 * tokens  # input_ids, labels, attention_mask (int64)
    # Padded rows need sdpa's 4D mask: boolean, and each layer's attention converts it to an additive mask in
    # the compute dtype and keeps that for its backward. A single row is unpadded: causal, without a mask.
    mask = run.rows * run.seq_len * run.seq_len if run.rows > 1 else 0
    if run.gradient_checkpointing:
        text = tokens * (a.layers * r * h + head) + mask  # each layer's input (the boolean mask too)
        recomputed = tokens * layer + mask * c
    else:
        text = tokens * (a.layers * layer + head) + mask * c * a.layers
        recomputed = 0
    if run.fused_lm_head:
        text += run.positions * r * h  # the fused head keeps its labelled hidden rows
    elif run.lang_full:
        text += run.positions * c * h  # the LM head keeps its input
    return text + inputs, recomputed


def _vision_activations(run: _Run) -> tuple[int, int, int]:
    """What the tower and projector save (+ the pixel tensors), a frozen tower's forward working set, and with
    gradient checkpointing the bytes of the one trained vision block rebuilt in backward (else 0)."""
    a, c = run.arch, run.c
    vtok = run.crops * a.tile_tokens
    w, m, h = a.vision_width, a.vision_mlp, a.hidden
    block = c * (13 * w + 2 * m) + 4 * c + 4 * a.vision_heads  # LN x2, qkv, rope, sdpa, proj, MLP, LayerScale
    if "vision" in run.adapted:
        block += _adapter_inputs(a.lora_linears["vision"], a.vision_depth, shared=2 * w + m, saved=run.lora_in,
                                 copies=run.autocast or run.d != 4, dropout=run.lora_dropout, rank=run.lora_r)
    pixels = int(run.pixel_crops * 3 * a.tile_size**2 * run.d)  # in the model's dtype (PLMCollator)
    tower_trains = run.trains["vision"]
    recomputed = 0
    if tower_trains:
        tower = vtok * (a.vision_depth * c * w if run.gradient_checkpointing else a.vision_depth * block)
        tower += vtok * c * w  # pre-norm and patch embedding outputs
        if run.gradient_checkpointing:
            recomputed = int(vtok * block)
    else:
        tower = 0
    patches = run.crops * a.patches
    if run.trains["projector"]:
        projector = patches * c * (w + 3 * h)  # linear_1 input, GELU input and output, pooling input
    elif tower_trains:
        projector = patches * c * 2 * h
    else:
        projector = 0
    vision_transient = 0 if tower_trains else int(vtok * block + pixels)
    return int(tower + projector) + pixels, vision_transient, recomputed


def _weight_copies(run: _Run) -> int:
    """Autocast's weight copies: a float32 weight that trains is cast once per forward and kept (its cache lasts
    the forward; autograd keeps what backward needs); a frozen one in another dtype is cast where it passes
    gradients on. The fused LM head casts its weight tile by tile instead."""
    a, c = run.arch, run.c
    if not run.autocast or c == 4:
        return 0
    cast_trained = run.lora_r * sum(i + o for part in run.adapted for i, o in a.lora_linears[part])
    cast_trained += sum(a.matmul_params[p] for p in run.full_parts)
    if run.lang_full and run.fused_lm_head:
        cast_trained -= a.vocab * a.hidden
    cast_frozen = 0
    if run.d != c and run.method != "qlora":
        on_path = ["language"] + (["vision"] if "vision" in run.adapted else [])
        cast_frozen = sum(a.matmul_params[p] for p in on_path if p not in run.full_parts)
    return c * (cast_trained + cast_frozen)


def _loss_bytes(run: _Run) -> int:
    """The LM head's loss tensors, + the float32 gradient of a trained LM head from its backward on."""
    a, c, positions = run.arch, run.c, run.positions
    h = a.hidden
    if run.fused_lm_head:
        # One [4096, 32768] tile in the compute dtype and the hidden states' float32 gradient; a trained head's
        # float32 [vocab, hidden] gradient is allocated with them, and each weight tile cast to the compute dtype.
        logits = c * min(positions, 4096) * min(a.vocab, 32768) + 4 * positions * h
        if run.lang_full:
            logits += 4 * a.vocab * h + (c * min(a.vocab, 32768) * h if c != 4 else 0)
        return logits
    logits = 12 * positions * a.vocab  # logits, their float32 log-softmax and its gradient
    if run.lang_full:
        # A trained LM head's weight gradient is computed with every activation still alive: first in the
        # compute dtype, next to the logits' gradient (and, on a CPU, torch's bf16 matmul accumulates it in a
        # float32 buffer of its size); under autocast then cast to float32, in place of the weight copy that
        # backward has released by then.
        cpu_buffer = 4 * a.vocab * h if run.device == "cpu" and c != 4 else 0
        logits = max(logits, c * positions * a.vocab + c * a.vocab * h + cpu_buffer, 4 * a.vocab * h)
    return logits


def _precision(method: str, dtype: torch.dtype, autocast: torch.dtype | None) -> str:
    """The dtypes counted, in words: ``weights bf16 (frozen) / fp32 (trained), autocast bf16``."""
    frozen = "nf4 + bf16" if method == "qlora" else _NAMES.get(dtype, str(dtype))
    weights = "weights fp32" if frozen == "fp32" else f"weights {frozen} (frozen) / fp32 (trained)"
    return f"{weights}, " + (f"autocast {_NAMES.get(autocast, str(autocast))}" if autocast is not None else "no autocast")


def _adapter_inputs(linears: tuple[tuple[int, int], ...], layers: int, *, shared: int, saved: int, copies: bool,
                    dropout: float, rank: int) -> int:
    """Bytes per token and layer that peft's LoRA adds for its adapters' inputs and ranks.

    ``linears`` are the adapted linears' ``(in, out)`` over ``layers`` layers. Each adapter's ``lora_A`` keeps its
    input: with dropout, the dropped copy and a boolean mask; under autocast, or when the input is not float32, its
    own cast copy (``saved`` bytes per element); otherwise the float32 input it shares with its neighbours (the
    ``shared`` width: attention input, MLP input and the last MLP linear's input). ``lora_B`` keeps its rank-wide
    input.
    """
    widths = sum(i for i, _ in linears) // layers  # input widths of one layer's adapters
    ranks = saved * rank * len(linears) // layers
    if dropout > 0:
        return (1 + saved) * widths + ranks
    if copies:
        return saved * widths + ranks
    return 4 * shared + ranks
