"""TRL's ``SFTTrainer`` wired for PLM: our collator, per-part learning rates, and the numbers worth watching.

``build_trainer`` composes public APIs: the library owns the loop (TRL / transformers / accelerate /
DeepSpeed), plm-tune supplies the batch (``PLMCollator``), the optimizer's parameter groups
(``parameter_groups``) and a callback that logs what the collator saw. The trainer is a ``PLMTrainer``
(``plm_tune.training.plm_trainer``, imported on first use so that ``import plm_tune`` does not import TRL), whose
docstring names each private Trainer hook it overrides and why.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import TYPE_CHECKING, Any

import torch

from plm_tune.arguments import EvalArguments, MediaArguments, ModelArguments, check_settings
from plm_tune.data.sample import sample_columns
from plm_tune.encoding.collator import PLMCollator
from plm_tune.modeling.devices import check_gpu_usable
from plm_tune.modeling.model import parameter_groups
from plm_tune.modeling.precision import vision_dtype
from plm_tune.training.callbacks import GenerationEvalCallback, PLMMetricsCallback
from plm_tune.training.checkpoints import check_output_dir
from plm_tune.training.distributed import media_kinds, shards_weights, stream_accelerator_config
from plm_tune.training.quiet_log import quiet_training_log

if TYPE_CHECKING:
    from trl import SFTConfig

    from plm_tune.training.plm_trainer import PLMTrainer

__all__ = ["PartOptimizer", "as_dataset", "build_trainer", "loss_change", "method_of", "optimizer_class", "run_config"]

logger = logging.getLogger(__name__)


def build_trainer(
    model: Any,
    processor: Any,
    train_dataset: Any,
    eval_dataset: Any = None,
    args: SFTConfig | None = None,
    *,
    media: MediaArguments | None = None,
    model_args: ModelArguments | None = None,
    eval_args: EvalArguments | None = None,
    collator: PLMCollator | None = None,
    callbacks: list[Any] | None = None,
) -> PLMTrainer:
    """A ``PLMTrainer`` (TRL's ``SFTTrainer``) that trains PLM on canonical samples.

    Args:
        model: from ``plm_tune.load_model`` (peft-wrapped or plain).
        processor: its ``PerceptionLMProcessor``.
        train_dataset, eval_dataset: canonical samples: any ``data_adapters`` output, a ``datasets`` table, or
            a list of sample dicts (turned into a table; give media as paths, PIL images or bytes).
        args: a ``trl.SFTConfig``; ``run_config`` says how its ``padding_free`` and ``train_sampling_strategy``
            are read and what it changes. ``args.max_length`` is the collator's ``max_length`` when no collator is
            given (TRL's default is 1024 tokens: PLM's thumb+tile image alone is about 9.5k, so set it deliberately).
        media: how media become tokens and what is in the loss (``MediaArguments``; default: its defaults): the
            collator is built from it, ``args.max_length`` and ``args.padding_free``, with pixels in the model's
            dtype.
        model_args: ``vision_lr`` / ``projector_lr``, learning rates for those parts (default:
            ``args.learning_rate``), as optimizer parameter groups named "language" / "vision" / "projector",
            built by the Trainer when training starts, so DeepSpeed keeps them; and ``labelled_logits_loss``, how
            the loss avoids ``(tokens, vocab)`` logits (``PLMTrainer``). Its other fields are ``load_model``'s.
        eval_args: ``generation_eval_steps``: every this many steps, answer the first
            ``generation_eval_samples`` samples of ``eval_dataset`` by greedy generation (at most
            ``eval_max_new_tokens`` tokens) and log their scores as ``gen_eval/...``
            (``GenerationEvalCallback``; works under ZeRO-3). 0: off.
        collator: a ready ``PLMCollator``, in place of ``media`` (ValueError when both are given). One with
            ``labelled_logits_only=True``, or without ``padding_free`` when ``args.padding_free`` is on, is
            refused (ValueError): the trainer scores labelled positions itself.
        callbacks: extra ``TrainerCallback``s.

    Returns:
        The trainer; call ``.train()``. Its ``plm_collator`` is the collator (read ``.stats``).

    Raises:
        ValueError: an empty ``train_dataset``; ``generation_eval_steps`` without ``eval_dataset``; a refused
            collator or setting (above); ``plm_tune.arguments.SettingError``: a setting out of range or ignored
            (``check_settings``), e.g. ``vision_lr`` for a frozen tower; ``OutputFolderError``: ``args.output_dir``
            holds the other kind of weights (``plm_tune.training.checkpoints.check_output_dir``).

    Example:
        >>> trainer = build_trainer(model, processor, samples, args=SFTConfig(output_dir="out", max_length=4096),
        ...                         media=MediaArguments(max_tiles=4))                     # doctest: +SKIP
    """
    from plm_tune.training.plm_trainer import PLMTrainer

    model_args, eval_args = model_args or ModelArguments(), eval_args or EvalArguments()
    config = run_config(args, train_dataset)
    check_gpu_usable(config.use_cpu)  # an NVIDIA GPU torch cannot use: an error, not a silent run on the CPU
    packed = bool(getattr(args, "padding_free", False))
    collator = _collator(collator, media, processor, model, max_length=config.max_length, padding_free=packed)
    if hasattr(train_dataset, "__len__") and len(train_dataset) == 0:
        raise ValueError("build_trainer: train_dataset is empty: there is nothing to train on. Check the data "
                         "source (an adapter's .skip_report says what it skipped).")
    if eval_args.generation_eval_steps and eval_dataset is None:
        raise ValueError("generation_eval_steps needs an eval_dataset to answer: pass one, or set it to 0.")
    kinds = media_kinds(train_dataset)
    train_dataset, eval_dataset = as_dataset(train_dataset), as_dataset(eval_dataset)
    lrs = dict(lr=config.learning_rate, vision_lr=model_args.vision_lr, projector_lr=model_args.projector_lr,
               weight_decay=config.weight_decay)
    groups = parameter_groups(model, **lrs)  # fail here, not at train(), when nothing is trainable
    # Every setting in one line (finetune checked them before loading; a Python caller gets the same checks), a
    # part's learning rate against what this model trains; then the output folder, before the Trainer makes it.
    check_settings(model_args, media, config, eval_args, trainable_parts=[group["name"] for group in groups])
    check_output_dir(config.output_dir, method_of(model), overwrite=eval_args.overwrite_output_dir,
                     should_save=config.should_save)
    # A factory, not a ready optimizer: under DeepSpeed the Trainer drops an optimizer passed in
    # `optimizers` and builds its own (two unnamed groups, one LR); a factory is what it calls then too.
    factory = functools.partial(PartOptimizer, *optimizer_class(config), lrs)
    trainer = PLMTrainer(
        model=model,
        args=config,
        data_collator=collator,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=processor,
        optimizer_cls_and_kwargs=(factory, {}),  # our parameter groups; the Trainer builds the LR schedule
        callbacks=callbacks,
        group_by_length=getattr(args, "train_sampling_strategy", None) == "group_by_length",
        labelled_logits_loss=model_args.labelled_logits_loss,
    )
    _placeholders_when_sharded(trainer, collator, kinds)
    _add_plm_callbacks(trainer, collator, eval_dataset, eval_args)
    return trainer


def method_of(model: Any) -> str:
    """``"full"`` for a plain model; ``"dora"`` / ``"lora"`` for a peft one (QLoRA saves what LoRA saves)."""
    peft_config = getattr(model, "peft_config", None)
    if not peft_config:
        return "full"
    return "dora" if getattr(next(iter(peft_config.values())), "use_dora", False) else "lora"


def run_config(args: SFTConfig | None, train_dataset: Any) -> SFTConfig:
    """The ``SFTConfig`` a ``PLMTrainer`` runs with: ``args`` (default: SFTConfig's, bf16 only on a bf16 GPU)
    with what plm-tune does itself turned off for TRL and transformers, in one ``dataclasses.replace``.

    ``args.padding_free`` and ``args.train_sampling_strategy`` say what the run asks for; the returned config
    has both off, because plm-tune does them (``build_trainer`` reads them from ``args``):

    * ``padding_free=True`` packs each batch into one row without padding (``PLMCollator(padding_free=True)``;
      TRL refuses it for vision data).
    * ``train_sampling_strategy="group_by_length"`` orders training by ``LengthGroupedBatchSampler`` over every
      sample's (tokens, tiles + frames) (``PLMTrainer(group_by_length=True)``; transformers' needs ``input_ids``
      columns): similar samples share a batch, and under DDP / DeepSpeed each step's batches go one per process
      with similar cost. The costs are computed once, before training, from media headers, each process taking a
      share (``plm_tune.training.distributed.shared_costs``); a stream is refused.

    ``dataloader_persistent_workers`` is left as given: transformers' default is off, and ``TrainingArguments``
    cannot tell that default from a chosen False. The shipped recipe configs turn it on next to their
    ``dataloader_num_workers``, so workers are not forked again each epoch and eval.

    Raises:
        ValueError: ``group_by_length`` with a streaming ``train_dataset``; a stream with settings accelerate
            cannot split (``plm_tune.training.distributed.stream_accelerator_config``).
    """
    from trl import SFTConfig

    if args is None:  # SFTConfig's own default, bf16=True, is refused on a CPU
        bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        args = SFTConfig(output_dir="outputs/plm-tune", bf16=bf16)
    group_by_length = args.train_sampling_strategy == "group_by_length"
    if group_by_length and isinstance(train_dataset, torch.utils.data.IterableDataset):
        # The Trainer asks no sampler of a stream: the setting would otherwise be dropped without a word.
        raise ValueError("train_sampling_strategy='group_by_length' with a streaming train_dataset: grouping orders "
                         "every sample by its cost before training, and a stream is read as training goes. Leave "
                         "train_sampling_strategy at 'random' for a stream (shuffle it with IterableDataset.shuffle("
                         "buffer_size=..., seed=...)), or train on a table (streaming=False).")
    if args.remove_unused_columns:
        logger.info("Setting remove_unused_columns=False: the PLM collator needs every sample column.")
    return dataclasses.replace(
        args,
        # TRL's default would drop the 'messages' / 'images' columns the collator reads.
        remove_unused_columns=False,
        # The collator formats and tokenises the samples; TRL's preparation would look for text columns.
        dataset_kwargs={**(args.dataset_kwargs or {}), "skip_prepare_dataset": True},
        # TRL refuses padding_free for vision data: the collator packs instead (PLMCollator(padding_free=True)).
        padding_free=False,
        # transformers' grouping needs `input_ids` columns: PLMTrainer groups by PLM's costs instead.
        train_sampling_strategy="random" if group_by_length else args.train_sampling_strategy,
        # A stream: each process reads its own shards, batches are never dispatched from process 0.
        accelerator_config=stream_accelerator_config(args, train_dataset),
    )


def _collator(collator: PLMCollator | None, media: MediaArguments | None, processor: Any, model: Any, *,
              max_length: int | None, padding_free: bool) -> PLMCollator:
    """The collator given (checked), or one built from ``media`` as ``plm-tune plan`` builds it."""
    if collator is None:
        collator = PLMCollator(processor, max_length=max_length, **dataclasses.asdict(media or MediaArguments()),
                               pixel_dtype=vision_dtype(model), padding_free=padding_free)
    elif media is not None:
        raise ValueError("build_trainer got both media= and collator=: the collator already holds its media "
                         "settings, and media would be ignored. Pass one: build the PLMCollator with those settings, "
                         "or give media alone.")
    elif collator.labelled_logits_only:
        raise ValueError(
            "build_trainer got a PLMCollator with labelled_logits_only=True. The trainer already scores only the "
            "labelled positions (ModelArguments.labelled_logits_loss, or TRL's fused LM head, which reads "
            "`shift_labels` as full-length labels). Build the collator with labelled_logits_only=False."
        )
    elif padding_free and not collator.padding_free:
        raise ValueError("args.padding_free=True but the collator given was built with padding_free=False: build it "
                         "with PLMCollator(..., padding_free=True), or leave args.padding_free off.")
    attention = decoder_attention(model)
    if collator.padding_free and attention in ("sdpa", "eager"):
        logger.warning(
            "padding_free with %s attention: samples are kept apart by a (tokens x tokens) mask over the whole packed "
            "row, so attention costs row_tokens**2 per layer (on the CPU benchmark, a demo mix trained about half as "
            "fast packed as padded). Load the model with attn_implementation='flash_attention_2' (varlen kernels, no "
            "mask) to pack, or use train_sampling_strategy='group_by_length' without padding_free.", attention)
    return collator


def decoder_attention(model: Any) -> str | None:
    """The attention kernel the Llama decoder runs (``attention_by_part`` may give the tower another)."""
    config = getattr(model, "config", None)
    text = getattr(config, "text_config", None)
    return getattr(text, "_attn_implementation", None) or getattr(config, "_attn_implementation", None)


def _placeholders_when_sharded(trainer: Any, collator: PLMCollator, kinds: tuple[str, ...]) -> None:
    """Under ZeRO-3 / FSDP over several processes, a batch without images (or videos) gets a one-tile placeholder.

    Each process gathers the tower's weights when it runs it: a batch without media on one process would leave
    the others waiting in the gather.
    """
    if (kinds and trainer.accelerator.num_processes > 1 and shards_weights(trainer)
            and not collator.media_in_every_batch):
        collator.media_in_every_batch = kinds
        logger.info("Weights are sharded over %d processes: a batch without %s gets a one-tile placeholder, so every "
                    "process runs the vision tower the same way.", trainer.accelerator.num_processes,
                    " / ".join(collator.media_in_every_batch))


def _add_plm_callbacks(trainer: Any, collator: PLMCollator, eval_dataset: Any, eval_args: EvalArguments) -> None:
    """PLM's metrics (and generation eval) first in line, so what they add reaches TensorBoard and the console in
    the same log call; then the short console lines (``quiet_training_log``)."""
    trainer.callback_handler.callbacks.insert(0, PLMMetricsCallback(collator, trainer))
    if eval_args.generation_eval_steps:
        count = min(eval_args.generation_eval_samples, len(eval_dataset))
        subset = eval_dataset.select(range(count)) if hasattr(eval_dataset, "select") else eval_dataset[:count]
        trainer.callback_handler.callbacks.insert(1, GenerationEvalCallback(
            trainer, subset, eval_args.generation_eval_steps, eval_args.eval_max_new_tokens))
    quiet_training_log(trainer)  # short console lines; PLM_TUNE_VERBOSE=1 prints the full dicts


def as_dataset(samples: Any) -> Any:
    """TRL wants a ``datasets`` table: a plain list of samples becomes one that hands back the samples themselves.

    The table holds only row numbers; a transform returns the original dicts, untouched. Converting them to Arrow
    would keep only the keys of the first sample (a video set after an image-only sample lost its videos) and
    turn in-memory frames into nested lists.
    """
    if isinstance(samples, list):
        import datasets

        return datasets.Dataset.from_dict({_ROW: list(range(len(samples)))}).with_transform(_InMemoryRows(samples))
    return samples


_ROW = "_plm_tune_row"


class _InMemoryRows:
    """``Dataset.with_transform`` function: rows of row numbers -> the samples at those numbers (picklable)."""

    def __init__(self, samples: list[dict[str, Any]]) -> None:
        self.samples = samples

    def __call__(self, batch: dict[str, list[int]]) -> dict[str, list[Any]]:
        return sample_columns([self.samples[i] for i in batch[_ROW]])


class PartOptimizer:
    """Transformers' optimizer-factory protocol, ``factory()(model)``: the optimizer over ``parameter_groups``.

    The Trainer calls it whenever it creates the optimizer (``create_optimizer``), including inside
    ``deepspeed_init``, with the model it trains.
    """

    def __init__(self, optimizer_cls: type[torch.optim.Optimizer], optimizer_kwargs: dict[str, Any],
                 lrs: dict[str, Any]) -> None:
        self.optimizer_cls, self.optimizer_kwargs, self.lrs = optimizer_cls, optimizer_kwargs, lrs

    def __call__(self, model: Any, **kwargs: Any) -> torch.optim.Optimizer:
        return self.optimizer_cls(parameter_groups(model, **self.lrs), **self.optimizer_kwargs, **kwargs)


def optimizer_class(args: Any) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """The optimizer ``args.optim`` names, with its kwargs, without the LR (set per group)."""
    from transformers import Trainer

    optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args)
    kwargs = {k: v for k, v in kwargs.items() if k != "lr"}
    return optimizer_cls, kwargs


def loss_change(log_history: list[dict[str, Any]]) -> str:
    """One line on how the loss moved, from ``trainer.state.log_history``.

    E.g. 'train loss 6.82 (step 1) -> 6.15 (step 40); eval loss 6.81 -> 6.30 (token accuracy 0.00 -> 0.45)'."""
    train = [entry for entry in log_history if "loss" in entry]
    evals = [entry for entry in log_history if "eval_loss" in entry]
    text = "no train loss logged (max_steps < logging_steps?)"
    if train:
        text = f"train loss {train[0]['loss']:.3f} (step {train[0]['step']}) -> {train[-1]['loss']:.3f} (step {train[-1]['step']})"
    if len(evals) > 1:  # eval_on_start gives the "before"
        first, last = evals[0], evals[-1]
        text += f"; eval loss {first['eval_loss']:.3f} -> {last['eval_loss']:.3f}"
        if "eval_mean_token_accuracy" in first:
            text += f" (token accuracy {first['eval_mean_token_accuracy']:.2f} -> {last['eval_mean_token_accuracy']:.2f})"
    return text
