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
from pathlib import Path
from typing import Any

from ..io import JsonObject
from .families.calibrated import CALIBRATED
from .families.conditional import CONDITIONAL
from .families.conditional import CONTROLS as CONDITIONAL_CONTROLS
from .families.constant import CONSTANT
from .families.constant import CONTROLS as CONSTANT_CONTROLS
from .families.probe import PROBE
from .families.prompt import PROMPT
from .results import SCHEMA_VERSION, Results

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


#: Schema-2 keys that schema 3 keeps as they are.
_KEPT = (
    "command", "status", "config", "template", "sign_convention", "environment", "model", "warnings", "run_dir",
    "vectors_from", "source_model", "data", "layer_sets", "layers", "pca", "probes", "records", "activation_cache",
    "prefix_cache", "peak_memory", "executor", "timings_s", "files", "finished_conditions",
)  # fmt: skip


def _row(doc: JsonObject) -> dict[str, Any]:
    """A per-CWE row of schema 2 (``control``/``control_delta``, ``gate_control``/``gate_control_delta``) in
    schema 3 (its controls by role)."""
    controls = {
        role: {"metrics": doc[role], "delta": doc.get(f"{role}_delta")}
        for role in ("gate_control", "control")
        if doc.get(role) is not None
    }
    other = doc.get("best_steered_not_chosen")
    kept = {k: v for k, v in doc.items() if k not in ("control", "control_delta", "gate_control", "gate_control_delta")}
    return {**kept, "controls": controls, "best_steered_not_chosen": None if other is None else _row(other)}


def _tables(doc: JsonObject, rows_key: str, with_rest: bool) -> dict[str, Any]:
    """Per mode, a family's held-out table: its rows (*rows_key*), and with *with_rest* the pooled vector's rows
    and the cross-CWE matrix (schema 2 kept those for constant steering only)."""
    out = {}
    for mode, rows in (doc.get(rows_key) or {}).items():
        out[mode] = {
            "split": next((r["split"] for r in rows.values()), "test"),
            "rows": {cwe: _row(r) for cwe, r in rows.items()},
            "pooled": {cwe: _row(r) for cwe, r in ((doc.get("pooled") or {}).get(mode) or {}).items()}
            if with_rest
            else {},
            "cross_cwe": (doc.get("cross_cwe") or {}).get(mode) if with_rest else None,
        }
    return out


def _lead(doc: JsonObject) -> dict[str, Any]:
    rows = []
    for r in doc["rows"]:
        family, control_of = _V2_ROWS.get(r["name"], (None, None)) if r["name"] != "baseline" else (None, None)
        rows.append({**r, "family": family, "control_of": control_of, "versus": r.get("conditional_vs")})
    return {**doc, "rows": rows}


def _family_of(condition: JsonObject) -> str | None:
    setting = condition.get("setting")
    if condition.get("template", "default") != "default":
        return PROMPT.name
    if setting is None:
        return None
    return CONDITIONAL.name if setting.get("gate", "none") != "none" else CONSTANT.name


def _families(doc: JsonObject) -> dict[str, Any]:
    gated = bool(doc.get("conditional_selection"))
    examples = doc.get("examples") or {}
    lead_names = {r["name"] for block in (doc.get("lead") or {}).values() for r in block["rows"]}
    out: dict[str, Any] = {}
    if doc.get("calibrated_thresholds"):
        out[CALIBRATED.name] = {"label": CALIBRATED.label, "thresholds": doc["calibrated_thresholds"]}
    if doc.get("prompt_selection") is not None:
        out[PROMPT.name] = {"label": PROMPT.label, "templates": doc["prompt_selection"]}
    if doc.get("selection") is not None:
        out[CONSTANT.name] = {
            "label": CONSTANT.label,
            "controls": dict(CONSTANT_CONTROLS),
            "choices": doc["selection"],
            "held_out": _tables(doc, "summary", with_rest=True),
            "examples": {} if gated else examples,
            "vectors": doc.get("vectors"),
            "cosine": doc.get("cosine"),
        }
    if gated or doc.get("condition_probes"):
        out[CONDITIONAL.name] = {
            "label": CONDITIONAL.label,
            "controls": dict(CONDITIONAL_CONTROLS),
            "choices": doc.get("conditional_selection"),
            "held_out": _tables(doc, "conditional", with_rest=False),
            "examples": examples if gated else {},
            "vectors": doc.get("behaviours"),
            "probes": doc.get("condition_probes"),
            "saved": doc.get("detector"),
        }
    if "probe" in lead_names:
        out[PROBE.name] = {"label": PROBE.label}
    return out


def upgrade_v2(doc: JsonObject) -> Results:
    """A results.json of schema 2 as :class:`~vulnsteer.experiment.results.Results` of the current schema (numbers
    unchanged): its keys mapped to schema 3's, then read as a file of schema 3 is."""
    upgraded = {k: doc[k] for k in _KEPT if k in doc}
    upgraded["schema_version"] = SCHEMA_VERSION
    upgraded["val"] = {
        mode: [
            {"family": _family_of(e["condition"]), "condition": e["condition"], "metrics": e["metrics"]}
            for e in entries
        ]
        for mode, entries in (doc.get("val") or {}).items()
    }
    upgraded["families"] = _families(doc)
    upgraded["lead"] = {mode: _lead(block) for mode, block in (doc.get("lead") or {}).items()}
    return Results.from_json(upgraded)
