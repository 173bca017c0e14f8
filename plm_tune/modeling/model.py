"""Load a PLM ready to finetune: which parts train, how (LoRA, DoRA, QLoRA, full), and their learning rates.

PLM has three parts, named after the modules of ``PerceptionLMForConditionalGeneration``:

| part          | modules                                          |
| ------------- | ------------------------------------------------ |
| ``vision``    | ``model.vision_tower`` (timm Perception Encoder) |
| ``projector`` | ``model.multi_modal_projector`` (2-layer MLP)    |
| ``language``  | ``model.language_model`` (Llama) and ``lm_head`` |

``freeze`` names the parts that do not train at all: their weights get ``requires_grad=False`` and stay
bit-identical. Every other part trains, by ``method``:

* ``"full"``: every weight of every unfrozen part trains.
* ``"lora"`` / ``"dora"`` / ``"qlora"``: LoRA adapters on the attention and MLP projections of the parts in
  ``lora_targets``; an unfrozen part that is not a LoRA target trains in full, through peft's
  ``modules_to_save`` (PLM's own training trains the projector in full), so ``save_pretrained`` keeps it.

Example:
    >>> model, processor = load_model("facebook/Perception-LM-1B", method="lora")        # doctest: +SKIP
    >>> optimizer = torch.optim.AdamW(parameter_groups(model, lr=2e-4, projector_lr=1e-5))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import torch

from plm_tune.arguments import DEFAULT_MODEL, ModelArguments, check_settings, dora_dropout_note, settings_from
from plm_tune.methods import METHOD_WORDS, METHODS, Method
from plm_tune.modeling.precision import (
    attention_by_part,
    deepspeed_dtype,
    default_dtype,
    load_dtype,
    set_training_dtypes,
)
from plm_tune.modeling.run_folder import (
    ADAPTER_CONFIG,
    check_model_path,
    has_processor,
    is_adapter,
    resolve_base_model,
)

__all__ = ["load_model", "load_for_inference", "parameter_groups", "enable_gradient_checkpointing", "part_of",
           "LORA_LINEARS"]

logger = logging.getLogger(__name__)

Part = Literal["vision", "projector", "language"]
LoraTargets = Literal["language", "language+vision"]

PARTS = ("language", "vision", "projector")
LORA_TARGETS = ("language", "language+vision")

# peft matches a string target_modules with re.fullmatch on module names relative to the model, e.g.
# "model.language_model.layers.3.self_attn.q_proj". Anchoring on the path keeps LoRA off look-alike names
# elsewhere (lm_head, the projector, the tower's patch_embed.proj and attention-pool head).
LORA_LINEARS = {
    "language": r"model\.language_model\.layers\.\d+\.(?:self_attn\.[qkvo]_proj|mlp\.(?:gate|up|down)_proj)",
    # timm Eva blocks: attn.qkv (fused, as in PE; [qkv]_proj when not fused), attn.proj, mlp.fc1 / fc2.
    "vision": r"model\.vision_tower\.timm_model\.blocks\.\d+\.(?:attn\.(?:qkv|[qkv]_proj|proj)|mlp\.fc[12])",
}

# Parts that can train in full next to LoRA (peft modules_to_save) and that QLoRA never quantises (with
# lm_head). Both peft and transformers match these names at module-name boundaries.
_WHOLE_MODULES = {"vision": "model.vision_tower", "projector": "model.multi_modal_projector"}
# Hub arguments that must reach the processor too, so model and processor come from the same files.
_HUB_KWARGS = ("revision", "cache_dir", "token", "local_files_only", "subfolder")


def part_of(name: str) -> Part:
    """The part a parameter or module belongs to, from its name (plain or peft-wrapped)."""
    if "vision_tower" in name:
        return "vision"
    if "multi_modal_projector" in name:
        return "projector"
    return "language"


def load_model(
    name_or_path: str | ModelArguments = DEFAULT_MODEL,
    *,
    method: Method = ModelArguments.method,
    freeze: Iterable[Part] = tuple(ModelArguments().freeze),
    lora_r: int = ModelArguments.lora_r,
    lora_alpha: int = ModelArguments.lora_alpha,
    lora_dropout: float = ModelArguments.lora_dropout,
    lora_targets: LoraTargets = ModelArguments.lora_targets,
    dtype: torch.dtype | None = None,
    gradient_checkpointing: bool = False,
    seed: int | None = None,
    trust_remote_code: bool = False,
    **from_pretrained_kwargs: Any,
) -> tuple[Any, Any]:
    """Load PLM and its processor, with only the chosen parts trainable.

    Args:
        name_or_path: Hub id or local folder of a PLM checkpoint (1B, 3B, 8B or ``build_tiny_plm``'s), or a
            ``plm_tune.arguments.ModelArguments`` that holds it with the method settings below (its
            ``attn_implementation`` reaches ``from_pretrained``); then leave those keywords at their defaults.
        method: ``"lora"``, ``"dora"`` (LoRA with weight decomposition), ``"qlora"`` (LoRA on a language model
            quantised to 4-bit NF4 with double quantisation; the vision tower, projector and ``lm_head`` stay
            unquantised) or ``"full"``.
        freeze: parts that do not train: any of ``"vision"``, ``"projector"``, ``"language"`` (a single
            string is one part). LoRA methods always adapt the language model, so they cannot freeze it.
        lora_r, lora_alpha, lora_dropout: LoRA rank, scale numerator and dropout (``"full"`` refuses them changed
            from their defaults: it would ignore them).
        lora_targets: ``"language"``: LoRA on the decoder's q/k/v/o and gate/up/down projections;
            ``"language+vision"``: also on the vision blocks' ``attn.qkv``, ``attn.proj``, ``mlp.fc1`` and
            ``mlp.fc2`` (never the patch embedding); then ``"vision"`` must not be in ``freeze``. Unfrozen
            parts that are not LoRA targets train in full (peft ``modules_to_save``): with the defaults the
            projector trains in full, and with ``freeze=()`` the vision tower does too.
        dtype: the load dtype; default ``ModelArguments.dtype`` when one is given (a name: ``load_dtype``), else
            bfloat16 on a CUDA GPU with bf16 support, else float32 (CPU). Frozen
            weights stay in it; trainable ones (adapters, a part trained in full) are float32, for the optimizer
            to step, or under DeepSpeed the engine's dtype (it keeps float32 master weights itself):
            ``set_training_dtypes``. Train a bf16 load with ``bf16=True`` (autocast computes in bf16). QLoRA
            computes its 4-bit matmuls in bfloat16 (on CPU too: bitsandbytes runs them there) and keeps its
            frozen unquantised weights (tower, embeddings, lm_head, norms) in ``dtype``.
        gradient_checkpointing: recompute activations in the backward pass, in the Llama decoder layers and
            the timm vision blocks (``enable_gradient_checkpointing``). The Trainer's own
            ``gradient_checkpointing=True`` alone would miss the vision tower.
        seed: seeds the adapter's random initialisation (LoRA's A matrices) without touching the global RNG;
            pass the training seed (``SFTConfig.seed``, as the recipes do) and two runs start from, and train,
            bit-identical adapters. None: torch's global RNG as it stands (the Trainer seeds only after the
            model exists, so the adapters then differ from run to run).
        trust_remote_code: passed to ``from_pretrained``; PLM is native to transformers and never needs it.
        **from_pretrained_kwargs: more arguments for the model's ``from_pretrained`` (``device_map``,
            ``attn_implementation``, ``revision``...). Hub ones (``revision``, ``cache_dir``, ``token``,
            ``local_files_only``, ``subfolder``) reach the processor too.

    Returns:
        ``(model, processor)``: a ``PeftModel`` for LoRA methods, the plain model for ``"full"``; and the
        ``PerceptionLMProcessor``. A one-line summary of trainable parameters per part is logged (INFO).

    Raises:
        plm_tune.arguments.SettingError: a setting out of range or ignored (``check_settings``), e.g. ``lora_r=0``,
            ``lora_dropout=1.5``, or a LoRA setting with ``method="full"``.
        ValueError: unknown method, part or lora_targets; a part both frozen and a LoRA target; nothing left
            to train; ``quantization_config`` passed by hand; ``method="qlora"`` under DeepSpeed ZeRO-3; a
            vision tower given an attention kernel it cannot run (``attention_by_part``).
        FileNotFoundError: ``name_or_path`` looks like a local folder (``./x``, ``outputs/x`` when ``outputs/``
            exists...) that does not exist: "no such folder", before any Hub call.
        ImportError: ``method="qlora"`` without bitsandbytes.
        RuntimeError: bitsandbytes cannot quantise to 4-bit on this machine.

    Example:
        >>> model, processor = load_model(path, method="qlora", freeze=("vision",))   # doctest: +SKIP
        >>> model.print_trainable_parameters()                                      # doctest: +SKIP
    """
    args = _settings(name_or_path, method=method, freeze=freeze, lora_r=lora_r, lora_alpha=lora_alpha,
                     lora_dropout=lora_dropout, lora_targets=lora_targets)
    check_settings(args)  # a LoRA setting given to method full, a rank of 0...: one line, before any weight loads
    if args.attn_implementation:
        from_pretrained_kwargs.setdefault("attn_implementation", args.attn_implementation)
    frozen = _check_choices(args.method, args.freeze, args.lora_targets, from_pretrained_kwargs)
    engine_dtype = deepspeed_dtype()  # None outside DeepSpeed
    model, processor = _load_pretrained(args.model_name_or_path, args.method, load_dtype(dtype or args.dtype),
                                        trust_remote_code, from_pretrained_kwargs)
    # Before peft wraps the model, so modules_to_save copies (e.g. a fully trained tower) inherit it.
    if gradient_checkpointing:
        enable_gradient_checkpointing(model)
    model, how = _make_trainable(model, args, frozen, seed)
    set_training_dtypes(model, engine_dtype)
    _check_frozen(model, frozen)
    logger.info("%s", _summary(model, args.method, how))
    return model, processor


def _settings(name_or_path: str | ModelArguments, **keywords: Any) -> ModelArguments:
    """``load_model``'s settings: the ``ModelArguments`` given as ``name_or_path`` (its keywords left at their
    defaults, ``settings_from``), or the folder / Hub id given with the keywords."""
    if isinstance(name_or_path, ModelArguments):
        freeze = keywords["freeze"]
        keywords["freeze"] = [freeze] if isinstance(freeze, str) else list(freeze)
        return settings_from(name_or_path, ModelArguments, **keywords)
    return ModelArguments(model_name_or_path=name_or_path, **keywords)


def _load_pretrained(name_or_path: str, method: Method, dtype: torch.dtype, trust_remote_code: bool,
                     from_pretrained_kwargs: dict[str, Any]) -> tuple[Any, Any]:
    """The pretrained model, 4-bit for QLoRA (then every weight frozen), and its processor, from the same files."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    kwargs = dict(from_pretrained_kwargs)
    if "attn_implementation" in kwargs:
        kwargs["attn_implementation"] = attention_by_part(kwargs["attn_implementation"])
    if method == "qlora":
        _check_qlora_sharding()
        kwargs["quantization_config"] = _qlora_config()
        if torch.cuda.is_available() and "device_map" not in kwargs:
            # Each process of accelerate / torchrun quantises its own copy straight onto its own GPU.
            from accelerate import PartialState

            kwargs["device_map"] = {"": PartialState().local_process_index}

    check_model_path(name_or_path)  # a typo'd folder is "no such folder", not a Hub look-up
    _import_plm_classes()
    model = AutoModelForImageTextToText.from_pretrained(
        name_or_path, dtype=dtype, trust_remote_code=trust_remote_code, **kwargs
    )
    processor = AutoProcessor.from_pretrained(
        name_or_path,
        trust_remote_code=trust_remote_code,
        **{k: v for k, v in from_pretrained_kwargs.items() if k in _HUB_KWARGS},
    )
    if method == "qlora":
        # What peft's prepare_model_for_kbit_training does, less its upcast of every unquantised weight to float32
        # (for PLM-8B: the frozen 1.9B-parameter tower, the embeddings and the untied lm_head, ~12 GB, and a float32
        # residual stream): every weight is frozen here and peft unfreezes the adapters and modules_to_save below;
        # those train in float32 (set_training_dtypes). Frozen weights stay in the bf16 compute dtype. Its input-grad
        # hook is only for reentrant checkpointing; ours is non-reentrant.
        for param in model.parameters():
            param.requires_grad_(False)
    return model, processor


def _import_plm_classes() -> None:
    """Import PLM's sub-model classes before the first ``from_pretrained`` of the process.

    Under ZeRO-3 ``from_pretrained`` runs inside ``deepspeed.zero.Init``, which wraps ``__init__`` of every class
    created meanwhile and on exit sets it back to the ``__init__`` it saw at creation
    (``deepspeed/runtime/zero/partition_parameters.py``: ``_init_subclass``, ``_disable_class``). transformers
    imports the Llama decoder lazily there, and with ``kernels`` installed ``LlamaAttention`` is decorated by
    ``use_kernelized_func`` after its creation (``kernels/_internals/layer/layer.py``: its ``new_init`` sets
    ``_kernel_funcs``, which ``new_forward`` reads): the exit drops that ``__init__``, and every PLM built later in
    the process (DPO's reference under ZeRO-3) fails its first forward with "no attribute '_kernel_funcs'".
    """
    import transformers.models.llama.modeling_llama  # noqa: F401
    import transformers.models.perception_lm.modeling_perception_lm  # noqa: F401
    import transformers.models.timm_wrapper.modeling_timm_wrapper  # noqa: F401


def _make_trainable(model: Any, args: ModelArguments, frozen: set[str], seed: int | None) -> tuple[Any, dict[str, str]]:
    """Unfreeze what ``args`` trains: every weight of the unfrozen parts (``"full"``), or LoRA adapters on the
    ``lora_targets`` parts with the other unfrozen parts in full (peft ``modules_to_save``).

    Returns:
        ``(model, how)``: the model (peft-wrapped for LoRA methods) and how each part trains, for the summary.
    """
    adapted = args.lora_targets.split("+") if args.method != "full" else []
    how = {part: "full" for part in PARTS}
    how.update({part: METHOD_WORDS[args.method].name for part in adapted})
    how.update({part: "frozen" for part in frozen})
    if args.method == "full":
        for name, param in model.named_parameters():
            param.requires_grad_(part_of(name) not in frozen)
        return model, how
    from peft import LoraConfig, get_peft_model

    full_parts = [part for part in PARTS if part not in frozen and part not in adapted]
    if note := dora_dropout_note(args.method, args.lora_dropout):
        logger.warning(note)
    config = LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        use_dora=args.method == "dora",
        target_modules=lora_target_pattern(model, adapted, args.lora_target_modules),
        modules_to_save=[_WHOLE_MODULES[part] for part in full_parts] or None,
        task_type="CAUSAL_LM",
    )
    with torch.random.fork_rng(devices=range(torch.cuda.device_count()), enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)  # CPU and every GPU: the adapter may sit wherever its base layer does
        return get_peft_model(model, config), how


def lora_target_pattern(model: Any, parts: Iterable[str], names: Sequence[str] | str | None) -> str:
    """peft's ``target_modules`` regex: the linear layers of ``parts`` (``LORA_LINEARS``), only those whose last
    name is in ``names`` (TRL's ``lora_target_modules``: ``["q_proj", "v_proj"]``); None / ``"all-linear"``: all.

    Raises:
        ValueError: a name that is no LoRA-able linear layer of ``parts``, with the names there are.
    """
    pattern = "|".join(LORA_LINEARS[part] for part in parts)
    if names is None or names == "all-linear" or list(names) == ["all-linear"]:
        return pattern
    names = [names] if isinstance(names, str) else list(names)
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules() if re.fullmatch(pattern, name)}
    missing = [name for name in names if name not in present]
    if missing:
        raise ValueError(f"lora_target_modules {', '.join(missing)}: no such linear layer in the LoRA target parts "
                         f"({'+'.join(parts)}); they have {', '.join(sorted(present))} (or all-linear: all of them).")
    return f"(?=.*\\.(?:{'|'.join(map(re.escape, names))})$)(?:{pattern})"


def _check_qlora_sharding() -> None:
    """QLoRA under ZeRO-3 is refused before anything loads (see the message)."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled():
        raise ValueError(
            "method='qlora' under DeepSpeed ZeRO-3 is not supported by plm-tune: ZeRO-3 would shard the 4-bit weights "
            "as it loads them, which needs bnb_4bit_quant_storage and a loading path not tested here. PLM-8B in 4-bit "
            "holds about 6 GB of weights, so every GPU can keep a copy: launch with recipes/accelerate/zero2.yaml (or "
            "without DeepSpeed), or use method='lora' with zero3.yaml to shard bf16 weights."
        )


def enable_gradient_checkpointing(model: Any) -> None:
    """Turn on activation checkpointing in the Llama decoder layers and the timm vision blocks.

    transformers' ``activation_checkpointing_enable`` only reaches modules with a ``gradient_checkpointing``
    flag (the decoder layers), not the timm tower, which has its own switch ``set_grad_checkpointing``.
    Non-reentrant checkpointing is used in both, so frozen inputs need no ``requires_grad`` hack.
    """
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    for module in model.modules():
        if hasattr(module, "set_grad_checkpointing") and hasattr(module, "grad_checkpointing"):  # timm models
            module.set_grad_checkpointing(True)


def parameter_groups(
    model: Any,
    *,
    lr: float,
    vision_lr: float | None = None,
    projector_lr: float | None = None,
    weight_decay: float = 0.0,
) -> list[dict[str, Any]]:
    """Optimizer parameter groups of the trainable parameters, one per part, each with its learning rate.

    Works on plain and peft-wrapped models (parameters are matched by ``vision_tower`` /
    ``multi_modal_projector`` in their names; everything else is ``language``). Parts with no trainable
    parameter get no group.

    Args:
        lr: learning rate of the language model (its LoRA adapters or weights).
        vision_lr, projector_lr: learning rates of the vision tower and projector; default ``lr``.
        weight_decay: applied to every trainable parameter.

    Returns:
        ``[{"name": "language" | "vision" | "projector", "params": [...], "lr": ..., "weight_decay": ...}]``,
        ready for ``torch.optim.AdamW`` (the extra ``"name"`` key is kept in ``optimizer.param_groups``).

    Raises:
        ValueError: the model has no trainable parameter.

    Example:
        >>> groups = parameter_groups(model, lr=2e-4, vision_lr=2e-5)   # doctest: +SKIP
        >>> optimizer = torch.optim.AdamW(groups)                       # doctest: +SKIP
    """
    lrs = {
        "language": lr,
        "vision": lr if vision_lr is None else vision_lr,
        "projector": lr if projector_lr is None else projector_lr,
    }
    params: dict[str, list[torch.nn.Parameter]] = {part: [] for part in PARTS}
    for name, param in model.named_parameters():
        if param.requires_grad:
            params[part_of(name)].append(param)
    groups = [
        {"name": part, "params": params[part], "lr": lrs[part], "weight_decay": weight_decay}
        for part in PARTS
        if params[part]
    ]
    if not groups:
        raise ValueError("The model has no trainable parameter: nothing for an optimizer to update.")
    return groups


def _check_choices(method: str, freeze: Iterable[str], lora_targets: str, kwargs: dict[str, Any]) -> set[str]:
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(map(repr, METHODS))}; got {method!r}.")
    frozen = {freeze} if isinstance(freeze, str) else set(freeze)
    unknown = sorted(frozen - set(PARTS))
    if unknown:
        names = ", ".join(map(repr, PARTS))
        raise ValueError(f"freeze takes parts among {names}; got unknown {unknown} in freeze={freeze!r}.")
    if method == "full" and frozen == set(PARTS):
        raise ValueError("method='full' with every part frozen leaves nothing to train; unfreeze a part.")
    if method != "full":
        if lora_targets not in LORA_TARGETS:
            raise ValueError(
                f"lora_targets must be one of {', '.join(map(repr, LORA_TARGETS))}; got {lora_targets!r}."
            )
        if "language" in frozen:
            raise ValueError(
                f"method={method!r} puts LoRA adapters on the language model, so freeze cannot include "
                "'language'. To train only the vision tower and/or projector, use method='full' with "
                "freeze=('language', ...)."
            )
        if "vision" in frozen and "vision" in lora_targets.split("+"):
            raise ValueError(
                f"lora_targets={lora_targets!r} adapts the vision tower but freeze includes 'vision'. "
                "Pass freeze=() (or freeze=('projector',)), or lora_targets='language'."
            )
    if "quantization_config" in kwargs:
        raise ValueError(
            "Do not pass quantization_config: method='qlora' sets 4-bit NF4 with the vision tower, projector "
            "and lm_head unquantised; the other methods load unquantised weights."
        )
    return frozen


def _qlora_config() -> Any:
    """4-bit NF4 with double quantisation and bf16 compute, for the language model's linears only."""
    try:
        import bitsandbytes as bnb
    except ImportError as error:
        raise ImportError('method="qlora" needs bitsandbytes: pip install "plm-tune[qlora]"') from error
    from transformers import BitsAndBytesConfig

    device = "cuda" if torch.cuda.is_available() else "cpu"
    probe = torch.ones(64, 64, device=device, dtype=torch.bfloat16)
    try:  # quantise a tiny tensor: proves the installed backend runs here, before loading gigabytes
        bnb.functional.quantize_4bit(probe, quant_type="nf4")
    except Exception as error:
        raise RuntimeError(
            f"bitsandbytes {bnb.__version__} cannot quantise to 4-bit on {device} here "
            f"({type(error).__name__}: {error}). Use method='lora' instead, or install a bitsandbytes build "
            "for this machine (https://huggingface.co/docs/bitsandbytes/main/en/installation)."
        ) from error
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
        # Given explicitly, this list replaces transformers' default one (the output embedding, lm_head).
        llm_int8_skip_modules=[_WHOLE_MODULES["vision"], _WHOLE_MODULES["projector"], "lm_head"],
    )


def _check_frozen(model: Any, frozen: set[str]) -> None:
    """Guard the promise of freeze: no trainable weight in a frozen part, some in every other part."""
    trainable = {part_of(name) for name, param in model.named_parameters() if param.requires_grad}
    if trainable != set(PARTS) - frozen:
        raise RuntimeError(
            f"Internal error: trainable parts are {sorted(trainable)} but freeze={sorted(frozen)}. "
            "Please report it with the arguments given to load_model."
        )


def _summary(model: Any, method: str, how: dict[str, str]) -> str:
    """E.g. 'Trainable parameters (lora): language 5.64M (LoRA), vision 0 (frozen), projector ...'."""
    trainable = dict.fromkeys(PARTS, 0)
    total = 0
    for name, param in model.named_parameters():
        count = param.numel() * (2 if type(param).__name__ == "Params4bit" else 1)  # two 4-bit values a byte
        total += count
        if param.requires_grad:
            trainable[part_of(name)] += count
    parts = ", ".join(f"{part} {_millions(trainable[part])} ({how[part]})" for part in PARTS)
    share = sum(trainable.values()) / max(total, 1)
    return (
        f"Trainable parameters ({method}): {parts}; "
        f"{_millions(sum(trainable.values()))} of {_millions(total)} ({share:.2%})"
    )


def _millions(count: int) -> str:
    return f"{count / 1e6:,.2f}M" if count else "0"


def load_for_inference(
    model: str,
    adapter: str | None = None,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> tuple[Any, Any]:
    """Load a PLM to answer with: a base or merged model folder / Hub id, optionally with a trained adapter.

    Args:
        model: Hub id or folder of a full model (the base, a merged model or a full finetune). A peft adapter
            folder is accepted too: its ``adapter_config.json`` names the base, which is loaded under it.
        adapter: a peft adapter folder to apply on ``model`` (``trainer.save_model``'s output).
        dtype: default bfloat16 on a bf16 GPU, float32 otherwise.
        device: default ``"cuda"`` when available, else the CPU.

    Returns:
        ``(model, processor)`` in eval mode. The processor comes from the adapter folder when it holds one
        (it is the one training used), else from ``model``.

    Raises:
        FileNotFoundError: ``model`` or ``adapter`` looks like a local folder that does not exist ("no such
            folder"); an adapter folder without ``adapter_config.json``; an adapter folder as ``model`` whose
            base is a local folder that does not exist.
        ValueError: an adapter folder as ``model`` whose ``adapter_config.json`` names no base.

    Example:
        >>> model, processor = load_for_inference("facebook/Perception-LM-1B", "outputs/radiology-lora")  # doctest: +SKIP
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    for path in (model, adapter):
        if path is not None:
            check_model_path(path)
    if adapter is None and is_adapter(model):
        adapter = model
        model = resolve_base_model(adapter)
        check_model_path(model)  # the base it names, when a Hub id: cached or the Hub answers, else one line
    if adapter is not None and not is_adapter(adapter):
        raise FileNotFoundError(f"`adapter` {adapter}: no {ADAPTER_CONFIG} there, so it is not a peft adapter "
                                "folder. Pass the folder the recipe saved (its output_dir), or a merged model as "
                                "`model` without `adapter`.")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    base = AutoModelForImageTextToText.from_pretrained(
        model, dtype=dtype or default_dtype(), use_safetensors=True, trust_remote_code=False
    ).to(device)
    from_adapter = adapter is not None and has_processor(adapter)
    processor = AutoProcessor.from_pretrained(adapter if from_adapter else model, trust_remote_code=False)
    if adapter is None:
        return base.eval(), processor
    from peft import PeftModel

    return PeftModel.from_pretrained(base, adapter).eval(), processor
