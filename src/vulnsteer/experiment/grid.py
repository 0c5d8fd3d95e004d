"""The grid: steering settings, and the conditions (setting x role x mode x split) that get scored.

A :class:`Setting` is one steering configuration: which vector (method at a pooling), at which layers, in which
strength unit and size, at which token positions, and, for conditional steering, which probe gates it and how.
A :class:`Condition` is what the engine scores and stores: the baseline (no setting, possibly under another
prompt template), a setting with a real vector (``steered``), with its random-direction control (``control``:
same norms, same layers, same gate), or, for a gated setting, with a random gate (``gate_control``: the real
vector gated by a random direction's score): that is its *role*. It is scored in one mode, on one split, with one
vector source. Its :attr:`Condition.key` names it in ``records.jsonl`` (a resumed run finds its records by it).

>>> s = Setting("mean_diff", "last", (15,), "relative", 0.3, "last")
>>> s.label()
'mean_diff@last L15 relative +0.3 (steer last)'
>>> s.condition("control", "logit", "val").key
'control|logit|val|mean_diff@last|L15|relative:0.3|last|own|all|seed=1234'
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from ..config import ExperimentConfig
from ..lm.model import resolve_layers
from ..steering.gate import Gate
from ..steering.hooks import PositionMode, SteeringSpec, StrengthUnit
from ..steering.probe import Probe
from ..steering.vectors import SteeringVector

__all__ = [
    "POOLED",
    "ROLES",
    "Condition",
    "Setting",
    "candidate_settings",
    "condition_specs",
    "control_vector",
    "gate_probe",
    "resolve_layer_sets",
    "val_conditions",
]

#: Name of the pooled "any weakness" vector (all CWEs' training samples together).
POOLED = "any"
#: What a scored condition is in a comparison (the glossary's *role*).
ROLES: tuple[str, ...] = ("baseline", "steered", "control", "gate_control")
#: How a random-gate control names its probe: ``random:<probe key>``.
RANDOM_PROBE = "random:"
DEFAULT_CONTROL_SEED = 1234


@dataclass(frozen=True)
class Setting:
    """One steering setting (see the module docstring); ``strength > 0`` pushes toward "vulnerable"."""

    method: str
    pooling: str
    layers: tuple[int, ...]
    unit: str
    strength: float
    positions: str
    #: conditional steering: ``none`` (constant), or a gate kind (``sign``, ``linear``, ``one_sided``)
    gate: str = "none"
    #: the gating probe's key (``logistic@code_mean@L15``), for a gated setting
    probe: str | None = None

    def __post_init__(self) -> None:
        if (self.gate == "none") != (self.probe is None):
            raise ValueError("a gated setting names its gating probe, and a constant one does not")

    @property
    def gated(self) -> bool:
        return self.gate != "none"

    @property
    def method_key(self) -> str:
        """How fitted vectors are keyed: ``(cwe, "mean_diff@last")``."""
        return f"{self.method}@{self.pooling}"

    @property
    def key(self) -> str:
        layers = ",".join(map(str, self.layers))
        gate = f"|{self.gate}:{self.probe}" if self.gated else ""
        return f"{self.method_key}|L{layers}|{self.unit}:{self.strength:g}|{self.positions}{gate}"

    def label(self) -> str:
        layers = ",".join(map(str, self.layers))
        vector = self.method if self.method == self.pooling else self.method_key
        gate = f" gated by {self.probe} ({self.gate})" if self.gated else ""
        return f"{vector} L{layers} {self.unit} {self.strength:+g} (steer {self.positions}){gate}"

    def condition(
        self,
        role: str,
        mode: str,
        split: str,
        vector: str | None = None,
        cover: str = "all",
        control_seed: int = DEFAULT_CONTROL_SEED,
    ) -> Condition:
        return Condition(role, mode, split, self, vector, cover, control_seed)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["layers"] = list(self.layers)
        data["label"] = self.label()
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Setting:
        return cls(
            str(data["method"]),
            str(data["pooling"]),
            tuple(int(x) for x in data["layers"]),
            str(data["unit"]),
            float(data["strength"]),
            str(data["positions"]),
            str(data.get("gate", "none")),
            data.get("probe"),
        )


@dataclass(frozen=True)
class Condition:
    """One scored condition.

    Attributes:
        role: ``baseline``, ``steered``, ``control`` (random vector) or ``gate_control`` (random gate).
        mode: ``logit`` or ``generation``.
        split: ``val``, ``test``, ``train`` or ``all`` (every sample of another dataset).
        setting: the steering setting (None for the baseline).
        vector: whose vector steers: None = each sample's own CWE's, ``"any"`` = the pooled vector, or a CWE id.
        cover: ``all`` samples of the split, or only the ``target`` samples (those of the *vector*'s CWE).
        control_seed: seed of the random direction (``control`` and ``gate_control``).
        template: the prompt template's name (``default``; other names are the prompting baselines).
    """

    role: str
    mode: str
    split: str
    setting: Setting | None = None
    vector: str | None = None
    cover: str = "all"
    control_seed: int = DEFAULT_CONTROL_SEED
    template: str = "default"

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"a condition's role must be one of {ROLES}, got {self.role!r}")
        if (self.role == "baseline") != (self.setting is None):
            raise ValueError("the baseline has no setting; steered and control conditions need one")
        if self.cover not in ("all", "target") or (self.cover == "target" and self.vector in (None, POOLED)):
            raise ValueError(f"cover must be 'all', or 'target' with a CWE's vector, got {self.cover!r}")
        if self.role == "gate_control" and (self.setting is None or not self.setting.gated):
            raise ValueError("a random-gate control needs a gated setting")

    @property
    def key(self) -> str:
        """Unique name in ``records.jsonl``: every field that changes a record is in it (its text never changes
        between versions: a resumed run finds its finished conditions by it)."""
        template = "" if self.template == "default" else f"|template={self.template}"
        if self.setting is None:
            return f"baseline|{self.mode}|{self.split}{template}"
        return (
            f"{self.role}|{self.mode}|{self.split}|{self.setting.key}|{self.vector or 'own'}|{self.cover}"
            f"|seed={self.control_seed}{template}"
        )

    @property
    def variant_key(self) -> str:
        """What steers, regardless of the mode (one forward pass serves every mode)."""
        return self.key.replace(f"|{self.mode}|", "|", 1)

    @property
    def strength(self) -> float:
        return 0.0 if self.setting is None else self.setting.strength

    def label(self) -> str:
        if self.setting is None:
            return "baseline" if self.template == "default" else f"baseline ({self.template} prompt)"
        source = "" if self.vector is None else f" [{self.vector} vector]"
        return f"{self.role} {self.setting.label()}{source}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "mode": self.mode,
            "split": self.split,
            "setting": None if self.setting is None else self.setting.to_dict(),
            "vector": self.vector,
            "cover": self.cover,
            "control_seed": self.control_seed,
            "template": self.template,
            "key": self.key,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Condition:
        """A condition from its :meth:`to_dict` form (``kind`` is what files of schema 2 call the role)."""
        setting = data.get("setting")
        return cls(
            str(data["role"] if "role" in data else data["kind"]),
            str(data["mode"]),
            str(data["split"]),
            None if setting is None else Setting.from_dict(setting),
            data.get("vector"),
            str(data.get("cover", "all")),
            int(data.get("control_seed", DEFAULT_CONTROL_SEED)),
            str(data.get("template", "default")),
        )


def resolve_layer_sets(
    groups: Sequence[Sequence[int]], num_layers: int, option: str = "steering.layers (--layers)"
) -> list[tuple[int, ...]]:
    """Layer sets with negative indices resolved (the middle layer when none are configured), duplicates dropped.

    >>> resolve_layer_sets([[-1], [2, 1]], 30)
    [(29,), (1, 2)]
    """
    sets = [tuple(resolve_layers(list(group), num_layers, option)) for group in groups] or [(num_layers // 2,)]
    return list(dict.fromkeys(sets))


def candidate_settings(config: ExperimentConfig, layer_sets: Sequence[tuple[int, ...]]) -> list[Setting]:
    """Every steered candidate, in config order (that order breaks ties after |strength|)."""
    v, s = config.vectors, config.steering
    return [
        Setting(method, pooling, layers, unit, strength, positions)
        for method in v.methods
        for pooling in v.pooling
        for positions in s.positions
        for layers in layer_sets
        for unit, strength in s.strengths
        if strength != 0
    ]


def val_conditions(config: ExperimentConfig, settings: Sequence[Setting], mode: str) -> list[Condition]:
    """The validation grid of constant steering in one mode: every setting with each CWE's own vector (and, with
    ``run.controls_on_val``, its random control, for the selection curves), then with the pooled vector (the
    baseline is the protocol's)."""
    seed = config.steering.control_seed
    conds = []
    for setting in settings:
        conds.append(setting.condition("steered", mode, "val", control_seed=seed))
        if config.run.controls_on_val:
            conds.append(setting.condition("control", mode, "val", control_seed=seed))
    if config.vectors.pooled:
        conds += [setting.condition("steered", mode, "val", POOLED, control_seed=seed) for setting in settings]
    return conds


def control_vector(vector: SteeringVector, seed: int) -> SteeringVector:
    """The random-direction control for *vector* (same norms, same layers), seeded per CWE and method."""
    digest = int(hashlib.sha256(f"{seed}:{vector.cwe}:{vector.provenance.method}".encode()).hexdigest()[:8], 16)
    return vector.random_like(digest)


def gate_probe(probes: Mapping[tuple[str, str], Probe] | None, cwe: str, key: str) -> Probe | None:
    """The gating probe *key* for a sample of *cwe*: its own ``(cwe, key)``, else the one pooled over every CWE
    (``("any", key)``); None where there is neither.

    >>> gate_probe({}, "CWE-89", "logistic@code_mean@L15") is None
    True
    """
    found = (probes or {}).get((cwe, key))
    return found if found is not None else (probes or {}).get((POOLED, key))


def condition_specs(
    condition: Condition,
    cwe: str,
    vectors: Mapping[tuple[str, str], SteeringVector],
    probes: Mapping[tuple[str, str], Probe] | None = None,
) -> list[SteeringSpec] | None:
    """The steering specs of *condition* for a sample of *cwe*: ``[]`` for the baseline, None when the condition
    does not cover the sample or has no vector (or gating probe) for it. A gated setting's probe is looked up by
    :func:`gate_probe`; a random-gate control uses the probe ``random:<key>``."""
    if condition.setting is None:
        return []
    if condition.cover == "target" and cwe != condition.vector:
        return None
    setting = condition.setting
    vec = vectors.get((condition.vector or cwe, setting.method_key))
    if vec is None:
        return None
    if condition.role == "control":
        vec = control_vector(vec, condition.control_seed)
    gate = None
    if setting.gated:
        assert setting.probe is not None
        name = (RANDOM_PROBE if condition.role == "gate_control" else "") + setting.probe
        probe = gate_probe(probes, cwe, name)
        if probe is None:
            return None
        gate = Gate(setting.gate, probe)
    source = "conditional.strengths (--conditional-strengths)" if gate else "steering.strengths (--strengths)"
    return [SteeringSpec(vec, setting.strength, layers=setting.layers or vec.layers,
                         positions=cast(PositionMode, setting.positions), unit=cast(StrengthUnit, setting.unit),
                         gate=gate, source=source)]  # fmt: skip
