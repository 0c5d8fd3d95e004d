"""Command-line options built from the configuration's key declarations, so a flag has one name, one default and
one help text in every command (and the same validation as the TOML key it sets)."""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
from typing import Any

from ..experiment.config import ExperimentConfig, Key, config_keys, load_config, parse_config

__all__ = [
    "add_config_args",
    "add_data_args",
    "add_model_args",
    "config_from_args",
    "floats",
    "ints",
    "load",
    "load_model_from_args",
    "overrides_from_args",
]


def floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _words(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _default_text(key: Key) -> str:
    value = key.default
    if key.dotted == "steering.strengths":
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
    "int": {"type": int},
    "float": {"type": float},
    "bool": {"action": "store_true"},
    "nobool": {"action": "store_false"},
    "csv": {"type": _words, "metavar": "A,B"},
    "floats": {"type": floats, "metavar": "X,Y"},
    "repeat": {"action": "append"},
    "layers": {"action": "append", "type": ints, "metavar": "L[,L...]"},
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
            text = f"{key.help} ({key.dotted}; default: {_default_text(key)})"
            if key.cli == "layers":
                text += "; repeat for several candidate layer sets: --layers 10 --layers 15 --layers 10,15"
            group.add_argument(key.flag, dest=_dest(key), default=argparse.SUPPRESS, help=text, **kind)
        if section == "steering" and "--unit" not in skip and (not only or "--unit" in only):
            group.add_argument(
                "--unit",
                dest="cfg__steering__unit",
                default=argparse.SUPPRESS,
                choices=["raw", "relative"],
                help="unit of --strengths: raw (strength x vector) or "
                "relative (strength x the layer's mean hidden-state norm x unit vector) (steering.unit; "
                "default: relative)",
            )


def overrides_from_args(args: argparse.Namespace) -> dict[str, tuple[Any, str]]:
    """``{"section.key": (value, "--flag")}`` for every configuration flag the user gave."""
    flags = {_dest(k): k for k in config_keys()}
    out: dict[str, tuple[Any, str]] = {}
    for dest, value in vars(args).items():
        if not dest.startswith("cfg__"):
            continue
        if dest == "cfg__steering__unit":
            out["steering.unit"] = (value, "--unit")
            continue
        key = flags[dest]
        out[key.dotted] = (value, str(key.flag))
    return out


def config_from_args(args: argparse.Namespace, config_file: str | None = None) -> ExperimentConfig:
    """The configuration: *config_file* (or the defaults) with the flags the user gave on top."""
    overrides = overrides_from_args(args)
    if config_file is not None:
        return load_config(config_file, overrides)
    return parse_config({}, "command line", overrides)


def load_model_from_args(args: argparse.Namespace) -> Any:
    """The model the ``[model]`` flags name (loaded only once everything else has been checked)."""
    from ..experiment.protocol import load_configured_model

    return load_configured_model(config_from_args(args).model)


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """The ``[model]`` flags (``--model``, ``--device``, ``--dtype``, ``--device-map``, ``--trust-remote-code``)."""
    add_config_args(parser, ["model"])


def add_data_args(parser: argparse.ArgumentParser) -> None:
    """The ``[data]`` flags (``--data``, ``--format``, ``--cwe``, ...)."""
    add_config_args(parser, ["data"])


def load(args: argparse.Namespace) -> Any:
    """:func:`load_model_from_args`."""
    return load_model_from_args(args)
