"""Plan before you train: the token distribution, padding waste and peak memory of a dataset, from headers.

Each sample's cost comes from ``plm_tune.encoding.costs`` (exact, media headers only, under the collator's
``max_length`` policy). ``plan_dataset`` runs it over a dataset and reports the token distribution,
over-length samples and padding waste with random, length-grouped and packed batches; ``plan_report`` adds
the peak memory of the configured method (``plm_tune.modeling.memory``) and is what ``plm-tune plan`` prints.

Example:
    >>> collator = PLMCollator(processor, max_length=4096, max_tiles=16)        # doctest: +SKIP
    >>> print(plan_dataset(dataset, collator, batch_size=8).report())          # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from plm_tune.arguments import MediaArguments, ModelArguments, settings_from
from plm_tune.data.sample import describe_sample
from plm_tune.encoding.collator import PLMCollator
from plm_tune.encoding.costs import CostEstimator, SampleEstimate
from plm_tune.encoding.sampler import LengthGroupedBatchSampler, padding_fraction
from plm_tune.modeling.memory import MemoryEstimate

__all__ = ["RELEASED_PLMS", "Plan", "plan_dataset", "plan_processor", "plan_report"]


# ------------------------------------------------------------------------------------------ a dataset
@dataclass
class Plan:
    """Per-sample estimates of a dataset and what they mean for training at ``batch_size``.

    ``padding`` holds the share of padded token slots for ``"random"`` batches (one shuffled epoch),
    ``"grouped"`` batches (``LengthGroupedBatchSampler``) and ``"packed"`` (``PLMCollator(padding_free=True)``
    concatenates a batch into one row, so nothing is padded: 0 by construction).
    """

    estimates: list[SampleEstimate]
    batch_size: int
    max_length: int | None
    padding: dict[str, float]
    skipped: list[str] = field(default_factory=list)  # "sample N: reason" of samples whose headers failed

    @property
    def kept(self) -> list[SampleEstimate]:
        """Estimates of the samples the collator keeps (not rejected)."""
        return [e for e in self.estimates if e.outcome != "rejected"]

    def token_stats(self) -> dict[str, float]:
        """min / median / p90 / p99 / max / mean tokens per kept sample (``{}`` when none is kept)."""
        tokens = sorted(e.tokens for e in self.kept)
        if not tokens:
            return {}

        def pct(q: float) -> int:
            return tokens[min(len(tokens) - 1, math.ceil(q * len(tokens)) - 1)]

        return {"min": tokens[0], "median": statistics.median(tokens), "p90": pct(0.9), "p99": pct(0.99),
                "max": tokens[-1], "mean": statistics.fmean(tokens)}

    def totals(self) -> dict[str, int]:
        """Sums over kept samples: tokens, text / media / labelled tokens, tiles, frames; and outcome counts."""
        kept = self.kept
        out = {key: sum(getattr(e, key) for e in kept)
               for key in ("tokens", "text_tokens", "media_tokens", "labelled_tokens", "tiles", "frames")}
        for outcome in ("fits", "truncated", "fitted", "rejected"):
            out[outcome] = sum(1 for e in self.estimates if e.outcome == outcome)
        out["over_max_length"] = sum(1 for e in self.estimates
                                     if self.max_length is not None and e.full_tokens > self.max_length)
        return out

    def worst_batch(self) -> tuple[int, float]:
        """``(seq_len, tiles + frames per row)`` of the most expensive batch: the longest samples together.

        ``LengthGroupedBatchSampler`` puts that batch first, so it is the one that must fit in memory. ``seq_len``
        is its longest row (a preference pair's longer answer); each row carries its sample's tiles and frames.
        """
        kept = sorted(self.kept, key=lambda e: e.cost, reverse=True)[: self.batch_size]
        if not kept:
            return (0, 0.0)
        return (max(max(e.row_lengths) for e in kept),
                sum(e.rows * (e.tiles + e.frames) for e in kept) / sum(e.rows for e in kept))

    @property
    def rows_per_sample(self) -> int:
        """Rows each sample becomes in a batch: 2 for preference pairs (chosen, rejected), else 1."""
        return max((e.rows for e in self.kept), default=1)

    def report(self, memory: Mapping[str, MemoryEstimate] | None = None, *, memory_note: str = "") -> str:
        """A readable report: token distribution, max_length outcomes, padding waste, optional memory table."""
        totals, stats = self.totals(), self.token_stats()
        n = len(self.estimates)
        lines = [f"{n} samples ({len(self.kept)} kept), batch size {self.batch_size}, max_length "
                 f"{self.max_length if self.max_length is not None else 'none'}"]
        if self.rows_per_sample > 1:
            lines.append(f"preference pairs: {self.rows_per_sample} rows per sample (chosen, rejected), "
                         f"{self.batch_size * self.rows_per_sample} rows per batch; tokens count both rows, image "
                         "tiles and video frames once (processed and through the tower once, carried by both rows)")
        if stats:
            lines.append("tokens per sample: " + ", ".join(
                f"{k} {v:,.0f}" if k != "mean" else f"{k} {v:,.1f}" for k, v in stats.items()))
        tokens = max(totals["tokens"], 1)
        lines.append(f"total {totals['tokens']:,} tokens: text {totals['text_tokens']:,}, media "
                     f"{totals['media_tokens']:,} ({totals['media_tokens'] / tokens:.1%}), labelled "
                     f"{totals['labelled_tokens']:,} ({totals['labelled_tokens'] / tokens:.1%}); "
                     f"{totals['tiles']:,} image tiles, {totals['frames']:,} video frames")
        if self.max_length is not None:
            lines.append(f"over max_length: {totals['over_max_length']} (truncated {totals['truncated']}, "
                         f"tiles / frames lowered {totals['fitted']}, rejected {totals['rejected']})")
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} unreadable samples, e.g. {self.skipped[0]}")
        lines.append(f"padding at batch size {self.batch_size}: random {self.padding['random']:.1%}, "
                     f"length-grouped {self.padding['grouped']:.1%}, packed {self.padding['packed']:.1%} "
                     "(padding_free=True: one row per batch)")
        if memory:
            seq_len, vision = self.worst_batch()
            lines.append(f"peak memory per device (GiB) at the longest batch: "
                         f"{self.batch_size * self.rows_per_sample} x {seq_len:,} "
                         f"tokens, {vision:.1f} tiles + frames per row" + (f"; {memory_note}" if memory_note else ""))
            # copies: autocast's bf16 copies of float32 (trained) weights, kept for the backward.
            header = ["model", "weights", "grads", "optim", "act text", "act vision", "copies", "logits", "peak"]
            rows = [header]
            for name, est in memory.items():
                rows.append([name] + [f"{v / 1024**3:.2f}" for v in (
                    est.weights, est.gradients, est.optimizer, est.activations_text,
                    est.activations_vision + est.vision_transient, est.weight_copies, est.logits, est.peak)])
            widths = [max(len(r[c]) for r in rows) for c in range(len(header))]
            lines += ["  " + "  ".join(r[c].rjust(widths[c]) if c else r[c].ljust(widths[c])
                                       for c in range(len(header))) for r in rows]
            by_precision: dict[str, list[str]] = {}
            for name, est in memory.items():
                by_precision.setdefault(est.precision, []).append(name)
            if len(by_precision) == 1:
                lines.append(f"  dtypes: {next(iter(by_precision))}")
            else:
                lines.append("  dtypes: " + "; ".join(f"{', '.join(names)}: {precision}"
                                                      for precision, names in by_precision.items()))
        return "\n".join(lines)


def plan_dataset(
    samples: Iterable[dict[str, Any]],
    collator: PLMCollator,
    *,
    batch_size: int,
    seed: int = 0,
    on_error: Literal["raise", "skip"] = "raise",
    progress: bool = True,
) -> Plan:
    """Estimate every sample of a dataset (headers only) and the padding waste of its batches.

    Args:
        samples: canonical samples (any ``data_adapters`` output, a ``datasets`` table, a list); preference samples
            (a ``"chosen"`` key) are planned as ``PLMPreferenceCollator(collator)`` builds them: two rows each.
        collator: the training collator (its ``max_length`` policy and vision settings decide the counts).
        batch_size: samples per batch (``per_device_train_batch_size``).
        seed: shuffle seed of the random and grouped batches.
        on_error: ``"raise"`` at the first unreadable sample, or ``"skip"`` and list it in ``plan.skipped``.
        progress: show a tqdm progress bar.

    Returns:
        A ``Plan``; ``print(plan.report())``.

    Raises:
        ValueError: ``batch_size < 1``; with ``on_error="raise"``, a bad sample, named by index and id.
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    estimator = CostEstimator(collator)
    estimates, skipped = [], []
    total = len(samples) if hasattr(samples, "__len__") else None
    for index, sample in enumerate(tqdm(samples, total=total, desc="plan", unit="sample", disable=not progress)):
        try:
            estimates.append(estimator.estimate(sample))
        except (ValueError, OSError) as err:
            where = f"sample {index}{describe_sample(sample) if isinstance(sample, dict) else ''}"
            if on_error == "raise":
                raise ValueError(f"{where}: {err} (plan with on_error='skip' to list every bad sample)") from err
            skipped.append(f"{where}: {err}")
    kept = [e for e in estimates if e.outcome != "rejected"]
    costs = [e.cost for e in kept]
    # Padding is counted per row: a preference pair is two rows (each of its own length) in the same batch.
    row_costs = [(tokens, e.tiles + e.frames) for e in kept for tokens in e.row_lengths]
    firsts = [0, *itertools.accumulate(e.rows for e in kept)]

    def as_rows(batches: list[list[int]]) -> list[list[int]]:
        return [[row for i in batch for row in range(firsts[i], firsts[i + 1])] for batch in batches]

    padding = {"random": 0.0, "grouped": 0.0, "packed": 0.0}
    if costs:
        order = torch.randperm(len(costs), generator=torch.Generator().manual_seed(seed)).tolist()
        random_batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        padding["random"] = padding_fraction(row_costs, as_rows(random_batches))
        grouped = list(LengthGroupedBatchSampler(costs, batch_size, seed=seed))
        padding["grouped"] = padding_fraction(row_costs, as_rows(grouped))
    return Plan(estimates=estimates, batch_size=batch_size, max_length=collator.max_length, padding=padding,
                skipped=skipped)


# ------------------------------------------------------------------------------------------ the report
PLM_TOKENS_PER_TILE = 256  # a 448 px tile or frame of the released PLMs: 32 x 32 patches, 2 x 2 pooling


def plan_report(
    samples: Iterable[dict[str, Any]],
    model_name_or_path: str | ModelArguments,
    *,
    batch_size: int,
    max_length: int | None = None,
    media: MediaArguments | None = None,
    max_tiles: int | None = MediaArguments.max_tiles,
    num_frames: int = MediaArguments.num_frames,
    train_on: str = MediaArguments.train_on,
    vision_input_type: str | None = MediaArguments.vision_input_type,
    method: str = ModelArguments.method,
    freeze: Iterable[str] = tuple(ModelArguments().freeze),
    lora_r: int = ModelArguments.lora_r,
    lora_dropout: float = ModelArguments.lora_dropout,
    lora_targets: str = ModelArguments.lora_targets,
    gradient_checkpointing: bool = False,
    bf16: bool | None = None,
    progress: bool = True,
) -> str:
    """Plan a training run and return the report that ``plm-tune plan`` prints (no model weights are loaded).

    The collator is built as ``build_trainer`` builds it, from ``model_name_or_path``'s processor (for a released
    PLM with no Hub and nothing cached, its released settings rebuilt offline: ``plan_processor``). The memory
    table estimates the configured method for PLM-1B / 3B / 8B on one CUDA GPU (TRL's fused LM head on the
    labelled positions of the batch) and, for a local PLM folder, for that model on this machine (logits at the
    labelled positions only off CUDA, as ``build_trainer`` does), each in the dtypes its run uses and the report
    names: frozen weights in the load dtype (``default_dtype()``), trained ones in float32, and bf16 autocast
    when ``bf16`` is on. The GPU rows take this machine's GPU and ``bf16``; without a GPU here, a bf16 GPU's
    defaults (bf16 weights, bf16 autocast). With a processor whose tiles are not PLM's 256 tokens (the tiny test
    model), the 1B / 3B / 8B rows re-count the same tiles and frames at 256 tokens each.

    Args:
        samples: canonical samples (the training split).
        model_name_or_path: Hub id or folder whose processor formats the data, or the run's ``ModelArguments``
            (then ``method``, ``freeze`` and the LoRA settings come from it, as in ``load_model``).
        batch_size, max_length: ``per_device_train_batch_size`` and ``max_length`` of the training config.
        media: the run's ``MediaArguments``, or the keywords ``max_tiles``, ``num_frames``, ``train_on``,
            ``vision_input_type`` (the collator is built from them as ``build_trainer`` builds it).
        method, freeze, lora_r, lora_dropout, lora_targets, gradient_checkpointing: as ``load_model``.
        bf16: the run's ``SFTConfig.bf16`` (autocast in bf16); None: this machine's default (on a bf16 GPU).
        progress: a progress bar over the samples.

    Returns:
        The report text.
    """
    from pathlib import Path

    from transformers import AutoConfig

    from plm_tune.modeling.memory import PLM_SIZES, estimate_memory
    from plm_tune.modeling.model import default_dtype

    given = model_name_or_path if isinstance(model_name_or_path, ModelArguments) else None
    model = settings_from(given, ModelArguments, method=method, freeze=list(freeze), lora_r=lora_r,
                          lora_dropout=lora_dropout, lora_targets=lora_targets)
    model_name_or_path = model.model_name_or_path if given else str(model_name_or_path)
    media = settings_from(media, MediaArguments, max_tiles=max_tiles, num_frames=num_frames, train_on=train_on,
                          vision_input_type=vision_input_type)
    processor, source = plan_processor(model_name_or_path)
    collator = PLMCollator(processor, max_length=max_length, **dataclasses.asdict(media))
    plan = plan_dataset(samples, collator, batch_size=batch_size, progress=progress)
    seq_len, vision = plan.worst_batch()
    # build_trainer scores only the labelled positions: TRL's fused head on CUDA, logits_to_keep elsewhere.
    labelled = sum(e.labelled_tokens for e in sorted(plan.kept, key=lambda e: e.cost, reverse=True)[:batch_size])
    if seq_len == 0:
        return "\n".join(filter(None, (source, plan.report())))
    tile_tokens = collator.settings.tile_tokens
    method = model.method
    # A preference pair is two rows of the batch (chosen, rejected), each carrying the pair's tiles and frames,
    # which the tower encodes once (plm_tune.modeling.pair_media).
    common = dict(batch_size=batch_size * plan.rows_per_sample, tiles_per_sample=vision,
                  rows_per_media=plan.rows_per_sample, freeze=tuple(model.freeze), lora_r=model.lora_r,
                  lora_dropout=model.lora_dropout, lora_targets=model.lora_targets,
                  gradient_checkpointing=gradient_checkpointing)
    note = ""
    plm_seq = seq_len
    if tile_tokens != PLM_TOKENS_PER_TILE:
        plm_seq = max(max(e.row_lengths) - e.media_tokens // e.rows + (e.tiles + e.frames) * PLM_TOKENS_PER_TILE
                      for e in plan.kept)  # the longest row, its media re-counted
        note = (f"this processor makes {tile_tokens} tokens per tile, PLM's {PLM_TOKENS_PER_TILE}: "
                f"1B/3B/8B rows at {plm_seq:,} tokens per row")
    on_gpu = torch.cuda.is_available()
    here_bf16 = default_dtype() == torch.bfloat16 if bf16 is None else bf16  # the default: on a bf16 GPU
    here = dict(dtype=default_dtype(), autocast=torch.bfloat16 if here_bf16 else None)  # this machine's run
    gpu = here if on_gpu else dict(dtype=torch.bfloat16, autocast=torch.bfloat16)  # else a bf16 GPU's defaults
    rows = {}
    for size in PLM_SIZES:
        rows[f"PLM-{size} {method}"] = estimate_memory(
            size, method, seq_len=plm_seq, logit_tokens=labelled, fused_lm_head=True, device="cuda", **gpu, **common)
    config = AutoConfig.from_pretrained(model_name_or_path) if Path(model_name_or_path).is_dir() else None
    if config is not None and getattr(config, "model_type", None) == "perception_lm":
        rows[f"{Path(model_name_or_path).name} {method}"] = estimate_memory(
            config, method, seq_len=seq_len, logit_tokens=labelled, fused_lm_head=on_gpu,
            device="cuda" if on_gpu else "cpu", **here, **common)
    checkpointing = "on" if gradient_checkpointing else "off"
    note = "; ".join(x for x in (f"gradient checkpointing {checkpointing}", note) if x)
    return "\n".join(filter(None, (source, plan.report(rows, memory_note=note))))


# The released PLMs, whose processor plan_processor rebuilds offline when it cannot get theirs.
RELEASED_PLMS = {f"facebook/Perception-LM-{size}": size for size in ("1B", "3B", "8B")}


def plan_processor(model_name_or_path: str) -> tuple[Any, str]:
    """The processor that formats the data for a plan, and a line saying where it came from ("": its own).

    A released PLM (``RELEASED_PLMS``) plans without its weights: its processor comes from the local Hub cache,
    or the Hub, and when neither can give it (``HF_HUB_OFFLINE=1``, the Hub out of reach) it is rebuilt offline
    from the released settings (``plm_tune.modeling.testing_real``: 448 px tiles, 256 tokens per tile, up to 36
    tiles, Llama 3's tokenizer from ``llama-models``), which takes about 4 s (25 s the first time, converting
    the tokenizer, which is then cached). Any other name is checked (``check_model_path``) and loaded.

    Raises:
        FileNotFoundError, plm_tune.hub.HubUnreachableError: as ``check_model_path``.
        ImportError: a released PLM to rebuild offline, and the ``real-tokenizer`` extra not installed.
    """
    from transformers import AutoProcessor

    from plm_tune.hub import HubUnreachableError
    from plm_tune.modeling.run_folder import check_model_path

    size = RELEASED_PLMS.get(str(model_name_or_path))
    try:
        check_model_path(model_name_or_path)  # a Hub id is cached or the Hub answers, else one line
    except HubUnreachableError as error:
        if size is None:
            raise
        why = "HF_HUB_OFFLINE=1" if error.offline_mode else "the Hub out of reach"
    else:
        return AutoProcessor.from_pretrained(model_name_or_path), ""
    # Rebuilt outside the except block: an error here (the extra missing) is its own, not the Hub's.
    return _released_processor(model_name_or_path, size), (
        f"processor: {model_name_or_path}'s released settings rebuilt offline ({why}, nothing cached): "
        f"448 px tiles, {PLM_TOKENS_PER_TILE} tokens per tile, Llama 3's tokenizer; no weights needed")


def _released_processor(name: str, size: str) -> Any:
    """PLM-``size``'s released processor, rebuilt offline (``save_plm_processor`` writes it; loaded back)."""
    import tempfile
    from pathlib import Path

    from transformers import AutoProcessor

    from plm_tune.modeling.memory import plm_config
    from plm_tune.modeling.testing import save_plm_processor
    from plm_tune.modeling.testing_real import real_plm_tokenizer

    try:
        tokenizer = real_plm_tokenizer()
    except ImportError as error:
        raise ImportError(f"{name} is not in the local Hugging Face cache and cannot be downloaded now (offline); "
                          "planning it offline rebuilds its processor with the real tokenizer, which needs the "
                          'real-tokenizer extra: pip install "plm-tune[real-tokenizer]" (or connect and run '
                          "again)") from error
    with tempfile.TemporaryDirectory() as folder:
        save_plm_processor(Path(folder), tokenizer, plm_config(size).vision_config.model_args["img_size"][0])
        return AutoProcessor.from_pretrained(folder)
