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
vulnsteer.config.values.ConfigError: my.toml: unknown key 'steering.layerz' (known in [steering]: layers, \
strengths, unit, positions, control_seed)

Vocabulary (used the same way in code, flags, TOML keys and reports): a **setting** is one steering configuration
(vector method and pooling, layers, unit, strength, steered positions); **pooling** is how a hidden state is read
from a prompt's tokens (``last``: the answer position, ``code_mean``: the mean over the code tokens); **positions**
are the token positions a steering hook edits (``last``, ``prompt``, ``generated``, ``all``); a **mode** is
how the model's verdict is read (``logit``, ``generation``).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .defaults import MAX_SHIFT_RATIO
from .design import ProbeDesign
from .sections import (
    DEFAULT_CONDITIONAL_STRENGTHS,
    DEFAULT_STRENGTHS,
    SECTIONS,
    BaselinesSection,
    ConditionalSection,
    DataSection,
    DetectionSection,
    Key,
    ModelSection,
    ReportSection,
    RunSection,
    SteeringSection,
    TransferSection,
    VectorsSection,
)
from .values import ConfigError, fail, path_list, path_value
from .vocabulary import STRENGTH_UNITS

__all__ = [
    "APPLIES",
    "UNIT_FLAGS",
    "ConfigError",
    "ExperimentConfig",
    "Key",
    "check_overrides",
    "config_document",
    "config_keys",
    "identity_of",
    "key_info",
    "load_config",
    "parse_config",
]


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
    conditional: ConditionalSection = field(default_factory=ConditionalSection)
    baselines: BaselinesSection = field(default_factory=BaselinesSection)
    report: ReportSection = field(default_factory=ReportSection)
    run: RunSection = field(default_factory=RunSection)
    transfer: TransferSection = field(default_factory=TransferSection)

    def replace(self, **dotted: Any) -> ExperimentConfig:
        """A copy with ``section__key=value`` changes, validated like a file: ``cfg.replace(run__out="x")``."""
        doc = config_document(self)
        for name, value in dotted.items():
            section, key = name.split("__", 1)
            doc.setdefault(section, {})[key] = _plain(value)
        return parse_config(doc, "<replace>")

    def selection_mode(self, mode: str) -> str:
        """The mode whose validation results choose *mode*'s setting."""
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
    units: dict[str, dict[str, str]] = {}
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

    def named(dotted: str) -> str:  # how an error names a key: its flag, or the file and the key
        return (overrides or {}).get(dotted, (None, f"{source}: {dotted}"))[1]

    for dotted, (_, flag) in (overrides or {}).items():  # a flag that would change nothing is refused, not ignored
        section, key = dotted.split(".", 1)
        if section == "conditional" and key != "enabled" and not config.conditional.enabled:
            raise ConfigError(f"{flag} needs conditional steering (conditional.enabled; drop --no-conditional)")
        if section == "run" and key.startswith("ray_") and config.run.executor != "ray":
            raise ConfigError(f"{flag} needs --executor ray (run.executor)")
    if config.model.remote and config.model.backend != "nnsight":
        raise ConfigError(
            f"{named('model.remote')} needs backend nnsight (--backend nnsight): remote execution is nnsight's"
        )
    d = config.data
    for dotted, value in (("data.format", d.format), ("data.respect_upstream", d.respect_upstream)):
        if value and d.path is None and not d.paths:
            path = "--data" if named(dotted).startswith("--") else "data.path"
            raise ConfigError(f"{named(dotted)} needs {path} (the bundled corpus has neither a format to choose nor "
                              "an upstream split)")  # fmt: skip
    if d.path is not None and d.paths:
        raise ConfigError(f"{source}: data.path and data.paths exclude each other (one dataset, or several)")
    if d.formats and len(d.formats) != len(d.paths):
        raise ConfigError(f"{source}: data.formats names {len(d.formats)} formats for {len(d.paths)} data.paths")
    if not any(strength for _, strength in config.steering.strengths):
        raise ConfigError(f"{source}: steering.strengths needs a non-zero strength (the baseline is always run)")
    other = config.transfer.other_prompts
    if config.transfer.steered and other:
        raise ConfigError(
            f"{source}: transfer.templates (or a transfer.designs entry) names the prompt {other[0]!r}, but the "
            "steered model asks the default question: set transfer.steered = false to compare prompts"
        )
    return config


#: Sections whose ``strengths`` may be a plain list qualified by the section's ``unit`` key, and their defaults.
UNIT_SECTIONS: dict[str, tuple[tuple[str, float], ...]] = {
    "steering": DEFAULT_STRENGTHS,
    "conditional": DEFAULT_CONDITIONAL_STRENGTHS,
}


#: The CLI flag that qualifies each section's plain list of strengths.
UNIT_FLAGS = {"steering": "--unit", "conditional": "--conditional-unit"}


def _set(
    values: dict[str, dict[str, Any]],
    units: dict[str, dict[str, str]],
    section: str,
    key: str,
    value: Any,
    where: str,
    source: str,
) -> None:
    if key == "unit" and section in UNIT_SECTIONS:
        if value not in STRENGTH_UNITS:
            raise fail(where, f"unknown unit {value!r}; choose from {', '.join(STRENGTH_UNITS)}")
        units.setdefault(section, {}).update({"unit": str(value), "where": where})
        return
    spec = _KEYS.get((section, key))
    if spec is None:
        names = [k.name for k in _KEYS.values() if k.section == section]
        if section in UNIT_SECTIONS:
            names.insert(names.index("strengths") + 1, "unit")
        raise ConfigError(f"{source}: unknown key '{section}.{key}' (known in [{section}]: {', '.join(names)})")
    values[section][key] = spec.parse(value, where)
    if key == "strengths" and section in UNIT_SECTIONS:
        units.setdefault(section, {})["strengths_where"] = where


def _resolve_strengths(values: dict[str, dict[str, Any]], units: dict[str, dict[str, str]]) -> None:
    """A plain list of strengths takes the section's ``unit``; a unit alone re-units the default strengths."""
    for section, default in UNIT_SECTIONS.items():
        body, found = values[section], units.get(section, {})
        unit = found.get("unit")
        if "strengths" in body:
            plain = [s for s in body["strengths"] if not s[0]]
            where = found.get("strengths_where", f"{section}.strengths")
            if plain and unit is None:
                flag = UNIT_FLAGS[section]
                raise fail(
                    where,
                    f"say the strengths' unit with {flag} (raw, relative or sigma)"
                    if where.startswith("--")
                    else f"{section}.strengths is a plain list: set {section}.unit (raw, relative or "
                    "sigma), or write strengths = {relative = [...], raw = [...]}",
                )
            if unit is not None and not plain:
                raise fail(
                    found["where"],
                    f"{section}.unit only qualifies a plain list of strengths; the table form names its units itself",
                )
            body["strengths"] = tuple(dict.fromkeys((u or unit or "", s) for u, s in body["strengths"]))
            absurd = [s for u, s in body["strengths"] if u == "relative" and abs(s) > MAX_SHIFT_RATIO]
            if absurd:
                raise fail(
                    where,
                    f"relative strength {absurd[0]:g} shifts the hidden state by {abs(absurd[0]):g} x its mean norm, "
                    f"far beyond the hidden-state scale (at most {MAX_SHIFT_RATIO:g})",
                )
        elif unit is not None:
            body["strengths"] = tuple((unit, s) for _, s in default)


def load_config(path: str | Path, overrides: Mapping[str, tuple[Any, str]] | None = None) -> ExperimentConfig:
    """Read and validate a TOML config. Every path in it (``data.path``, ``data.paths``, ``run.out``,
    ``run.cache_dir``) is relative to the file's folder, ``~`` is the home folder, and each is stored absolute (a
    flag on the command line is relative to the working directory, as usual).

    >>> load_config("examples/quick.toml").data.cwes  # doctest: +SKIP
    ('CWE-89', 'CWE-78')
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(
            f"{file}: is a folder, not a config file" if file.is_dir() else f"config file not found: {file}"
        )
    try:
        doc = tomllib.loads(file.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: not valid TOML ({exc})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{file}: not a UTF-8 text file") from None
    doc = {name: _anchored(body, SECTIONS.get(name), file.parent) for name, body in doc.items()}
    return parse_config(doc, str(file), overrides)


def _anchored(body: Any, section: type | None, folder: Path) -> Any:
    """A TOML section's *body* with its path keys (parsed by ``path_value``/``path_list``) anchored at *folder*
    (``~`` expanded first; ``builtin`` and absolute paths kept)."""
    if not isinstance(body, dict) or section is None:
        return body

    def anchor(value: Any) -> Any:
        if not isinstance(value, str) or not value or value == "builtin":
            return value
        path = Path(value).expanduser()
        return str(path if path.is_absolute() else (folder / path).resolve())

    out = dict(body)
    for f in dataclasses.fields(section):
        parser = f.metadata.get("key", (None,))[0]
        if f.name not in out or parser not in (path_value, path_list):
            continue
        value = out[f.name]
        out[f.name] = [anchor(v) for v in value] if isinstance(value, list) else anchor(value)
    return out


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
            if f.name == "strengths" and section in UNIT_SECTIONS:
                table: dict[str, list[float]] = {}
                for unit, strength in value:
                    table.setdefault(unit, []).append(strength)
                value = table
            elif (section, f.name) == ("data", "max_pairs_per_cwe") and value is None:
                value = 0
            elif (section, f.name) == ("transfer", "max_pairs_per_cwe"):
                value = tuple(0 if cap is None else cap for cap in value)
            doc[section][f.name] = _plain(value)
    return doc


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, ProbeDesign):
        return value.to_json()
    return value


def key_info(section: str, name: str) -> Key:
    """The declaration of ``section.name``."""
    return _KEYS[(section, name)]


def identity_of(config: ExperimentConfig, sections: tuple[str, ...] = ()) -> dict[str, Any]:
    """The keys that decide the numbers (everything but where and how fast), flat: ``{"steering.layers": ...}``;
    only those of *sections* when given (a command's own sections: other keys do not change its numbers)."""
    doc = config_document(config)
    out = {"description": config.description}
    for section in sections or tuple(SECTIONS):
        for key, value in doc[section].items():
            if _KEYS[(section, key)].identity:
                out[f"{section}.{key}"] = value
    return out


def default_identity() -> dict[str, Any]:
    """:func:`identity_of` the default configuration, every section: what a key added to the configuration later
    is compared against in an older run's identity (a new key's default reproduces what the runs before it did)."""
    return identity_of(parse_config({}, "defaults"))


#: The configuration keys each evaluation takes (a section name: all its keys); any other key would be silently
#: ignored, so :func:`check_overrides` refuses it. ``--from`` applies the run's own vectors, strengths, gates and
#: prompts; ``--vectors`` applies one method, layer set, unit and positions at the strength given.
APPLIES: dict[str, tuple[str, ...]] = {
    "evaluate --from": ("model", "data", "run", "detection.modes", "detection.max_new_tokens",
                        "detection.batch_size", "detection.cross_cwe_modes", "report.n_examples"),
    "evaluate --vectors": ("model", "data", "run", "detection.modes", "detection.max_new_tokens",
                           "detection.batch_size", "detection.cross_cwe_modes", "report.n_examples",
                           "vectors.methods", "vectors.pooling", "steering.layers", "steering.unit",
                           "steering.positions", "steering.control_seed"),
}  # fmt: skip


def check_overrides(command: str, overrides: Mapping[str, tuple[Any, str]]) -> None:
    """Refuse a given key (``{"section.key": (value, "--flag")}``, as from CLI flags) that *command* (a key of
    :data:`APPLIES`) would not use, naming its flag: nothing is ignored without a word.

    >>> check_overrides("evaluate --from", {"data.path": ("x.jsonl", "--data")})
    >>> try:
    ...     check_overrides("evaluate --from", {"steering.strengths": ((("relative", 2.0),), "--strengths")})
    ... except ValueError as exc:
    ...     print(str(exc).split(";")[0])
    --strengths does not apply to evaluate --from (it applies the run's own choices)
    """
    applies = APPLIES[command]
    for dotted, (_, flag) in overrides.items():
        if dotted not in applies and dotted.split(".", 1)[0] not in applies:
            why = "the run's own choices" if command.endswith("--from") else "the saved vectors at --strength"
            raise ValueError(f"{flag} does not apply to {command} (it applies {why}); see vulnsteer evaluate --help")
