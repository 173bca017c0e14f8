"""Preference-tune PLM with DPO and LoRA: pairs of a chosen and a rejected answer to the same image or video, from
TRL's, LLaMA-Factory's, RLAIF-V's or VLFeedback's layouts; held-out preference accuracy, base vs tuned, in a report.

The offline demo: a tiny random PLM (built on first use in ``.cache/tiny-plm``) learns from the pixels alone to
prefer the true colour of a shape ("red") over a wrong one ("blue"): held-out preference accuracy goes from about
chance to 1.00 in 300 steps (measured: 0.50 -> 1.00 on 32 pairs), about 35 s on 2 CPU cores:

    accelerate launch recipes/preference_lora.py --config recipes/configs/preference_demo.yaml

PLM-1B on RLAIF-V's pairs (openbmb/RLAIF-V-Dataset), written for one CUDA GPU with bf16 (chosen automatically)
and Hub access; not yet run in this repository, whose machines have neither:

    accelerate launch recipes/preference_lora.py --config recipes/configs/preference_lora.yaml

Your own pairs: ``--preference_data pairs.jsonl --media_root images/`` (any of the four layouts, told apart by
their keys: ``data_adapters.preference``). The reference model is the base with the adapter switched off, so
DPO costs no second copy of the weights; TRL's ``beta`` and ``loss_type`` (sigmoid, ipo, robust, ...) are keys of
the config. Every value can be overridden on the command line (``--beta 0.05 --max_steps 200``).
"""

from __future__ import annotations

# plm_tune before trl: its log filters must be in place when peft imports bitsandbytes, whose import prints
# a notice about a Hub-fetched `kernels` package on some CPUs.
import plm_tune  # noqa: F401

# isort: split
import os
from dataclasses import dataclass, field

from trl import DPOConfig

from data_adapters import from_preference_data, held_out_split
from data_adapters.synthetic import synthetic_shape_pairs
from plm_tune.apps.config import PLMParser
from plm_tune.apps.finetune import build_tiny_if_asked, recipe_parser
from plm_tune.apps.preference_finetune import preference_finetune
from plm_tune.arguments import CorpusArguments, EvalArguments, MediaArguments, ModelArguments
from plm_tune.verbosity import VERBOSE_ENV


@dataclass
class DataArguments(CorpusArguments):  # + on_error, eval_split, streaming, shuffle_buffer
    preference_data: str | None = field(default=None, metadata={
        "help": "Preference pairs: a .json / .jsonl file, a save_to_disk folder or a Hub dataset name."})
    dataset_split: str = field(default="train", metadata={"help": "Split of a Hugging Face preference_data."})
    dataset_config: str | None = field(default=None, metadata={"help": "Configuration of a Hub preference_data."})
    media_root: str | None = field(default=None, metadata={
        "help": "Folder the media paths of preference_data are relative to (default: the file's folder)."})
    allow_outside_root: bool = field(default=False, metadata={"help": "Accept media paths outside media_root."})
    system_prompt: str | None = field(default=None, metadata={"help": "A system message for pairs without one."})
    synthetic_pairs: int = field(default=0, metadata={
        "help": "Instead of preference_data: this many generated colour pairs (the offline demo)."})
    verbose: bool = field(default=False, metadata={
        "help": "Print every skipped record and the Trainer's full log dicts (same as PLM_TUNE_VERBOSE=1)."})


def make_parser() -> PLMParser:
    """The run settings (plm_tune.arguments), this recipe's pairs, DPOConfig: YAML + command line."""
    return recipe_parser(DataArguments, config_class=DPOConfig)


def main(model_args: ModelArguments, media_args: MediaArguments, data_args: DataArguments,
         dpo_args: DPOConfig, eval_args: EvalArguments) -> None:
    if data_args.verbose:
        os.environ[VERBOSE_ENV] = "1"  # read by the data adapters' skip summaries and the training log
    build_tiny_if_asked(model_args, dpo_args)  # the offline demo builds a tiny PLM first

    ################
    # Data: canonical preference samples (a prompt, its media, a chosen and a rejected answer)
    ################
    if data_args.synthetic_pairs:
        pairs = synthetic_shape_pairs(data_args.synthetic_pairs, seed=dpo_args.seed, streaming=data_args.streaming)
        source = f"{data_args.synthetic_pairs} synthetic colour pairs"
    elif data_args.preference_data:
        pairs = from_preference_data(
            data_args.preference_data,
            media_root=data_args.media_root,
            allow_outside_root=data_args.allow_outside_root,
            system_prompt=data_args.system_prompt,
            split=data_args.dataset_split,
            config=data_args.dataset_config,
            on_error=data_args.on_error,
            streaming=data_args.streaming,
        )
        source = data_args.preference_data
    else:
        raise ValueError("No pairs to train on: set preference_data (a file, folder or Hub dataset of preference "
                         "pairs) or synthetic_pairs: N (generated colour pairs).")
    train_pairs, eval_pairs = held_out_split(pairs, data_args.eval_split, seed=dpo_args.seed,
                                             shuffle_buffer=data_args.shuffle_buffer)

    ################
    # Model, base scores, DPO, tuned scores, Save (or with --plan true: the plan, no weights loaded)
    ################
    preference_finetune(train_pairs, eval_pairs, model_args, media_args, dpo_args, eval_args, datasets=[source])


if __name__ == "__main__":
    # An error is one line and an exit code (plm_tune.apps.exits), as in plm-tune's commands.
    from plm_tune.apps.exits import run_recipe

    raise SystemExit(run_recipe(main, make_parser))
