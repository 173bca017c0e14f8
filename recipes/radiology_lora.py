"""Finetune PLM with LoRA (or DoRA / QLoRA) to describe radiology images: the model card's
``unsloth/Radiology_mini`` from the Hugging Face Hub, or your own DICOM studies captioned from their tags
or from a table of reports.

The offline demo: a tiny random PLM built on first use in ``.cache/tiny-plm`` and the real DICOM files that
ship with pydicom and pydicom-data (CR, CT, MR, US, NM, ...; the deliberately broken ones are skipped and
counted), asked to name each file's modality. `make demo` runs it; on 2 CPU cores and no GPU it takes about
2 minutes (150 steps, then the base and finetuned answers):

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

# plm_tune before trl: its log filters must be in place when peft imports bitsandbytes, whose import prints
# a notice about a Hub-fetched `kernels` package on some CPUs.
import plm_tune  # noqa: F401

# isort: split
import os
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path

from trl import SFTConfig

from data_adapters import from_dicom, from_hf_dataset, held_out_split
from plm_tune.apps.config import PLMParser
from plm_tune.apps.finetune import build_tiny_if_asked, finetune, recipe_parser
from plm_tune.arguments import CorpusArguments, EvalArguments, MediaArguments, ModelArguments
from plm_tune.verbosity import VERBOSE_ENV

RADIOGRAPHER_PROMPT = "You are an expert radiographer. Describe accurately what you see in this image."
PYDICOM_TESTDATA = "pydicom-testdata"  # a dicom_dir value: the example files pydicom and pydicom-data install


@dataclass
class DataArguments(CorpusArguments):  # + on_error, eval_split, streaming, shuffle_buffer
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
    stratify_eval: bool = field(default=False, metadata={
        "help": "Hold out eval_split of each distinct answer (class-like answers such as a modality)."})
    verbose: bool = field(default=False, metadata={
        "help": "Print every skipped file and the Trainer's full log dicts (same as PLM_TUNE_VERBOSE=1)."})


def make_parser() -> PLMParser:
    """The run settings (plm_tune.arguments), this recipe's corpus, SFTConfig: YAML + command line."""
    return recipe_parser(DataArguments)


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


def main(model_args: ModelArguments, media_args: MediaArguments, data_args: DataArguments,
         training_args: SFTConfig, eval_args: EvalArguments) -> None:
    if data_args.verbose:
        os.environ[VERBOSE_ENV] = "1"  # read by the data adapters' skip summaries and the training log
    build_tiny_if_asked(model_args, training_args)  # the offline demos build a tiny PLM first

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
            streaming=data_args.streaming,
        )
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
                                         stratify=data_args.stratify_eval, shuffle_buffer=data_args.shuffle_buffer)

    ################
    # Model, Training, Save (or with --plan true: the plan, no weights loaded)
    ################
    source = f"DICOM files in {data_args.dicom_dir}" if data_args.dicom_dir else data_args.dataset
    finetune(train_set, eval_set, model_args, media_args, training_args, eval_args, datasets=[source])


if __name__ == "__main__":
    # An error is one line and an exit code (plm_tune.apps.exits), as in plm-tune's commands.
    from plm_tune.apps.exits import run_recipe

    raise SystemExit(run_recipe(main, make_parser))
