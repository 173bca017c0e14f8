"""The ``plm-tune`` command line. Each subcommand is a thin shell over a library function.

This module is the application layer (like the recipes): it is the one place in ``plm_tune`` allowed to
reach into ``data_adapters``, lazily, inside the ``data`` subcommands.
"""

from __future__ import annotations

import argparse
import sys

DEFAULT_MODEL = "facebook/Perception-LM-1B"


def _tiny_model(args: argparse.Namespace) -> int:
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
    import yaml

    return yaml.safe_load(text)


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
    adapter = args.adapter or spec.pop("adapter", None)
    spec.pop("adapter", None)
    for item in args.arg or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--arg expects KEY=VALUE, got {item!r}.")
        spec[key] = _parse_value(value)
    if adapter not in ADAPTERS:
        raise SystemExit(f"Unknown or missing adapter {adapter!r}: pass --adapter with one of {', '.join(ADAPTERS)} "
                         "(or a config whose data: section has adapter: NAME).")
    collator_settings = {k: getattr(args, k) for k in ("max_length", "max_tiles", "num_frames", "train_on",
                                                        "vision_input_type") if getattr(args, k, None) is not None}
    return adapter, spec, collator_settings


def _data_setup(args: argparse.Namespace):
    import importlib

    from transformers import AutoProcessor

    from plm_tune import PLMCollator

    adapter, kwargs, settings = _load_data_spec(args)
    module_name, function_name = ADAPTERS[adapter].split(":")
    build = getattr(importlib.import_module(module_name), function_name)
    if args.command_data == "check":
        kwargs.setdefault("on_error", "skip")  # walk everything; problems are tabulated, not fatal
    dataset = build(**kwargs)
    processor = AutoProcessor.from_pretrained(args.model_name_or_path or DEFAULT_MODEL)
    return dataset, PLMCollator(processor, **settings)


def _data_inspect(args: argparse.Namespace) -> int:
    from data_adapters.preflight import inspect_samples

    dataset, collator = _data_setup(args)
    inspect_samples(dataset, collator, n=args.n)
    return 0


def _data_check(args: argparse.Namespace) -> int:
    from data_adapters.preflight import check_dataset

    dataset, collator = _data_setup(args)
    result = check_dataset(dataset, collator, progress=not args.no_progress)
    print(result.report())
    return 0 if result.ok else 1


def _add_data_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="a YAML config with a data: section (adapter: NAME plus its args)")
    parser.add_argument("--adapter", choices=sorted(ADAPTERS), help="which adapter reads the data")
    parser.add_argument("--arg", action="append", metavar="KEY=VALUE",
                        help="an adapter argument (repeatable), e.g. --arg root=./scans --arg prompt='Describe.'")
    parser.add_argument("--model-name-or-path", dest="model_name_or_path",
                        help=f"model whose processor formats the data (default {DEFAULT_MODEL})")
    parser.add_argument("--max-length", dest="max_length", type=int)
    parser.add_argument("--max-tiles", dest="max_tiles", type=int)
    parser.add_argument("--num-frames", dest="num_frames", type=int)
    parser.add_argument("--train-on", dest="train_on", choices=["assistant", "all"])
    parser.add_argument("--vision-input-type", dest="vision_input_type", choices=["thumb+tile", "vanilla"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="plm-tune", description="Finetune Perception Language Models (PLM).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    tiny = sub.add_parser("tiny-model", help="write a tiny random-init PLM (offline tests and demos)")
    tiny.add_argument("path", help="output folder")
    tiny.add_argument("--seed", type=int, default=0, help="random seed (same seed, same weights)")
    tiny.set_defaults(func=_tiny_model)

    data = sub.add_parser("data", help="look at and check a dataset before training")
    data_sub = data.add_subparsers(dest="command_data", required=True, metavar="ACTION")
    inspect = data_sub.add_parser("inspect", help="show samples as the model sees them, trained tokens marked")
    _add_data_flags(inspect)
    inspect.add_argument("-n", type=int, default=5, help="how many samples to show")
    inspect.set_defaults(func=_data_inspect)
    check = data_sub.add_parser("check", help="decode everything; table of problems; exit 1 if any")
    _add_data_flags(check)
    check.add_argument("--no-progress", action="store_true", help="no progress bar")
    check.set_defaults(func=_data_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
