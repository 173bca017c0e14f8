"""The ``plm-tune`` command line. Each subcommand is a thin shell over a library function.

This module is the application layer (like the recipes): it is the one place in ``plm_tune`` allowed to
reach into ``data_adapters``, lazily, through the data reader of the ``data``, ``plan`` and ``eval``
subcommands. The after-training commands (``generate``, ``eval``, ``report``, ``merge``, ``push``) live in
``plm_tune.cli_run``, which gets that data reader from here.

``--adapter`` means a trained peft adapter folder in ``generate`` / ``eval`` / ``merge`` / ``push``; the data
commands call the data reader ``--data-adapter`` (``--adapter`` still works there).
"""

from __future__ import annotations

import argparse
import sys

from plm_tune.cli_run import add_after_training_commands

DEFAULT_MODEL = "facebook/Perception-LM-1B"


def _tiny_model(args: argparse.Namespace) -> int:
    if not args.size and (args.text_layers or args.vision_layers):
        raise SystemExit("--text-layers / --vision-layers go with --size (the tiny model's depth is fixed); "
                         "add --size 1B.")
    if args.size:  # the released architecture and real tokenizer at random init (the real-tokenizer extra)
        import torch

        from plm_tune.testing_real import build_random_plm

        # bfloat16 on disk, as the released checkpoints: half the bytes to write and read.
        path = build_random_plm(args.path, args.size, seed=args.seed, text_layers=args.text_layers,
                                vision_layers=args.vision_layers, dtype=torch.bfloat16)
        print(f"Wrote a random-init PLM-{args.size} (real tokenizer, random weights) to {path}")
    else:
        from plm_tune.testing import build_tiny_plm

        path = build_tiny_plm(args.path, seed=args.seed)
        print(f"Wrote a tiny random-init PLM to {path}")
    print(f"Load it with AutoModelForImageTextToText.from_pretrained('{path}') and AutoProcessor.from_pretrained('{path}').")
    return 0


# Adapter names accepted by `plm-tune data ... --adapter NAME`, as "module:function" in data_adapters.
ADAPTERS = {
    "hf": "data_adapters.hf:from_hf_dataset",
    "image_folder": "data_adapters.image_folder:from_image_folder",
    "llava": "data_adapters.llava:from_llava_json",
    "plm_jsonl": "data_adapters.plm_jsonl:from_plm_jsonl",
    "video_folder": "data_adapters.video_folder:from_video_folder",
    "dicom": "data_adapters.dicom:from_dicom",
    "webdataset": "data_adapters.webdataset:from_webdataset",
    "synthetic_shapes": "data_adapters.synthetic:synthetic_shapes",
}


def _parse_value(text: str):
    """An ``--arg`` value: YAML (numbers, booleans, lists), else the text as it is.

    Text that is not valid YAML, or that YAML would read as a mapping other than a ``{key: value}`` one
    (``{Modality}``, a caption template; ``Question: what?``, a prompt), is kept as the string typed.
    """
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, dict) and (not text.lstrip().startswith("{") or None in value.values()):
        return text
    return value


def _load_data_spec(args: argparse.Namespace) -> tuple[str, dict, dict]:
    """(adapter name, adapter kwargs, collator settings) from a YAML config and/or command-line flags."""
    spec: dict = {}
    if args.config:
        import yaml

        with open(args.config) as f:
            config = yaml.safe_load(f) or {}
        spec = dict(config.get("data") or {})
        for key in ("model_name_or_path", "max_length", "max_tiles", "num_frames", "train_on", "vision_input_type"):
            if key in config and getattr(args, key, None) is None:
                setattr(args, key, config[key])
    adapter = args.data_adapter or spec.pop("adapter", None)
    spec.pop("adapter", None)
    for item in args.arg or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--arg expects KEY=VALUE, got {item!r}.")
        spec[key] = _parse_value(value)
    if adapter not in ADAPTERS:
        raise SystemExit(f"Unknown or missing data adapter {adapter!r}: pass --data-adapter with one of {', '.join(ADAPTERS)} "
                         "(or a config whose data: section has adapter: NAME).")
    collator_settings = {k: getattr(args, k) for k in ("max_length", "max_tiles", "num_frames", "train_on",
                                                        "vision_input_type") if getattr(args, k, None) is not None}
    return adapter, spec, collator_settings


def _dataset_from_args(args: argparse.Namespace):
    """(dataset, collator settings) from the data adapter named by the config / flags."""
    import importlib

    adapter, kwargs, settings = _load_data_spec(args)
    module_name, function_name = ADAPTERS[adapter].split(":")
    build = getattr(importlib.import_module(module_name), function_name)
    if getattr(args, "command_data", None) == "check":
        kwargs.setdefault("on_error", "skip")  # walk everything; problems are tabulated, not fatal
    return build(**kwargs), settings


def _data_setup(args: argparse.Namespace):
    from transformers import AutoProcessor

    from plm_tune import PLMCollator

    dataset, settings = _dataset_from_args(args)
    processor = AutoProcessor.from_pretrained(args.model_name_or_path or DEFAULT_MODEL)
    return dataset, PLMCollator(processor, **settings)


def _data_inspect(args: argparse.Namespace) -> int:
    from plm_tune.preflight import inspect_samples

    dataset, collator = _data_setup(args)
    inspect_samples(dataset, collator, n=args.n)
    return 0


def _data_check(args: argparse.Namespace) -> int:
    from plm_tune.preflight import check_dataset

    dataset, collator = _data_setup(args)
    result = check_dataset(dataset, collator, progress=not args.no_progress)
    print(result.report())
    return 0 if result.ok else 1


def _add_data_flags(parser: argparse.ArgumentParser, *, adapter_flags: tuple[str, ...] = ("--data-adapter",)) -> None:
    parser.add_argument("config", nargs="?", help="a YAML config with a data: section (adapter: NAME plus its args)")
    parser.add_argument(*adapter_flags, dest="data_adapter", choices=sorted(ADAPTERS),
                        help="which data adapter reads the data")
    parser.add_argument("--arg", action="append", metavar="KEY=VALUE",
                        help="an adapter argument (repeatable), e.g. --arg root=./scans --arg prompt='Describe.'")
    parser.add_argument("--model-name-or-path", dest="model_name_or_path",
                        help=f"model whose processor formats the data (default {DEFAULT_MODEL})")
    parser.add_argument("--max-length", dest="max_length", type=int)
    parser.add_argument("--max-tiles", dest="max_tiles", type=int)
    parser.add_argument("--num-frames", dest="num_frames", type=int)
    parser.add_argument("--train-on", dest="train_on", choices=["assistant", "all"])
    parser.add_argument("--vision-input-type", dest="vision_input_type", choices=["thumb+tile", "vanilla"])


# ------------------------------------------------------------------ plan: tokens, padding and memory before training
# A recipe config names its script on its first line: "# accelerate launch recipes/NAME.py --config ...".
RECIPE_COMMAND = r"#\s*accelerate launch\s+(\S+\.py)"


def _recipe_of(config: str) -> str | None:
    """The recipe script a recipe config names on its first line (None for a config with a data: section)."""
    import re
    from pathlib import Path

    with open(config) as f:
        match = re.match(RECIPE_COMMAND, f.readline())
    if not match:
        return None
    script = Path(match.group(1))
    for candidate in (script, Path(config).resolve().parents[2] / script):  # from here, or from the repo root
        if candidate.is_file():
            return str(candidate)
    raise SystemExit(f"{config} is a recipe config for {script}, which was found neither here nor next to "
                     "recipes/configs/; run plm-tune plan from the repository root.")


def _plan(args: argparse.Namespace) -> int:
    import subprocess

    recipe = _recipe_of(args.config) if args.config else None
    if recipe is not None:
        # The recipe builds its own dataset from its DataArguments; its --plan prints this report and exits.
        flags = {"model_name_or_path": args.model_name_or_path, "max_length": args.max_length,
                 "max_tiles": args.max_tiles, "num_frames": args.num_frames,
                 "per_device_train_batch_size": args.batch_size, "method": args.method}
        command = [sys.executable, recipe, "--config", args.config, "--plan", "true"]
        for key, value in flags.items():
            if value is not None:
                command += [f"--{key}", str(value)]
        if args.gradient_checkpointing is not None:
            command += ["--activation_checkpointing", str(args.gradient_checkpointing).lower()]
        return subprocess.run(command).returncode
    import yaml

    from plm_tune.plan import plan_report

    config = {}
    if args.config:
        with open(args.config) as f:
            config = yaml.safe_load(f) or {}
    dataset, settings = _dataset_from_args(args)
    checkpointing = args.gradient_checkpointing
    if checkpointing is None:
        checkpointing = bool(config.get("gradient_checkpointing", config.get("activation_checkpointing", False)))
    print(plan_report(
        dataset, args.model_name_or_path or DEFAULT_MODEL,
        batch_size=args.batch_size or config.get("per_device_train_batch_size", 8),
        method=args.method or config.get("method", "lora"), freeze=config.get("freeze", ["vision"]),
        lora_r=config.get("lora_r", 16), lora_dropout=config.get("lora_dropout", 0.0),
        lora_targets=config.get("lora_targets", "language"), gradient_checkpointing=checkpointing,
        progress=not args.no_progress, **settings,
    ))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="plm-tune", description="Finetune Perception Language Models (PLM).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    tiny = sub.add_parser("tiny-model", help="write a tiny random-init PLM (offline tests and demos)")
    tiny.add_argument("path", help="output folder")
    tiny.add_argument("--seed", type=int, default=0, help="random seed (same seed, same weights)")
    tiny.add_argument("--size", choices=("1B", "3B", "8B"),
                      help="instead of the tiny model: PLM-SIZE's released architecture and real tokenizer")
    tiny.add_argument("--text-layers", dest="text_layers", type=int, help="with --size: fewer decoder layers")
    tiny.add_argument("--vision-layers", dest="vision_layers", type=int, help="with --size: fewer vision blocks")
    tiny.set_defaults(func=_tiny_model)

    data = sub.add_parser("data", help="look at and check a dataset before training")
    data_sub = data.add_subparsers(dest="command_data", required=True, metavar="ACTION")
    inspect = data_sub.add_parser("inspect", help="show samples as the model sees them, trained tokens marked")
    _add_data_flags(inspect, adapter_flags=("--data-adapter", "--adapter"))
    inspect.add_argument("-n", type=int, default=5, help="how many samples to show")
    inspect.set_defaults(func=_data_inspect)
    check = data_sub.add_parser("check", help="decode everything; table of problems; exit 1 if any")
    _add_data_flags(check, adapter_flags=("--data-adapter", "--adapter"))
    check.add_argument("--no-progress", action="store_true", help="no progress bar")
    check.set_defaults(func=_data_check)

    plan = sub.add_parser("plan", help="token counts, padding waste and peak memory from media headers, "
                          "before training (a config with a data: section, or a recipe config)")
    _add_data_flags(plan)
    plan.add_argument("--batch-size", dest="batch_size", type=int,
                      help="per-device batch size (default: the config's per_device_train_batch_size, else 8)")
    plan.add_argument("--method", choices=["lora", "dora", "qlora", "full"], help="default: the config's, else lora")
    plan.add_argument("--gradient-checkpointing", dest="gradient_checkpointing",
                      action=argparse.BooleanOptionalAction, help="default: the config's")
    plan.add_argument("--no-progress", action="store_true", help="no progress bar")
    plan.set_defaults(func=_plan)

    add_after_training_commands(sub, add_data_flags=_add_data_flags, read_data=_dataset_from_args,
                                default_model=DEFAULT_MODEL)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; a user error (a bad file, record or option) prints one message and exits 1.

    Set ``PLM_TUNE_DEBUG=1`` for the full traceback.
    """
    import os

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, ImportError) as error:
        if os.environ.get("PLM_TUNE_DEBUG"):
            raise
        print(f"plm-tune {args.command}: error: {error}\n(PLM_TUNE_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
