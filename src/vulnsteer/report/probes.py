"""The probe detectors' table in the report: one row of formatted cells per
:class:`~vulnsteer.detection.probe_table.ProbeResult`.

>>> row = ProbeResult.from_dict({"cwe": "CWE-89", "detector": "logistic", "pooling": "code_mean", "layer": 15,
...                              "skipped": "1 class"})
>>> probe_table([row])[0]["test bal.acc [95% CI]"]
'skipped: 1 class'
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..detection.probe_table import ProbeResult

__all__ = ["PROBE_TABLE_COLUMNS", "probe_table"]

PROBE_TABLE_COLUMNS: tuple[str, ...] = (
    "CWE",
    "probe",
    "pooling",
    "layer",
    "val bal.acc",
    "threshold",
    "test AUROC",
    "test bal.acc [95% CI]",
)


def _fmt(value: float | None, digits: int = 3) -> str:
    """A number, or ``–`` where it is undefined (None or nan)."""
    if value is None or math.isnan(value):
        return "–"
    return f"{value:.{digits}f}"


def probe_table(results: Sequence[ProbeResult]) -> list[dict[str, str]]:
    """Rows of formatted strings, keyed by :data:`PROBE_TABLE_COLUMNS`, in the order of *results*.

    A skipped result shows ``skipped: <reason>`` in the test column and dashes elsewhere; ``–`` marks an
    undefined AUROC (single-class split).
    """
    rows = []
    for r in results:
        if r.skipped:
            cells = ["–", "–", "–", f"skipped: {r.skipped}"]
        else:
            lo, hi = r.balanced_accuracy_ci
            cells = [
                _fmt(r.val_balanced_accuracy),
                _fmt(r.threshold),
                _fmt(r.test_auroc),
                f"{_fmt(r.test_balanced_accuracy)} [{_fmt(lo, 2)}, {_fmt(hi, 2)}]",
            ]
        head = [r.cwe, r.detector, r.pooling, str(r.layer) if r.layer >= 0 else "–"]
        rows.append(dict(zip(PROBE_TABLE_COLUMNS, [*head, *cells], strict=True)))
    return rows
