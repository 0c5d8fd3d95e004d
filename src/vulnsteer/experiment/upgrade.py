"""Reading ``results.json`` of any schema this version understands: 3 (:class:`~vulnsteer.experiment.results.
Results`) and 2 (vulnsteer before detector families: one key per track, ``selection``/``summary`` for constant
steering, ``conditional_selection``/``conditional`` for conditional steering, ...), upgraded to the typed results
so an old run still renders. Anything else is refused with the file and its schema named.

>>> upgrade_v2({"schema_version": 2, "command": "sweep", "status": "interrupted",
...             "finished_conditions": [{"kind": "baseline", "mode": "logit", "split": "val", "key": "x"}]}).status
'interrupted'
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..detection.probe import ProbeResult
from ..detection.records import record_from_dict
from ..io import JsonObject
from .families.calibrated import CALIBRATED
from .families.conditional import CONDITIONAL
from .families.conditional import CONTROLS as CONDITIONAL_CONTROLS
from .families.constant import CONSTANT
from .families.constant import CONTROLS as CONSTANT_CONTROLS
from .families.probe import PROBE
from .families.prompt import PROMPT
from .grid import Condition
from .header import ActivationCacheInfo, DataInfo, ModelInfo, RunFiles
from .results import (
    SCHEMA_VERSION,
    CosineBlock,
    Example,
    FamilyResults,
    GateProbeInfo,
    PcaBlock,
    Results,
    SavedDetectorInfo,
    ValEntry,
    VectorInfo,
)
from .select import Choice
from .tables import (
    Change,
    Control,
    CrossCwe,
    Flips,
    HeldOutRow,
    HeldOutTable,
    LeadRow,
    LeadTable,
    LeverRate,
    MarginsByClass,
    MetricBlock,
    PointMetrics,
)

__all__ = ["READABLE", "ResultsError", "load_results", "upgrade_v2"]

#: The schemas :func:`load_results` reads.
READABLE: tuple[int, ...] = (2, SCHEMA_VERSION)
#: Which family each lead-table row of schema 2 came from, and which row each control controls.
_V2_ROWS: dict[str, tuple[str, str | None]] = {
    "calibrated": (CALIBRATED.name, None),
    "prompt": (PROMPT.name, None),
    "constant": (CONSTANT.name, None),
    "constant_control": (CONSTANT.name, "constant"),
    "conditional": (CONDITIONAL.name, None),
    "gate_control": (CONDITIONAL.name, "conditional"),
    "vector_control": (CONDITIONAL.name, "conditional"),
    "probe": (PROBE.name, None),
}


class ResultsError(ValueError):
    """A results.json this version cannot read (the message names the file and its schema)."""


def load_results(path: str | Path) -> Results:
    """The results in *path* (schema 2 or 3) as typed values; a clear :class:`ResultsError` otherwise.

    >>> results = load_results("runs/demo/results.json")  # doctest: +SKIP
    >>> results.families["conditional"].saved.digest  # doctest: +SKIP
    '037ad7c5c6657c12'
    """
    file = Path(path)
    try:
        doc = json.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ResultsError(f"{file}: cannot read it ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise ResultsError(f"{file}: not valid JSON ({exc})") from None
    version = doc.get("schema_version") if isinstance(doc, dict) else None
    if version not in READABLE:
        readable = " and ".join(map(str, READABLE))
        raise ResultsError(
            f"{file}: results.json of schema {version!r}; this vulnsteer reads schemas {readable} (rerun the "
            "command with this version, or render it with the version that wrote it)"
        )
    try:
        return upgrade_v2(doc) if version == 2 else Results.from_json(doc)
    except (KeyError, TypeError, ValueError) as exc:
        raise ResultsError(
            f"{file}: a damaged results.json of schema {version} ({type(exc).__name__}: {exc})"
        ) from None


def _row(doc: JsonObject) -> HeldOutRow:
    controls = {}
    if doc.get("gate_control") is not None:
        controls["gate_control"] = Control(MetricBlock.from_json(doc["gate_control"]), doc.get("gate_control_delta"))
    if doc.get("control") is not None:
        controls["control"] = Control(MetricBlock.from_json(doc["control"]), doc.get("control_delta"))
    flips = Flips.from_json(doc["flips"])
    lo, hi = doc["delta_ci"]
    other = doc.get("best_steered_not_chosen")
    assert flips is not None
    return HeldOutRow(
        int(doc["n"]),
        doc.get("n_pairs"),
        str(doc["split"]),
        MetricBlock.from_json(doc["baseline"]),
        str(doc["chosen"]),
        MetricBlock.from_json(doc["steered"]),
        float(doc["delta"]),
        (float(lo), float(hi)),
        float(doc["p_value"]),
        flips,
        str(doc.get("words", "")),
        controls,
        LeverRate.from_json(doc.get("lever_rate")),
        None if other is None else _row(other),
    )


def _tables(doc: JsonObject, rows_key: str, with_rest: bool) -> dict[str, HeldOutTable]:
    out = {}
    for mode, rows in (doc.get(rows_key) or {}).items():
        split = next((r["split"] for r in rows.values()), "test")
        pooled = (doc.get("pooled") or {}).get(mode) or {} if with_rest else {}
        cross = (doc.get("cross_cwe") or {}).get(mode) if with_rest else None
        out[mode] = HeldOutTable(
            split,
            {cwe: _row(r) for cwe, r in rows.items()},
            {cwe: _row(r) for cwe, r in pooled.items()},
            None if cross is None else CrossCwe.from_json(cross),
        )
    return out


def _choices(doc: Mapping[str, Mapping[str, Any]] | None) -> dict[str, dict[str, Choice]]:
    return {m: {t: Choice.from_dict(c) for t, c in by.items()} for m, by in (doc or {}).items()}


def _lead(doc: JsonObject) -> LeadTable:
    rows = []
    for r in doc["rows"]:
        family, control_of = _V2_ROWS.get(r["name"], (None, None)) if r["name"] != "baseline" else (None, None)
        lo, hi = r.get("delta_ci") or (0.0, 0.0)
        rows.append(
            LeadRow(
                str(r["name"]),
                str(r["label"]),
                MetricBlock.from_json(r["metrics"]),
                float(r.get("delta", 0.0)),
                (float(lo), float(hi)),
                float(r.get("p_value", 1.0)),
                Flips.from_json(r.get("flips")),
                LeverRate.from_json(r.get("lever_rate")),
                family,
                control_of,
                Change.from_json(r.get("conditional_vs")),
            )
        )
    margins = {name: MarginsByClass.from_json(m) for name, m in (doc.get("margins") or {}).items()}
    return LeadTable(str(doc["split"]), tuple(rows), str(doc.get("words", "")), margins)


def _family_of(condition: Condition) -> str | None:
    if condition.template != "default":
        return PROMPT.name
    if condition.setting is None:
        return None
    return CONDITIONAL.name if condition.setting.gated else CONSTANT.name


def _val(doc: Mapping[str, Any]) -> dict[str, tuple[ValEntry, ...]]:
    out = {}
    for mode, entries in (doc or {}).items():
        found = []
        for e in entries:
            condition = Condition.from_dict(e["condition"])
            metrics = {k: PointMetrics.from_json(m) for k, m in e["metrics"].items()}
            found.append(ValEntry(condition, metrics, _family_of(condition)))
        out[mode] = tuple(found)
    return out


def _families(doc: JsonObject) -> dict[str, FamilyResults]:
    gated = bool(doc.get("conditional_selection"))
    examples = {m: tuple(Example.from_json(e) for e in items) for m, items in (doc.get("examples") or {}).items()}
    lead_names = {r["name"] for block in (doc.get("lead") or {}).values() for r in block["rows"]}
    out: dict[str, FamilyResults] = {}
    if doc.get("calibrated_thresholds"):
        thresholds = {cwe: float(t) for cwe, t in doc["calibrated_thresholds"].items()}
        out[CALIBRATED.name] = FamilyResults(CALIBRATED.name, CALIBRATED.label, thresholds=thresholds)
    if doc.get("prompt_selection") is not None:
        templates = {m: dict(by) for m, by in doc["prompt_selection"].items()}
        out[PROMPT.name] = FamilyResults(PROMPT.name, PROMPT.label, templates=templates)
    if doc.get("selection") is not None:
        out[CONSTANT.name] = FamilyResults(
            CONSTANT.name,
            CONSTANT.label,
            CONSTANT_CONTROLS,
            choices=_choices(doc["selection"]),
            held_out=_tables(doc, "summary", with_rest=True),
            examples={} if gated else examples,
            vectors={k: VectorInfo.from_json(v) for k, v in (doc.get("vectors") or {}).items()},
            cosine={k: CosineBlock.from_json(c) for k, c in (doc.get("cosine") or {}).items()},
        )
    if gated or doc.get("condition_probes"):
        out[CONDITIONAL.name] = FamilyResults(
            CONDITIONAL.name,
            CONDITIONAL.label,
            CONDITIONAL_CONTROLS,
            choices=_choices(doc.get("conditional_selection")),
            held_out=_tables(doc, "conditional", with_rest=False),
            examples=examples if gated else {},
            vectors={k: VectorInfo.from_json(v) for k, v in (doc.get("behaviours") or {}).items()},
            probes={k: GateProbeInfo.from_json(p) for k, p in (doc.get("condition_probes") or {}).items()},
            saved=SavedDetectorInfo.from_json(doc.get("detector")),
        )
    if "probe" in lead_names:
        out[PROBE.name] = FamilyResults(PROBE.name, PROBE.label)
    return out


def upgrade_v2(doc: JsonObject) -> Results:
    """A results.json of schema 2 as :class:`~vulnsteer.experiment.results.Results` of the current schema (numbers
    unchanged)."""
    files = doc.get("files")
    return Results(
        command=str(doc.get("command", "run")),
        status=str(doc.get("status", "complete")),
        model=ModelInfo.from_json(doc.get("model")),
        data=DataInfo.from_json(doc.get("data")),
        config=dict(doc.get("config") or {}),
        template=dict(doc.get("template") or {}),
        sign_convention=str(doc.get("sign_convention", "")),
        environment=dict(doc.get("environment") or {}),
        warnings=tuple(doc.get("warnings") or ()),
        run_dir=doc.get("run_dir"),
        vectors_from=doc.get("vectors_from"),
        source_model=ModelInfo.from_json(doc.get("source_model")),
        layer_sets=tuple(tuple(int(x) for x in s) for s in doc.get("layer_sets") or ()),
        layers=tuple(int(x) for x in doc.get("layers") or ()),
        pca={p: PcaBlock.from_json(b) for p, b in (doc.get("pca") or {}).items()},
        val=_val(doc.get("val") or {}),
        families=_families(doc),
        lead={m: _lead(block) for m, block in (doc.get("lead") or {}).items()},
        probes=tuple(ProbeResult.from_dict(p) for p in doc.get("probes") or ()),
        records={k: tuple(record_from_dict(r) for r in rs) for k, rs in (doc.get("records") or {}).items()},
        activation_cache=ActivationCacheInfo.from_json(doc.get("activation_cache")),
        prefix_cache=dict(doc.get("prefix_cache") or {}),
        peak_memory=dict(doc.get("peak_memory") or {}),
        executor=dict(doc.get("executor") or {}),
        timings_s={k: float(v) for k, v in (doc.get("timings_s") or {}).items()},
        files=RunFiles.from_json(files),
        finished_conditions=tuple(Condition.from_dict(c) for c in doc.get("finished_conditions") or ()),
    )
