"""What training over several processes needs from plm-tune: a stream that each process reads its own shards of,
a vision tower that every process runs in step when the weights are sharded (ZeRO-3, FSDP), and sample costs
that the processes compute once between them."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch

from plm_tune.encoding.collator import PLMCollator
from plm_tune.encoding.costs import Cost, dataset_costs

__all__ = ["media_kinds", "process_share", "shared_costs", "shards_weights", "stream_accelerator_config"]

logger = logging.getLogger(__name__)


def shards_weights(trainer: Any) -> bool:
    """Whether each process holds only a shard of the weights and gathers them as modules run (ZeRO-3, FSDP)."""
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    return (plugin is not None and plugin.zero_stage == 3) or bool(getattr(trainer, "is_fsdp_enabled", False))


def process_share(count: int, process_index: int, num_processes: int) -> range:
    """The contiguous block of ``range(count)`` that process ``process_index`` of ``num_processes`` takes: the
    blocks, in process order, are ``range(count)`` again, and their sizes differ by at most one.

    >>> [list(process_share(5, rank, 2)) for rank in (0, 1)]
    [[0, 1], [2, 3, 4]]
    """
    return range(count * process_index // num_processes, count * (process_index + 1) // num_processes)


def shared_costs(dataset: Any, collator: PLMCollator, accelerator: Any, *, progress: bool) -> list[Cost]:
    """Every sample's ``(tokens, tiles + frames)`` (``plm_tune.encoding.costs.dataset_costs``), computed once between the
    processes: each estimates its ``process_share`` of the dataset, then all gather the rest.

    Every process needs every cost (each builds the same length-grouped order and takes its part of it). Each
    computing all of them would take as long as one process alone; one computing them while the others wait in a
    broadcast would leave those waiting that long, past the collective timeout (``ddp_timeout``) on a big corpus.
    Split, every process arrives at the gather after ``1 / num_processes`` of the work.

    Args:
        accelerator: the Trainer's ``accelerate.Accelerator`` (its process index and count).
        progress: show the bar (over this process's share).
    """
    from accelerate.utils import gather_object

    share = process_share(len(dataset), accelerator.process_index, accelerator.num_processes)
    mine = dataset_costs(dataset, collator, progress=progress, indices=share)
    if accelerator.num_processes == 1:
        return mine
    return [tuple(cost) for cost in gather_object(mine)]  # every process's list, joined in process order


def media_kinds(dataset: Any) -> tuple[str, ...]:
    """The kinds of media (``"image"``, ``"video"``) a training set may hold, read without decoding any.

    A list of samples is looked at; a table's ``images`` / ``videos`` columns are read from Arrow. A stream, or a
    table without those columns, counts as holding both (a placeholder too many costs one tile, one too few a hang).
    """
    columns = {"image": "images", "video": "videos"}
    if isinstance(dataset, list):
        return tuple(kind for kind, column in columns.items() if any(sample.get(column) for sample in dataset))
    table = getattr(dataset, "data", None)  # datasets.Dataset's Arrow table (transforms not applied)
    kinds = []
    for kind, column in columns.items():
        if table is None or column not in table.column_names:
            kinds.append(kind)
            continue
        import pyarrow.compute as pc

        try:
            longest = pc.max(pc.list_value_length(table.column(column))).as_py()
        except (TypeError, ValueError, NotImplementedError):  # not a list column: cannot tell, so assume present
            longest = 1
        if longest:
            kinds.append(kind)
    return tuple(kinds)


def stream_accelerator_config(args: Any, train_dataset: Any) -> Any:
    """The ``args.accelerator_config`` to train ``train_dataset`` with: for a stream, every process reads its own
    shards and batches are never dispatched; anything else keeps ``args``' own.

    accelerate's default for an ``IterableDataset``, ``dispatch_batches=True``, reads every batch on process 0 and
    concatenates the processes' batches there to slice them out (``accelerate.data_loader.DataLoaderDispatcher``):
    that fails for PLM batches of different lengths and tile counts, and process 0 would decode everyone's media.
    With ``dispatch_batches=False``, accelerate's ``prepare_data_loader`` gives each process a contiguous block of a
    ``datasets.IterableDataset``'s shards (``IterableDataset.shard``) when there is at least one per process, and
    the process's DataLoader workers share its block. With fewer shards, or ``split_batches=True``, every process
    reads the whole stream and keeps its slice of each batch instead (``IterableDatasetShard``), which is warned.
    Either way the collator decodes media, so each process decodes only what it trains on.

    Shards hold whole records, so a process whose shards hold fewer records starts its next pass sooner; every
    process still takes ``max_steps`` steps (a stream has no length, so the Trainer requires them).

    TRL's ``SFTTrainer`` turns dispatching off for a ``datasets.IterableDataset`` as well, but overrides an explicit
    ``dispatch_batches=True`` with a warning and edits the caller's ``AcceleratorConfig`` in place: here the first is
    refused, and a new ``AcceleratorConfig`` is returned (for ``build_trainer``'s one ``dataclasses.replace``).

    Raises:
        ValueError: ``dispatch_batches=True``, or a stream already split by process.
    """
    import datasets

    config = args.accelerator_config
    if not isinstance(train_dataset, torch.utils.data.IterableDataset):
        return config
    if config.dispatch_batches:
        raise ValueError("accelerator_config dispatch_batches=True with a streaming train_dataset: accelerate would "
                         "concatenate every process's batches on process 0, which fails for PLM batches of different "
                         "lengths and tile counts. Leave dispatch_batches unset: each process then reads its own shards.")
    # `_distributed` is private to datasets, but the only mark split_dataset_by_node leaves. accelerate would split
    # the already split stream again, and each process would read 1 / world_size of its own share.
    if getattr(train_dataset, "_distributed", None) is not None:
        raise ValueError("train_dataset was already split by process (datasets.distributed.split_dataset_by_node); "
                         "accelerate splits it again under the Trainer, and most of it would never be read. Pass the "
                         "whole stream: each process gets shards of its own.")
    processes = args.world_size
    per_process = dataclasses.replace(config, dispatch_batches=False)
    if processes == 1 or not isinstance(train_dataset, datasets.IterableDataset):
        return per_process
    shards = train_dataset.num_shards
    if config.split_batches or shards < processes:
        cause, fix = (("split_batches=True", "leave split_batches off") if config.split_batches else
                      (f"{shards} shard(s) for {processes} processes",
                       "give it at least one shard per process (tar shards, data files)"))
        logger.warning("Training stream with %s: every process reads all of it and keeps its slice of each batch, and "
                       "the last incomplete batch of a pass is filled with samples from its start. To have each "
                       "process read shards of its own, %s.", cause, fix)
    elif shards % processes:
        logger.warning("Training stream with %d shards for %d processes: the first %d processes read one shard more "
                       "than the others, whose records then come round more often. A multiple of %d shards balances "
                       "them.", shards, processes, shards % processes, processes)
    return per_process
