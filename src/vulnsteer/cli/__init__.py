"""The ``vulnsteer`` command: a thin layer over the library API.

Every subcommand has ``--help``; the global flags (``-v``, ``--no-progress``) work before and after the
subcommand. Bad input prints one line naming the file, field or option and exits 2; an unexpected exception
prints one line and exits 3 (``-v`` shows the traceback); Ctrl-C exits 130, and SIGTERM (``kill``, a job's
timeout) 143 after the same clean-up: temporary folders removed, nothing half-written.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import re
import signal
import sys
import threading
import traceback
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

from .._version import __version__
from . import data, detect, detector, diff, experiment, scan, transfer, vectors
from .options import HelpFormatter

__all__ = [
    "EXIT_BROKEN_PIPE",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_PROBLEMS",
    "EXIT_TERMINATED",
    "EXIT_USAGE",
    "build_parser",
    "main",
]

#: ``data validate`` found problems.
EXIT_PROBLEMS = 1
#: Bad usage or input: a one-line message names the file, field or option.
EXIT_USAGE = 2
#: An unexpected exception (a bug): one line, the traceback with ``-v``.
EXIT_INTERNAL = 3
#: Interrupted (Ctrl-C): finished work is kept.
EXIT_INTERRUPTED = 130
#: Terminated (SIGTERM: ``kill``, a job's timeout): cleaned up as after Ctrl-C, 128 + SIGTERM as a shell reports it.
EXIT_TERMINATED = 143
#: The reader of the output went away (``vulnsteer ... | head``): 128 + SIGPIPE, as a shell reports it.
EXIT_BROKEN_PIPE = 141

#: Each command module's ``register(subparsers)`` adds its subcommands.
COMMANDS = (experiment, transfer, detector, vectors, detect, data, scan, diff)

EPILOG = f"""\
exit codes:
  0    success
  {EXIT_PROBLEMS}    `data validate` found problems (listed one per line); `scan` or `diff` failed as a gate
  {EXIT_USAGE}    bad usage or input: one line names the file, field or option
  {EXIT_INTERNAL}    internal error (a bug): one line; rerun with -v for the traceback
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C): finished work is kept, rerun the same command to resume
  {EXIT_TERMINATED}  terminated (SIGTERM): the same, after the same clean-up
"""


#: What a subcommand's help says about exit codes (the table is in ``vulnsteer --help``).
SEE_EXIT_CODES = "exit codes: see `vulnsteer --help`"


def _add_global_flags(parser: argparse.ArgumentParser, top: bool) -> None:
    """``-v`` and ``--no-progress``; below the top level their default is SUPPRESS, so a flag given before the
    subcommand is not reset by the subcommand's parser."""
    group = parser.add_argument_group("global options")
    default: Any = False if top else argparse.SUPPRESS
    group.add_argument(
        "-v", "--verbose", action="store_true", default=default, help="more messages; tracebacks for errors"
    )
    group.add_argument(
        "--no-progress",
        action="store_true",
        default=default,
        help="no progress output (bars on a terminal, one line per phase in a log)",
    )


def _subparsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
                yield sub
                yield from _subparsers(sub)


#: Values that start with "-" but are numbers, not options: ``-8,15`` (``--layers``), ``-1e3``, ``-.5``, ``-inf``
#: (argparse's own pattern takes only ``-8`` and ``-0.5``, so ``--layers -8,15`` was "expected one argument").
_NEGATIVE_VALUE = re.compile(r"^-(\d|\.\d|inf|nan)", re.IGNORECASE)


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line naming the option, with a pointer to ``--help``, and
    that reads ``-8,15`` and ``-1e3`` as values."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = _NEGATIVE_VALUE

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="vulnsteer",
        description="Steer code LLMs toward finding vulnerabilities, and measure honestly whether it helps. "
        "Sign convention: positive strength pushes toward reporting a vulnerability.",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    _add_global_flags(parser, top=True)
    parser.add_argument("--version", action="version", version=f"vulnsteer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    for child in _subparsers(parser):  # the exit codes are in the top-level help, once
        child.formatter_class = HelpFormatter
        if child.epilog is None:
            child.epilog = SEE_EXIT_CODES
        _add_global_flags(child, top=False)
    return parser


#: Library errors that mean bad input or environment, as (module, class); looked up only in modules already
#: imported (an error cannot come from a module that was never loaded), so that reporting it imports no torch.
_LIBRARY_ERRORS = (
    ("vulnsteer.lm.model", "ModelLoadError"),
    ("vulnsteer.lm.nnsight_backend", "NNSightMissingError"),
    ("vulnsteer.steering.vectors", "VectorMismatchError"),
    ("vulnsteer.experiment.rundir", "RunDirBusyError"),
    ("vulnsteer.lm.ray_pool", "WorkerFailedError"),
)


def _known_errors() -> tuple[type[BaseException], ...]:
    """Errors in the user's input or environment: one line, exit 2 (``DataError``, ``UnknownCWEError``,
    ``OutputError``, ``UsageError`` and ``TokenBudgetError`` are ``ValueError``s)."""
    errors: list[type[BaseException]] = [ValueError, KeyError, OSError]
    for module_name, name in _LIBRARY_ERRORS:
        error = getattr(sys.modules.get(module_name), name, None)  # (a module whose import failed half-way lacks it)
        if isinstance(error, type) and issubclass(error, BaseException):
            errors.append(error)
    return tuple(errors)


def _message(exc: BaseException) -> str:
    """One line for a known error: a KeyError's text without quotes, an OSError with its file name."""
    if isinstance(exc, KeyError) and exc.args:
        text = str(exc.args[0])
    elif isinstance(exc, OSError) and exc.filename and str(exc.filename) not in str(exc):
        text = f"{exc.filename}: {exc.strerror or exc}"
    elif isinstance(exc, OSError) and exc.strerror and exc.filename:
        text = f"{exc.filename}: {exc.strerror}"
    else:
        text = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        text += "; free some space and rerun the same command (finished work is kept)"
    return " ".join(text.split()) if "\n" in text else text


def _is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"


def _clear_progress() -> None:
    """Erase progress bars that are still drawn (an error or Ctrl-C interrupted their loop): no stray frame is
    left before the message."""
    tqdm_module = sys.modules.get("tqdm")
    if tqdm_module is None:
        return
    for bar in list(getattr(tqdm_module.tqdm, "_instances", ())):
        try:
            bar.leave = False
            bar.close()
        except Exception:  # pragma: no cover - best effort on the way out
            pass


@contextlib.contextmanager
def _configure_progress(no_progress: bool) -> Iterator[None]:
    """``--no-progress`` silences every progress display; without a terminal, libraries draw no bars (vulnsteer's
    own phases print one line each, see :mod:`vulnsteer.progress`). The environment is restored on exit, so an
    in-process ``main()`` leaves no setting behind."""
    saved = {name: os.environ.get(name) for name in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS")}
    try:
        _silence_progress(no_progress)
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _silence_progress(no_progress: bool) -> None:
    if no_progress:
        os.environ["TQDM_DISABLE"] = "1"
    if no_progress or not sys.stderr.isatty():
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # read when huggingface_hub and transformers are imported
        if "huggingface_hub" in sys.modules:  # already imported (main() called in-process): tell them directly
            from huggingface_hub.utils import disable_progress_bars

            disable_progress_bars()
        if "transformers" in sys.modules:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()


class Terminated(KeyboardInterrupt):
    """SIGTERM raised where the program is, as Ctrl-C is: ``with`` blocks and ``finally`` clauses run on the way
    out (temporary folders removed, partial files discarded), where the default action would end the process
    without them."""


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """While a command runs, SIGTERM raises :class:`Terminated`; the handler before is put back after, so an
    in-process ``main()`` leaves none behind (only the main thread can set one: elsewhere nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_terminated(signum: int, frame: object) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _fail(line: str, code: int, verbose: bool) -> int:
    _clear_progress()
    if verbose:
        traceback.print_exc()
    print(f"vulnsteer: {line}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        with _configure_progress(args.no_progress), _terminate_as_interrupt():
            result: int = args.func(args)
        return result
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, Terminated)
        return _fail(
            f"{'terminated' if terminated else 'interrupted'}; finished work is kept (rerun the same command to "
            "resume)",
            EXIT_TERMINATED if terminated else EXIT_INTERRUPTED,
            args.verbose,
        )
    except BrokenPipeError:  # `vulnsteer ... | head`: the reader left; say nothing more
        with contextlib.suppress(OSError, ValueError):  # the interpreter flushes stdout on exit: point it nowhere
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except _known_errors() as exc:
        return _fail(f"error: {_message(exc)}", EXIT_USAGE, args.verbose)
    except Exception as exc:
        if _is_out_of_memory(exc):
            line = f"error: out of memory ({_message(exc)}); lower --batch-size or --max-code-tokens"
            return _fail(line, EXIT_USAGE, args.verbose)
        detail = _message(exc)
        line = f"internal error: {type(exc).__name__}: {detail} (rerun with -v for the traceback)"
        return _fail(line, EXIT_INTERNAL, args.verbose)
