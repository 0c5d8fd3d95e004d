"""``results.json`` as typed values: what every experiment command (run, sweep, evaluate) writes and the report reads.

:class:`Results` holds a header (command, status, model, data, the resolved configuration), the validation entries,
one :class:`FamilyResults` per detector family (its choices, its per-CWE rows on the held-out samples, what it
fitted and saved), the lead table (one :class:`LeadRow` per detector, with metric blocks, CIs and p-values), the
probe table, the held-out records, and where and how fast the run went. Every class is frozen and turns into JSON
and back (:meth:`Results.to_json`, :meth:`Results.from_json`); :func:`~vulnsteer.experiment.upgrade.load_results`
also reads files of schema 2.

Schema 3 (top-level keys; a key is absent or empty where a command has nothing to put there): ``schema_version``,
``command``, ``status``, ``config``, ``template``, ``sign_convention``, ``environment``, ``model``, ``warnings``,
``run_dir`` / ``vectors_from`` / ``source_model`` (evaluate), ``data``, ``layer_sets``, ``layers``, ``pca``,
``val`` (per mode), ``families`` (per family, in the order they ran), ``lead`` (per mode), ``probes``,
``records``, ``activation_cache``, ``prefix_cache``, ``peak_memory``, ``executor``, ``timings_s``, ``files``,
``finished_conditions`` (an interrupted run).

Data summaries owned by other layers (the split summary, the cleaning notes, the configuration document) are kept
as the documents those layers write, read through typed properties (:class:`SplitsInfo`, :class:`DataNotes`,
:class:`GridInfo`).

>>> block = MetricBlock(n=4, balanced_accuracy=0.75, balanced_accuracy_ci=(0.5, 1.0))
>>> MetricBlock.from_json(block.to_json()) == block
True
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from .._version import __version__
from ..detection.probe import ProbeResult
from ..detection.records import DetectionRecord, record_from_dict
from ..stats.metrics import point_metrics
from .grid import Condition
from .select import Choice

if TYPE_CHECKING:  # pragma: no cover
    from ..lm.model import LoadedModel
    from ..lm.prompts import PromptTemplate

__all__ = [
    "SCHEMA_VERSION",
    "Change",
    "Control",
    "CosineBlock",
    "CrossCwe",
    "DataInfo",
    "DataNotes",
    "Example",
    "FamilyResults",
    "Flips",
    "GateProbeInfo",
    "GridInfo",
    "HeldOutRow",
    "HeldOutTable",
    "JsonObject",
    "LeadRow",
    "LeadTable",
    "LeverRate",
    "MarginsByClass",
    "MetricBlock",
    "ModelInfo",
    "PcaBlock",
    "PcaPoints",
    "PointMetrics",
    "Results",
    "RunFiles",
    "SavedDetectorInfo",
    "SplitsInfo",
    "ValEntry",
    "VectorInfo",
    "environment_info",
    "json_ready",
    "new_results",
    "val_entry",
]

SCHEMA_VERSION = 3
#: A JSON document kept as written by the layer that owns its shape (environment, configuration, template, ...).
JsonObject = Mapping[str, Any]
#: The point metrics of a validation entry (no bootstrap: thousands of candidates are scored).
VAL_METRICS: tuple[str, ...] = (
    "balanced_accuracy",
    "accuracy",
    "tpr",
    "fpr",
    "pair_accuracy",
    "vulnerable_rate",
    "auroc",
)


def json_ready(obj: Any) -> Any:
    """Round-trip through JSON to turn tuples/dataclasses into plain data."""
    return json.loads(json.dumps(obj, default=_plain))


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _pair(value: Any) -> tuple[float, float] | None:
    if value is None:
        return None
    lo, hi = value
    return (float("nan") if lo is None else float(lo), float("nan") if hi is None else float(hi))


def _json_pair(pair: tuple[float, float] | None) -> list[float | None] | None:
    return None if pair is None else [None if math.isnan(v) else v for v in pair]


def _doc(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


# ------------------------------------------------------------------------------------------ metrics


@dataclass(frozen=True)
class MetricBlock:
    """Every metric of one detector on one set of samples (:func:`~vulnsteer.stats.compare.metrics_block`): the
    counts, the point metrics (None where undefined), a pair-bootstrap 95% CI of balanced accuracy and the mean
    answer margin (logit mode)."""

    n: int = 0
    n_vulnerable: int | None = None
    n_secure: int | None = None
    n_pairs: int | None = None
    accuracy: float | None = None
    balanced_accuracy: float | None = None
    precision: float | None = None
    recall: float | None = None
    tpr: float | None = None
    fpr: float | None = None
    tnr: float | None = None
    f1: float | None = None
    mcc: float | None = None
    auroc: float | None = None
    pair_accuracy: float | None = None
    vulnerable_rate: float | None = None
    uncertain_rate: float | None = None
    balanced_accuracy_ci: tuple[float, float] | None = None
    mean_margin: float | None = None

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["balanced_accuracy_ci"] = _json_pair(self.balanced_accuracy_ci)
        return out

    @classmethod
    def from_json(cls, doc: JsonObject) -> MetricBlock:
        names = {f.name for f in dataclasses.fields(cls)} - {"balanced_accuracy_ci"}
        values: dict[str, Any] = {k: doc[k] for k in names if k in doc}
        return cls(**values, balanced_accuracy_ci=_pair(doc.get("balanced_accuracy_ci")))


@dataclass(frozen=True)
class PointMetrics:
    """A validation entry's metrics on one CWE (or ``overall``): no CI, the mean answer margin."""

    n: int
    balanced_accuracy: float | None = None
    accuracy: float | None = None
    tpr: float | None = None
    fpr: float | None = None
    pair_accuracy: float | None = None
    vulnerable_rate: float | None = None
    auroc: float | None = None
    mean_margin: float | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, doc: JsonObject) -> PointMetrics:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: doc[k] for k in names if k in doc})


@dataclass(frozen=True)
class Flips:
    """Answers that changed against the baseline: wrong before and right now, and right before and wrong now."""

    wrong_to_right: int
    right_to_wrong: int

    def to_json(self) -> dict[str, int]:
        return {"wrong_to_right": self.wrong_to_right, "right_to_wrong": self.right_to_wrong}

    @classmethod
    def from_json(cls, doc: JsonObject | None) -> Flips | None:
        return None if doc is None else cls(int(doc["wrong_to_right"]), int(doc["right_to_wrong"]))


@dataclass(frozen=True)
class LeverRate:
    """Among inputs a gate pushed, how many answered the way they were pushed."""

    rate: float | None
    pushed: int
    followed: int

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, doc: JsonObject | None) -> LeverRate | None:
        return None if doc is None else cls(_opt_float(doc.get("rate")), int(doc["pushed"]), int(doc["followed"]))


@dataclass(frozen=True)
class Change:
    """A paired change in balanced accuracy: Δ, its bootstrap 95% CI, McNemar's exact p."""

    delta: float
    delta_ci: tuple[float, float]
    p_value: float

    def to_json(self) -> dict[str, Any]:
        return {"delta": self.delta, "delta_ci": _json_pair(self.delta_ci), "p_value": self.p_value}

    @classmethod
    def from_json(cls, doc: JsonObject | None) -> Change | None:
        if doc is None:
            return None
        ci = _pair(doc["delta_ci"])
        assert ci is not None
        return cls(float(doc["delta"]), ci, float(doc["p_value"]))


# ------------------------------------------------------------------------------------------ validation


@dataclass(frozen=True)
class ValEntry:
    """One validation condition with its point metrics per CWE and ``overall`` (the selection curves' data), and
    the family that asked for it."""

    condition: Condition
    metrics: Mapping[str, PointMetrics]
    family: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "condition": self.condition.to_dict(),
            "metrics": {k: m.to_json() for k, m in self.metrics.items()},
        }

    @classmethod
    def from_json(cls, doc: JsonObject) -> ValEntry:
        metrics = {k: PointMetrics.from_json(m) for k, m in doc["metrics"].items()}
        return cls(Condition.from_dict(doc["condition"]), metrics, doc.get("family"))


def val_entry(
    condition: Condition,
    records: Sequence[DetectionRecord],
    cwes: Sequence[str],
    family: str | None = None,
) -> ValEntry:
    """*condition*'s point metrics per CWE and overall, from its validation *records*."""
    metrics: dict[str, PointMetrics] = {}
    for cwe in [*cwes, "overall"]:
        subset = [r for r in records if cwe == "overall" or r.cwe == cwe]
        if subset:
            margins = [r.margin for r in subset if r.margin is not None]
            metrics[cwe] = PointMetrics(
                len(subset),
                **point_metrics([r.to_prediction() for r in subset], VAL_METRICS),
                mean_margin=sum(margins) / len(margins) if margins else None,
            )
    return ValEntry(condition, metrics, family)


# ------------------------------------------------------------------------------------------ held-out rows


@dataclass(frozen=True)
class Control:
    """A control's metrics on a CWE's held-out samples and its change in balanced accuracy against the baseline."""

    metrics: MetricBlock
    delta: float | None

    def to_json(self) -> dict[str, Any]:
        return {"metrics": self.metrics.to_json(), "delta": self.delta}

    @classmethod
    def from_json(cls, doc: JsonObject) -> Control:
        return cls(MetricBlock.from_json(doc["metrics"]), _opt_float(doc.get("delta")))


@dataclass(frozen=True)
class HeldOutRow:
    """One CWE's row of a family on the held-out samples: the baseline, the setting chosen on val (or the baseline
    where it won), each control (by role) with its change against the baseline, the paired change with its CI,
    McNemar's p, the flips, the sentence, and where the baseline won, the best steered setting for information."""

    n: int
    n_pairs: int | None
    split: str
    baseline: MetricBlock
    chosen: str
    steered: MetricBlock
    delta: float
    delta_ci: tuple[float, float]
    p_value: float
    flips: Flips
    words: str
    controls: Mapping[str, Control] = field(default_factory=dict)
    lever_rate: LeverRate | None = None
    best_not_chosen: HeldOutRow | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "n_pairs": self.n_pairs,
            "split": self.split,
            "baseline": self.baseline.to_json(),
            "chosen": self.chosen,
            "steered": self.steered.to_json(),
            "controls": {role: c.to_json() for role, c in self.controls.items()},
            "delta": self.delta,
            "delta_ci": _json_pair(self.delta_ci),
            "p_value": self.p_value,
            "flips": self.flips.to_json(),
            "words": self.words,
            "lever_rate": None if self.lever_rate is None else self.lever_rate.to_json(),
            "best_steered_not_chosen": None if self.best_not_chosen is None else self.best_not_chosen.to_json(),
        }

    @classmethod
    def from_json(cls, doc: JsonObject) -> HeldOutRow:
        flips = Flips.from_json(doc["flips"])
        ci = _pair(doc["delta_ci"])
        assert flips is not None and ci is not None
        other = doc.get("best_steered_not_chosen")
        return cls(
            int(doc["n"]),
            doc.get("n_pairs"),
            str(doc["split"]),
            MetricBlock.from_json(doc["baseline"]),
            str(doc["chosen"]),
            MetricBlock.from_json(doc["steered"]),
            float(doc["delta"]),
            ci,
            float(doc["p_value"]),
            flips,
            str(doc.get("words", "")),
            {role: Control.from_json(c) for role, c in (doc.get("controls") or {}).items()},
            LeverRate.from_json(doc.get("lever_rate")),
            None if other is None else cls.from_json(other),
        )


@dataclass(frozen=True)
class CrossCwe:
    """Each CWE's vector (rows), at its best steered setting on val, on every CWE's samples (columns): the change
    in balanced accuracy against the baseline."""

    vectors: tuple[str, ...]
    targets: tuple[str, ...]
    delta_balanced_accuracy: tuple[tuple[float | None, ...], ...]
    split: str
    chosen: Mapping[str, str] = field(default_factory=dict)
    settings: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "vectors": list(self.vectors),
            "targets": list(self.targets),
            "delta_balanced_accuracy": [list(line) for line in self.delta_balanced_accuracy],
            "split": self.split,
            "chosen": dict(self.chosen),
            "settings": dict(self.settings),
        }

    @classmethod
    def from_json(cls, doc: JsonObject) -> CrossCwe:
        return cls(
            tuple(doc["vectors"]),
            tuple(doc["targets"]),
            tuple(tuple(line) for line in doc["delta_balanced_accuracy"]),
            str(doc.get("split", "test")),
            dict(doc.get("chosen") or {}),
            dict(doc.get("settings") or {}),
        )


@dataclass(frozen=True)
class HeldOutTable:
    """A family's rows in one mode on the held-out samples: per CWE, for the pooled vector (per CWE and
    ``overall``), and the cross-CWE matrix where the mode asks for it."""

    split: str
    rows: Mapping[str, HeldOutRow]
    pooled: Mapping[str, HeldOutRow] = field(default_factory=dict)
    cross_cwe: CrossCwe | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "rows": {cwe: r.to_json() for cwe, r in self.rows.items()},
            "pooled": {cwe: r.to_json() for cwe, r in self.pooled.items()},
            "cross_cwe": None if self.cross_cwe is None else self.cross_cwe.to_json(),
        }

    @classmethod
    def from_json(cls, doc: JsonObject) -> HeldOutTable:
        cross = doc.get("cross_cwe")
        return cls(
            str(doc["split"]),
            {cwe: HeldOutRow.from_json(r) for cwe, r in doc["rows"].items()},
            {cwe: HeldOutRow.from_json(r) for cwe, r in (doc.get("pooled") or {}).items()},
            None if cross is None else CrossCwe.from_json(cross),
        )


@dataclass(frozen=True)
class Example:
    """One sample's generated answer: the baseline's and the chosen (else best) steered setting's."""

    cwe: str
    sample_id: str
    truth: str
    chosen: str
    setting: str
    baseline: str | None
    baseline_verdict: str | None
    steered: str | None
    steered_verdict: str

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, doc: JsonObject) -> Example:
        values: dict[str, Any] = {f.name: doc.get(f.name) for f in dataclasses.fields(cls)}
        return cls(**values)


# ------------------------------------------------------------------------------------------ what was fitted


@dataclass(frozen=True)
class VectorInfo:
    """A fitted vector as results list it: its file, CWE, method key, layers, norms and class counts."""

    file: str
    cwe: str
    method: str
    layers: tuple[int, ...]
    norm: Mapping[int, float]
    relative_norm: Mapping[int, float | None]
    n_vulnerable: int
    n_secure: int

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "cwe": self.cwe,
            "method": self.method,
            "layers": list(self.layers),
            "norm": {str(k): v for k, v in self.norm.items()},
            "relative_norm": {str(k): v for k, v in self.relative_norm.items()},
            "n_vulnerable": self.n_vulnerable,
            "n_secure": self.n_secure,
        }

    @classmethod
    def from_json(cls, doc: JsonObject) -> VectorInfo:
        return cls(
            str(doc["file"]),
            str(doc["cwe"]),
            str(doc["method"]),
            tuple(int(x) for x in doc["layers"]),
            {int(k): float(v) for k, v in doc["norm"].items()},
            {int(k): _opt_float(v) for k, v in doc["relative_norm"].items()},
            int(doc["n_vulnerable"]),
            int(doc["n_secure"]),
        )


@dataclass(frozen=True)
class CosineBlock:
    """The cosine similarity matrix of the per-CWE vectors of one method key, per layer (fitted on train)."""

    cwes: tuple[str, ...]
    layers: Mapping[int, tuple[tuple[float, ...], ...]]

    def to_json(self) -> dict[str, Any]:
        return {
            "cwes": list(self.cwes),
            "layers": {str(k): [list(line) for line in m] for k, m in self.layers.items()},
        }

    @classmethod
    def from_json(cls, doc: JsonObject) -> CosineBlock:
        layers = {int(k): tuple(tuple(float(v) for v in line) for line in m) for k, m in doc["layers"].items()}
        return cls(tuple(doc["cwes"]), layers)


@dataclass(frozen=True)
class PcaPoints:
    """One CWE's training activations on their first two principal components."""

    x: tuple[float, ...]
    y: tuple[float, ...]
    vulnerable: tuple[bool, ...]
    explained: tuple[float, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "x": list(self.x),
            "y": list(self.y),
            "vulnerable": list(self.vulnerable),
            "explained": list(self.explained),
        }

    @classmethod
    def from_json(cls, doc: JsonObject) -> PcaPoints:
        return cls(tuple(doc["x"]), tuple(doc["y"]), tuple(doc["vulnerable"]), tuple(doc.get("explained", ())))


@dataclass(frozen=True)
class PcaBlock:
    """Per CWE, the training activations at one layer and pooling on their first two principal components."""

    layer: int
    pooling: str
    split: str
    cwes: Mapping[str, PcaPoints]

    def to_json(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "pooling": self.pooling,
            "split": self.split,
            "cwes": {cwe: p.to_json() for cwe, p in self.cwes.items()},
        }

    @classmethod
    def from_json(cls, doc: JsonObject) -> PcaBlock:
        cwes = {cwe: PcaPoints.from_json(p) for cwe, p in doc["cwes"].items()}
        return cls(int(doc["layer"]), str(doc.get("pooling", "")), str(doc.get("split", "train")), cwes)


@dataclass(frozen=True)
class GateProbeInfo:
    """A gating probe as results list it: its threshold (chosen on val) and spread, and its provenance notes."""

    threshold: float
    spread: float
    meta: JsonObject = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "spread": self.spread, **self.meta}

    @classmethod
    def from_json(cls, doc: JsonObject) -> GateProbeInfo:
        meta = {k: v for k, v in doc.items() if k not in ("threshold", "spread")}
        return cls(float(doc["threshold"]), float(doc["spread"]), meta)


@dataclass(frozen=True)
class SavedDetectorInfo:
    """A saved detector (``RUN/<folder>/``): its digest and how it scored on val when it was chosen."""

    folder: str
    digest: str
    mode: str
    setting: str
    balanced_accuracy: float | None
    baseline_balanced_accuracy: float | None
    chosen_by: str

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, doc: JsonObject | None) -> SavedDetectorInfo | None:
        if doc is None:
            return None
        values: dict[str, Any] = {f.name: doc.get(f.name) for f in dataclasses.fields(cls)}
        return cls(**values)


# ------------------------------------------------------------------------------------------ families and lead


@dataclass(frozen=True)
class FamilyResults:
    """What one detector family (:mod:`vulnsteer.experiment.family`) found: its choices on val (settings per
    target, prompt templates or thresholds per CWE), its per-CWE rows on the held-out samples, its examples, what
    it fitted (vectors, their cosines, gating probes) and the detector it saved. *label* names the family in the
    report; *controls* names its controls' columns by role."""

    name: str
    label: str = ""
    controls: Mapping[str, str] = field(default_factory=dict)
    choices: Mapping[str, Mapping[str, Choice]] = field(default_factory=dict)
    templates: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    thresholds: Mapping[str, float] = field(default_factory=dict)
    held_out: Mapping[str, HeldOutTable] = field(default_factory=dict)
    examples: Mapping[str, tuple[Example, ...]] = field(default_factory=dict)
    vectors: Mapping[str, VectorInfo] = field(default_factory=dict)
    cosine: Mapping[str, CosineBlock] = field(default_factory=dict)
    probes: Mapping[str, GateProbeInfo] = field(default_factory=dict)
    saved: SavedDetectorInfo | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "controls": dict(self.controls),
            "choices": {m: {t: c.to_dict() for t, c in by.items()} for m, by in self.choices.items()},
            "templates": {m: dict(by) for m, by in self.templates.items()},
            "thresholds": dict(self.thresholds),
            "held_out": {m: t.to_json() for m, t in self.held_out.items()},
            "examples": {m: [e.to_json() for e in items] for m, items in self.examples.items()},
            "vectors": {k: v.to_json() for k, v in self.vectors.items()},
            "cosine": {k: c.to_json() for k, c in self.cosine.items()},
            "probes": {k: p.to_json() for k, p in self.probes.items()},
            "saved": None if self.saved is None else self.saved.to_json(),
        }

    @classmethod
    def from_json(cls, name: str, doc: JsonObject) -> FamilyResults:
        return cls(
            name,
            str(doc.get("label", "")),
            dict(doc.get("controls") or {}),
            {m: {t: Choice.from_dict(c) for t, c in by.items()} for m, by in (doc.get("choices") or {}).items()},
            {m: dict(by) for m, by in (doc.get("templates") or {}).items()},
            {cwe: float(t) for cwe, t in (doc.get("thresholds") or {}).items()},
            {m: HeldOutTable.from_json(t) for m, t in (doc.get("held_out") or {}).items()},
            {m: tuple(Example.from_json(e) for e in items) for m, items in (doc.get("examples") or {}).items()},
            {k: VectorInfo.from_json(v) for k, v in (doc.get("vectors") or {}).items()},
            {k: CosineBlock.from_json(c) for k, c in (doc.get("cosine") or {}).items()},
            {k: GateProbeInfo.from_json(p) for k, p in (doc.get("probes") or {}).items()},
            SavedDetectorInfo.from_json(doc.get("saved")),
        )


@dataclass(frozen=True)
class LeadRow:
    """One detector of the lead table: its metrics on the held-out samples and its paired change against the
    baseline. A control names the detector it controls (*control_of*) and carries the paired comparison with it
    (*versus*: that detector minus this control, > 0 when the detector is better)."""

    name: str
    label: str
    metrics: MetricBlock
    delta: float = 0.0
    delta_ci: tuple[float, float] = (0.0, 0.0)
    p_value: float = 1.0
    flips: Flips | None = None
    lever_rate: LeverRate | None = None
    family: str | None = None
    control_of: str | None = None
    versus: Change | None = None

    @property
    def is_baseline(self) -> bool:
        return self.family is None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": self.label,
            "family": self.family,
            "control_of": self.control_of,
            "metrics": self.metrics.to_json(),
            "delta": self.delta,
            "delta_ci": _json_pair(self.delta_ci),
            "p_value": self.p_value,
            "flips": None if self.flips is None else self.flips.to_json(),
            "lever_rate": None if self.lever_rate is None else self.lever_rate.to_json(),
            "versus": None if self.versus is None else self.versus.to_json(),
        }

    @classmethod
    def from_json(cls, doc: JsonObject) -> LeadRow:
        ci = _pair(doc.get("delta_ci")) or (0.0, 0.0)
        return cls(
            str(doc["name"]),
            str(doc["label"]),
            MetricBlock.from_json(doc["metrics"]),
            float(doc.get("delta", 0.0)),
            ci,
            float(doc.get("p_value", 1.0)),
            Flips.from_json(doc.get("flips")),
            LeverRate.from_json(doc.get("lever_rate")),
            doc.get("family"),
            doc.get("control_of"),
            Change.from_json(doc.get("versus")),
        )


@dataclass(frozen=True)
class MarginsByClass:
    """Answer margins split by the truth (the margin-distribution plot)."""

    vulnerable: tuple[float, ...] = ()
    secure: tuple[float, ...] = ()

    def to_json(self) -> dict[str, list[float]]:
        return {"vulnerable": list(self.vulnerable), "secure": list(self.secure)}

    @classmethod
    def from_json(cls, doc: JsonObject) -> MarginsByClass:
        return cls(tuple(doc.get("vulnerable", ())), tuple(doc.get("secure", ())))


@dataclass(frozen=True)
class LeadTable:
    """The first screen of one mode: every detector on the same held-out samples, what beat what in words, and
    (logit mode) the answer margins by class of the baseline and the headline detectors."""

    split: str
    rows: tuple[LeadRow, ...]
    words: str = ""
    margins: Mapping[str, MarginsByClass] = field(default_factory=dict)

    def row(self, name: str) -> LeadRow | None:
        return next((r for r in self.rows if r.name == name), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "rows": [r.to_json() for r in self.rows],
            "words": self.words,
            "margins": {name: m.to_json() for name, m in self.margins.items()},
        }

    @classmethod
    def from_json(cls, doc: JsonObject) -> LeadTable:
        return cls(
            str(doc["split"]),
            tuple(LeadRow.from_json(r) for r in doc["rows"]),
            str(doc.get("words", "")),
            {name: MarginsByClass.from_json(m) for name, m in (doc.get("margins") or {}).items()},
        )


# ------------------------------------------------------------------------------------------ header and data


@dataclass(frozen=True)
class ModelInfo:
    """The model a run used: id, architecture fingerprint, identity key, size, and what its loader adds (dtype,
    device, weights digest, ...)."""

    id: str
    fingerprint: str
    num_layers: int
    hidden_size: int
    key: str | None = None
    extra: JsonObject = field(default_factory=dict)

    @classmethod
    def of(cls, lm: LoadedModel) -> ModelInfo:
        from ..lm.activation_cache import model_key

        return cls(lm.model_id, lm.fingerprint, lm.num_layers, lm.hidden_size, model_key(lm), dict(lm.extra))

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "fingerprint": self.fingerprint,
            "key": self.key,
            "num_layers": self.num_layers,
            "hidden_size": self.hidden_size,
            **self.extra,
        }

    @classmethod
    def from_json(cls, doc: JsonObject | None) -> ModelInfo | None:
        if doc is None:
            return None
        known = ("id", "fingerprint", "key", "num_layers", "hidden_size")
        return cls(
            str(doc["id"]),
            str(doc["fingerprint"]),
            int(doc["num_layers"]),
            int(doc["hidden_size"]),
            doc.get("key"),
            {k: v for k, v in doc.items() if k not in known},
        )


@dataclass(frozen=True)
class SplitsInfo:
    """The split summary (:meth:`~vulnsteer.data.splits.Splits.summary`), read through typed properties."""

    document: JsonObject

    def size(self, split: str) -> int:
        return int(_doc(self.document.get(split)).get("n", 0))

    def class_counts(self, split: str) -> dict[str, tuple[int, int]]:
        """Per CWE: (vulnerable, secure) samples of *split*."""
        by_cwe = _doc(_doc(self.document.get(split)).get("by_cwe"))
        return {cwe: (int(c.get("vulnerable", 0)), int(c.get("secure", 0))) for cwe, c in by_cwe.items()}

    @property
    def duplicates(self) -> tuple[int, int]:
        """Cross-split duplicates left: (exact, normalised)."""
        dup = _doc(self.document.get("duplicates"))
        return int(dup.get("exact", 0)), int(dup.get("normalised", 0))

    @property
    def merged_duplicates(self) -> bool:
        return bool(_doc(self.document.get("notes")).get("merge_duplicates"))

    @property
    def dropped(self) -> tuple[int, int] | None:
        """Val and test samples dropped as duplicates (``duplicates = "drop"``), else None."""
        deduped = _doc(self.document.get("notes")).get("deduped")
        if not deduped:
            return None
        dropped = _doc(_doc(deduped).get("dropped"))
        return len(dropped.get("val", [])), len(dropped.get("test", []))

    @property
    def found_before_dedupe(self) -> tuple[int, int]:
        before = _doc(_doc(self.document.get("notes")).get("duplicates_before_dedupe"))
        return int(before.get("exact", 0)), int(before.get("normalised", 0))


@dataclass(frozen=True)
class DataNotes:
    """What preparing the data did (the document :func:`~vulnsteer.experiment.prepare.prepare_data` writes)."""

    document: JsonObject = field(default_factory=dict)

    @property
    def comments_stripped(self) -> bool | None:
        value = self.document.get("comments_stripped")
        return None if value is None else bool(value)

    @property
    def max_code_tokens(self) -> int | None:
        value = self.document.get("max_code_tokens")
        return None if value is None else int(value)

    @property
    def truncated(self) -> int:
        return int(self.document.get("truncated", 0))


@dataclass(frozen=True)
class DataInfo:
    """The data a command read: its source, CWEs, preparation notes, split summary (run/sweep, evaluate
    --vectors), and what evaluate skipped or found in the run's training split."""

    source: str
    cwes: tuple[str, ...]
    notes: DataNotes = field(default_factory=DataNotes)
    splits: SplitsInfo | None = None
    n_samples: int | None = None
    skipped_cwes: Mapping[str, int] = field(default_factory=dict)
    overlap_with_run_train: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source": self.source, "cwes": list(self.cwes), "notes": dict(self.notes.document)}
        if self.splits is not None:
            out["splits"] = dict(self.splits.document)
        if self.n_samples is not None:
            out["n_samples"] = self.n_samples
        if self.skipped_cwes:
            out["skipped_cwes"] = dict(self.skipped_cwes)
        if self.overlap_with_run_train is not None:
            out["overlap_with_run_train"] = self.overlap_with_run_train
        return out

    @classmethod
    def from_json(cls, doc: JsonObject | None) -> DataInfo | None:
        if doc is None:
            return None
        splits = doc.get("splits")
        return cls(
            str(doc["source"]),
            tuple(doc.get("cwes", ())),
            DataNotes(_doc(doc.get("notes"))),
            None if splits is None else SplitsInfo(dict(splits)),
            doc.get("n_samples"),
            {cwe: int(n) for cwe, n in (doc.get("skipped_cwes") or {}).items()},
            doc.get("overlap_with_run_train"),
        )


@dataclass(frozen=True)
class GridInfo:
    """What the report says about the grid, read from the resolved configuration document."""

    seed: int | None
    methods: tuple[str, ...]
    poolings: tuple[str, ...]
    strengths: Any
    positions: tuple[str, ...]
    modes: tuple[str, ...]
    pooled: bool | None

    @classmethod
    def of(cls, config: JsonObject) -> GridInfo:
        data, vectors, steering = (_doc(config.get(k)) for k in ("data", "vectors", "steering"))
        return cls(
            data.get("seed"),
            tuple(vectors.get("methods", ())),
            tuple(vectors.get("pooling", ())),
            steering.get("strengths"),
            tuple(steering.get("positions", ())),
            tuple(_doc(config.get("detection")).get("modes", ())),
            vectors.get("pooled"),
        )


@dataclass(frozen=True)
class RunFiles:
    """The files a run folder holds besides results.json."""

    resolved_config: str
    chosen: str
    records: str

    def to_json(self) -> dict[str, str]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, doc: JsonObject | None) -> RunFiles | None:
        if not doc:
            return None
        return cls(str(doc["resolved_config"]), str(doc["chosen"]), str(doc.get("records", "records.jsonl")))


def environment_info() -> dict[str, Any]:
    """Versions and platform (what reproducing a run needs to know)."""
    import numpy
    import torch
    import transformers

    return {
        "vulnsteer": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": numpy.__version__,
        "cuda": torch.cuda.is_available(),
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


# ------------------------------------------------------------------------------------------ results


@dataclass(frozen=True)
class Results:
    """Everything one command wrote (see the module docstring for the JSON keys).

    >>> results = load_results("runs/demo/results.json")  # doctest: +SKIP
    >>> [(row.name, row.metrics.balanced_accuracy) for row in results.lead["logit"].rows][:2]  # doctest: +SKIP
    [('baseline', 0.5), ('calibrated', 0.458)]
    >>> Results.from_json(Results(command="sweep").to_json()).command
    'sweep'
    """

    command: str = "run"
    status: str = "complete"
    model: ModelInfo | None = None
    data: DataInfo | None = None
    config: JsonObject = field(default_factory=dict)
    template: JsonObject = field(default_factory=dict)
    sign_convention: str = ""
    environment: JsonObject = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    run_dir: str | None = None
    vectors_from: str | None = None
    source_model: ModelInfo | None = None
    layer_sets: tuple[tuple[int, ...], ...] = ()
    layers: tuple[int, ...] = ()
    pca: Mapping[str, PcaBlock] = field(default_factory=dict)
    val: Mapping[str, tuple[ValEntry, ...]] = field(default_factory=dict)
    families: Mapping[str, FamilyResults] = field(default_factory=dict)
    lead: Mapping[str, LeadTable] = field(default_factory=dict)
    probes: tuple[ProbeResult, ...] = ()
    records: Mapping[str, tuple[DetectionRecord, ...]] = field(default_factory=dict)
    activation_cache: JsonObject = field(default_factory=dict)
    prefix_cache: JsonObject = field(default_factory=dict)
    peak_memory: JsonObject = field(default_factory=dict)
    executor: JsonObject = field(default_factory=dict)
    timings_s: Mapping[str, float] = field(default_factory=dict)
    files: RunFiles | None = None
    finished_conditions: tuple[Condition, ...] = ()
    schema_version: int = SCHEMA_VERSION

    @property
    def interrupted(self) -> bool:
        return self.status == "interrupted"

    @property
    def grid(self) -> GridInfo:
        return GridInfo.of(self.config)

    @property
    def cwes(self) -> tuple[str, ...]:
        return () if self.data is None else self.data.cwes

    def family(self, name: str) -> FamilyResults | None:
        return self.families.get(name)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schema_version": self.schema_version,
            "command": self.command,
            "status": self.status,
            "config": dict(self.config),
            "template": dict(self.template),
            "sign_convention": self.sign_convention,
            "environment": dict(self.environment),
            "model": None if self.model is None else self.model.to_json(),
            "warnings": list(self.warnings),
        }
        if self.run_dir is not None:
            out["run_dir"] = self.run_dir
        if self.vectors_from is not None:
            out["vectors_from"] = self.vectors_from
        if self.source_model is not None:
            out["source_model"] = self.source_model.to_json()
        out.update(
            {
                "data": None if self.data is None else self.data.to_json(),
                "layer_sets": [list(s) for s in self.layer_sets],
                "layers": list(self.layers),
                "pca": {p: b.to_json() for p, b in self.pca.items()},
                "val": {m: [e.to_json() for e in entries] for m, entries in self.val.items()},
                "families": {name: f.to_json() for name, f in self.families.items()},
                "lead": {m: t.to_json() for m, t in self.lead.items()},
                "probes": [p.to_dict() for p in self.probes],
                "records": {k: [r.to_dict() for r in recs] for k, recs in self.records.items()},
                "activation_cache": dict(self.activation_cache),
                "prefix_cache": dict(self.prefix_cache),
                "peak_memory": dict(self.peak_memory),
                "executor": dict(self.executor),
                "timings_s": dict(self.timings_s),
                "files": None if self.files is None else self.files.to_json(),
            }
        )
        if self.finished_conditions:
            out["finished_conditions"] = [c.to_dict() for c in self.finished_conditions]
        return json_ready(out)

    @classmethod
    def from_json(cls, doc: JsonObject) -> Results:
        """Results of the current schema (:func:`~vulnsteer.experiment.upgrade.load_results` reads older ones)."""
        if doc.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"not results of schema {SCHEMA_VERSION} (got {doc.get('schema_version')!r})")
        return cls(
            command=str(doc.get("command", "run")),
            status=str(doc.get("status", "complete")),
            model=ModelInfo.from_json(doc.get("model")),
            data=DataInfo.from_json(doc.get("data")),
            config=_doc(doc.get("config")),
            template=_doc(doc.get("template")),
            sign_convention=str(doc.get("sign_convention", "")),
            environment=_doc(doc.get("environment")),
            warnings=tuple(doc.get("warnings") or ()),
            run_dir=doc.get("run_dir"),
            vectors_from=doc.get("vectors_from"),
            source_model=ModelInfo.from_json(doc.get("source_model")),
            layer_sets=tuple(tuple(int(x) for x in s) for s in doc.get("layer_sets") or ()),
            layers=tuple(int(x) for x in doc.get("layers") or ()),
            pca={p: PcaBlock.from_json(b) for p, b in (doc.get("pca") or {}).items()},
            val={m: tuple(ValEntry.from_json(e) for e in es) for m, es in (doc.get("val") or {}).items()},
            families={n: FamilyResults.from_json(n, f) for n, f in (doc.get("families") or {}).items()},
            lead={m: LeadTable.from_json(t) for m, t in (doc.get("lead") or {}).items()},
            probes=tuple(ProbeResult.from_dict(p) for p in doc.get("probes") or ()),
            records={k: tuple(record_from_dict(r) for r in rs) for k, rs in (doc.get("records") or {}).items()},
            activation_cache=_doc(doc.get("activation_cache")),
            prefix_cache=_doc(doc.get("prefix_cache")),
            peak_memory=_doc(doc.get("peak_memory")),
            executor=_doc(doc.get("executor")),
            timings_s={k: float(v) for k, v in (doc.get("timings_s") or {}).items()},
            files=RunFiles.from_json(doc.get("files")),
            finished_conditions=tuple(Condition.from_dict(c) for c in doc.get("finished_conditions") or ()),
        )


def new_results(command: str, config: JsonObject, lm: LoadedModel, template: PromptTemplate) -> Results:
    """The header every results.json starts with (status ``running`` until the command finishes)."""
    from ..steering.hooks import SIGN_CONVENTION

    return Results(
        command=command,
        status="running",
        model=ModelInfo.of(lm),
        config=dict(config),
        template=template.to_dict(),
        sign_convention=SIGN_CONVENTION,
        environment=environment_info(),
    )
