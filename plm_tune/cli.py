"""The ``plm-tune`` command line. Each subcommand is a thin shell over a library function."""

from __future__ import annotations

import argparse
import sys


def _tiny_model(args: argparse.Namespace) -> int:
    from plm_tune.testing import build_tiny_plm

    path = build_tiny_plm(args.path, seed=args.seed)
    print(f"Wrote a tiny random-init PLM to {path}")
    print(f"Load it with AutoModelForImageTextToText.from_pretrained('{path}') and AutoProcessor.from_pretrained('{path}').")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="plm-tune", description="Finetune Perception Language Models (PLM).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    tiny = sub.add_parser("tiny-model", help="write a tiny random-init PLM (offline tests and demos)")
    tiny.add_argument("path", help="output folder")
    tiny.add_argument("--seed", type=int, default=0, help="random seed (same seed, same weights)")
    tiny.set_defaults(func=_tiny_model)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
