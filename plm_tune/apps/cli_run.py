"""The ``plm-tune`` after-training commands: ``generate``, ``eval``, ``report``, ``merge`` and ``push``.

Each is a thin shell over one library function, and every question about a run folder (where its eval split
is, which base an adapter was trained on, with how many tiles / frames) goes to ``plm_tune.modeling.run_folder``.
``--adapter`` here means a trained peft adapter folder. ``plm_tune.apps.cli`` builds the parser and calls
``add_after_training_commands``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from plm_tune.arguments import MAX_NEW_TOKENS, MediaArguments
from plm_tune.modeling.run_folder import (
    EVAL_DATA,
    EVAL_DIR,
    EVAL_JSON,
    REPORT_HTML,
    check_model_path,
    read_training_info,
    recorded_base_model,
    run_path,
)

__all__ = ["add_after_training_commands"]

def _media_sample(args: argparse.Namespace) -> dict:
    """One canonical sample from --image / --video / --dicom and --prompt (media first, in that order)."""
    from plm_tune.data.dicom import dicom_frame_count, read_dicom_header

    images, videos = list(args.image or []), list(args.video or [])
    if args.start is not None or args.end is not None:
        if not videos:
            raise ValueError("--start / --end cut a clip out of --video, but no --video was given: add --video PATH.")
        # A {"path", "start", "end"} entry: the collator picks the clip's frames as training does.
        videos = [{"path": path, "start": args.start, "end": args.end} for path in videos]
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
    """Unset --max-tiles / --num-frames default to what the adapter (or model) folder was trained with, else to
    ``MediaArguments``' defaults, and --max-new-tokens to its eval's, else ``MAX_NEW_TOKENS`` (a checkpoint folder
    reads its run's: ``read_training_info``)."""
    info = read_training_info(folder) if folder else {}
    for key in ("max_tiles", "num_frames"):
        if getattr(args, key, None) is None:
            setattr(args, key, info[key] if info.get(key) is not None else getattr(MediaArguments, key))
    if args.max_new_tokens is None:
        args.max_new_tokens = info.get("eval_max_new_tokens") or MAX_NEW_TOKENS


def _check_paths(args: argparse.Namespace) -> None:
    """A typo'd --model / --adapter folder is "no such folder" at once, before torch is even imported."""
    for path in (args.model, args.adapter):
        if path is not None:
            check_model_path(path)


def _generate(args: argparse.Namespace) -> int:
    _check_paths(args)
    from plm_tune.inference.generation import generate
    from plm_tune.modeling.model import load_for_inference

    args.model = args.model or recorded_base_model(args.adapter) or args.default_model
    _training_defaults(args, args.adapter or args.model)
    sample = _media_sample(args)  # before loading: a flag mistake is reported without the wait
    model, processor = load_for_inference(args.model, args.adapter)
    answer = generate(model, processor, [sample], max_new_tokens=args.max_new_tokens,
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
    import datasets

    saved = run_path(args.adapter or args.model, EVAL_DATA)  # a checkpoint's is its run's
    if args.data_adapter or config.get("data"):
        dataset, _ = args.read_data(args)
        if args.eval_split:
            dataset = dataset.train_test_split(test_size=args.eval_split, seed=args.seed)["test"]
        source = {"config": args.config, "data_adapter": args.data_adapter, "arg": args.arg,
                  "eval_split": args.eval_split, "seed": args.seed}
    elif saved.is_dir():
        dataset = datasets.load_from_disk(str(saved))
        source = {"saved": str(saved.resolve())}
    else:
        raise FileNotFoundError(f"No eval data: {saved} does not exist (the recipes save their held-out split "
                                "there) and no data was named. Pass a config with a data: section or --data-adapter "
                                "NAME --arg ...")
    if args.limit is not None and args.limit < len(dataset):
        dataset = dataset.select(range(args.limit))
    source["limit"] = args.limit
    return dataset, source


def _eval(args: argparse.Namespace) -> int:
    _check_paths(args)
    from plm_tune.after_training.report import write_report
    from plm_tune.inference.evaluation import evaluate, metrics_table, save_eval
    from plm_tune.modeling.model import load_for_inference

    config = _eval_config(args)
    args.model = (args.model or config.get("model_name_or_path") or recorded_base_model(args.adapter)
                  or args.default_model)
    for key in ("max_tiles", "num_frames"):
        if getattr(args, key) is None and config.get(key) is not None:
            setattr(args, key, config[key])
    _training_defaults(args, args.adapter or args.model)
    output = _eval_output(args)
    samples, source = _eval_samples(args, config)
    model, processor = load_for_inference(args.model, args.adapter)
    base = "disable_adapter" if args.adapter and not args.no_base else None
    result = evaluate(model, processor, samples, compare_with=base, max_new_tokens=args.max_new_tokens,
                      batch_size=args.batch_size, max_tiles=args.max_tiles, num_frames=args.num_frames)
    result.info.update(model=args.model, adapter=args.adapter, data=source, max_tiles=args.max_tiles,
                       num_frames=args.num_frames, training=read_training_info(args.adapter or args.model))
    save_eval(result, output / EVAL_JSON)
    print(metrics_table(result))
    print(f"Wrote {output / EVAL_JSON}")
    if not args.no_report:
        print(f"Report: {write_report(result, samples, output / REPORT_HTML)}")
    return 0


def _eval_output(args: argparse.Namespace) -> Path:
    """Where ``eval`` writes: --output (refused if it holds an eval, unless --overwrite), else a new folder
    ADAPTER/eval, eval-2, eval-3, ... so that the recipe's own eval is never replaced without a word."""
    if args.output:
        output = Path(args.output)
        if (output / EVAL_JSON).exists() and not args.overwrite:
            raise ValueError(f"{output / EVAL_JSON} exists: pass --overwrite to replace it, or another --output.")
        return output
    folder = Path(args.adapter or ".")
    output, n = folder / EVAL_DIR, 1
    while (output / EVAL_JSON).exists() and not args.overwrite:
        n += 1
        output = folder / f"{EVAL_DIR}-{n}"
    return output


def _report(args: argparse.Namespace) -> int:
    import datasets

    from plm_tune.after_training.report import write_report
    from plm_tune.after_training.report_input import read_eval_json

    result = read_eval_json(args.eval_json)  # a JSON of another shape is one line naming it, not a KeyError
    source = result.info.get("data") or {}
    if "saved" in source:
        samples = datasets.load_from_disk(source["saved"])
    elif source.get("config") or source.get("data_adapter"):
        args.config, args.data_adapter, args.arg = source.get("config"), source.get("data_adapter"), source.get("arg")
        for key in ("max_length", "max_tiles", "num_frames", "train_on", "vision_input_type"):
            setattr(args, key, None)
        samples, _ = args.read_data(args)
        if source.get("eval_split"):
            samples = samples.train_test_split(test_size=source["eval_split"], seed=source["seed"])["test"]
    else:
        raise ValueError(f"{args.eval_json} does not say where its samples are (info.data): make it with plm-tune "
                         "eval.")
    if source.get("limit") is not None and source["limit"] < len(samples):
        samples = samples.select(range(source["limit"]))
    output = Path(args.output or Path(args.eval_json).with_name(REPORT_HTML))
    print(f"Report: {write_report(result, samples, output, max_samples=args.max_samples)}")
    return 0


def _merge(args: argparse.Namespace) -> int:
    import torch

    from plm_tune.after_training.merge import merge_adapter

    dtype = getattr(torch, args.dtype) if args.dtype else None
    out = merge_adapter(args.adapter, args.output, base_model=args.base_model, dtype=dtype,
                        allow_other_base=args.allow_other_base)
    print(f"Wrote the merged model to {out} (load it with AutoModelForImageTextToText.from_pretrained('{out}')).")
    return 0


def _push(args: argparse.Namespace) -> int:
    from plm_tune.after_training.push import push_folder, push_plan

    options = {"include": args.include or (), "overwrite_card": args.overwrite_card}
    if args.base_model:
        options["base_model"] = args.base_model
    if not args.dry_run:
        url = push_folder(args.folder, args.repo_id, private=args.private, commit_message=args.commit_message,
                          revision=args.revision, create_pr=args.create_pr, **options)
        print(f"{'Opened a pull request' if args.create_pr else 'Pushed'}: {url}")
        return 0
    plan = push_plan(args.folder, args.repo_id, **options)
    where = " as a pull request" if args.create_pr else f" on branch {args.revision}" if args.revision else ""
    print(f"Would upload {len(plan.files)} files ({plan.kind}) from {plan.folder} to "
          f"https://huggingface.co/{args.repo_id}{where} "
          f"({'private' if args.private else 'public'} if the push creates it):")
    print("\n".join(plan.listing()))  # each file with its size; stray weights flagged
    if plan.left_out:
        print(f"Left out: {len(plan.left_out)} files not on the upload allowlist (checkpoints, logs, data...).")
    for name in plan.symlinks:
        print(f"Not uploaded: {name} is a symlink (a push never follows one).")
    source = "plm-tune's card" if plan.card_source == "plm-tune" else "your own card (--overwrite-card replaces it)"
    print(f"README.md, {source}:\n{plan.card.rstrip()}")
    return 0


def _add_generation_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-new-tokens", dest="max_new_tokens", type=int, default=MAX_NEW_TOKENS,
                        help=f"longest answer, in tokens (default {MAX_NEW_TOKENS})")
    parser.add_argument("--max-tiles", dest="max_tiles", type=int,
                        help="tiles per image (default: the value the adapter was trained with, else PLM's 36)")
    parser.add_argument("--num-frames", dest="num_frames", type=int,
                        help="frames per video (default: the value the adapter was trained with, else "
                        f"{MediaArguments.num_frames})")


def add_after_training_commands(
    sub: Any,
    *,
    add_data_flags: Callable[[argparse.ArgumentParser], None],
    read_data: Callable[[argparse.Namespace], tuple[Any, dict]],
    default_model: str,
) -> None:
    """Add ``generate``, ``eval``, ``report``, ``merge`` and ``push`` to the ``plm-tune`` subparsers ``sub``.

    ``eval`` and ``report`` read data the way ``plm-tune data`` does: the data flags, the reader of the data they
    name and the default model belong to ``plm_tune.apps.cli`` and are passed in (this module never imports it).
    """
    generate = sub.add_parser("generate", help="answer one prompt about images / videos / DICOM files")
    generate.add_argument("--model", help="base or merged model (Hub id or folder), or an adapter folder (default: "
                          f"the base --adapter was trained on, else {default_model})")
    generate.add_argument("--adapter", help="a trained adapter folder to apply on --model")
    generate.add_argument("--image", action="append", metavar="FILE", help="an image (repeatable)")
    generate.add_argument("--video", action="append", metavar="FILE", help="a video file (repeatable)")
    generate.add_argument("--dicom", action="append", metavar="FILE",
                          help="a .dcm file: one frame is an image, several a video (repeatable)")
    generate.add_argument("--start", type=float, metavar="SECONDS",
                          help="with --video: the clip starts here (default: the video's start)")
    generate.add_argument("--end", type=float, metavar="SECONDS",
                          help="with --video: the clip ends here (default: the video's end)")
    generate.add_argument("--prompt", required=True, help="the question or instruction")
    generate.add_argument("--system", help="system prompt (default: PLM's)")
    generate.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    generate.add_argument("--temperature", type=float, default=1.0)
    generate.add_argument("--top-p", dest="top_p", type=float, default=1.0)
    _add_generation_flags(generate)
    generate.set_defaults(func=_generate, default_model=default_model)

    evaluate = sub.add_parser("eval", help="answer an eval split, score it (base vs finetuned) and write a report")
    add_data_flags(evaluate)
    evaluate.add_argument("--model", help="base model (default: the config's model_name_or_path, else the base "
                          f"--adapter was trained on, else {default_model})")
    evaluate.add_argument("--adapter", help=f"trained adapter folder; its {EVAL_DATA}/ (the recipe's held-out split) "
                          "is the default eval data")
    evaluate.add_argument("--eval-split", dest="eval_split", type=float, default=0.0,
                          help="with --data-adapter / a data: section: evaluate this held-out share")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of that split (the recipe's seed)")
    evaluate.add_argument("--limit", type=int, help="evaluate only the first N samples")
    evaluate.add_argument("--batch-size", dest="batch_size", type=int, default=8)
    evaluate.add_argument("--no-base", dest="no_base", action="store_true", help="skip the base model's answers")
    evaluate.add_argument("--output", help="folder for eval.json and report.html (default: ADAPTER/eval, or "
                          "eval-2, eval-3, ... when it holds an eval already)")
    evaluate.add_argument("--overwrite", action="store_true", help="replace an eval.json already in the folder")
    evaluate.add_argument("--no-report", dest="no_report", action="store_true", help="no HTML report")
    evaluate.add_argument("--max-new-tokens", dest="max_new_tokens", type=int,
                          help="longest answer (default: the run's eval_max_new_tokens, else "
                          f"{MAX_NEW_TOKENS})")
    evaluate.set_defaults(func=_eval, read_data=read_data, default_model=default_model)

    report = sub.add_parser("report", help="(re)write the HTML report of an eval.json")
    report.add_argument("eval_json", help="eval.json written by plm-tune eval or a recipe")
    report.add_argument("--output", help="HTML file (default: report.html next to eval.json)")
    report.add_argument("--max-samples", dest="max_samples", type=int, default=50, help="cases in the gallery")
    report.set_defaults(func=_report, read_data=read_data)

    merge = sub.add_parser("merge", help="merge a LoRA / DoRA / QLoRA adapter into its base: one standalone model")
    merge.add_argument("--adapter", required=True, help="adapter folder (the recipe's output_dir)")
    merge.add_argument("--output", required=True, help="folder for the merged model")
    merge.add_argument("--base-model", dest="base_model",
                       help="base model id or folder (default: the adapter's adapter_config.json; another model "
                       "than the one it records is refused without --allow-other-base)")
    merge.add_argument("--allow-other-base", dest="allow_other_base", action="store_true",
                       help="merge onto a --base-model other than the recorded one (the same model moved or renamed)")
    merge.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                       help="default: bfloat16 on a bf16 GPU, else float32")
    merge.set_defaults(func=_merge)

    push = sub.add_parser("push", help="upload an adapter, a full finetune or a merged model with a model card to "
                          "the Hugging Face Hub (token: HF_TOKEN or `hf auth login`, never a flag)")
    push.add_argument("--folder", "--adapter", dest="folder", required=True,
                      help="what to upload: an adapter or a full finetune (a run's output_dir), or a merged model "
                      "(`plm-tune merge --output`)")
    push.add_argument("--repo-id", dest="repo_id", required=True, help="user/name or org/name")
    push.add_argument("--private", action="store_true", help="create the repo private")
    push.add_argument("--base-model", dest="base_model",
                      help="Hub id of the base for the model card (default: the one the folder records)")
    push.add_argument("--include", action="append", metavar="FILE",
                      help=f"also upload {EVAL_DIR}/{EVAL_JSON} or {EVAL_DIR}/{REPORT_HTML} (they quote your eval "
                      "data; nothing else can be added)")
    push.add_argument("--overwrite-card", dest="overwrite_card", action="store_true",
                      help="replace a README.md you wrote with plm-tune's card (generated cards always are)")
    push.add_argument("--commit-message", dest="commit_message",
                      help="the commit's (or pull request's) title (default: 'Upload PLM adapter with plm-tune')")
    push.add_argument("--revision", help="the branch to commit to, created from main if missing (default: main)")
    push.add_argument("--create-pr", dest="create_pr", action="store_true",
                      help="open a pull request against main with the upload instead of committing to main")
    push.add_argument("--dry-run", dest="dry_run", action="store_true",
                      help="show the files and the card that would be uploaded, and the repo; no network")
    push.set_defaults(func=_push)
