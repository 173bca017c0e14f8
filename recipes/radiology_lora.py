"""Finetune PLM with LoRA (or DoRA / QLoRA) to describe radiology images: the model card's
``unsloth/Radiology_mini`` from the Hugging Face Hub, or your own DICOM studies captioned from their tags
or from a table of reports.

The offline demo: a tiny random PLM built on first use in ``.cache/tiny-plm`` and the real DICOM files that
ship with pydicom and pydicom-data (CR, CT, MR, US, NM, ...; the deliberately broken ones are skipped and
counted). `make demo` runs it; on 2 CPU cores and no GPU it takes about 2 minutes (150 steps, then base and finetuned answers):

    accelerate launch recipes/radiology_lora.py --config recipes/configs/radiology_demo.yaml

PLM-1B / PLM-8B on Radiology_mini, written for one CUDA GPU with bf16 (chosen automatically) and Hub access;
not yet run in this repository, whose machines have neither:

    accelerate launch recipes/radiology_lora.py --config recipes/configs/radiology_lora.yaml
    accelerate launch recipes/radiology_lora.py --config recipes/configs/radiology_dora.yaml
    accelerate launch recipes/radiology_lora.py --config recipes/configs/radiology_qlora_8b.yaml

Every value can be overridden on the command line (`--max_steps 100 --learning_rate 1e-4`). Your own DICOM
studies, captioned by a template over DICOM keywords or by a csv / jsonl of reports:

    accelerate launch recipes/radiology_lora.py --config recipes/configs/radiology_lora.yaml \
        --dicom_dir /data/scans --dicom_captions_table /data/reports.csv --on_error skip

Several GPUs: `accelerate launch --num_processes 8 ...`; DeepSpeed: `--config_file recipes/accelerate/zero2.yaml`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Literal

import torch
from trl import SFTConfig, TrlParser

from data_adapters import from_dicom, from_hf_dataset, held_out_split
from plm_tune import build_trainer, load_model, loss_change
from plm_tune.outputs import EvalArguments, save_run
from plm_tune.plan import plan_report
from plm_tune.quiet_log import VERBOSE_ENV
from plm_tune.testing import build_tiny_plm

RADIOGRAPHER_PROMPT = "You are an expert radiographer. Describe accurately what you see in this image."
PYDICOM_TESTDATA = "pydicom-testdata"  # a dicom_dir value: the example files pydicom and pydicom-data install


@dataclass
class ModelArguments:
    model_name_or_path: str = field(default="facebook/Perception-LM-1B", metadata={"help": "Hub id or folder."})
    method: Literal["lora", "dora", "qlora"] = field(default="lora", metadata={"help": "qlora: 4-bit language model."})
    freeze: list[str] = field(default_factory=lambda: ["vision"], metadata={"help": "Parts that do not train."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scale numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input."})
    lora_targets: Literal["language", "language+vision"] = field(
        default="language", metadata={"help": "Where LoRA adapters go; other unfrozen parts train in full."})
    vision_lr: float | None = field(default=None, metadata={"help": "Vision tower LR; None: learning_rate."})
    projector_lr: float | None = field(default=None, metadata={"help": "Projector LR; None: learning_rate."})
    build_tiny_if_missing: bool = field(
        default=False, metadata={"help": "Build a tiny random PLM at model_name_or_path if that folder is missing."})


@dataclass
class DataArguments:
    dataset: str = field(default="unsloth/Radiology_mini", metadata={"help": "Hub name or save_to_disk folder."})
    dataset_split: str = field(default="train", metadata={"help": "Split of `dataset` to read."})
    image_column: str = field(default="image", metadata={"help": "Image column of `dataset`."})
    answer_column: str = field(default="caption", metadata={"help": "Caption column of `dataset`."})
    prompt: str = field(default=RADIOGRAPHER_PROMPT, metadata={"help": "The instruction before each answer."})
    dicom_dir: str | None = field(default=None, metadata={
        "help": f"Folder of .dcm files to use instead of `dataset`; '{PYDICOM_TESTDATA}': pydicom's own."})
    dicom_caption: str = field(default="{Modality} {BodyPartExamined}: {StudyDescription}", metadata={
        "help": "Caption template over DICOM keywords."})
    dicom_captions_table: str | None = field(default=None, metadata={
        "help": "csv / jsonl with file_name (or SOPInstanceUID) and caption; replaces dicom_caption."})
    on_error: Literal["raise", "skip"] = field(default="raise", metadata={"help": "On a bad record: stop or skip."})
    eval_split: float = field(default=0.1, metadata={"help": "Share of samples held out for eval loss; 0: none."})
    eval_stratify: bool = field(default=False, metadata={
        "help": "Hold out eval_split of each distinct answer (class-like answers such as a modality)."})
    max_tiles: int | None = field(default=None, metadata={"help": "Tiles per image; None: the processor's."})
    num_frames: int = field(default=32, metadata={"help": "Frames sampled from a multi-frame DICOM."})
    train_on: Literal["assistant", "all"] = field(default="assistant", metadata={"help": "Tokens in the loss."})
    verbose: bool = field(default=False, metadata={
        "help": "Print every skipped file and the Trainer's full log dicts (same as PLM_TUNE_VERBOSE=1)."})
    plan: bool = field(default=False, metadata={
        "help": "Print the plan (tokens, padding, peak memory from media headers) and exit without training."})


def make_parser() -> TrlParser:
    parser = TrlParser((ModelArguments, DataArguments, SFTConfig, EvalArguments))
    # SFTConfig turns bf16 on unless told otherwise, which transformers refuses on a CPU or an old GPU.
    # Default it to what this machine supports; a value from the YAML or the command line still wins.
    parser.set_defaults(bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return parser


def dicom_folders(dicom_dir: str) -> list[str]:
    """``dicom_dir``, or for ``pydicom-testdata`` the folders of example files pydicom and pydicom-data install
    (pydicom-data is found through the entry point pydicom itself uses, so no download is ever tried)."""
    if dicom_dir != PYDICOM_TESTDATA:
        return [dicom_dir]
    sources = {source.name: source for source in entry_points(group="pydicom.data.external_sources")}
    if "pydicom-data" not in sources:
        raise ImportError(f'--dicom_dir {PYDICOM_TESTDATA} needs pydicom and pydicom-data: '
                          'pip install "plm-tune[dicom]"')
    import pydicom.data

    return [str(Path(pydicom.data.__file__).parent / "test_files"), str(sources["pydicom-data"].load()().data_path)]


def main(model_args: ModelArguments, data_args: DataArguments, training_args: SFTConfig,
         eval_args: EvalArguments) -> None:
    if data_args.verbose:
        os.environ[VERBOSE_ENV] = "1"  # read by the data adapters' skip summaries and the training log
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
    if data_args.dicom_dir:
        samples = from_dicom(
            dicom_folders(data_args.dicom_dir),
            caption=None if data_args.dicom_captions_table else data_args.dicom_caption,
            captions_table=data_args.dicom_captions_table,
            prompt=data_args.prompt,
            on_error=data_args.on_error,
        )
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
        train_set, eval_set = held_out_split(samples, data_args.eval_split, seed=training_args.seed,
                                             stratify=data_args.eval_stratify)

    if data_args.plan:  # `plm-tune plan CONFIG`: counts from media headers and a memory estimate, no weights
        print(plan_report(train_set, path, batch_size=training_args.per_device_train_batch_size,
                          max_length=training_args.max_length, max_tiles=data_args.max_tiles,
                          num_frames=data_args.num_frames, train_on=data_args.train_on, method=model_args.method,
                          freeze=model_args.freeze, lora_r=model_args.lora_r, lora_dropout=model_args.lora_dropout,
                          lora_targets=model_args.lora_targets,
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
        lora_targets=model_args.lora_targets,
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
    # the adapter (and the parts trained in full) plus the processor, how it was trained (plm_tune_training.json),
    # the held-out split, its generated answers and an HTML report; then the Hub if asked.
    outputs = save_run(
        trainer,
        eval_set=eval_set,
        training_info={"method": model_args.method, "freeze": list(model_args.freeze),
                       # A Hub id goes to the card's metadata; "DICOM files in ..." only to its text.
                       "datasets": [f"DICOM files in {data_args.dicom_dir}" if data_args.dicom_dir
                                    else data_args.dataset],
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
