"""The ``plm-tune`` command line. Each subcommand is a thin shell over a library function.

This module is the application layer (like the recipes): it is the one place in ``plm_tune`` allowed to
reach into ``data_adapters``, lazily, through the data reader of the ``data``, ``plan`` and ``eval``
subcommands. The after-training commands (``generate``, ``eval``, ``report``, ``merge``, ``push``) live in
``plm_tune.apps.cli_run``, which gets that data reader from here.

``--adapter`` means a trained peft adapter folder in ``generate`` / ``eval`` / ``merge``; ``push`` takes
``--folder`` (an adapter, a full finetune or a merged model; ``--adapter`` still works there); the data
commands call the data reader ``--data-adapter`` (``--adapter`` still works there).
"""

from __future__ import annotations

import argparse
import sys

from plm_tune.apps.cli_run import add_after_training_commands
from plm_tune.apps.exits import EXIT_CODES_HELP, run_main
from plm_tune.apps.train import add_train_commands
from plm_tune.arguments import DEFAULT_MODEL, TRAIN_ON
from plm_tune.methods import METHODS
from plm_tune.modeling.run_folder import check_model_path


def _installed_version() -> str:
    """plm-tune's version as installed (the distribution's metadata; the package's own when run from a clone)."""
    from importlib import metadata

    try:
        return metadata.version("plm-tune")
    except metadata.PackageNotFoundError:
        from plm_tune import __version__

        return __version__


def _env(args: argparse.Namespace) -> int:
    from plm_tune.apps.environment import environment, format_environment

    print(format_environment(environment()))
    return 0


def _tiny_model(args: argparse.Namespace) -> int:
    if not args.size and (args.text_layers or args.vision_layers):
        raise ValueError("--text-layers / --vision-layers go with --size (the tiny model's depth is fixed); "
                         "add --size 1B.")
    if args.size:  # the released architecture and real tokenizer at random init (the real-tokenizer extra)
        import torch

        from plm_tune.modeling.testing_real import build_random_plm

        # bfloat16 on disk, as the released checkpoints: half the bytes to write and read.
        path = build_random_plm(args.path, args.size, seed=args.seed, text_layers=args.text_layers,
                                vision_layers=args.vision_layers, dtype=torch.bfloat16)
        print(f"Wrote a random-init PLM-{args.size} (real tokenizer, random weights) to {path}")
    else:
        from plm_tune.modeling.testing import build_tiny_plm

        path = build_tiny_plm(args.path, seed=args.seed)
        print(f"Wrote a tiny random-init PLM to {path}")
    print(f"Load it with AutoModelForImageTextToText.from_pretrained('{path}') and AutoProcessor.from_pretrained('{path}').")
    return 0


def _adapter_names() -> list[str]:
    from data_adapters.registry import ADAPTERS  # a table only: no adapter is imported

    return list(ADAPTERS)


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


def _load_data_spec(args: argparse.Namespace) -> tuple[dict, dict]:
    """(the data: section, collator settings) from a YAML config and/or command-line flags."""
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
            raise ValueError(f"--arg expects KEY=VALUE, got {item!r}.")
        spec[key] = _parse_value(value)
    collator_settings = {k: getattr(args, k) for k in ("max_length", "max_tiles", "num_frames", "train_on",
                                                        "vision_input_type") if getattr(args, k, None) is not None}
    return {"adapter": adapter, **spec}, collator_settings


def _dataset_from_args(args: argparse.Namespace):
    """(dataset, collator settings) from the data adapter named by the config / flags."""
    from data_adapters.registry import read_data

    section, settings = _load_data_spec(args)
    defaults = {"on_error": "skip"} if getattr(args, "command_data", None) == "check" else {}  # tabulate, not stop
    if getattr(args, "no_progress", False):
        defaults["progress"] = False  # the adapter's scan of the records is a bar too
    return read_data(section, **defaults), settings


def _data_setup(args: argparse.Namespace):
    from transformers import AutoProcessor

    from plm_tune import PLMCollator

    dataset, settings = _dataset_from_args(args)
    check_model_path(args.model_name_or_path or DEFAULT_MODEL)
    processor = AutoProcessor.from_pretrained(args.model_name_or_path or DEFAULT_MODEL)
    return dataset, PLMCollator(processor, **settings)


def _data_inspect(args: argparse.Namespace) -> int:
    from plm_tune.apps.inspect_pairs import inspect_preference_samples
    from plm_tune.data.preference import is_preference_sample
    from plm_tune.encoding.preflight import inspect_samples

    dataset, collator = _data_setup(args)
    show = inspect_preference_samples if is_preference_sample(next(iter(dataset), None)) else inspect_samples
    show(dataset, collator, n=args.n)
    return 0


def _data_check(args: argparse.Namespace) -> int:
    from plm_tune.encoding.preflight import check_dataset

    dataset, collator = _data_setup(args)
    result = check_dataset(dataset, collator, progress=not args.no_progress)
    print(result.report())
    return 0 if result.ok else 1


def _add_data_flags(parser: argparse.ArgumentParser, *, adapter_flags: tuple[str, ...] = ("--data-adapter",)) -> None:
    parser.add_argument("config", nargs="?", help="a YAML config with a data: section (adapter: NAME plus its args)")
    parser.add_argument(*adapter_flags, dest="data_adapter", choices=sorted(_adapter_names()),
                        help="which data adapter reads the data")
    parser.add_argument("--arg", action="append", metavar="KEY=VALUE",
                        help="an adapter argument (repeatable), e.g. --arg root=./scans --arg prompt='Describe.'")
    parser.add_argument("--model-name-or-path", dest="model_name_or_path",
                        help=f"model whose processor formats the data (default {DEFAULT_MODEL})")
    parser.add_argument("--max-length", dest="max_length", type=int)
    parser.add_argument("--max-tiles", dest="max_tiles", type=int)
    parser.add_argument("--num-frames", dest="num_frames", type=int)
    parser.add_argument("--train-on", dest="train_on", choices=TRAIN_ON)
    parser.add_argument("--vision-input-type", dest="vision_input_type", choices=["thumb+tile", "vanilla"])


# ------------------------------------------------------------------ plan: tokens, padding and memory before training
# Flags of `plm-tune plan` and the run settings they set (plm_tune.arguments / SFTConfig field names).
PLAN_FLAGS = {"model_name_or_path": "model_name_or_path", "max_length": "max_length", "max_tiles": "max_tiles",
              "num_frames": "num_frames", "train_on": "train_on", "vision_input_type": "vision_input_type",
              "batch_size": "per_device_train_batch_size", "method": "method",
              "gradient_checkpointing": "activation_checkpointing"}


def _plan(args: argparse.Namespace) -> int:
    """The config's run settings parsed as the recipes parse them; the data from its data: section or flags.

    A recipe config (no data: section, no --data-adapter) is planned by its recipe, as ``plm-tune train CONFIG
    --plan true`` runs it: the corpus keys are the recipe's. With --data-adapter a recipe config's corpus keys are
    listed as ignored.
    """
    from plm_tune.apps.config import RECIPE_KEY, read_config
    from plm_tune.apps.finetune import recipe_parser
    from plm_tune.apps.train import recipe_parser_of
    from plm_tune.training.plan import RELEASED_PLMS, plan_report

    config = read_config(args.config) if args.config else {}
    flags = {setting: getattr(args, flag) for flag, setting in PLAN_FLAGS.items() if getattr(args, flag) is not None}
    if args.config and "data" not in config and not args.data_adapter:
        from plm_tune.apps.train import train

        overrides = [item for setting, value in flags.items() for item in (f"--{setting}", str(value))]
        return train(args.config, [*overrides, "--plan", "true"])
    has_data = config.pop("data", None) is not None
    config.pop(RECIPE_KEY, None)
    parser = recipe_parser()
    valid = {key for names in parser.valid_keys().values() for key in names}
    other = sorted(key for key in config if key not in valid)
    # A recipe config's own keys are its corpus (replaced by --data-adapter); any other key is a mistake.
    recipe = None if has_data or not other else recipe_parser_of(args.config)
    corpus = {key for names in recipe.valid_keys().values() for key in names} - valid if recipe else set()
    if unknown := [key for key in other if key not in corpus]:
        raise (recipe or parser).unknown_key_error(unknown, f"in {args.config}")
    if other:
        print(f"Ignored {', '.join(other)}: corpus keys of a recipe config (the data comes from --data-adapter).",
              file=sys.stderr)
    model_args, media_args, training_args, _ = parser.parse_dict(
        {**{k: v for k, v in config.items() if k not in other}, **flags})
    if model_args.model_name_or_path not in RELEASED_PLMS:  # those plan offline from their released settings
        check_model_path(model_args.model_name_or_path)  # a typo'd folder is "no such folder", before the data
    dataset, _ = _dataset_from_args(args)
    print(plan_report(dataset, model_args, media=media_args, max_length=training_args.max_length,
                      batch_size=training_args.per_device_train_batch_size,
                      gradient_checkpointing=bool(training_args.activation_checkpointing),
                      bf16=training_args.bf16, progress=not args.no_progress))
    return 0


class _CommandParser(argparse.ArgumentParser):
    """A subcommand's parser: an unknown flag is its error, with its usage (argparse would hand it to the top);
    with ``keep_extras`` (``train``) unknown flags are the recipe's overrides, ``args.overrides``."""

    def __init__(self, *args, keep_extras: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.keep_extras = keep_extras

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        if self.keep_extras:
            namespace.overrides, extras = extras, []
        elif extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="plm-tune", description="Finetune Perception Language Models (PLM).",
                                     epilog=EXIT_CODES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"plm-tune {_installed_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_CommandParser)
    env = sub.add_parser("env", help="versions of plm-tune, Python, torch + CUDA and the training libraries, and "
                                     "the GPUs: paste it into a bug report")
    env.set_defaults(func=_env)

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
                          "before training (a config with a data: section and the recipes' run settings)",
                          description="CONFIG: a YAML with a data: section and the recipes' run settings. A recipe's "
                          "own config (recipes/configs/*.yaml) is planned by its recipe: python "
                          "recipes/radiology_lora.py --config recipes/configs/radiology_demo.yaml --plan true")
    _add_data_flags(plan)
    plan.add_argument("--batch-size", dest="batch_size", type=int,
                      help="per-device batch size (default: the config's per_device_train_batch_size, else SFTConfig's)")
    plan.add_argument("--method", choices=METHODS,
                      help="default: the config's, else ModelArguments'")
    plan.add_argument("--gradient-checkpointing", dest="gradient_checkpointing",
                      action=argparse.BooleanOptionalAction,
                      help="default: the config's activation_checkpointing, else SFTConfig's (on)")
    plan.add_argument("--no-progress", action="store_true", help="no progress bar")
    plan.set_defaults(func=_plan)

    add_train_commands(sub)
    add_after_training_commands(sub, add_data_flags=_add_data_flags, read_data=_dataset_from_args,
                                default_model=DEFAULT_MODEL)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; an error prints one line and exits with its code (``plm_tune.apps.exits``: 1 problems in
    the data, 2 usage, 3 a crash; ``PLM_TUNE_DEBUG=1``: the traceback instead).

    A user's mistake (a bad file, record, option or path; the Hub out of reach) is its message with the fix, the
    parameters it names shown as flags (``as_flags``); anything else is the exception's type and message with the
    hint to set ``PLM_TUNE_DEBUG=1``. Hub tokens are removed from the line (``plm_tune.after_training.push.redact``).
    """
    args = build_parser().parse_args(argv)
    command = " ".join(filter(None, (args.command, getattr(args, "command_data", None))))
    return run_main(args.func, args, program=f"plm-tune {command}", rewrite=as_flags)


# The library's messages name the parameter to change as a Python caller writes it, in backquotes (`base_model`);
# here they show the flag that sets it. One table for every command: a parameter has the same flag everywhere.
PARAMETER_FLAGS = {
    "`adapter`": "--adapter",
    "`adapter_dir`": "--adapter",
    "`model`": "--model",
    "`base_model`": "--base-model",
    "`output_dir`": "--output",
    "`repo_id`": "--repo-id",
    "`include`": "--include",
    "`overwrite_card=True`": "--overwrite-card",
}


def as_flags(message: str) -> str:
    """``message`` with each parameter of ``PARAMETER_FLAGS`` named by its flag.

    >>> as_flags("Adapter folder x does not exist: pass `adapter_dir` with a saved adapter folder.")
    'Adapter folder x does not exist: pass --adapter with a saved adapter folder.'
    """
    for parameter, flag in PARAMETER_FLAGS.items():
        message = message.replace(parameter, flag)
    return message


if __name__ == "__main__":
    sys.exit(main())
