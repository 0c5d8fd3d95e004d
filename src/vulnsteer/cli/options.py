"""Argument groups, value parsers and checks shared by several commands.

Every option has help text that shows its default (:class:`HelpFormatter` appends it), and an option that several
commands share has one default, taken from :mod:`vulnsteer.config.defaults`.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterable, Sequence
from typing import Any

from ..config import UNIT_FLAGS, ExperimentConfig, Key, config_keys, parse_config
from ..config import load_config as load_experiment_config
from ..config.defaults import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_CODE_TOKENS,
    DEFAULT_STEER_POSITIONS,
    DEFAULT_UNIT,
)
from ..config.values import model_name, remote_option
from ..config.vocabulary import BACKEND_NAMES, DTYPES, POSITIONS, STRENGTH_UNITS

__all__ = [
    "STEERING_OPTIONS",
    "DefaultInt",
    "DefaultStr",
    "HelpFormatter",
    "UsageError",
    "add_config_args",
    "add_data_args",
    "add_model_args",
    "add_steering_args",
    "add_vector_args",
    "code_token_budget",
    "config_from_args",
    "data_config",
    "finite_float",
    "floats",
    "ints",
    "is_default",
    "load",
    "load_model_from_args",
    "overrides_from_args",
    "positive_int",
    "require",
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
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _remote(text: str) -> bool | str:
    """``--remote``: on, off, local or an http(s) URL (:func:`~vulnsteer.config.values.remote_option`)."""
    try:
        return remote_option(text, "--remote")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--remote: ")) from None


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


def check_steering_options(args: argparse.Namespace, generates: bool, why: str) -> None:
    """The steering options of ``detect`` and ``scan`` (:data:`STEERING_OPTIONS`): only with ``--vector`` (a
    ``--detector`` takes ``--allow-model-mismatch`` alone), ``--vector`` needs ``--strength``, and the positions
    must steer something where *generates* is false (*why* says so)."""
    if args.detector is not None:
        require(args, "--vector", STEERING_OPTIONS[:-1])
    elif args.vector is None:
        require(args, "--vector", STEERING_OPTIONS)
    elif args.strength is None:
        raise UsageError("--vector needs --strength (positive = toward 'vulnerable', e.g. --strength 0.3)")
    if args.vector is not None:
        check_steered_positions(args.positions, generates, why)


def check_steered_positions(positions: str, generates: bool, why: str) -> None:
    """Refuse ``--positions generated`` where nothing is generated: the steered result would be the unsteered one.

    >>> try:
    ...     check_steered_positions("generated", False, "--mode logit generates nothing")
    ... except UsageError as exc:
    ...     print(str(exc).split(":")[0])
    --positions generated steers only generated tokens, and --mode logit generates nothing
    """
    if str(positions) == "generated" and not generates:
        raise UsageError(
            f"--positions generated steers only generated tokens, and {why}: the result would be unsteered "
            "(use last, answer, prompt or all)"
        )


def _model_name(text: str) -> str:
    """``--model``: as the configuration key ``model.name`` reads it (an empty name is refused)."""
    try:
        return str(model_name(text, "--model"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--model: ")) from None


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        default=None,
        type=_model_name,
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
    g.add_argument(
        "--layers-path",
        default=None,
        help="dotted attribute path of the decoder blocks, for an architecture vulnsteer does not know (e.g. "
        "transformer.blocks; default: found automatically)",
    )
    g.add_argument(
        "--backend",
        default="hooks",
        choices=BACKEND_NAMES,
        help="how steered and recorded passes run: PyTorch forward hooks, or nnsight tracing contexts (same "
        "numbers; pip install 'vulnsteer[nnsight]')",
    )
    g.add_argument(
        "--remote",
        default=False,
        type=_remote,
        metavar="on|local|URL",
        help="with --backend nnsight: run every pass on an NDIF server (on; NDIF_API_KEY/NDIF_HOST configure it), "
        "on the host at URL, or simulate the remote path here (local) (default: run here)",
    )


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


#: Options that only mean something with ``--vector`` (option, dest): :func:`add_steering_args` adds them.
STEERING_OPTIONS = (
    ("--strength", "strength"),
    ("--layers", "layers"),
    ("--positions", "positions"),
    ("--unit", "unit"),
    ("--allow-model-mismatch", "allow_model_mismatch"),
)


def add_steering_args(g: Any) -> None:
    """How ``--vector`` is applied (``detect``, ``scan``): :data:`STEERING_OPTIONS`; the caller adds ``--vector``
    and refuses these without it (``require(args, "--vector", STEERING_OPTIONS)``)."""
    g.add_argument(
        "--strength",
        type=finite_float,
        default=None,
        help="positive = toward 'vulnerable' (no default: required with --vector; e.g. 0.3 with --unit relative)",
    )
    g.add_argument("--layers", type=ints, default=(), help="layers to steer (default: all of the vector's)")
    g.add_argument(
        "--positions",
        default=DefaultStr(DEFAULT_STEER_POSITIONS),
        choices=list(POSITIONS),
        help=f"token positions to steer (default: {DEFAULT_STEER_POSITIONS})",
    )
    g.add_argument(
        "--unit",
        default=DefaultStr(DEFAULT_UNIT),
        choices=["raw", "relative"],
        help="raw: strength x vector; relative: strength x the layer's mean hidden-state norm x unit vector "
        f"(default: {DEFAULT_UNIT})",
    )
    g.add_argument("--allow-model-mismatch", action="store_true", help="use a vector fitted on another model")


def add_vector_args(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """How vectors are fitted: ``--layers``, ``--position``, ``--method``, ``--batch-size``."""
    g = p.add_argument_group("vectors")
    g.add_argument(
        "--layers", type=ints, default=(), help="comma-separated layers, negatives allowed (default: the middle layer)"
    )
    g.add_argument(
        "--pooling",
        default="last",
        choices=["last", "code_mean"],
        help="activation pooling the vectors are fitted at: last (the answer position) or code_mean",
    )
    g.add_argument(
        "--method",
        default="mean_diff",
        choices=["mean_diff", "pca", "logistic"],
        help="how a direction is fitted from secure and vulnerable activations",
    )
    g.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE, help="prompts per forward pass")
    return g


def data_config(args: argparse.Namespace) -> Any:
    """The ``[data]`` section from the plain data options (:func:`add_data_args`); validated like a file's."""
    body: dict[str, Any] = {
        "cwes": list(args.cwe),
        "merge": list(args.merge_cwe),
        "seed": args.seed,
        "duplicates": args.duplicates,
        "respect_upstream": bool(args.respect_upstream_split),
        "keep_comments": bool(args.keep_comments),
        "max_code_tokens": int(args.max_code_tokens or DEFAULT_MAX_CODE_TOKENS),
        "max_pairs_per_cwe": args.max_pairs_per_cwe or 0,
    }
    body.update({k: v for k, v in (("path", args.data), ("format", args.format)) if v})
    flags = {key.name: str(key.flag or key.dotted) for key in config_keys() if key.section == "data"}
    overrides = {f"data.{name}": (value, flags[name]) for name, value in body.items()}
    return parse_config({}, "command line", overrides).data  # (an error names the flag)


def code_token_budget(args: argparse.Namespace, max_new_tokens: int = 0) -> tuple[Any, Any, int]:
    """Before any weights load: the model's config and tokenizer, and the code budget: ``--max-code-tokens``
    checked against the context (a one-line error naming the option if it does not fit), or, when not given,
    the default lowered to what fits."""
    from ..lm.budget import check_token_budget, fit_code_tokens
    from ..lm.source import context_length, load_model_config, load_tokenizer

    config = load_model_config(args.model, trust_remote_code=args.trust_remote_code)
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
    """The model the ``model`` flags name (:func:`add_model_args`), loaded as a run's ``[model]`` section is."""
    from ..config import ModelSection
    from ..experiment.preflight import load_configured_model

    keys = ("device", "dtype", "device_map", "trust_remote_code", "layers_path", "backend", "remote")
    return load_configured_model(ModelSection(name=args.model, **{key: getattr(args, key) for key in keys}))


# ------------------------------------------------------------------------------------------------ config keys
# `run`, `sweep` and `evaluate` take one flag per configuration key (vulnsteer.config.sections declares each
# key once: default, parser, help, flag), so a flag and the TOML key it sets are validated alike.


def _words(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _default_text(key: Key) -> str:
    value = key.default
    if key.name == "strengths":
        return ",".join(f"{s:g}" for _, s in value) + f" ({value[0][0]})"
    if value is None or value == ():
        return {
            "model.name": "the embedded SmolLM2-135M-Instruct",
            "data.path": "the bundled corpus",
            "steering.layers": "the middle layer",
            "run.out": "runs/<command>-<timestamp>",
        }.get(key.dotted, "not set")
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value).lower() if isinstance(value, bool) else str(value)


_CLI_TYPES: dict[str, dict[str, Any]] = {
    "str": {},
    "int": {"type": int, "metavar": "N"},
    "positive": {"type": positive_int, "metavar": "N"},
    "float": {"type": float, "metavar": "X"},
    "bool": {"action": "store_true"},
    "nobool": {"action": "store_false"},
    "csv": {"type": _words, "metavar": "A,B"},
    "floats": {"type": lambda text: list(floats(text)), "metavar": "X,Y"},
    "repeat": {"action": "append"},
    "layers": {"action": "append", "type": lambda text: list(ints(text)), "metavar": "L[,L...]"},
}


def _dest(key: Key) -> str:
    return f"cfg__{key.section}__{key.name}"


def add_config_args(
    parser: argparse.ArgumentParser, sections: Iterable[str], *, skip: Sequence[str] = (), only: Sequence[str] = ()
) -> None:
    """One argument group per section, one flag per key that has one (``--layers`` sets ``steering.layers``).

    Flags default to "not given", so only what the user typed overrides the configuration (the help text shows
    the configuration's default)."""
    wanted = list(sections)
    for section in wanted:
        group = parser.add_argument_group(f"[{section}] keys")
        for key in config_keys():
            if key.section != section or key.flag is None or key.flag in skip or (only and key.flag not in only):
                continue
            kind = dict(_CLI_TYPES[key.cli])
            if "metavar" not in kind and kind.get("action") not in ("store_true", "store_false"):
                kind["metavar"] = key.flag.lstrip("-").replace("-", "_").upper()
            if key.cli == "nobool":
                text = f"turn off {key.dotted}: {key.help} (default: on)"
            else:
                text = f"{key.help} ({key.dotted}; default: {_default_text(key)})"
            if key.cli == "layers":
                text += "; repeat for several candidate layer sets: --layers 10 --layers 15 --layers 10,15"
            group.add_argument(key.flag, dest=_dest(key), default=argparse.SUPPRESS, help=text, **kind)
        unit_flag = UNIT_FLAGS.get(section)
        if unit_flag and unit_flag not in skip and (not only or unit_flag in only):
            group.add_argument(
                unit_flag,
                dest=f"cfg__{section}__unit",
                default=argparse.SUPPRESS,
                choices=list(STRENGTH_UNITS),
                help=f"unit of the plain list of {section} strengths: "
                "raw (strength x vector), relative (x the layer's mean hidden-state norm) or sigma (x "
                f"the spread along the vector) ({section}.unit; needed with a plain list of strengths; given alone, it "
                "re-units the default strengths)",
            )


def overrides_from_args(args: argparse.Namespace) -> dict[str, tuple[Any, str]]:
    """``{"section.key": (value, "--flag")}`` for every configuration flag the user gave."""
    flags = {_dest(k): k for k in config_keys()}
    out: dict[str, tuple[Any, str]] = {}
    for dest, value in vars(args).items():
        if not dest.startswith("cfg__"):
            continue
        section, _, name = dest[len("cfg__") :].partition("__")
        if name == "unit":
            out[f"{section}.unit"] = (value, UNIT_FLAGS[section])
            continue
        key = flags[dest]
        out[key.dotted] = (value, str(key.flag))
    return out


def config_from_args(args: argparse.Namespace, config_file: str | None = None) -> ExperimentConfig:
    """The configuration: *config_file* (or the defaults) with the flags the user gave on top."""
    overrides = overrides_from_args(args)
    if config_file is not None:
        return load_experiment_config(config_file, overrides)
    return parse_config({}, "command line", overrides)


def load_model_from_args(args: argparse.Namespace) -> Any:
    """The model the ``[model]`` flags name (loaded only once everything else has been checked)."""
    from ..experiment.preflight import load_configured_model

    return load_configured_model(config_from_args(args).model)
