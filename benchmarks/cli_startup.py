"""How long ``plm-tune --help`` and each subcommand's ``--help`` take, and which packages they import.

    .venv/bin/python benchmarks/cli_startup.py            # median of 5 fresh processes per command; ~15 s
    .venv/bin/python benchmarks/cli_startup.py --runs 9

Each run is a fresh ``python -m plm_tune.apps.cli ... --help`` process, timed from start to exit by this script
(wall clock, interpreter start-up included), so the number is what a user waits for. The second part lists
the packages outside the standard library that ``--help`` imports (one in-process parse, ``sys.modules``):
torch, transformers, peft or trl there would mean a lazy import was lost. The goal is under 1 s per command.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = [[], ["tiny-model"], ["data", "inspect"], ["data", "check"], ["plan"], ["generate"], ["eval"],
            ["report"], ["merge"], ["push"]]
HEAVY = ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "deepspeed", "bitsandbytes")


def help_seconds(command: list[str], runs: int) -> float:
    """Median wall-clock seconds of ``plm-tune COMMAND --help`` over ``runs`` fresh processes."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "plm_tune.apps.cli", *command, "--help"], check=True,
                       stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def imported_packages() -> list[str]:
    """Top-level packages outside the standard library that parsing ``--help`` imports, in a fresh process."""
    code = (
        "import contextlib, io, sys\nimport plm_tune.apps.cli\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    plm_tune.apps.cli.build_parser().parse_args(['--help'])\n"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules} - set(sys.stdlib_module_names))))"
    )
    result = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return [name for name in result.stdout.split() if not name.startswith("_")]  # __main__, editable finders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="processes per command (the median is reported)")
    args = parser.parse_args()

    print(f"{'command':<28} {'median s':>9}")
    worst = 0.0
    for command in COMMANDS:
        seconds = help_seconds(command, args.runs)
        worst = max(worst, seconds)
        print(f"{' '.join(['plm-tune', *command, '--help']):<28} {seconds:>9.2f}")
    packages = imported_packages()
    heavy = [name for name in packages if name in HEAVY]
    print(f"\nslowest: {worst:.2f} s ({'under' if worst < 1 else 'OVER'} the 1 s goal)")
    print(f"imported by --help: {', '.join(packages) or 'nothing outside the standard library'}")
    print(f"heavy packages imported: {', '.join(heavy) or 'none'}")


if __name__ == "__main__":
    main()
