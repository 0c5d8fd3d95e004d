"""The conditional family: steering gated per input by a probe of the prompt's own hidden states.

Fitted on train: the behaviour vectors (what to push: the answer-token contrast, the unembedding difference, or a
data-derived vector at the answer position) and the gating probes (at a condition layer at or below the steered
layers, thresholded on val), each with a random-gate control (a random direction of the same norm, thresholded by
the same rule). On val, every gated setting runs with two controls: the same push gated by the random direction
(``gate_control``: does the probe matter?) and a random behaviour vector of the same norm under the real gate
(``control``: does the direction matter?); a setting per CWE is chosen there. The setting a scanner can apply
without knowing the CWE (a label-free vector and a probe pooled over every CWE) with the best val balanced
accuracy over every CWE is saved as ``RUN/detector/`` (:class:`~vulnsteer.detection.detector.SavedDetector`).

Lead-table rows: ``conditional`` (the headline), ``gate_control`` and ``vector_control`` (its controls), and where
one gated setting was chosen for every CWE (``[conditional] select = "pooled"``), ``conditional_adapted``: the same
steered scores with the threshold that flags the highest share of the held-out inputs, the share of its gate probe's
calibration data (assumed, no label read), as ``scan`` adapts a steering detector (at least ``conditional.min_adapt``
inputs; ``evaluate --from`` uses the default minimum).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import numpy as np

from ...config import ExperimentConfig
from ...config.defaults import MIN_ADAPT
from ...config.design import ProbeDesign
from ...data.sample import Sample, dataset_hash
from ...detection.detector import SavedDetector
from ...detection.probe import fit_probe, probe_data, rethreshold
from ...detection.records import DetectionRecord, flag_top_share
from ...io import JsonObject
from ...lm.activations import ANSWER_POOLINGS, Activations
from ...lm.model import LoadedModel, resolve_layers
from ...lm.prompts import DEFAULT_TEMPLATE
from ...steering.behaviour import answer_vector_from, projection_sigmas
from ...steering.probe import Probe
from ...steering.vectors import SteeringVector, unembedding_vector
from ..family import ActivationNeeds, Applied, Artefacts, FitContext, HeldOut, LeadEntry, Saved, ValContext
from ..fit import fit_cwe_vectors, method_key, save_vectors
from ..grid import POOLED, RANDOM_PROBE, Condition, Setting, gate_probe
from ..prepare import PreparedData
from ..results import FamilyResults, GateProbeInfo, SavedDetectorInfo, VectorInfo
from ..select import balanced_accuracy, select_per_cwe
from .setting import (
    RowSpec,
    SettingChoices,
    apply_settings,
    conditions_of,
    restore_choices,
    save_choices,
    select_by_mode,
    setting_results,
)

__all__ = [
    "ADAPTED_ROW",
    "CONDITIONAL",
    "ConditionalChoices",
    "ConditionalFamily",
    "ConditionalFit",
    "behaviour_vectors",
    "condition_designs",
    "condition_layers",
    "condition_probes",
    "conditional_settings",
]

#: The pooling name of vectors read at the answer token (not a prompt pooling).
ANSWER = "answer"
LABEL = "conditional steering, probe-gated"
#: The lead-table row of the steered scores adapted to the held-out inputs (label-free).
ADAPTED_ROW = "conditional_adapted"
#: Its controls' columns in the per-CWE table, by role.
CONTROLS = MappingProxyType({"gate_control": "random gate", "control": "random vector"})
ROWS = (
    RowSpec(
        "steered",
        "conditional",
        "conditional steering (probe-gated; setting chosen on val)",
        what="conditional steering",
        headline=True,
    ),
    RowSpec(
        "gate_control",
        "gate_control",
        "random gate: the same push gated by a random direction",
        control_of="conditional",
        claim="the probe's reading matters",
        what="the random gate",
    ),
    RowSpec(
        "control",
        "vector_control",
        "random behaviour vector of the same norm under the real gate",
        control_of="conditional",
        claim="the direction pushed matters",
        what="the random behaviour vector",
    ),
)


def condition_layers(config: ExperimentConfig, layer_sets: Sequence[tuple[int, ...]], num_layers: int) -> list[int]:
    """The layers the gating probes read: ``conditional.layers``, or each steered layer set's lowest layer."""
    configured = [layer for group in config.conditional.layers for layer in group]
    if configured:
        return resolve_layers(configured, num_layers, "conditional.layers (--condition-layers)")
    return sorted({min(group) for group in layer_sets})


def behaviour_key(name: str) -> str:
    """The vector key of a behaviour: ``answer@answer``, ``unembedding@answer``, ``mean_diff@last`` ..."""
    return method_key(name, ANSWER) if name in ("answer", "unembedding") else method_key(name, "last")


def behaviour_vectors(
    lm: LoadedModel,
    config: ExperimentConfig,
    acts: Activations,
    train_by_cwe: Mapping[str, Sequence[Sample]],
    layers: Sequence[int],
) -> dict[tuple[str, str], SteeringVector]:
    """The behaviour vectors of ``conditional.behaviours``, keyed ``(cwe, key)``. The label-free ones (``answer``,
    ``unembedding``) are one vector registered for every CWE and ``"any"``; a data-derived one is each CWE's own
    vector at the answer position (the same fit as the constant settings' vector of that method)."""
    by_id = {s.id: s for group in train_by_cwe.values() for s in group}
    train = [by_id[i] for i in acts.sample_ids]
    out: dict[tuple[str, str], SteeringVector] = {}
    for name in config.conditional.behaviours:
        key = behaviour_key(name)
        if name in ("answer", "unembedding"):
            if name == "answer":
                vec = answer_vector_from(lm, acts, train, layers)
            else:
                norms = acts.mean_norms("last")
                base = unembedding_vector(lm, layers, layer_norms={layer: norms[layer] for layer in layers})
                hidden = {layer: acts.get("last", layer) for layer in layers}
                sigmas = projection_sigmas(hidden, {layer: base.direction(layer) for layer in layers})
                vec = SteeringVector(dict(base.directions), dataclasses.replace(base.provenance, layer_sigmas=sigmas))
            out.update({(target, key): vec for target in [*train_by_cwe, POOLED]})
        else:
            out.update(fit_cwe_vectors(lm, acts, train_by_cwe, layers, methods=[name], poolings=["last"]))
    return out


def condition_designs(
    config: ExperimentConfig, layer_sets: Sequence[tuple[int, ...]], num_layers: int
) -> list[ProbeDesign]:
    """The gating probes' designs: ``conditional.designs`` if given (negative layers counted from the end), else
    one per pooling and condition layer (``conditional.probe`` at ``conditional.pooling`` x
    :func:`condition_layers`)."""
    c = config.conditional
    if c.designs:
        where = "conditional.designs"
        return [
            dataclasses.replace(d, layers=tuple(resolve_layers(list(d.layers), num_layers, where))) for d in c.designs
        ]
    layers = condition_layers(config, layer_sets, num_layers)
    return [ProbeDesign((layer,), (pooling,), c.probe) for pooling in c.pooling for layer in layers]


def condition_probes(
    config: ExperimentConfig,
    train: tuple[Activations, Sequence[Sample]],
    val: tuple[Activations, Sequence[Sample]],
    designs: Sequence[ProbeDesign],
) -> dict[tuple[str, str], Probe]:
    """The gating probes, keyed ``(target, key)``: ``"any"`` for a probe pooled over every CWE, else the CWE; each
    with its random-gate control ``random:<key>`` (a random direction of the same norm, thresholded on val by the
    same rule). Fitted on train, thresholded on val."""
    c = config.conditional
    (train_acts, train_samples), (val_acts, val_samples) = train, val
    groups: dict[str, tuple[list[int], list[int]]] = {}
    if c.scope == "pooled":
        groups[POOLED] = (list(range(len(train_samples))), list(range(len(val_samples))))
    else:
        for cwe in dict.fromkeys(s.cwe for s in train_samples):
            groups[cwe] = (
                [i for i, s in enumerate(train_samples) if s.cwe == cwe],
                [i for i, s in enumerate(val_samples) if s.cwe == cwe],
            )
    out: dict[tuple[str, str], Probe] = {}
    for design in designs:
        tr_all = probe_data(design, train_acts, train_samples, train_acts.code_tokens, "train")
        va_all = probe_data(design, val_acts, val_samples, val_acts.code_tokens, "val")
        for target, (tr, va) in groups.items():
            tr_data, va_data = tr_all.rows(tr), va_all.rows(va)
            if len(np.unique(tr_data.y)) < 2:
                continue
            probe = fit_probe(design, tr_data, va_data, seed=config.data.seed, meta={"target": target})
            seed = config.steering.control_seed + design.deepest
            out[(target, probe.key)] = probe
            out[(target, RANDOM_PROBE + probe.key)] = rethreshold(probe.random_like(seed), va_data)
    return out


def conditional_settings(
    config: ExperimentConfig, layer_sets: Sequence[tuple[int, ...]], designs: Sequence[ProbeDesign]
) -> list[Setting]:
    """Every gated candidate: behaviour x steered layer set x gating probe (every layer it reads at or below the
    set) x gate x positions x strength."""
    c = config.conditional
    out: list[Setting] = []
    for name in c.behaviours:
        method, pooling = behaviour_key(name).split("@", 1)
        for layers in layer_sets:
            for design in designs:
                if design.deepest > min(layers):
                    continue
                for gate in c.gates:
                    for positions in c.positions:
                        for unit, strength in c.strengths:
                            if strength:
                                out.append(
                                    Setting(method, pooling, layers, unit, strength, positions, gate, design.key)
                                )
    return out


@dataclass(frozen=True)
class ConditionalFit:
    """The behaviour vectors, the gating probes (with their random-gate controls), the gated settings and the
    roles each is scored in on val (with its controls unless ``run.controls_on_val`` is off)."""

    settings: tuple[Setting, ...]
    vectors: Mapping[tuple[str, str], SteeringVector]
    probes: Mapping[tuple[str, str], Probe]
    roles: tuple[str, ...] = ("steered", "control", "gate_control")
    control_seed: int = 1234
    info: Mapping[str, VectorInfo] = field(default_factory=dict)


@dataclass(frozen=True)
class ConditionalChoices(SettingChoices):
    """The gated choices, the detector to save (None when no candidate can run without a CWE) and the fewest
    held-out inputs the adapted steered row adapts to."""

    detector: SavedDetector | None = None
    min_adapt: int = MIN_ADAPT


def adapted_entry(
    chosen: SettingChoices, mode: str, steered: LeadEntry, min_adapt: int
) -> tuple[LeadEntry | None, str | None]:
    """The ``conditional_adapted`` lead entry of *mode* (see the module docstring), or None with the reason in
    words where it cannot adapt (None, None where there is nothing to adapt: per-CWE choices, or the baseline won).
    """
    by_target = chosen.choices.get(mode) or {}
    one = next(iter(by_target.values()), None)
    if not chosen.every_cwe or one is None or one.chosen != "steered" or one.best is None:
        return None, None
    probe = gate_probe(chosen.probes, one.target, str(one.best.probe))
    share = probe.adaptation.share if probe is not None and probe.adaptation is not None else None
    records = list(steered.records)
    if share is None:
        return None, f"{mode} mode: the steered model is not adapted: its gate probe has no calibration share"
    if any(r.score is None for r in records):
        return None, None
    if len(records) < max(1, min_adapt):
        return None, f"{mode} mode: the steered model is not adapted: {len(records)} inputs (at least {min_adapt})"
    return (
        LeadEntry(
            ADAPTED_ROW,
            "conditional steering adapted to the held-out inputs (its threshold flags the gate probe's "
            f"calibration share, {share:.0%}, of them; no label read)",
            flag_top_share(records, share),
            what="the adapted steered model",
            note="the steered scores with a threshold re-estimated from the unlabelled inputs",
        ),
        None,
    )


def _detector(
    config: ExperimentConfig,
    data: PreparedData | None,
    conds: Sequence[Condition],
    records: Mapping[str, Sequence[DetectionRecord]],
    vectors: Mapping[tuple[str, str], SteeringVector],
    probes: Mapping[tuple[str, str], Probe],
    aggregation: str,
) -> SavedDetector | None:
    """The gated setting with the best balanced accuracy on val over every CWE together (ties to the smaller
    |strength|), among those a scanner can apply without knowing the CWE (a label-free behaviour vector and a
    probe pooled over every CWE); None if there is none. Its header (model, creation time) comes at save; its
    validation record says how the run added up a sample's pieces (``scan`` and ``detect`` use it)."""
    candidates = [
        c
        for c in conds
        if c.role == "steered"
        and c.setting is not None
        and c.setting.gated
        and (POOLED, c.setting.method_key) in vectors
        and (POOLED, str(c.setting.probe)) in probes
    ]
    if not candidates or data is None:
        return None
    best = select_per_cwe(candidates, lambda c, _t: balanced_accuracy(records[c.key]), [POOLED])[POOLED]
    setting = best.setting
    assert setting is not None and setting.probe is not None
    base = records[Condition("baseline", best.mode, "val").key]
    training = {
        "source": data.source,
        "cwes": data.cwes,
        "n_train": len(data.samples("train")),
        "n_val": len(data.samples("val")),
        "data_hashes": {n: dataset_hash(part) for n, part in data.splits.items()},
    }
    validation = {
        "mode": best.mode,
        "setting": setting.label(),
        "balanced_accuracy": balanced_accuracy(records[best.key]),
        "baseline_balanced_accuracy": balanced_accuracy(base),
        "chosen_by": "balanced accuracy over every CWE's val samples, ties to the smaller |strength|",
        "aggregation": aggregation,
    }
    return SavedDetector(
        vectors[(POOLED, setting.method_key)],
        probes[(POOLED, setting.probe)],
        setting.gate,
        setting.strength,
        setting.layers,
        setting.positions,
        setting.unit,
        config.conditional.band,
        DEFAULT_TEMPLATE,
        {"training": training, "validation": validation},
    )


@dataclass(frozen=True)
class ConditionalFamily:
    """Conditional (probe-gated) steering (see the module docstring). *detector_dir*: where in the run folder
    its saved detector goes."""

    name: str = "conditional"
    label: str = LABEL
    rows: tuple[RowSpec, ...] = ROWS
    detector_dir: str = "detector"

    def enabled(self, config: ExperimentConfig) -> bool:
        return config.conditional.enabled

    def needs(
        self, config: ExperimentConfig, layer_sets: Sequence[tuple[int, ...]], num_layers: int
    ) -> ActivationNeeds:
        layers = {layer for group in layer_sets for layer in group}
        answer = ANSWER_POOLINGS if "answer" in config.conditional.behaviours else ()
        designs = condition_designs(config, layer_sets, num_layers)
        reads = [read for design in designs for read in design.reads]
        return ActivationNeeds(
            tuple(sorted({*layers, *(layer for layer, _ in reads)})),
            tuple(dict.fromkeys(["last", *(pooling for _, pooling in reads)])),
            answer,
        )

    def fit(self, ctx: FitContext) -> ConditionalFit:
        cfg, data = ctx.config, ctx.data
        acts, train = ctx.acts("train"), data.samples("train")
        vectors = behaviour_vectors(ctx.lm, cfg, acts, data.by_cwe("train"), ctx.layers)
        designs = condition_designs(cfg, ctx.layer_sets, ctx.lm.num_layers)
        probes = condition_probes(cfg, (acts, train), (ctx.acts("val"), data.pieces("val")), designs)
        fitted = {k for _, k in probes}
        settings = conditional_settings(cfg, ctx.layer_sets, sorted((d for d in designs if d.key in fitted), key=_key))
        pooled = {k: v for k, v in vectors.items() if k[0] == POOLED}
        info = {k: VectorInfo.from_json(v) for k, v in save_vectors(pooled, ctx.out / "behaviours").items()}
        roles = ("steered", "control", "gate_control") if cfg.run.controls_on_val else ("steered",)
        return ConditionalFit(tuple(settings), vectors, probes, roles, cfg.steering.control_seed, info)

    def artefacts(self, fitted: ConditionalFit) -> Artefacts:
        return Artefacts(fitted.vectors, fitted.probes)

    def val_conditions(self, fitted: ConditionalFit, mode: str) -> list[Condition]:
        seed = fitted.control_seed
        return [s.condition(role, mode, "val", control_seed=seed) for s in fitted.settings for role in fitted.roles]

    def select(self, fitted: ConditionalFit, val: ValContext) -> ConditionalChoices:
        choices = select_by_mode(val, pooled=False, scope=val.config.conditional.select)
        first = val.config.selecting_modes()[0]  # the detector is chosen on the first selecting mode's val records
        art = val.artefacts
        detector = _detector(
            val.config, val.data, val.conditions[first], val.records, art.vectors, art.probes, val.aggregation
        )
        return ConditionalChoices(choices, fitted.vectors, fitted.probes, detector, val.config.conditional.min_adapt)

    def save(self, chosen: ConditionalChoices, run: Path, info: JsonObject) -> Saved:
        saved = save_choices(chosen, run)
        if chosen.detector is None:
            return saved
        detector = dataclasses.replace(chosen.detector, info={**info, **chosen.detector.info})
        detector.save(run / self.detector_dir)
        summary = SavedDetectorInfo.from_json(
            {"folder": self.detector_dir, "digest": detector.digest, **detector.info["validation"]}
        )
        return dataclasses.replace(saved, detector=summary)

    def restore(self, entry: JsonObject, run: Path, lm: LoadedModel, allow_mismatch: bool) -> ConditionalChoices:
        restored = restore_choices(entry, run, lm, allow_mismatch)
        return ConditionalChoices(restored.choices, restored.vectors, restored.probes)

    def held_out_conditions(self, chosen: SettingChoices, held: HeldOut) -> list[Condition]:
        return conditions_of(chosen, held, cross_modes=())

    def apply(self, chosen: SettingChoices, held: HeldOut) -> Applied:
        applied = apply_settings(chosen, held, self.rows, cross_modes=())
        min_adapt = chosen.min_adapt if isinstance(chosen, ConditionalChoices) else MIN_ADAPT
        lead, notes = dict(applied.lead), list(applied.notes)
        headline = next(spec.name for spec in self.rows if spec.headline)
        for mode, entries in applied.lead.items():
            steered = next((e for e in entries if e.name == headline), None)
            if steered is None:
                continue
            entry, why = adapted_entry(chosen, mode, steered, min_adapt)
            lead[mode] = [*entries, entry] if entry is not None else entries
            notes += [why] if why else []
        return dataclasses.replace(applied, lead=lead, notes=tuple(notes))

    def results(
        self,
        fitted: ConditionalFit | None,
        chosen: SettingChoices | None,
        applied: Applied | None,
        saved: Saved | None,
    ) -> FamilyResults:
        detector = saved.detector if saved else None
        if fitted is None:
            return setting_results(self.name, self.label, CONTROLS, chosen, applied, saved=detector)
        probes = {f"{t}|{k}": GateProbeInfo(p.threshold, p.spread, dict(p.meta)) for (t, k), p in fitted.probes.items()}
        return setting_results(
            self.name, self.label, CONTROLS, chosen, applied, vectors=fitted.info, probes=probes, saved=detector
        )


def _key(design: ProbeDesign) -> str:
    return design.key


CONDITIONAL = ConditionalFamily()
