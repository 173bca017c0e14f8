"""plm-tune: finetune Meta's Perception Language Model (PLM) on your own images and videos.

The public API:

* ``validate_sample``: check a canonical sample (``plm_tune.sample`` documents the format).
* ``PLMCollator``: canonical samples -> a PLM batch with exact labels (``plm_tune.collator``).
* ``ConversationEncoder``: the segment-by-segment chat formatting behind it (``plm_tune.formatting``).
* ``load_model``, ``parameter_groups``: PLM with LoRA / DoRA / QLoRA / full and frozen parts (``plm_tune.model``).
* ``generate``: batched answers for canonical samples, formatted as in training (``plm_tune.generation``).
* ``evaluate``, ``save_eval``, ``load_eval``: score a finetuned (and the base) model on an eval split
  (``plm_tune.evaluation``); ``score_answers``: exact match, accuracy, BLEU, ROUGE-L (``plm_tune.metrics``).
* ``write_report``: a self-contained HTML report of an evaluation, base vs finetuned (``plm_tune.report``).
* ``merge_adapter`` (``plm_tune.merge``), ``write_model_card`` (``plm_tune.model_card``), ``push_adapter``,
  ``files_to_upload`` (``plm_tune.push``): ship an adapter; ``write_training_info``: how it trained, in its run
  folder (``plm_tune.run_folder``, which owns the output folder's layout).
* ``ModelArguments``, ``MediaArguments``, ``EvalArguments``, ``training_info``: a run's settings, as the recipes
  and ``plm-tune plan`` parse them, and what ``plm_tune_training.json`` records of them (``plm_tune.arguments``).
* ``build_trainer``: TRL's SFTTrainer with the collator, per-part LRs and PLM metrics (``plm_tune.trainer``).
* ``estimate_cost``, ``SampleEstimate``: exact token counts from media headers (``plm_tune.costs``);
  ``plan_dataset``, ``plan_report``, ``Plan``: a dataset's token distribution, padding waste and peak memory
  (``plm_tune.plan``); ``estimate_memory``, ``plm_config``: peak memory, real 1B/3B/8B configs (``plm_tune.memory``).
* ``plm_tune.testing.build_tiny_plm``: an offline random-init PLM for tests and demos.
"""

from plm_tune.arguments import EvalArguments, MediaArguments, ModelArguments, training_info
from plm_tune.collator import CollatorStats, EncodedSample, PLMCollator
from plm_tune.costs import SampleEstimate, estimate_cost
from plm_tune.evaluation import EvalRecord, EvalResult, base_model_context, evaluate, load_eval, save_eval
from plm_tune.formatting import DEFAULT_SYSTEM_PROMPT, ConversationEncoder, EncodedConversation
from plm_tune.generation import Generation, generate
from plm_tune.media import load_image, load_video, select_frame_indices
from plm_tune.memory import MemoryEstimate, estimate_memory, plm_config
from plm_tune.merge import merge_adapter
from plm_tune.metrics import score_answers
from plm_tune.model import enable_gradient_checkpointing, load_for_inference, load_model, parameter_groups
from plm_tune.model_card import write_model_card
from plm_tune.pixels import PixelEncoder
from plm_tune.plan import Plan, plan_dataset, plan_report
from plm_tune.push import files_to_upload, push_adapter
from plm_tune.report import write_report
from plm_tune.run_folder import write_training_info
from plm_tune.sample import normalize_messages, validate_sample
from plm_tune.trainer import GenerationEvalCallback, PLMMetricsCallback, build_trainer, loss_change

__version__ = "0.1.0"

__all__ = [
    "base_model_context",
    "build_trainer",
    "CollatorStats",
    "ConversationEncoder",
    "DEFAULT_SYSTEM_PROMPT",
    "enable_gradient_checkpointing",
    "EncodedConversation",
    "EncodedSample",
    "estimate_cost",
    "estimate_memory",
    "EvalArguments",
    "EvalRecord",
    "EvalResult",
    "evaluate",
    "files_to_upload",
    "generate",
    "GenerationEvalCallback",
    "Generation",
    "load_eval",
    "load_for_inference",
    "load_image",
    "load_model",
    "load_video",
    "loss_change",
    "MediaArguments",
    "MemoryEstimate",
    "merge_adapter",
    "ModelArguments",
    "normalize_messages",
    "parameter_groups",
    "PixelEncoder",
    "Plan",
    "plan_dataset",
    "plan_report",
    "plm_config",
    "PLMCollator",
    "PLMMetricsCallback",
    "push_adapter",
    "SampleEstimate",
    "select_frame_indices",
    "save_eval",
    "score_answers",
    "training_info",
    "validate_sample",
    "write_model_card",
    "write_report",
    "write_training_info",
]
