"""plm-tune: finetune Meta's Perception Language Model (PLM) on your own images and videos.

The public API:

* ``validate_sample``: check a canonical sample (``plm_tune.sample`` documents the format).
* ``PLMCollator``: canonical samples -> a PLM batch with exact labels (``plm_tune.collator``).
* ``ConversationEncoder``: the segment-by-segment chat formatting behind it (``plm_tune.formatting``).
* ``load_model``, ``parameter_groups``: PLM with LoRA / DoRA / QLoRA / full and frozen parts (``plm_tune.model``).
* ``generate``: batched answers for canonical samples, formatted as in training (``plm_tune.generation``).
* ``build_trainer``: TRL's SFTTrainer with the collator, per-part LRs and PLM metrics (``plm_tune.trainer``).
* ``plm_tune.testing.build_tiny_plm``: an offline random-init PLM for tests and demos.
"""

from plm_tune.collator import CollatorStats, EncodedSample, PLMCollator
from plm_tune.formatting import DEFAULT_SYSTEM_PROMPT, ConversationEncoder, EncodedConversation
from plm_tune.generation import Generation, generate
from plm_tune.media import load_image, load_video, sample_frame_times
from plm_tune.model import enable_gradient_checkpointing, load_model, parameter_groups
from plm_tune.pixels import PixelEncoder
from plm_tune.sample import normalize_messages, validate_sample
from plm_tune.trainer import PLMMetricsCallback, build_trainer, loss_change

__version__ = "0.1.0"

__all__ = [
    "CollatorStats",
    "ConversationEncoder",
    "DEFAULT_SYSTEM_PROMPT",
    "EncodedConversation",
    "EncodedSample",
    "Generation",
    "PLMCollator",
    "PLMMetricsCallback",
    "PixelEncoder",
    "build_trainer",
    "enable_gradient_checkpointing",
    "generate",
    "load_image",
    "load_model",
    "loss_change",
    "load_video",
    "normalize_messages",
    "parameter_groups",
    "sample_frame_times",
    "validate_sample",
]
