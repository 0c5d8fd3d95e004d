"""Probe designs on the transfer protocol's folds: the grid, one design fitted on a fold's training datasets and
applied to its left-out one, the length-only control, and the store that makes a run resumable.

A design is fitted on the ``train`` and ``test`` splits of every training dataset (one part each: ``per_dataset``
standardises them apart), thresholded and calibrated on their ``val`` splits (the adapted threshold on each val
split centred on its own), then scores every sample of the left-out dataset.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...config import ExperimentConfig
from ...config.design import ProbeDesign
from ...detection.probe import choose_threshold, fit_probe
from ...io import append_jsonl, read_jsonl
from ...lm.model import resolve_layers
from ...stats.lexical import LexicalModel
from ...stats.metrics import Prediction, compute_metrics
from ...steering.probe import AdaptationError, Probe, log_lengths
from .data import FIT_SPLITS, TransferDataset
from .folds import Fold

__all__ = [
    "DesignStore",
    "FoldScores",
    "design_grid",
    "fit_on_fold",
    "length_scores",
    "metric_of",
    "predictions",
    "token_scores",
]


def design_grid(config: ExperimentConfig, num_layers: int) -> list[ProbeDesign]:
    """Every design of ``[transfer]``'s grid (layer sets x pooling sets x probe kinds x C x combine x pairs x length
    x per_dataset x tokens x tokens_C x templates; C only for logistic probes, combine only for several layers),
    then ``transfer.designs``; layers resolved (negative ones count from the end), duplicates dropped, in that
    order."""
    t = config.transfer
    out: list[ProbeDesign] = []
    for layers, poolings, kind, c, combine, pairs, length, per_dataset, tokens, tokens_c in itertools.product(
        t.layers, t.poolings, t.probes, t.C, t.combine, t.pairs, t.length, t.per_dataset, t.tokens, t.tokens_C
    ):
        resolved = tuple(resolve_layers(list(layers), num_layers, "transfer.layers"))
        if kind == "direction" and c != t.C[0]:
            continue
        design = ProbeDesign(resolved, poolings, kind, c, combine, pairs, length, per_dataset, tokens, tokens_c)
        out.extend(dataclasses.replace(design, template=template) for template in t.templates)
    for design in t.designs:
        resolved = tuple(resolve_layers(list(design.layers), num_layers, "transfer.designs"))
        out.append(dataclasses.replace(design, layers=resolved))
    return list(dict.fromkeys(out))


def fit_on_fold(design: ProbeDesign, fold: Fold, data: Mapping[str, TransferDataset], seed: int) -> Probe:
    """*design* fitted on *fold*'s training datasets (train + test splits, one part each), thresholded, calibrated
    and adapted on their val splits. The left-out dataset is not an argument of the fit."""
    train = [data[name].probe_data(design, FIT_SPLITS) for name in fold.training]
    val = [data[name].probe_data(design, ("val",)) for name in fold.training]
    return fit_probe(design, train, val, seed=seed, meta={"fold": fold.key, "training": list(fold.training)})


@dataclass(frozen=True)
class FoldScores:
    """A detector's scores on every sample of a fold's left-out dataset, its threshold (vulnerable iff score >
    threshold), and, for a probe, the adapted scores and threshold (None where it refused to adapt, with why).
    The adapted threshold here is the probe's own once adapted (the share of its val data flagged); the transfer
    report's adapted row flags the training datasets' share instead (``_Transfer.adapted_threshold``), so this
    one is kept for the record only."""

    fold: str
    name: str
    scores: tuple[float, ...]
    threshold: float
    adapted: tuple[float, ...] | None = None
    adapted_threshold: float | None = None
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "fold": self.fold,
            "name": self.name,
            "scores": list(self.scores),
            "threshold": self.threshold,
            "adapted": None if self.adapted is None else list(self.adapted),
            "adapted_threshold": self.adapted_threshold,
            "note": self.note,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> FoldScores:
        adapted = doc.get("adapted")
        return cls(
            str(doc["fold"]),
            str(doc["name"]),
            tuple(float(x) for x in doc["scores"]),
            float(doc["threshold"]),
            None if adapted is None else tuple(float(x) for x in adapted),
            None if doc.get("adapted_threshold") is None else float(doc["adapted_threshold"]),
            str(doc.get("note", "")),
        )


def probe_scores(probe: Probe, fold: Fold, target: TransferDataset, min_adapt: int) -> FoldScores:
    """*probe* applied unchanged to every sample of *target*, and adapted to them (their unlabelled states only)."""
    scores = probe.score_matrix(*_states(probe, target))
    try:
        adapted = probe.adapted(scores, min_adapt)
        # the adapted probe differs only in its bias (the inputs' mean score subtracted): no second pass
        a_scores: tuple[float, ...] | None = tuple((scores - (probe.bias - adapted.bias)).tolist())
        a_threshold: float | None = adapted.threshold
        note = ""
    except AdaptationError as exc:
        a_scores, a_threshold, note = None, None, str(exc)
    return FoldScores(fold.key, probe.key, tuple(scores.tolist()), probe.threshold, a_scores, a_threshold, note)


def _states(probe: Probe, target: TransferDataset) -> tuple[torch.Tensor, torch.Tensor | None, tuple[str, ...]]:
    data = target.probe_data(probe.design)
    return data.x, data.lengths, data.codes


def length_scores(fold: Fold, data: Mapping[str, TransferDataset]) -> FoldScores:
    """The length-only control: the log code-token count as the score, its sign chosen on the training datasets'
    fit splits (longer = more vulnerable or less), its threshold on their val splits."""

    def lengths(ds: TransferDataset, splits: Sequence[str] | None) -> tuple[np.ndarray, np.ndarray]:
        counts = ds.acts().code_tokens
        assert counts is not None
        rows = list(range(len(ds.samples))) if splits is None else ds.indices(splits)
        return log_lengths(counts[rows]).double().numpy(), np.array([ds.samples[i].y for i in rows])

    fit = [lengths(data[n], FIT_SPLITS) for n in fold.training]
    x, y = np.concatenate([f[0] for f in fit]), np.concatenate([f[1] for f in fit])
    auroc = _auroc(y, x)
    sign = 1.0 if auroc is None or auroc >= 0.5 else -1.0
    val = [lengths(data[n], ("val",)) for n in fold.training]
    vx, vy = np.concatenate([v[0] for v in val]), np.concatenate([v[1] for v in val])
    threshold = choose_threshold(sign * vx, vy) if len(np.unique(vy)) == 2 else float(np.median(sign * vx))
    target, _ = lengths(data[fold.left_out], None)
    note = f"longer code scores {'higher' if sign > 0 else 'lower'} (sign chosen on the training datasets)"
    return FoldScores(fold.key, "length", tuple((sign * target).tolist()), threshold, note=note)


def token_scores(fold: Fold, data: Mapping[str, TransferDataset]) -> FoldScores:
    """The bag-of-tokens control: a logistic regression (C=1) on TF-IDF of the code's tokens (uni- and bigrams
    seen in at least 3 samples, sublinear counts), no model at all; fitted on the training datasets' fit splits,
    thresholded on their val splits, applied to every sample of the left-out one. What the code's words alone
    tell, to set beside what the hidden states tell (:class:`~vulnsteer.stats.lexical.LexicalModel`, the term a
    design with ``tokens`` adds to its probe)."""

    def split(ds: TransferDataset, splits: Sequence[str]) -> tuple[list[str], np.ndarray]:
        rows = [ds.samples[i] for i in ds.indices(splits)]
        return [s.code for s in rows], np.array([s.y for s in rows])

    fit = [split(data[n], FIT_SPLITS) for n in fold.training]
    code, y = [c for f in fit for c in f[0]], np.concatenate([f[1] for f in fit])
    model = LexicalModel.fit(code, y)
    val = [split(data[n], ("val",)) for n in fold.training]
    v_code, vy = [c for v in val for c in v[0]], np.concatenate([v[1] for v in val])
    v_scores = model.scores(v_code)
    threshold = choose_threshold(v_scores, vy) if len(np.unique(vy)) == 2 else 0.0
    target = model.scores([s.code for s in data[fold.left_out].samples])
    return FoldScores(fold.key, "bag_of_tokens", tuple(float(x) for x in target), threshold)


def _auroc(y: np.ndarray, s: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s)) if len(np.unique(y)) == 2 else None


def predictions(target: TransferDataset, scores: Sequence[float], threshold: float) -> list[Prediction]:
    """Per sample of *target*: the verdict at *threshold* and the score."""
    return [
        Prediction(s.id, s.cwe, s.pair_id, s.y, int(x > threshold), float(x))
        for s, x in zip(target.samples, scores, strict=True)
    ]


def metric_of(found: FoldScores, target: TransferDataset, criterion: str) -> float:
    """The choosing criterion of a detector on a fold: AUROC of its scores, or balanced accuracy at its threshold
    (nan when undefined)."""
    metrics = compute_metrics(predictions(target, found.scores, found.threshold))
    value = metrics.auroc if criterion == "auroc" else metrics.balanced_accuracy
    return math.nan if value is None else float(value)


class DesignStore:
    """``designs.jsonl``: one line per (fold, design) scored, appended as each finishes (a rerun skips them)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._done: dict[tuple[str, str], FoldScores] = {}
        for doc in read_jsonl(path):
            found = FoldScores.from_json(doc)
            self._done[(found.fold, found.name)] = found

    def get(self, fold: str, name: str) -> FoldScores | None:
        return self._done.get((fold, name))

    def add(self, found: FoldScores) -> None:
        append_jsonl(self.path, found.to_json())
        self._done[(found.fold, found.name)] = found
