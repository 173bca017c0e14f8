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
            raise ValueError(f"--arg expects KEY=VALUE, got {item!r}.")
        spec[key] = _parse_value(value)
    if adapter not in ADAPTERS:
        raise ValueError(f"Unknown or missing data adapter {adapter!r}: pass --data-adapter with one of "
                         f"{', '.join(ADAPTERS)} (or a config whose data: section has adapter: NAME).")
    collator_settings = {k: getattr(args, k) for k in ("max_length", "max_tiles", "num_frames", "train_on",
                                                        "vision_input_type") if getattr(args, k, None) is not None}
    return adapter, spec, collator_settings


def _dataset_from_args(args: argparse.Namespace):
    """(dataset, collator settings) from the data adapter named by the config / flags."""
    import importlib
    import inspect

    adapter, kwargs, settings = _load_data_spec(args)
    module_name, function_name = ADAPTERS[adapter].split(":")
    build = getattr(importlib.import_module(module_name), function_name)
    _check_adapter_args(adapter, build, kwargs)
    if getattr(args, "command_data", None) == "check":
        kwargs.setdefault("on_error", "skip")  # walk everything; problems are tabulated, not fatal
    if getattr(args, "no_progress", False) and "progress" in inspect.signature(build).parameters:
        kwargs.setdefault("progress", False)  # the adapter's scan of the records is a bar too
    return build(**kwargs), settings


def _check_adapter_args(adapter: str, build, kwargs: dict) -> None:
    """Refuse argument names the data adapter does not take, listing the ones it does (before it runs)."""
    import inspect

    parameters = inspect.signature(build).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    unknown = [key for key in kwargs if key not in parameters]
    if unknown:
        raise ValueError(f"the {adapter} data adapter has no argument {', '.join(map(repr, unknown))} (from --arg or "
                         f"the config's data: section); its arguments: {', '.join(parameters)}")


def _data_setup(args: argparse.Namespace):
    from transformers import AutoProcessor

    from plm_tune import PLMCollator

    dataset, settings = _dataset_from_args(args)
    check_model_path(args.model_name_or_path or DEFAULT_MODEL)
    processor = AutoProcessor.from_pretrained(args.model_name_or_path or DEFAULT_MODEL)
    return dataset, PLMCollator(processor, **settings)


def _data_inspect(args: argparse.Namespace) -> int:
    from plm_tune.encoding.preflight import inspect_samples

    dataset, collator = _data_setup(args)
    inspect_samples(dataset, collator, n=args.n)
    return 0


def _data_check(args: argparse.Namespace) -> int:
    from plm_tune.encoding.preflight import check_dataset

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

    A recipe config has no data: section: its corpus keys are its recipe's, which the library does not import.
    With --data-adapter they are listed as ignored; without it, the error says how to plan that config.
    """
    import difflib

    import yaml

    from plm_tune.apps.finetune import parse_settings, settings_keys
    from plm_tune.training.plan import plan_report

    config = {}
    if args.config:
        with open(args.config) as f:
            config = yaml.safe_load(f) or {}
    has_data = "data" in config
    config.pop("data", None)
    valid = [key for names in settings_keys().values() for key in names]
    other = sorted(key for key in config if key not in valid)
    typos = {key: difflib.get_close_matches(key, valid, n=1, cutoff=0.8) for key in other}
    typos = {key: match[0] for key, match in typos.items() if match}
    if other and (has_data or typos):  # a data config has no corpus keys; a near miss is a typo anyway
        parse_settings({key: config[key] for key in (other if has_data else typos)})  # raises, naming them
    if other and not args.data_adapter:
        raise ValueError(f"{args.config} has no data: section and sets {', '.join(other)}: a recipe's corpus keys, "
                         "read by its recipe. Plan it with the recipe itself (add --plan true to its command: "
                         "python recipes/RECIPE.py --config CONFIG --plan true), or give the data here with "
                         "--data-adapter NAME --arg KEY=VALUE.")
    if other:
        print(f"Ignored {', '.join(other)}: corpus keys of a recipe config (the data comes from --data-adapter).",
              file=sys.stderr)
    flags = {setting: getattr(args, flag) for flag, setting in PLAN_FLAGS.items() if getattr(args, flag) is not None}
    model_args, media_args, training_args, _ = parse_settings(
        {**{k: v for k, v in config.items() if k not in other}, **flags})
    check_model_path(model_args.model_name_or_path)  # a typo'd folder is "no such folder", not a Hub look-up
    dataset, _ = _dataset_from_args(args)
    print(plan_report(dataset, model_args, media=media_args, max_length=training_args.max_length,
                      batch_size=training_args.per_device_train_batch_size,
                      gradient_checkpointing=bool(training_args.activation_checkpointing),
                      bf16=training_args.bf16, progress=not args.no_progress))
    return 0


class _CommandParser(argparse.ArgumentParser):
    """A subcommand's parser: an unknown flag is its error, with its usage (argparse would hand it to the top)."""

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="plm-tune", description="Finetune Perception Language Models (PLM).")
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

    add_after_training_commands(sub, add_data_flags=_add_data_flags, read_data=_dataset_from_args,
                                default_model=DEFAULT_MODEL)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; any error prints one line and exits 1 (``PLM_TUNE_DEBUG=1``: the traceback instead).

    A user's mistake (a bad file, record, option or path; the Hub out of reach) is its message with the fix;
    anything else is the exception's type and message with the hint to set ``PLM_TUNE_DEBUG=1``. Hub tokens
    are removed from the line (``plm_tune.after_training.push.redact``).
    """
    import os

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Exception as error:
        if os.environ.get("PLM_TUNE_DEBUG"):
            raise
        command = " ".join(filter(None, (args.command, getattr(args, "command_data", None))))
        print(f"plm-tune {command}: error: {_error_line(error)}", file=sys.stderr)
        return 1


# A user's mistake is named by the message plm-tune (or the library it called) raised, fix included.
_USER_ERRORS = (ValueError, FileNotFoundError, ImportError, NotADirectoryError, IsADirectoryError, PermissionError)

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


def _error_line(error: Exception) -> str:
    """One line for ``error``: the Hub out of reach, a user's mistake, or an unexpected exception; the parameters
    it names shown as flags (``as_flags``)."""
    from plm_tune.after_training.push import PushError, redact

    repo = _hub_unreachable(error)
    if repo is not None:
        line = (f"cannot reach the Hugging Face Hub (offline or no network) for {repo or 'what this needs'}, and it "
                "is not in the local cache: connect and run again, or use a local folder instead "
                "(`plm-tune tiny-model .cache/tiny-plm` makes a tiny model to try things offline)")
    elif isinstance(error, (*_USER_ERRORS, PushError)):
        line = str(error)
    else:
        line = f"{type(error).__name__}: {error} (PLM_TUNE_DEBUG=1 for the traceback)"
    return " ".join(redact(as_flags(line)).split())


def _hub_unreachable(error: BaseException | None) -> str | None:
    """None, unless ``error`` or an exception behind it says the Hub could not be reached (offline, no network):
    then the quoted ``'org/name'`` one of their messages names, or ``""``."""
    import re

    # By class name: huggingface_hub's offline errors and the transport errors of requests / httpx / httpcore;
    # by text: what transformers and datasets say when they wrap them (a recipe's error comes as text only).
    names = {"OfflineModeIsEnabled", "LocalEntryNotFoundError", "ConnectionError", "ConnectError",
             "ConnectTimeout", "NetworkError", "TimeoutException"}
    texts = ("couldn't connect to", "couldn't reach", "offlinemodeisenabled")
    found, repo, seen = False, "", set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        text = str(error)
        if names & {cls.__name__ for cls in type(error).__mro__} or any(t in text.lower() for t in texts):
            found = True
        repo = repo or next(iter(re.findall(r"'([\w.-]+/[\w.-]+)'", text)), "")
        # `raise ... from None` hides the context on purpose (a push's error may quote the token): so do we.
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    return (repr(repo) if repo else "") if found else None


if __name__ == "__main__":
    sys.exit(main())
