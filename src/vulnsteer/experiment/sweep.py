"""``vulnsteer sweep CONFIG.toml``: many steering configurations, one honest choice per CWE.

1. The TOML config is parsed and validated (unknown keys are refused with their name and the file) and written
   back resolved, with every default filled in, as ``config.resolved.toml`` in the run directory: that one
   file reproduces the experiment (``vulnsteer sweep RUN/config.resolved.toml``).
2. Training activations are extracted once per (model, data, layer, position) through the on-disk
   :class:`~vulnsteer.lm.activation_cache.ActivationCache`, and every vector (CWE x method x activation position, plus a
   pooled ``any`` vector) is fitted from them.
3. **Validation**: the baseline and every candidate (method, position, layer set, strength, steering positions)
   with each CWE's own vector, its random-direction control, and the pooled vector, in one batched engine
   (:func:`~vulnsteer.experiment.run_conditions`: finished chunks are appended to ``records.jsonl``).
4. **Selection** per CWE on validation only (balanced accuracy; ties to the smaller |strength|, then config
   order); the baseline takes part, so "no steering" wins when nothing beats it. :func:`select_settings` sees
   validation records only.
5. **Test**, once: the baseline, each CWE's chosen vector at its chosen setting, and its random control. Each
   CWE's vector is applied to every CWE's test samples: the diagonal is the headline, the rest is the cross-CWE
   matrix. The chosen vectors and settings are saved to ``chosen/`` for ``vulnsteer evaluate --from``.
6. ``results.json``, ``report.md`` and PNG plots.

Running the same command on the same run directory resumes: finished conditions are skipped. Ctrl-C writes
what is finished (a partial report) and exits 130.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..cwe import normalize_cwe, parse_merge_map
from ..data.sample import Sample
from ..detect.engine import DetectionRecord, PrefixStore
from ..io import write_json, write_text
from ..lm.activations import POSITIONS, Activations
from ..lm.model import LoadedModel, load_model, resolve_layers
from ..lm.prompts import DEFAULT_TEMPLATE
from ..report.markdown import ci_cell, duplicates_text, fmt, lead_table, markdown_table
from ..stats.metrics import point_metrics as evaluation_point_metrics
from ..steer.hooks import POSITION_MODES, STRENGTH_UNITS
from ..steer.vectors import METHODS, SteeringVector, dataset_hash
from .engine import (
    MODES,
    SCHEMA_VERSION,
    Condition,
    ResultStore,
    RunConfig,
    environment_info,
    fit_cwe_vectors,
    json_ready,
    prepare_data,
    run_conditions,
    select_per_cwe,
)
from .runner import SIGN_CONVENTION, compare_to_baseline, save_vectors, summarize_metrics, verdict_words

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "POOLED",
    "Choice",
    "ConfigError",
    "Setting",
    "SweepConfig",
    "annotate",
    "candidate_settings",
    "check_identity",
    "config_document",
    "cross_table",
    "dump_toml",
    "held_out_conditions",
    "held_out_results",
    "load_config",
    "parse_config",
    "point_metrics",
    "pooled_table",
    "render_lead",
    "render_sweep_markdown",
    "resolve_layer_sets",
    "run_sweep",
    "select_settings",
    "val_conditions",
]

#: Name of the pooled "any weakness" vector (all CWEs' training samples together).
POOLED = "any"
RESOLVED_NAME = "config.resolved.toml"
RECORDS_NAME = "records.jsonl"
CHOSEN_DIR = "chosen"
CHOSEN_NAME = "chosen.json"


class ConfigError(ValueError):
    """The sweep config is invalid; the message names the file and the key."""


# ------------------------------------------------------------------------------------------------ config


@dataclass(frozen=True)
class SweepConfig:
    """A sweep, fully resolved. Build it with :func:`load_config` / :func:`parse_config`."""

    model: str | None = None
    device: str | None = None
    dtype: str | None = None
    data_path: str | None = None
    data_format: str | None = None
    cwes: tuple[str, ...] = ()
    merge: tuple[str, ...] = ()
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    seed: int = 0
    respect_upstream: bool = False
    max_pairs_per_cwe: int | None = None
    duplicates: str = "merge"
    max_code_tokens: int = 512
    keep_comments: bool = False
    methods: tuple[str, ...] = ("mean_diff",)
    positions: tuple[str, ...] = ("last",)
    pooled: bool = True
    layers: tuple[tuple[int, ...], ...] = ()
    strengths: tuple[tuple[str, float], ...] = (("relative", 0.05), ("relative", 0.1), ("relative", 0.2))
    steer_positions: tuple[str, ...] = ("last",)
    control_seed: int = 1234
    modes: tuple[str, ...] = ("logit",)
    max_new_tokens: int = 24
    batch_size: int = 8
    out: str | None = None
    group_size: int = 16
    prefix_cache_mib: int = 2048
    cache: bool = True
    cache_dir: str | None = None
    controls_on_val: bool = True
    description: str = ""

    def run_config(self) -> RunConfig:
        """The engine's config for data preparation (validates fractions, token budget, CWE names)."""
        return RunConfig(
            model=self.model,
            data=self.data_path,
            format=self.data_format,
            cwes=self.cwes,
            merge_cwe=self.merge,
            seed=self.seed,
            fractions=self.fractions,
            respect_upstream=self.respect_upstream,
            keep_comments=self.keep_comments,
            max_code_tokens=self.max_code_tokens,
            max_pairs_per_cwe=self.max_pairs_per_cwe,
            duplicates=self.duplicates,
            batch_size=self.batch_size,
            max_new_tokens=self.max_new_tokens,
            modes=self.modes,
            control_seed=self.control_seed,
            device=self.device,
            dtype=self.dtype,
        )


Parser = Callable[[Any, str], Any]


def _fail(where: str, problem: str) -> ConfigError:
    return ConfigError(f"{where}: {problem}")


def _opt_str(value: Any, where: str) -> str | None:
    if not isinstance(value, str):
        raise _fail(where, f"expected a string, got {value!r}")
    return value or None


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise _fail(where, f"expected true or false, got {value!r}")
    return value


def _int(minimum: int) -> Parser:
    def parse(value: Any, where: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(where, f"expected an integer, got {value!r}")
        if value < minimum:
            raise _fail(where, f"must be at least {minimum}, got {value}")
        return value

    return parse


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(where, f"expected a finite number, got {value!r}")
    return float(value)


def _list(value: Any, where: str, *, empty: bool = False) -> list[Any]:
    if not isinstance(value, list):
        raise _fail(where, f"expected a list, got {value!r}")
    if not value and not empty:
        raise _fail(where, "must not be empty")
    return value


def _choice(allowed: Iterable[str]) -> Parser:
    options = tuple(allowed)

    def parse(value: Any, where: str) -> str:
        if value not in options:
            raise _fail(where, f"unknown value {value!r}; choose from {', '.join(options)}")
        return str(value)

    return parse


def _choices(allowed: Iterable[str]) -> Parser:
    options = tuple(allowed)

    def parse(value: Any, where: str) -> tuple[str, ...]:
        items = _list(value, where)
        for item in items:
            if item not in options:
                raise _fail(where, f"unknown value {item!r}; choose from {', '.join(options)}")
        return tuple(dict.fromkeys(items))

    return parse


def _cwes(value: Any, where: str) -> tuple[str, ...]:
    try:
        return tuple(dict.fromkeys(normalize_cwe(c) for c in _list(value, where, empty=True)))
    except ValueError as exc:
        raise _fail(where, str(exc)) from None


def _merge(value: Any, where: str) -> tuple[str, ...]:
    specs = (
        [f"{k}={v}" for k, v in value.items()]
        if isinstance(value, dict)
        else [str(x) for x in _list(value, where, empty=True)]
    )
    try:
        merged = parse_merge_map(specs)
    except ValueError as exc:
        raise _fail(where, str(exc)) from None
    return tuple(f"{src}={dst}" for src, dst in merged.items())


def _fractions(value: Any, where: str) -> tuple[float, float, float]:
    items = [_number(x, where) for x in _list(value, where)]
    if len(items) != 3 or min(items) < 0 or abs(sum(items) - 1) > 1e-6:
        raise _fail(where, f"expected three non-negative numbers (train, val, test) summing to 1, got {value!r}")
    return (items[0], items[1], items[2])


def _pairs_cap(value: Any, where: str) -> int | None:
    return None if value == 0 else _int(1)(value, where)


def _layers(value: Any, where: str) -> tuple[tuple[int, ...], ...]:
    """``[10, 15]`` (single layers), ``[[10], [10, 15, 20]]`` (layer sets steered together), or a mix; ``[]``: the
    middle layer."""
    out: list[tuple[int, ...]] = []
    for item in _list(value, where, empty=True):
        group = item if isinstance(item, list) else [item]
        if not group:
            raise _fail(where, "a layer set must not be empty")
        layers = tuple(_int(-(1 << 20))(x, where) for x in group)
        if len(set(layers)) != len(layers):
            raise _fail(where, f"layer set {group} repeats a layer")
        out.append(layers)
    return tuple(dict.fromkeys(out))


def _strength_list(value: Any, where: str, unit: str) -> list[tuple[str, float]]:
    return [(unit, _number(x, where)) for x in _list(value, where)]


def _strengths(value: Any, where: str) -> tuple[tuple[str, float], ...]:
    """A list (in ``steering.unit``) or a table ``{raw = [...], relative = [...]}``."""
    if isinstance(value, dict):
        out: list[tuple[str, float]] = []
        for unit, items in value.items():
            if unit not in STRENGTH_UNITS:
                raise _fail(f"{where}.{unit}", f"unknown unit; choose from {', '.join(STRENGTH_UNITS)}")
            out += _strength_list(items, f"{where}.{unit}", unit)
        if not out:
            raise _fail(where, "no strengths given")
        return tuple(dict.fromkeys(out))
    return tuple(dict.fromkeys(_strength_list(value, where, "")))


def _unit(value: Any, where: str) -> str:
    if value not in STRENGTH_UNITS:
        raise _fail(where, f"unknown unit {value!r}; choose from {', '.join(STRENGTH_UNITS)}")
    return str(value)


def _methods(value: Any, where: str) -> tuple[str, ...]:
    return _choices(sorted(METHODS))(value, where)


#: (section, key) -> (SweepConfig attribute, parser, comment). ``steering.unit`` only qualifies a list of strengths.
FIELDS: dict[tuple[str, str], tuple[str, Parser, str]] = {
    ("model", "name"): ("model", _opt_str, "Hugging Face id, local directory or .gguf (absent: embedded SmolLM2)"),
    ("model", "device"): ("device", _opt_str, "cpu, cuda, cuda:1 ... (absent: cuda if available)"),
    ("model", "dtype"): ("dtype", _opt_str, "auto, float32, bfloat16, float16"),
    ("data", "path"): (
        "data_path",
        _opt_str,
        "dataset file or folder, relative to this file (absent: the bundled corpus)",
    ),
    ("data", "format"): ("data_format", _opt_str, "sven, juliet, paired-dir, castle, jsonl, csv (absent: detect)"),
    ("data", "cwes"): ("cwes", _cwes, "CWEs to use (empty: every CWE in the data)"),
    ("data", "merge"): ("merge", _merge, 'treat CWE FROM as TO, e.g. ["77=78"]'),
    ("data", "fractions"): ("fractions", _fractions, "train, val, test fractions (split by pair/group)"),
    ("data", "seed"): ("seed", _int(0), "split seed"),
    ("data", "respect_upstream"): ("respect_upstream", _bool, "keep the dataset's own train/val split"),
    ("data", "max_pairs_per_cwe"): (
        "max_pairs_per_cwe",
        _pairs_cap,
        "cap pairs per CWE (0: no cap; with respect_upstream the upstream val split, i.e. test, is not capped)",
    ),
    ("data", "duplicates"): (
        "duplicates",
        _choice(("merge", "drop", "keep")),
        "code in several splits: merge (one split group), drop (val/test copies and partners), keep (report only)",
    ),
    ("data", "max_code_tokens"): ("max_code_tokens", _int(32), "token budget for the code"),
    ("data", "keep_comments"): ("keep_comments", _bool, "keep comments (they can leak the label)"),
    ("vectors", "methods"): ("methods", _methods, "mean_diff, pca, logistic"),
    ("vectors", "positions"): ("positions", _choices(POSITIONS), "activation positions: last, code_mean"),
    ("vectors", "pooled"): ("pooled", _bool, "also fit and select a pooled 'any weakness' vector"),
    ("steering", "layers"): (
        "layers",
        _layers,
        "single layers and layer sets, e.g. [[10], [15], [10, 15]] ([]: middle layer)",
    ),
    ("steering", "strengths"): (
        "strengths",
        _strengths,
        "{raw = [...], relative = [...]}; positive = toward 'vulnerable'",
    ),
    ("steering", "unit"): ("", _unit, "unit of a plain list of strengths"),
    ("steering", "positions"): ("steer_positions", _choices(POSITION_MODES), "token positions steered"),
    ("steering", "control_seed"): ("control_seed", _int(0), "seed of the random-direction controls"),
    ("detection", "modes"): ("modes", _choices(MODES), "logit and/or generation"),
    ("detection", "max_new_tokens"): ("max_new_tokens", _int(1), "generation mode: tokens to generate"),
    ("detection", "batch_size"): ("batch_size", _int(1), "samples per forward pass"),
    ("run", "out"): ("out", _opt_str, "run directory (rerun to resume); --out overrides"),
    ("run", "group_size"): ("group_size", _int(1), "conditions per saved chunk (a kill loses at most one)"),
    ("run", "prefix_cache_mib"): (
        "prefix_cache_mib",
        _int(0),
        "memory for prompt-prefix KV caches kept between chunks, MiB (0: recompute per chunk)",
    ),
    ("run", "cache"): ("cache", _bool, "use the on-disk activation cache"),
    ("run", "cache_dir"): ("cache_dir", _opt_str, "activation cache folder (absent: <cache root>/activations)"),
    ("run", "controls_on_val"): (
        "controls_on_val",
        _bool,
        "random controls for every own-vector candidate on val too (the selection curves' control lines)",
    ),
}
SECTIONS: tuple[str, ...] = tuple(dict.fromkeys(section for section, _ in FIELDS))
#: Keys that say where and how fast, not what: a run directory may be resumed with them changed.
NOT_IDENTITY: frozenset[tuple[str, str]] = frozenset(
    {("run", "out"), ("run", "cache"), ("run", "cache_dir"), ("run", "group_size"), ("run", "prefix_cache_mib")}
)


def parse_config(
    doc: Mapping[str, Any], source: str = "<config>", overrides: Mapping[str, Any] | None = None
) -> SweepConfig:
    """Validate a parsed TOML document; *overrides* are SweepConfig attributes (from the command line)."""
    kwargs: dict[str, Any] = {}
    unit: str | None = None
    for section, body in doc.items():
        if section == "description":
            if not isinstance(body, str):
                raise ConfigError(f"{source}: description must be a string")
            kwargs["description"] = body
            continue
        if section not in SECTIONS:
            raise ConfigError(f"{source}: unknown key {section!r} (known sections: {', '.join(SECTIONS)})")
        if not isinstance(body, dict):
            raise ConfigError(f"{source}: {section!r} must be a table ([{section}])")
        for key, value in body.items():
            spec = FIELDS.get((section, key))
            if spec is None:
                known = ", ".join(k for s, k in FIELDS if s == section)
                raise ConfigError(f"{source}: unknown key '{section}.{key}' (known in [{section}]: {known})")
            attr, parse, _ = spec
            parsed = parse(value, f"{source}: {section}.{key}")
            if attr:
                kwargs[attr] = parsed
            else:
                unit = parsed
    if "strengths" in kwargs:
        plain = [s for s in kwargs["strengths"] if not s[0]]
        if plain and unit is None:
            raise ConfigError(
                f"{source}: steering.strengths is a plain list: set steering.unit (raw or relative), "
                "or write strengths = {relative = [...], raw = [...]}"
            )
        if unit is not None and not plain:
            raise ConfigError(
                f"{source}: steering.unit only qualifies a plain list of strengths; the table form "
                "names its units itself"
            )
        kwargs["strengths"] = tuple(dict.fromkeys((u or unit or "", s) for u, s in kwargs["strengths"]))
    elif unit is not None:
        kwargs["strengths"] = tuple((unit, s) for _, s in SweepConfig.strengths)
    kwargs.update({k: v for k, v in (overrides or {}).items() if v is not None})
    config = SweepConfig(**kwargs)
    if not any(strength for _, strength in config.strengths):
        raise ConfigError(f"{source}: steering.strengths needs a non-zero strength (the baseline is always run)")
    try:
        config.run_config()
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return config


def load_config(path: str | Path, overrides: Mapping[str, Any] | None = None) -> SweepConfig:
    """Read and validate a TOML sweep config."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"sweep config not found: {file}")
    try:
        doc = tomllib.loads(file.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: not valid TOML ({exc})") from None
    config = parse_config(doc, str(file), overrides)
    if config.data_path and not Path(config.data_path).expanduser().is_absolute():
        # a dataset path in a config file is relative to that file (the resolved config stores it absolute)
        config = dataclasses.replace(config, data_path=str((file.parent / config.data_path).resolve()))
    return config


def config_document(config: SweepConfig) -> dict[str, dict[str, Any]]:
    """The resolved config as TOML-ready nested tables (``None``: not set, written as a comment)."""
    doc: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
    for (section, key), (attr, _, _) in FIELDS.items():
        if not attr:
            continue
        value: Any = getattr(config, attr)
        if attr == "strengths":
            table: dict[str, list[float]] = {}
            for unit, strength in value:
                table.setdefault(unit, []).append(strength)
            value = table
        elif attr == "layers":
            value = [list(group) for group in value]
        elif attr == "max_pairs_per_cwe" and value is None:
            value = 0
        elif isinstance(value, tuple):
            value = list(value)
        doc[section][key] = value
    return doc


def _identity(doc: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    return {f"{s}.{k}": v for s, body in doc.items() for k, v in body.items() if (s, k) not in NOT_IDENTITY}


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"TOML cannot hold {value!r}")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key)


def dump_toml(doc: Mapping[str, Mapping[str, Any]], header: str = "", top: Mapping[str, Any] | None = None) -> str:
    """TOML text for top-level keys (*top*) and tables of scalars, lists and inline tables (all a sweep needs)."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    lines += [f"{_toml_key(key)} = {_toml_value(value)}" for key, value in (top or {}).items()]
    for section, body in doc.items():
        lines += ["", f"[{_toml_key(section)}]"]
        for key, value in body.items():
            comment = FIELDS.get((section, key), ("", None, ""))[2]
            if value is None:
                lines.append(f"# {_toml_key(key)}: not set" + (f" ({comment})" if comment else ""))
                continue
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}" + (f"  # {comment}" if comment else ""))
    return "\n".join(lines) + "\n"


def check_identity(folder: Path, identity: Mapping[str, Any], what: str) -> None:
    """Refuse to add records to *folder* when what they were computed from changed (``identity.json``): condition
    keys name settings, not data or weights, so a changed dataset file or model would silently mix results."""
    path = folder / "identity.json"
    plain = json_ready(identity)
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        changed = sorted(k for k in old.keys() | plain.keys() if old.get(k) != plain.get(k))
        if changed:
            raise ConfigError(
                f"{folder} holds a {what} computed from other inputs (changed: {', '.join(changed)}); "
                "use another output directory"
            )
        return
    write_json(path, plain)


def _check_resolved(out: Path, config: SweepConfig) -> None:
    """Write ``config.resolved.toml``; refuse to resume a run directory that holds a different experiment."""
    path = out / RESOLVED_NAME
    doc = config_document(config)
    if path.is_file():
        previous = config_document(load_config(path))
        old, new = _identity(previous), _identity(doc)
        changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        if changed:
            raise ConfigError(
                f"{out} holds a different sweep (differs in {', '.join(changed)}); "
                "use another --out, or rerun with the config in " + str(path)
            )
    from .. import __version__

    header = (
        f"vulnsteer {__version__} sweep, resolved config: `vulnsteer sweep {path}` reproduces this run.\n"
        "Every default is filled in; layers are as written (negative = from the end)."
    )
    write_text(path, dump_toml(doc, header, {"description": config.description} if config.description else None))


# ------------------------------------------------------------------------------------------------ settings


@dataclass(frozen=True)
class Setting:
    """One steering configuration: which vector (method at activation position), where, and how strongly."""

    method: str
    position: str
    layers: tuple[int, ...]
    unit: str
    strength: float
    steer_positions: str

    @property
    def method_key(self) -> str:
        """The engine's method name: vectors are keyed ``(cwe, "mean_diff@last")``."""
        return f"{self.method}@{self.position}"

    def condition(self, kind: str, mode: str, split: str, vector_cwe: str | None, control_seed: int) -> Condition:
        return Condition(
            kind,
            mode,
            split,
            self.strength,
            self.layers,
            self.unit,
            self.steer_positions,
            self.method_key,
            vector_cwe,
            control_seed,
        )

    def label(self) -> str:
        layers = ",".join(map(str, self.layers))
        return f"{self.method}@{self.position} L{layers} {self.unit} {self.strength:+g} (steer {self.steer_positions})"

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["layers"] = list(self.layers)
        data["label"] = self.label()
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Setting:
        return cls(
            str(data["method"]),
            str(data["position"]),
            tuple(int(x) for x in data["layers"]),
            str(data["unit"]),
            float(data["strength"]),
            str(data["steer_positions"]),
        )

    @classmethod
    def from_condition(cls, cond: Condition) -> Setting:
        method, position = cond.method.split("@", 1)
        return cls(method, position, tuple(cond.layers), cond.unit, float(cond.strength), cond.positions)


def resolve_layer_sets(groups: Sequence[Sequence[int]], num_layers: int) -> list[tuple[int, ...]]:
    """Layer sets with negative indices resolved (middle layer when none are configured), duplicates dropped."""
    sets = [tuple(resolve_layers(list(group), num_layers)) for group in groups] or [(num_layers // 2,)]
    return list(dict.fromkeys(sets))


def candidate_settings(config: SweepConfig, layer_sets: Sequence[tuple[int, ...]]) -> list[Setting]:
    """Every steered candidate, in config order (that order breaks ties after |strength|)."""
    return [
        Setting(method, position, layers, unit, strength, steer)
        for method in config.methods
        for position in config.positions
        for steer in config.steer_positions
        for layers in layer_sets
        for unit, strength in config.strengths
        if strength != 0
    ]


def val_conditions(config: SweepConfig, settings: Sequence[Setting], mode: str) -> list[Condition]:
    """The validation grid of one detector mode: the baseline, every setting with each CWE's own vector (and, with
    ``controls_on_val``, its random control, for the selection curves), and with the pooled vector."""
    conds = [Condition("baseline", mode, "val")]
    for setting in settings:
        conds.append(setting.condition("steered", mode, "val", None, config.control_seed))
        if config.controls_on_val:
            conds.append(setting.condition("control", mode, "val", None, config.control_seed))
    if config.pooled:
        conds += [setting.condition("steered", mode, "val", POOLED, config.control_seed) for setting in settings]
    return conds


# ------------------------------------------------------------------------------------------------ selection


@dataclass(frozen=True)
class Choice:
    """The validation choice for one CWE (or the pooled vector): steered or baseline, and the best steered
    setting (used for the cross-CWE matrix and reported as "not chosen" when the baseline won)."""

    target: str
    chosen: str  # "steered" or "baseline"
    best: Setting | None
    val_best: float | None
    val_baseline: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "chosen": self.chosen,
            "best_steered": self.best.to_dict() if self.best else None,
            "val_balanced_accuracy_best_steered": self.val_best,
            "val_balanced_accuracy_baseline": self.val_baseline,
            "split": "val",
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Choice:
        best = data.get("best_steered")
        return cls(
            str(data["target"]),
            str(data["chosen"]),
            Setting.from_dict(best) if best else None,
            data.get("val_balanced_accuracy_best_steered"),
            data.get("val_balanced_accuracy_baseline"),
        )


def point_metrics(records: Sequence[DetectionRecord], names: Sequence[str]) -> dict[str, float | None]:
    """:func:`vulnsteer.stats.metrics.point_metrics` of detection records (no bootstrap; undefined = None)."""
    return evaluation_point_metrics([r.to_prediction() for r in records], names)


def _balanced_accuracy(records: Sequence[DetectionRecord], cwe: str | None = None) -> float | None:
    subset = [r for r in records if cwe is None or r.cwe == cwe]
    return point_metrics(subset, ["balanced_accuracy"])["balanced_accuracy"] if subset else None


def select_settings(
    conds: Sequence[Condition],
    records: Mapping[str, Sequence[DetectionRecord]],
    cwes: Sequence[str],
    pooled: bool = True,
) -> dict[str, Choice]:
    """Per CWE (and for the pooled vector, on all CWEs' samples together): the best validation setting.

    Only validation conditions may be passed (:func:`~vulnsteer.experiment.select_per_cwe` refuses others),
    so no test record can reach this function.
    """
    if any(c.split != "val" for c in conds):
        raise ValueError("select_settings takes validation conditions only")
    by_key = {c.key: c for c in conds}
    scores: dict[tuple[str, str], float | None] = {}

    def score(cond: Condition, target: str) -> float | None:
        if (cond.key, target) not in scores:
            scores[(cond.key, target)] = _balanced_accuracy(records[cond.key], None if target == POOLED else target)
        return scores[(cond.key, target)]

    baseline = [c for c in conds if c.kind == "baseline"]
    choices: dict[str, Choice] = {}
    families = [(cwe, None) for cwe in cwes] + ([(POOLED, POOLED)] if pooled else [])
    for target, vector_cwe in families:
        steered = [c for c in by_key.values() if c.kind == "steered" and c.vector_cwe == vector_cwe]
        pick = select_per_cwe([*baseline, *steered], score, [target]).get(target)
        best = select_per_cwe(steered, score, [target]).get(target)
        base_score = score(baseline[0], target) if baseline else None
        if pick is None and best is None:
            continue
        choices[target] = Choice(
            target,
            "steered" if pick is not None and pick.kind == "steered" else "baseline",
            Setting.from_condition(best) if best else None,
            score(best, target) if best else None,
            base_score,
        )
    return choices


# ------------------------------------------------------------------------------------------------ held-out


def held_out_conditions(choices: Mapping[str, Choice], mode: str, split: str, control_seed: int) -> list[Condition]:
    """The baseline, and per CWE (and pooled vector) its best steered setting with its random control."""
    conds = [Condition("baseline", mode, split)]
    for target, choice in choices.items():
        if choice.best is not None:
            for kind in ("steered", "control"):
                conds.append(choice.best.condition(kind, mode, split, target, control_seed))
    return conds


def annotate(vector: SteeringVector, **extra: Any) -> SteeringVector:
    """A copy of *vector* with *extra* provenance (the chosen setting travels inside the vector file)."""
    prov = dataclasses.replace(vector.provenance, extra={**dict(vector.provenance.extra), **extra})
    return SteeringVector({layer: vector.direction(layer) for layer in vector.layers}, prov)


def _split_words(split: str) -> str:
    """How a sentence names a split: ``test``, ``val``, or (transfer runs) ``all samples``."""
    return "all samples" if split == "all" else split


def _row(
    cwe: str,
    split: str,
    base: Sequence[DetectionRecord],
    steered: Sequence[DetectionRecord] | None,
    control: Sequence[DetectionRecord] | None,
    label: str,
    seed: int,
) -> dict[str, Any]:
    """One report row (the runner's summary format): baseline vs steered vs control on one CWE's samples."""
    base_m = summarize_metrics(base, [cwe], seed)[cwe]
    row: dict[str, Any] = {"n": base_m["n"], "n_pairs": base_m["n_pairs"], "split": split, "baseline": base_m}
    if steered is None:
        row.update(
            {
                "chosen": label,
                "steered": base_m,
                "control": None,
                "delta": 0.0,
                "delta_ci": [0.0, 0.0],
                "p_value": 1.0,
                "words": "no steered setting beat the baseline on validation, so the baseline "
                f"is what the {_split_words(split)} numbers show",
            }
        )
        return row
    steered_m = summarize_metrics(steered, [cwe], seed)[cwe]
    comp = compare_to_baseline(base, steered, [cwe], seed)[cwe]
    control_m = summarize_metrics(control, [cwe], seed)[cwe] if control else None
    control_delta = control_m["balanced_accuracy"] - base_m["balanced_accuracy"] if control_m else None
    delta = comp["delta_balanced_accuracy"]
    words = (
        verdict_words(delta, comp["delta_ci"], comp["mcnemar_p"], control_delta)
        if delta != 0
        else f"the chosen setting left balanced accuracy on {_split_words(split)} unchanged ({comp['mcnemar_b']} "
        "answers became "
        f"wrong, {comp['mcnemar_c']} became right)"
    )
    row.update(
        {
            "chosen": label,
            "steered": steered_m,
            "control": control_m,
            "control_delta": control_delta,
            "delta": delta,
            "delta_ci": comp["delta_ci"],
            "p_value": comp["mcnemar_p"],
            "words": words,
        }
    )
    return row


def held_out_results(
    choices: Mapping[str, Choice],
    records: Mapping[str, Sequence[DetectionRecord]],
    mode: str,
    split: str,
    cwes: Sequence[str],
    control_seed: int,
    seed: int = 0,
) -> dict[str, Any]:
    """Rows (per CWE: baseline, the val-chosen configuration, its control, CI, p), the pooled vector's rows, and
    the cross-CWE matrix (vector A at its best steered setting on CWE B's samples, change vs baseline)."""
    base_all = records[Condition("baseline", mode, split).key]

    def only(recs: Sequence[DetectionRecord], cwe: str) -> list[DetectionRecord]:
        return [r for r in recs if r.cwe == cwe]

    def pair(choice: Choice) -> tuple[list[DetectionRecord], list[DetectionRecord]]:
        assert choice.best is not None
        return (
            list(records[choice.best.condition("steered", mode, split, choice.target, control_seed).key]),
            list(records[choice.best.condition("control", mode, split, choice.target, control_seed).key]),
        )

    present = [cwe for cwe in cwes if only(base_all, cwe)]
    rows: dict[str, Any] = {}
    pooled_rows: dict[str, Any] = {}
    for cwe in present:
        choice = choices.get(cwe)
        base = only(base_all, cwe)
        if choice is None or choice.best is None:
            continue
        steered, control = pair(choice)
        if choice.chosen == "steered":
            rows[cwe] = _row(cwe, split, base, only(steered, cwe), only(control, cwe), choice.best.label(), seed)
        else:
            rows[cwe] = _row(cwe, split, base, None, None, "baseline (no steered setting beat it on val)", seed)
            rows[cwe]["best_steered_not_chosen"] = _row(
                cwe, split, base, only(steered, cwe), only(control, cwe), choice.best.label(), seed
            )
    pooled = choices.get(POOLED)
    if pooled is not None and pooled.best is not None:
        steered, control = pair(pooled)
        for cwe in [*present, "overall"]:

            def part(recs: Sequence[DetectionRecord], cwe: str = cwe) -> list[DetectionRecord]:
                return [dataclasses.replace(r, cwe=cwe) for r in recs if cwe == "overall" or r.cwe == cwe]

            pooled_rows[cwe] = _row(cwe, split, part(base_all), part(steered), part(control), pooled.best.label(), seed)
    vectors = [t for t in [*present, POOLED] if t in choices and choices[t].best is not None]
    matrix: list[list[float | None]] = []
    for target in vectors:
        steered, _ = pair(choices[target])
        line: list[float | None] = []
        for cwe in present:
            b, s = _balanced_accuracy(base_all, cwe), _balanced_accuracy(steered, cwe)
            line.append(None if b is None or s is None else s - b)
        matrix.append(line)
    cross = {
        "vectors": vectors,
        "targets": present,
        "delta_balanced_accuracy": matrix,
        "split": split,
        "settings": {t: best.label() for t in vectors if (best := choices[t].best) is not None},
        "chosen": {t: choices[t].chosen for t in vectors},
    }
    return {"rows": rows, "pooled": pooled_rows, "cross_cwe": cross}


# ------------------------------------------------------------------------------------------------ the sweep


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _val_entries(
    conds: Sequence[Condition], records: Mapping[str, Sequence[DetectionRecord]], cwes: Sequence[str]
) -> list[dict[str, Any]]:
    keys = ("balanced_accuracy", "accuracy", "tpr", "fpr", "pair_accuracy", "vulnerable_rate", "auroc")
    out = []
    for cond in conds:
        recs = records.get(cond.key)
        if recs is None:
            continue
        metrics = {}
        for cwe in [*cwes, "overall"]:
            sub = [r for r in recs if cwe == "overall" or r.cwe == cwe]
            if sub:
                metrics[cwe] = {"n": len(sub), **point_metrics(sub, keys)}
        setting = None if cond.kind == "baseline" else Setting.from_condition(cond).to_dict()
        out.append({"condition": cond.to_dict(), "setting": setting, "metrics": metrics})
    return out


def _pca(acts: Activations, samples: Sequence[Sample], position: str, layer: int) -> dict[str, Any]:
    """Per CWE: the training activations at *layer* projected on their first two principal components."""
    import torch

    hidden = acts.get(position, layer)
    out: dict[str, Any] = {}
    cwes = list(dict.fromkeys(s.cwe for s in samples))
    for cwe in cwes:
        idx = [i for i, s in enumerate(samples) if s.cwe == cwe]
        x = hidden[idx].double()
        centred = x - x.mean(0)
        _, sv, vh = torch.linalg.svd(centred, full_matrices=False)
        xy = centred @ vh[:2].T
        var = (sv**2) / max(float((sv**2).sum()), 1e-12)
        out[cwe] = {
            "x": xy[:, 0].tolist(),
            "y": xy[:, 1].tolist() if xy.shape[1] > 1 else [0.0] * len(idx),
            "vulnerable": [samples[i].is_vulnerable for i in idx],
            "explained": var[:2].tolist(),
        }
    return {"layer": layer, "position": position, "split": "train", "cwes": out}


def _cosines(vectors: Mapping[tuple[str, str], SteeringVector], layers: Sequence[int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for method_key in dict.fromkeys(mk for _, mk in vectors):
        names = [cwe for cwe, mk in vectors if mk == method_key]
        out[method_key] = {
            "cwes": names,
            "layers": {
                str(layer): [
                    [vectors[(a, method_key)].cosine(vectors[(b, method_key)], layer) for b in names] for a in names
                ]
                for layer in layers
            },
        }
    return out


def default_out_dir(config_path: str | Path | None) -> Path:
    stem = Path(config_path).stem if config_path else "sweep"
    return Path("runs") / f"sweep-{stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def _train_code_hashes(samples: Iterable[Sample]) -> list[str]:
    return sorted({hashlib.sha256(s.code.encode()).hexdigest()[:16] for s in samples})


class _Sweep:
    """State of one sweep run (kept together so an interruption can still write what is finished)."""

    def __init__(self, config: SweepConfig, out: Path, lm: LoadedModel, progress: bool) -> None:
        self.config = config
        self.out = out
        self.lm = lm
        self.progress = progress
        self.timings: dict[str, float] = {}
        self.results: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "command": "sweep",
            "status": "running",
            "config": config_document(config),
        }
        self.store = ResultStore(out / RECORDS_NAME)
        self.prefix_store = PrefixStore(max_bytes=config.prefix_cache_mib * 1024**2)

    def _timed(self, name: str, start: float) -> None:
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start

    def run(self) -> dict[str, Any]:
        from ..lm.activation_cache import ActivationCache, model_key

        cfg, lm, out = self.config, self.lm, self.out
        t = time.perf_counter()
        data = prepare_data(cfg.run_config(), lm.tokenizer, progress=self.progress, require=("train", "val", "test"))
        layer_sets = resolve_layer_sets(cfg.layers, lm.num_layers)
        union = sorted({layer for group in layer_sets for layer in group})
        self._timed("prepare_data", t)
        self.results.update(
            {
                "template": DEFAULT_TEMPLATE.to_dict(),
                "sign_convention": SIGN_CONVENTION,
                "environment": environment_info(),
                "model": {
                    "id": lm.model_id,
                    "fingerprint": lm.fingerprint,
                    "key": model_key(lm),
                    "num_layers": lm.num_layers,
                    "hidden_size": lm.hidden_size,
                    **lm.extra,
                },
                "layer_sets": [list(g) for g in layer_sets],
                "layers": union,
                "data": {
                    "source": data.source,
                    "cwes": data.cwes,
                    "notes": data.notes,
                    "splits": data.splits.summary(),
                },
            }
        )
        check_identity(
            out,
            {
                "model_key": model_key(lm),
                "template": DEFAULT_TEMPLATE.to_dict(),
                **{f"data_{name}": dataset_hash(part) for name, part in data.splits.items()},
            },
            "sweep",
        )
        train_by_cwe = data.by_cwe("train")
        train = [s for group in train_by_cwe.values() for s in group]
        t = time.perf_counter()
        cache = ActivationCache(cfg.cache_dir, enabled=cfg.cache)
        acts, stats = cache.load_or_extract(
            lm, train, union, cfg.positions, batch_size=cfg.batch_size, progress=self.progress
        )
        self._timed("activations", t)
        self.results["activation_cache"] = {"dir": str(cache.root), "enabled": cfg.cache, **stats.to_dict()}
        t = time.perf_counter()
        vectors: dict[tuple[str, str], SteeringVector] = {}
        for position in tqdm(cfg.positions, desc="fitting vectors", unit="position", disable=not self.progress):
            fitted = fit_cwe_vectors(
                lm,
                train_by_cwe,
                union,
                position=position,
                methods=cfg.methods,
                pooled=cfg.pooled,
                activations=acts,
                progress=False,
            )
            vectors.update({(cwe, f"{method}@{position}"): vec for (cwe, method), vec in fitted.items()})
        self.results["vectors"] = save_vectors(vectors, out / "vectors")
        self.results["cosine"] = _cosines(vectors, union)
        middle = union[len(union) // 2]
        self.results["pca"] = {pos: _pca(acts, train, pos, middle) for pos in cfg.positions}
        self._timed("fit_vectors", t)

        settings = candidate_settings(cfg, layer_sets)
        self.results.update({"val": {}, "selection": {}, "summary": {}, "pooled": {}, "cross_cwe": {}})
        val_conds = {mode: val_conditions(cfg, settings, mode) for mode in cfg.modes}
        t = time.perf_counter()
        val_records = self._evaluate([c for mode in cfg.modes for c in val_conds[mode]], data.by_cwe, vectors)
        self._timed("score_val", t)
        for mode in cfg.modes:
            self.results["val"][mode] = _val_entries(val_conds[mode], val_records, data.cwes)
        choices = {mode: select_settings(val_conds[mode], val_records, data.cwes, cfg.pooled) for mode in cfg.modes}
        self.results["selection"] = {
            mode: {target: choice.to_dict() for target, choice in by_target.items()}
            for mode, by_target in choices.items()
        }
        self._save_chosen(choices, vectors, train)
        t = time.perf_counter()
        conds = [c for mode in cfg.modes for c in held_out_conditions(choices[mode], mode, "test", cfg.control_seed)]
        recs = self._evaluate(conds, data.by_cwe, vectors)
        for mode in cfg.modes:
            held = held_out_results(choices[mode], recs, mode, "test", data.cwes, cfg.control_seed, cfg.seed)
            self.results["summary"][mode] = held["rows"]
            self.results["pooled"][mode] = held["pooled"]
            self.results["cross_cwe"][mode] = held["cross_cwe"]
        self._timed("score_test", t)
        ps = self.prefix_store
        self.results["prefix_cache"] = {
            "hits": ps.hits,
            "misses": ps.misses,
            "entries": len(ps),
            "mib": round(ps.used_bytes / 1024**2, 1),
        }
        self.results["status"] = "complete"
        return self.results

    def _evaluate(
        self,
        conds: Sequence[Condition],
        samples_for: Callable[[str], Mapping[str, Sequence[Sample]]],
        vectors: Mapping[tuple[str, str], SteeringVector],
    ) -> dict[str, list[DetectionRecord]]:
        return run_conditions(
            self.lm,
            conds,
            self.store,
            samples_for,
            vectors,
            batch_size=self.config.batch_size,
            max_new_tokens=self.config.max_new_tokens,
            group_size=self.config.group_size,
            progress=self.progress,
            prefix_store=self.prefix_store,
        )

    def _save_chosen(
        self,
        choices: Mapping[str, Mapping[str, Choice]],
        vectors: Mapping[tuple[str, str], SteeringVector],
        train: Sequence[Sample],
    ) -> None:
        """``chosen/chosen.json`` + the vector of every chosen (CWE, method@position), for ``evaluate --from``.

        Vector files hold every fitted layer (the setting says which are steered), so a transfer run applies
        exactly the vector, and draws exactly the random control, that the sweep used."""
        folder = self.out / CHOSEN_DIR
        table: dict[str, Any] = {}
        for mode, by_target in choices.items():
            table[mode] = {}
            for target, choice in by_target.items():
                entry = choice.to_dict()
                if choice.best is not None:
                    name = f"{_slug(target)}-{_slug(choice.best.method_key)}.safetensors"
                    annotate(vectors[(target, choice.best.method_key)], run_dir=str(self.out)).save(folder / name)
                    entry["vector"] = name
                table[mode][target] = entry
        write_json(
            folder / CHOSEN_NAME,
            json_ready(
                {
                    "schema_version": SCHEMA_VERSION,
                    "run_dir": str(self.out),
                    "model": self.results["model"],
                    "config": self.results["config"],
                    "template": DEFAULT_TEMPLATE.to_dict(),
                    "control_seed": self.config.control_seed,
                    "sign_convention": SIGN_CONVENTION,
                    "selection": "per CWE on the validation split only (balanced accuracy, ties to the smaller "
                    "|strength|)",
                    "train_code_hashes": _train_code_hashes(train),
                    "modes": table,
                }
            ),
        )

    def finish(self, interrupted: bool = False) -> None:
        """Write results.json and the report (partial when interrupted)."""
        from ..report.plots import sweep_plots

        if interrupted:
            self.results["status"] = "interrupted"
            on_disk = ResultStore(self.out / RECORDS_NAME)  # what is on disk, even if Ctrl-C hit mid-bookkeeping
            self.results["finished_conditions"] = [e["condition"] for e in on_disk.entries()]
        self.results["timings_s"] = {k: round(v, 2) for k, v in self.timings.items()}
        t = time.perf_counter()
        plots = [] if interrupted else sweep_plots(self.results, self.out)
        self.results["timings_s"]["plots"] = round(time.perf_counter() - t, 2)
        write_json(self.out / "results.json", json_ready(self.results))
        write_text(self.out / "report.md", render_sweep_markdown(self.results, plots))


def run_sweep(
    config: SweepConfig,
    out_dir: str | Path | None = None,
    *,
    lm: LoadedModel | None = None,
    progress: bool = True,
    config_path: str | Path | None = None,
) -> Path:
    """Run (or resume) a sweep into *out_dir*; returns the run directory.

    Ctrl-C writes ``results.json`` / ``report.md`` marked interrupted with what is finished, then re-raises.
    """
    out = Path(out_dir or config.out or default_out_dir(config_path))
    out.mkdir(parents=True, exist_ok=True)
    _check_resolved(out, config)
    started = time.perf_counter()
    own = lm is None
    if lm is None:
        lm = load_model(config.model, device=config.device, dtype=config.dtype)
    sweep = _Sweep(config, out, lm, progress)
    sweep.timings["load_model"] = time.perf_counter() - started
    try:
        sweep.run()
    except KeyboardInterrupt:
        sweep.timings["total"] = time.perf_counter() - started
        sweep.finish(interrupted=True)
        raise
    finally:
        if own:
            lm.close()
    sweep.timings["total"] = time.perf_counter() - started
    sweep.finish()
    return out


# ------------------------------------------------------------------------------------------------ report


def _val_table(
    entries: Sequence[Mapping[str, Any]], cwes: Sequence[str], selection: Mapping[str, Mapping[str, Any]]
) -> list[str]:
    """Validation balanced accuracy of every steered candidate (own vector), per CWE; chosen cells in bold."""
    chosen = {cwe: (c["best_steered"] or {}).get("label") for cwe, c in selection.items() if c["chosen"] == "steered"}
    header = ["setting (vector = each CWE's own)", *cwes]
    rows = []
    for entry in entries:
        cond = entry["condition"]
        if cond["kind"] == "control" or cond["vector_cwe"] is not None:
            continue
        label = "baseline" if cond["kind"] == "baseline" else entry["setting"]["label"]
        cells = []
        for cwe in cwes:
            value = fmt((entry["metrics"].get(cwe) or {}).get("balanced_accuracy"))
            is_pick = chosen.get(cwe) == label or (label == "baseline" and cwe in selection and cwe not in chosen)
            cells.append(f"**{value}**" if is_pick else value)
        rows.append([label, *cells])
    return markdown_table(header, rows)


def pooled_table(rows: Mapping[str, Any]) -> list[str]:
    body = [
        [
            cwe,
            str(r["n"]),
            ci_cell(r["baseline"]),
            ci_cell(r["steered"]),
            ci_cell(r.get("control")),
            f"{r['delta']:+.3f} [{r['delta_ci'][0]:+.2f}, {r['delta_ci'][1]:+.2f}]",
            fmt(r["p_value"]),
        ]
        for cwe, r in rows.items()
        if isinstance(r, Mapping)
    ]
    header = ["CWE", "n", "baseline", "pooled vector", "random control", "Δ bal.acc [95% CI]", "McNemar p"]
    return markdown_table(header, body)


def cross_table(cross: Mapping[str, Any]) -> list[str]:
    header = ["vector ↓ / samples →", *cross["targets"]]
    rows = []
    for name, line in zip(cross["vectors"], cross["delta_balanced_accuracy"]):
        mark = "" if cross["chosen"].get(name) == "steered" else " (baseline won on val)"
        rows.append([f"{name}{mark}", *[("–" if v is None else f"{v:+.3f}") for v in line]])
    return markdown_table(header, rows)


def render_lead(rows: Mapping[str, Any], split: str) -> list[str]:
    """The headline table (reusing the run report's) plus the best steered settings that were not chosen."""
    lines = lead_table(rows)
    lines[0] = (
        lines[0].replace("n (test)", f"n ({split})").replace("steered (chosen on val)", f"chosen on val → {split}")
    )
    extra = [
        f"- {cwe}: best steered setting on val (not chosen: the baseline scored at least as well) was "
        f"{r['best_steered_not_chosen']['chosen']}; on {_split_words(split)} it gives "
        f"{r['best_steered_not_chosen']['delta']:+.3f} [{r['best_steered_not_chosen']['delta_ci'][0]:+.2f}, "
        f"{r['best_steered_not_chosen']['delta_ci'][1]:+.2f}] (for information only)"
        for cwe, r in rows.items()
        if "best_steered_not_chosen" in r
    ]
    return lines + extra


def render_sweep_markdown(results: Mapping[str, Any], plots: Sequence[str] = ()) -> str:
    cfg = results["config"]
    lines = ["# vulnsteer sweep report", ""]
    if results.get("status") != "complete":
        done = results.get("finished_conditions", [])
        lines += [
            f"**INTERRUPTED**: this report is partial. {len(done)} conditions are finished and kept in "
            f"`{RECORDS_NAME}`; rerun the same command to resume.",
            "",
        ]
        lines += [f"- {c['key']}" for c in done[:200]]
        return "\n".join(lines) + "\n"
    data = results["data"]
    splits = data["splits"]
    model = results["model"]
    strengths = cfg["steering"]["strengths"]
    lines += [
        f"- model: `{model['id']}` ({model['num_layers']} layers, hidden {model['hidden_size']}, "
        f"fingerprint {model['fingerprint']})",
        f"- data: `{data['source']}`; CWEs: {', '.join(data['cwes'])}; split by pair/group "
        f"(seed {cfg['data']['seed']}): train {splits['train']['n']}, val {splits['val']['n']}, "
        f"test {splits['test']['n']} samples; {duplicates_text(splits)}",
        f"- grid: methods {cfg['vectors']['methods']} at activation positions {cfg['vectors']['positions']}; "
        f"layer sets {results['layer_sets']}; strengths {strengths}; steering positions "
        f"{cfg['steering']['positions']}; modes {cfg['detection']['modes']}; pooled vector: {cfg['vectors']['pooled']}",
        f"- **sign convention**: {results['sign_convention']}",
        "- **splits**: vectors are fitted on **train**; every candidate (and the baseline) is scored on **val**, "
        "and the configuration per CWE is chosen there (balanced accuracy, ties to the smaller |strength|); the "
        "chosen configuration is evaluated once on **test** with its random-direction control (same norm, same "
        "layers), a 95% pair-bootstrap CI and McNemar's exact p-value. Test data never influences a choice.",
        "- a layer set is steered at all its layers at once; with `relative` strengths each layer's shift is the "
        "strength times that layer's mean hidden-state norm (measured at the vector's activation position).",
        f"- resolved config: `{RESOLVED_NAME}` (rerun with it to reproduce); chosen vectors and settings: "
        f"`{CHOSEN_DIR}/{CHOSEN_NAME}` (apply elsewhere with `vulnsteer evaluate --from RUN_DIR --data OTHER`)",
        "",
    ]
    for mode, rows in results["summary"].items():
        lines += [f"## {mode} mode: TEST split, configuration chosen per CWE on VAL", ""]
        lines += render_lead(rows, "test")
        lines.append("")
        if results["pooled"].get(mode):
            pooled = results["selection"][mode].get(POOLED, {})
            label = (pooled.get("best_steered") or {}).get("label")
            lines += [
                f"### Pooled 'any weakness' vector on TEST (setting chosen on VAL over all CWEs: {label}; "
                f"val choice: {pooled.get('chosen')})",
                "",
            ]
            lines += pooled_table(results["pooled"][mode])
            lines.append("")
        cross = results["cross_cwe"].get(mode)
        if cross and cross["vectors"]:
            lines += [
                f"### Cross-CWE matrix ({mode}, TEST): Δ balanced accuracy vs baseline when the vector of the "
                "row's CWE, at that CWE's best steered setting on VAL, is applied to the column's samples",
                "",
            ]
            lines += cross_table(cross)
            lines.append("")
    for method_key, block in results.get("cosine", {}).items():
        layer = list(block["layers"])[len(block["layers"]) // 2]
        lines += [f"### Cosine similarity of the vectors ({method_key}, layer {layer}, fitted on TRAIN)", ""]
        lines += markdown_table(
            ["", *block["cwes"]],
            [[a, *(f"{v:+.2f}" for v in line)] for a, line in zip(block["cwes"], block["layers"][layer])],
        )
        lines.append("")
    for plot in plots:
        lines += [f"![{Path(plot).stem}]({plot})", ""]
    lines += [
        "Plots: strength curves and layer × strength heatmaps are on the **VAL** split (the selection "
        "curves); the cross-CWE heatmap is on **TEST**; the PCA shows **TRAIN** activations; cosines compare "
        "the per-CWE vectors (fitted on TRAIN).",
        "",
    ]
    for mode, entries in results["val"].items():
        lines += [f"## All candidates, {mode} mode, VAL split (balanced accuracy; chosen in bold)", ""]
        lines += _val_table(entries, results["data"]["cwes"], results["selection"][mode])
        lines.append("")
    cache = results.get("activation_cache", {})
    lines += [
        "## Activation cache and timings",
        "",
        f"cache `{cache.get('dir')}`: {cache.get('hits', 0)} entries reused, {cache.get('misses', 0)} "
        f"extracted (layers {cache.get('extracted_layers', [])})",
        "",
        ", ".join(f"{k}: {v} s" for k, v in results.get("timings_s", {}).items()),
        "",
    ]
    return "\n".join(lines)
