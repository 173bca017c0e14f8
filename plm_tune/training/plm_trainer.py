"""``PLMTrainer``: TRL's ``SFTTrainer`` with PLM's training order, PLM's loss on labelled positions, and guarded
checkpoints.

This module imports TRL at its top; ``plm_tune.training.trainer.build_trainer`` imports it on first use, so that
``import plm_tune`` (and ``from plm_tune import build_trainer``) does not import TRL.

Example:
    >>> from plm_tune import PLMTrainer, build_trainer                       # doctest: +SKIP
    >>> trainer = build_trainer(model, processor, samples, args=args)        # doctest: +SKIP
    >>> isinstance(trainer, PLMTrainer)                                      # doctest: +SKIP
    True
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from trl import SFTTrainer

from plm_tune.encoding.collator import PLMCollator
from plm_tune.encoding.sampler import LengthGroupedBatchSampler, padding_fraction
from plm_tune.encoding.sparse_logits import project_labelled_only
from plm_tune.modeling.precision import apply_run_dtypes
from plm_tune.training.checkpoints import guarded_train
from plm_tune.training.distributed import shared_costs

__all__ = ["PLMTrainer"]

logger = logging.getLogger(__name__)


class PLMTrainer(SFTTrainer):
    """``SFTTrainer`` with ``train_sampling_strategy="group_by_length"`` done by ``LengthGroupedBatchSampler``
    (costs are (tokens, tiles + frames) per sample, and each step's batches go to the processes in turn),
    and optionally its loss from the logits of the labelled positions only (``labelled_logits_loss``).

    ``build_trainer`` builds one with plm-tune's collator, optimizer groups and callbacks; build it yourself (or
    subclass it) with a ``PLMCollator`` as ``data_collator`` and an ``args`` already derived as ``build_trainer``
    derives it (``plm_tune.training.trainer.run_config``: TRL's dataset preparation and padding-free off).

    What it overrides, and the non-public parts it relies on (as of transformers 5.24 / TRL 1.16):

    * ``__init__`` (public): after ``SFTTrainer.__init__``, every trainable weight goes to the dtype it trains in
      (``plm_tune.modeling.precision.apply_run_dtypes``): TRL's constructor casts a quantised model's trainable
      parameters to bf16.
    * ``train`` (public): through ``plm_tune.training.checkpoints.guarded_train``, so ``resume_from_checkpoint=True``
      takes the newest complete checkpoint and an unwritable output folder is refused before the first step.
    * ``_get_train_sampler`` (a private Trainer method) for ``group_by_length``: the public
      ``get_train_dataloader`` only hands it to the private ``_get_dataloader``, and overriding the public
      one would re-implement the loader (workers, seeding, accelerate's preparation). transformers' own
      grouping reads one length column; ours groups by two costs and balances ranks. It reads
      ``_train_batch_size`` (the per-device batch the Trainer will use). Off: ``super()``'s sampler.
    * ``compute_loss`` (public) for ``labelled_logits_loss``: ``_labelled_logits_loss`` then appends to
      TRL's private ``_metrics`` and ``_total_train_tokens``, the store TRL's ``log()`` averages and empties
      at every logging step, so ``entropy``, ``mean_token_accuracy`` and ``num_tokens`` are logged as TRL
      logs them; no public hook adds per-step values to that average. Off, or any case TRL handles
      specially (``return_outputs``, a custom loss, label smoothing, aux loss, non-``nll`` loss):
      ``super().compute_loss``.

    Args:
        *args, **kwargs: ``SFTTrainer``'s; ``data_collator`` a ``PLMCollator``.
        group_by_length: order training by ``LengthGroupedBatchSampler`` over the samples' costs (the
            ``args`` must say ``train_sampling_strategy="random"``: transformers' grouping needs ``input_ids``).
        labelled_logits_loss: how the loss avoids ``(batch, seq_len, vocab)`` logits (128k wide for PLM). True:
            the model projects only the (row, position) pairs that predict a labelled token
            (``plm_tune.encoding.sparse_logits.project_labelled_only``). False: TRL's fused LM head, which scores in tiles,
            only the labelled positions on CUDA / XPU but every position elsewhere. None: True except on CUDA /
            XPU, where TRL's tiles also bound the memory of long labelled spans. Same loss either way.

    Raises:
        TypeError: ``group_by_length`` without a ``PLMCollator`` (the costs come from it).
    """

    def __init__(self, *args: Any, group_by_length: bool = False, labelled_logits_loss: bool | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if group_by_length and not isinstance(self.data_collator, PLMCollator):
            raise TypeError(f"PLMTrainer(group_by_length=True) reads each sample's cost from a PLMCollator; got a "
                            f"{type(self.data_collator).__name__} as data_collator. Pass a PLMCollator, or leave "
                            "group_by_length off.")
        self.plm_group_by_length = group_by_length
        if labelled_logits_loss is None:
            labelled_logits_loss = self.accelerator.device.type not in ("cuda", "xpu")
        self.plm_labelled_logits_loss = labelled_logits_loss
        apply_run_dtypes(self)

    @property
    def plm_collator(self) -> PLMCollator:
        """The collator that makes the batches (``data_collator``); its ``.stats`` counts what it cut."""
        return self.data_collator

    def train(self, resume_from_checkpoint: Any = None, **kwargs: Any) -> Any:
        return guarded_train(super().train, self.args.output_dir, resume_from_checkpoint,
                             should_save=self.args.should_save, **kwargs)

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
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

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        special = (return_outputs or self.compute_loss_func is not None or self.label_smoother is not None
                   or self.aux_loss_enabled or self.args.loss_type != "nll")
        if not self.plm_labelled_logits_loss or special:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        return self._labelled_logits_loss(model, inputs, num_items_in_batch)

    def _labelled_logits_loss(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any) -> torch.Tensor:
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
