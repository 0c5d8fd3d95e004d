"""Probes read alone as detectors: a steering direction (or a logistic-regression probe) as a classifier on
activations.

It sits beside the logit and generation modes and answers a narrower question: is the information
"this code is vulnerable" linearly readable from the hidden states at all, at which layer and pooling, and
does the steering direction itself point along it?

Protocol (the same for every pooling x layer x CWE x probe kind):

1. **fit on train only**: the direction is ``mean(secure) - mean(vulnerable)`` of the train rows (for one CWE
   that CWE's own train rows; for ``"overall"`` every train row, pooled over CWEs), the logistic probe is a
   :class:`~sklearn.preprocessing.StandardScaler` + :class:`~sklearn.linear_model.LogisticRegression` fitted on
   the same rows;
2. **choose the threshold on val only** (:func:`choose_threshold`: maximise balanced accuracy);
3. **score once on test**: AUROC, balanced accuracy and a pair-bootstrap CI of the balanced accuracy.

Test labels reach nothing but the final metrics: the fitting and threshold code (:func:`fit_probe`) never
sees the test split (``tests/test_probe.py`` checks that permuting the test labels changes no threshold and no
score).

Scores: higher means *more vulnerable* for both probe kinds. The direction score is the signed distance along
``-d / |d|`` (``d`` points toward secure, see :mod:`vulnsteer.steering.vectors`) from the midpoint of the two
train class means, so 0 is the train midpoint; the logistic score is the probe's log-odds of *vulnerable*, so 0 is its
decision boundary. That natural threshold (0) is also the fallback when val cannot choose one.

Edge cases (never a crash):

* fewer than :data:`MIN_TRAIN_PER_CLASS` train samples of either class, or no test samples: the combination is
  returned as a result with ``skipped`` set to the reason and every metric ``nan``/``None``
  (:attr:`ProbeResult.is_skipped`); :func:`probe_table` renders it as a "skipped" row;
* one class (or nothing) in val: the threshold falls back to 0 (see above) and a note says so; val AUROC is
  ``None``;
* one class in test: test AUROC is ``None`` and a note says so; balanced accuracy is then the recall of that
  class (:mod:`vulnsteer.stats.metrics`'s convention).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray

from ..config.vocabulary import POOLINGS, PROBE_KINDS
from ..data.sample import Sample
from ..lm.activations import Activations
from ..stats.metrics import Prediction, bootstrap_ci, compute_metrics
from ..steering.vectors import mean_difference

__all__ = [
    "MIN_TRAIN_PER_CLASS",
    "OVERALL",
    "FittedProbe",
    "ProbeResult",
    "choose_threshold",
    "direction_scores",
    "evaluate_length_control",
    "evaluate_probes",
    "fit_logistic_probe",
    "fit_probe",
    "surface_features",
]

OVERALL = "overall"
#: A CWE needs at least this many train samples of *each* class to be probed.
MIN_TRAIN_PER_CLASS = 2
#: Regularisation strength of the logistic probe (the same as :func:`vulnsteer.steering.vectors.logistic_direction`).
DEFAULT_C = 0.1
_NAN = float("nan")
_TIE_TOL = 1e-12

Split = tuple[Activations, Sequence[Sample]]


# ------------------------------------------------------------------------------------------ result


@dataclass(frozen=True)
class ProbeResult:
    """One detector at one pooling, layer and CWE (or ``"overall"``).

    Attributes:
        detector: the probe kind read as a detector, ``"direction"`` (mean-difference direction) or ``"logistic"``
            (logistic-regression probe), or ``"length"`` (the length-only control).
        pooling: activation pooling (``"last"`` or ``"code_mean"``).
        layer: decoder layer index.
        cwe: canonical CWE id, or ``"overall"`` (pooled over CWEs).
        threshold: decision threshold on the score (vulnerable iff ``score > threshold``), chosen on val.
        test_auroc, val_auroc: ``None`` when the split has a single class (or the result is skipped).
        test_balanced_accuracy, val_balanced_accuracy: ``nan`` when undefined (skipped / empty split).
        n_train, n_val, n_test: samples of this CWE in each split.
        balanced_accuracy_ci: pair-bootstrap 95% interval of the test balanced accuracy.
        notes: human-readable caveats (single-class split, threshold fallback, ...).
        skipped: why the combination was not evaluated, or ``None``.
        predictions: the test predictions (not part of :meth:`to_dict`; for paired comparisons with other
            detectors, e.g. :func:`vulnsteer.stats.metrics.mcnemar_exact`).
    """

    detector: str
    pooling: str
    layer: int
    cwe: str
    threshold: float
    test_auroc: float | None
    test_balanced_accuracy: float
    val_auroc: float | None
    val_balanced_accuracy: float
    n_train: int
    n_val: int
    n_test: int
    balanced_accuracy_ci: tuple[float, float]
    notes: tuple[str, ...] = ()
    skipped: str | None = None
    predictions: tuple[Prediction, ...] = field(default=(), repr=False, compare=False)

    @property
    def is_skipped(self) -> bool:
        return self.skipped is not None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (``nan`` becomes ``None``; predictions left out)."""

        def clean(value: Any) -> Any:
            return None if isinstance(value, float) and math.isnan(value) else value

        return {
            "detector": self.detector,
            "pooling": self.pooling,
            "layer": self.layer,
            "cwe": self.cwe,
            "threshold": clean(self.threshold),
            "test_auroc": clean(self.test_auroc),
            "test_balanced_accuracy": clean(self.test_balanced_accuracy),
            "val_auroc": clean(self.val_auroc),
            "val_balanced_accuracy": clean(self.val_balanced_accuracy),
            "n_train": self.n_train,
            "n_val": self.n_val,
            "n_test": self.n_test,
            "balanced_accuracy_ci": [clean(v) for v in self.balanced_accuracy_ci],
            "notes": list(self.notes),
            "skipped": self.skipped,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProbeResult:
        """A result from its :meth:`to_dict` form (``None`` metrics back to ``nan`` where the field is a float)."""

        def num(key: str) -> float:
            value = data.get(key)
            return _NAN if value is None else float(value)

        def opt(key: str) -> float | None:
            value = data.get(key)
            return None if value is None else float(value)

        lo, hi = data.get("balanced_accuracy_ci") or (None, None)
        return cls(
            str(data["detector"]),
            str(data["pooling"]),
            int(data["layer"]),
            str(data["cwe"]),
            num("threshold"),
            opt("test_auroc"),
            num("test_balanced_accuracy"),
            opt("val_auroc"),
            num("val_balanced_accuracy"),
            int(data.get("n_train", 0)),
            int(data.get("n_val", 0)),
            int(data.get("n_test", 0)),
            (_NAN if lo is None else float(lo), _NAN if hi is None else float(hi)),
            tuple(data.get("notes") or ()),
            data.get("skipped"),
        )


# ------------------------------------------------------------------------------------------ scores


def direction_scores(
    acts: torch.Tensor, direction: torch.Tensor, center: torch.Tensor | None = None
) -> NDArray[np.float64]:
    """Scores ``[n]`` of *acts* ``[n, h]`` along *direction* ``[h]``; higher = more vulnerable.

    ``score = -((acts - center) @ d) / |d|``: *direction* points toward secure (the steering convention), so the
    sign is flipped. *center* (``[h]``) is the midpoint of the train class means, which makes 0 the natural
    threshold; without it the raw projection is returned.
    """
    x = acts.detach().to("cpu", torch.float64)
    d = direction.detach().to("cpu", torch.float64)
    if x.ndim != 2 or d.ndim != 1 or x.shape[1] != d.shape[0]:
        raise ValueError(f"direction_scores: shapes {tuple(x.shape)} and {tuple(d.shape)} do not match")
    if center is not None:
        x = x - center.detach().to("cpu", torch.float64)
    scores = -(x @ d) / d.norm().clamp(min=1e-12)
    return np.asarray(scores.numpy(), dtype=np.float64)


def fit_logistic_probe(
    train_x: ArrayLike | torch.Tensor, train_y: ArrayLike, C: float = DEFAULT_C, seed: int = 0
) -> Any:
    """A fitted ``StandardScaler + LogisticRegression`` pipeline (y = 1 vulnerable); deterministic.

    L2-regularised (``C``), lbfgs, fixed ``random_state``. Its ``decision_function`` is the log-odds of
    *vulnerable* (higher = more vulnerable, 0 = decision boundary).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = _as_numpy(train_x)
    y = np.asarray(train_y, dtype=np.int64)
    if len(np.unique(y)) < 2:
        raise ValueError("fit_logistic_probe: train labels need both classes")
    pipe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=5000, random_state=seed))
    return pipe.fit(x, y)


def _as_numpy(x: ArrayLike | torch.Tensor) -> NDArray[np.float64]:
    if isinstance(x, torch.Tensor):
        return np.asarray(x.detach().to("cpu", torch.float64).numpy(), dtype=np.float64)
    return np.asarray(x, dtype=np.float64)


# ------------------------------------------------------------------------------------------ threshold


def choose_threshold(scores: ArrayLike, y: ArrayLike, reference: float | None = None) -> float:
    """The threshold (vulnerable iff ``score > t``) that maximises balanced accuracy on *scores* / *y*.

    Meant for the **val** split only. Every distinct prediction is one cell of the real line between
    consecutive distinct scores; among the cells with the best balanced accuracy (ties within 1e-12), the one
    nearest *reference* wins: *reference* itself if it lies in a best cell, otherwise the midpoint of the
    nearest best cell (the outer cells are represented half a typical gap beyond the extreme scores).
    *reference* defaults to the median score; :func:`evaluate_probes` passes 0, the score's natural threshold.

    With a single class (or no samples), balanced accuracy cannot choose: *reference* (or 0.0 without scores)
    is returned unchanged.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(y, dtype=np.int64).ravel()
    if s.shape != labels.shape:
        raise ValueError(f"choose_threshold: {s.size} scores but {labels.size} labels")
    if not np.all(np.isfinite(s)):
        raise ValueError("choose_threshold: scores must be finite")
    ref = float(np.median(s)) if reference is None and s.size else (0.0 if reference is None else float(reference))
    n_pos = int((labels == 1).sum())
    n_neg = int((labels == 0).sum())
    if n_pos == 0 or n_neg == 0:
        return ref
    values = np.unique(s)  # sorted distinct scores u_0 < ... < u_{m-1}
    # cell k (k = 0..m) = [u_{k-1}, u_k): predicts vulnerable exactly for scores >= u_k
    pos_sorted = np.sort(s[labels == 1])
    neg_sorted = np.sort(s[labels == 0])
    tpr = (n_pos - np.searchsorted(pos_sorted, values, side="left")) / n_pos
    tnr = np.searchsorted(neg_sorted, values, side="left") / n_neg
    bal = np.concatenate([(tpr + tnr) / 2, [0.5]])  # last cell (> every score): all secure
    best = np.flatnonzero(bal >= bal.max() - _TIE_TOL)
    gap = float(np.diff(values).mean()) / 2 if values.size > 1 else 0.5
    lows = np.concatenate([[-np.inf], values])
    highs = np.concatenate([values, [np.inf]])
    reps = np.concatenate([[values[0] - gap], (values[:-1] + values[1:]) / 2, [values[-1] + gap]])
    for k in best:
        if lows[k] <= ref < highs[k]:
            return ref
    distance = np.where(ref < lows[best], lows[best] - ref, ref - highs[best])
    return float(reps[best[int(np.argmin(distance))]])


# ------------------------------------------------------------------------------------------ probes


@dataclass(frozen=True)
class FittedProbe:
    """A probe fitted on train with its threshold chosen on val: ``score`` maps ``[n, h]`` to scores; *name* is
    its probe kind (or what it reads, e.g. ``length`` for the length-only control)."""

    name: str
    score: Callable[[torch.Tensor], NDArray[np.float64]]
    threshold: float
    notes: tuple[str, ...] = ()
    model: Any = field(default=None, repr=False, compare=False)


def _fit_scorer(
    kind: str, train_x: torch.Tensor, train_y: NDArray[np.int64], C: float, seed: int
) -> tuple[Callable[[torch.Tensor], NDArray[np.float64]], Any]:
    if kind == "direction":
        vul = train_y == 1
        secure_x, vulnerable_x = train_x[torch.as_tensor(~vul)], train_x[torch.as_tensor(vul)]
        direction = mean_difference(secure_x, vulnerable_x)
        center = (secure_x.float().mean(0) + vulnerable_x.float().mean(0)) / 2
        return (lambda x: direction_scores(x, direction, center)), {"direction": direction, "center": center}
    if kind == "logistic":
        pipe = fit_logistic_probe(train_x, train_y, C=C, seed=seed)
        return (lambda x: np.asarray(pipe.decision_function(_as_numpy(x)), dtype=np.float64)), pipe
    raise ValueError(f"unknown probe kind {kind!r}; choose from {', '.join(PROBE_KINDS)}")


def fit_probe(
    kind: str,
    train_x: torch.Tensor,
    train_y: ArrayLike,
    val_x: torch.Tensor,
    val_y: ArrayLike,
    *,
    C: float = DEFAULT_C,
    seed: int = 0,
) -> FittedProbe:
    """Fit a *kind* probe on train and choose its threshold on val; the test split is not an argument.

    The threshold's tie-break reference is 0 (the train midpoint / the logistic decision boundary); with a
    single class or no samples in val it *is* the threshold, and a note says so.
    """
    ty = np.asarray(train_y, dtype=np.int64)
    vy = np.asarray(val_y, dtype=np.int64)
    if min(int((ty == 1).sum()), int((ty == 0).sum())) < 1:
        raise ValueError(f"{kind}: train needs both classes")
    scorer, model = _fit_scorer(kind, train_x, ty, C, seed)
    notes: list[str] = []
    if len(vy) == 0 or len(np.unique(vy)) < 2:
        what = "no val samples" if len(vy) == 0 else f"val has one class only ({_class_name(int(vy[0]))})"
        notes.append(f"{what}: threshold 0 (train midpoint / decision boundary), not tuned")
        threshold = 0.0
    else:
        threshold = choose_threshold(scorer(val_x), vy, reference=0.0)
    return FittedProbe(name=kind, score=scorer, threshold=threshold, notes=tuple(notes), model=model)


def _class_name(y: int) -> str:
    return "vulnerable" if y == 1 else "secure"


# ------------------------------------------------------------------------------------------ evaluation


def _cwe_order(cwes: Iterable[str]) -> list[str]:
    def number(cwe: str) -> tuple[int, str]:
        digits = cwe.rsplit("-", 1)[-1]
        return (int(digits), cwe) if digits.isdigit() else (1 << 30, cwe)

    return sorted(set(cwes), key=number)


def _check_split(name: str, split: Split) -> None:
    acts, samples = split
    if [s.id for s in samples] != list(acts.sample_ids):
        raise ValueError(f"{name}: samples do not match the activations (ids or order differ)")


def _rows(x: torch.Tensor, indices: Sequence[int]) -> torch.Tensor:
    return x.index_select(0, torch.as_tensor(list(indices), dtype=torch.long))


def _predictions(samples: Sequence[Sample], scores: NDArray[np.float64], threshold: float) -> list[Prediction]:
    return [
        Prediction(s.id, s.cwe, s.pair_id, s.y, int(score > threshold), float(score))
        for s, score in zip(samples, scores, strict=True)
    ]


def _skipped(
    detector: str, pooling: str, layer: int, cwe: str, counts: tuple[int, int, int], reason: str
) -> ProbeResult:
    return ProbeResult(
        detector=detector,
        pooling=pooling,
        layer=layer,
        cwe=cwe,
        threshold=_NAN,
        test_auroc=None,
        test_balanced_accuracy=_NAN,
        val_auroc=None,
        val_balanced_accuracy=_NAN,
        n_train=counts[0],
        n_val=counts[1],
        n_test=counts[2],
        balanced_accuracy_ci=(_NAN, _NAN),
        skipped=reason,
    )


def evaluate_probes(
    train: Split,
    val: Split,
    test: Split,
    *,
    layers: Sequence[int] | None = None,
    poolings: Sequence[str] = POOLINGS,
    per_cwe: bool = True,
    kinds: Sequence[str] = PROBE_KINDS,
    C: float = DEFAULT_C,
    n_boot: int = 1000,
    seed: int = 0,
) -> list[ProbeResult]:
    """Fit on train, choose thresholds on val, score once on test; one result per pooling x layer x CWE x probe kind.

    Each split is ``(activations, samples)`` in the same order (checked). *layers* defaults to the train
    activations' layers. With *per_cwe*, every CWE present in any split gets its own fit (its own train rows,
    threshold from its own val rows, metrics on its own test rows), in CWE-number order, followed by
    ``"overall"`` (pooled over every CWE); without it, only ``"overall"``. Combinations that cannot be fitted
    or scored come back with ``skipped`` set (see the module docstring). *seed* seeds the logistic probe and
    the bootstrap.
    """
    for name, split in (("train", train), ("val", val), ("test", test)):
        _check_split(name, split)
    for kind in kinds:
        if kind not in PROBE_KINDS:
            raise ValueError(f"unknown probe kind {kind!r}; choose from {', '.join(PROBE_KINDS)}")
    for pos in poolings:
        if pos not in POOLINGS:
            raise ValueError(f"unknown pooling {pos!r}; choose from {', '.join(POOLINGS)}")
    chosen = list(layers) if layers is not None else list(train[0].layers)

    splits = (train, val, test)
    samples = tuple(split[1] for split in splits)
    groups = _groups(samples, per_cwe)
    results: list[ProbeResult] = []
    for pooling in poolings:
        for layer in chosen:
            xs = tuple(acts.get(pooling, layer) for acts, _ in splits)
            results += _evaluate_features(xs, samples, groups, kinds, pooling, layer, C, n_boot, seed)
    return results


def surface_features(samples: Sequence[Sample]) -> torch.Tensor:
    """Per sample ``[log characters, log lines, log non-blank characters]`` of the code: what a probe could
    read without understanding anything (the label-free surface of the text)."""
    rows = [
        [math.log1p(len(s.code)), math.log1p(s.code.count("\n") + 1), math.log1p(len("".join(s.code.split())))]
        for s in samples
    ]
    return torch.tensor(rows, dtype=torch.float32).reshape(len(samples), 3)


def evaluate_length_control(
    train: Sequence[Sample],
    val: Sequence[Sample],
    test: Sequence[Sample],
    *,
    per_cwe: bool = True,
    C: float = DEFAULT_C,
    n_boot: int = 1000,
    seed: int = 0,
) -> list[ProbeResult]:
    """The probes' control: a logistic regression on :func:`surface_features` (code length alone), fitted on
    train, threshold on val, scored once on test with the same protocol and rows as :func:`evaluate_probes`.
    A probe AUROC that does not beat this one may be reading length, not vulnerability. Results have detector
    ``"length"``, pooling ``"code"`` and layer ``-1`` (no layer)."""
    splits = (train, val, test)
    xs = tuple(surface_features(split) for split in splits)
    return _evaluate_features(
        xs, splits, _groups(splits, per_cwe), ("logistic",), "code", -1, C, n_boot, seed, name="length"
    )


def _groups(samples: Sequence[Sequence[Sample]], per_cwe: bool) -> list[tuple[str, list[list[int]]]]:
    """(CWE, row indices in each split) per CWE in number order (with *per_cwe*), then ``overall``."""
    groups: list[tuple[str, list[list[int]]]] = []
    if per_cwe:
        for cwe in _cwe_order(s.cwe for split in samples for s in split):
            groups.append((cwe, [[i for i, s in enumerate(split) if s.cwe == cwe] for split in samples]))
    groups.append((OVERALL, [list(range(len(split))) for split in samples]))
    return groups


def _evaluate_features(
    xs: Sequence[torch.Tensor],
    samples: Sequence[Sequence[Sample]],
    groups: Sequence[tuple[str, list[list[int]]]],
    kinds: Sequence[str],
    pooling: str,
    layer: int,
    C: float,
    n_boot: int,
    seed: int,
    name: str | None = None,
) -> list[ProbeResult]:
    """Fit/threshold/score every probe kind on every group of one feature matrix per split (train, val, test)."""
    train, val, test = samples
    results: list[ProbeResult] = []
    for cwe, (tr_idx, va_idx, te_idx) in groups:
        counts = (len(tr_idx), len(va_idx), len(te_idx))
        tr_y = np.array([train[i].y for i in tr_idx], dtype=np.int64)
        va_y = np.array([val[i].y for i in va_idx], dtype=np.int64)
        n_vul, n_sec = int(tr_y.sum()), int(len(tr_y) - tr_y.sum())
        reason = None
        if min(n_vul, n_sec) < MIN_TRAIN_PER_CLASS:
            reason = f"train has {n_vul} vulnerable and {n_sec} secure samples (need >= {MIN_TRAIN_PER_CLASS} of each)"
        elif not te_idx:
            reason = "no test samples"
        if reason is not None:
            results.extend(_skipped(name or k, pooling, layer, cwe, counts, reason) for k in kinds)
            continue
        tr_x, va_x, te_x = (_rows(x, idx) for x, idx in zip(xs, (tr_idx, va_idx, te_idx), strict=True))
        va_s = [val[i] for i in va_idx]
        te_s = [test[i] for i in te_idx]
        for kind in kinds:
            fitted = fit_probe(kind, tr_x, tr_y, va_x, va_y, C=C, seed=seed)
            if name is not None:
                fitted = dataclasses.replace(fitted, name=name)
            results.append(_score(fitted, pooling, layer, cwe, counts, va_s, va_x, te_s, te_x, n_boot, seed))
    return results


def _score(
    fitted: FittedProbe,
    pooling: str,
    layer: int,
    cwe: str,
    counts: tuple[int, int, int],
    val_samples: Sequence[Sample],
    val_x: torch.Tensor,
    test_samples: Sequence[Sample],
    test_x: torch.Tensor,
    n_boot: int,
    seed: int,
) -> ProbeResult:
    notes = list(fitted.notes)
    val_auroc: float | None = None
    val_bal = _NAN
    if val_samples:
        val_metrics = compute_metrics(_predictions(val_samples, fitted.score(val_x), fitted.threshold))
        val_auroc, val_bal = val_metrics.auroc, val_metrics.balanced_accuracy
    test_preds = _predictions(test_samples, fitted.score(test_x), fitted.threshold)
    metrics = compute_metrics(test_preds)
    if metrics.n_vulnerable == 0 or metrics.n_secure == 0:
        only = "secure" if metrics.n_vulnerable == 0 else "vulnerable"
        notes.append(f"test has one class only ({only}): no AUROC; balanced accuracy = recall of that class")
    ci = bootstrap_ci(test_preds, "balanced_accuracy", n_boot=n_boot, seed=seed)
    return ProbeResult(
        detector=fitted.name,
        pooling=pooling,
        layer=layer,
        cwe=cwe,
        threshold=fitted.threshold,
        test_auroc=metrics.auroc,
        test_balanced_accuracy=metrics.balanced_accuracy,
        val_auroc=val_auroc,
        val_balanced_accuracy=val_bal,
        n_train=counts[0],
        n_val=counts[1],
        n_test=counts[2],
        balanced_accuracy_ci=ci,
        notes=tuple(notes),
        predictions=tuple(test_preds),
    )


# ------------------------------------------------------------------------------------------ table
