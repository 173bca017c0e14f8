"""TRL's ``SFTTrainer`` wired for PLM: our collator, per-part learning rates, and the numbers worth watching.

``build_trainer`` composes public APIs: the library owns the loop (TRL / transformers / accelerate /
DeepSpeed), plm-tune supplies the batch (``PLMCollator``), the optimizer's parameter groups
(``parameter_groups``) and a callback that logs what the collator saw. Two opt-in features reach into
private Trainer hooks, and ``PLMTrainer``'s docstring names each one and why.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any

import torch

from plm_tune.arguments import EvalArguments, MediaArguments, ModelArguments, settings_from
from plm_tune.callbacks import GenerationEvalCallback, PLMMetricsCallback
from plm_tune.checkpoints import guarded_train
from plm_tune.collator import PLMCollator
from plm_tune.devices import check_gpu_usable
from plm_tune.distributed import media_kinds, shards_weights, shared_costs, stream_per_process
from plm_tune.generation import vision_dtype
from plm_tune.model import parameter_groups
from plm_tune.precision import apply_run_dtypes
from plm_tune.quiet_log import quiet_training_log
from plm_tune.sample import sample_columns
from plm_tune.sampler import LengthGroupedBatchSampler, padding_fraction
from plm_tune.sparse_logits import project_labelled_only

__all__ = ["build_trainer", "loss_change"]

logger = logging.getLogger(__name__)


def build_trainer(
    model: Any,
    processor: Any,
    train_dataset: Any,
    eval_dataset: Any = None,
    args: Any = None,
    *,
    collator: PLMCollator | None = None,
    media: MediaArguments | None = None,
    model_args: ModelArguments | None = None,
    eval_args: EvalArguments | None = None,
    train_on: str = MediaArguments.train_on,
    max_tiles: int | None = MediaArguments.max_tiles,
    num_frames: int = MediaArguments.num_frames,
    vision_input_type: str | None = MediaArguments.vision_input_type,
    multi_image_tiles: int | None = MediaArguments.multi_image_tiles,
    keep_media_order: bool = MediaArguments.keep_media_order,
    fit_tiles: bool = MediaArguments.fit_tiles,
    fit_frames: bool = MediaArguments.fit_frames,
    vision_lr: float | None = ModelArguments.vision_lr,
    projector_lr: float | None = ModelArguments.projector_lr,
    callbacks: list[Any] | None = None,
    generation_eval_steps: int = EvalArguments.generation_eval_steps,
    generation_eval_samples: int = EvalArguments.generation_eval_samples,
    generation_max_new_tokens: int = EvalArguments.eval_max_new_tokens,
    labelled_logits_only: bool | None = None,
):
    """A TRL ``SFTTrainer`` that trains PLM on canonical samples.

    Args:
        model: from ``plm_tune.load_model`` (peft-wrapped or plain).
        processor: its ``PerceptionLMProcessor``.
        train_dataset, eval_dataset: canonical samples: any ``data_adapters`` output, a ``datasets`` table, or
            a list of sample dicts (turned into a table; give media as paths, PIL images or bytes).
        args: a ``trl.SFTConfig``. ``remove_unused_columns`` must be False and TRL's dataset preparation is
            skipped (the collator formats samples); both are set here.
            ``args.max_length`` is the collator's ``max_length`` when no collator is given (TRL's default is
            1024 tokens: PLM's thumb+tile image alone is about 9.5k, so set it deliberately).
            ``args.padding_free=True`` packs each batch into one row without padding (``PLMCollator(padding_free=
            True)``; TRL refuses it for vision data, so it is handled here and TRL sees it off).
            ``args.train_sampling_strategy="group_by_length"`` orders training by ``LengthGroupedBatchSampler``
            over every sample's (tokens, tiles + frames) instead of transformers' sampler (which needs
            ``input_ids`` columns): similar samples share a batch, and under DDP / DeepSpeed each step's batches
            go one per process with similar cost. The costs are computed once, before training, with a
            progress bar, from media headers, each process taking a share and all gathering the rest
            (``plm_tune.distributed.shared_costs``); a stream is refused (ValueError).
            ``args.dataloader_persistent_workers`` is left as given: transformers' default is off, and
            ``TrainingArguments`` cannot tell that default from a chosen False. The shipped recipe configs turn it
            on next to their ``dataloader_num_workers``, so workers are not forked again each epoch and eval.
        media, model_args, eval_args: run settings (``plm_tune.arguments``), as the recipes pass them: ``media``
            stands for the collator keywords below, ``model_args`` for ``vision_lr`` / ``projector_lr`` and
            ``eval_args`` for ``generation_eval_steps`` / ``generation_eval_samples``. Give either an object or
            those keywords (ValueError when a keyword is also set).
        collator: a ready ``PLMCollator``; otherwise one is built from ``train_on``, ``max_tiles``,
            ``num_frames``, ``vision_input_type`` (``"thumb+tile"`` or ``"vanilla"``; default: the processor's),
            ``multi_image_tiles``, ``keep_media_order`` (``PLMCollator``: by default several images get one
            plain tile each and media are placed as PLM's trainer did), ``fit_frames``, ``fit_tiles`` and ``args.max_length``, with pixels in the model's dtype. A collator with ``labelled_logits_only=True``
            is refused (ValueError): the trainer does that itself (below).
        vision_lr, projector_lr: learning rates for those parts (default: ``args.learning_rate``). They are
            optimizer parameter groups named "language" / "vision" / "projector", built by the Trainer when
            training starts (``trainer.create_optimizer()`` builds them earlier), so DeepSpeed keeps them.
        callbacks: extra ``TrainerCallback``s.
        generation_eval_steps: every this many steps, answer the first ``generation_eval_samples`` samples of
            ``eval_dataset`` by greedy generation (at most ``generation_max_new_tokens`` tokens) and log their
            scores as ``gen_eval/...`` (``GenerationEvalCallback``; works under ZeRO-3). 0: off.
        labelled_logits_only: how the loss avoids ``(batch, seq_len, vocab)`` logits (128k wide for PLM).
            True: the model projects only the (row, position) pairs that predict a labelled token
            (``plm_tune.sparse_logits.project_labelled_only``) and the trainer takes the loss, entropy and token
            accuracy there. False: TRL's fused LM head, which scores in tiles, only the labelled positions on
            CUDA / XPU but every position elsewhere (on a CPU, 7.0 s instead of 0.6 s forward + backward on the
            batch of benchmarks/vs_baseline.py). None (default): True except on CUDA / XPU, where TRL's tiles
            also bound the memory of long labelled spans. Same loss either way.

    Returns:
        The trainer; call ``.train()``. Its ``plm_collator`` attribute is the collator (read ``.stats``).
    """
    from trl import SFTConfig

    media = settings_from(media, MediaArguments, train_on=train_on, max_tiles=max_tiles, num_frames=num_frames,
                          vision_input_type=vision_input_type, multi_image_tiles=multi_image_tiles,
                          keep_media_order=keep_media_order, fit_tiles=fit_tiles, fit_frames=fit_frames)
    model_args = settings_from(model_args, ModelArguments, vision_lr=vision_lr, projector_lr=projector_lr)
    eval_args = settings_from(eval_args, EvalArguments, generation_eval_steps=generation_eval_steps,
                              generation_eval_samples=generation_eval_samples)
    if args is None:  # SFTConfig's own default, bf16=True, is refused on a CPU
        bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        args = SFTConfig(output_dir="outputs/plm-tune", bf16=bf16)
    check_gpu_usable(args.use_cpu)  # an NVIDIA GPU torch cannot use: an error, not a silent run on the CPU
    if args.remove_unused_columns:
        # TRL's default; it would drop the 'messages' / 'images' columns the collator reads.
        logger.info("Setting remove_unused_columns=False: the PLM collator needs every sample column.")
    # TRL refuses padding_free for vision data and transformers' length grouping needs `input_ids` columns:
    # both are done here instead (the collator packs, PLMTrainer groups), so TRL and transformers see them off.
    padding_free = bool(getattr(args, "padding_free", False))
    group_by_length = getattr(args, "train_sampling_strategy", None) == "group_by_length"
    if group_by_length and isinstance(train_dataset, torch.utils.data.IterableDataset):
        # The Trainer asks no sampler of a stream: the setting would otherwise be dropped without a word.
        raise ValueError("train_sampling_strategy='group_by_length' with a streaming train_dataset: grouping orders "
                         "every sample by its cost before training, and a stream is read as training goes. Leave "
                         "train_sampling_strategy at 'random' for a stream (shuffle it with IterableDataset.shuffle("
                         "buffer_size=..., seed=...)), or train on a table (streaming=False).")
    args = dataclasses.replace(
        args,
        remove_unused_columns=False,
        dataset_kwargs={**(args.dataset_kwargs or {}), "skip_prepare_dataset": True},
        padding_free=False,
        train_sampling_strategy="random" if group_by_length else args.train_sampling_strategy,
    )
    if collator is not None and getattr(collator, "labelled_logits_only", False):
        raise ValueError(
            "build_trainer got a PLMCollator with labelled_logits_only=True. The trainer already scores only the "
            "labelled positions (build_trainer's own labelled_logits_only, or TRL's fused LM head, which reads "
            "`shift_labels` as full-length labels). Build the collator with labelled_logits_only=False."
        )
    if collator is not None and padding_free and not collator.padding_free:
        raise ValueError("args.padding_free=True but the collator given was built with padding_free=False: build it "
                         "with PLMCollator(..., padding_free=True), or leave args.padding_free off.")
    if collator is None:
        collator = PLMCollator(
            processor,
            max_length=args.max_length,
            train_on=media.train_on,
            max_tiles=media.max_tiles,
            num_frames=media.num_frames,
            vision_input_type=media.vision_input_type,
            multi_image_tiles=media.multi_image_tiles,
            keep_media_order=media.keep_media_order,
            fit_tiles=media.fit_tiles,
            fit_frames=media.fit_frames,
            pixel_dtype=vision_dtype(model),
            padding_free=padding_free,
        )
    attention = _decoder_attention(model)
    if collator.padding_free and attention in ("sdpa", "eager"):
        logger.warning(
            "padding_free with %s attention: samples are kept apart by a (tokens x tokens) mask over the whole packed "
            "row, so attention costs row_tokens**2 per layer (on the CPU benchmark, a demo mix trained about half as "
            "fast packed as padded). Load the model with attn_implementation='flash_attention_2' (varlen kernels, no "
            "mask) to pack, or use train_sampling_strategy='group_by_length' without padding_free.", attention)
    if hasattr(train_dataset, "__len__") and len(train_dataset) == 0:
        raise ValueError("build_trainer: train_dataset is empty: there is nothing to train on. Check the data "
                         "source (an adapter's .skip_report says what it skipped).")
    kinds = media_kinds(train_dataset)
    train_dataset, eval_dataset = _as_dataset(train_dataset), _as_dataset(eval_dataset)
    args = stream_per_process(args, train_dataset)
    optimizer_cls, optimizer_kwargs = _optimizer_class(args)
    # A factory, not a ready optimizer: under DeepSpeed the Trainer drops an optimizer passed in
    # `optimizers` and builds its own (two unnamed groups, one LR); a factory is what it calls then too.
    lrs = dict(lr=args.learning_rate, vision_lr=model_args.vision_lr, projector_lr=model_args.projector_lr,
               weight_decay=args.weight_decay)
    parameter_groups(model, **lrs)  # fail here, not at train(), when nothing is trainable
    factory = functools.partial(_PartOptimizer, optimizer_cls, optimizer_kwargs, lrs)
    trainer = _plm_trainer_class()(
        model=model,
        args=args,
        data_collator=collator,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=processor,
        optimizer_cls_and_kwargs=(factory, {}),  # our parameter groups; the Trainer builds the LR schedule
        callbacks=callbacks,
    )
    apply_run_dtypes(trainer)
    if (kinds and trainer.accelerator.num_processes > 1 and shards_weights(trainer)
            and not collator.media_in_every_batch):
        # Each process gathers the tower's weights when it runs it: a batch without images (or videos) on one
        # process would leave the others waiting in the gather.
        collator.media_in_every_batch = kinds
        logger.info("Weights are sharded over %d processes: a batch without %s gets a one-tile placeholder, so every "
                    "process runs the vision tower the same way.", trainer.accelerator.num_processes,
                    " / ".join(collator.media_in_every_batch))
    # First in line, so the numbers it adds reach TensorBoard and the console in the same log call.
    trainer.callback_handler.callbacks.insert(0, PLMMetricsCallback(collator, trainer))
    quiet_training_log(trainer)  # short console lines; PLM_TUNE_VERBOSE=1 prints the full dicts
    trainer.plm_collator = collator
    trainer.plm_group_by_length = group_by_length
    if labelled_logits_only is None:
        labelled_logits_only = trainer.accelerator.device.type not in ("cuda", "xpu")
    trainer.plm_labelled_logits_only = labelled_logits_only
    if eval_args.generation_eval_steps:
        if eval_dataset is None:
            raise ValueError("generation_eval_steps needs an eval_dataset to answer: pass one, or set it to 0.")
        count = min(eval_args.generation_eval_samples, len(eval_dataset))
        subset = eval_dataset.select(range(count)) if hasattr(eval_dataset, "select") else eval_dataset[:count]
        # Before the reporting callbacks, like PLMMetricsCallback, so TensorBoard gets the scores.
        trainer.callback_handler.callbacks.insert(
            1, GenerationEvalCallback(trainer, subset, eval_args.generation_eval_steps, generation_max_new_tokens)
        )
    return trainer


def _decoder_attention(model: Any) -> str | None:
    """The attention kernel the Llama decoder runs (``attention_by_part`` may give the tower another)."""
    config = getattr(model, "config", None)
    text = getattr(config, "text_config", None)
    return getattr(text, "_attn_implementation", None) or getattr(config, "_attn_implementation", None)


@functools.cache
def _plm_trainer_class() -> type:
    """``PLMTrainer``: TRL's ``SFTTrainer`` whose training order can be grouped by PLM's sample costs (built on first
    use, so importing plm_tune does not import TRL)."""
    from trl import SFTTrainer

    class PLMTrainer(SFTTrainer):
        """``SFTTrainer`` with ``train_sampling_strategy="group_by_length"`` done by ``LengthGroupedBatchSampler``
        (costs are (tokens, tiles + frames) per sample, and each step's batches go to the processes in turn),
        and optionally its loss from the logits of the labelled positions only (``labelled_logits_only``).

        What it overrides, and the non-public parts it relies on (as of transformers 5.24 / TRL 1.16):

        * ``_get_train_sampler`` (a private Trainer method) for ``group_by_length``: the public
          ``get_train_dataloader`` only hands it to the private ``_get_dataloader``, and overriding the public
          one would re-implement the loader (workers, seeding, accelerate's preparation). transformers' own
          grouping reads one length column; ours groups by two costs and balances ranks. It reads
          ``_train_batch_size`` (the per-device batch the Trainer will use). Off: ``super()``'s sampler.
        * ``compute_loss`` (public) for ``labelled_logits_only``: ``_labelled_logits_loss`` then appends to
          TRL's private ``_metrics`` and ``_total_train_tokens``, the store TRL's ``log()`` averages and empties
          at every logging step, so ``entropy``, ``mean_token_accuracy`` and ``num_tokens`` are logged as TRL
          logs them; no public hook adds per-step values to that average. Off, or any case TRL handles
          specially (``return_outputs``, a custom loss, label smoothing, aux loss, non-``nll`` loss):
          ``super().compute_loss``.
        """

        plm_group_by_length = False
        plm_labelled_logits_only = False
        plm_collator: PLMCollator

        def train(self, resume_from_checkpoint=None, **kwargs):
            return guarded_train(super().train, self.args.output_dir, resume_from_checkpoint,
                                 should_save=self.args.should_save, **kwargs)

        def _get_train_sampler(self, train_dataset=None):
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            if not self.plm_group_by_length:
                return super()._get_train_sampler(train_dataset)
            costs = shared_costs(dataset, self.plm_collator, self.accelerator, progress=self.is_world_process_zero())
            grouped = LengthGroupedBatchSampler(
                costs, self._train_batch_size, seed=self.args.seed, drop_last=self.args.dataloader_drop_last,
                num_replicas=self.accelerator.num_processes,
            )
            if self.is_world_process_zero():
                random_order = torch.randperm(len(costs), generator=torch.Generator().manual_seed(self.args.seed))
                size = self._train_batch_size
                random_batches = [random_order[i : i + size].tolist() for i in range(0, len(costs), size)]
                logger.warning("Grouping %d samples by length (batch %d per device): padding %.1f%% of token slots "
                               "instead of %.1f%% in random batches.", len(costs), size,
                               100 * padding_fraction(costs, list(grouped)), 100 * padding_fraction(costs, random_batches))
            return grouped.flat()

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            special = (return_outputs or self.compute_loss_func is not None or self.label_smoother is not None
                       or self.aux_loss_enabled or self.args.loss_type != "nll")
            if not self.plm_labelled_logits_only or special:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            return self._labelled_logits_loss(model, inputs, num_items_in_batch)

        def _labelled_logits_loss(self, model, inputs, num_items_in_batch):
            """TRL's loss and metrics, from logits at the labelled (row, position) pairs only."""
            mode = "train" if self.model.training else "eval"
            batch = {key: value for key, value in inputs.items() if key != "labels"}
            batch["use_cache"] = False  # packed batches carry it already
            with project_labelled_only(self.accelerator.unwrap_model(model), inputs["labels"]) as targets:
                logits = model(**batch, logits_to_keep=0).logits[0].float()  # (N labelled, vocab)
            log_probs = torch.log_softmax(logits, dim=-1)
            picked = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            count = targets.numel() if num_items_in_batch is None else num_items_in_batch
            # As TRL: clamped, so a batch without labels gives a differentiable zero, not 0 / 0.
            loss = -picked.sum() / torch.as_tensor(count).clamp(min=1)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes  # DDP averages the gradients across ranks

            with torch.no_grad():
                gather = self.accelerator.gather_for_metrics
                device = logits.device
                valid = gather(torch.tensor(targets.numel(), device=device)).sum()
                entropy = gather(-(log_probs.exp() * log_probs).sum()).sum()
                correct = gather((logits.argmax(-1) == targets).sum()).sum()
                self._metrics[mode]["entropy"].append((entropy / valid).item() if valid > 0 else 0.0)
                self._metrics[mode]["mean_token_accuracy"].append((correct / valid).item() if valid > 0 else 0.0)
                if mode == "train":
                    mask_or_ids = inputs.get("attention_mask")
                    local = mask_or_ids.sum() if mask_or_ids is not None else torch.tensor(
                        inputs["input_ids"].numel(), device=inputs["input_ids"].device)
                    self._total_train_tokens += gather(local).sum().item()
                self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
            return loss

    return PLMTrainer


def _as_dataset(samples: Any) -> Any:
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


class _PartOptimizer:
    """Transformers' optimizer-factory protocol, ``factory()(model)``: the optimizer over ``parameter_groups``.

    The Trainer calls it whenever it creates the optimizer (``create_optimizer``), including inside
    ``deepspeed_init``, with the model it trains.
    """

    def __init__(self, optimizer_cls: type[torch.optim.Optimizer], optimizer_kwargs: dict[str, Any],
                 lrs: dict[str, Any]) -> None:
        self.optimizer_cls, self.optimizer_kwargs, self.lrs = optimizer_cls, optimizer_kwargs, lrs

    def __call__(self, model: Any, **kwargs: Any) -> torch.optim.Optimizer:
        return self.optimizer_cls(parameter_groups(model, **self.lrs), **self.optimizer_kwargs, **kwargs)


def _optimizer_class(args: Any) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
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
