"""``results.json`` as typed values: what every experiment command (run, sweep, evaluate) writes and the report reads.

:class:`Results` holds a header (command, status, the model, the data, the resolved configuration:
:mod:`~vulnsteer.experiment.header`), the validation entries, one :class:`FamilyResults` per detector family (its
choices, its per-CWE rows on the held-out samples, what it fitted and saved), the lead table (one
:class:`~vulnsteer.experiment.tables.LeadRow` per detector, with metric blocks, CIs and p-values:
:mod:`~vulnsteer.experiment.tables`), the probe table, the held-out records, and where and how fast the run went.
Every class is frozen and turns into JSON and back (:meth:`Results.to_json`, :meth:`Results.from_json`);
:func:`~vulnsteer.experiment.upgrade.load_results` also reads files of schema 2.

Schema 3 (top-level keys; a key is absent or empty where a command has nothing to put there): ``schema_version``,
``command``, ``status``, ``config``, ``template``, ``sign_convention``, ``environment``, ``model``, ``warnings``,
``run_dir`` / ``vectors_from`` / ``source_model`` (evaluate), ``data``, ``layer_sets``, ``layers``, ``pca``,
``val`` (per mode), ``families`` (per family, in the order they ran), ``lead`` (per mode), ``probes``,
``records``, ``activation_cache``, ``prefix_cache``, ``peak_memory``, ``executor``, ``timings_s``, ``files``,
``finished_conditions`` (an interrupted run).

>>> entry = ValEntry(Condition("baseline", "logit", "val"), {"overall": PointMetrics(8, 0.5)})
>>> ValEntry.from_json(entry.to_json()) == entry
True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..detection.probe_table import ProbeResult
from ..detection.records import DetectionRecord, record_from_dict
from ..io import JsonObject, json_ready
from ..stats.metrics import pair_rank_accuracy, point_metrics
from .grid import Condition
from .header import ActivationCacheInfo, DataInfo, GridInfo, ModelInfo, RunFiles, as_object, environment_info
from .select import Choice
from .tables import HeldOutTable, LeadTable, PointMetrics, opt_float

if TYPE_CHECKING:  # pragma: no cover
    from ..lm.model import LoadedModel
    from ..lm.prompts import PromptTemplate

__all__ = [
    "SCHEMA_VERSION",
    "CosineBlock",
    "Example",
    "FamilyResults",
    "GateProbeInfo",
    "PcaBlock",
    "PcaPoints",
    "Results",
    "SavedDetectorInfo",
    "ValEntry",
    "VectorInfo",
    "new_results",
    "val_entry",
]

SCHEMA_VERSION = 3
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
    """*condition*'s point metrics per CWE and overall, from its validation *records* (pair-rank accuracy beside
    pair accuracy where the records have scores)."""
    metrics: dict[str, PointMetrics] = {}
    for cwe in [*cwes, "overall"]:
        subset = [r for r in records if cwe == "overall" or r.cwe == cwe]
        if subset:
            margins = [r.margin for r in subset if r.margin is not None]
            preds = [r.to_prediction() for r in subset]
            scores = [r.score for r in subset]
            ranked = None if None in scores else pair_rank_accuracy(preds, np.array(scores, dtype=np.float64))
            metrics[cwe] = PointMetrics(
                len(subset),
                **point_metrics(preds, VAL_METRICS),
                mean_margin=sum(margins) / len(margins) if margins else None,
                pair_rank_accuracy=ranked,
            )
    return ValEntry(condition, metrics, family)


@dataclass(frozen=True)
class Example:
    """One held-out sample's generated answer: the baseline's and the chosen (else best) steered setting's.

    *chosen* is what val chose for the CWE: ``steered`` (*setting* was chosen) or ``baseline`` (*setting* was the
    best steered setting on val, not chosen: the baseline scored at least as well). *split* is the split the sample
    comes from (``test``, or ``all`` for another dataset; None in results written before it was recorded)."""

    cwe: str
    sample_id: str
    truth: str
    chosen: str
    setting: str
    baseline: str | None
    baseline_verdict: str | None
    steered: str | None
    steered_verdict: str
    split: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, doc: JsonObject) -> Example:
        values: dict[str, Any] = {f.name: doc.get(f.name) for f in dataclasses.fields(cls)}
        return cls(**values)


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
            {int(k): opt_float(v) for k, v in doc["relative_norm"].items()},
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
    notes: tuple[str, ...] = ()

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
            "notes": list(self.notes),
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
            tuple(doc.get("notes") or ()),
        )


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
    activation_cache: ActivationCacheInfo | None = None
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
                "activation_cache": None if self.activation_cache is None else self.activation_cache.to_json(),
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
            config=as_object(doc.get("config")),
            template=as_object(doc.get("template")),
            sign_convention=str(doc.get("sign_convention", "")),
            environment=as_object(doc.get("environment")),
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
            activation_cache=ActivationCacheInfo.from_json(doc.get("activation_cache")),
            prefix_cache=as_object(doc.get("prefix_cache")),
            peak_memory=as_object(doc.get("peak_memory")),
            executor=as_object(doc.get("executor")),
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
