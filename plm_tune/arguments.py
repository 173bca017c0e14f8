"""Run settings: the one place each setting of a run is declared, with its one default.

Three dataclasses in the style of TRL's ``ModelConfig``, read by ``TrlParser`` (a YAML config plus command-line
overrides, an unknown key an error) in every recipe and by ``plm-tune plan``:

- ``ModelArguments``: which model, which method (LoRA / DoRA / QLoRA / full), what trains and at which rate;
- ``MediaArguments``: how media become tokens (tiles per image, frames per video) and what is in the loss;
- ``EvalArguments``: what a run does besides training (plan and exit, generation eval, the report).

``load_model``, ``build_trainer`` and ``plan_report`` take these objects (``build_trainer`` only them; the plain
keywords of the other two default to the class attributes here, ``MediaArguments.num_frames``), so each default
is written once, and ``training_info`` derives what ``plm_tune_training.json`` records from them.
Corpus settings (which files, which columns) stay in each recipe's own ``DataArguments``.

Example:
    >>> from trl import SFTConfig, TrlParser                                          # doctest: +SKIP
    >>> parser = TrlParser((ModelArguments, MediaArguments, EvalArguments, SFTConfig))  # doctest: +SKIP
    >>> model_args, media_args, eval_args, training_args = parser.parse_args_and_config()  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from plm_tune.data.frame_selection import NUM_FRAMES
from plm_tune.methods import Method, methods_help

__all__ = [
    "DEFAULT_MODEL",
    "MAX_NEW_TOKENS",
    "NUM_FRAMES",
    "SHUFFLE_BUFFER",
    "TRAIN_ON",
    "CorpusArguments",
    "EvalArguments",
    "LORA_ONLY",
    "MediaArguments",
    "ModelArguments",
    "SettingError",
    "TrainOn",
    "check_settings",
    "setting_problems",
    "dora_dropout_note",
    "settings_from",
    "training_info",
]

DEFAULT_MODEL = "facebook/Perception-LM-1B"
# The longest generated answer, in tokens, wherever plm-tune generates and the caller sets no limit: generate,
# evaluate, the eval during and after training, `plm-tune generate` / `eval` and the model card's snippet. One
# value, so an answer is cut at the same length in each of them and their scores compare. 128 is what the recipes'
# evals have always used: a caption or a short report, while greedy decoding of a model that never stops (it runs
# a batch until every answer ends or reaches the limit) stays cheap. eval.json counts the answers cut there
# (answers_cut_at_max_new_tokens), so a limit too short for a dataset shows.
MAX_NEW_TOKENS = 128
# Which tokens are in the loss; plm_tune.encoding.formatting implements each and says why "assistant" is the default.
TrainOn = Literal["assistant", "all", "plm"]
TRAIN_ON: tuple[TrainOn, ...] = get_args(TrainOn)


@dataclass
class ModelArguments:
    """Which PLM, how it trains (``plm_tune.load_model``), each part's learning rate and how the loss is scored
    (``build_trainer``)."""

    model_name_or_path: str = field(default=DEFAULT_MODEL, metadata={"help": "Hub id or folder."})
    method: Method = field(default="lora", metadata={"help": f"{methods_help()}."})
    freeze: list[str] = field(default_factory=lambda: ["vision"], metadata={
        "help": "Parts that do not train: vision, projector, language."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scale numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={
        "help": "Dropout on the LoRA input; 0.0 with dora, whose dropout redoes each base matmul."})
    lora_targets: Literal["language", "language+vision"] = field(
        default="language", metadata={"help": "Where LoRA adapters go; other unfrozen parts train in full."})
    lora_target_modules: list[str] | None = field(default=None, metadata={
        "help": "Which linear layers of the lora_targets parts get adapters, by name (e.g. q_proj v_proj; TRL's "
                "key); None or all-linear: all of them (language: q/k/v/o_proj, gate/up/down_proj)."})
    vision_lr: float | None = field(default=None, metadata={"help": "Vision tower LR; None: learning_rate."})
    projector_lr: float | None = field(default=None, metadata={"help": "Projector LR; None: learning_rate."})
    labelled_logits_loss: bool | None = field(default=None, metadata={
        "help": "Loss from logits at the labelled positions only (True), or TRL's fused LM head (False; every "
                "position off CUDA / XPU). None: True except on CUDA / XPU. Same loss either way (PLMTrainer)."})
    dtype: Literal["auto", "bfloat16", "float16", "float32"] | None = field(default=None, metadata={
        "help": "Load dtype of the weights (TRL's dtype / torch_dtype); None or auto: bfloat16 on a GPU with bf16, "
                "else float32. Trainable weights are float32 either way (plm_tune.modeling.precision)."})
    attn_implementation: str | None = field(default=None, metadata={
        "help": "sdpa, eager or flash_attention_2; None: transformers' choice."})
    build_tiny_if_missing: bool = field(
        default=False, metadata={"help": "Build a tiny random PLM at model_name_or_path if that folder is missing."})
    tiny_preset: Literal["test", "learner"] = field(
        default="test", metadata={"help": "Size of that tiny PLM (plm_tune.modeling.testing.TINY_PRESETS)."})


def dora_dropout_note(method: str, lora_dropout: float) -> str | None:
    """The warning for DoRA with ``lora_dropout > 0``: what it costs and how to avoid it; None otherwise.

    peft's DoRA reuses the base layer's output only when the adapter's input is the layer's input. With
    dropout it is not, so in training every adapted linear runs its base matmul a second time, on the dropped
    input (peft 0.21: ``tuners/lora/variants.py`` ``DoraLinearVariant.forward``, lines 242-246, passes
    ``base_result=None``; ``tuners/lora/dora.py`` line 163 computes ``F.linear(x, weight)``).
    ``benchmarks/dora_dropout.py`` measured a forward + backward step 1.5x slower than with ``lora_dropout=0``
    (random 2-layer Llama, hidden 1024, 256 tokens, CPU float32: per-round ratio median 1.52, quartiles
    1.42 - 1.67). A field default cannot depend on ``method``, so ``lora_dropout`` keeps LoRA's 0.05 and the
    DoRA configs set 0.0.

    Example:
        >>> dora_dropout_note("dora", 0.0) is None and dora_dropout_note("lora", 0.05) is None
        True
    """
    if method != "dora" or lora_dropout <= 0:
        return None
    return (f"method='dora' with lora_dropout={lora_dropout}: peft's DoRA then runs every adapted layer's base "
            "matmul a second time, on the dropped input (a training step measured 1.5x slower than with "
            "lora_dropout=0.0, benchmarks/dora_dropout.py). Set lora_dropout=0.0 (lora_dropout: 0.0 in a config) "
            "unless you need the dropout.")


@dataclass
class MediaArguments:
    """How images and videos become tokens, and which tokens are in the loss (the collator's settings)."""

    max_tiles: int | None = field(default=None, metadata={"help": "Tiles per image; None: the processor's."})
    num_frames: int = field(default=NUM_FRAMES, metadata={
        "help": "Frames sampled per video (or multi-frame DICOM); set max_length to match."})
    vision_input_type: Literal["thumb+tile", "vanilla"] | None = field(default=None, metadata={
        "help": "thumb+tile: a thumbnail plus up to max_tiles tiles; vanilla: one resized image; None: the "
                "processor's."})
    multi_image_tiles: int | None = field(default=1, metadata={
        "help": "Tiles per image when a sample has several images (None: tile each as a single image)."})
    keep_media_order: bool = field(default=False, metadata={
        "help": "Keep media where the messages put them (False: first, as PLM's trainer placed them)."})
    train_on: TrainOn = field(default="assistant", metadata={
        "help": "Tokens in the loss: assistant (each answer and its <|eot_id|>), plm (as PLM's trainer: also each "
                "answer's header and a closing <|end_of_text|>) or all (every token but media)."})
    fit_frames: bool = field(default=False, metadata={
        "help": "A sample over max_length keeps its turns and loses the fewest video frames (re-picked over the "
                "clip, never below 1) before tiles or turns."})
    fit_tiles: bool = field(default=False, metadata={
        "help": "A sample over max_length keeps its turns and has its image tile budgets lowered, after frames."})


# Samples a recipe's training stream is shuffled through (``data_adapters.held_out_split``, which
# ``IterableDataset.shuffle(buffer_size=...)``s it): a stream has no order to permute, so each sample is drawn from a
# buffer of the next ones. The buffer holds samples as the adapters give them (media as paths or encoded bytes), so
# 1000 is a few hundred MB of JPEGs at most. A table is shuffled whole.
SHUFFLE_BUFFER = 1000


@dataclass
class CorpusArguments:
    """What every recipe does with its corpus, whatever reads it: bad records, the held-out split, streaming.

    A recipe's own ``DataArguments`` (which files, which columns) subclasses it, so these keys mean the same
    in every config."""

    on_error: Literal["raise", "skip"] = field(default="raise", metadata={"help": "On a bad record: stop or skip."})
    eval_split: float = field(default=0.1, metadata={
        "help": "Held out for eval loss: a share of the samples (< 1) or a number of them (a stream's first); 0: none."})
    streaming: bool = field(default=False, metadata={
        "help": "Read samples as training goes, none held in memory: needs max_steps and a number for eval_split "
                "(TRL's dataset_streaming)."})
    shuffle_buffer: int = field(default=SHUFFLE_BUFFER, metadata={
        "help": "With streaming: samples the training stream is shuffled through (a table is shuffled whole)."})


@dataclass
class EvalArguments:
    """What a run does besides training: plan and stop, or evaluate by generation during and after training."""

    plan: bool = field(default=False, metadata={
        "help": "Print the plan (tokens, padding, peak memory from media headers) and exit without training."})
    generate_eval: bool = field(default=True, metadata={
        "help": "Answer the eval split by generation and score it; writes eval/eval.json and eval/report.html."})
    compare_base: bool = field(default=True, metadata={
        "help": "Also answer with the adapter off (the base model), for the report's before / after columns."})
    eval_max_new_tokens: int = field(default=MAX_NEW_TOKENS, metadata={
        "help": "Longest generated eval answer, in tokens (the end-of-run eval and generation_eval_steps checks)."})
    generation_eval_steps: int = field(default=0, metadata={
        "help": "During training, every N steps answer generation_eval_samples eval samples and log their "
                "scores (gen_eval/...; works under ZeRO-3). 0: off."})
    generation_eval_samples: int = field(default=8, metadata={
        "help": "How many eval samples each generation_eval_steps check answers."})
    record_media_paths: bool = field(default=False, metadata={
        "help": "Record sample ids and dataset folders as they are in eval.json, report.html, the gallery, "
                "plm_tune_training.json and the card; false: parts with names, IDs or dates become ref-HASH."})
    overwrite_output_dir: bool = field(default=False, metadata={
        "help": "Train into an output_dir that holds another method's saved weights (an adapter where a full "
                "model goes, or the reverse), deleting those files; False: refuse."})


def settings_from(settings: Any, cls: type, **keywords: Any) -> Any:
    """The settings a function runs with: a ``cls`` instance given, or one built from its plain keywords.

    Refuses both at once when a keyword differs from its default, so no value is silently overridden.

    Raises:
        ValueError: ``settings`` is given and a keyword was also set to a non-default value.
    """
    defaults = cls()
    if settings is None:
        return dataclasses.replace(defaults, **keywords)
    changed = sorted(name for name, value in keywords.items() if value != getattr(defaults, name))
    if changed:
        raise ValueError(f"Got a {cls.__name__} and the keyword(s) {', '.join(changed)}: set them in the "
                         f"{cls.__name__} (e.g. dataclasses.replace(args, {changed[0]}=...)), not both.")
    return settings


def training_info(model_args: ModelArguments, media_args: MediaArguments,
                  datasets: list[str] | None = None) -> dict[str, Any]:
    """What ``plm_tune_training.json`` records about a run's settings (``plm_tune.modeling.run_folder.TRAINING_INFO_KEYS``).

    ``finish_run`` adds the step counts and final losses. LoRA settings are recorded for LoRA methods only.

    Example:
        >>> training_info(ModelArguments(method="full"), MediaArguments(max_tiles=4))["max_tiles"]
        4
    """
    info: dict[str, Any] = {"method": model_args.method, "freeze": list(model_args.freeze),
                            "max_tiles": media_args.max_tiles, "num_frames": media_args.num_frames}
    if model_args.method != "full":
        info.update(lora_r=model_args.lora_r, lora_alpha=model_args.lora_alpha)
    if datasets:
        info["datasets"] = list(datasets)
    return info


# ------------------------------------------------------------------------------------------------ validation
# Settings only the LoRA methods read (lora, dora, qlora): given to method full they would be ignored.
LORA_ONLY = ("lora_r", "lora_alpha", "lora_dropout", "lora_targets", "lora_target_modules")


class SettingError(ValueError):
    """Run settings plm-tune refuses, in one line; ``keys`` names them as a config key, a ``--key`` flag and the
    dataclass field all spell them."""

    def __init__(self, keys: tuple[str, ...], message: str) -> None:
        self.keys = keys
        super().__init__(message)


def _whole(low: int) -> tuple[Any, str]:
    return (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low), f"a whole number >= {low}"


_POSITIVE = (lambda v: v > 0, "> 0")
_NOT_NEGATIVE = (lambda v: v >= 0, ">= 0")
_DROPOUT = (lambda v: 0 <= v < 1, "in [0, 1)")
# (key, rule, what it is): every number a run depends on. None passes where the field allows None ("not set").
_RULES = {
    "ModelArguments": (("lora_r", _whole(1), "the LoRA rank"), ("lora_alpha", _POSITIVE, "the LoRA scale numerator"),
                       ("lora_dropout", _DROPOUT, "a probability of dropping an input"),
                       ("vision_lr", _POSITIVE, "the vision tower's learning rate"),
                       ("projector_lr", _POSITIVE, "the projector's learning rate")),
    "MediaArguments": (("max_tiles", _whole(1), "tiles per image"), ("num_frames", _whole(1), "frames per video"),
                       ("multi_image_tiles", _whole(1), "tiles per image of a multi-image sample")),
    "EvalArguments": (("eval_max_new_tokens", _whole(1), "tokens per generated eval answer"),
                      ("generation_eval_steps", _whole(0), "steps between generation checks; 0: off"),
                      ("generation_eval_samples", _whole(1), "samples per generation check")),
    "SFTConfig": (("learning_rate", _POSITIVE, "a negative rate climbs the loss, 0 trains nothing"),
                  ("per_device_train_batch_size", _whole(1), "samples per step on each device"),
                  ("per_device_eval_batch_size", _whole(1), "samples per eval step on each device"),
                  ("gradient_accumulation_steps", _whole(1), "batches per optimizer step"),
                  ("max_length", _whole(1), "tokens per sample; unset: no limit"),
                  ("weight_decay", _NOT_NEGATIVE, "a negative decay pushes weights up"),
                  ("max_grad_norm", _NOT_NEGATIVE, "a negative norm turns clipping off silently"),
                  ("dataloader_num_workers", _whole(0), "worker processes; 0: the main process")),
}


def setting_problems(model_args: ModelArguments | None = None, media_args: MediaArguments | None = None,
                     training_args: Any = None, eval_args: EvalArguments | None = None,
                     trainable_parts: Iterable[str] | None = None) -> list[tuple[str, str]]:
    """``(key, what is wrong)`` for every setting that would crash a run later or train silently wrong: a number
    out of range (``_RULES``), a LoRA setting given to method full, a learning rate for a part that does not train,
    a run with no steps. Only the objects given are checked (``training_args``: an ``SFTConfig`` or
    ``TrainingArguments``); ``trainable_parts``: the parts a loaded model trains (default: those
    ``model_args.freeze`` leaves)."""
    problems = []
    given = {"ModelArguments": model_args, "MediaArguments": media_args, "EvalArguments": eval_args,
             "SFTConfig": training_args}
    for name, settings in given.items():
        for key, (test, must), what in _RULES[name] if settings is not None else ():
            value = getattr(settings, key, None)
            if value is not None and not test(value):
                problems.append((key, f"{key}={value!r} must be {must} ({what})"))
    if model_args is not None:
        problems += _method_problems(model_args, trainable_parts)
    if training_args is not None and hasattr(training_args, "max_steps"):
        problems += _length_problems(training_args)
    return problems


def _method_problems(args: ModelArguments, trainable_parts: Iterable[str] | None) -> list[tuple[str, str]]:
    """Settings the method or the frozen parts make dead: they would be ignored without a word."""
    defaults, problems = ModelArguments(), []
    if args.method == "full":
        for key in LORA_ONLY:
            if getattr(args, key) != getattr(defaults, key):
                problems.append((key, f"{key}={getattr(args, key)!r} is a LoRA setting and method is full, which "
                                      f"would ignore it: drop {key}, or set method to lora / dora / qlora"))
    trains = set(trainable_parts) if trainable_parts is not None else {"vision", "projector"} - set(args.freeze)
    for part in ("vision", "projector"):
        if getattr(args, f"{part}_lr") is not None and part not in trains:
            problems.append((f"{part}_lr", f"{part}_lr={getattr(args, f'{part}_lr')!r} is set but the {part} does "
                                           f"not train (freeze): drop {part}_lr, or unfreeze {part}"))
    return problems


def _length_problems(args: Any) -> list[tuple[str, str]]:
    """A run that would take no optimizer step, or never leave its warmup."""
    if args.max_steps <= 0 and args.num_train_epochs <= 0:
        return [("num_train_epochs", f"num_train_epochs={args.num_train_epochs!r} with max_steps={args.max_steps!r} "
                                     "trains nothing: set max_steps (optimizer steps) or num_train_epochs > 0")]
    # Strictly longer only: a smoke run of a config (`--max_steps 2` on warmup_steps: 2) is what users try first.
    if args.max_steps > 0 and args.warmup_steps >= 1 and args.warmup_steps > args.max_steps:
        return [("warmup_steps", f"warmup_steps={args.warmup_steps!r} with max_steps={args.max_steps!r}: the "
                                 "learning rate would never leave its warmup; set warmup_steps up to max_steps "
                                 "(or a share < 1, e.g. 0.05; 0 for a smoke run)")]
    return []


def check_settings(model_args: ModelArguments | None = None, media_args: MediaArguments | None = None,
                   training_args: Any = None, eval_args: EvalArguments | None = None,
                   trainable_parts: Iterable[str] | None = None) -> None:
    """Refuse, in one line naming each key, the settings ``setting_problems`` finds; called before any weight loads
    (``finetune``) and by ``load_model`` / ``build_trainer`` for Python callers.

    Raises:
        SettingError: one or more settings refused, all named.

    Example:
        >>> check_settings(ModelArguments(method="full", lora_r=64))
        Traceback (most recent call last):
        ...
        plm_tune.arguments.SettingError: Setting refused: lora_r=64 is a LoRA setting and method is full, which \
would ignore it: drop lora_r, or set method to lora / dora / qlora.
    """
    problems = setting_problems(model_args, media_args, training_args, eval_args, trainable_parts)
    if problems:
        keys = tuple(key for key, _ in problems)
        label = "Setting refused" if len(problems) == 1 else "Settings refused"
        raise SettingError(keys, f"{label}: " + "; ".join(text for _, text in problems) + ".")
