"""Conditional steering in the protocol: behaviour vectors, gating probes, gated settings, and the detectors that
make its claim falsifiable (the probe alone, the calibrated baseline, prompting baselines).

Everything here is fitted on train and thresholded or chosen on val; the test split is only scored afterwards.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..config import ExperimentConfig
from ..data.sample import Sample, dataset_hash
from ..detection.condition import fit_condition_probe, rethreshold
from ..detection.detector import SavedDetector
from ..detection.probe import choose_threshold
from ..detection.records import DetectionRecord
from ..lm.activations import Activations
from ..lm.model import LoadedModel, resolve_layers
from ..lm.prompts import DEFAULT_TEMPLATE, TEMPLATES, PromptTemplate
from ..steering.behaviour import answer_vector_from, projection_sigmas
from ..steering.gate import LinearProbe
from ..steering.vectors import SteeringVector, unembedding_vector
from .fit import fit_cwe_vectors, method_key
from .grid import POOLED, RANDOM_PROBE, Condition, Setting
from .prepare import PreparedData
from .select import balanced_accuracy, select_per_cwe

__all__ = [
    "behaviour_vectors",
    "build_detector",
    "calibrated_records",
    "condition_layers",
    "condition_probes",
    "conditional_settings",
    "probe_records",
    "prompt_templates",
    "template_conditions",
]

#: The pooling name of vectors read at the answer token (not a prompt pooling).
ANSWER = "answer"


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
    *,
    progress: bool = True,
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


def condition_probes(
    config: ExperimentConfig,
    train: tuple[Activations, Sequence[Sample]],
    val: tuple[Activations, Sequence[Sample]],
    layers: Sequence[int],
) -> dict[tuple[str, str], LinearProbe]:
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
    out: dict[tuple[str, str], LinearProbe] = {}
    for target, (tr, va) in groups.items():
        ty = torch.tensor([train_samples[i].y for i in tr])
        vy = torch.tensor([val_samples[i].y for i in va])
        if len(torch.unique(ty)) < 2:
            continue
        for pooling in c.pooling:
            for layer in layers:
                tx = train_acts.get(pooling, layer)[tr]
                vx = val_acts.get(pooling, layer)[va]
                probe = fit_condition_probe(
                    c.probe,
                    tx,
                    ty,
                    vx,
                    vy,
                    layer=layer,
                    pooling=pooling,
                    seed=config.data.seed,
                    meta={"target": target},
                )
                seed = config.steering.control_seed + layer
                out[(target, probe.key)] = probe
                out[(target, RANDOM_PROBE + probe.key)] = rethreshold(probe.random_like(seed), vx, vy)
    return out


def conditional_settings(
    config: ExperimentConfig, layer_sets: Sequence[tuple[int, ...]], probe_keys: Sequence[str]
) -> list[Setting]:
    """Every gated candidate: behaviour x steered layer set x gating probe (at or below the set) x gate x positions
    x strength."""
    c = config.conditional
    out: list[Setting] = []
    for name in c.behaviours:
        method, pooling = behaviour_key(name).split("@", 1)
        for layers in layer_sets:
            for key in probe_keys:
                if int(key.rsplit("@L", 1)[1]) > min(layers):
                    continue
                for gate in c.gates:
                    for positions in c.positions:
                        for unit, strength in c.strengths:
                            if strength:
                                out.append(Setting(method, pooling, layers, unit, strength, positions, gate, key))
    return out


def probe_records(probe: LinearProbe, acts: Activations, samples: Sequence[Sample]) -> list[DetectionRecord]:
    """The probe alone as a detector: its own verdict per sample (score = the probe's score)."""
    scores = probe.scores(acts.get(probe.pooling, probe.layer))
    return [
        DetectionRecord(
            s.id, s.cwe, s.pair_id, s.y, "vulnerable" if float(x) > probe.threshold else "secure", score=float(x)
        )
        for s, x in zip(samples, scores, strict=True)
    ]


def calibrated_records(
    val: Sequence[DetectionRecord], test: Sequence[DetectionRecord], cwes: Sequence[str]
) -> tuple[list[DetectionRecord], dict[str, float]]:
    """The calibrated baseline: per CWE, the unsteered answer margin with the threshold that maximises balanced
    accuracy on val (what a constant shift of the answer alone can give). A CWE without val samples keeps the
    model's own threshold (margin 0), so every test sample has a record. Returns the test records and the
    thresholds.

    >>> calibrated_records([], [], ["CWE-89"])
    ([], {'CWE-89': 0.0})
    """
    thresholds: dict[str, float] = {}
    out: list[DetectionRecord] = []
    for cwe in cwes:
        v = [r for r in val if r.cwe == cwe and r.margin is not None]
        margins = np.array([r.margin for r in v], dtype=np.float64)
        thresholds[cwe] = choose_threshold(margins, [r.y_true for r in v], reference=0.0) if v else 0.0
        for r in test:
            if r.cwe == cwe and r.margin is not None:
                verdict = "vulnerable" if r.margin > thresholds[cwe] else "secure"
                out.append(
                    DetectionRecord(r.sample_id, r.cwe, r.pair_id, r.y_true, verdict, score=r.score, margin=r.margin)
                )
    return out, thresholds


def prompt_templates(config: ExperimentConfig, train: Sequence[Sample], base: PromptTemplate) -> dict[str, Any]:
    """The prompting baselines' templates by name (``one_shot`` shows the first training pair, vulnerable then
    fixed, with the answers the prompt asks for)."""
    out: dict[str, PromptTemplate] = {"default": base}
    for name in config.baselines.templates:
        if name == "one_shot":
            pair = _first_pair(train)
            if pair is None:
                continue
            vuln, fixed = pair
            out[name] = base.with_shots(
                (vuln.code, vuln.language, f"Answer: vulnerable\nWeakness: {vuln.cwe}"),
                (fixed.code, fixed.language, "Answer: secure\nWeakness: none"),
            )
        else:
            out[name] = TEMPLATES[name]
    return out


def _first_pair(samples: Sequence[Sample]) -> tuple[Sample, Sample] | None:
    by_pair: dict[str, list[Sample]] = {}
    for s in samples:
        by_pair.setdefault(s.pair_id or s.id, []).append(s)
    for key in sorted(by_pair):
        group = by_pair[key]
        vuln = next((s for s in group if s.is_vulnerable), None)
        fixed = next((s for s in group if not s.is_vulnerable), None)
        if vuln is not None and fixed is not None:
            return vuln, fixed
    return None


def template_conditions(templates: Sequence[str], mode: str, split: str) -> list[Condition]:
    """The baseline under each prompting baseline's template (the default template's baseline is the baseline)."""
    return [Condition("baseline", mode, split, template=name) for name in templates if name != "default"]


def build_detector(
    config: ExperimentConfig,
    data: PreparedData,
    conds: Sequence[Condition],
    records: Mapping[str, Sequence[DetectionRecord]],
    vectors: Mapping[tuple[str, str], SteeringVector],
    probes: Mapping[tuple[str, str], LinearProbe],
    info: Mapping[str, Any],
) -> SavedDetector | None:
    """The gated setting with the best balanced accuracy on val over every CWE together (ties to the smaller
    |strength|), among those a scanner can apply without knowing the CWE (a label-free behaviour vector and a
    probe pooled over every CWE), as a :class:`~vulnsteer.detection.detector.SavedDetector`; None if there is none."""
    candidates = [
        c
        for c in conds
        if c.kind == "steered"
        and c.template == "default"
        and c.setting is not None
        and c.setting.gated
        and (POOLED, c.setting.method_key) in vectors
        and (POOLED, str(c.setting.probe)) in probes
    ]
    if not candidates:
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
        {**info, "training": training, "validation": validation},
    )
