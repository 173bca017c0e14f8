"""Evaluation: what a finetuned (and optionally the base) model answers on an eval split, scored, with eval loss.

``evaluate`` generates an answer per sample (``plm_tune.generate``, the training formatting), scores it against
the sample's trailing assistant message (``plm_tune.inference.metrics.score_answers``) and computes the eval loss with the
training collator. ``EvalRecord`` / ``EvalResult`` are what it returns, what ``save_eval`` / ``load_eval`` write
and read as JSON, and what ``plm_tune.after_training.report`` renders.
"""

from __future__ import annotations

import contextlib
import functools
import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from plm_tune.arguments import MAX_NEW_TOKENS
from plm_tune.data.frame_selection import NUM_FRAMES
from plm_tune.data.path_privacy import hide_identifying
from plm_tune.data.sample import normalize_messages
from plm_tune.encoding.collator import PLMCollator
from plm_tune.encoding.formatting import IGNORE_INDEX
from plm_tune.encoding.sparse_logits import labelled_positions
from plm_tune.inference.generation import Generation, generate
from plm_tune.inference.metrics import ScoreKind, bleu_signatures, score_answers
from plm_tune.modeling.precision import mixed_precision_context, vision_dtype

__all__ = ["EvalRecord", "EvalResult", "evaluate", "base_model_context", "majority_baseline", "metrics_table", "save_eval",
           "load_eval"]

ID_KEYS = ("id", "sample_id", "image_id", "uid")  # where a sample's id may live, first found wins


@dataclass
class EvalRecord:
    """One eval sample: its question, the reference answer and what each model said, with per-sample scores."""

    index: int  # position of the sample in the evaluated dataset
    sample_id: str | None  # the sample's "id" (or sample_id / image_id / uid) when it has one
    prompt: str  # text of the last user message (media shown separately)
    reference: str | None  # the trailing assistant message, if the sample had one
    answer: str  # the finetuned model's answer
    base_answer: str | None = None  # the base model's answer, when a base model was evaluated too
    scores: dict[str, float] = field(default_factory=dict)  # {"exact_match": 1.0, "sentence_bleu": .., ...}
    base_scores: dict[str, float] = field(default_factory=dict)


@dataclass
class EvalResult:
    """Metrics over an eval split (mean of per-sample scores, plus eval loss) and every record."""

    metrics: dict[str, float]  # finetuned: {"exact_match", "accuracy", "corpus_bleu", "rouge_l", "eval_loss", ...}
    records: list[EvalRecord]
    base_metrics: dict[str, float] | None = None  # same keys for the base model, when evaluated
    info: dict[str, Any] = field(default_factory=dict)  # model / adapter names, sample count, timings

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``json.dump(result.to_dict(), f)``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalResult:
        return cls(
            metrics=data["metrics"],
            records=[EvalRecord(**record) for record in data["records"]],
            base_metrics=data.get("base_metrics"),
            info=data.get("info", {}),
        )


def base_model_context(model: Any) -> contextlib.AbstractContextManager:
    """A context in which a ``peft.PeftModel`` answers as its base model: ``model.disable_adapter()``.

    The adapter (LoRA / DoRA layers and any ``modules_to_save`` copies) is switched off on entry and back on at
    exit, also on error, so base answers come from the same weights without loading the model twice.
    ``evaluate(..., compare_with="disable_adapter")`` uses it.

    Args:
        model: a ``PeftModel`` (what ``load_model`` returns for LoRA methods, or ``PeftModel.from_pretrained``).

    Returns:
        The context manager; ``with base_model_context(model): ...``.

    Raises:
        ValueError: ``model`` is not a ``PeftModel`` (a merged or fully finetuned model has no adapter to switch
            off: load the base model and pass it as ``compare_with``).

    Example:
        >>> with base_model_context(peft_model):                                   # doctest: +SKIP
        ...     base_answers = generate(peft_model, processor, samples)
    """
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        raise ValueError(
            f"compare_with='disable_adapter' needs a peft.PeftModel, got {type(model).__name__}: a merged or "
            "fully finetuned model has no adapter to switch off. Load the base model and pass it as compare_with."
        )
    return model.disable_adapter()


def evaluate(
    model: Any,
    processor: Any,
    samples: Sequence[dict[str, Any]],
    *,
    compare_with: Any | Literal["disable_adapter"] | None = None,
    max_new_tokens: int = MAX_NEW_TOKENS,
    batch_size: int = 8,
    max_tiles: int | None = None,
    num_frames: int = NUM_FRAMES,
    collator: PLMCollator | None = None,
    kind: ScoreKind = "auto",
    compute_loss: bool = True,
    progress: bool = True,
    record_media_paths: bool = False,
) -> EvalResult:
    """Answer every sample with ``model`` (and a base model), score the answers and compute the eval loss.

    Answers are greedy (``generate``). A sample's trailing assistant message is its reference; a sample
    ending on a user message is answered but not scored. The eval loss is the mean cross-entropy per labelled
    token (as in training: the collator's ``train_on`` labels, next-token shift) over the samples that have a
    reference, summed over all their tokens before dividing, so it does not depend on ``batch_size``.

    Args:
        model: the finetuned PLM (a ``PeftModel``, a merged or a fully finetuned model).
        processor: its processor.
        samples: canonical samples (a list or a ``datasets.Dataset``).
        compare_with: also answer the same samples with a base model, for ``base_metrics`` and each record's
            ``base_answer``: a model object, or ``"disable_adapter"`` for ``model`` itself with its adapter
            switched off (``base_model_context``; ``model`` must be a ``PeftModel``). None: only ``model``.
        max_new_tokens: longest answer, in tokens.
        batch_size: samples per ``generate`` call and per loss forward pass.
        max_tiles, num_frames: per-image tiles and per-video frames (use the training values); ignored when
            ``collator`` is given.
        collator: the training collator, for its exact formatting, labels and ``max_length`` (its counters are
            left untouched).
        kind: which scores (``score_answers``): ``"auto"``, ``"caption"`` or ``"choice"``.
        compute_loss: compute ``eval_loss`` (one extra forward pass per batch of answered samples).
        progress: show progress bars.
        record_media_paths: keep each record's ``sample_id`` as it is; False: its parts that look like names,
            IDs or dates (a PACS export's ``DOE_JOHN_PX0048213/Doe_John_19610312_01.dcm``) become ``ref-HASH``
            (``plm_tune.data.path_privacy.hide_identifying``).

    Returns:
        An ``EvalResult``: one ``EvalRecord`` per sample, in order; ``metrics`` with the mean of each score
        over the scored samples, ``corpus_bleu`` (sacreBLEU's, 0-1) when BLEU is scored, ``eval_loss`` (when
        computed) and ``samples`` (how many samples were scored); ``base_metrics`` likewise for the base model
        (None without one); ``info`` with the model and adapter names, counts, generation seconds and, when
        BLEU is scored, ``sacrebleu_signature`` (``metrics.bleu_signatures``: the settings behind the BLEU).

    Raises:
        ValueError: an unknown ``compare_with`` string, ``"disable_adapter"`` on a model without an adapter, an
            unknown ``kind``, or a malformed sample (named).

    Example:
        >>> model, processor = load_model("facebook/Perception-LM-1B", method="lora")   # doctest: +SKIP
        >>> result = evaluate(model, processor, eval_samples, compare_with="disable_adapter")  # doctest: +SKIP
        >>> result.metrics["rouge_l"], result.base_metrics["rouge_l"]                  # doctest: +SKIP
    """
    disable_adapter = isinstance(compare_with, str)
    if disable_adapter and compare_with != "disable_adapter":
        raise ValueError(f"compare_with must be a model, 'disable_adapter' or None, got {compare_with!r}.")
    if disable_adapter:
        base_model_context(model)  # fail now, not after generating the finetuned answers
    if kind not in ("auto", "caption", "choice"):
        raise ValueError(f"kind must be 'auto', 'caption' or 'choice', got {kind!r}.")
    collator = collator or PLMCollator(processor, max_tiles=max_tiles, num_frames=num_frames)
    run = functools.partial(_answer_and_score, processor=processor, samples=samples, collator=collator, kind=kind,
                            compute_loss=compute_loss, max_new_tokens=max_new_tokens, batch_size=batch_size,
                            progress=progress)

    generations, scores, metrics, info = run(model, "")
    base_generations: list[Generation] | None = None
    base_scores: list[dict[str, float]] = [{} for _ in generations]
    base_metrics: dict[str, float] | None = None
    if disable_adapter:
        with base_model_context(model):
            base_generations, base_scores, base_metrics, base_info = run(model, "base_")
        info.update(base_info)
    elif compare_with is not None:
        base_generations, base_scores, base_metrics, base_info = run(compare_with, "base_")
        info.update(base_info)

    records = _records(samples, generations, scores, base_generations, base_scores)
    if not record_media_paths:
        for record in records:
            record.sample_id = None if record.sample_id is None else hide_identifying(record.sample_id)
    info = {
        "model": _model_name(model),
        "adapter": getattr(model, "active_adapter", None) if _is_peft(model) else None,
        "base_model": "disable_adapter" if disable_adapter else _model_name(compare_with),
        "samples": len(records),
        "answered": sum(r.reference is not None for r in records),
        "kind": kind,
        "max_new_tokens": max_new_tokens,
        **({"sacrebleu_signature": bleu_signatures()} if "corpus_bleu" in metrics else {}),
        **info,
    }
    return EvalResult(metrics=metrics, records=records, base_metrics=base_metrics, info=info)


def _answer_and_score(
    subject: Any, name: str, *, processor: Any, samples: Sequence[dict[str, Any]], collator: PLMCollator,
    kind: ScoreKind, compute_loss: bool, max_new_tokens: int, batch_size: int, progress: bool,
) -> tuple[list[Generation], list[dict[str, float]], dict[str, float], dict[str, Any]]:
    """``evaluate``'s one pass with one model (the finetuned one, then the base): its answers, their scores per
    sample and overall (with ``eval_loss``), and timings / counts for ``info`` under keys starting with ``name``."""
    started = time.perf_counter()
    generations = generate(subject, processor, samples, collator=collator, details=True,
                           max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress)
    seconds = time.perf_counter() - started
    references = [g.reference for g in generations]
    per_sample, metrics = score_answers([g.answer for g in generations], references, kind=kind)
    answered = [i for i, reference in enumerate(references) if reference is not None]
    info = {f"{name}generation_seconds": seconds,
            f"{name}new_tokens": sum(g.new_tokens for g in generations),
            f"{name}answers_cut_at_max_new_tokens": sum(g.new_tokens >= max_new_tokens for g in generations)}
    if compute_loss and answered:
        loss, tokens = _eval_loss(subject, collator, [samples[i] for i in answered], batch_size, progress)
        info[f"{name}loss_tokens"] = tokens
        if tokens:
            metrics["eval_loss"] = loss
    metrics["samples"] = float(len(answered))
    return generations, per_sample, metrics, info


def _records(samples: Sequence[dict[str, Any]], generations: list[Generation], scores: list[dict[str, float]],
             base_generations: list[Generation] | None, base_scores: list[dict[str, float]]) -> list[EvalRecord]:
    """One ``EvalRecord`` per sample, in order: its id and prompt, the reference, both answers and their scores."""
    return [
        EvalRecord(
            index=i,
            sample_id=next((str(samples[i][key]) for key in ID_KEYS if samples[i].get(key) is not None), None),
            prompt=_prompt_text(samples[i]),
            reference=generation.reference,
            answer=generation.answer,
            base_answer=base_generations[i].answer if base_generations is not None else None,
            scores=scores[i],
            base_scores=base_scores[i],
        )
        for i, generation in enumerate(generations)
    ]


def metrics_table(result: EvalResult) -> str:
    """The metrics as a plain-text table, base and finetuned side by side (``-`` where no base was evaluated).

    Example:
        >>> print(metrics_table(result))                                                 # doctest: +SKIP
        metric               base  finetuned
        exact_match             0       0.75
        eval_loss           6.808      1.234
        samples                12         12
    """
    base = result.base_metrics or {}
    names = list(result.metrics) + [name for name in base if name not in result.metrics]
    rows = [f"{'metric':<14} {'base':>10} {'finetuned':>10}"]
    for name in names:
        rows.append(f"{name:<14} {_cell(base.get(name)):>10} {_cell(result.metrics.get(name)):>10}")
    return "\n".join(rows)


def majority_baseline(result: EvalResult) -> tuple[str, float] | None:
    """The most common reference and the exact-match score of always answering it: the bar a classifier-like
    finetune (one of a few answers, e.g. a modality) must clear. None when references are not class-like (fewer
    than two per distinct answer, or under 4 references)."""
    references = [r.reference.strip() for r in result.records if r.reference is not None]
    counts = Counter(references)
    if len(references) < 4 or len(references) < 2 * len(counts):
        return None
    answer, count = counts.most_common(1)[0]
    return answer, count / len(references)


def _cell(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}"


def save_eval(result: EvalResult, path: str | Path) -> Path:
    """Write an ``EvalResult`` as JSON (UTF-8, indented), creating parent folders.

    Args:
        result: what ``evaluate`` returned.
        path: the ``.json`` file to write.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def load_eval(path: str | Path) -> EvalResult:
    """Read an ``EvalResult`` written by ``save_eval``.

    Args:
        path: the JSON file.

    Returns:
        The ``EvalResult``, records included.
    """
    return EvalResult.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


@torch.no_grad()
def _eval_loss(
    model: Any, collator: PLMCollator, samples: list[dict[str, Any]], batch_size: int, progress: bool
) -> tuple[float, int]:
    """Mean cross-entropy per labelled token over ``samples``, batched as the training collator builds them.

    Returns:
        ``(loss, labelled tokens)``; the loss is NaN when no token was labelled (every sample too long).
    """
    device = next(model.parameters()).device
    pixel_dtype = vision_dtype(model)
    total, tokens = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        for start in tqdm(range(0, len(samples), batch_size), desc="eval loss", unit="batch", disable=not progress):
            # encode + pad is what collator(...) does, except that a batch whose samples are all too long for
            # max_length is skipped (the collator counts them) rather than raised on.
            encoded = [e for e in (collator.encode(s) for s in samples[start: start + batch_size]) if e is not None]
            if not encoded:
                continue
            batch = collator.pad(encoded)
            labels = batch.pop("labels").to(device)
            inputs = {key: value.to(device, pixel_dtype) if value.is_floating_point() else value.to(device)
                      for key, value in batch.items()}
            # Logits only at the K positions that predict a labelled token: media tokens need none.
            logits_to_keep, targets = labelled_positions(labels)  # (K,), (batch, K)
            with mixed_precision_context(model):  # bf16 frozen + float32 trained weights: as in training
                logits = model(**inputs, logits_to_keep=logits_to_keep).logits  # (batch, K, vocab)
            keep = targets != IGNORE_INDEX
            # Upcast for a stable sum in bf16.
            total += F.cross_entropy(logits[keep].float(), targets[keep], reduction="sum").item()
            tokens += int(keep.sum())
    finally:
        model.train(was_training)
    return (total / tokens if tokens else float("nan")), tokens


def _prompt_text(sample: dict[str, Any]) -> str:
    """The text parts of the sample's last user message, joined with a space (media parts left out)."""
    turns = normalize_messages(sample, require_answer=False)
    last_user = next((t for t in reversed(turns) if t.role == "user"), None)
    if last_user is None:
        return ""
    return " ".join(p.text.strip() for p in last_user.parts if p.kind == "text" and p.text.strip())


def _is_peft(model: Any) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def _model_name(model: Any) -> str | None:
    """The checkpoint a model was loaded from (a PeftModel forwards the attribute to its base), if known."""
    if model is None:
        return None
    name = getattr(model, "name_or_path", None)
    return str(name) if name else type(model).__name__
