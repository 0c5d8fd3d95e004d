"""Value parsers of the configuration keys: each takes a TOML value and where it came from (``file: section.key``
or a CLI flag) and returns the validated value or raises :class:`ConfigError` naming that place.

>>> layer_sets([10, [10, 15]], "steering.layers")
((10,), (10, 15))
>>> integer(1)(0, "--batch-size")
Traceback (most recent call last):
...
vulnsteer.config.values.ConfigError: --batch-size: must be at least 1, got 0
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..cwe import normalize_cwe, parse_merge_map
from .design import ProbeDesign
from .vocabulary import POOLINGS, STRENGTH_UNITS

__all__ = [
    "STRENGTH_UNITS",
    "ConfigError",
    "Parser",
    "as_list",
    "as_strings",
    "boolean",
    "cwe_list",
    "each_of",
    "fail",
    "fractions",
    "integer",
    "layer_sets",
    "merge_list",
    "model_name",
    "non_negative",
    "non_negative_numbers",
    "number",
    "one_of",
    "optional_one_of",
    "optional_str",
    "pairs_cap",
    "pairs_caps",
    "path_list",
    "path_value",
    "pooling_sets",
    "positive_numbers",
    "probe_designs",
    "some_of",
    "strength_list",
    "switches",
]

Parser = Callable[[Any, str], Any]


class ConfigError(ValueError):
    """The configuration is invalid; the message names the file (or CLI option) and the key."""


def fail(where: str, problem: str) -> ConfigError:
    return ConfigError(f"{where}: {problem}")


# ------------------------------------------------------------------------------------------------ value parsers


def optional_str(value: Any, where: str) -> str | None:
    if not isinstance(value, str):
        raise fail(where, f"expected a string, got {value!r}")
    return value or None


def model_name(value: Any, where: str) -> str | None:
    """A model's name: a string that is not empty (an empty ``--model "$MODEL"`` with ``MODEL`` unset would
    otherwise mean the embedded model, silently).

    >>> model_name("Qwen/Qwen2.5-1.5B", "model.name")
    'Qwen/Qwen2.5-1.5B'
    """
    if isinstance(value, str) and not value.strip():
        raise fail(where, "is empty; leave it out for the embedded model, or name a Hugging Face id, folder or .gguf")
    return optional_str(value, where)


def path_value(value: Any, where: str) -> str | None:
    """A file or folder path, made absolute (against the working directory; a config file anchors its own
    relative paths first), so a resolved config means the same files wherever it is run from. ``builtin`` (the
    bundled corpus) stays as it is."""
    text = optional_str(value, where)
    if text is None or text == "builtin":
        return text
    return str(Path(text).expanduser().absolute())


def path_list(value: Any, where: str) -> tuple[str, ...]:
    """A list of paths, each as :func:`path_value` makes it."""
    return tuple(str(path_value(item, where)) for item in as_strings(value, where))


def boolean(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise fail(where, f"expected true or false, got {value!r}")
    return value


def integer(minimum: int) -> Parser:
    def parse(value: Any, where: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail(where, f"expected an integer, got {value!r}")
        if value < minimum:
            raise fail(where, f"must be at least {minimum}, got {value}")
        return value

    return parse


def number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise fail(where, f"expected a finite number, got {value!r}")
    return float(value)


def non_negative(value: Any, where: str) -> float:
    """A finite number >= 0."""
    out = number(value, where)
    if out < 0:
        raise fail(where, f"must not be negative, got {value!r}")
    return out


def as_list(value: Any, where: str, *, empty: bool = False) -> list[Any]:
    if not isinstance(value, (list, tuple)):
        raise fail(where, f"expected a list, got {value!r}")
    if not value and not empty:
        raise fail(where, "must not be empty")
    return list(value)


def as_strings(value: Any, where: str) -> tuple[str, ...]:
    """A list of non-empty strings (``[]`` allowed)."""
    items = as_list(value, where, empty=True)
    for item in items:
        if not isinstance(item, str) or not item:
            raise fail(where, f"expected non-empty strings, got {item!r}")
    return tuple(items)


def one_of(allowed: Iterable[str]) -> Parser:
    options = tuple(allowed)

    def parse(value: Any, where: str) -> str:
        if value not in options:
            raise fail(where, f"unknown value {value!r}; choose from {', '.join(options)}")
        return str(value)

    return parse


def optional_one_of(allowed: Iterable[str]) -> Parser:
    """:func:`one_of`, or absent (``""``: absent)."""
    parse_one = one_of(allowed)

    def parse(value: Any, where: str) -> str | None:
        text = optional_str(value, where)
        return None if text is None else parse_one(text, where)

    return parse


def each_of(allowed: Iterable[str]) -> Parser:
    """A list whose every item is one of *allowed*, in order, repeats kept (one per other list item)."""
    parse_one = one_of(allowed)

    def parse(value: Any, where: str) -> tuple[str, ...]:
        return tuple(parse_one(item, where) for item in as_strings(value, where))

    return parse


def some_of(allowed: Iterable[str], *, empty: bool = False) -> Parser:
    options = tuple(allowed)

    def parse(value: Any, where: str) -> tuple[str, ...]:
        items = as_list(value, where, empty=empty)
        for item in items:
            if item not in options:
                raise fail(where, f"unknown value {item!r}; choose from {', '.join(options)}")
        return tuple(dict.fromkeys(items))

    return parse


def cwe_list(value: Any, where: str) -> tuple[str, ...]:
    items = as_list(value, where, empty=True)  # (its error already names *where*)
    try:
        return tuple(dict.fromkeys(normalize_cwe(c) for c in items))
    except ValueError as exc:
        raise fail(where, str(exc)) from None


def merge_list(value: Any, where: str) -> tuple[str, ...]:
    specs = (
        [f"{k}={v}" for k, v in value.items()]
        if isinstance(value, dict)
        else [str(x) for x in as_list(value, where, empty=True)]
    )
    try:
        merged = parse_merge_map(specs)
    except ValueError as exc:  # (the CLI's own wording names --merge-cwe; *where* says it already)
        raise fail(where, str(exc).removeprefix("--merge-cwe ")) from None
    return tuple(f"{src}={dst}" for src, dst in merged.items())


def fractions(value: Any, where: str) -> tuple[float, float, float]:
    items = [number(x, where) for x in as_list(value, where)]
    if len(items) != 3 or min(items) < 0 or abs(sum(items) - 1) > 1e-6:
        raise fail(where, f"expected three non-negative numbers (train, val, test) summing to 1, got {value!r}")
    return (items[0], items[1], items[2])


def pairs_cap(value: Any, where: str) -> int | None:
    """A cap of at least 1 pair per CWE, or 0: no cap."""
    if isinstance(value, int) and not isinstance(value, bool) and value < 0:
        raise fail(where, f"must be 0 (no cap) or a positive number of pairs, got {value}")
    return None if value == 0 else integer(1)(value, where)


def layer_sets(value: Any, where: str) -> tuple[tuple[int, ...], ...]:
    """``[10, 15]`` (single layers), ``[[10], [10, 15, 20]]`` (layer sets steered together), or a mix; ``[]``: the
    middle layer."""
    out: list[tuple[int, ...]] = []
    for item in as_list(value, where, empty=True):
        group = item if isinstance(item, (list, tuple)) else [item]
        if not group:
            raise fail(where, "a layer set must not be empty")
        layers = tuple(integer(-(1 << 20))(x, where) for x in group)
        if len(set(layers)) != len(layers):
            raise fail(where, f"layer set {list(group)} repeats a layer")
        out.append(layers)
    return tuple(dict.fromkeys(out))


def strength_list(value: Any, where: str) -> tuple[tuple[str, float], ...]:
    """A plain list (its unit is ``steering.unit``, filled in by :func:`parse_config`) or a table
    ``{raw = [...], relative = [...]}``."""
    if isinstance(value, dict):
        out: list[tuple[str, float]] = []
        for unit, items in value.items():
            if unit not in STRENGTH_UNITS:
                raise fail(f"{where}.{unit}", f"unknown unit; choose from {', '.join(STRENGTH_UNITS)}")
            out += [(unit, number(x, f"{where}.{unit}")) for x in as_list(items, f"{where}.{unit}")]
        if not out:
            raise fail(where, "no strengths given")
        return tuple(dict.fromkeys(out))
    return tuple(dict.fromkeys(("", number(x, where)) for x in as_list(value, where)))


def remote_option(value: Any, where: str) -> bool | str:
    """nnsight's remote option: ``true``/``on`` (NDIF), ``false``/``off`` (here), ``local`` (the remote path
    simulated here) or an ``http(s)://`` host URL.

    >>> remote_option("on", "model.remote"), remote_option(False, "model.remote"), remote_option("local", "x")
    (True, False, 'local')
    """
    if isinstance(value, bool):
        return value
    if not isinstance(value, str):
        raise fail(where, f"expected true, false, 'local' or a URL, got {value!r}")
    lowered = value.strip().lower()
    if lowered in ("", "off", "false", "no"):
        return False
    if lowered in ("on", "true", "yes"):
        return True
    if lowered == "local" or lowered.startswith(("http://", "https://")):
        return value.strip()
    raise fail(where, f"expected on, off, local or an http(s) URL of an NDIF host, got {value!r}")


def pooling_sets(value: Any, where: str) -> tuple[tuple[str, ...], ...]:
    """Sets of poolings read together, e.g. ``[["code_mean"], ["code_mean", "code_max"]]``."""
    out: list[tuple[str, ...]] = []
    for item in as_list(value, where):
        group = some_of(POOLINGS)(item if isinstance(item, (list, tuple)) else [item], where)
        out.append(group)
    return tuple(dict.fromkeys(out))


def positive_numbers(value: Any, where: str) -> tuple[float, ...]:
    """A non-empty list of finite numbers > 0."""
    items = tuple(number(x, where) for x in as_list(value, where))
    if min(items) <= 0:
        raise fail(where, f"expected numbers above 0, got {value!r}")
    return tuple(dict.fromkeys(items))


def non_negative_numbers(value: Any, where: str) -> tuple[float, ...]:
    """A non-empty list of finite numbers >= 0."""
    return tuple(dict.fromkeys(non_negative(x, where) for x in as_list(value, where)))


def switches(value: Any, where: str) -> tuple[bool, ...]:
    """A non-empty list of true/false."""
    return tuple(dict.fromkeys(boolean(x, where) for x in as_list(value, where)))


def pairs_caps(value: Any, where: str) -> tuple[int | None, ...]:
    """One pair cap per dataset (:func:`pairs_cap`: 0 is no cap)."""
    return tuple(pairs_cap(x, where) for x in as_list(value, where, empty=True))


def probe_designs(value: Any, where: str) -> tuple[ProbeDesign, ...]:
    """Probe designs as tables, e.g. ``[{layers = [10, 14, 18], poolings = ["code_mean", "code_max"], C = 0.001,
    combine = "ensemble"}]`` (the fields of :class:`~vulnsteer.config.design.ProbeDesign`; absent ones: defaults)."""
    out: list[ProbeDesign] = []
    for k, item in enumerate(as_list(value, where, empty=True)):
        if isinstance(item, ProbeDesign):
            out.append(item)
            continue
        if not isinstance(item, dict):
            raise fail(f"{where}[{k}]", f"expected a table of probe design fields, got {item!r}")
        try:
            out.append(ProbeDesign.from_json(item))
        except (TypeError, ValueError) as exc:
            raise fail(f"{where}[{k}]", str(exc)) from None
    return tuple(dict.fromkeys(out))
