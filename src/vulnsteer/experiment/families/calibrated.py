"""The calibrated family: the unsteered answer margin with a threshold chosen on val (what a constant shift of the
answer alone can give).

Nothing is fitted on train and nothing is scored beyond the baseline: per CWE the threshold on the baseline's
logit-mode margin (``logp(" vulnerable") - logp(" secure")``) that maximises balanced accuracy on val is chosen
(a CWE without val samples keeps the model's own threshold, 0), and applied to the baseline's held-out margins.

Lead-table row: ``calibrated`` (the same logit-mode records in every mode's table).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...config import ExperimentConfig
from ...detection.probe import choose_threshold
from ...detection.records import DetectionRecord
from ...io import JsonObject
from ...lm.model import LoadedModel
from ..family import ActivationNeeds, Applied, Artefacts, FitContext, HeldOut, LeadEntry, Saved, ValContext
from ..grid import Condition
from ..results import FamilyResults

__all__ = ["CALIBRATED", "CalibratedFamily", "calibrated_records", "calibrated_thresholds"]

#: The mode whose margins are calibrated.
MODE = "logit"


def calibrated_thresholds(val: Sequence[DetectionRecord], cwes: Sequence[str]) -> dict[str, float]:
    """Per CWE, the threshold on the answer margin that maximises balanced accuracy on the *val* records (the
    model's own, 0, for a CWE without val samples).

    >>> calibrated_thresholds([], ["CWE-89"])
    {'CWE-89': 0.0}
    """
    thresholds: dict[str, float] = {}
    for cwe in cwes:
        v = [r for r in val if r.cwe == cwe and r.margin is not None]
        margins = np.array([r.margin for r in v], dtype=np.float64)
        thresholds[cwe] = choose_threshold(margins, [r.y_true for r in v], reference=0.0) if v else 0.0
    return thresholds


def calibrated_records(test: Sequence[DetectionRecord], thresholds: Mapping[str, float]) -> list[DetectionRecord]:
    """The held-out records with each CWE's margin read against its threshold (one record per record with a
    margin, CWE by CWE in the order of *thresholds*)."""
    out: list[DetectionRecord] = []
    for cwe, threshold in thresholds.items():
        for r in test:
            if r.cwe == cwe and r.margin is not None:
                verdict = "vulnerable" if r.margin > threshold else "secure"
                out.append(
                    DetectionRecord(r.sample_id, r.cwe, r.pair_id, r.y_true, verdict, score=r.score, margin=r.margin)
                )
    return out


@dataclass(frozen=True)
class CalibratedFamily:
    """The calibrated baseline (see the module docstring)."""

    name: str = "calibrated"
    label: str = "calibrated baseline"

    def enabled(self, config: ExperimentConfig) -> bool:
        return config.baselines.calibrated and MODE in config.detection.modes

    def needs(
        self, config: ExperimentConfig, layer_sets: Sequence[tuple[int, ...]], num_layers: int
    ) -> ActivationNeeds:
        return ActivationNeeds()

    def fit(self, ctx: FitContext) -> None:
        return None

    def artefacts(self, fitted: None) -> Artefacts:
        return Artefacts()

    def val_conditions(self, fitted: None, mode: str) -> list[Condition]:
        return []  # the baseline's, which the protocol always scores

    def select(self, fitted: None, val: ValContext) -> dict[str, float] | None:
        records = val.records.get(Condition("baseline", MODE, "val").key)
        return None if records is None else calibrated_thresholds(records, val.cwes)

    def save(self, chosen: dict[str, float] | None, run: Path, info: JsonObject) -> Saved:
        return Saved()

    def restore(self, entry: JsonObject, run: Path, lm: LoadedModel, allow_mismatch: bool) -> None:
        return None

    def held_out_conditions(self, chosen: dict[str, float] | None, held: HeldOut) -> list[Condition]:
        return []

    def apply(self, chosen: dict[str, float] | None, held: HeldOut) -> Applied:
        if chosen is None or MODE not in held.modes:
            return Applied()
        records = calibrated_records(held.baseline(MODE), chosen)
        label = "unsteered logit margin, threshold per CWE chosen on val"
        return Applied({mode: [LeadEntry(self.name, label, records)] for mode in held.modes})

    def results(
        self, fitted: None, chosen: dict[str, float] | None, applied: Applied | None, saved: Saved | None
    ) -> FamilyResults:
        return FamilyResults(self.name, self.label, thresholds=chosen or {})


CALIBRATED = CalibratedFamily()
