"""What every recipe does around its own data, so that a recipe keeps only its corpus.

A recipe reads top to bottom:

1. ``recipe_parser(DataArguments)``: TRL's parser over the run settings (``plm_tune.arguments``), the recipe's
   corpus arguments and ``SFTConfig``; a YAML config plus command-line overrides, an unknown key an error;
2. ``build_tiny_if_asked``: the offline demos build a tiny PLM at ``model_name_or_path`` first;
3. its own data section, then ``data_adapters.held_out_split`` for the held-out share (a stream's first
   samples with ``streaming: true``, the rest shuffled through a buffer);
4. ``finetune``: with ``--plan true`` print ``plan_report`` and stop; else ``load_model``, ``build_trainer``,
   train, a last eval, ``finish_run`` (``plm_tune_training.json`` from ``training_info``), and the lines that say
   what the run made.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from plm_tune.after_training.outputs import RunOutputs, finish_run
from plm_tune.after_training.push import check_push_ready
from plm_tune.apps.config import PLMParser
from plm_tune.arguments import EvalArguments, MediaArguments, ModelArguments, check_settings, training_info
from plm_tune.modeling.devices import check_gpu_usable
from plm_tune.modeling.model import load_model
from plm_tune.training.checkpoints import check_output_dir, check_resume, last_complete_checkpoint
from plm_tune.training.plan import plan_report
from plm_tune.training.trainer import build_trainer, loss_change

__all__ = ["build_tiny_if_asked", "finetune", "recipe_parser"]

logger = logging.getLogger(__name__)


def recipe_parser(data_arguments: type | None = None, *, config_class: type | None = None,
                  **defaults: Any) -> PLMParser:
    """The config parser of a recipe: ``(ModelArguments, MediaArguments, data_arguments, SFTConfig, EvalArguments)``
    read from a YAML config and the command line (``plm_tune.apps.config``: TRL's key names read too, an unknown
    key listing the valid ones).

    ``config_class`` replaces ``SFTConfig`` (``trl.DPOConfig`` for the preference recipe). ``defaults`` replace
    dataclass defaults (a recipe's own, e.g. ``method="full"``); a value from the YAML or the command line still
    wins. ``bf16`` defaults to what this machine supports: TRL's configs turn it on, which transformers refuses on
    a CPU or an old GPU. Without ``data_arguments``: the run settings alone.
    """
    from trl import SFTConfig

    classes = (ModelArguments, MediaArguments, *([data_arguments] if data_arguments else []),
               config_class or SFTConfig, EvalArguments)
    return PLMParser(classes, **_machine_defaults(), **defaults)


def _machine_defaults() -> dict[str, Any]:
    return {"bf16": torch.cuda.is_available() and torch.cuda.is_bf16_supported()}


def settings_keys() -> dict[str, list[str]]:
    """The keys a config may set for the run settings: ``{dataclass name: field names}``, SFTConfig's last."""
    import dataclasses

    from trl import SFTConfig

    return {cls.__name__: [f.name for f in dataclasses.fields(cls)]
            for cls in (ModelArguments, MediaArguments, EvalArguments, SFTConfig)}


def parse_settings(config: dict[str, Any]) -> tuple[ModelArguments, MediaArguments, Any, EvalArguments]:
    """A config's run settings, parsed as ``recipe_parser`` parses them (same dataclasses, same defaults, TRL's
    model keys read).

    Args:
        config: keys of ``settings_keys()`` (and ``TrlKeys``' model keys) only: a YAML config without its corpus.

    Returns:
        ``(model_args, media_args, training_args, eval_args)``; ``training_args`` is an ``SFTConfig``.

    Raises:
        ValueError: a key that no dataclass has, named, with the valid keys.
    """
    return recipe_parser().parse_dict(config)


def build_tiny_if_asked(model_args: ModelArguments, training_args: Any) -> None:
    """With ``build_tiny_if_missing`` and no folder at ``model_name_or_path``, build a tiny random PLM there
    (``plm_tune.modeling.testing.build_tiny_plm`` at ``tiny_preset``'s size): the main process, the others waiting.

    A folder that ``build_tiny_plm`` made with an older build (its ``TINY_BUILD``) is rebuilt in place, with a log
    line; one without its record (made by hand, or by a plm-tune from before the record) is used as it is, with a
    warning naming the way to rebuild it."""
    path = model_args.model_name_or_path
    if model_args.build_tiny_if_missing:
        from plm_tune.modeling.testing import TINY_BUILD, TINY_PRESETS, build_tiny_plm, tiny_plm_build

        with training_args.main_process_first(desc="building the tiny PLM"):
            if not Path(path).exists():
                build_tiny_plm(path, **TINY_PRESETS[model_args.tiny_preset])
                return
            record = tiny_plm_build(path)
            if record is None:
                logger.warning("%s holds no record of how it was built (plm_tune_tiny.json): it may be a tiny PLM from "
                               "an older plm-tune, whose demos learn less. Delete the folder to rebuild it.", path)
            elif record["build"] != TINY_BUILD:
                logger.warning("Rebuilding the tiny PLM at %s: it was built by an older plm-tune (build %s, now %s).",
                               path, record["build"], TINY_BUILD)
                build_tiny_plm(path, **record["arguments"])


def finetune(
    train_set: Any,
    eval_set: Any | None,
    model_args: ModelArguments,
    media_args: MediaArguments,
    training_args: Any,
    eval_args: EvalArguments,
    *,
    datasets: list[str] | None = None,
    dtype: torch.dtype | None = None,
) -> RunOutputs | None:
    """Plan, or load, train and save: the part of a run that does not depend on the corpus.

    Args:
        train_set, eval_set: canonical samples (``eval_set`` None: no held-out split). ``train_set`` may be a
            stream (``IterableDataset``, e.g. from ``held_out_split``): ``training_args.max_steps`` is then required.
        model_args, media_args, training_args, eval_args: the parsed run settings (``training_args`` an
            ``SFTConfig``; its ``activation_checkpointing`` and ``push_to_hub`` are taken over, see below).
        datasets: where the samples came from (a Hub id goes to the card's metadata, any other text only to
            the card's and the report's text).
        dtype: the weights' dtype (``load_model``'s default: bf16 on a bf16 GPU, else float32).

    Returns:
        ``finish_run``'s ``RunOutputs``; None with ``eval_args.plan`` (the plan is printed instead).

    Raises:
        plm_tune.arguments.SettingError: a setting out of range or ignored (``check_settings``), before anything.
        ValueError: ``train_set`` is a stream and ``training_args.max_steps`` is not set.
        plm_tune.training.checkpoints.OutputFolderError: ``output_dir`` holds another method's weights (without
            ``eval_args.overwrite_output_dir``), or ``resume_from_checkpoint`` is another method's or base's.
        plm_tune.training.checkpoints.CheckpointWriteError: ``output_dir`` is a file or cannot be written.
    """
    check_settings(model_args, media_args, training_args, eval_args)  # every setting, in one line, first
    if eval_args.plan:  # counts from media headers and a memory estimate; no weights are loaded
        print(plan_report(train_set, model_args, media=media_args, max_length=training_args.max_length,
                          batch_size=training_args.per_device_train_batch_size,
                          gradient_checkpointing=training_args.activation_checkpointing, bf16=training_args.bf16))
        return None
    resume, streamed = _check_before_loading(train_set, model_args, training_args, eval_args)
    # One checkpointing switch, SFTConfig's (TRL defaults it on): load_model also reaches the timm vision
    # blocks, which the Trainer's own would miss, so the Trainer's is turned off instead of applied twice.
    model, processor = load_model(model_args, dtype=dtype, seed=training_args.seed,
                                  trust_remote_code=training_args.trust_remote_code,  # SFTConfig's (off)
                                  gradient_checkpointing=training_args.activation_checkpointing)
    training_args.activation_checkpointing = training_args.gradient_checkpointing = False

    # finish_run pushes at the end, with plm-tune's model card; the Trainer's own push would go first without it.
    push_to_hub, training_args.push_to_hub = training_args.push_to_hub, False
    # The config's hub_token goes to the push only: the Trainer pickles its args into training_args.bin.
    hub_token, training_args.hub_token = training_args.hub_token, None
    trainer = build_trainer(model, processor, train_set, eval_set, training_args, media=media_args,
                            model_args=model_args, eval_args=eval_args)
    trainer.train(resume_from_checkpoint=resume)
    if eval_set is not None:
        trainer.evaluate()

    # The model or adapter (and the parts trained in full) with its processor, how it was trained
    # (plm_tune_training.json), the held-out split, its generated answers and an HTML report; then the Hub.
    outputs = finish_run(
        trainer,
        eval_set=eval_set,
        training_info=training_info(model_args, media_args, datasets),
        generate_eval=eval_args.generate_eval,
        compare_base=eval_args.compare_base,
        max_new_tokens=eval_args.eval_max_new_tokens,
        push_to_hub=push_to_hub,
        hub_model_id=training_args.hub_model_id,
        hub_private_repo=bool(training_args.hub_private_repo),
        hub_token=hub_token,
        record_media_paths=eval_args.record_media_paths,
    )
    if trainer.is_world_process_zero():
        out = training_args.output_dir
        if model_args.method == "full":
            print(f"Saved the finetuned model to {out} "
                  f"(load it with AutoModelForImageTextToText.from_pretrained('{out}')).")
        else:
            print(f"Saved the {model_args.method} adapter to {out} "
                  f"(load it with peft.PeftModel.from_pretrained(base_model, '{out}')).")
        trained = "streamed" if streamed else len(train_set)
        print(f"{trained} train / {len(eval_set) if eval_set is not None else 0} eval samples: "
              + loss_change(trainer.state.log_history))
        if outputs.summary():
            print(outputs.summary())
    return outputs


def _check_before_loading(train_set: Any, model_args: ModelArguments, training_args: Any,
                          eval_args: EvalArguments) -> tuple[str | None, bool]:
    """What must hold before the weights load, each a one-line error: the push (token, repo id), the GPU, the
    output folder, the checkpoint to resume from, a stream's max_steps. Returns that checkpoint and whether
    ``train_set`` is a stream."""
    if training_args.push_to_hub:  # a missing token or a bad repo id fails now, not after training
        check_push_ready(training_args.hub_model_id, output_dir=training_args.output_dir,
                         token=training_args.hub_token, method=model_args.method)

    check_gpu_usable(training_args.use_cpu)  # a GPU torch cannot use is an error here, not a run on the CPU
    # The output folder and the checkpoint to resume from, before the weights load: a file, a read-only disk,
    # another method's weights left there, a checkpoint of another method or base are each one line.
    check_output_dir(training_args.output_dir, model_args.method, overwrite=eval_args.overwrite_output_dir,
                     should_save=training_args.should_save)
    resume = _resume_checkpoint(training_args.resume_from_checkpoint, training_args.output_dir)
    if resume:
        check_resume(resume, method=model_args.method, base=model_args.model_name_or_path,
                     lora_r=model_args.lora_r, base_config=_local_config(model_args.model_name_or_path))
    streamed = not hasattr(train_set, "__len__")
    if streamed and training_args.max_steps <= 0:  # before the weights load, not when the Trainer finds out
        raise ValueError("The training set is a stream (streaming: true), which has no length to count epochs in: "
                         "set `max_steps` (e.g. 1000); num_train_epochs cannot end a stream.")
    return resume, streamed


def _resume_checkpoint(value: Any, output_dir: str) -> str | None:
    """The checkpoint folder ``resume_from_checkpoint`` means: ``True`` (or ``"true"`` from a config or flag, which
    ``SFTConfig`` keeps as text) the newest complete one in ``output_dir``; a path itself; unset None."""
    if value is True or (isinstance(value, str) and value.lower() == "true"):
        return last_complete_checkpoint(output_dir)
    return str(value) if value and not (isinstance(value, str) and value.lower() == "false") else None


def _local_config(name_or_path: str) -> dict[str, Any] | None:
    """A model's ``config.json`` from its folder or the Hub cache, without a network call; None if neither has it."""
    import json

    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    path: Path | None = Path(name_or_path).expanduser() / "config.json"
    if not path.is_file():
        try:
            cached = try_to_load_from_cache(name_or_path, "config.json")
        except HFValidationError:  # not a Hub id either: load_model says what is wrong with the name
            cached = None
        path = Path(cached) if isinstance(cached, str) else None
    return json.loads(path.read_text()) if path is not None else None
