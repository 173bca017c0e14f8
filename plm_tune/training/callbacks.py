"""The callbacks ``build_trainer`` adds: the numbers worth watching in every log, and answers as training goes."""

from __future__ import annotations

import time
from typing import Any

from transformers import TrainerCallback

from plm_tune.arguments import MAX_NEW_TOKENS
from plm_tune.encoding.collator import PLMCollator
from plm_tune.inference.generation import generate
from plm_tune.inference.metrics import score_answers

__all__ = ["PLMMetricsCallback", "GenerationEvalCallback"]


class PLMMetricsCallback(TrainerCallback):
    """Adds to every log: learning rate per part, tokens/s, labelled tokens per step, media-token share,
    and the collator's cumulative drop / skip counts.

    Token counts come from the collator's shared counters, so they include batches built in DataLoader
    workers; prefetching makes them run a few batches ahead of the optimizer, which is fine for rates.
    Learning rates come from ``trainer.optimizer`` when a trainer is given: the Trainer hands callbacks only
    an optimizer passed to its constructor, never the one it builds (or DeepSpeed wraps) in ``train()``.
    """

    def __init__(self, collator: PLMCollator, trainer: Any = None) -> None:
        self.collator = collator
        self.trainer = trainer
        self._last: dict[str, int] = {}
        self._last_time = time.perf_counter()
        self._last_step = 0
        self._lrs: dict[str, float] = {}

    def on_train_begin(self, args, state, control, **kwargs):
        self._last = {k: self.collator.stats[k] for k in self.collator.stats.keys()}
        self._last_time, self._last_step = time.perf_counter(), state.global_step

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        # Read between optimizer.step() and the scheduler's step, where the Trainer reads its own
        # "learning_rate": the rates this step used. By on_log the scheduler holds the next step's rates.
        optimizer = getattr(self.trainer, "optimizer", None) or optimizer
        if optimizer is not None:
            self._lrs = {group["name"]: group["lr"] for group in optimizer.param_groups if "name" in group}

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or "loss" not in logs and "eval_loss" not in logs:
            return
        for part, lr in self._lrs.items():
            logs[f"learning_rate/{part}"] = lr
        now = {k: self.collator.stats[k] for k in self.collator.stats.keys()}
        delta = {k: now[k] - self._last.get(k, 0) for k in now}
        elapsed = max(time.perf_counter() - self._last_time, 1e-9)
        steps = max(state.global_step - self._last_step, 1)
        if "loss" in logs and delta["tokens"]:
            logs["tokens_per_second"] = delta["tokens"] / elapsed
            logs["labelled_tokens_per_step"] = delta["labelled_tokens"] / steps
            logs["media_token_share"] = delta["media_tokens"] / delta["tokens"]
        for key in ("truncated_samples", "dropped_turns", "dropped_images", "dropped_videos", "rejected_too_long"):
            logs[f"collator/{key}"] = now[key]
        self._last, self._last_time, self._last_step = now, time.perf_counter(), state.global_step


class GenerationEvalCallback(TrainerCallback):
    """Every ``every_n_steps`` optimizer steps, answer a small fixed set of samples by greedy generation; the
    scores (``gen_eval/exact_match``, ``gen_eval/sentence_bleu``, ``gen_eval/corpus_bleu`` (sacreBLEU's, 0-1),
    ``gen_eval/rouge_l``, ``gen_eval/accuracy`` for short labels) join the next training log: the answers, not
    only the loss, as training goes.

    Under DeepSpeed ZeRO-3 each process holds a shard of the weights, so every process answers the same
    samples with ``synced_gpus=True`` (they gather shards together until the longest answer ends); under
    ZeRO-2 / DDP each process answers them alone. Either way the scores are the same on every process.
    The scores ride on the next log call instead of a log of their own: ``Trainer.log`` from a callback
    would count as the step's log and swallow the loss logged at that step.
    """

    def __init__(self, trainer: Any, samples: Any, every_n_steps: int,
                 max_new_tokens: int = MAX_NEW_TOKENS) -> None:
        if every_n_steps < 1:
            raise ValueError(f"generation_eval_steps must be >= 1, got {every_n_steps}.")
        self.trainer, self.samples, self.every, self.max_new_tokens = trainer, samples, every_n_steps, max_new_tokens
        self._pending: dict[str, float] = {}

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every:
            return
        plugin = getattr(self.trainer.accelerator.state, "deepspeed_plugin", None)
        answers = generate(
            self.trainer.model, self.trainer.plm_collator.processor, self.samples,
            max_new_tokens=self.max_new_tokens, batch_size=len(self.samples), collator=self.trainer.plm_collator,
            details=True, progress=False, synced_gpus=plugin is not None and plugin.zero_stage == 3,
        )
        _, means = score_answers([a.answer for a in answers], [a.reference for a in answers])
        self._pending = {f"gen_eval/{name}": value for name, value in means.items() if name != "samples"}
        self._pending["gen_eval/step"] = state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None and self._pending:
            logs.update(self._pending)
            self._pending = {}
