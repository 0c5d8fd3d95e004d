"""Choosing how the scores of a sample's pieces add up (``detection.aggregations``), on val only.

Where the val split holds samples scored as several pieces (whole files as their functions, long functions as
windows), every candidate rule aggregates every val condition's records, and the rule with the best mean AUROC over
the conditions that have scores wins (ties to the earlier candidate): a choice of how files are read, made the
way every other design choice is, over every candidate setting rather than for one detector. Where no val sample
is split, the first candidate is used (``max`` by default) and the report says so.

>>> from vulnsteer.data.sample import Sample
>>> from vulnsteer.data.units import Units
>>> choose_aggregation(("max", "mean"), Units.whole([Sample("a", "x", "c", "CWE-787", "vulnerable")]), {})
('max', 'the first of detection.aggregations (no val sample is scored as several pieces)', {})
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..data.units import Units
from ..detection.aggregate import aggregate_records
from ..detection.records import DetectionRecord
from ..stats.metrics import point_metrics

__all__ = ["choose_aggregation"]


def choose_aggregation(
    candidates: Sequence[str], units: Units, records: Mapping[str, Sequence[DetectionRecord]]
) -> tuple[str, str, dict[str, float]]:
    """The rule, how it was chosen (in words), and per candidate its mean val AUROC (see the module docstring);
    *records* are every val condition's piece records by condition key, *units* the val split's pieces."""
    if not candidates:
        raise ValueError("detection.aggregations is empty")
    if not units.split:
        return candidates[0], "the first of detection.aggregations (no val sample is scored as several pieces)", {}
    if len(candidates) == 1:
        return candidates[0], "the only candidate of detection.aggregations", {}
    means: dict[str, float] = {}
    for how in candidates:
        found = []
        for piece_records in records.values():
            samples = aggregate_records(units, piece_records, how)
            auroc = point_metrics([r.to_prediction() for r in samples], ["auroc"])["auroc"]
            if auroc is not None:
                found.append(auroc)
        if found:
            means[how] = sum(found) / len(found)
    if not means:
        return candidates[0], "the first of detection.aggregations (no val condition has scores)", {}
    best = max(candidates, key=lambda how: (means.get(how, float("-inf")), -candidates.index(how)))
    words = (
        f"on val: the best mean AUROC over {len(records)} conditions ({units.split} of {len(units.samples)} val "
        "samples scored as several pieces)"
    )
    return best, words, means
