"""The ``plm-tune`` command line. Each subcommand is a thin shell over a library function.

This module is the application layer (like the recipes): it is the one place in ``plm_tune`` allowed to
reach into ``data_adapters``, lazily, inside the ``data`` and ``eval`` subcommands.

``--adapter`` means a trained peft adapter folder in ``generate`` / ``eval`` / ``merge`` / ``push``; the data
commands call the data reader ``--data-adapter`` (``--adapter`` still works there).
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


# ------------------------------------------------------------------ after training: generate, eval, report, export
EVAL_DATA = "eval_data"  # the recipes save their held-out split here, inside the output folder


def _media_sample(args: argparse.Namespace) -> dict:
    """One canonical sample from --image / --video / --dicom and --prompt (media first, in that order)."""
    from plm_tune.dicom import dicom_frame_count, read_dicom_header

    images, videos = list(args.image or []), list(args.video or [])
    for path in args.dicom or []:
        # A multi-frame DICOM (cine, ultrasound loop) is a video to PLM; a single frame an image.
        (videos if dicom_frame_count(read_dicom_header(path)) > 1 else images).append(path)
    content = [{"type": "image"} for _ in images] + [{"type": "video"} for _ in videos]
    messages = [{"role": "user", "content": [*content, {"type": "text", "text": args.prompt}]}]
    if args.system:
        messages.insert(0, {"role": "system", "content": args.system})
    return {"messages": messages, "images": images, "videos": videos,
            "max_tiles": args.max_tiles, "num_frames": args.num_frames}


def _training_defaults(args: argparse.Namespace, folder: str | None) -> None:
    """Unset --max-tiles / --num-frames default to what the adapter (or model) folder was trained with."""
    from plm_tune.export import read_training_info

    info = read_training_info(folder) if folder else {}
    for key in ("max_tiles", "num_frames"):
        if getattr(args, key, None) is None and info.get(key) is not None:
            setattr(args, key, info[key])


def _adapter_base(adapter: str | None) -> str | None:
    """The base model an adapter folder was trained on (its adapter_config.json), or None."""
    import json
    from pathlib import Path

    config = Path(adapter) / "adapter_config.json" if adapter else None
    if config is None or not config.is_file():
        return None
    return json.loads(config.read_text()).get("base_model_name_or_path")


def _generate(args: argparse.Namespace) -> int:
    from plm_tune.generation import generate
    from plm_tune.model import load_for_inference

    args.model = args.model or _adapter_base(args.adapter) or DEFAULT_MODEL
    _training_defaults(args, args.adapter or args.model)
    model, processor = load_for_inference(args.model, args.adapter)
    answer = generate(model, processor, [_media_sample(args)], max_new_tokens=args.max_new_tokens,
                      do_sample=args.sample, temperature=args.temperature, top_p=args.top_p, progress=False)[0]
    print(answer)
    return 0


def _eval_config(args: argparse.Namespace) -> dict:
    if not args.config:
        return {}
    import yaml

    with open(args.config) as f:
        return yaml.safe_load(f) or {}


def _eval_samples(args: argparse.Namespace, config: dict):
    """The samples to evaluate and how to find them again (recorded in eval.json for `plm-tune report`)."""
    from pathlib import Path

    import datasets

    saved = Path(args.adapter or args.model) / EVAL_DATA
    if args.data_adapter or config.get("data"):
        dataset, _ = _dataset_from_args(args)
        if args.eval_split:
            dataset = dataset.train_test_split(test_size=args.eval_split, seed=args.seed)["test"]
        source = {"config": args.config, "data_adapter": args.data_adapter, "arg": args.arg,
                  "eval_split": args.eval_split, "seed": args.seed}
    elif saved.is_dir():
        dataset = datasets.load_from_disk(str(saved))
        source = {"saved": str(saved.resolve())}
    else:
        raise SystemExit(f"No eval data: {saved} does not exist (the recipes save their held-out split there) and "
                         "no data was named. Pass a config with a data: section or --data-adapter NAME --arg ...")
    if args.limit is not None and args.limit < len(dataset):
        dataset = dataset.select(range(args.limit))
    source["limit"] = args.limit
    return dataset, source


def _eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from plm_tune.evaluation import evaluate, save_eval
    from plm_tune.model import load_for_inference
    from plm_tune.report import write_report

    config = _eval_config(args)
    args.model = args.model or config.get("model_name_or_path") or _adapter_base(args.adapter) or DEFAULT_MODEL
    for key in ("max_tiles", "num_frames"):
        if getattr(args, key) is None and config.get(key) is not None:
            setattr(args, key, config[key])
    _training_defaults(args, args.adapter or args.model)
    samples, source = _eval_samples(args, config)
    model, processor = load_for_inference(args.model, args.adapter)
    base = "disable_adapter" if args.adapter and not args.no_base else None
    result = evaluate(model, processor, samples, base_model=base, max_new_tokens=args.max_new_tokens,
                      batch_size=args.batch_size, max_tiles=args.max_tiles, num_frames=args.num_frames or 32)
    result.info.update(model=args.model, adapter=args.adapter, data=source)
    output = Path(args.output or Path(args.adapter or ".") / "eval")
    save_eval(result, output / "eval.json")
    print(_metrics_table(result))
    print(f"Wrote {output / 'eval.json'}")
    if not args.no_report:
        print(f"Report: {write_report(result, samples, output / 'report.html')}")
    return 0


def _metrics_table(result) -> str:
    rows = [f"{'metric':<14} {'base':>10} {'finetuned':>10}"]
    for name, value in result.metrics.items():
        base = (result.base_metrics or {}).get(name)
        rows.append(f"{name:<14} {'-' if base is None else f'{base:.4g}':>10} {value:>10.4g}")
    return "\n".join(rows)


def _report(args: argparse.Namespace) -> int:
    from pathlib import Path

    import datasets

    from plm_tune.evaluation import load_eval
    from plm_tune.report import write_report

    result = load_eval(args.eval_json)
    source = result.info.get("data") or {}
    if "saved" in source:
        samples = datasets.load_from_disk(source["saved"])
    elif source.get("config") or source.get("data_adapter"):
        args.config, args.data_adapter, args.arg = source.get("config"), source.get("data_adapter"), source.get("arg")
        for key in ("max_length", "max_tiles", "num_frames", "train_on", "vision_input_type"):
            setattr(args, key, None)
        samples, _ = _dataset_from_args(args)
        if source.get("eval_split"):
            samples = samples.train_test_split(test_size=source["eval_split"], seed=source["seed"])["test"]
    else:
        raise SystemExit(f"{args.eval_json} does not say where its samples are (info.data): make it with plm-tune eval.")
    if source.get("limit") is not None and source["limit"] < len(samples):
        samples = samples.select(range(source["limit"]))
    output = Path(args.output or Path(args.eval_json).with_name("report.html"))
    print(f"Report: {write_report(result, samples, output, max_samples=args.max_samples)}")
    return 0


def _merge(args: argparse.Namespace) -> int:
    import torch

    from plm_tune.export import merge_adapter

    dtype = getattr(torch, args.dtype) if args.dtype else None
    out = merge_adapter(args.adapter, args.output, base_model=args.base_model, dtype=dtype)
    print(f"Wrote the merged model to {out} (load it with AutoModelForImageTextToText.from_pretrained('{out}')).")
    return 0


def _push(args: argparse.Namespace) -> int:
    from plm_tune.export import files_to_upload, push_adapter

    if args.dry_run:
        print("\n".join(files_to_upload(args.adapter)))
        return 0
    card = {"base_model": args.base_model} if args.base_model else {}
    print(f"Pushed: {push_adapter(args.adapter, args.repo_id, private=args.private, **card)}")
    return 0


def _add_generation_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-new-tokens", dest="max_new_tokens", type=int, default=256, help="longest answer")
    parser.add_argument("--max-tiles", dest="max_tiles", type=int,
                        help="tiles per image (default: the value the adapter was trained with, else PLM's 36)")
    parser.add_argument("--num-frames", dest="num_frames", type=int,
                        help="frames per video (default: the value the adapter was trained with, else 32)")


def _add_after_training_commands(sub) -> None:
    generate = sub.add_parser("generate", help="answer one prompt about images / videos / DICOM files")
    generate.add_argument("--model", help="base or merged model (Hub id or folder), or an adapter folder (default: "
                          f"the base --adapter was trained on, else {DEFAULT_MODEL})")
    generate.add_argument("--adapter", help="a trained adapter folder to apply on --model")
    generate.add_argument("--image", action="append", metavar="FILE", help="an image (repeatable)")
    generate.add_argument("--video", action="append", metavar="FILE", help="a video file (repeatable)")
    generate.add_argument("--dicom", action="append", metavar="FILE",
                          help="a .dcm file: one frame is an image, several a video (repeatable)")
    generate.add_argument("--prompt", required=True, help="the question or instruction")
    generate.add_argument("--system", help="system prompt (default: PLM's)")
    generate.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    generate.add_argument("--temperature", type=float, default=1.0)
    generate.add_argument("--top-p", dest="top_p", type=float, default=1.0)
    _add_generation_flags(generate)
    generate.set_defaults(func=_generate)

    evaluate = sub.add_parser("eval", help="answer an eval split, score it (base vs finetuned) and write a report")
    _add_data_flags(evaluate)
    evaluate.add_argument("--model", help="base model (default: the config's model_name_or_path, else the base "
                          f"--adapter was trained on, else {DEFAULT_MODEL})")
    evaluate.add_argument("--adapter", help=f"trained adapter folder; its {EVAL_DATA}/ (the recipe's held-out split) "
                          "is the default eval data")
    evaluate.add_argument("--eval-split", dest="eval_split", type=float, default=0.0,
                          help="with --data-adapter / a data: section: evaluate this held-out share")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of that split (the recipe's seed)")
    evaluate.add_argument("--limit", type=int, help="evaluate only the first N samples")
    evaluate.add_argument("--batch-size", dest="batch_size", type=int, default=8)
    evaluate.add_argument("--no-base", dest="no_base", action="store_true", help="skip the base model's answers")
    evaluate.add_argument("--output", help="folder for eval.json and report.html (default: ADAPTER/eval)")
    evaluate.add_argument("--no-report", dest="no_report", action="store_true", help="no HTML report")
    evaluate.add_argument("--max-new-tokens", dest="max_new_tokens", type=int, default=256, help="longest answer")
    evaluate.set_defaults(func=_eval)

    report = sub.add_parser("report", help="(re)write the HTML report of an eval.json")
    report.add_argument("eval_json", help="eval.json written by plm-tune eval or a recipe")
    report.add_argument("--output", help="HTML file (default: report.html next to eval.json)")
    report.add_argument("--max-samples", dest="max_samples", type=int, default=50, help="cases in the gallery")
    report.set_defaults(func=_report)

    merge = sub.add_parser("merge", help="merge a LoRA / DoRA / QLoRA adapter into its base: one standalone model")
    merge.add_argument("--adapter", required=True, help="adapter folder (the recipe's output_dir)")
    merge.add_argument("--output", required=True, help="folder for the merged model")
    merge.add_argument("--base-model", dest="base_model",
                       help="base model id or folder (default: the adapter's adapter_config.json)")
    merge.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                       help="default: bfloat16 on a bf16 GPU, else float32")
    merge.set_defaults(func=_merge)

    push = sub.add_parser("push", help="upload an adapter folder with a model card to the Hugging Face Hub "
                          "(token: HF_TOKEN or `hf auth login`, never a flag)")
    push.add_argument("--adapter", required=True, help="adapter folder")
    push.add_argument("--repo-id", dest="repo_id", required=True, help="user/name or org/name")
    push.add_argument("--private", action="store_true", help="create the repo private")
    push.add_argument("--base-model", dest="base_model",
                      help="Hub id of the base for the model card (default: adapter_config.json's)")
    push.add_argument("--dry-run", dest="dry_run", action="store_true",
                      help="list the files that would be uploaded; no network")
    push.set_defaults(func=_push)


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

    _add_after_training_commands(sub)
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
