"""Detection metrics, pair-aware bootstrap confidence intervals and McNemar's test.

Pure functions over :class:`Prediction` records; the code that runs the model produces them.

Conventions:

* The positive class is *vulnerable* (``y_true == 1``).
* ``y_pred == -1`` means the answer was *uncertain* (no verdict could be read). It **never counts as
  correct**: for every confusion-matrix metric (accuracy, balanced accuracy, precision, recall/TPR,
  FPR, TNR, F1, MCC, pair accuracy) an uncertain prediction is replaced by the opposite of the truth,
  so it is a false negative on a vulnerable sample and a false positive on a secure one. Only
  ``vulnerable_rate`` (the share of answers that *say* vulnerable, ``y_pred == 1``) and
  ``uncertain_rate`` look at the raw predictions.
* A rate whose denominator is empty (TPR with no vulnerable samples, precision with no positive
  predictions, ...) is ``nan``; :meth:`Metrics.to_dict` writes it as ``None``.
* Balanced accuracy with a single class present is the recall of that class (scikit-learn's rule),
  MCC is 0.0 then and AUROC is ``None``.

Why pairs matter: a detector that always answers "vulnerable" scores 50% accuracy on a balanced
set, 100% recall, balanced accuracy 0.5, pair accuracy 0 and ``vulnerable_rate`` 1.0. Steering that only
pushes a model toward saying "vulnerable" more often raises recall and nothing else; balanced accuracy,
MCC and pair accuracy (both halves of a vulnerable/fixed pair right) are the numbers to trust.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.stats import binomtest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    matthews_corrcoef,
    precision_recall_fscore_support,
    roc_auc_score,
)

__all__ = [
    "METRIC_NAMES",
    "McNemarResult",
    "Metrics",
    "Prediction",
    "bootstrap_ci",
    "bootstrap_diff_ci",
    "compute_metrics",
    "mcnemar_exact",
    "pair_rank_accuracy",
    "per_cwe",
    "point_metrics",
    "tpr_at_fpr",
]

#: Metrics that :func:`bootstrap_ci` and :func:`bootstrap_diff_ci` accept.
METRIC_NAMES: tuple[str, ...] = (
    "accuracy",
    "balanced_accuracy",
    "precision",
    "recall",
    "tpr",
    "fpr",
    "tnr",
    "f1",
    "mcc",
    "auroc",
    "pair_accuracy",
    "vulnerable_rate",
    "uncertain_rate",
)

_NAN = float("nan")


@dataclass(frozen=True)
class Prediction:
    """One model answer on one sample.

    Attributes:
        sample_id: the sample's id (unique within one run).
        cwe: canonical CWE id of the sample.
        pair_id: id shared with the other half of a vulnerable/fixed pair; ``None`` if unpaired.
        y_true: 1 vulnerable, 0 secure.
        y_pred: 1 vulnerable, 0 secure, -1 uncertain (never counts as correct).
        score: P(vulnerable), or any score where higher means more vulnerable (for AUROC); optional.
    """

    sample_id: str
    cwe: str
    pair_id: str | None
    y_true: int
    y_pred: int
    score: float | None = None

    def __post_init__(self) -> None:
        if self.y_true not in (0, 1):
            raise ValueError(f"prediction {self.sample_id!r}: y_true must be 0 or 1, got {self.y_true!r}")
        if self.y_pred not in (-1, 0, 1):
            raise ValueError(f"prediction {self.sample_id!r}: y_pred must be -1, 0 or 1, got {self.y_pred!r}")

    @property
    def correct(self) -> bool:
        """Whether the prediction matches the label (uncertain never does)."""
        return self.y_pred == self.y_true


@dataclass(frozen=True)
class Metrics:
    """Detection metrics of one set of predictions (see the module docstring for conventions).

    ``n_pairs`` counts complete pairs (a pair id with at least one vulnerable and one secure member);
    ``pair_accuracy`` is the share of them with every member right (``None`` without complete pairs);
    ``pair_rank_accuracy`` the share where the vulnerable half scores above its fix (ties half; per pair, over its
    vulnerable x fixed combinations; ``None`` without scores or complete pairs); ``tpr_at_5_fpr`` the share of
    vulnerable samples scored above every score that only 5% of the secure ones exceed (``None`` without scores or
    with one class).
    """

    n: int
    n_vulnerable: int
    n_secure: int
    n_pairs: int
    accuracy: float
    balanced_accuracy: float
    precision: float
    recall: float
    tpr: float
    fpr: float
    tnr: float
    f1: float
    mcc: float
    auroc: float | None
    pair_accuracy: float | None
    vulnerable_rate: float
    uncertain_rate: float
    pair_rank_accuracy: float | None = None
    tpr_at_5_fpr: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (free for callers to extend), JSON-safe: ``nan`` becomes ``None``."""
        out: dict[str, Any] = {}
        for key, value in asdict(self).items():
            out[key] = None if isinstance(value, float) and math.isnan(value) else value
        return out


@dataclass(frozen=True)
class McNemarResult:
    """Exact McNemar test on paired per-sample correctness.

    Attributes:
        b: samples right under *base* and wrong under *steered*.
        c: samples wrong under *base* and right under *steered*.
        p_value: two-sided exact binomial p-value (1.0 when ``b + c == 0``).
        statistic: ``min(b, c)``, the exact test's statistic.
    """

    b: int
    c: int
    p_value: float
    statistic: float


# ------------------------------------------------------------------------------------------ arrays


def _arrays(preds: Sequence[Prediction]) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """(y_true, y_pred raw, y_pred effective: uncertain replaced by the opposite of the truth)."""
    y_true = np.fromiter((p.y_true for p in preds), dtype=np.int64, count=len(preds))
    y_pred = np.fromiter((p.y_pred for p in preds), dtype=np.int64, count=len(preds))
    y_eff = np.where(y_pred == -1, 1 - y_true, y_pred)
    return y_true, y_pred, y_eff


def _scores(preds: Sequence[Prediction]) -> NDArray[np.float64] | None:
    """Scores as an array, or ``None`` unless every prediction has a finite score."""
    if any(p.score is None for p in preds):
        return None
    scores = np.array([p.score for p in preds], dtype=np.float64)
    return scores if bool(np.all(np.isfinite(scores))) else None


def _clusters(preds: Sequence[Prediction]) -> NDArray[np.int64]:
    """Cluster index per prediction: one cluster per pair id; an unpaired sample is its own cluster."""
    index: dict[tuple[bool, str], int] = {}
    out = np.empty(len(preds), dtype=np.int64)
    for i, p in enumerate(preds):
        key = (True, p.pair_id) if p.pair_id is not None else (False, f"{p.sample_id}\0{i}")
        out[i] = index.setdefault(key, len(index))
    return out


def _pair_stats(
    preds: Sequence[Prediction], clusters: NDArray[np.int64], y_true: NDArray[np.int64], y_eff: NDArray[np.int64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per cluster: (is a complete pair, is a complete pair with every member right)."""
    n_clusters = int(clusters.max()) + 1 if len(clusters) else 0
    paired = np.fromiter((p.pair_id is not None for p in preds), dtype=bool, count=len(preds))
    n_vul = np.bincount(clusters, weights=(y_true == 1) & paired, minlength=n_clusters)
    n_sec = np.bincount(clusters, weights=(y_true == 0) & paired, minlength=n_clusters)
    n_wrong = np.bincount(clusters, weights=(y_eff != y_true), minlength=n_clusters)
    complete = (n_vul > 0) & (n_sec > 0)
    return complete.astype(np.float64), (complete & (n_wrong == 0)).astype(np.float64)


def _safe_div(num: float, den: float) -> float:
    return num / den if den else _NAN


# ------------------------------------------------------------------------------------------ metrics


def compute_metrics(preds: Sequence[Prediction]) -> Metrics:
    """All metrics of *preds*; raises ``ValueError`` on empty input.

    Uncertain predictions (``y_pred == -1``) count as the opposite of the truth everywhere except in
    ``vulnerable_rate`` and ``uncertain_rate``; see the module docstring.
    """
    if len(preds) == 0:
        raise ValueError("compute_metrics: no predictions")
    y_true, y_pred, y_eff = _arrays(preds)
    n = len(preds)
    n_vul = int(y_true.sum())
    with warnings.catch_warnings():
        # single-class inputs: sklearn warns, then applies exactly the conventions we document
        warnings.simplefilter("ignore")
        tn, fp, fn, tp = (int(v) for v in confusion_matrix(y_true, y_eff, labels=[0, 1]).ravel())
        prec, _, f1, _ = precision_recall_fscore_support(
            y_true, y_eff, labels=[0, 1], average=None, zero_division=np.nan
        )
        balanced = float(balanced_accuracy_score(y_true, y_eff))
        mcc = float(matthews_corrcoef(y_true, y_eff))
        accuracy = float(accuracy_score(y_true, y_eff))
        scores = _scores(preds)
        auroc = float(roc_auc_score(y_true, scores)) if scores is not None and 0 < n_vul < n else None
    tpr = _safe_div(tp, tp + fn)
    tnr = _safe_div(tn, tn + fp)
    clusters = _clusters(preds)
    complete, pair_ok = _pair_stats(preds, clusters, y_true, y_eff)
    n_pairs = int(complete.sum())
    return Metrics(
        n=n,
        n_vulnerable=n_vul,
        n_secure=n - n_vul,
        n_pairs=n_pairs,
        accuracy=accuracy,
        balanced_accuracy=balanced,
        precision=float(prec[1]),
        recall=tpr,
        tpr=tpr,
        fpr=1.0 - tnr,
        tnr=tnr,
        f1=float(f1[1]),
        mcc=mcc,
        auroc=auroc,
        pair_accuracy=float(pair_ok.sum() / n_pairs) if n_pairs else None,
        vulnerable_rate=float(np.mean(y_pred == 1)),
        uncertain_rate=float(np.mean(y_pred == -1)),
        pair_rank_accuracy=None if scores is None else pair_rank_accuracy(preds, scores),
        tpr_at_5_fpr=None if scores is None or not 0 < n_vul < n else tpr_at_fpr(y_true, scores, 0.05),
    )


def pair_rank_accuracy(preds: Sequence[Prediction], scores: NDArray[np.float64]) -> float | None:
    """Mean over complete pairs of the share of (vulnerable, fixed) combinations where the vulnerable half scores
    higher (ties count half); ``None`` without complete pairs.

    >>> preds = [Prediction("a", "CWE-89", "p", 1, 1), Prediction("b", "CWE-89", "p", 0, 1),
    ...          Prediction("c", "CWE-89", "q", 1, 1), Prediction("d", "CWE-89", "q", 0, 1)]
    >>> pair_rank_accuracy(preds, np.array([0.9, 0.1, 0.5, 0.5]))
    0.75
    """
    by: dict[str, tuple[list[float], list[float]]] = {}
    for p, score in zip(preds, scores, strict=True):
        if p.pair_id is not None:
            by.setdefault(p.pair_id, ([], []))[0 if p.y_true == 1 else 1].append(float(score))
    shares = []
    for vulnerable, fixed in by.values():
        if vulnerable and fixed:
            a, b = np.array(vulnerable)[:, None], np.array(fixed)[None, :]
            shares.append(float(((a > b) + 0.5 * (a == b)).mean()))
    return float(np.mean(shares)) if shares else None


def tpr_at_fpr(y_true: NDArray[np.int64], scores: NDArray[np.float64], fpr: float) -> float:
    """The true-positive rate at the threshold that at most *fpr* of the negatives exceed (scores strictly above
    it count as positive).

    >>> tpr_at_fpr(np.array([1, 1, 0, 0]), np.array([3.0, 1.0, 2.0, 0.0]), 0.5)  # one negative (2.0) may exceed
    1.0
    >>> tpr_at_fpr(np.array([1, 1, 0, 0]), np.array([3.0, 1.0, 2.0, 0.0]), 0.0)  # none may: above 2.0 only
    0.5
    """
    negatives = np.sort(scores[y_true == 0])[::-1]
    k = int(np.floor(fpr * len(negatives)))
    threshold = negatives[k] if k < len(negatives) else -np.inf
    return float((scores[y_true == 1] > threshold).mean())


def per_cwe(preds: Sequence[Prediction]) -> dict[str, list[Prediction]]:
    """Predictions grouped by CWE (in CWE number order), plus ``"overall"`` (all of them) last."""

    def number(cwe: str) -> tuple[int, str]:
        digits = cwe.rsplit("-", 1)[-1]
        return (int(digits), cwe) if digits.isdigit() else (1 << 30, cwe)

    groups: dict[str, list[Prediction]] = {}
    for p in preds:
        groups.setdefault(p.cwe, []).append(p)
    out = {cwe: groups[cwe] for cwe in sorted(groups, key=number)}
    out["overall"] = list(preds)
    return out


# ------------------------------------------------------------------------------------------ bootstrap


class _Replicates:
    """Metric values over bootstrap replicates given as cluster multiplicities (a ``(B, C)`` matrix).

    Confusion counts are summed per cluster once, so a replicate's totals are one matrix product; the
    formulas match :func:`compute_metrics` (checked in the tests).
    """

    def __init__(self, preds: Sequence[Prediction], clusters: NDArray[np.int64], n_clusters: int) -> None:
        y_true, y_pred, y_eff = _arrays(preds)
        columns = [
            (y_true == 1) & (y_eff == 1),  # tp
            (y_true == 1) & (y_eff == 0),  # fn
            (y_true == 0) & (y_eff == 1),  # fp
            (y_true == 0) & (y_eff == 0),  # tn
            y_pred == 1,
            y_pred == -1,
        ]
        per_sample = np.stack(columns, axis=1).astype(np.float64)
        stats = np.zeros((n_clusters, per_sample.shape[1] + 2))
        np.add.at(stats[:, : per_sample.shape[1]], clusters, per_sample)
        complete, pair_ok = _pair_stats(preds, clusters, y_true, y_eff)
        stats[: len(complete), -2] = complete
        stats[: len(complete), -1] = pair_ok
        self.stats = stats
        self.clusters = clusters
        self.y_true = y_true
        self.scores = _scores(preds)

    def __call__(self, metric: str, mult: NDArray[np.int64]) -> NDArray[np.float64]:
        if metric == "auroc":
            return self._auroc(mult)
        t = mult.astype(np.float64) @ self.stats
        tp, fn, fp, tn, pred1, unc, pairs, pairs_ok = t.T
        n = tp + fn + fp + tn
        pos, neg = tp + fn, fp + tn
        with np.errstate(divide="ignore", invalid="ignore"):
            tpr = np.where(pos > 0, tp / pos, np.nan)
            tnr = np.where(neg > 0, tn / neg, np.nan)
            if metric in ("recall", "tpr"):
                return tpr
            if metric == "tnr":
                return tnr
            if metric == "fpr":
                return 1.0 - tnr
            if metric == "accuracy":
                return (tp + tn) / n
            if metric == "balanced_accuracy":
                both = np.where(np.isnan(tpr), tnr, np.where(np.isnan(tnr), tpr, (tpr + tnr) / 2))
                return np.asarray(both, dtype=np.float64)
            if metric == "precision":
                return np.where(tp + fp > 0, tp / (tp + fp), np.nan)
            if metric == "f1":
                den = 2 * tp + fp + fn
                return np.where(den > 0, 2 * tp / den, np.nan)
            if metric == "mcc":
                den = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
                return np.where(den > 0, (tp * tn - fp * fn) / den, 0.0)
            if metric == "vulnerable_rate":
                return pred1 / n
            if metric == "uncertain_rate":
                return unc / n
            if metric == "pair_accuracy":
                return np.where(pairs > 0, pairs_ok / pairs, np.nan)
        raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(METRIC_NAMES)}")

    def _auroc(self, mult: NDArray[np.int64]) -> NDArray[np.float64]:
        """Weighted Mann-Whitney AUROC (ties count half) for every replicate at once, O(B n).

        Equals ``roc_auc_score(y, score, sample_weight=w)``; scikit-learn's per-call overhead would make
        the bootstrap the slowest part of an evaluation, and the tests check the two agree.
        """
        if self.scores is None:
            return np.full(mult.shape[0], np.nan)
        order = np.argsort(self.scores, kind="stable")
        ranked = self.scores[order]
        is_pos = self.y_true[order] == 1
        # tie groups in score order: [group_start, group_end) for every position
        new_group = np.r_[True, ranked[1:] != ranked[:-1]]
        starts = np.flatnonzero(new_group)
        ends = np.r_[starts[1:], len(ranked)]
        group = np.cumsum(new_group) - 1
        weight = mult[:, self.clusters[order]].astype(np.float64)
        neg_w = np.where(is_pos, 0.0, weight)
        pos_w = np.where(is_pos, weight, 0.0)
        cum_neg = np.concatenate([np.zeros((len(weight), 1)), np.cumsum(neg_w, axis=1)], axis=1)
        below = cum_neg[:, starts[group]]
        tied = cum_neg[:, ends[group]] - below
        num = (pos_w * (below + 0.5 * tied)).sum(axis=1)
        den = pos_w.sum(axis=1) * neg_w.sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(den > 0, num / den, np.nan)


def _check_metric(metric: str) -> None:
    if metric not in METRIC_NAMES:
        raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(METRIC_NAMES)}")


def _interval(values: NDArray[np.float64], alpha: float) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return (_NAN, _NAN)
    low, high = np.quantile(finite, [alpha / 2, 1 - alpha / 2])
    return (float(low), float(high))


def _draw(
    n_clusters: int, n_boot: int, seed: int, evaluate: Callable[[NDArray[np.int64]], NDArray[np.float64]]
) -> NDArray[np.float64]:
    """Evaluate *evaluate* on *n_boot* cluster resamples (multiplicity rows), in bounded-memory batches."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    batch = max(1, min(n_boot, 4_000_000 // max(1, n_clusters)))
    out: list[NDArray[np.float64]] = []
    done = 0
    while done < n_boot:
        size = min(batch, n_boot - done)
        # drawing n_clusters clusters with replacement = one multinomial row of multiplicities
        mult = rng.multinomial(n_clusters, np.full(n_clusters, 1.0 / n_clusters), size=size)
        out.append(evaluate(mult))
        done += size
    return np.concatenate(out)


def bootstrap_ci(
    preds: Sequence[Prediction],
    metric: str = "balanced_accuracy",
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """Percentile bootstrap ``(low, high)`` interval of *metric* at level ``1 - alpha``.

    Cluster bootstrap: pair ids are resampled with replacement and every member of a drawn pair comes
    along (an unpaired sample is its own cluster), so the two halves of a pair, whose answers are
    correlated, are never split. Replicates where the metric is undefined (``nan``, e.g. TPR when no
    vulnerable sample was drawn) are dropped; ``(nan, nan)`` if none is defined. Deterministic for a
    given *seed*.
    """
    if len(preds) == 0:
        raise ValueError("bootstrap_ci: no predictions")
    _check_metric(metric)
    clusters = _clusters(preds)
    n_clusters = int(clusters.max()) + 1
    replicates = _Replicates(preds, clusters, n_clusters)
    values = _draw(n_clusters, n_boot, seed, lambda mult: replicates(metric, mult))
    return _interval(values, alpha)


def _align(base: Sequence[Prediction], steered: Sequence[Prediction]) -> list[Prediction]:
    """*steered* reordered to match *base* by sample id; ``ValueError`` unless the id sets match."""
    base_ids = [p.sample_id for p in base]
    by_id = {p.sample_id: p for p in steered}
    if len(set(base_ids)) != len(base_ids) or len(by_id) != len(steered):
        raise ValueError("duplicate sample ids: paired comparisons need one prediction per sample")
    if set(base_ids) != set(by_id):
        only_base = sorted(set(base_ids) - set(by_id))[:5]
        only_steered = sorted(set(by_id) - set(base_ids))[:5]
        raise ValueError(
            f"base and steered cover different samples (only in base: {only_base}, only in steered: {only_steered})"
        )
    aligned = [by_id[i] for i in base_ids]
    for b, s in zip(base, aligned, strict=True):
        if b.y_true != s.y_true:
            raise ValueError(f"sample {b.sample_id!r} has y_true {b.y_true} in base but {s.y_true} in steered")
    return aligned


def bootstrap_diff_ci(
    base: Sequence[Prediction],
    steered: Sequence[Prediction],
    metric: str = "balanced_accuracy",
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """Paired bootstrap interval of ``metric(steered) - metric(base)``.

    Both runs are matched by ``sample_id`` (``ValueError`` if their sample sets differ) and every
    replicate uses the same resampled clusters (pairs of *base*) for both, so sample difficulty cancels.
    """
    if len(base) == 0:
        raise ValueError("bootstrap_diff_ci: no predictions")
    _check_metric(metric)
    aligned = _align(base, steered)
    clusters = _clusters(base)
    n_clusters = int(clusters.max()) + 1
    rep_base = _Replicates(base, clusters, n_clusters)
    rep_steered = _Replicates(aligned, clusters, n_clusters)
    values = _draw(n_clusters, n_boot, seed, lambda mult: rep_steered(metric, mult) - rep_base(metric, mult))
    return _interval(values, alpha)


# ------------------------------------------------------------------------------------------ McNemar


def mcnemar_exact(base: Sequence[Prediction], steered: Sequence[Prediction]) -> McNemarResult:
    """Exact (binomial) McNemar test of per-sample correctness, matched by ``sample_id``.

    ``b`` = right under base only, ``c`` = right under steered only; the two-sided p-value is
    ``binomtest(b, b + c, 0.5)``. Uncertain predictions count as wrong. Raises ``ValueError`` if the
    two runs cover different samples.
    """
    aligned = _align(base, steered)
    b = sum(1 for x, y in zip(base, aligned, strict=True) if x.correct and not y.correct)
    c = sum(1 for x, y in zip(base, aligned, strict=True) if not x.correct and y.correct)
    p_value = 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5, alternative="two-sided").pvalue)
    return McNemarResult(b=b, c=c, p_value=min(1.0, p_value), statistic=float(min(b, c)))


def point_metrics(preds: Sequence[Prediction], names: Sequence[str]) -> dict[str, float | None]:
    """Metrics by name without the bootstrap, vectorised: the replicate code with every pair drawn once, so the
    conventions are :func:`compute_metrics`'s (undefined = None). Fast enough for thousands of sweep settings."""
    if not preds:
        return {name: None for name in names}
    clusters = _clusters(preds)
    n_clusters = int(clusters.max()) + 1
    replicates = _Replicates(preds, clusters, n_clusters)
    once = np.ones((1, n_clusters), dtype=np.int64)
    out: dict[str, float | None] = {}
    for name in names:
        value = float(replicates(name, once)[0])
        out[name] = None if math.isnan(value) else value
    return out
