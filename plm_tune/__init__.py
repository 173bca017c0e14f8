"""plm-tune: finetune Meta's Perception Language Model (PLM) on your own images and videos.

The public API:

* ``validate_sample``: check a canonical sample (``plm_tune.data.sample`` documents the format).
* ``DataError``, ``MediaError``, ``Reason``, ``reason_of``: what is wrong with a sample or its media, as a reason
  code on the exception (``plm_tune.errors``).
* ``PLMCollator``: canonical samples -> a PLM batch with exact labels (``plm_tune.encoding.collator``).
* ``PLMPreferenceCollator``: preference samples (a prompt, a chosen and a rejected answer) -> one exact batch of
  [chosen, rejected] rows for TRL's ``DPOTrainer`` (``plm_tune.encoding.preference_collator``); ``sequence_logps``:
  each row's summed answer log-prob (``plm_tune.encoding.sequence_logps``).
* ``ConversationEncoder``: the segment-by-segment chat formatting behind it (``plm_tune.encoding.formatting``).
* ``load_model``, ``parameter_groups``: PLM with LoRA / DoRA / QLoRA / full and frozen parts (``plm_tune.modeling.model``).
* ``generate``: batched answers for canonical samples, formatted as in training (``plm_tune.inference.generation``).
* ``evaluate``, ``save_eval``, ``load_eval``: score a finetuned (and the base) model on an eval split
  (``plm_tune.inference.evaluation``); ``score_answers``: exact match, accuracy, BLEU, ROUGE-L (``plm_tune.inference.metrics``).
* ``write_report``: a self-contained HTML report of an evaluation, base vs finetuned (``plm_tune.after_training.report``).
* ``merge_adapter`` (``plm_tune.after_training.merge``), ``write_model_card`` (``plm_tune.after_training.model_card``), ``push_adapter``,
  ``files_to_upload`` (``plm_tune.after_training.push``): ship an adapter; ``write_training_info``: how it trained, in its run
  folder (``plm_tune.modeling.run_folder``, which owns the output folder's layout).
* ``ModelArguments``, ``MediaArguments``, ``EvalArguments``, ``training_info``: a run's settings, as the recipes
  and ``plm-tune plan`` parse them, and what ``plm_tune_training.json`` records of them (``plm_tune.arguments``).
* ``build_trainer``: TRL's SFTTrainer with the collator, per-part LRs and PLM metrics (``plm_tune.training.trainer``), as a
  ``PLMTrainer``: the SFTTrainer subclass that groups by PLM's costs and scores labelled logits
  (``plm_tune.training.plm_trainer``; importing it imports TRL).
* ``build_dpo_trainer``: TRL's DPOTrainer with the preference collator and per-part LRs; with an adapter the reference
  is the base with the adapter off (``plm_tune.training.preference_trainer``); ``pair_logps``, ``preference_metrics``:
  preference accuracy and reward margins on held-out pairs (``plm_tune.inference.preference_scores``).
* ``plan_sample``, ``SamplePlan``: what the collator builds of a sample (kept turns, tiles, frames, tokens), from
  media sizes (``plm_tune.encoding.sample_plan``; ``PLMCollator.plan`` applies it);
  ``estimate_cost``, ``SampleEstimate``: exact token counts from media headers (``plm_tune.encoding.costs``);
  ``plan_dataset``, ``plan_report``, ``Plan``: a dataset's token distribution, padding waste and peak memory
  (``plm_tune.training.plan``); ``estimate_memory``, ``plm_config``: peak memory, real 1B/3B/8B configs (``plm_tune.modeling.memory``).
* ``plm_tune.modeling.testing.build_tiny_plm``: an offline random-init PLM for tests and demos.
* ``plm_tune.modeling.testing_real.build_random_plm``: PLM-1B / 3B / 8B at random init with the real tokenizer, offline.
"""

from __future__ import annotations

import importlib
import logging
import os
import warnings

# name -> module. The names are imported on first use (PEP 562), so `import plm_tune` and the CLI's
# `--help` stay fast: most modules import torch, transformers or peft.
_EXPORTS = {
    "EvalArguments": "plm_tune.arguments",
    "MediaArguments": "plm_tune.arguments",
    "ModelArguments": "plm_tune.arguments",
    "training_info": "plm_tune.arguments",
    "CollatorStats": "plm_tune.encoding.collator",
    "EncodedSample": "plm_tune.encoding.collator",
    "PLMCollator": "plm_tune.encoding.collator",
    "PLMPreferenceCollator": "plm_tune.encoding.preference_collator",
    "sequence_logps": "plm_tune.encoding.sequence_logps",
    "SampleEstimate": "plm_tune.encoding.costs",
    "SamplePlan": "plm_tune.encoding.sample_plan",
    "plan_sample": "plm_tune.encoding.sample_plan",
    "estimate_cost": "plm_tune.encoding.costs",
    "DataError": "plm_tune.errors",
    "MediaError": "plm_tune.errors",
    "Reason": "plm_tune.errors",
    "reason_of": "plm_tune.errors",
    "EvalRecord": "plm_tune.inference.evaluation",
    "EvalResult": "plm_tune.inference.evaluation",
    "base_model_context": "plm_tune.inference.evaluation",
    "evaluate": "plm_tune.inference.evaluation",
    "load_eval": "plm_tune.inference.evaluation",
    "save_eval": "plm_tune.inference.evaluation",
    "DEFAULT_SYSTEM_PROMPT": "plm_tune.encoding.formatting",
    "ConversationEncoder": "plm_tune.encoding.formatting",
    "EncodedConversation": "plm_tune.encoding.formatting",
    "Generation": "plm_tune.inference.generation",
    "generate": "plm_tune.inference.generation",
    "load_image": "plm_tune.data.media",
    "load_video": "plm_tune.data.media",
    "select_frame_indices": "plm_tune.data.media",
    "MemoryEstimate": "plm_tune.modeling.memory",
    "estimate_memory": "plm_tune.modeling.memory",
    "plm_config": "plm_tune.modeling.memory",
    "merge_adapter": "plm_tune.after_training.merge",
    "score_answers": "plm_tune.inference.metrics",
    "enable_gradient_checkpointing": "plm_tune.modeling.model",
    "load_for_inference": "plm_tune.modeling.model",
    "load_model": "plm_tune.modeling.model",
    "parameter_groups": "plm_tune.modeling.model",
    "write_model_card": "plm_tune.after_training.model_card",
    "PixelEncoder": "plm_tune.encoding.pixels",
    "PLMTrainer": "plm_tune.training.plm_trainer",
    "Plan": "plm_tune.training.plan",
    "attention_by_part": "plm_tune.modeling.precision",
    "set_training_dtypes": "plm_tune.modeling.precision",
    "plan_dataset": "plm_tune.training.plan",
    "plan_report": "plm_tune.training.plan",
    "files_to_upload": "plm_tune.after_training.push",
    "push_adapter": "plm_tune.after_training.push",
    "write_report": "plm_tune.after_training.report",
    "write_training_info": "plm_tune.modeling.run_folder",
    "normalize_messages": "plm_tune.data.sample",
    "validate_sample": "plm_tune.data.sample",
    "GenerationEvalCallback": "plm_tune.training.callbacks",
    "PLMMetricsCallback": "plm_tune.training.callbacks",
    "build_trainer": "plm_tune.training.trainer",
    "build_dpo_trainer": "plm_tune.training.preference_trainer",
    "pair_logps": "plm_tune.inference.preference_scores",
    "preference_metrics": "plm_tune.inference.preference_scores",
    "loss_change": "plm_tune.training.trainer",
}

__version__ = "0.1.0"

__all__ = sorted(_EXPORTS, key=str.lower)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'plm_tune' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _DropNotice(logging.Filter):
    """Drops one import-time notice of another library, unless ``keep()`` says this run needs it."""

    def __init__(self, text: str, keep=lambda: False) -> None:
        super().__init__()
        self.text, self.keep = text, keep

    def filter(self, record: logging.LogRecord) -> bool:
        return self.keep() or self.text not in record.getMessage()


# DeepSpeed says it falls back to the CPU whenever it is imported, and accelerate imports it on every model save
# once it is installed (the `deepspeed` extra): kept only for runs that use it (accelerate sets this variable).
# bitsandbytes, imported by peft, asks for the `kernels` package (fetched from the Hub) on CPUs with AVX-512 BF16:
# it only speeds up QLoRA on a CPU. Both loggers are filtered before the libraries create them.
logging.getLogger("DeepSpeed").addFilter(_DropNotice(
    "Setting accelerator to CPU", keep=lambda: os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() in ("1", "true")))
logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_DropNotice("Failed to load CPU gemm_4bit_forward"))
# peft 0.21 reads transformers' deprecated `is_gradient_checkpointing` whenever it wraps a model: a FutureWarning
# about peft's code on every load_model / load_for_inference / merge, which no user setting can change.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
