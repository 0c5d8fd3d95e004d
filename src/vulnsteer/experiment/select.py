"""Selection on the validation split only: one choice per CWE (and for the pooled vector).

Every function here refuses a condition that is not on ``val``, so no test record can reach a choice.

>>> from vulnsteer.experiment.grid import Condition
>>> select_per_cwe([Condition("baseline", "logit", "test")], lambda c, cwe: 0.5, ["CWE-89"])
Traceback (most recent call last):
...
ValueError: selection may only use validation conditions, got baseline|logit|test
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..config.vocabulary import SCOPES
from ..data.units import Units
from ..detection.records import DetectionRecord, aggregate_records
from ..stats.metrics import point_metrics
from .grid import POOLED, Condition, Setting

__all__ = ["Choice", "balanced_accuracy", "choose_aggregation", "select_per_cwe", "select_settings", "select_templates"]


@dataclass(frozen=True)
class Choice:
    """The validation choice for one target (a CWE, or ``"any"`` for the pooled vector): ``steered`` or
    ``baseline``, and the best steered setting (reported as "not chosen" when the baseline won, and used for the
    cross-CWE matrix). Its *scope* says where it was made: ``per_cwe`` (from the target's own val samples) or
    ``pooled`` (one choice from every CWE's val samples together, the same for every CWE: it applies to a CWE the
    run never saw)."""

    target: str
    chosen: str
    best: Setting | None
    val_best: float | None = None
    val_baseline: float | None = None
    selected_by: str = "val"
    scope: str = "per_cwe"

    def __post_init__(self) -> None:
        if self.chosen not in ("steered", "baseline"):
            raise ValueError(f"a choice is 'steered' or 'baseline', got {self.chosen!r}")
        if self.scope not in SCOPES:
            raise ValueError(f"a choice's scope is one of {', '.join(SCOPES)}, got {self.scope!r}")
        if self.chosen == "steered" and self.best is None:
            raise ValueError("a steered choice needs a setting")

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "chosen": self.chosen,
            "best_steered": self.best.to_dict() if self.best else None,
            "val_balanced_accuracy_best_steered": self.val_best,
            "val_balanced_accuracy_baseline": self.val_baseline,
            "selected_by": self.selected_by,
            "scope": self.scope,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Choice:
        best = data.get("best_steered")
        return cls(
            str(data["target"]),
            str(data["chosen"]),
            Setting.from_dict(best) if best else None,
            data.get("val_balanced_accuracy_best_steered"),
            data.get("val_balanced_accuracy_baseline"),
            str(data.get("selected_by", "val")),
            str(data.get("scope", "per_cwe")),
        )


def balanced_accuracy(records: Sequence[DetectionRecord], cwe: str | None = None) -> float | None:
    """Balanced accuracy of the records of *cwe* (all records when None); None without records."""
    subset = [r.to_prediction() for r in records if cwe is None or r.cwe == cwe]
    return point_metrics(subset, ["balanced_accuracy"])["balanced_accuracy"] if subset else None


def select_per_cwe(
    candidates: Sequence[Condition], metrics_for: Callable[[Condition, str], float | None], cwes: Sequence[str]
) -> dict[str, Condition]:
    """Per CWE, the candidate with the best validation score; ties go to the smaller |strength|, then order.

    *metrics_for(condition, cwe)* reads the **validation** split only. Baseline candidates (strength 0) take part,
    so "no steering" wins when nothing beats it.
    """
    chosen: dict[str, Condition] = {}
    for cwe in cwes:
        best: tuple[float, float, int] | None = None
        for order, cond in enumerate(candidates):
            if cond.split != "val":
                raise ValueError(f"selection may only use validation conditions, got {cond.key}")
            value = metrics_for(cond, cwe)
            if value is None:
                continue
            rank = (-value, abs(cond.strength), order)
            if best is None or rank < best:
                best = rank
                chosen[cwe] = cond
    return chosen


def select_settings(
    conds: Sequence[Condition],
    records: Mapping[str, Sequence[DetectionRecord]],
    cwes: Sequence[str],
    pooled: bool = True,
    selected_by: str = "val",
) -> dict[str, Choice]:
    """Per CWE (with each CWE's own vector) and for the pooled vector (on all CWEs' samples together): the best
    validation setting, or the baseline when nothing beats it."""
    if any(c.split != "val" for c in conds):
        raise ValueError("select_settings takes validation conditions only")
    scores: dict[tuple[str, str], float | None] = {}

    def score(cond: Condition, target: str) -> float | None:
        if (cond.key, target) not in scores:
            scores[(cond.key, target)] = balanced_accuracy(records[cond.key], None if target == POOLED else target)
        return scores[(cond.key, target)]

    baseline = [c for c in conds if c.role == "baseline"]
    choices: dict[str, Choice] = {}
    families = [(cwe, None) for cwe in cwes] + ([(POOLED, POOLED)] if pooled else [])
    for target, vector in families:
        steered = [c for c in conds if c.role == "steered" and c.vector == vector]
        pick = select_per_cwe([*baseline, *steered], score, [target]).get(target)
        best = select_per_cwe(steered, score, [target]).get(target)
        if pick is None and best is None:
            continue
        choices[target] = Choice(
            target,
            "steered" if pick is not None and pick.role == "steered" else "baseline",
            best.setting if best else None,
            score(best, target) if best else None,
            score(baseline[0], target) if baseline else None,
            selected_by,
        )
    return choices


def select_templates(
    conds: Sequence[Condition], records: Mapping[str, Sequence[DetectionRecord]], cwes: Sequence[str]
) -> dict[str, str]:
    """Per CWE, the prompt template whose (unsteered) baseline scores the best balanced accuracy on val; ties go
    to the default template, then to the order given."""
    baselines = [c for c in conds if c.role == "baseline"]
    if any(c.split != "val" for c in baselines):
        raise ValueError("select_templates takes validation conditions only")
    ordered = sorted(baselines, key=lambda c: c.template != "default")
    chosen: dict[str, str] = {}
    for cwe in cwes:
        best: tuple[float, int] | None = None
        for order, cond in enumerate(ordered):
            score = balanced_accuracy(records[cond.key], cwe)
            if score is not None and (best is None or (-score, order) < best):
                best = (-score, order)
                chosen[cwe] = cond.template
    return chosen


def choose_aggregation(
    candidates: Sequence[str], units: Units, records: Mapping[str, Sequence[DetectionRecord]]
) -> tuple[str, str, dict[str, float]]:
    """How a sample's pieces add up (``detection.aggregations``), chosen on val: the rule, how it was chosen (in
    words), and per candidate its mean val AUROC. *records* are every val condition's piece records by condition
    key, *units* the val split's pieces.

    Where the val split holds samples scored as several pieces (whole files as their functions, long functions as
    windows), every candidate rule aggregates every val condition's records, and the rule with the best mean AUROC
    over the conditions that have scores wins (ties to the earlier candidate): a choice of how files are read,
    made the way every other design choice is, over every candidate setting rather than for one detector. Where
    no val sample is split, the first candidate is used (``logsumexp`` by default) and the report says so.

    >>> from vulnsteer.data.sample import Sample
    >>> choose_aggregation(("max", "mean"), Units.whole([Sample("a", "x", "c", "CWE-787", "vulnerable")]), {})
    ('max', 'the first of detection.aggregations (no val sample is scored as several pieces)', {})
    """
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
