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

# plm_tune before trl: its log filters must be in place when peft imports bitsandbytes, whose import prints
# a notice about a Hub-fetched `kernels` package on some CPUs.
import plm_tune  # noqa: F401

# isort: split
from dataclasses import dataclass, field
from pathlib import Path

from trl import SFTConfig

from data_adapters import from_plm_jsonl, from_video_folder, held_out_split, synthetic_videos
from plm_tune.apps.config import PLMParser
from plm_tune.apps.finetune import build_tiny_if_asked, finetune, recipe_parser
from plm_tune.arguments import CorpusArguments, EvalArguments, MediaArguments, ModelArguments


@dataclass
class DataArguments(CorpusArguments):  # + on_error, eval_split, streaming, shuffle_buffer
    video_folder: str | None = field(default=None, metadata={"help": "Folder of videos + annotations table."})
    annotations: str = field(default="annotations.csv", metadata={"help": "The table's name in video_folder."})
    plm_jsonl: str | None = field(default=None, metadata={"help": "A perception_models jsonl file instead."})
    media_root: str | None = field(default=None, metadata={"help": "Folder plm_jsonl paths are relative to."})
    synthetic_videos: int = field(default=0, metadata={"help": "Instead: this many generated moving-shape clips."})
    prompt: str | None = field(default=None, metadata={
        "help": "video_folder's question: a column, a {column} template or fixed text; None: its question "
                "column, else 'Describe this video.'."})


def make_parser() -> PLMParser:
    """The run settings (plm_tune.arguments), this recipe's corpus, SFTConfig: YAML + command line."""
    return recipe_parser(DataArguments)


def load_samples(data_args: DataArguments, seed: int, num_frames: int):
    """The one data source given: video_folder, plm_jsonl or synthetic_videos."""
    given = [name for name in ("video_folder", "plm_jsonl", "synthetic_videos") if getattr(data_args, name)]
    if len(given) != 1:
        raise ValueError(f"Give exactly one data source: --video_folder DIR, --plm_jsonl FILE --media_root DIR, or "
                         f"--synthetic_videos N; got {given or 'none'}.")
    if data_args.video_folder:
        return from_video_folder(data_args.video_folder, annotations=data_args.annotations, prompt=data_args.prompt,
                                 on_error=data_args.on_error, streaming=data_args.streaming)
    if data_args.plm_jsonl:
        media_root = data_args.media_root or str(Path(data_args.plm_jsonl).parent)
        return from_plm_jsonl(data_args.plm_jsonl, media_root=media_root, on_error=data_args.on_error,
                              streaming=data_args.streaming)
    return synthetic_videos(data_args.synthetic_videos, seed=seed, num_frames=num_frames, streaming=data_args.streaming)


def main(model_args: ModelArguments, media_args: MediaArguments, data_args: DataArguments,
         training_args: SFTConfig, eval_args: EvalArguments) -> None:
    build_tiny_if_asked(model_args, training_args)  # the offline demos build a tiny PLM first

    ################
    # Data
    ################
    samples = load_samples(data_args, training_args.seed, media_args.num_frames)
    train_set, eval_set = held_out_split(samples, data_args.eval_split, seed=training_args.seed,
                                         shuffle_buffer=data_args.shuffle_buffer)

    ################
    # Model, Training, Save (or with --plan true: the plan, no weights loaded)
    ################
    finetune(train_set, eval_set, model_args, media_args, training_args, eval_args)


if __name__ == "__main__":
    # An error is one line and an exit code (plm_tune.apps.exits), as in plm-tune's commands.
    from plm_tune.apps.exits import run_recipe

    raise SystemExit(run_recipe(main, make_parser))
