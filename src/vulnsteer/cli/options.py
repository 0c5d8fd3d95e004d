"""Argument groups, value parsers and checks shared by several commands.

Every option has help text that shows its default (:class:`HelpFormatter` appends it), and an option that several
commands share has one default, taken from :mod:`vulnsteer.defaults`.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterable
from typing import Any

from ..defaults import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_CODE_TOKENS,
    DEFAULT_STEER_POSITIONS,
    DEFAULT_UNIT,
)

__all__ = [
    "DTYPES",
    "DefaultInt",
    "DefaultStr",
    "HelpFormatter",
    "UsageError",
    "add_data_args",
    "add_model_args",
    "add_steer_args",
    "add_vector_args",
    "code_token_budget",
    "finite_float",
    "floats",
    "ints",
    "is_default",
    "load",
    "positive_int",
    "require",
    "run_config",
]


class UsageError(ValueError):
    """Options that do not go together (``--strength`` without ``--vector``): one line, exit 2."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Appends ``(default: ...)`` to every option's help that does not already state its default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if not action.option_strings or "default" in text.lower() or action.default is argparse.SUPPRESS:
            return text
        if action.default is None or action.default is False or action.default == [] or action.default == ():
            return text
        value = action.default
        if isinstance(value, (list, tuple)):
            value = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
        return f"{text} (default: {str(value).replace('%', '%%')})"


def _number_list(text: str, convert: Any, what: str) -> tuple[Any, ...]:
    try:
        values = tuple(convert(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}")
    return values


def floats(text: str) -> tuple[float, ...]:
    """Comma-separated finite numbers (``--strengths -1,0.3``)."""
    values: tuple[float, ...] = _number_list(text, float, "numbers")
    if not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected finite numbers, got {text!r}")
    return values


def finite_float(text: str) -> float:
    """One finite number (``nan`` and ``inf`` are refused by name)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def ints(text: str) -> tuple[int, ...]:
    """Comma-separated integers (``--layers -8,15``)."""
    values: tuple[int, ...] = _number_list(text, int, "integers")
    return values


def positive_int(text: str) -> int:
    """An integer >= 1 (``--batch-size 0`` is refused by name: argparse prefixes the option)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def require(args: argparse.Namespace, needs: str, given: Iterable[tuple[str, str]]) -> None:
    """Refuse options that only mean something with *needs*: ``given`` is ``(option, dest)`` pairs; an option
    counts as given unless its value :func:`is_default`.

    >>> require(argparse.Namespace(vector=None, strength=3.0), "--vector", [("--strength", "strength")])
    Traceback (most recent call last):
    ...
    vulnsteer.cli.options.UsageError: --strength needs --vector (it has no effect without it)
    """
    for option, dest in given:
        if not is_default(getattr(args, dest, None)):
            raise UsageError(f"{option} needs {needs} (it has no effect without it)")


#: ``--dtype`` values (``auto``: bf16 on CUDA, fp32 on CPU).
DTYPES = ("auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16")


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        default=None,
        help="Hugging Face id, local directory or .gguf file (default: embedded SmolLM2-135M-Instruct)",
    )
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps or auto (default: cuda if available)")
    g.add_argument(
        "--dtype", default=None, choices=DTYPES, help="weights' dtype (default: auto = bf16 on CUDA, fp32 on CPU)"
    )
    g.add_argument(
        "--device-map",
        default=None,
        help="passed to from_pretrained, e.g. 'auto' to spread a large model over GPUs (default: none)",
    )
    g.add_argument("--trust-remote-code", action="store_true", help="allow model repositories to run their code")


def add_data_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    g = p.add_argument_group("data")
    g.add_argument(
        "--data", default=None, required=required, help="dataset file or folder (default: the bundled corpus)"
    )
    g.add_argument("--format", default=None, help="sven, juliet, paired-dir, castle, jsonl or csv (default: detected)")
    g.add_argument(
        "--cwe",
        action="append",
        default=[],
        help="restrict to these CWEs (repeatable: --cwe 89 --cwe 79; default: all)",
    )
    g.add_argument(
        "--merge-cwe", action="append", default=[], help="treat CWE FROM as TO, e.g. 77=78 (repeatable; default: none)"
    )
    g.add_argument("--keep-comments", action="store_true", help="do not strip comments (label leaks!)")
    add_code_tokens_arg(g)
    g.add_argument(
        "--max-pairs-per-cwe",
        type=positive_int,
        default=None,
        help="cap pairs per CWE (seeded choice; with --respect-upstream-split only train/val pairs are capped, "
        "the upstream val split stays whole; default: no cap)",
    )
    g.add_argument(
        "--duplicates",
        default="merge",
        choices=["merge", "drop", "keep"],
        help="code occurring in several splits (after stripping comments/whitespace): merge = one split "
        "group, nothing dropped (default); drop = drop val/test copies with their pair partner; keep = "
        "report only",
    )
    g.add_argument("--seed", type=int, default=0, help="split seed")
    g.add_argument(
        "--respect-upstream-split", action="store_true", help="use the dataset's own train/val split (val becomes test)"
    )


class DefaultInt(int):
    """An integer option's default, told apart from the same value given on the command line (argparse keeps a
    non-string default as it is). It is an ``int`` everywhere else.

    >>> isinstance(DefaultInt(512), DefaultInt), DefaultInt(512) + 1
    (True, 513)
    """


class DefaultStr(str):
    """A string option's default, told apart from the same value given on the command line (see
    :class:`DefaultInt`)."""


def is_default(value: object) -> bool:
    """Whether *value* is an option's untouched default (:class:`DefaultInt`, :class:`DefaultStr`) or unset
    (None, False, an empty tuple or list)."""
    return value is None or value is False or value in ((), []) or isinstance(value, (DefaultInt, DefaultStr))


def add_code_tokens_arg(g: Any) -> None:
    """``--max-code-tokens`` (one definition for every command that truncates code)."""
    g.add_argument(
        "--max-code-tokens",
        type=positive_int,
        default=DefaultInt(DEFAULT_MAX_CODE_TOKENS),
        help=f"token budget for the code; longer code is truncated around its changed lines (default: "
        f"{DEFAULT_MAX_CODE_TOKENS}, lowered to what fits the model's context; a larger value must fit it)",
    )


#: ``vulnsteer run``'s candidate strengths and unit (the same as :class:`~vulnsteer.experiment.RunConfig`'s;
#: literals here so that ``--help`` does not import torch).
RUN_STRENGTHS: tuple[float, ...] = (-1.0, -0.3, 0.3, 1.0)
RUN_UNIT = DEFAULT_UNIT


def add_vector_args(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """How vectors are fitted: ``--layers``, ``--position``, ``--method``, ``--batch-size``."""
    g = p.add_argument_group("vectors")
    g.add_argument(
        "--layers", type=ints, default=(), help="comma-separated layers, negatives allowed (default: the middle layer)"
    )
    g.add_argument(
        "--position",
        default="last",
        choices=["last", "code_mean"],
        help="activation position the vectors are fitted at",
    )
    g.add_argument(
        "--method",
        default="mean_diff",
        choices=["mean_diff", "pca", "logistic"],
        help="how a direction is fitted from secure and vulnerable activations",
    )
    g.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE, help="prompts per forward pass")
    return g


def add_steer_args(p: argparse.ArgumentParser) -> None:
    """:func:`add_vector_args` plus how they steer: ``--positions``, ``--unit``."""
    g = add_vector_args(p)
    g.title = "vectors and steering"
    g.add_argument(
        "--positions",
        dest="steer_positions",
        default=DEFAULT_STEER_POSITIONS,
        choices=["last", "prompt", "generated", "all"],
        help="token positions to steer",
    )
    g.add_argument(
        "--unit",
        default=DEFAULT_UNIT,
        choices=["raw", "relative"],
        help="raw: strength x vector; relative: strength x layer's mean hidden norm x unit vector",
    )


def run_config(args: argparse.Namespace, **extra: Any) -> Any:
    from ..experiment.engine import RunConfig

    modes = tuple(m.strip() for m in getattr(args, "modes", "logit").split(",") if m.strip())
    return RunConfig(
        model=args.model,
        data=args.data,
        format=args.format,
        cwes=tuple(args.cwe),
        merge_cwe=tuple(args.merge_cwe),
        layers=tuple(getattr(args, "layers", ()) or ()),
        position=getattr(args, "position", "last"),
        method=getattr(args, "method", "mean_diff"),
        unit=getattr(args, "unit", DEFAULT_UNIT),
        steer_positions=getattr(args, "steer_positions", DEFAULT_STEER_POSITIONS),
        modes=modes,
        batch_size=args.batch_size,
        seed=args.seed,
        respect_upstream=args.respect_upstream_split,
        keep_comments=args.keep_comments,
        max_code_tokens=int(args.max_code_tokens or DEFAULT_MAX_CODE_TOKENS),
        max_pairs_per_cwe=args.max_pairs_per_cwe,
        duplicates=args.duplicates,
        device=args.device,
        dtype=args.dtype,
        **extra,
    )


def code_token_budget(args: argparse.Namespace, max_new_tokens: int = 0) -> tuple[Any, Any, int]:
    """Before any weights load: the model's config and tokenizer, and the code budget: ``--max-code-tokens``
    checked against the context (a one-line error naming the option if it does not fit), or, when not given,
    the default lowered to what fits."""
    from ..lm.budget import check_token_budget, fit_code_tokens
    from ..lm.model import context_length, load_config, load_tokenizer

    config = load_config(args.model, trust_remote_code=args.trust_remote_code)
    tokenizer = load_tokenizer(args.model, trust_remote_code=args.trust_remote_code)
    context = context_length(config)
    name = args.model or "the default model"
    if is_default(args.max_code_tokens):
        preferred = int(args.max_code_tokens or DEFAULT_MAX_CODE_TOKENS)
        return (
            config,
            tokenizer,
            fit_code_tokens(context, tokenizer, max_new_tokens=max_new_tokens, preferred=preferred),
        )
    check_token_budget(context, tokenizer, args.max_code_tokens, max_new_tokens=max_new_tokens, model=name)
    return config, tokenizer, int(args.max_code_tokens)


def check_model_options(args: argparse.Namespace) -> None:
    """``--device`` and ``--dtype`` against this machine, before anything is loaded."""
    from ..lm.model import resolve_device

    resolve_device(args.device)


def load(args: argparse.Namespace) -> Any:
    from ..lm.model import load_model

    return load_model(
        args.model,
        device=args.device,
        dtype=args.dtype,
        device_map=args.device_map,
        trust_remote_code=args.trust_remote_code,
    )
