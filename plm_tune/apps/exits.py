"""How plm-tune's commands and recipes end: one line for an error, and an exit code that means one thing.

| code | meaning |
| ---- | ------- |
| 0 ``OK`` | done |
| 1 ``DATA_PROBLEMS`` | problems found in the data: ``plm-tune data check`` found some, or a run stopped at a bad record (a ``plm_tune.errors.DataError``, ``reason_of``) |
| 2 ``USAGE`` | the command cannot run as given: a bad flag, option value or config key, a missing file or folder, an unknown model id, the Hub out of reach (argparse exits 2 too) |
| 3 ``CRASH`` | an unexpected exception: its type and message, and ``PLM_TUNE_DEBUG=1`` for the traceback |

``run_main`` applies it to a command (``plm_tune.apps.cli.main``), ``run_recipe`` to a recipe's ``main``.
``PLM_TUNE_DEBUG=1`` lets the exception through instead: Python prints the traceback and exits 1.

    >>> exit_code(ValueError("max_tiles must be >= 1"))
    2
    >>> exit_code(ZeroDivisionError("division by zero"))
    3
    >>> error_line(ZeroDivisionError("division by zero"))
    'ZeroDivisionError: division by zero (PLM_TUNE_DEBUG=1 for the traceback)'
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from plm_tune.errors import reason_of
from plm_tune.hub import HubUnreachableError

__all__ = ["CRASH", "DATA_PROBLEMS", "DEBUG_ENV", "EXIT_CODES_HELP", "OK", "USAGE", "UsageError", "error_line",
           "exit_code", "hub_unreachable", "run_main", "run_recipe"]

OK, DATA_PROBLEMS, USAGE, CRASH = 0, 1, 2, 3
DEBUG_ENV = "PLM_TUNE_DEBUG"  # "1": an error's traceback instead of its one line

EXIT_CODES_HELP = """exit codes:
  0  done
  1  problems found in the data (data check found some, or a run stopped at a bad record)
  2  usage: the command cannot run as given (a bad flag, value or config key, a missing file or folder, an
     unknown model id, the Hugging Face Hub out of reach)
  3  a crash: an unexpected error, printed as one line (PLM_TUNE_DEBUG=1 for the traceback)"""

# A user's mistake is named by the message plm-tune (or the library it called) raised, fix included.
_USER_ERRORS = (ValueError, FileNotFoundError, ImportError, NotADirectoryError, IsADirectoryError, PermissionError)
# plm-tune's own errors whose one-line message says what to do ("module:class"). Looked up in sys.modules only:
# an error of a class can exist only once its module is imported, and importing them here would cost seconds.
_NAMED_ERRORS = ("plm_tune.after_training.push:PushError", "plm_tune.modeling.devices:UnusableGPUError",
                 "plm_tune.training.checkpoints:CheckpointWriteError")


class UsageError(ValueError):
    """A command line the parser refused (a bad flag value), as one line instead of argparse's usage text."""


def exit_code(error: BaseException) -> int:
    """The exit code for ``error`` (``DATA_PROBLEMS``, ``USAGE`` or ``CRASH``; see the module's table).

    Data first: a ``DataError`` is a ``ValueError``, and a wrapper that names the sample keeps its cause's
    reason (``reason_of``).
    """
    if reason_of(error) is not None:
        return DATA_PROBLEMS
    named = tuple(getattr(sys.modules[module], name) for module, _, name in (n.partition(":") for n in _NAMED_ERRORS)
                  if module in sys.modules)
    if isinstance(error, (*_USER_ERRORS, *named)) or hub_unreachable(error) is not None or _hub_refused(error):
        return USAGE
    return CRASH


def error_line(error: BaseException, rewrite: Callable[[str], str] | None = None) -> str:
    """One line for ``error``: the Hub out of reach, a user's mistake (its message, fix included), or an
    unexpected exception (its type and message, and the hint to set ``PLM_TUNE_DEBUG=1``).

    Args:
        error: what was raised.
        rewrite: applied to the line before it is cleaned, e.g. the CLI's ``as_flags`` (a library message names
            the parameter `base_model`, the command line the flag --base-model).

    Returns:
        The line, whitespace collapsed, any Hub token removed (``plm_tune.after_training.push.redact``).
    """
    from plm_tune.after_training.push import redact

    repo = hub_unreachable(error)
    if isinstance(error, HubUnreachableError):
        line = str(error)  # names the id and the fix already
    elif repo is not None:
        line = (f"cannot reach the Hugging Face Hub (offline or no network) for {repo or 'what this needs'}, and it "
                "is not in the local cache: connect and run again, or use a local folder instead "
                "(`plm-tune tiny-model .cache/tiny-plm` makes a tiny model to try things offline)")
    elif exit_code(error) != CRASH:
        line = str(error)
    else:
        line = f"{type(error).__name__}: {error} ({DEBUG_ENV}=1 for the traceback)"
    if rewrite is not None:
        line = rewrite(line)
    return " ".join(redact(line).split())


def run_main(func: Callable[..., int | None], *args: Any, program: str,
             rewrite: Callable[[str], str] | None = None) -> int:
    """``func(*args)``'s exit code (None counts as ``OK``); an exception becomes one stderr line and its code.

    Args:
        func, args: the command to run.
        program: how the line starts: ``"<program>: error: <error_line>"`` (``plm-tune data check``).
        rewrite: passed to ``error_line``.

    Raises:
        Exception: whatever ``func`` raised, when ``PLM_TUNE_DEBUG`` is set (the traceback instead of the line).
    """
    try:
        code = func(*args)
    except BrokenPipeError:
        # The reader left (`plm-tune recipes | head`): not an error. Python would complain again at exit while
        # flushing stdout, so stdout goes to devnull first (the Python docs' recipe for SIGPIPE).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return OK
    except Exception as error:
        if os.environ.get(DEBUG_ENV):
            raise
        print(f"{program}: error: {error_line(error, rewrite)}", file=sys.stderr)
        return exit_code(error)
    return OK if code is None else code


def run_recipe(main: Callable[..., Any], make_parser: Callable[[], Any]) -> int:
    """Parse a recipe's config and command line (``make_parser()``, a ``trl.TrlParser``) and run ``main`` on it,
    through ``run_main``: an error, parsing included, is one line and an exit code.

    TRL's parser raises ValueError for an unknown key; a bad flag value goes to ``parser.error``, which here
    raises ``UsageError`` instead of printing the usage of every SFTConfig field (a hundred lines) and exiting 2.

    Example (a recipe's last lines)::

        if __name__ == "__main__":
            from plm_tune.apps.exits import run_recipe

            raise SystemExit(run_recipe(main, make_parser))
    """
    program = Path(sys.argv[0]).name

    def refuse(message: str) -> None:
        raise UsageError(f"{message} (python {program} --help lists the options)")

    def parse_and_run() -> Any:
        parser = make_parser()
        parser.error = refuse  # this parser instance only: its usage text is too long to be one line
        return main(*parser.parse_args_and_config())

    return run_main(parse_and_run, program=program)


def hub_unreachable(error: BaseException | None) -> str | None:
    """None, unless ``error`` or an exception behind it says the Hub could not be reached (offline, no network):
    then the quoted ``'org/name'`` one of their messages names, or ``""``."""
    # By class name: huggingface_hub's offline errors and the transport errors of requests / httpx / httpcore;
    # by text: what transformers and datasets say when they wrap them (a recipe's error comes as text only).
    names = {"OfflineModeIsEnabled", "LocalEntryNotFoundError", "ConnectionError", "ConnectError",
             "ConnectTimeout", "NetworkError", "TimeoutException"}
    texts = ("couldn't connect to", "couldn't reach", "offlinemodeisenabled")
    found, repo = False, ""
    for current in _chain(error):
        text = str(current)
        if names & {cls.__name__ for cls in type(current).__mro__} or any(t in text.lower() for t in texts):
            found = True
        repo = repo or next(iter(re.findall(r"'([\w.-]+/[\w.-]+)'", text)), "")
    return (repr(repo) if repo else "") if found else None


def _hub_refused(error: BaseException) -> bool:
    """Whether the Hub answered that the repo, revision or file does not exist (or is gated) somewhere in the
    chain: transformers wraps these in an OSError ("... is not a valid model identifier ...")."""
    if "huggingface_hub.errors" not in sys.modules:
        return False
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    return any(isinstance(e, (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError))
               for e in _chain(error))


def _chain(error: BaseException | None):
    """``error`` and the exceptions behind it (``__cause__``, else ``__context__``), each once."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        # `raise ... from None` hides the context on purpose (a push's error may quote the token): so do we.
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
