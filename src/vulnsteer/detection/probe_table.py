"""Probes read alone as detectors: the report's table of probes (:func:`evaluate_probes`), fitted by
:func:`~vulnsteer.detection.probe.fit_probe`.

It sits beside the logit and generation modes and answers a narrower question: is the information
"this code is vulnerable" linearly readable from the hidden states at all, at which layer and pooling, and
does the steering direction itself point along it?

Protocol (the same for every pooling x layer x CWE x probe kind):

1. **fit on train only**: the direction is ``mean(vulnerable) - mean(secure)`` of the train rows (for one CWE
   that CWE's own train rows; for ``"overall"`` every train row, pooled over CWEs), the logistic probe is a
   :class:`~sklearn.preprocessing.StandardScaler` + :class:`~sklearn.linear_model.LogisticRegression` fitted on
   the same rows (folded into the probe's weights);
2. **choose the threshold on val only** (:func:`~vulnsteer.detection.probe.choose_threshold`: maximise balanced
   accuracy);
3. **score once on test**: AUROC, balanced accuracy and a pair-bootstrap CI of the balanced accuracy.

Test labels reach nothing but the final metrics: the fitting and threshold code
(:func:`~vulnsteer.detection.probe.fit_probe`) never sees the test split (``tests/unit/detection/test_probe.py``
checks that permuting the test labels changes no threshold and no score).

Scores: higher means *more vulnerable* for both probe kinds. The direction score is the signed distance along
the unit class-mean difference from the midpoint of the two train class means, so 0 is the train midpoint; the
logistic score is the probe's log-odds of *vulnerable*, so 0 is its decision boundary. That natural threshold (0)
is also the fallback when val cannot choose one.

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

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from ..config.design import DEFAULT_C, ProbeDesign
from ..config.vocabulary import POOLINGS, PROBE_KINDS
from ..data.sample import Sample
from ..lm.activations import Activations
from ..stats.metrics import Prediction, bootstrap_ci, compute_metrics
from ..steering.probe import Probe
from .probe import ProbeData, fit_probe

__all__ = [
    "MIN_TRAIN_PER_CLASS",
    "OVERALL",
    "TABLE_POOLINGS",
    "ProbeResult",
    "evaluate_length_control",
    "evaluate_probes",
    "surface_features",
]

OVERALL = "overall"
#: A CWE needs at least this many train samples of *each* class to be probed.
MIN_TRAIN_PER_CLASS = 2
#: The poolings the report's table of probes reads by default.
TABLE_POOLINGS: tuple[str, ...] = ("last", "code_mean")
_NAN = float("nan")

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
    poolings: Sequence[str] = TABLE_POOLINGS,
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
            # the states (or, for the length control, the surface features) read as one state
            design = ProbeDesign((max(layer, 0),), (pooling if pooling in POOLINGS else "last",), kind, C)
            fitted = fit_probe(design, ProbeData(tr_x, tr_y), ProbeData(va_x, va_y), seed=seed)
            results.append(
                _score(fitted, name or kind, pooling, layer, cwe, counts, va_s, va_x, te_s, te_x, n_boot, seed)
            )
    return results


def _score(
    fitted: Probe,
    name: str,
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
    notes = list(fitted.meta.get("notes", ()))
    val_auroc: float | None = None
    val_bal = _NAN
    if val_samples:
        val_scores = fitted.score_matrix(val_x).double().numpy()
        val_metrics = compute_metrics(_predictions(val_samples, val_scores, fitted.threshold))
        val_auroc, val_bal = val_metrics.auroc, val_metrics.balanced_accuracy
    test_preds = _predictions(test_samples, fitted.score_matrix(test_x).double().numpy(), fitted.threshold)
    metrics = compute_metrics(test_preds)
    if metrics.n_vulnerable == 0 or metrics.n_secure == 0:
        only = "secure" if metrics.n_vulnerable == 0 else "vulnerable"
        notes.append(f"test has one class only ({only}): no AUROC; balanced accuracy = recall of that class")
    ci = bootstrap_ci(test_preds, "balanced_accuracy", n_boot=n_boot, seed=seed)
    return ProbeResult(
        detector=name,
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
