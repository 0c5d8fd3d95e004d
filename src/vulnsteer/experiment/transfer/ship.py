"""The shipped detector, fitted from a finished transfer run (``vulnsteer detector fit-default RUN``).

From the run's ``results.json`` and resolved config it takes **the design with the best mean over the outer folds**
(the legitimate final choice: its nested leave-one-dataset-out numbers, the run's ``probe`` rows, are the estimate
of how well that way of choosing transfers), reads every dataset's activations through the same activation cache
(same model, data and prompt: nothing is extracted again), and fits:

1. **the probe** on every dataset (their ``train`` and ``test`` splits, one part each), as a fold's probe is fitted;
2. **its calibration on out-of-dataset scores**: on every outer fold, the design fitted on the other datasets
   scores the left-out one; each score is standardised by its fold probe's own training scores (mean, standard
   deviation), and one Platt scaling is fitted on all folds' standardised scores together, each dataset weighing
   the same. Applied to the shipped probe's scores standardised by its own training scores. Not on in-distribution
   val, whose scores sit elsewhere;
3. **its threshold** (a probability): the one whose flagged share on every left-out dataset is nearest its
   vulnerable share (the largest gap over the folds made smallest). Measured per fold twice: with that threshold
   (it read every fold's vulnerable share) and nested (calibration and threshold chosen on the other folds only);
4. **its adaptation** the same way on scores centred on each left-out dataset's mean (no label is read), with
   those scores' vulnerable share and class-mean separation (each dataset weighing the same). Adapted, the
   detector flags that share of the inputs it adapts to (measured so per fold), unless a prevalence is stated,
   which corrects the centre (by the separation) and the calibration.

Its provenance (:class:`~vulnsteer.detection.probe_detector.ProbeDetector`'s ``detector.json``) holds the model
identity, the design and how it was chosen, each dataset's source, hash, size and licence, the run's
leave-one-dataset-out table (every detector and the length-only control, per fold), these per-fold measurements,
the date and the vulnsteer version.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..._version import __version__
from ...config import ExperimentConfig, load_config
from ...config.design import ProbeDesign
from ...detection.probe import ProbeData, class_separation, fit_probe, platt
from ...detection.probe_detector import ProbeDetector
from ...lm.activation_cache import ActivationCache
from ...lm.model import LoadedModel, load_model
from ...lm.prompts import PROBE_PROMPTS
from ...stats.compare import metrics_block
from ...stats.metrics import Prediction
from ...stats.shares import logit, share_threshold, top_share_threshold
from ...steering.probe import Adaptation, Calibration, Probe
from ..rundir import RESOLVED_NAME
from ..tables import MetricBlock
from .data import FIT_SPLITS, TransferDataset, load_transfer_data, with_activations
from .designs import design_grid
from .folds import outer_folds
from .results import TransferResults

__all__ = ["FoldCalibration", "fit_default", "licence_of"]

#: The rows of a transfer run's table the shipped detector's provenance keeps (when the run has them).
TABLE_ROWS = ("probe", "adapted", "steered", "gate_control", "answer", "length", "probe_non_nested", "bag_of_tokens")


@dataclass(frozen=True)
class FoldCalibration:
    """One outer fold's out-of-dataset scores of the shipped design: standardised by the fold probe's own training
    scores (*z*), and centred on the left-out dataset's mean instead (*centred*, for the adaptation); the labels."""

    left_out: str
    z: np.ndarray
    centred: np.ndarray
    y: np.ndarray
    pairs: tuple[str | None, ...]

    @property
    def share(self) -> float:
        return float(self.y.mean())


def _pooled(folds: Sequence[FoldCalibration], centred: bool) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """The folds' scores (one array per fold), their labels and weights (each dataset weighing the same), pooled."""
    x = [f.centred if centred else f.z for f in folds]
    weights = np.concatenate([np.full(len(v), 1.0 / len(v)) for v in x])
    return x, np.concatenate([f.y for f in folds]), weights * len(weights) / weights.sum()


def _calibrate(folds: Sequence[FoldCalibration], centred: bool) -> tuple[Calibration, float]:
    """One Platt scaling of the folds' scores (each dataset weighing the same) and the share threshold on it."""
    x, y, weights = _pooled(folds, centred)
    calibration = platt(np.concatenate(x), y, 0.0, 1.0, weights=weights)
    probs = [calibration.probabilities(torch.as_tensor(v)).double().numpy() for v in x]
    threshold, _ = share_threshold(probs, [f.share for f in folds])
    return calibration, threshold


def _block(fold: FoldCalibration, probs: np.ndarray, threshold: float, seed: int, n_boot: int) -> dict[str, Any]:
    preds = [
        Prediction(f"{fold.left_out}:{i}", "any", pid, int(y), int(p > threshold), float(p))
        for i, (y, p, pid) in enumerate(zip(fold.y, probs, fold.pairs, strict=True))
    ]
    m = MetricBlock.from_json(metrics_block(preds, seed, n_boot))
    flagged = float((probs > threshold).mean())
    return {
        "auroc": m.auroc,
        "auroc_ci": None if m.auroc_ci is None else list(m.auroc_ci),
        "balanced_accuracy": m.balanced_accuracy,
        "pair_rank_accuracy": m.pair_rank_accuracy,
        "flagged_share": flagged,
        "vulnerable_share": fold.share,
        "share_gap": flagged - fold.share,
        "brier": float(np.mean((probs - fold.y) ** 2)),
        "threshold": threshold,
    }


def _judged_by(probs: np.ndarray, threshold: float, calibrated_on: Sequence[FoldCalibration], centred: bool) -> float:
    """The threshold a fold's *probs* are judged by: *threshold* as fitted; adapted (*centred*), the one flagging
    the highest share of them that the folds *calibrated_on* had vulnerable (each weighing the same), as the
    adapted detector flags its calibration data's share (:meth:`~vulnsteer.steering.probe.Probe.adapted`)."""
    return top_share_threshold(probs, float(np.mean([f.share for f in calibrated_on]))) if centred else threshold


def fold_measurements(folds: Sequence[FoldCalibration], centred: bool, seed: int, n_boot: int) -> dict[str, Any]:
    """Per fold: the shipped calibration and threshold (fitted on every fold), and nested (fitted on the others:
    what a dataset never seen gets); the mean and largest share gap of each. Adapted (*centred*), the threshold
    flags the calibration folds' share of each fold (:func:`_judged_by`)."""
    calibration, threshold = _calibrate(folds, centred)
    shipped, nested = {}, {}
    for k, fold in enumerate(folds):
        x = fold.centred if centred else fold.z
        probs = calibration.probabilities(torch.as_tensor(x)).double().numpy()
        shipped[fold.left_out] = _block(fold, probs, _judged_by(probs, threshold, folds, centred), seed, n_boot)
        others = [f for j, f in enumerate(folds) if j != k]
        c_other, t_other = _calibrate(others, centred)
        p_other = c_other.probabilities(torch.as_tensor(x)).double().numpy()
        nested[fold.left_out] = _block(fold, p_other, _judged_by(p_other, t_other, others, centred), seed, n_boot)

    def summary(rows: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
        gaps = [abs(r["share_gap"]) for r in rows.values()]
        aurocs = [r["auroc"] for r in rows.values() if r["auroc"] is not None]
        return {
            "mean_auroc": float(np.mean(aurocs)) if aurocs else math.nan,
            "mean_balanced_accuracy": float(np.mean([r["balanced_accuracy"] for r in rows.values()])),
            "mean_share_gap": float(np.mean(gaps)),
            "max_share_gap": float(np.max(gaps)),
        }

    pooled, y, weights = _pooled(folds, centred)
    share, separation = class_separation(np.concatenate(pooled), y, weights)
    return {
        "calibration": calibration.to_json(),
        "threshold": threshold,
        "share": share,
        "separation": separation,
        "folds": shipped,
        "nested": nested,
        "summary": summary(shipped),
        "nested_summary": summary(nested),
    }


def licence_of(source: str) -> dict[str, str]:
    """What a dataset's licence file says (its name, the licence it names, its SHA-256), or that the bundled corpus
    is vulnsteer's own.

    >>> licence_of("builtin")["licence"]
    "MIT (vulnsteer's own bundled corpus)"
    """
    import hashlib

    if source == "builtin":
        return {"licence": "MIT (vulnsteer's own bundled corpus)", "file": ""}
    root = Path(source)
    root = root if root.is_dir() else root.parent
    for name in ("LICENSE", "LICENSE.txt", "LICENSE.md", "LICENSE-NOTE.md", "COPYING"):
        path = root / name
        if path.is_file():
            text = path.read_text(encoding="utf-8", errors="replace")
            lowered = text.lower()
            licence = (
                "MIT" if "mit license" in lowered else "public domain" if "public domain" in lowered else f"see {name}"
            )
            return {"licence": licence, "file": str(path), "sha256": hashlib.sha256(text.encode()).hexdigest()}
    return {"licence": "unknown (no licence file found)", "file": ""}


def _table(results: TransferResults) -> dict[str, Any]:
    """The run's leave-one-dataset-out table: per left-out dataset, each kept row's metrics and what it applied."""
    out: dict[str, Any] = {}
    for fold in results.folds:
        rows = {}
        for row in fold.detectors:
            if row.name in TABLE_ROWS:
                m = row.metrics
                rows[row.name] = {
                    "label": row.label,
                    "chosen": row.chosen,
                    "auroc": m.auroc,
                    "auroc_ci": None if m.auroc_ci is None else list(m.auroc_ci),
                    "balanced_accuracy": m.balanced_accuracy,
                    "pair_rank_accuracy": m.pair_rank_accuracy,
                    "flagged_share": m.vulnerable_rate,
                }
        out[fold.left_out] = {"n": fold.n, "vulnerable_share": fold.vulnerable_share, "rows": rows}
    return out


def _fit_stats(probe: Probe, parts: Sequence[ProbeData]) -> tuple[float, float]:
    scores = torch.cat([probe.score_matrix(p.x, p.lengths, p.codes) for p in parts]).double()
    sd = float(scores.std(unbiased=False))
    return float(scores.mean()), sd if sd > 0 else 1.0


def _fit(design: ProbeDesign, data: Mapping[str, TransferDataset], names: Sequence[str], seed: int) -> Probe:
    train = [data[n].probe_data(design, FIT_SPLITS) for n in names]
    val = [data[n].probe_data(design, ("val",)) for n in names]
    return fit_probe(design, train, val, seed=seed, meta={"training": list(names)})


def fold_calibrations(
    design: ProbeDesign, data: Mapping[str, TransferDataset], names: Sequence[str], seed: int
) -> list[FoldCalibration]:
    """Every outer fold's out-of-dataset scores of *design*, standardised (see the module docstring)."""
    out = []
    for fold in outer_folds(names):
        probe = _fit(design, data, fold.training, seed)
        mu, sd = _fit_stats(probe, [data[n].probe_data(design, FIT_SPLITS) for n in fold.training])
        target = data[fold.left_out].probe_data(design)
        s = probe.score_matrix(target.x, target.lengths, target.codes).double().numpy()
        out.append(FoldCalibration(fold.left_out, (s - mu) / sd, (s - s.mean()) / sd, target.y, target.pairs))
    return out


def shipped_probe(
    design: ProbeDesign, data: Mapping[str, TransferDataset], names: Sequence[str], seed: int, folds: Any
) -> tuple[Probe, dict[str, Any]]:
    """*design* fitted on every dataset, with the out-of-dataset calibration, threshold and adaptation of
    *folds* (:func:`fold_measurements` for unadapted and adapted scores) in its own score units."""
    probe = _fit(design, data, names, seed)
    mu, sd = _fit_stats(probe, [data[n].probe_data(design, FIT_SPLITS) for n in names])
    plain, adapted = folds["plain"], folds["adapted"]
    a = Calibration.from_json(plain["calibration"])
    if a.slope <= 0:
        raise ValueError(
            f"the design {design.key} ranks left-out datasets the wrong way round (Platt slope {a.slope:.3g} on its "
            "out-of-dataset scores): nothing to ship"
        )
    calibration = Calibration(a.slope / sd, a.intercept - a.slope * mu / sd)
    threshold = mu + sd * (_logit(plain["threshold"]) - a.intercept) / a.slope
    b = Calibration.from_json(adapted["calibration"])
    separation = adapted.get("separation")
    adaptation = Adaptation(
        sd * (_logit(adapted["threshold"]) - b.intercept) / b.slope if b.slope > 0 else 0.0,
        sd,
        Calibration(b.slope / sd, b.intercept),
        share=adapted.get("share"),
        separation=None if separation is None else sd * separation,
    )
    shipped = dataclasses.replace(probe, threshold=threshold, spread=sd, calibration=calibration, adaptation=adaptation)
    return shipped, {"training_score_mean": mu, "training_score_sd": sd}


def _logit(p: float) -> float:
    """:func:`~vulnsteer.stats.shares.logit` of a chosen threshold probability, kept off 0 and 1."""
    return logit(min(max(p, 1e-9), 1 - 1e-9))


def fit_default(
    run_dir: str | Path,
    out: str | Path,
    *,
    cache_dir: str | Path | None = None,
    design_key: str | None = None,
    lm: LoadedModel | None = None,
    progress: bool = True,
) -> ProbeDetector:
    """The shipped detector from the finished transfer run *run_dir*, written to *out* (see the module docstring).
    *cache_dir*: the activation cache (default: the run's ``run.cache_dir``); *design_key*: another design of the
    run's grid than the one it chose (e.g. a shallower one that scans faster; its provenance says so)."""
    import json

    run = Path(run_dir)
    results_path = run / "results.json"
    if not results_path.is_file():
        raise FileNotFoundError(f"{results_path}: not found (is {run} a finished transfer run?)")
    results = TransferResults.from_json(json.loads(results_path.read_text(encoding="utf-8")), str(results_path))
    if results.status != "complete" or not results.non_nested_design:
        raise ValueError(f"{results_path}: the run has not finished (status {results.status!r})")
    if len(results.folds) != len(results.datasets):
        raise ValueError(
            f"{results_path}: the run left out {len(results.folds)} of its {len(results.datasets)} datasets "
            "(transfer.folds): the shipped detector's design is chosen over every outer fold"
        )
    config: ExperimentConfig = load_config(run / RESOLVED_NAME)
    if cache_dir is not None:
        config = dataclasses.replace(config, run=dataclasses.replace(config.run, cache_dir=str(cache_dir)))
    own = lm is None
    if lm is None:
        lm = load_model(config.model)
    try:
        grid = {d.key: d for d in design_grid(config, lm.num_layers)}
        key = design_key or results.non_nested_design
        design = grid.get(key)
        if design is None:
            known = "; ".join(grid)
            raise ValueError(f"{results_path}: design {key!r} is not in the run's grid (its designs: {known})")
        loaded = load_transfer_data(config, lm.tokenizer, progress)
        recorded = {d.name: d.hash for d in results.datasets}
        for ds in loaded:
            if recorded.get(ds.name) != ds.hash:
                raise ValueError(
                    f"{results_path}: dataset {ds.name!r} is not the data the run used (hash {ds.hash} vs "
                    f"{recorded.get(ds.name)}); the data or the code that prepares it changed"
                )
        cache = ActivationCache(config.run.cache_dir, enabled=config.run.cache)
        with_acts = with_activations(
            loaded,
            lm,
            cache,
            sorted(set(design.layers)),
            sorted(set(design.poolings)),
            config.detection.batch_size,
            progress,
            (design.template,),
        )
        data = {d.name: d for d in with_acts}
        names = [d.name for d in with_acts]
        seed, n_boot = config.data.seed, config.transfer.n_boot
        folds = fold_calibrations(design, data, names, seed)
        measured = {
            "plain": fold_measurements(folds, False, seed, n_boot),
            "adapted": fold_measurements(folds, True, seed, n_boot),
        }
        probe, scale = shipped_probe(design, data, names, seed, measured)
        info = {
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "vulnsteer_version": __version__,
            "design": {
                "key": design.key,
                "chosen": f"the design with the best mean {results.select_by} over the outer folds of the transfer "
                "run (non-nested); the run's nested 'probe' rows estimate how well choosing this way transfers"
                if design_key is None or design_key == results.non_nested_design
                else f"given by --design, not the run's choice ({results.non_nested_design}); its own mean over the "
                "outer folds is 'shipped' in the table below",
                "transfer_run": str(run.resolve()),
            },
            "datasets": [{**ds.to_json(), "licence": licence_of(ds.source)} for ds in results.datasets],
            "leave_one_dataset_out": _table(results),
            "out_of_dataset": measured,
            "score_scale": scale,
        }
        detector = ProbeDetector(probe, lm.identity, PROBE_PROMPTS[design.template], config.conditional.min_adapt, info)
        detector.save(out)
        return detector
    finally:
        if own:
            lm.close()
