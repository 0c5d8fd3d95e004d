"""The probe detectors' table in the report: one row of formatted cells per
:class:`~vulnsteer.detection.probe.ProbeResult` (or its ``results.json`` form).

>>> row = {"cwe": "CWE-89", "detector": "logistic", "pooling": "code_mean", "layer": 15, "skipped": "1 class"}
>>> probe_table([row])[0]["test bal.acc [95% CI]"]
'skipped: 1 class'
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..detection.probe import ProbeResult

__all__ = ["PROBE_TABLE_COLUMNS", "probe_table"]

PROBE_TABLE_COLUMNS: tuple[str, ...] = (
    "CWE",
    "detector",
    "pooling",
    "layer",
    "val bal.acc",
    "threshold",
    "test AUROC",
    "test bal.acc [95% CI]",
)


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "–"
    if math.isnan(value):
        return "nan"
    return f"{value:.{digits}f}"


def probe_table(results: Sequence[ProbeResult | Mapping[str, Any]]) -> list[dict[str, str]]:
    """Rows of formatted strings, keyed by :data:`PROBE_TABLE_COLUMNS`, in the order of *results*.

    Takes :class:`ProbeResult` objects or their :meth:`~ProbeResult.to_dict` form (as read back from
    ``results.json``). A skipped result shows ``skipped: <reason>`` in the test column and dashes elsewhere;
    ``–`` marks an undefined AUROC (single-class split).
    """
    rows = []
    for r in results:
        d = r.to_dict() if isinstance(r, ProbeResult) else r
        if d.get("skipped"):
            cells = ["–", "–", "–", f"skipped: {d['skipped']}"]
        else:
            lo, hi = d.get("balanced_accuracy_ci") or (None, None)
            cells = [
                _fmt(d.get("val_balanced_accuracy")),
                _fmt(d.get("threshold")),
                _fmt(d.get("test_auroc")),
                f"{_fmt(d.get('test_balanced_accuracy'))} [{_fmt(lo, 2)}, {_fmt(hi, 2)}]",
            ]
        layer = int(d["layer"])
        head = [str(d["cwe"]), str(d["detector"]), str(d["pooling"]), str(layer) if layer >= 0 else "–"]
        rows.append(dict(zip(PROBE_TABLE_COLUMNS, [*head, *cells], strict=True)))
    return rows
