"""The ``vulnsteer`` command: a thin layer over the library API.

Every subcommand has ``--help``. Errors in input print one clear line naming the file or field and exit 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from . import data, detect, experiment, scan, vectors

__all__ = ["build_parser", "main"]

EXIT_USAGE = 2

#: Each command module's ``register(subparsers)`` adds its subcommands.
COMMANDS = (experiment, vectors, detect, data, scan)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vulnsteer",
        description="Steer code LLMs toward finding vulnerabilities, and measure honestly whether it helps. "
        "Sign convention: positive strength pushes toward reporting a vulnerability.",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
    return parser


def _known_errors() -> tuple[type[BaseException], ...]:
    from ..cwe import UnknownCWEError
    from ..lm.model import ModelLoadError
    from ..steering.vectors import VectorMismatchError

    errors: list[type[BaseException]] = [
        ModelLoadError,
        VectorMismatchError,
        UnknownCWEError,
        FileNotFoundError,
        ValueError,
        KeyError,
    ]
    try:
        from ..data.loaders import DataError

        errors.insert(0, DataError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if args.no_progress:
        import os

        os.environ["TQDM_DISABLE"] = "1"
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    try:
        result: int = args.func(args)
        return result
    except KeyboardInterrupt:
        print("vulnsteer: interrupted; finished work is kept (rerun the same command to resume)", file=sys.stderr)
        return 130
    except _known_errors() as exc:
        if args.verbose:
            raise
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"vulnsteer: error: {message}", file=sys.stderr)
        return EXIT_USAGE
