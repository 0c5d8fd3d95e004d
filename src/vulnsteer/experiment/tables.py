"""The rows of the report's tables as typed values: metric blocks, the per-CWE rows of a family on held-out data
(with its controls by role, the pooled vector's rows and the cross-CWE matrix), and the lead table's rows (every
detector on the same held-out samples, with CIs, p-values and the comparison of each control with the detector it
controls). Each turns into JSON and back.

>>> block = MetricBlock(n=4, balanced_accuracy=0.75, balanced_accuracy_ci=(0.5, 1.0))
>>> MetricBlock.from_json(block.to_json()) == block
True
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..io import JsonObject

__all__ = [
    "Change",
    "Control",
    "CrossCwe",
    "Flips",
    "HeldOutRow",
    "HeldOutTable",
    "LeadRow",
    "LeadTable",
    "LeverRate",
    "MarginsByClass",
    "MetricBlock",
    "PointMetrics",
    "float_pair",
    "json_pair",
    "opt_float",
]


def opt_float(value: Any) -> float | None:
    """A JSON number (or null) as a float (or None)."""
    return None if value is None else float(value)


def float_pair(value: Any) -> tuple[float, float] | None:
    """A JSON pair of numbers (a CI; null ends read as nan) as a tuple, or None."""
    if value is None:
        return None
    lo, hi = value
    return (float("nan") if lo is None else float(lo), float("nan") if hi is None else float(hi))


def json_pair(pair: tuple[float, float] | None) -> list[float | None] | None:
    """A pair as JSON (nan ends as null)."""
    return None if pair is None else [None if math.isnan(v) else v for v in pair]


@dataclass(frozen=True)
class MetricBlock:
    """Every metric of one detector on one set of samples (:func:`~vulnsteer.stats.compare.metrics_block`): the
    counts, the point metrics (None where undefined; AUROC, pair-rank accuracy and TPR at 5% FPR read the scores),
    pair-bootstrap 95% CIs of balanced accuracy and AUROC, and the mean answer margin (logit mode)."""

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
    pair_rank_accuracy: float | None = None
    tpr_at_5_fpr: float | None = None
    auroc_ci: tuple[float, float] | None = None

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["balanced_accuracy_ci"] = json_pair(self.balanced_accuracy_ci)
        out["auroc_ci"] = json_pair(self.auroc_ci)
        return out

    @classmethod
    def from_json(cls, doc: JsonObject) -> MetricBlock:
        pairs = {"balanced_accuracy_ci", "auroc_ci"}
        values: dict[str, Any] = {k: doc[k] for k in {f.name for f in dataclasses.fields(cls)} - pairs if k in doc}
        values.update({k: float_pair(doc.get(k)) for k in pairs})
        return cls(**values)


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
    #: the share of pairs whose vulnerable half scores above its fix (ties half; None without scores or pairs)
    pair_rank_accuracy: float | None = None

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
        return None if doc is None else cls(opt_float(doc.get("rate")), int(doc["pushed"]), int(doc["followed"]))


@dataclass(frozen=True)
class Change:
    """A paired change in balanced accuracy: Δ, its bootstrap 95% CI, McNemar's exact p."""

    delta: float
    delta_ci: tuple[float, float]
    p_value: float

    def to_json(self) -> dict[str, Any]:
        return {"delta": self.delta, "delta_ci": json_pair(self.delta_ci), "p_value": self.p_value}

    @classmethod
    def from_json(cls, doc: JsonObject | None) -> Change | None:
        if doc is None:
            return None
        ci = float_pair(doc["delta_ci"])
        assert ci is not None
        return cls(float(doc["delta"]), ci, float(doc["p_value"]))


@dataclass(frozen=True)
class Control:
    """A control's metrics on a CWE's held-out samples and its change in balanced accuracy against the baseline."""

    metrics: MetricBlock
    delta: float | None

    def to_json(self) -> dict[str, Any]:
        return {"metrics": self.metrics.to_json(), "delta": self.delta}

    @classmethod
    def from_json(cls, doc: JsonObject) -> Control:
        return cls(MetricBlock.from_json(doc["metrics"]), opt_float(doc.get("delta")))


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
            "delta_ci": json_pair(self.delta_ci),
            "p_value": self.p_value,
            "flips": self.flips.to_json(),
            "words": self.words,
            "lever_rate": None if self.lever_rate is None else self.lever_rate.to_json(),
            "best_steered_not_chosen": None if self.best_not_chosen is None else self.best_not_chosen.to_json(),
        }

    @classmethod
    def from_json(cls, doc: JsonObject) -> HeldOutRow:
        flips = Flips.from_json(doc["flips"])
        ci = float_pair(doc["delta_ci"])
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
    #: the detector the table is about (its family's headline: conditional steering in a default run)
    headline: bool = False

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
            "delta_ci": json_pair(self.delta_ci),
            "p_value": self.p_value,
            "flips": None if self.flips is None else self.flips.to_json(),
            "lever_rate": None if self.lever_rate is None else self.lever_rate.to_json(),
            "versus": None if self.versus is None else self.versus.to_json(),
            "headline": self.headline,
        }

    @classmethod
    def from_json(cls, doc: JsonObject) -> LeadRow:
        ci = float_pair(doc.get("delta_ci")) or (0.0, 0.0)
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
            bool(doc.get("headline", False)),
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
