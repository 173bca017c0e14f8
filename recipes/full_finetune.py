"""Full finetuning of PLM: every weight of the unfrozen parts trains, each part at its own learning rate.
PLM's own supervised finetuning trains in full; the vision tower is usually kept frozen (``freeze: [vision]``),
and it then stays bit-identical in the saved checkpoint.

The offline demo: a tiny random PLM (built on first use in ``.cache/tiny-plm``) answers what colour or shape
a generated image shows. Run on 2 CPU cores (no GPU) in under a minute:

    accelerate launch recipes/full_finetune.py --config recipes/configs/full_demo.yaml

PLM-1B on unsloth/Radiology_mini with the vision tower frozen, written for one CUDA GPU with bf16 (chosen
automatically; trained weights, gradients and AdamW states in float32 take 16 bytes per trained parameter, the
frozen tower stays bf16) and Hub
access; not yet run in this repository, which has neither. Larger models: DeepSpeed ZeRO-3 over N GPUs:

    accelerate launch recipes/full_finetune.py --config recipes/configs/full_frozen_vision.yaml
    accelerate launch --config_file recipes/accelerate/zero3.yaml --num_processes 8 \
        recipes/full_finetune.py --config recipes/configs/full_frozen_vision.yaml \
        --model_name_or_path facebook/Perception-LM-8B
"""

from __future__ import annotations

# plm_tune before trl: its log filters must be in place when peft imports bitsandbytes, whose import prints
# a notice about a Hub-fetched `kernels` package on some CPUs.
import plm_tune  # noqa: F401

# isort: split
from dataclasses import dataclass, field

from trl import SFTConfig

from data_adapters import from_hf_dataset, held_out_split, synthetic_shapes
from plm_tune.apps.config import PLMParser
from plm_tune.apps.finetune import build_tiny_if_asked, finetune, recipe_parser
from plm_tune.arguments import CorpusArguments, EvalArguments, MediaArguments, ModelArguments

RADIOGRAPHER_PROMPT = "You are an expert radiographer. Describe accurately what you see in this image."


@dataclass
class DataArguments(CorpusArguments):  # + on_error, eval_split, streaming, shuffle_buffer
    dataset: str = field(default="unsloth/Radiology_mini", metadata={"help": "Hub name or save_to_disk folder."})
    dataset_split: str = field(default="train", metadata={"help": "Split of `dataset` to read."})
    image_column: str = field(default="image", metadata={"help": "Image column of `dataset`."})
    answer_column: str = field(default="caption", metadata={"help": "Answer column of `dataset`."})
    prompt: str = field(default=RADIOGRAPHER_PROMPT, metadata={
        "help": "The question: a column name, a {column} template or fixed text."})
    synthetic_shapes: int = field(default=0, metadata={"help": "Instead of `dataset`: this many generated images."})


def make_parser() -> PLMParser:
    """The run settings (plm_tune.arguments; method defaults to full here), this recipe's corpus, SFTConfig."""
    return recipe_parser(DataArguments, method="full")


def main(model_args: ModelArguments, media_args: MediaArguments, data_args: DataArguments,
         training_args: SFTConfig, eval_args: EvalArguments) -> None:
    if model_args.method != "full":
        raise ValueError(f"full_finetune.py trains every weight of the unfrozen parts (method: full); got method "
                         f"{model_args.method!r}: use recipes/radiology_lora.py or video_lora.py for adapters.")
    build_tiny_if_asked(model_args, training_args)  # the offline demos build a tiny PLM first

    ################
    # Data
    ################
    if data_args.synthetic_shapes:
        samples = synthetic_shapes(data_args.synthetic_shapes, seed=training_args.seed, streaming=data_args.streaming)
    else:
        samples = from_hf_dataset(
            data_args.dataset,
            split=data_args.dataset_split,
            image_column=data_args.image_column,
            answer_column=data_args.answer_column,
            prompt=data_args.prompt,
            on_error=data_args.on_error,
            streaming=data_args.streaming,
        )
    train_set, eval_set = held_out_split(samples, data_args.eval_split, seed=training_args.seed,
                                         shuffle_buffer=data_args.shuffle_buffer)

    ################
    # Model, Training, Save (or with --plan true: the plan, no weights loaded)
    ################
    # The trained parts are float32 (load_model: set_training_dtypes; a 1e-5 step on a bf16 weight mostly rounds
    # away) and the frozen ones stay in the load dtype, bf16 on a GPU; with bf16=True the Trainer autocasts.
    finetune(train_set, eval_set, model_args, media_args, training_args, eval_args)


if __name__ == "__main__":
    # An error is one line and an exit code (plm_tune.apps.exits), as in plm-tune's commands.
    from plm_tune.apps.exits import run_recipe

    raise SystemExit(run_recipe(main, make_parser))
