"""The experiment configuration: one frozen, torch-free object, built from a TOML file or from CLI flags.

Every knob of ``vulnsteer run`` and ``vulnsteer sweep`` is a key here, declared once with its default, its
parser, its help text and (where it has one) its command-line flag. ``run`` is the protocol with these defaults;
``sweep CONFIG.toml`` is the same protocol with a file; both write ``config.resolved.toml`` (every default filled
in), and ``vulnsteer sweep RUN/config.resolved.toml`` reproduces the run.

>>> config = parse_config({"steering": {"layers": [10, [10, 15]], "strengths": [0.5], "unit": "raw"}})
>>> config.steering.layers, config.steering.strengths
(((10,), (10, 15)), (('raw', 0.5),))
>>> parse_config({"steering": {"layerz": [1]}}, "my.toml")
Traceback (most recent call last):
...
vulnsteer.experiment.values.ConfigError: my.toml: unknown key 'steering.layerz' (known in [steering]: layers, \
strengths, unit, positions, control_seed)

Vocabulary (used the same way in code, flags, TOML keys and reports): a **setting** is one steering configuration
(vector method and pooling, layers, unit, strength, steered positions); **pooling** is how a hidden state is read
from a prompt's tokens (``last``: the answer position, ``code_mean``: the mean over the code tokens); **positions**
are the token positions a steering hook edits (``last``, ``prompt``, ``generated``, ``all``); a **mode** is a
detector (``logit``, ``generation``).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .values import (
    STRENGTH_UNITS,
    ConfigError,
    Parser,
    boolean,
    cwe_list,
    fail,
    fractions,
    integer,
    layer_sets,
    merge_list,
    one_of,
    optional_str,
    pairs_cap,
    some_of,
    strength_list,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "MODES",
    "POOLINGS",
    "POSITIONS",
    "STRENGTH_UNITS",
    "ConfigError",
    "ExperimentConfig",
    "Key",
    "config_document",
    "config_keys",
    "identity_of",
    "key_info",
    "load_config",
    "parse_config",
]

#: Detector modes, activation poolings, steered token positions and strength units (torch-free copies of the
#: names that :mod:`vulnsteer.steering.hooks` and :mod:`vulnsteer.lm.activations` define; tests keep them equal).
MODES: tuple[str, ...] = ("logit", "generation")
POOLINGS: tuple[str, ...] = ("last", "code_mean")
POSITIONS: tuple[str, ...] = ("last", "prompt", "generated", "all")
METHOD_NAMES: tuple[str, ...] = ("mean_diff", "pca", "logistic")
DUPLICATE_POLICIES: tuple[str, ...] = ("merge", "drop", "keep")


# ------------------------------------------------------------------------------------------------ declarations


@dataclass(frozen=True)
class Key:
    """One configuration key: where it lives, its default, parser, help text and command-line flag."""

    section: str
    name: str
    default: Any
    parse: Parser
    help: str
    flag: str | None = None
    #: how the CLI reads the flag: ``str``, ``int``, ``float``, ``bool`` (a switch), ``csv`` (comma-separated
    #: words), ``floats`` (comma-separated numbers), ``repeat`` (repeatable), ``layers`` (repeatable layer set),
    #: ``nobool`` (a switch that sets the key to false)
    cli: str = "str"
    #: False for keys that say where and how fast, not what: a run directory may be resumed with them changed
    identity: bool = True

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.name}"


def _key(
    default: Any, parse: Parser, help: str, flag: str | None = None, cli: str = "str", identity: bool = True
) -> Any:
    return field(default=default, metadata={"key": (parse, help, flag, cli, identity)})


@dataclass(frozen=True)
class ModelSection:
    """``[model]``: which model, on which device."""

    name: str | None = _key(
        None,
        optional_str,
        "Hugging Face id, local directory or .gguf file (absent: the embedded SmolLM2-135M-Instruct)",
        "--model",
    )
    device: str | None = _key(None, optional_str, "cpu, cuda, cuda:1 ... (absent: cuda if available)", "--device")
    dtype: str | None = _key(
        None, optional_str, "auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16", "--dtype"
    )
    device_map: str | None = _key(
        None, optional_str, "passed to from_pretrained, e.g. 'auto' to spread a large model over GPUs", "--device-map"
    )
    trust_remote_code: bool = _key(
        False, boolean, "allow model repositories to run their own code", "--trust-remote-code", "bool"
    )
    layers_path: str | None = _key(
        None,
        optional_str,
        "dotted attribute path of the decoder blocks, for an architecture vulnsteer does not know (e.g. "
        "transformer.blocks; absent: found automatically)",
        "--layers-path",
    )


@dataclass(frozen=True)
class DataSection:
    """``[data]``: which samples, how they are cleaned, and how they are split."""

    path: str | None = _key(
        None, optional_str, "dataset file or folder, relative to the config file (absent: the bundled corpus)", "--data"
    )
    format: str | None = _key(
        None, optional_str, "sven, juliet, paired-dir, castle, jsonl, csv (absent: detected)", "--format"
    )
    cwes: tuple[str, ...] = _key((), cwe_list, "CWEs to use (empty: every CWE in the data)", "--cwe", "repeat")
    merge: tuple[str, ...] = _key((), merge_list, 'treat CWE FROM as TO, e.g. ["77=78"]', "--merge-cwe", "repeat")
    fractions: tuple[float, float, float] = _key(
        (0.6, 0.2, 0.2), fractions, "train, val, test fractions (split by pair/group)", "--fractions", "floats"
    )
    seed: int = _key(0, integer(0), "split seed", "--seed", "int")
    respect_upstream: bool = _key(
        False,
        boolean,
        "keep the dataset's own train/val split (its val becomes test)",
        "--respect-upstream-split",
        "bool",
    )
    max_pairs_per_cwe: int | None = _key(
        None,
        pairs_cap,
        "cap pairs per CWE, seeded choice (0: no cap; with "
        "respect_upstream the upstream val split, i.e. test, is not capped)",
        "--max-pairs-per-cwe",
        "int",
    )
    duplicates: str = _key(
        "merge",
        one_of(DUPLICATE_POLICIES),
        "code in several splits: merge (one split group, "
        "nothing dropped), drop (val/test copies and their partners), keep (report only)",
        "--duplicates",
    )
    max_code_tokens: int = _key(
        512, integer(32), "token budget for the code (longer code is truncated token-aware)", "--max-code-tokens", "int"
    )
    keep_comments: bool = _key(False, boolean, "keep comments (they can leak the label)", "--keep-comments", "bool")


@dataclass(frozen=True)
class VectorsSection:
    """``[vectors]``: how steering vectors are fitted on the train split."""

    methods: tuple[str, ...] = _key(
        ("mean_diff",), some_of(METHOD_NAMES), "direction methods: mean_diff, pca, logistic", "--method", "csv"
    )
    pooling: tuple[str, ...] = _key(
        ("last",),
        some_of(POOLINGS),
        "activation pooling the vectors are fitted at: last (answer position), code_mean",
        "--pooling",
        "csv",
    )
    pooled: bool = _key(
        False, boolean, "also fit and select a pooled 'any weakness' vector over all CWEs", "--pooled-vector", "bool"
    )


#: ``vulnsteer run``'s candidate strengths (x the layer's mean hidden-state norm, both signs: raw mean differences
#: are a few per cent of the hidden norm on small models and move nothing; validation picks sign and size).
DEFAULT_STRENGTHS: tuple[tuple[str, float], ...] = tuple(("relative", s) for s in (-1.0, -0.3, 0.3, 1.0))


@dataclass(frozen=True)
class SteeringSection:
    """``[steering]``: the candidate settings (layer sets x strengths x positions)."""

    layers: tuple[tuple[int, ...], ...] = _key(
        (),
        layer_sets,
        "single layers and layer sets, e.g. [[10], [15], "
        "[10, 15]]; negatives count from the end ([]: the middle layer)",
        "--layers",
        "layers",
    )
    strengths: tuple[tuple[str, float], ...] = _key(
        DEFAULT_STRENGTHS,
        strength_list,
        "{raw = [...], relative = [...]}; positive = toward 'vulnerable'",
        "--strengths",
        "floats",
    )
    positions: tuple[str, ...] = _key(
        ("last",), some_of(POSITIONS), "token positions steered: last, prompt, generated, all", "--positions", "csv"
    )
    control_seed: int = _key(1234, integer(0), "seed of the random-direction controls", "--control-seed", "int")


@dataclass(frozen=True)
class DetectionSection:
    """``[detection]``: detector modes and how each one's setting is chosen."""

    modes: tuple[str, ...] = _key(MODES, some_of(MODES), "detector modes: logit and/or generation", "--modes", "csv")
    select_generation_by: str = _key(
        "logit",
        one_of(MODES),
        "whose validation results choose the generation "
        "setting: logit (generation then runs on test only) or generation",
        "--select-generation-by",
    )
    cross_cwe_modes: tuple[str, ...] = _key(
        ("logit",),
        some_of(MODES, empty=True),
        "modes in which each CWE's chosen vector is also applied to every other CWE's test samples (cross-CWE matrix)",
        "--cross-cwe-modes",
        "csv",
    )
    max_new_tokens: int = _key(20, integer(1), "generation mode: tokens to generate", "--max-new-tokens", "int")
    batch_size: int = _key(8, integer(1), "samples per forward pass", "--batch-size", "int")


@dataclass(frozen=True)
class ReportSection:
    """``[report]``: what the report adds beyond the lead tables."""

    probes: bool = _key(
        True,
        boolean,
        "probe detectors (the vector and a logistic probe read as classifiers, and "
        "their length-only control) on the val/test activations",
        "--no-probes",
        "nobool",
    )
    n_examples: int = _key(2, integer(0), "example generations per CWE in the report", "--examples", "int")


@dataclass(frozen=True)
class RunSection:
    """``[run]``: where results go and how the work is chunked and cached (none of it changes a number)."""

    out: str | None = _key(
        None, optional_str, "run directory (rerun to resume; absent: runs/<name>-<timestamp>)", "--out", identity=False
    )
    group_size: int = _key(
        16,
        integer(1),
        "conditions per saved chunk (a kill loses at most one chunk)",
        "--group-size",
        "int",
        identity=False,
    )
    prefix_cache_mib: int = _key(
        2048,
        integer(0),
        "memory for prompt-prefix KV caches kept between chunks, MiB (0: recompute per chunk)",
        "--prefix-cache-mib",
        "int",
        identity=False,
    )
    cache: bool = _key(True, boolean, "use the on-disk activation cache", identity=False)
    cache_dir: str | None = _key(
        None, optional_str, "activation cache folder (absent: <cache root>/activations)", "--cache-dir", identity=False
    )
    controls_on_val: bool = _key(
        True, boolean, "random controls for every candidate on val too (the selection curves' control lines)"
    )


SECTIONS: dict[str, type] = {
    "model": ModelSection,
    "data": DataSection,
    "vectors": VectorsSection,
    "steering": SteeringSection,
    "detection": DetectionSection,
    "report": ReportSection,
    "run": RunSection,
}


@dataclass(frozen=True)
class ExperimentConfig:
    """An experiment, fully resolved. Build it with :func:`parse_config` or :func:`load_config`.

    >>> ExperimentConfig().detection.modes
    ('logit', 'generation')
    """

    description: str = ""
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    vectors: VectorsSection = field(default_factory=VectorsSection)
    steering: SteeringSection = field(default_factory=SteeringSection)
    detection: DetectionSection = field(default_factory=DetectionSection)
    report: ReportSection = field(default_factory=ReportSection)
    run: RunSection = field(default_factory=RunSection)

    def replace(self, **dotted: Any) -> ExperimentConfig:
        """A copy with ``section__key=value`` changes, validated like a file: ``cfg.replace(run__out="x")``."""
        doc = config_document(self)
        for name, value in dotted.items():
            section, key = name.split("__", 1)
            doc.setdefault(section, {})[key] = _plain(value)
        return parse_config(doc, "<replace>")

    def selection_mode(self, mode: str) -> str:
        """The detector mode whose validation results choose *mode*'s setting."""
        if mode == "generation" and self.detection.select_generation_by in self.detection.modes:
            return self.detection.select_generation_by
        return mode

    def selecting_modes(self) -> tuple[str, ...]:
        """The modes scored on validation (every mode that chooses for itself or for another)."""
        return tuple(dict.fromkeys(self.selection_mode(m) for m in self.detection.modes))


def config_keys() -> list[Key]:
    """Every key, in section order (what the CLI turns into flags and the resolved file lists)."""
    keys = []
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            parse, help_text, flag, cli, identity = f.metadata["key"]
            keys.append(Key(section, f.name, f.default, parse, help_text, flag, cli, identity))
    return keys


_KEYS: dict[tuple[str, str], Key] = {(k.section, k.name): k for k in config_keys()}


# ------------------------------------------------------------------------------------------------ parsing


def parse_config(
    doc: Mapping[str, Any], source: str = "<config>", overrides: Mapping[str, tuple[Any, str]] | None = None
) -> ExperimentConfig:
    """Validate a parsed TOML document. *overrides* maps ``"section.key"`` to ``(value, where)`` (a command-line
    flag and the flag's name, which error messages then name).

    >>> parse_config({"detection": {"modes": ["logit"]}}).detection.modes
    ('logit',)
    """
    values: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
    units: dict[str, str] = {}
    description = ""
    for section, body in doc.items():
        if section == "description":
            if not isinstance(body, str):
                raise ConfigError(f"{source}: description must be a string")
            description = body
            continue
        if section not in SECTIONS:
            raise ConfigError(f"{source}: unknown key {section!r} (known sections: {', '.join(SECTIONS)})")
        if not isinstance(body, dict):
            raise ConfigError(f"{source}: {section!r} must be a table ([{section}])")
        for key, value in body.items():
            if value is not None:  # None (JSON null, as results.json stores an unset key): the default
                _set(values, units, section, key, value, f"{source}: {section}.{key}", source)
    for dotted, (value, where) in (overrides or {}).items():
        section, key = dotted.split(".", 1)
        _set(values, units, section, key, value, where, where)
    _resolve_strengths(values, units)
    try:
        sections = {name: cls(**values[name]) for name, cls in SECTIONS.items()}
        config = ExperimentConfig(description=description, **sections)
    except TypeError as exc:  # pragma: no cover - every key is declared
        raise ConfigError(f"{source}: {exc}") from None
    if not any(strength for _, strength in config.steering.strengths):
        raise ConfigError(f"{source}: steering.strengths needs a non-zero strength (the baseline is always run)")
    return config


def _set(
    values: dict[str, dict[str, Any]],
    units: dict[str, str],
    section: str,
    key: str,
    value: Any,
    where: str,
    source: str,
) -> None:
    if (section, key) == ("steering", "unit"):
        if value not in STRENGTH_UNITS:
            raise fail(where, f"unknown unit {value!r}; choose from {', '.join(STRENGTH_UNITS)}")
        units["unit"], units["where"] = str(value), where
        return
    spec = _KEYS.get((section, key))
    if spec is None:
        known = ", ".join(
            [k.name for k in _KEYS.values() if k.section == section] + (["unit"] if section == "steering" else [])
        )
        known = _steering_order(known) if section == "steering" else known
        raise ConfigError(f"{source}: unknown key '{section}.{key}' (known in [{section}]: {known})")
    values[section][key] = spec.parse(value, where)
    if (section, key) == ("steering", "strengths"):
        units["strengths_where"] = where


def _steering_order(known: str) -> str:
    names = known.split(", ")
    names.remove("unit")
    names.insert(names.index("strengths") + 1, "unit")
    return ", ".join(names)


def _resolve_strengths(values: dict[str, dict[str, Any]], units: dict[str, str]) -> None:
    """A plain list of strengths takes ``steering.unit``; a unit alone re-units the default strengths."""
    steering = values["steering"]
    unit = units.get("unit")
    if "strengths" in steering:
        plain = [s for s in steering["strengths"] if not s[0]]
        where = units.get("strengths_where", "steering.strengths")
        if plain and unit is None:
            raise fail(
                where,
                "steering.strengths is a plain list: set steering.unit (raw or relative), or write "
                "strengths = {relative = [...], raw = [...]}",
            )
        if unit is not None and not plain:
            raise fail(
                units["where"],
                "steering.unit only qualifies a plain list of strengths; the table form names its units itself",
            )
        steering["strengths"] = tuple(dict.fromkeys((u or unit or "", s) for u, s in steering["strengths"]))
    elif unit is not None:
        steering["strengths"] = tuple((unit, s) for _, s in DEFAULT_STRENGTHS)


def load_config(path: str | Path, overrides: Mapping[str, tuple[Any, str]] | None = None) -> ExperimentConfig:
    """Read and validate a TOML config; ``data.path`` is relative to the file (stored absolute when resolved).

    >>> load_config("examples/quick.toml").data.cwes  # doctest: +SKIP
    ('CWE-89', 'CWE-78')
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"config file not found: {file}")
    try:
        doc = tomllib.loads(file.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: not valid TOML ({exc})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{file}: not a UTF-8 text file") from None
    data = doc.get("data")
    path_value = data.get("path") if isinstance(data, dict) else None
    if isinstance(data, dict) and isinstance(path_value, str) and path_value and not Path(path_value).is_absolute():
        doc = {**doc, "data": {**data, "path": str((file.parent / path_value).expanduser().resolve())}}
    return parse_config(doc, str(file), overrides)


# ------------------------------------------------------------------------------------------------ writing


def config_document(config: ExperimentConfig) -> dict[str, Any]:
    """The resolved config as TOML-ready nested tables (``None``: not set, written as a comment)."""
    doc: dict[str, Any] = {}
    if config.description:
        doc["description"] = config.description
    for section in SECTIONS:
        body = getattr(config, section)
        doc[section] = {}
        for f in dataclasses.fields(body):
            value = getattr(body, f.name)
            if (section, f.name) == ("steering", "strengths"):
                table: dict[str, list[float]] = {}
                for unit, strength in value:
                    table.setdefault(unit, []).append(strength)
                value = table
            elif (section, f.name) == ("data", "max_pairs_per_cwe") and value is None:
                value = 0
            doc[section][f.name] = _plain(value)
    return doc


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def key_info(section: str, name: str) -> Key:
    """The declaration of ``section.name``."""
    return _KEYS[(section, name)]


def identity_of(config: ExperimentConfig) -> dict[str, Any]:
    """The keys that decide the numbers (everything but where and how fast), flat: ``{"steering.layers": ...}``."""
    doc = config_document(config)
    out = {"description": config.description}
    for section in SECTIONS:
        for key, value in doc[section].items():
            if _KEYS[(section, key)].identity:
                out[f"{section}.{key}"] = value
    return out
