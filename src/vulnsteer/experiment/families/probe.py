"""The probe families: a gating probe read alone, as its own detector (no model answer): the ceiling conditional
steering can reach through the model; and the same probe **adapted** to the data it is applied to.

They fit and select nothing of their own: they read the gating probes a gated family (*source*, by default the
conditional family) fitted on train and thresholded on val, the probe of each CWE's chosen (else best) setting,
and apply it to the held-out samples' unsteered activations (the layers and poolings it reads). A CWE without a
choice (no val samples) is read by the probe the other CWEs chose. They keep their probes under
``chosen/probes-alone/``, so ``evaluate --from`` applies them to another dataset too.

The **adapted** family (``adapt=True``) re-estimates each probe's centre from the unlabelled held-out inputs it
reads (:meth:`~vulnsteer.steering.probe.Probe.adapted`: their mean score becomes the centre; the threshold and
calibration were chosen on val scores centred the same way). It reads the held-out activations only, never a
label; with fewer than ``conditional.min_adapt`` inputs it does not adapt and says so (no row). Whole files (scored
as their functions) flag the share of the distinct functions flagged, as a scan's adapted file verdicts do.

Lead-table rows: ``probe`` and ``adapted`` (the same records in every mode's table).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ...config import ExperimentConfig
from ...data.sample import Sample
from ...detection.records import DetectionRecord, flag_top_share
from ...io import JsonObject
from ...lm.activations import Activations
from ...lm.model import LoadedModel
from ...steering.probe import AdaptationError, Probe
from ..family import ActivationNeeds, Applied, Artefacts, FitContext, HeldOut, LeadEntry, Saved, ValContext
from ..fit import slug
from ..grid import POOLED, Condition, gate_probe
from ..results import FamilyResults
from ..rundir import CHOSEN_DIR
from .conditional import CONDITIONAL, ConditionalFamily
from .setting import SettingChoices

__all__ = ["ADAPTED", "PROBE", "ProbeChoices", "ProbeFamily", "probe_records"]

#: Where the probe families keep their probes in a run folder (under ``chosen/``).
FOLDER = "probes-alone"


def probe_records(probe: Probe, acts: Activations, samples: Sequence[Sample]) -> list[DetectionRecord]:
    """The probe alone as a detector: its own verdict per sample (score = the probe's score; the record carries the
    threshold its verdict read it against)."""
    scores = probe.scores_of(acts, acts.code_tokens, [s.code for s in samples])
    return [
        DetectionRecord(
            s.id,
            s.cwe,
            s.pair_id,
            s.y,
            "vulnerable" if float(x) > probe.threshold else "secure",
            score=float(x),
            threshold=probe.threshold,
        )
        for s, x in zip(samples, scores, strict=True)
    ]


@dataclass(frozen=True)
class ProbeChoices:
    """The probe each CWE's chosen (else best) gated setting reads, and the probe for any other CWE; *min_adapt*:
    the fewest inputs the adapted family adapts to."""

    by_cwe: Mapping[str, Probe]
    default: Probe
    min_adapt: int = 1
    modes: tuple[str, ...] = ("logit",)

    def probe_for(self, cwe: str) -> Probe:
        return self.by_cwe.get(cwe, self.default)


def _required(probe: Probe | None, key: str) -> Probe:
    """A chosen setting's gating probe, which its choices always hold (a KeyError names the one missing)."""
    if probe is None:
        raise KeyError((POOLED, key))
    return probe


def _from_settings(chosen: SettingChoices, min_adapt: int) -> ProbeChoices | None:
    if not chosen.choices:
        return None
    by_target = next(iter(chosen.choices.values()))
    keys = {cwe: c.best.probe for cwe, c in by_target.items() if c is not None and c.best and c.best.probe}
    if not keys:
        return None
    probes = {cwe: _required(gate_probe(chosen.probes, cwe, key), key) for cwe, key in keys.items()}
    default = probes.get(POOLED) or next(iter(probes.values()))
    return ProbeChoices(
        {cwe: p for cwe, p in probes.items() if cwe != POOLED}, default, min_adapt, tuple(chosen.choices)
    )


@dataclass(frozen=True)
class ProbeFamily:
    """The gating probe alone, or adapted (see the module docstring)."""

    name: str = "probe"
    label: str = "the gating probe alone"
    source: ConditionalFamily = CONDITIONAL
    adapt: bool = False

    def enabled(self, config: ExperimentConfig) -> bool:
        return self.source.enabled(config)

    def needs(
        self, config: ExperimentConfig, layer_sets: Sequence[tuple[int, ...]], num_layers: int
    ) -> ActivationNeeds:
        return self.source.needs(config, layer_sets, num_layers)

    def fit(self, ctx: FitContext) -> int:
        return ctx.config.conditional.min_adapt

    def artefacts(self, fitted: int) -> Artefacts:
        return Artefacts()

    def val_conditions(self, fitted: int, mode: str) -> list[Condition]:
        return []

    def select(self, fitted: int, val: ValContext) -> ProbeChoices | None:
        """The gated family's choices' probes (they are this family's detectors)."""
        chosen = val.earlier.get(self.source.name)
        return _from_settings(chosen, fitted) if isinstance(chosen, SettingChoices) else None

    def save(self, chosen: ProbeChoices | None, run: Path, info: JsonObject) -> Saved:
        """Each probe under ``chosen/probes-alone/``; the entry names each CWE's file (``any``: the default)."""
        if chosen is None:
            return Saved()
        files: dict[str, str] = {}
        for cwe, probe in [*chosen.by_cwe.items(), (POOLED, chosen.default)]:
            file = f"{FOLDER}/{slug(probe.key)}.safetensors"
            probe.save(run / CHOSEN_DIR / file)
            files[cwe] = file
        doc = {"probes": files, "min_adapt": chosen.min_adapt}
        return Saved(chosen={mode: doc for mode in chosen.modes})

    def restore(self, entry: JsonObject, run: Path, lm: LoadedModel, allow_mismatch: bool) -> ProbeChoices | None:
        doc = next(iter(entry.values()), None)
        if not isinstance(doc, Mapping):
            return None
        probes = {cwe: Probe.load(Path(run) / CHOSEN_DIR / file) for cwe, file in doc["probes"].items()}
        for probe in probes.values():
            if probe.hidden_size != lm.hidden_size:
                raise ValueError(
                    f"{run}: the probes read hidden size {probe.hidden_size}, the model has {lm.hidden_size}"
                )
        default = probes.pop(POOLED)
        return ProbeChoices(probes, default, int(doc.get("min_adapt", 1)), tuple(entry))

    def held_out_conditions(self, chosen: ProbeChoices | None, held: HeldOut) -> list[Condition]:
        return []

    def apply(self, chosen: ProbeChoices | None, held: HeldOut) -> Applied:
        """Each CWE's probe on the held-out activations (adapted: each probe's centre re-estimated from every
        held-out input it reads)."""
        if chosen is None or held.activations is None:
            return Applied()
        acts = held.activations()
        samples = held.pieces  # (the activations' rows; their records are aggregated back to the samples)
        by_probe: dict[str, tuple[Probe, list[int]]] = {}
        for i, s in enumerate(samples):
            probe = chosen.probe_for(s.cwe)
            by_probe.setdefault(probe.key, (probe, []))[1].append(i)
        records: dict[str, DetectionRecord] = {}
        notes: list[str] = []
        for probe, rows in by_probe.values():
            part = acts.subset(rows)
            mine = [samples[i] for i in rows]
            if self.adapt:
                try:
                    raw = probe.scores_of(part, part.code_tokens, [s.code for s in mine])
                    probe = probe.adapted(raw, chosen.min_adapt)
                except AdaptationError as exc:
                    notes.append(f"{probe.key}: not adapted: {exc}")
                    continue
            records.update({r.sample_id: r for r in probe_records(probe, part, mine)})
        ordered = held.to_samples([records[s.id] for s in samples if s.id in records])
        if not ordered:
            return Applied(notes=tuple(notes))
        if self.adapt and held.units is not None and held.units.split:
            # whole files: flag the share of the distinct pieces flagged, as a scan's file verdicts do
            distinct = {s.code: records[s.id].verdict for s in samples if s.id in records}
            share = sum(v == "vulnerable" for v in distinct.values()) / len(distinct)
            ordered = flag_top_share(ordered, share)
        if self.adapt:
            label = "the gating probe adapted to the held-out inputs (centre from their unlabelled states)"
            note = "its centre re-estimated from the unlabelled inputs it reads; no label is read"
            entry = LeadEntry(self.name, label, ordered, what="the adapted probe", note=note)
        else:
            label = "the gating probe alone (its own verdict, no model)"
            source = next(r.what for r in self.source.rows if r.headline)
            entry = LeadEntry(
                self.name,
                label,
                ordered,
                what="the probe alone",
                note=f"the ceiling {source} can reach through the model",
            )
        return Applied({mode: [entry] for mode in held.modes}, notes=tuple(notes))

    def results(
        self, fitted: int | None, chosen: ProbeChoices | None, applied: Applied | None, saved: Saved | None
    ) -> FamilyResults:
        return FamilyResults(self.name, self.label, notes=applied.notes if applied else ())


PROBE = ProbeFamily()
ADAPTED = ProbeFamily(
    "adapted", "the gating probe adapted to the data it is applied to (label-free)", CONDITIONAL, adapt=True
)
