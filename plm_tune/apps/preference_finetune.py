"""What the preference recipe does around its data: DPO's counterpart of ``plm_tune.apps.finetune.finetune``.

``preference_finetune`` checks every setting (the run settings and ``trl.DPOConfig``'s ``beta`` / ``loss_type`` /
``label_smoothing``) in one line, prints the plan of the pairs and stops with ``--plan true``, else checks the
output folder and the GPU, loads the model, builds TRL's ``DPOTrainer`` (``build_dpo_trainer``), scores the
held-out pairs with the BASE (an adapter switched off; a full finetune before its first step), trains, scores them
with the tuned model, and saves:

    output_dir/
        adapter or model + processor, plm_tune_training.json   (finish_run; "objective": "dpo", beta, loss_type)
        eval_data/          the held-out pairs
        eval/eval.json      base vs tuned preference_metrics and one record a pair (prompt, answers, log-probs)
        eval/report.html    the same as a page (plm_tune.after_training.preference_report)

The held-out scores are ``plm_tune.inference.preference_scores``': preference accuracy (the chosen answer is the
likelier one), the mean log-prob gap, and against the base DPO's reward accuracy and mean reward margin (nats).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from plm_tune.after_training.outputs import RunOutputs, finish_run
from plm_tune.after_training.preference_report import write_preference_report
from plm_tune.apps.dpo_settings import check_dpo_settings
from plm_tune.apps.finetune import _check_before_loading
from plm_tune.arguments import (
    EvalArguments,
    MediaArguments,
    ModelArguments,
    check_settings,
    training_info,
)
from plm_tune.inference.preference_scores import pair_logps, preference_metrics
from plm_tune.modeling.model import load_model
from plm_tune.modeling.run_folder import (
    EVAL_DIR,
    EVAL_JSON,
    REPORT_HTML,
    is_adapter,
    read_training_info,
    recorded_base_model,
)
from plm_tune.training.plan import plan_report
from plm_tune.training.preference_trainer import build_dpo_trainer
from plm_tune.training.trainer import loss_change

__all__ = ["preference_evaluation", "preference_finetune"]


def preference_finetune(
    train_pairs: Any,
    eval_pairs: Any | None,
    model_args: ModelArguments,
    media_args: MediaArguments,
    dpo_args: Any,
    eval_args: EvalArguments,
    *,
    datasets: list[str] | None = None,
    dtype: torch.dtype | None = None,
) -> RunOutputs | None:
    """Plan, or load, score the base, train with DPO, score the tuned model and save (module docstring).

    Args:
        train_pairs, eval_pairs: canonical preference samples (``eval_pairs`` None: no held-out scores, no report).
        model_args, media_args, eval_args: the run settings, as for ``finetune`` (``generate_eval`` /
            ``compare_base`` do not apply: the held-out pairs are scored, not answered).
        dpo_args: a ``trl.DPOConfig``; its ``activation_checkpointing`` is taken over as ``finetune`` does.
        datasets: where the pairs came from (recorded in ``plm_tune_training.json`` and the report).
        dtype: the weights' dtype (``load_model``'s default: bf16 on a bf16 GPU, else float32).

    Returns:
        ``finish_run``'s ``RunOutputs`` with ``eval_json`` and ``report`` set (main process, with ``eval_pairs``);
        None with ``eval_args.plan``.

    Raises:
        plm_tune.arguments.SettingError: a setting out of range, before anything (``check_dpo_settings``).
        ValueError: ``push_to_hub`` (push the folder after training with ``plm-tune push``); a stream without
            ``max_steps``; the output folder's errors as ``finetune`` raises them.
    """
    check_settings(model_args, media_args, dpo_args, eval_args)
    check_dpo_settings(dpo_args)
    if eval_args.plan:  # a pair is two rows (chosen, rejected) sharing its media: plan_report counts both
        print(plan_report(train_pairs, model_args, media=media_args, max_length=dpo_args.max_length,
                          batch_size=dpo_args.per_device_train_batch_size,
                          gradient_checkpointing=dpo_args.activation_checkpointing, bf16=dpo_args.bf16))
        return None
    if dpo_args.push_to_hub:
        raise ValueError("push_to_hub: the preference recipe does not push its folder itself yet: drop push_to_hub, "
                         f"then after training run plm-tune push --folder {dpo_args.output_dir} --repo-id USER/NAME.")
    resume, streamed = _check_before_loading(train_pairs, model_args, dpo_args, eval_args)
    model, processor = load_model(model_args, dtype=dtype, seed=dpo_args.seed,
                                  trust_remote_code=dpo_args.trust_remote_code,
                                  gradient_checkpointing=dpo_args.activation_checkpointing)
    dpo_args.activation_checkpointing = dpo_args.gradient_checkpointing = False  # load_model applied it (finetune)
    trainer = build_dpo_trainer(model, processor, train_pairs, eval_pairs, dpo_args, media=media_args,
                                model_args=model_args)

    base = _score(trainer, eval_pairs, base=True)  # before the first step: the reference DPO measures against
    trainer.train(resume_from_checkpoint=resume)
    tuned = _score(trainer, eval_pairs, base=False)

    info = training_info(model_args, media_args, datasets)
    info.update(objective="dpo", beta=dpo_args.beta, loss_type=list(dpo_args.loss_type))
    outputs = finish_run(trainer, eval_set=eval_pairs, training_info=info, generate_eval=False,
                         record_media_paths=eval_args.record_media_paths)
    if not trainer.is_world_process_zero():
        return outputs
    if base is not None:
        evaluation = preference_evaluation(eval_pairs, base, tuned, folder=outputs.output_dir,
                                           model=model_args.model_name_or_path)
        outputs.eval_json = outputs.output_dir / EVAL_DIR / EVAL_JSON
        outputs.eval_json.parent.mkdir(parents=True, exist_ok=True)
        outputs.eval_json.write_text(json.dumps(evaluation, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        outputs.report = write_preference_report(evaluation, eval_pairs, outputs.output_dir / EVAL_DIR / REPORT_HTML)
    _print_made(trainer, model_args, outputs, train_pairs, eval_pairs, streamed, base, tuned)
    return outputs


def _score(trainer: Any, pairs: Any | None, *, base: bool) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``pair_logps`` of ``pairs`` on every process (a ZeRO-3 forward is collective); ``base``: with the adapter
    switched off (a full finetune scores its model as it is: call it before training)."""
    if pairs is None or len(pairs) == 0:
        return None
    model = trainer.model
    model.eval()
    batch_size = trainer.args.per_device_eval_batch_size
    try:
        if base and hasattr(model, "disable_adapter"):
            with model.disable_adapter():  # also switches modules_to_save back to the base's parts
                return pair_logps(model, trainer.plm_collator, pairs, batch_size=batch_size)
        return pair_logps(model, trainer.plm_collator, pairs, batch_size=batch_size)
    finally:
        model.train()


def preference_evaluation(pairs: Any, base: tuple[torch.Tensor, torch.Tensor], tuned: tuple[torch.Tensor, torch.Tensor],
                          *, folder: Path, model: str) -> dict[str, Any]:
    """What ``eval/eval.json`` holds for a DPO run: ``metrics`` (the tuned model against the base),
    ``base_metrics``, ``info`` (the model, the adapter folder, the run's ``plm_tune_training.json``) and ``records``
    (per pair: its index and id, prompt, chosen and rejected text, their log-probs under the base and the tuned
    model). ``model``: the model training started from."""
    adapter = is_adapter(folder)
    records = []
    for i in range(len(pairs)):
        pair = pairs[i]
        records.append({"index": i, "id": pair.get("id"), "prompt": _text(pair["messages"][-1]),
                        "chosen": _text(pair["chosen"][0]), "rejected": _text(pair["rejected"][0]),
                        "base": {"chosen": base[0][i].item(), "rejected": base[1][i].item()},
                        "tuned": {"chosen": tuned[0][i].item(), "rejected": tuned[1][i].item()}})
    training = read_training_info(folder)
    return {"objective": "dpo", "metrics": preference_metrics(tuned, base), "base_metrics": preference_metrics(base),
            "info": {"model": (recorded_base_model(folder) if adapter else None) or model,
                     "adapter": str(folder) if adapter else None, "training": training},
            "records": records}


def _text(message: dict[str, Any]) -> str:
    """A message's visible text (its text parts joined; media parts left out)."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    return "".join(part.get("text") or "" for part in content or [] if part.get("type") == "text")


def _print_made(trainer: Any, model_args: ModelArguments, outputs: RunOutputs, train_pairs: Any,
                eval_pairs: Any | None, streamed: bool, base: Any, tuned: Any) -> None:
    """The lines that say what the run made: where it saved, the loss, base -> tuned on the held-out pairs."""
    out = trainer.args.output_dir
    if model_args.method == "full":
        print(f"Saved the DPO-tuned model to {out} (load it with AutoModelForImageTextToText.from_pretrained('{out}')).")
    else:
        print(f"Saved the DPO-tuned {model_args.method} adapter to {out} "
              f"(load it with peft.PeftModel.from_pretrained(base_model, '{out}')).")
    trained = "streamed" if streamed else len(train_pairs)
    held = len(eval_pairs) if eval_pairs is not None else 0
    print(f"{trained} train / {held} held-out pairs: " + loss_change(trainer.state.log_history))
    if base is not None:
        before, after = preference_metrics(base), preference_metrics(tuned, base)
        print(f"Held-out preference accuracy ({after['pairs']} pairs): base {before['preference_accuracy']:.2f} -> "
              f"tuned {after['preference_accuracy']:.2f}; log p(chosen) - log p(rejected) {before['mean_logp_gap']:.3f}"
              f" -> {after['mean_logp_gap']:.3f}; reward margin {after['mean_reward_margin']:.3f} nats (reward "
              f"accuracy {after['reward_accuracy']:.2f})")
    if outputs.report is not None:
        print(f"Report: {outputs.report}")
