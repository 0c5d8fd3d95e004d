"""The probe family: a gating probe read alone, as its own detector (no model answer): the ceiling conditional
steering can reach through the model.

It fits and selects nothing of its own: it reads the gating probes a gated family (*source*, by default the
conditional family) fitted on train and thresholded on val, the probe of each CWE's chosen (else best) setting,
and applies it to the held-out samples' unsteered activations (the same layer and pooling). A CWE without a
choice (no val samples) is read by the probe the other CWEs chose.

Lead-table row: ``probe`` (the same records in every mode's table).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ...config import ExperimentConfig
from ...data.sample import Sample
from ...detection.records import DetectionRecord
from ...io import JsonObject
from ...lm.activations import Activations
from ...lm.model import LoadedModel
from ...steering.probe import Probe
from ..family import ActivationNeeds, Applied, Artefacts, FitContext, HeldOut, LeadEntry, Saved, ValContext
from ..grid import POOLED, Condition
from ..results import FamilyResults
from .conditional import CONDITIONAL, ConditionalFamily
from .setting import SettingChoices

__all__ = ["PROBE", "ProbeFamily", "probe_records"]


def probe_records(probe: Probe, acts: Activations, samples: Sequence[Sample]) -> list[DetectionRecord]:
    """The probe alone as a detector: its own verdict per sample (score = the probe's score)."""
    scores = probe.scores_of(acts, acts.code_tokens)
    return [
        DetectionRecord(
            s.id, s.cwe, s.pair_id, s.y, "vulnerable" if float(x) > probe.threshold else "secure", score=float(x)
        )
        for s, x in zip(samples, scores, strict=True)
    ]


@dataclass(frozen=True)
class ProbeFamily:
    """The gating probe alone (see the module docstring)."""

    name: str = "probe"
    label: str = "the gating probe alone"
    source: ConditionalFamily = CONDITIONAL

    def enabled(self, config: ExperimentConfig) -> bool:
        return self.source.enabled(config)

    def needs(
        self, config: ExperimentConfig, layer_sets: Sequence[tuple[int, ...]], num_layers: int
    ) -> ActivationNeeds:
        return self.source.needs(config, layer_sets, num_layers)

    def fit(self, ctx: FitContext) -> None:
        return None

    def artefacts(self, fitted: None) -> Artefacts:
        return Artefacts()

    def val_conditions(self, fitted: None, mode: str) -> list[Condition]:
        return []

    def select(self, fitted: None, val: ValContext) -> SettingChoices | None:
        """The gated family's choices (their probes are this family's detectors)."""
        chosen = val.earlier.get(self.source.name)
        return chosen if isinstance(chosen, SettingChoices) else None

    def save(self, chosen: SettingChoices | None, run: Path, info: JsonObject) -> Saved:
        return Saved()

    def restore(self, entry: JsonObject, run: Path, lm: LoadedModel, allow_mismatch: bool) -> None:
        return None

    def held_out_conditions(self, chosen: SettingChoices | None, held: HeldOut) -> list[Condition]:
        return []

    def apply(self, chosen: SettingChoices | None, held: HeldOut) -> Applied:
        """The probe of each CWE's gated setting (chosen, else best) on the held-out activations."""
        if chosen is None or not chosen.choices or held.activations is None:
            return Applied()
        by_target = next(iter(chosen.choices.values()))
        keys = {cwe: c.best.probe for cwe, c in by_target.items() if c is not None and c.best and c.best.probe}
        if not keys:
            return Applied()
        acts = held.activations()
        samples = [s for group in held.samples.values() for s in group]
        records: list[DetectionRecord] = []
        for cwe in held.cwes:
            key = keys.get(cwe) or next(iter(keys.values()))
            probe = chosen.probes.get((cwe, key)) or chosen.probes[(POOLED, key)]
            records += [r for r in probe_records(probe, acts, samples) if r.cwe == cwe]
        if not records:
            return Applied()
        label = "the gating probe alone (its own verdict, no model)"
        entry = LeadEntry(
            self.name,
            label,
            records,
            what="the probe alone",
            note=f"the ceiling {next(r.what for r in self.source.rows if r.headline)} can reach through the model",
        )
        return Applied({mode: [entry] for mode in held.modes})

    def results(
        self, fitted: None, chosen: SettingChoices | None, applied: Applied | None, saved: Saved | None
    ) -> FamilyResults:
        return FamilyResults(self.name, self.label)


PROBE = ProbeFamily()
