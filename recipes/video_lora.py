"""Finetune PLM with LoRA (or DoRA / QLoRA) on video captioning or video question answering, the vision
tower frozen: clips from a folder with an annotations table, or perception_models' own jsonl format.

The offline demo: a tiny random PLM (built on first use in ``.cache/tiny-plm``) learns which way a generated
shape moves across 4 frames. Run on 2 CPU cores (no GPU) in under a minute:

    accelerate launch recipes/video_lora.py --config recipes/configs/video_demo.yaml

Your videos on PLM-1B (one CUDA GPU, bf16 chosen automatically; not yet run in this repository, which has
neither a GPU nor Hub access):

    accelerate launch recipes/video_lora.py --config recipes/configs/video_lora.yaml --video_folder /data/clips

``--video_folder DIR`` reads ``DIR/annotations.csv`` (``file``, optional ``start`` / ``end`` in seconds, and
``caption`` or ``question`` + ``answer``; see ``data_adapters.from_video_folder``); ``--plm_jsonl FILE
--media_root DIR`` reads PLM's training jsonl (``data_adapters.from_plm_jsonl``). A PLM-1B frame is 256
tokens: 16 frames are about 4.1k tokens, so set ``max_length`` to match ``num_frames``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from trl import SFTConfig, TrlParser

from data_adapters import from_plm_jsonl, from_video_folder, synthetic_videos
from plm_tune import build_trainer, load_model, loss_change
from plm_tune.outputs import EvalArguments, save_run
from plm_tune.plan import plan_report
from plm_tune.testing import build_tiny_plm


@dataclass
class ModelArguments:
    model_name_or_path: str = field(default="facebook/Perception-LM-1B", metadata={"help": "Hub id or folder."})
    method: Literal["lora", "dora", "qlora"] = field(default="lora", metadata={"help": "qlora: 4-bit language model."})
    freeze: list[str] = field(default_factory=lambda: ["vision"], metadata={"help": "Parts that do not train."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scale numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input."})
    projector_lr: float | None = field(default=None, metadata={"help": "Projector LR; None: learning_rate."})
    build_tiny_if_missing: bool = field(
        default=False, metadata={"help": "Build a tiny random PLM at model_name_or_path if that folder is missing."})


@dataclass
class DataArguments:
    video_folder: str | None = field(default=None, metadata={"help": "Folder of videos + annotations table."})
    annotations: str = field(default="annotations.csv", metadata={"help": "The table's name in video_folder."})
    plm_jsonl: str | None = field(default=None, metadata={"help": "A perception_models jsonl file instead."})
    media_root: str | None = field(default=None, metadata={"help": "Folder plm_jsonl paths are relative to."})
    synthetic_videos: int = field(default=0, metadata={"help": "Instead: this many generated moving-shape clips."})
    prompt: str | None = field(default=None, metadata={
        "help": "video_folder's question: a column, a {column} template or fixed text; None: its question "
                "column, else 'Describe this video.'."})
    on_error: Literal["raise", "skip"] = field(default="raise", metadata={"help": "On a bad record: stop or skip."})
    eval_split: float = field(default=0.1, metadata={"help": "Share of samples held out for eval loss; 0: none."})
    num_frames: int = field(default=16, metadata={"help": "Frames sampled per video (PLM samples up to 32)."})
    max_tiles: int | None = field(default=None, metadata={"help": "Tiles per image of a plm_jsonl image line."})
    train_on: Literal["assistant", "all"] = field(default="assistant", metadata={"help": "Tokens in the loss."})
    plan: bool = field(default=False, metadata={
        "help": "Print the plan (tokens, padding, peak memory from media headers) and exit without training."})


def make_parser() -> TrlParser:
    parser = TrlParser((ModelArguments, DataArguments, SFTConfig, EvalArguments))
    # SFTConfig turns bf16 on unless told otherwise, which transformers refuses on a CPU or an old GPU.
    # Default it to what this machine supports; a value from the YAML or the command line still wins.
    parser.set_defaults(bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return parser


def load_samples(data_args: DataArguments, seed: int):
    """The one data source given: video_folder, plm_jsonl or synthetic_videos."""
    given = [name for name in ("video_folder", "plm_jsonl", "synthetic_videos") if getattr(data_args, name)]
    if len(given) != 1:
        raise ValueError(f"Give exactly one data source: --video_folder DIR, --plm_jsonl FILE --media_root DIR, or "
                         f"--synthetic_videos N; got {given or 'none'}.")
    if data_args.video_folder:
        return from_video_folder(data_args.video_folder, annotations=data_args.annotations, prompt=data_args.prompt,
                                 on_error=data_args.on_error)
    if data_args.plm_jsonl:
        media_root = data_args.media_root or str(Path(data_args.plm_jsonl).parent)
        return from_plm_jsonl(data_args.plm_jsonl, media_root=media_root, on_error=data_args.on_error)
    return synthetic_videos(data_args.synthetic_videos, seed=seed, num_frames=data_args.num_frames)


def main(model_args: ModelArguments, data_args: DataArguments, training_args: SFTConfig,
         eval_args: EvalArguments) -> None:
    ################
    # The model's folder (the offline demos build a tiny PLM there)
    ################
    path = model_args.model_name_or_path
    if model_args.build_tiny_if_missing:
        with training_args.main_process_first(desc="building the tiny PLM"):
            if not Path(path).exists():
                build_tiny_plm(path)

    ################
    # Data
    ################
    samples = load_samples(data_args, training_args.seed)
    train_set, eval_set = samples, None
    if data_args.eval_split > 0:
        split = samples.train_test_split(test_size=data_args.eval_split, seed=training_args.seed)
        train_set, eval_set = split["train"], split["test"]

    if data_args.plan:  # `plm-tune plan CONFIG`: counts from media headers and a memory estimate, no weights
        print(plan_report(train_set, path, batch_size=training_args.per_device_train_batch_size,
                          max_length=training_args.max_length, max_tiles=data_args.max_tiles,
                          num_frames=data_args.num_frames, train_on=data_args.train_on, method=model_args.method,
                          freeze=model_args.freeze, lora_r=model_args.lora_r, lora_dropout=model_args.lora_dropout,
                          gradient_checkpointing=training_args.activation_checkpointing))
        return

    ################
    # Model
    ################
    # One checkpointing switch, SFTConfig's (TRL defaults it on): load_model also reaches the timm vision
    # blocks, which the Trainer's own would miss, so the Trainer's is turned off instead of applied twice.
    model, processor = load_model(
        path,
        method=model_args.method,
        freeze=model_args.freeze,
        lora_r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
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
        num_frames=data_args.num_frames,
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
    # the adapter (and the parts trained in full) plus the processor, how it was trained (plm_tune_training.json),
    # the held-out split, its generated answers and an HTML report; then the Hub if asked.
    outputs = save_run(
        trainer,
        eval_set=eval_set,
        training_info={"method": model_args.method, "freeze": list(model_args.freeze),
                       "max_tiles": data_args.max_tiles, "num_frames": data_args.num_frames},
        generate_eval=eval_args.generate_eval,
        compare_base=eval_args.compare_base,
        max_new_tokens=eval_args.eval_max_new_tokens,
        push_to_hub=push_to_hub,
        hub_model_id=training_args.hub_model_id,
        hub_private_repo=bool(training_args.hub_private_repo),
    )
    if trainer.is_world_process_zero():
        print(f"Saved the {model_args.method} adapter to {training_args.output_dir} "
              f"(load it with peft.PeftModel.from_pretrained(base_model, '{training_args.output_dir}')).")
        print(f"{len(train_set)} train / {len(eval_set) if eval_set is not None else 0} eval samples: "
              + loss_change(trainer.state.log_history))
        if outputs.summary():
            print(outputs.summary())

if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
