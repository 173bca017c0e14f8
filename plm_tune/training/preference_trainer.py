"""TRL's ``DPOTrainer`` wired for PLM: our preference batches, per-part learning rates, one model in memory.

``build_dpo_trainer`` composes public APIs as ``build_trainer`` does for SFT: TRL owns the loop and the losses
(``args.loss_type``: ``sigmoid``, ``ipo``, ``robust``, ... and ``args.beta``, as ``trl.DPOConfig`` defines them),
plm-tune supplies the batch (``PLMPreferenceCollator``: both answers formatted as SFT formats them, the pair's
media processed once) and the optimizer's parameter groups (``parameter_groups``).

The reference model, as TRL 1.16 takes it (``trl/trainer/dpo_trainer.py``):

* An adapter (LoRA / DoRA / QLoRA from ``load_model``): no second model. ``DPOTrainer.__init__`` copies a
  PeftModel's adapter into a frozen ``"ref"`` adapter (its ``elif is_peft_model(model) and ref_model is None``
  branch), which with ``modules_to_save`` is also a copy of every part trained in full (the vision tower with
  ``freeze=()``). The adapter is fresh (zero ``lora_B``: the base's outputs), so that copy is the base itself:
  ``build_dpo_trainer`` deletes it, and ``_compute_loss`` then scores the reference with every adapter disabled
  (``use_adapter(model, None)`` -> ``PeftModel.disable_adapter()``, which also switches ``modules_to_save`` back to
  the original modules).
* Full finetuning: a frozen copy of the model, made here (``copy.deepcopy``: the model as loaded, with its dtypes
  and attention kernels; TRL would load it again from ``model.config._name_or_path``).

TRL treats a dataset whose first sample has an ``"images"`` key as vision data: it skips ``_prepare_dataset`` (its
tokenisation; the collator does ours) and refuses ``precompute_ref_log_probs``. Canonical samples always have the
key (``"images": []`` without images). ``precompute_ref_log_probs=True`` is plm-tune's instead
(``plm_tune.training.reference_cache``): every pair's reference log-probs computed once before training, cached on
disk per sample, and read from the batch, so the loss runs no reference forward (and full finetuning drops its
frozen copy).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from plm_tune.arguments import MediaArguments, ModelArguments
from plm_tune.encoding.collator import PLMCollator
from plm_tune.encoding.preference_collator import PLMPreferenceCollator
from plm_tune.modeling.devices import check_gpu_usable
from plm_tune.modeling.model import parameter_groups
from plm_tune.modeling.padding_free import decode_padding_free
from plm_tune.modeling.pair_media import encode_pair_media_once
from plm_tune.modeling.precision import apply_run_dtypes, attention_by_part, vision_dtype
from plm_tune.training.checkpoints import check_output_dir
from plm_tune.training.quiet_log import quiet_training_log
from plm_tune.training.reference_cache import precompute_reference
from plm_tune.training.trainer import PartOptimizer, as_dataset, decoder_attention, method_of, optimizer_class

if TYPE_CHECKING:
    from trl import DPOConfig, DPOTrainer

__all__ = ["build_dpo_trainer", "dpo_run_config"]

logger = logging.getLogger(__name__)


def build_dpo_trainer(
    model: Any,
    processor: Any,
    train_dataset: Any,
    eval_dataset: Any = None,
    args: DPOConfig | None = None,
    *,
    media: MediaArguments | None = None,
    model_args: ModelArguments | None = None,
    callbacks: list[Any] | None = None,
    reference_cache: str | os.PathLike | None = None,
) -> DPOTrainer:
    """A TRL ``DPOTrainer`` that trains PLM on canonical preference samples (``plm_tune.data.preference``).

    Args:
        model: from ``plm_tune.load_model``: with a fresh adapter (``method`` lora / dora / qlora) or plain
            (``full``), with the parts ``freeze`` names frozen.
        processor: its ``PerceptionLMProcessor``.
        train_dataset, eval_dataset: preference samples: the ``preference`` or ``synthetic_shape_pairs`` adapter's
            output, a ``datasets`` table, or a list of sample dicts.
        args: a ``trl.DPOConfig`` (``beta``, ``loss_type``, ``learning_rate``, ...); ``dpo_run_config`` says what is
            changed. ``args.max_length`` is the collator's: a pair is never cut, its media may be lowered to fit.
        media: how media become tokens (``MediaArguments``; default: its defaults), as for SFT.
        model_args: ``vision_lr`` / ``projector_lr``: learning rates for those parts (default:
            ``args.learning_rate``), as optimizer parameter groups "language" / "vision" / "projector".
        callbacks: extra ``TrainerCallback``s.
        reference_cache: with ``args.precompute_ref_log_probs``, the folder of the reference log-probs cache
            (default: ``<output_dir>/reference_logps``; share one folder to reuse values across runs: entries are
            keyed by the reference model, the settings and each sample's content, ``reference_cache``).

    Returns:
        The trainer; call ``.train()``. Its ``plm_collator`` is the ``PLMPreferenceCollator``; its ``ref_model`` is
        None with an adapter (the reference is the base: the adapter disabled) and with precomputed reference
        log-probs. With them, ``reference_cache`` says ``{"path", "cached", "computed"}`` (pairs); set
        every eval set here: a set first given to ``evaluate()`` has no reference values.

    Raises:
        ValueError: an empty ``train_dataset``; an adapter that is already trained (the base would not be where
            training starts: merge it first); nothing trainable; ``precompute_ref_log_probs`` with a streamed
            dataset, ``sync_ref_model``, DeepSpeed or FSDP. ``OutputFolderError``: ``args.output_dir`` holds
            the other kind of weights (``plm_tune.training.checkpoints.check_output_dir``).

    Example:
        >>> model, processor = load_model(path, method="lora", freeze=())                   # doctest: +SKIP
        >>> trainer = build_dpo_trainer(model, processor, pairs, args=DPOConfig(output_dir="out", beta=0.1,
        ...                             max_length=4096), media=MediaArguments(max_tiles=4))  # doctest: +SKIP
    """
    from trl import DPOTrainer

    model_args = model_args or ModelArguments()
    config = dpo_run_config(args)
    check_gpu_usable(config.use_cpu)
    if hasattr(train_dataset, "__len__") and len(train_dataset) == 0:
        raise ValueError("build_dpo_trainer: train_dataset is empty: there are no pairs to train on. Check the data "
                         "source (an adapter's .skip_report says what it skipped).")
    precompute = config.precompute_ref_log_probs
    if precompute:
        _check_precompute(config, train_dataset, eval_dataset)
    adapter = hasattr(model, "peft_config")
    if adapter:
        _check_fresh_adapter(model)
    collator = _collator(processor, config, media, model)
    lrs = dict(lr=config.learning_rate, vision_lr=model_args.vision_lr, projector_lr=model_args.projector_lr,
               weight_decay=config.weight_decay)
    parameter_groups(model, **lrs)  # fail here, not at train(), when nothing is trainable
    check_output_dir(config.output_dir, method_of(model), should_save=config.should_save)
    trainer = DPOTrainer(
        model=model,
        ref_model=None if adapter else _frozen_copy(model),
        # TRL's own precompute refuses vision data, its padding_free is disabled: ours run instead (below)
        args=dataclasses.replace(config, precompute_ref_log_probs=False, padding_free=False),
        data_collator=collator,
        train_dataset=as_dataset(train_dataset),
        eval_dataset=as_dataset(eval_dataset),
        processing_class=processor,
        callbacks=callbacks,
    )
    if adapter and "ref" in model.peft_config:
        # TRL's copy of a fresh adapter is the base (module docstring): drop it, and its copies of the fully
        # trained parts, so the reference pass runs with the adapter disabled.
        model.delete_adapter("ref")
    # Trainable weights in the dtype SFT trains them in, and a half-precision load without bf16 / fp16 refused
    # (apply_run_dtypes): DPOTrainer.__init__ casts a quantised model's trainable weights to bf16
    # (trl/trainer/dpo_trainer.py, "When using QLoRA, the PEFT adapter weights are converted to bf16"), where the
    # optimizer's small steps on bf16 weights mostly round away.
    apply_run_dtypes(trainer)
    # DPOTrainer takes no optimizer_cls_and_kwargs; Trainer.create_optimizer reads this attribute when training
    # starts (also under DeepSpeed, which drops a ready optimizer): our parameter groups, the Trainer's schedule.
    trainer.optimizer_cls_and_kwargs = (functools.partial(PartOptimizer, *optimizer_class(config), lrs), {})
    trainer.plm_collator = collator
    _compute_real_work_only(trainer, padding_free=config.padding_free)
    quiet_training_log(trainer)  # short console lines as SFT's; PLM_TUNE_VERBOSE=1 prints TRL's full dicts
    if precompute:
        folder = reference_cache or Path(config.output_dir) / "reference_logps"
        trainer.reference_cache = precompute_reference(trainer, _collator(processor, config, media, model),
                                                       train_dataset, eval_dataset, folder)
        trainer.args.precompute_ref_log_probs = True  # what the run did, in its saved training arguments
        logger.info("Reference log-probs: %(cached)d pairs from %(path)s, %(computed)d computed.",
                    trainer.reference_cache)
    return trainer


def _compute_real_work_only(trainer: Any, *, padding_free: bool) -> None:
    """The policy's and the reference's forwards: the vision tower once per pair (a pair's tiles are in the batch
    twice: ``plm_tune.modeling.pair_media``) and, with ``padding_free``, the decoder on real tokens only
    (``plm_tune.modeling.padding_free``), recorded in the run's arguments."""
    for module in [m for m in (trainer.model, trainer.ref_model) if m is not None]:
        encode_pair_media_once(module)
        if padding_free:
            decode_padding_free(module)
    trainer.args.padding_free = padding_free
    attention = decoder_attention(trainer.model)
    if padding_free and attention in ("sdpa", "eager"):
        logger.warning(
            "padding_free with %s attention: the rows of a batch are kept apart by a (tokens x tokens) mask over the "
            "packed row, so attention costs total_tokens**2 per layer instead of each row's own. Load the model with "
            "attn_implementation='flash_attention_2' (varlen kernels, no mask) for padding_free.", attention)


def _collator(processor: Any, config: DPOConfig, media: MediaArguments | None, model: Any) -> PLMPreferenceCollator:
    return PLMPreferenceCollator(PLMCollator(processor, max_length=config.max_length,
                                             **dataclasses.asdict(media or MediaArguments()),
                                             pixel_dtype=vision_dtype(model)))


def _check_precompute(config: DPOConfig, train_dataset: Any, eval_dataset: Any) -> None:
    """Refuse what ``precompute_ref_log_probs`` cannot serve, in one line each."""
    sets = [train_dataset, *(eval_dataset.values() if isinstance(eval_dataset, dict) else [eval_dataset])]
    if any(dataset is not None and not hasattr(dataset, "__len__") for dataset in sets):
        raise ValueError("precompute_ref_log_probs=True needs every pair up front: load the data without streaming "
                         "(a list or datasets.Dataset), or set precompute_ref_log_probs=False.")
    if config.sync_ref_model:
        raise ValueError("precompute_ref_log_probs=True fixes the reference, sync_ref_model=True moves it: "
                         "set one of them to False.")
    if config.deepspeed or config.fsdp:
        raise ValueError("precompute_ref_log_probs=True is not supported with DeepSpeed or FSDP (the reference "
                         "is scored before the model is sharded): set precompute_ref_log_probs=False.")


def dpo_run_config(args: DPOConfig | None) -> DPOConfig:
    """The ``DPOConfig`` the trainer runs with: ``args`` (default: DPOConfig's, bf16 only on a bf16 GPU) with
    ``remove_unused_columns=False``: with it on, TRL keeps only ``prompt`` / ``chosen`` / ``rejected`` /
    ``images`` columns of a vision dataset (``_set_signature_columns_if_needed``), dropping ``messages`` and
    ``videos``, which the collator reads.

    ``padding_free=True`` is ours, not TRL's (1.16 turns its own off with a warning, "temporarily unavailable after
    a refactor"; its loss splits a batch's padded rows with ``.chunk(2)``): the batch stays padded for the loss and
    the decoder runs its real tokens packed (``plm_tune.modeling.padding_free``).
    """
    from trl import DPOConfig

    if args is None:  # DPOConfig's own default, bf16=True, is refused on a CPU
        bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        args = DPOConfig(output_dir="outputs/plm-tune-dpo", bf16=bf16)
    if args.remove_unused_columns:
        logger.info("Setting remove_unused_columns=False: the preference collator needs every sample column.")
    return dataclasses.replace(args, remove_unused_columns=False)


def _check_fresh_adapter(model: Any) -> None:
    """Refuse a trained adapter: with the adapter disabled the reference would be the base, not the start."""
    trained = [name for name, param in model.named_parameters() if "lora_B" in name and param.detach().any()]
    if trained:
        raise ValueError(
            f"build_dpo_trainer: the model's adapter is already trained ({trained[0]} is not zero), and the DPO "
            "reference is the base with the adapter disabled, not this model. Merge the adapter first "
            "(plm_tune.merge_adapter) and load the merged model with a new adapter, or use method='full'."
        )


def _frozen_copy(model: Any) -> Any:
    """The reference for full finetuning: the model as it starts, frozen, in eval mode.

    Under DeepSpeed ZeRO-3 the weights are already sharded (``ds_id``): each one's ``.data`` is an empty tensor, its
    shard lives in ``ds_tensor`` (``deepspeed/runtime/zero/partition_parameters.py``, ``free_param``), and a deepcopy
    is a model of empty weights that fails its first forward. The reference is then loaded again from the same
    files, sharded as it loads (``deepspeed.zero.Init``, as the policy was), which TRL's ``prepare_deepspeed`` wraps.
    """
    if any(hasattr(param, "ds_id") for param in model.parameters()):
        from transformers import AutoModelForImageTextToText

        text = model.config.text_config._attn_implementation
        reference = AutoModelForImageTextToText.from_pretrained(
            model.config._name_or_path, dtype=model.dtype, attn_implementation=attention_by_part(text)
        )
    else:
        reference = copy.deepcopy(model)
    reference.eval()
    reference.requires_grad_(False)
    return reference
