"""The steered model on the transfer protocol's folds: the probe chosen for a fold gates a push of the behaviour
vector fitted on the fold's training datasets, and the model answers (logit mode) every sample of the left-out
dataset, under every gate and strength (with a random gate as the control of the outer folds' rows).

Every fold that leaves a dataset out (its outer fold, and the inner folds of every other outer fold) is scored in
one pass over that dataset: the prompt minus its last token runs once, unsteered, and every (fold, gate, strength)
row continues it for one token (:func:`~vulnsteer.detection.engine.detect_variants_modes`), so a dataset costs one
forward pass whatever the grid. Work is saved per chunk of samples (``steered.jsonl``): a rerun skips finished
chunks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch

from ...config import ExperimentConfig
from ...detection.engine import detect_variants_modes
from ...detection.probe import ProbeData, rethreshold
from ...detection.records import DetectionRecord
from ...io import append_jsonl, read_jsonl
from ...lm.activations import ANSWER_POOLINGS, Activations
from ...lm.model import LoadedModel
from ...progress import Progress
from ...stats.shares import nearest_share
from ...steering.behaviour import answer_vector_from
from ...steering.gate import Gate
from ...steering.hooks import PositionMode, SteeringSpec, StrengthUnit
from ...steering.probe import AdaptationError, Probe
from ...steering.vectors import SteeringVector
from .data import FIT_SPLITS, TransferDataset
from .folds import Fold

__all__ = [
    "CHUNK",
    "Steered",
    "SteeredSetting",
    "SteeredStore",
    "fold_vector",
    "matched_strength",
    "score_steered",
    "steered_layers",
    "steered_settings",
    "steered_variants",
]

#: Samples per saved chunk (a kill loses at most one).
CHUNK = 32


def steered_layers(config: ExperimentConfig, deepest: int) -> tuple[int, ...]:
    """Where a push gated by a probe whose deepest layer is *deepest* is applied: the first of ``steering.layers``
    at or above it, else that layer itself (the probe must read unsteered states)."""
    for group in config.steering.layers:
        if group and min(group) >= deepest and min(group) >= 0:
            return tuple(sorted(group))
    return (deepest,)


def fold_vector(
    lm: LoadedModel, fold: Fold, data: Mapping[str, TransferDataset], layers: Sequence[int]
) -> SteeringVector:
    """The answer vector (the hidden-state contrast of continuing with " vulnerable" vs " secure"; no labels) over
    the fit splits of *fold*'s training datasets."""
    parts: list[Activations] = []
    samples = []
    for name in fold.training:
        ds = data[name]
        rows = ds.indices(FIT_SPLITS)
        parts.append(ds.acts("default").subset(rows))  # (the steered model asks the default question)
        samples += [ds.samples[i] for i in rows]
    joined = Activations(
        parts[0].layers,
        [sid for p in parts for sid in p.sample_ids],
        {pool: torch.cat([p.get(pool) for p in parts]) for pool in ANSWER_POOLINGS},
    )
    return answer_vector_from(lm, joined, samples, list(layers))


@dataclass(frozen=True)
class SteeredSetting:
    """What the inner folds choose for the steered model: the gate, the strength (and its unit), and whether the
    gate's probe is adapted to the inputs it gates (its centre re-estimated from their unlabelled states).

    >>> SteeredSetting("linear", "sigma", 4.0).key, SteeredSetting("linear", "sigma", 4.0, adapted=True).key
    ('linear|sigma:4', 'linear|sigma:4|adapted')
    """

    gate: str
    unit: str
    strength: float
    adapted: bool = False

    @property
    def key(self) -> str:
        """Its name in ``results.json`` and the report: ``linear|sigma:4`` (``...|adapted`` when adapted)."""
        return f"{self.gate}|{self.unit}:{self.strength:g}" + ("|adapted" if self.adapted else "")


def steered_settings(config: ExperimentConfig) -> list[SteeredSetting]:
    """Every gate x non-zero strength x adaptation of ``[conditional]`` and ``transfer.gate_adapted``, in order."""
    c = config.conditional
    return list(
        dict.fromkeys(
            SteeredSetting(gate, unit, strength, adapted)
            for adapted in config.transfer.gate_adapted
            for gate in c.gates
            for unit, strength in c.strengths
            if strength
        )
    )


@dataclass(frozen=True)
class Steered:
    """One steered row of a fold: the fold, the setting, and whether it is the random-gate control."""

    fold: str
    setting: SteeredSetting
    control: bool = False

    @property
    def name(self) -> str:
        """The row's name in ``steered.jsonl``: ``sven|linear|sigma:4`` (``...|random`` for the control)."""
        return f"{self.fold}|{self.setting.key}" + ("|random" if self.control else "")


def steered_variants(
    config: ExperimentConfig,
    fold: Fold,
    probe: Probe,
    vector: SteeringVector,
    val: Any,
    target: ProbeData | None,
) -> dict[Steered, SteeringSpec]:
    """Every setting of :func:`steered_settings` for one fold (*probe* gating *vector*), and for an outer fold the
    same under a random gate (a random direction of the probe's norm, thresholded and calibrated on the same val
    data *val*, seeded by ``steering.control_seed``). An adapted setting's gate (the random one's too) is the
    probe adapted to *target*, the states of the fold's left-out inputs (no labels read; needed only when
    ``transfer.gate_adapted`` holds true); below ``conditional.min_adapt`` inputs it has no row."""
    c = config.conditional
    layers = tuple(vector.layers)
    random = rethreshold(probe.random_like(config.steering.control_seed + probe.design.deepest), val)
    out: dict[Steered, SteeringSpec] = {}
    for control in (False, True) if not fold.is_inner else (False,):
        fitted = random if control else probe
        adapted = None if target is None else _adapted(fitted, target, c.min_adapt)
        for setting in steered_settings(config):
            gated = adapted if setting.adapted else fitted
            if gated is None:
                continue
            out[Steered(fold.key, setting, control)] = SteeringSpec(
                vector,
                setting.strength,
                layers=layers,
                positions=cast(PositionMode, "last"),
                unit=cast(StrengthUnit, setting.unit),
                gate=Gate(setting.gate, gated, c.band),
                source="conditional.strengths",
            )
    return out


def matched_strength(
    rows: Mapping[str, Sequence[DetectionRecord]],
    fold: Fold,
    setting: SteeredSetting,
    share: float,
    settings: Sequence[SteeredSetting],
    *,
    control: bool = False,
) -> tuple[SteeredSetting, float] | None:
    """*setting*'s gate and adaptation at the strength (of those in *settings*, same unit) whose answer on *fold*'s
    left-out inputs (*rows*: that dataset's steered rows by name) says "vulnerable" for the share nearest *share*
    (ties: the weaker push), and that share; None with fewer than two strengths to choose from. It reads no label:
    the verdict's share is matched to one assumed (the training datasets'), as the adapted probe's is. *control*:
    the same rule on the random gate's rows."""
    found: dict[SteeredSetting, float] = {}
    for other in sorted(settings, key=lambda s: s.strength):
        records = rows.get(Steered(fold.key, other, control).name)
        if records and (other.gate, other.unit, other.adapted) == (setting.gate, setting.unit, setting.adapted):
            found[other] = sum(r.y_pred == 1 for r in records) / len(records)
    if len(found) < 2:
        return None
    best = nearest_share(found, share)
    return best, found[best]


def _adapted(probe: Probe, target: ProbeData, min_count: int) -> Probe | None:
    """*probe* adapted to the unlabelled inputs *target* (None where there are too few)."""
    try:
        return probe.adapted(probe.score_matrix(target.x, target.lengths, target.codes), min_count)
    except AdaptationError:
        return None


def _digest(variants: Mapping[str, SteeringSpec]) -> str:
    """What decides the rows' numbers: names, strengths, gates, probes and vectors."""
    h = hashlib.sha256()
    for name, spec in sorted(variants.items()):
        h.update(name.encode())
        h.update(repr((spec.strength, spec.layers, spec.unit)).encode())
        if spec.gate is not None:
            h.update(repr(sorted(spec.gate.probe.header().items(), key=str)).encode())
            h.update(spec.gate.probe.fingerprint())
        for layer in spec.layers:
            h.update(spec.vector.direction(layer).numpy().tobytes())
    return h.hexdigest()[:16]


class SteeredStore:
    """``steered.jsonl``: per dataset and chunk of samples, every row's answer margin, push and gate score."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._done: dict[tuple[str, int, str], dict[str, list[list[Any]]]] = {}
        for doc in read_jsonl(path):
            self._done[(doc["dataset"], int(doc["chunk"]), doc["digest"])] = doc["rows"]

    def get(self, dataset: str, chunk: int, digest: str) -> dict[str, list[list[Any]]] | None:
        return self._done.get((dataset, chunk, digest))

    def add(self, dataset: str, chunk: int, digest: str, rows: dict[str, list[list[Any]]]) -> None:
        append_jsonl(self.path, {"dataset": dataset, "chunk": chunk, "digest": digest, "rows": rows})
        self._done[(dataset, chunk, digest)] = rows


def score_steered(
    lm: LoadedModel,
    target: TransferDataset,
    variants: Mapping[str, SteeringSpec],
    store: SteeredStore,
    *,
    batch_size: int,
    progress: bool = True,
) -> dict[str, list[DetectionRecord]]:
    """Every row of *variants* (and the unsteered model, ``baseline``) on every sample of *target*, in logit mode;
    finished chunks come from *store*."""
    specs: dict[str, list[SteeringSpec]] = {"baseline": [], **{k: [v] for k, v in variants.items()}}
    digest = _digest(variants)
    samples = list(target.samples)
    out: dict[str, list[DetectionRecord]] = {name: [] for name in specs}
    chunks = range(0, len(samples), CHUNK)
    with Progress(len(samples), f"steered {target.name}", unit="sample", enabled=progress) as bar:
        for k, start in enumerate(chunks):
            part = samples[start : start + CHUNK]
            rows = store.get(target.name, k, digest)
            if rows is None:
                found = detect_variants_modes(
                    lm, part, specs, modes=("logit",), batch_size=batch_size, max_rows=32, progress=False
                )["logit"]
                rows = {name: [[r.margin, r.push, r.gate_score] for r in recs] for name, recs in found.items()}
                store.add(target.name, k, digest, rows)
            for name in specs:
                out[name] += [
                    DetectionRecord(
                        s.id,
                        s.cwe,
                        s.pair_id,
                        s.y,
                        "vulnerable" if m >= 0 else "secure",
                        score=m,
                        margin=m,
                        push=push,
                        gate_score=g,
                    )
                    for s, (m, push, g) in zip(part, rows[name], strict=True)
                ]
            bar.update(len(part))
    return out
