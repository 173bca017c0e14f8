"""The end of a training run: save, evaluate by generation, write the report, push. What every recipe does last.

``finish_run`` leaves one output folder that is useful on its own: the model or adapter with its processor,
``plm_tune_training.json``, the held-out split in ``eval_data/`` and ``eval/eval.json`` + ``eval/report.html``
(``plm_tune.modeling.run_folder`` owns that layout and documents it). The report's gallery also goes to
TensorBoard and W&B when the run reports to them (``plm_tune.after_training.trackers``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plm_tune.after_training.push import hub_repo_id, push_folder
from plm_tune.after_training.report import write_report
from plm_tune.after_training.trackers import log_eval_gallery
from plm_tune.arguments import MAX_NEW_TOKENS
from plm_tune.data.path_privacy import hide_dataset_names
from plm_tune.data.sample import to_table
from plm_tune.inference.evaluation import EvalResult, evaluate, majority_baseline, metrics_table, save_eval
from plm_tune.modeling.run_folder import (
    EVAL_DATA,
    EVAL_DIR,
    EVAL_JSON,
    REPORT_HTML,
    is_adapter,
    read_training_info,
    recorded_base_model,
    write_training_info,
)

__all__ = ["RunOutputs", "finish_run"]


@dataclass
class RunOutputs:
    """Where ``finish_run`` put things (``None``: not made, e.g. no eval split or not the main process)."""

    output_dir: Path
    eval_json: Path | None = None
    report: Path | None = None
    eval_result: EvalResult | None = None
    hub_url: str | None = None

    def summary(self) -> str:
        """What the end of the run made, for the recipes' last lines: held-out scores, report, Hub URL."""
        lines = []
        if self.eval_result is not None:
            answered = self.eval_result.info.get("answered", len(self.eval_result.records))
            lines += [f"Held-out answers ({answered} samples), base vs finetuned:", metrics_table(self.eval_result)]
            baseline = majority_baseline(self.eval_result)
            if baseline is not None:
                lines.append(f"Always answering the most common reference ({baseline[0]!r}) would score "
                             f"exact_match {baseline[1]:.3g}.")
        if self.report is not None:
            lines.append(f"Report: {self.report}")
        if self.hub_url:
            lines.append(f"Pushed to {self.hub_url}")
        return "\n".join(lines)


def _loss_curve(history: list[dict[str, Any]]) -> list[dict[str, float]]:
    """The losses of the Trainer's log history, one ``{"step", "loss" | "eval_loss"}`` per logged value."""
    return [{"step": entry.get("step", 0), key: entry[key]}
            for entry in history for key in ("loss", "eval_loss") if key in entry]


def _zero3(trainer: Any) -> bool:
    plugin = getattr(getattr(trainer, "accelerator", None), "state", None)
    plugin = getattr(plugin, "deepspeed_plugin", None)
    return plugin is not None and plugin.zero_stage == 3


def finish_run(
    trainer: Any,
    *,
    eval_set: Any | None = None,
    training_info: dict[str, Any] | None = None,
    generate_eval: bool = True,
    compare_base: bool = True,
    max_new_tokens: int = MAX_NEW_TOKENS,
    eval_batch_size: int = 8,
    push_to_hub: bool = False,
    hub_model_id: str | None = None,
    hub_private_repo: bool = False,
    hub_token: str | None = None,
    record_media_paths: bool = False,
) -> RunOutputs:
    """Save the trained model and processor, then (main process) evaluate by generation, report and push.

    Args:
        trainer: the trained ``build_trainer`` result (its ``plm_collator`` formats the eval answers).
        eval_set: the held-out samples; saved to ``output_dir/eval_data`` and answered when ``generate_eval``.
        training_info: ``plm_tune.modeling.run_folder.TRAINING_INFO_KEYS`` facts for ``plm_tune_training.json``; the step
            count and final losses are added here.
        generate_eval: answer ``eval_set`` by greedy generation and score it (exact match, BLEU, ROUGE-L, ...).
            Skipped under DeepSpeed ZeRO-3, whose sharded weights every process must take part in: run
            ``plm-tune eval --adapter output_dir`` after training instead.
        compare_base: for an adapter, also answer with the adapter switched off (the base model), for the
            report's before / after columns. Costs a second generation pass.
        max_new_tokens, eval_batch_size: generation settings for the eval answers.
        push_to_hub, hub_model_id, hub_private_repo: upload the folder, adapter or model (model card included,
            eval data never), with ``plm_tune.after_training.push.push_folder``; the repo defaults to the output
            folder's name as transformers' does (``hub_repo_id``); the token and branch are ``trainer.args``'
            ``hub_token`` and ``hub_revision`` (default: ``HF_TOKEN`` or the stored login; main).
        hub_token: the token of the push, when not in ``trainer.args`` (``finetune`` takes it out of them, so
            that ``training_args.bin`` never holds it); never logged.
        record_media_paths: record sample ids and dataset folders as they are; False (default): their parts
            that look like names, IDs or dates become ``ref-HASH`` in eval.json, report.html, the trackers'
            gallery and plm_tune_training.json (``plm_tune.data.path_privacy``).

    Returns:
        ``RunOutputs`` with the paths made.
    """
    args = trainer.args
    output_dir = Path(args.output_dir)
    trainer.save_model(str(output_dir))  # every process: DeepSpeed gathers sharded weights collectively
    outputs = RunOutputs(output_dir=output_dir)
    if not trainer.is_world_process_zero():
        return outputs

    model = trainer.model
    adapter = is_adapter(output_dir)
    history = trainer.state.log_history
    info = dict(training_info or {})
    info.setdefault("global_step", trainer.state.global_step)
    info.setdefault("max_steps", args.max_steps if args.max_steps > 0 else None)
    final = {key: entry[key] for entry in history for key in ("loss", "eval_loss") if key in entry}
    if final:
        info.setdefault("metrics", {("train_loss" if k == "loss" else k): v for k, v in final.items()})
    info.setdefault("log_history", _loss_curve(history))
    runtime = next((entry["train_runtime"] for entry in reversed(history) if "train_runtime" in entry), None)
    if runtime is not None:
        info.setdefault("train_seconds", round(runtime, 1))
    for key, dataset in (("train_samples", trainer.train_dataset), ("eval_samples", eval_set)):
        if hasattr(dataset, "__len__"):  # a streamed (iterable) dataset has no length
            info.setdefault(key, len(dataset))
    info.setdefault("eval_max_new_tokens", max_new_tokens)  # also for a later `plm-tune eval` (ZeRO-3)
    if info.get("datasets") and not record_media_paths:  # uploaded by default, and quoted by the card
        info["datasets"] = hide_dataset_names([str(name) for name in info["datasets"]])
    write_training_info(output_dir, info)

    if eval_set is not None and len(eval_set) > 0:
        to_table(eval_set).save_to_disk(str(output_dir / EVAL_DATA))
        if generate_eval and _zero3(trainer):
            print("Generation eval skipped under ZeRO-3 (sharded weights); after training run: "
                  f"plm-tune eval --adapter {output_dir}")
        elif generate_eval:
            base = "disable_adapter" if compare_base and adapter else None
            result = evaluate(model, trainer.plm_collator.processor, eval_set, compare_with=base,
                              max_new_tokens=max_new_tokens, batch_size=eval_batch_size,
                              collator=trainer.plm_collator, record_media_paths=record_media_paths)
            # The base an adapter was trained on, as its saved adapter_config.json names it; a full finetune's
            # starting point, which no file in the folder records.
            config = getattr(model, "config", None)
            started_from = recorded_base_model(output_dir) if adapter else getattr(config, "_name_or_path", None)
            result.info.update(model=str(started_from or ""),
                               adapter=str(output_dir) if adapter else None,
                               data={"saved": str((output_dir / EVAL_DATA).resolve()), "limit": None},
                               training=read_training_info(output_dir))
            outputs.eval_result = result
            outputs.eval_json = save_eval(result, output_dir / EVAL_DIR / EVAL_JSON)
            outputs.report = write_report(result, eval_set, output_dir / EVAL_DIR / REPORT_HTML)
            log_eval_gallery(trainer, result, eval_set)  # to TensorBoard / W&B when report_to has them

    if push_to_hub:
        metrics = dict(info.get("metrics") or {})
        if outputs.eval_result is not None:
            metrics.update({f"eval_{k}": v for k, v in outputs.eval_result.metrics.items() if k != "samples"})
        outputs.hub_url = push_folder(output_dir, hub_repo_id(hub_model_id, output_dir), private=hub_private_repo,
                                      token=hub_token or getattr(args, "hub_token", None),
                                      revision=getattr(args, "hub_revision", None), metrics=metrics)
    return outputs

