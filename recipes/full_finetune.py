"""Full finetuning of PLM: every weight of the unfrozen parts trains, each part at its own learning rate.
PLM's own supervised finetuning trains in full; the vision tower is usually kept frozen (``freeze: [vision]``),
and it then stays bit-identical in the saved checkpoint.

The offline demo: a tiny random PLM (built on first use in ``.cache/tiny-plm``) answers what colour or shape
a generated image shows. Run on 2 CPU cores (no GPU) in under a minute:

    accelerate launch recipes/full_finetune.py --config recipes/configs/full_demo.yaml

PLM-1B on unsloth/Radiology_mini with the vision tower frozen, written for one CUDA GPU with bf16 (chosen
automatically; float32 weights, gradients and AdamW states take 16 bytes per trained parameter) and Hub
access; not yet run in this repository, which has neither. Larger models: DeepSpeed ZeRO-3 over N GPUs:

    accelerate launch recipes/full_finetune.py --config recipes/configs/full_frozen_vision.yaml
    accelerate launch --config_file recipes/accelerate/zero3.yaml --num_processes 8 \
        recipes/full_finetune.py --config recipes/configs/full_frozen_vision.yaml \
        --model_name_or_path facebook/Perception-LM-8B
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from trl import SFTConfig, TrlParser

from data_adapters import from_hf_dataset, synthetic_shapes
from plm_tune import build_trainer, load_model, loss_change
from plm_tune.outputs import EvalArguments, save_run
from plm_tune.plan import plan_report
from plm_tune.testing import TINY_PRESETS, build_tiny_plm

RADIOGRAPHER_PROMPT = "You are an expert radiographer. Describe accurately what you see in this image."


@dataclass
class ModelArguments:
    model_name_or_path: str = field(default="facebook/Perception-LM-1B", metadata={"help": "Hub id or folder."})
    freeze: list[str] = field(default_factory=lambda: ["vision"], metadata={"help": "Parts that do not train."})
    vision_lr: float | None = field(default=None, metadata={"help": "Vision tower LR; None: learning_rate."})
    projector_lr: float | None = field(default=None, metadata={"help": "Projector LR; None: learning_rate."})
    build_tiny_if_missing: bool = field(
        default=False, metadata={"help": "Build a tiny random PLM at model_name_or_path if that folder is missing."})
    tiny_preset: Literal["test", "learner"] = field(
        default="test", metadata={"help": "Size of that tiny PLM (plm_tune.testing.TINY_PRESETS)."})


@dataclass
class DataArguments:
    dataset: str = field(default="unsloth/Radiology_mini", metadata={"help": "Hub name or save_to_disk folder."})
    dataset_split: str = field(default="train", metadata={"help": "Split of `dataset` to read."})
    image_column: str = field(default="image", metadata={"help": "Image column of `dataset`."})
    answer_column: str = field(default="caption", metadata={"help": "Answer column of `dataset`."})
    prompt: str = field(default=RADIOGRAPHER_PROMPT, metadata={
        "help": "The question: a column name, a {column} template or fixed text."})
    synthetic_shapes: int = field(default=0, metadata={"help": "Instead of `dataset`: this many generated images."})
    on_error: Literal["raise", "skip"] = field(default="raise", metadata={"help": "On a bad record: stop or skip."})
    eval_split: float = field(default=0.1, metadata={"help": "Share of samples held out for eval loss; 0: none."})
    max_tiles: int | None = field(default=None, metadata={"help": "Tiles per image; None: the processor's."})
    vision_input_type: Literal["thumb+tile", "vanilla"] | None = field(default=None, metadata={
        "help": "thumb+tile: a thumbnail plus up to max_tiles tiles; vanilla: one resized image; None: the "
                "processor's."})
    train_on: Literal["assistant", "all"] = field(default="assistant", metadata={"help": "Tokens in the loss."})
    plan: bool = field(default=False, metadata={
        "help": "Print the plan (tokens, padding, peak memory from media headers) and exit without training."})


def make_parser() -> TrlParser:
    parser = TrlParser((ModelArguments, DataArguments, SFTConfig, EvalArguments))
    # SFTConfig turns bf16 on unless told otherwise, which transformers refuses on a CPU or an old GPU.
    # Default it to what this machine supports; a value from the YAML or the command line still wins.
    parser.set_defaults(bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return parser


def main(model_args: ModelArguments, data_args: DataArguments, training_args: SFTConfig,
         eval_args: EvalArguments) -> None:
    ################
    # The model's folder (the offline demos build a tiny PLM there)
    ################
    path = model_args.model_name_or_path
    if model_args.build_tiny_if_missing:
        with training_args.main_process_first(desc="building the tiny PLM"):
            if not Path(path).exists():
                build_tiny_plm(path, **TINY_PRESETS[model_args.tiny_preset])

    ################
    # Data
    ################
    if data_args.synthetic_shapes:
        samples = synthetic_shapes(data_args.synthetic_shapes, seed=training_args.seed)
    else:
        samples = from_hf_dataset(
            data_args.dataset,
            split=data_args.dataset_split,
            image_column=data_args.image_column,
            answer_column=data_args.answer_column,
            prompt=data_args.prompt,
            on_error=data_args.on_error,
        )
    train_set, eval_set = samples, None
    if data_args.eval_split > 0:
        split = samples.train_test_split(test_size=data_args.eval_split, seed=training_args.seed)
        train_set, eval_set = split["train"], split["test"]

    if data_args.plan:  # `plm-tune plan CONFIG`: counts from media headers and a memory estimate, no weights
        print(plan_report(train_set, path, batch_size=training_args.per_device_train_batch_size,
                          max_length=training_args.max_length, max_tiles=data_args.max_tiles,
                          train_on=data_args.train_on, vision_input_type=data_args.vision_input_type,
                          method="full", freeze=model_args.freeze,
                          gradient_checkpointing=training_args.activation_checkpointing))
        return

    ################
    # Model
    ################
    # float32 weights: with bf16=True the Trainer autocasts the forward pass, while the optimizer updates
    # float32 weights (a 1e-5 step on a bf16 weight mostly rounds away). One checkpointing switch, SFTConfig's
    # (TRL defaults it on): load_model also reaches the timm vision blocks, so the Trainer's is turned off.
    model, processor = load_model(
        path,
        method="full",
        freeze=model_args.freeze,
        dtype=torch.float32,
        gradient_checkpointing=training_args.activation_checkpointing,
        seed=training_args.seed,
    )
    training_args.activation_checkpointing = training_args.gradient_checkpointing = False


    ################
    # Training
    ################
    # save_run pushes at the end, with plm-tune's model card; the Trainer's own push would go first without it.
    push_to_hub, training_args.push_to_hub = training_args.push_to_hub, False
    trainer = build_trainer(
        model,
        processor,
        train_set,
        eval_set,
        training_args,
        train_on=data_args.train_on,
        max_tiles=data_args.max_tiles,
        vision_input_type=data_args.vision_input_type,
        vision_lr=model_args.vision_lr,
        projector_lr=model_args.projector_lr,
        generation_eval_steps=eval_args.generation_eval_steps,
        generation_eval_samples=eval_args.generation_eval_samples,
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    if eval_set is not None:
        trainer.evaluate()

    ################
    # Save
    ################
    # the whole model (safetensors) plus the processor, how it was trained (plm_tune_training.json),
    # the held-out split, its generated answers and an HTML report; then the Hub if asked.
    outputs = save_run(
        trainer,
        eval_set=eval_set,
        training_info={"method": "full", "freeze": list(model_args.freeze), "max_tiles": data_args.max_tiles},
        generate_eval=eval_args.generate_eval,
        compare_base=eval_args.compare_base,
        max_new_tokens=eval_args.eval_max_new_tokens,
        push_to_hub=push_to_hub,
        hub_model_id=training_args.hub_model_id,
        hub_private_repo=bool(training_args.hub_private_repo),
    )
    if trainer.is_world_process_zero():
        print(f"Saved the finetuned model to {training_args.output_dir} "
              f"(load it with AutoModelForImageTextToText.from_pretrained('{training_args.output_dir}')).")
        print(f"{len(train_set)} train / {len(eval_set) if eval_set is not None else 0} eval samples: "
              + loss_change(trainer.state.log_history))
        if outputs.summary():
            print(outputs.summary())

if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
