"""Finetune PLM on any corpus: a Hugging Face dataset (TRL's conversational format or caption columns) or
anything a data adapter reads (a ``data:`` section: DICOM folders, image folders, LLaVA json, PLM jsonl, video
folders, webdataset shards). The recipe ``plm-tune train`` runs for a config that names no other: a ``trl sft``
/ ``sft_vlm.py`` config (``dataset_name``, ``use_peft``, ``lora_target_modules``, ``dtype``...) reads as it is.

    plm-tune train my_config.yaml
    accelerate launch recipes/sft.py --config my_config.yaml

A Hub or local dataset in TRL's format (a ``messages`` column of conversations and an ``images`` column):

    dataset_name: HuggingFaceH4/llava-instruct-mix-vsft     # or dataset: (plm-tune's name), or a local folder
    use_peft: true
    lora_target_modules: [q_proj, k_proj, v_proj, o_proj]

A data adapter (the section ``plm-tune plan`` and ``plm-tune data check`` read):

    data:
      adapter: image_folder
      root: /data/photos

Every value can be overridden on the command line (``--max_steps 100``); see ``plm-tune recipes`` for the others.
"""

from __future__ import annotations

# plm_tune before trl: its log filters must be in place when peft imports bitsandbytes, whose import prints
# a notice about a Hub-fetched `kernels` package on some CPUs.
import plm_tune  # noqa: F401

# isort: split
from dataclasses import dataclass, field
from typing import Any

from trl import SFTConfig

from data_adapters import from_hf_dataset, held_out_split
from data_adapters.registry import read_data
from plm_tune.apps.config import PLMParser
from plm_tune.apps.finetune import build_tiny_if_asked, finetune, recipe_parser
from plm_tune.arguments import CorpusArguments, EvalArguments, MediaArguments, ModelArguments


@dataclass
class DataArguments(CorpusArguments):  # + on_error, eval_split, streaming, shuffle_buffer
    data: dict[str, Any] | str | None = field(default=None, metadata={
        "help": "A data adapter and its arguments: {adapter: NAME, ...} (plm-tune data check reads the same)."})
    dataset: str | None = field(default=None, metadata={
        "help": "Instead of data: a Hub dataset or local folder (TRL's dataset_name)."})
    dataset_config: str | None = field(default=None, metadata={"help": "Configuration name of `dataset`."})
    dataset_split: str = field(default="train", metadata={"help": "Split of `dataset` (TRL's dataset_train_split)."})
    messages_column: str | None = field(default="auto", metadata={
        "help": "Column of conversations (TRL's messages); auto: 'messages' if present, else prompt + answer_column."})
    image_column: str | None = field(default="image", metadata={"help": "Image column (TRL's images list too)."})
    answer_column: str = field(default="caption", metadata={"help": "Answer column, without messages."})
    prompt: str = field(default="Describe this image.", metadata={
        "help": "Without messages: the question (a column, a {column} template or fixed text)."})
    stratify_eval: bool = field(default=False, metadata={
        "help": "Hold out eval_split of each distinct answer (class-like answers)."})


def make_parser() -> PLMParser:
    """The run settings (plm_tune.arguments), this recipe's corpus, SFTConfig: YAML + command line."""
    return recipe_parser(DataArguments)


def load_samples(data_args: DataArguments) -> tuple[Any, str]:
    """The samples and a name for where they came from: the data: section, or the dataset."""
    if (data_args.data is None) == (data_args.dataset is None):
        raise ValueError("Give the data one way: a data: section ({adapter: NAME, ...}) or dataset: NAME_OR_FOLDER "
                         "(TRL: dataset_name); got " + ("both." if data_args.data else "neither."))
    if data_args.data is not None:
        section = data_args.data
        if isinstance(section, str):  # --data '{adapter: image_folder, root: photos}' on the command line
            import yaml

            section = yaml.safe_load(section)
        if not isinstance(section, dict):
            raise ValueError(f"data: must be a mapping {{adapter: NAME, ...}}; got {section!r}.")
        samples = read_data(section, on_error=data_args.on_error, streaming=data_args.streaming)
        return samples, f"{section.get('adapter')} data"
    samples = from_hf_dataset(
        data_args.dataset,
        config=data_args.dataset_config,
        split=data_args.dataset_split,
        messages_column=data_args.messages_column,
        image_column=data_args.image_column,
        answer_column=data_args.answer_column,
        prompt=data_args.prompt,
        on_error=data_args.on_error,
        streaming=data_args.streaming,
    )
    return samples, data_args.dataset


def main(model_args: ModelArguments, media_args: MediaArguments, data_args: DataArguments,
         training_args: SFTConfig, eval_args: EvalArguments) -> None:
    build_tiny_if_asked(model_args, training_args)  # the offline demos build a tiny PLM first

    ################
    # Data
    ################
    samples, source = load_samples(data_args)
    train_set, eval_set = held_out_split(samples, data_args.eval_split, seed=training_args.seed,
                                         stratify=data_args.stratify_eval, shuffle_buffer=data_args.shuffle_buffer)

    ################
    # Model, Training, Save (or with --plan true: the plan, no weights loaded)
    ################
    finetune(train_set, eval_set, model_args, media_args, training_args, eval_args, datasets=[source])


if __name__ == "__main__":
    # An error is one line and an exit code (plm_tune.apps.exits), as in plm-tune's commands.
    from plm_tune.apps.exits import run_recipe

    raise SystemExit(run_recipe(main, make_parser))
