"""Fitting probes (:class:`~vulnsteer.steering.probe.Probe`, one type for every use).

:func:`fit_probe` fits a :class:`~vulnsteer.steering.probe.ProbeDesign` on train (one :class:`ProbeData` part per
dataset) and chooses its threshold, spread, Platt calibration and adaptation on val (:func:`rethreshold`); the
design conditional steering has always used (one layer, one pooling, logistic with ``C = 0.1`` or the class-mean
direction) gives exactly the numbers it always gave. :func:`choose_threshold` is the val rule every threshold
follows. Probes read alone as detectors, the report's table of probes: :mod:`vulnsteer.detection.probe_table`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray

from ..config.design import DEFAULT_C, ProbeDesign, Read
from ..data.sample import Sample
from ..lm.activations import Activations
from ..steering.probe import Adaptation, Calibration, Probe, log_lengths

__all__ = [
    "DEFAULT_C",
    "ProbeData",
    "choose_threshold",
    "class_separation",
    "fit_logistic_probe",
    "fit_probe",
    "platt",
    "probe_data",
    "rethreshold",
    "states_matrix",
]

_TIE_TOL = 1e-12


# ------------------------------------------------------------------------------------------ data


@dataclass(frozen=True)
class ProbeData:
    """One dataset's part of a fit or a threshold: the design's states side by side (``[n, len(reads) * hidden]``),
    the labels (1 = vulnerable), the code-token counts (for the length term), the pair ids (for pair-difference
    training) and the code (for a bag-of-tokens term; empty when no design reads it). Several parts are several
    datasets (standardised on their own with ``per_dataset``; centred on their own for the adapted threshold)."""

    x: torch.Tensor
    y: NDArray[np.int64]
    lengths: torch.Tensor | None = None
    pairs: tuple[str | None, ...] = ()
    name: str = ""
    codes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "y", np.asarray(self.y, dtype=np.int64).ravel())
        if self.codes and len(self.codes) != len(self.y):
            raise ValueError(f"probe data: {len(self.codes)} codes for {len(self.y)} labels")
        if self.x.ndim != 2 or self.x.shape[0] != len(self.y):
            raise ValueError(f"probe data: {tuple(self.x.shape)} states for {len(self.y)} labels")
        if self.lengths is not None and len(self.lengths) != len(self.y):
            raise ValueError(f"probe data: {len(self.lengths)} lengths for {len(self.y)} labels")

    def __len__(self) -> int:
        return len(self.y)

    def rows(self, indices: Sequence[int]) -> ProbeData:
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        return ProbeData(
            self.x.index_select(0, idx),
            self.y[np.asarray(list(indices), dtype=np.int64)],
            None if self.lengths is None else self.lengths.index_select(0, idx),
            tuple(self.pairs[i] for i in indices) if self.pairs else (),
            self.name,
            tuple(self.codes[i] for i in indices) if self.codes else (),
        )


def states_matrix(states: Mapping[Read, torch.Tensor], reads: Sequence[Read]) -> torch.Tensor:
    """The states a design reads side by side, float32 (the order :class:`Probe` weights them in)."""
    parts = [states[r].detach().to("cpu", torch.float32) for r in reads]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)


def probe_data(
    design: ProbeDesign,
    acts: Activations,
    samples: Sequence[Sample],
    lengths: torch.Tensor | Sequence[int] | None = None,
    name: str = "",
) -> ProbeData:
    """*samples*' part of a fit from their activations (every layer and pooling *design* reads); *lengths*: their
    code-token counts (needed by a design with a length term)."""
    if [s.id for s in samples] != list(acts.sample_ids):
        raise ValueError(f"{name or 'probe data'}: samples do not match the activations (ids or order differ)")
    x = states_matrix({(layer, p): acts.get(p, layer) for layer, p in design.reads}, design.reads)
    counts = None if lengths is None else torch.as_tensor(lengths, dtype=torch.float32)
    return ProbeData(x, np.array([s.y for s in samples], dtype=np.int64), counts, tuple(s.pair_id for s in samples),
                     name, tuple(s.code for s in samples))  # fmt: skip


def _joined(parts: Sequence[ProbeData]) -> ProbeData:
    if len(parts) == 1:
        return parts[0]
    lengths = None if any(p.lengths is None for p in parts) else torch.cat([p.lengths for p in parts])  # type: ignore[misc]
    pairs = tuple(
        f"{k}:{pid}" if pid is not None else None for k, p in enumerate(parts) for pid in (p.pairs or (None,) * len(p))
    )
    codes = tuple(c for p in parts for c in p.codes) if all(p.codes for p in parts) else ()
    return ProbeData(torch.cat([p.x for p in parts]), np.concatenate([p.y for p in parts]), lengths, pairs, "", codes)


# ------------------------------------------------------------------------------------------ fitting


def fit_logistic_probe(
    train_x: ArrayLike | torch.Tensor, train_y: ArrayLike, C: float = DEFAULT_C, seed: int = 0
) -> Any:
    """A fitted ``StandardScaler + LogisticRegression`` pipeline (y = 1 vulnerable); deterministic.

    L2-regularised (``C``), lbfgs, fixed ``random_state``. Its ``decision_function`` is the log-odds of
    *vulnerable* (higher = more vulnerable, 0 = decision boundary); :func:`fit_probe` folds it into a probe.
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


@dataclass(frozen=True)
class _Linear:
    """A fitted linear score in the states' own space: ``x @ weight + bias - length_weight * (l - length_centre)``."""

    weight: torch.Tensor
    bias: float
    length_weight: float = 0.0
    length_centre: float = 0.0

    def scores(self, x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        out = x.detach().to("cpu", torch.float32) @ self.weight + self.bias
        if self.length_weight:
            assert lengths is not None
            out = out - self.length_weight * (log_lengths(lengths) - self.length_centre)
        return out


def _pair_differences(
    z: NDArray[np.float64], y: NDArray[np.int64], pairs: Sequence[str | None]
) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """Vulnerable-minus-fixed differences of every (vulnerable, secure) combination within a pair, and their
    negatives (labels 1 and 0)."""
    by: dict[str, tuple[list[int], list[int]]] = {}
    for i, (pid, label) in enumerate(zip(pairs or (None,) * len(y), y, strict=True)):
        if pid is not None:
            by.setdefault(pid, ([], []))[0 if label == 1 else 1].append(i)
    rows = [z[v] - z[s] for vul, sec in by.values() for v in vul for s in sec]
    if not rows:
        raise ValueError("pair-difference training needs pairs with a vulnerable and a fixed half in train")
    d = np.stack(rows)
    return np.concatenate([d, -d]), np.concatenate([np.ones(len(d), np.int64), np.zeros(len(d), np.int64)])


def _fit_linear(design: ProbeDesign, parts: Sequence[ProbeData], seed: int) -> _Linear:
    """One linear probe of *design*'s kind on the training *parts* (every column of their states), folded back
    into the states' space. The design with none of the options (global standardisation, no length term, no
    pairs) is exactly the probe conditional steering has always fitted."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    data = _joined(parts)
    y = data.y
    if min(int((y == 1).sum()), int((y == 0).sum())) < 1:
        raise ValueError(f"a {design.kind} probe needs both classes in train ({len(y)} samples)")
    plain = not design.per_dataset and design.length == "none" and not design.pairs
    if plain and design.kind == "logistic":
        pipe = fit_logistic_probe(data.x, y, C=design.C, seed=seed)
        scaler, clf = pipe.steps[0][1], pipe.steps[1][1]
        coef = clf.coef_[0] / scaler.scale_
        return _Linear(
            torch.as_tensor(coef, dtype=torch.float32), float(clf.intercept_[0] - float(np.dot(scaler.mean_, coef)))
        )
    if plain:  # the class-mean difference, in float32 as it always was
        x, vul = data.x.float(), torch.as_tensor(y == 1)
        mean_v, mean_s = x[vul].mean(0), x[~vul].mean(0)
        unit = (mean_v - mean_s) / (mean_v - mean_s).norm().clamp(min=1e-12)
        return _Linear(unit, float(-(unit @ ((mean_v + mean_s) / 2))))
    # 1. per-dataset standardisation: each training dataset on its own; unseen data by the mean centre and scale
    xs = [_as_numpy(p.x) for p in parts]
    if design.per_dataset:
        mus = [x.mean(0) for x in xs]
        sds = [np.where(x.std(0) > 0, x.std(0), 1.0) for x in xs]
        z = np.concatenate([(x - m) / s for x, m, s in zip(xs, mus, sds, strict=True)])
        mu, sd = np.mean(mus, axis=0), np.mean(sds, axis=0)
    else:
        z, mu, sd = np.concatenate(xs), np.zeros(xs[0].shape[1]), np.ones(xs[0].shape[1])
    # 2. the logistic probe's own standardisation (none for the direction)
    if design.kind == "logistic":
        scaler = StandardScaler().fit(z)
        m, s = scaler.mean_, scaler.scale_
    else:
        m, s = np.zeros(z.shape[1]), np.ones(z.shape[1])
    zs = (z - m) / s
    # 3. length: residualise every column on the centred log length, or fit it as a covariate (dropped in scoring)
    centre, slope = 0.0, np.zeros(zs.shape[1])
    fit_z = zs
    if design.length != "none":
        if data.lengths is None:
            raise ValueError(f"the probe design {design.key} reads length: give the code-token counts")
        ll = log_lengths(data.lengths).double().numpy()
        centre = float(ll.mean())
        lc = ll - centre
        if design.length == "residual" and float(lc @ lc) > 0:
            slope = (lc @ zs) / float(lc @ lc)
            zs = zs - np.outer(lc, slope)
            fit_z = zs
        elif design.length == "covariate":
            fit_z = np.concatenate([zs, (lc / (lc.std() or 1.0))[:, None]], axis=1)
    # 4. the probe
    if design.kind == "logistic" and design.pairs:
        d, dy = _pair_differences(zs, y, data.pairs)
        clf = LogisticRegression(C=design.C, fit_intercept=False, max_iter=5000, random_state=seed).fit(d, dy)
        w = clf.coef_[0][: zs.shape[1]]
        b = -float(np.mean(zs @ w))
    elif design.kind == "logistic":
        clf = LogisticRegression(C=design.C, max_iter=5000, random_state=seed).fit(fit_z, y)
        w, b = clf.coef_[0][: zs.shape[1]], float(clf.intercept_[0])
    else:
        if design.pairs:
            d, dy = _pair_differences(zs, y, data.pairs)
            diff = d[dy == 1].mean(0)
        else:
            diff = zs[y == 1].mean(0) - zs[y == 0].mean(0)
        w = diff / max(float(np.linalg.norm(diff)), 1e-12)
        b = -float(((zs[y == 1].mean(0) + zs[y == 0].mean(0)) / 2) @ w)
    # 5. fold back: score = ((x - mu) / sd - m) / s @ w + b - (l - centre) * (slope @ w)
    coef = w / s / sd
    bias = b - float(np.dot(m / s, w)) - float(np.dot(mu, coef))
    return _Linear(torch.as_tensor(coef, dtype=torch.float32), bias, float(slope @ w), centre)


def _combined(design: ProbeDesign, parts: Sequence[ProbeData], seed: int, hidden: int) -> _Linear:
    """The design's probe: one linear probe over every read state, or (``ensemble``) the mean of one probe per
    layer, each standardised by its training scores (still one linear probe over the states)."""
    if design.combine == "concat":
        return _fit_linear(design, parts, seed)
    width = hidden * len(design.poolings)
    weights, bias, length_weight, centre = [], 0.0, 0.0, 0.0
    k = len(design.layers)
    for i, layer in enumerate(design.layers):
        cols = slice(i * width, (i + 1) * width)
        sub = [dataclasses.replace(p, x=p.x[:, cols]) for p in parts]
        one = _fit_linear(dataclasses.replace(design, layers=(layer,), combine="concat"), sub, seed)
        train = torch.cat([one.scores(p.x, p.lengths) for p in sub]).double()
        mean, std = float(train.mean()), float(train.std(unbiased=False)) or 1.0
        weights.append(one.weight / (std * k))
        bias += (one.bias - mean) / (std * k)
        length_weight += one.length_weight / (std * k)
        centre = one.length_centre
    return _Linear(torch.cat(weights), bias, length_weight, centre)


def platt(
    scores: ArrayLike, y: ArrayLike, threshold: float, spread: float, weights: ArrayLike | None = None
) -> Calibration:
    """Platt scaling of *scores* to P(vulnerable), fitted on (val) *scores* / *y* (each weighted by *weights*, if
    given); with one class, the logistic curve through the *threshold* with the *spread* as its scale (0.5 at the
    threshold)."""
    from sklearn.linear_model import LogisticRegression

    s = np.asarray(scores, dtype=np.float64).reshape(-1, 1)
    labels = np.asarray(y, dtype=np.int64).ravel()
    if len(np.unique(labels)) < 2:
        return Calibration(1.0 / spread, -threshold / spread)
    w = None if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    clf = LogisticRegression(C=1e6, max_iter=1000).fit(s, labels, sample_weight=w)
    return Calibration(float(clf.coef_[0][0]), float(clf.intercept_[0]))


def class_separation(
    scores: ArrayLike, y: ArrayLike, weights: ArrayLike | None = None
) -> tuple[float | None, float | None]:
    """The vulnerable share of (val) *scores* and their class-mean separation (vulnerable minus secure), each input
    weighted by *weights* if given: what an :class:`~vulnsteer.steering.probe.Adaptation` needs to adapt to a
    stated prevalence. ``(None, None)`` with one class.

    >>> class_separation([0.0, 1.0, 3.0], [0, 0, 1])
    (0.3333333333333333, 2.5)
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(y, dtype=np.int64).ravel()
    w = np.ones_like(s) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    vulnerable = labels == 1
    if vulnerable.all() or not vulnerable.any():
        return None, None
    share = float(w[vulnerable].sum() / w.sum())
    separation = float(
        np.average(s[vulnerable], weights=w[vulnerable]) - np.average(s[~vulnerable], weights=w[~vulnerable])
    )
    return share, separation


def _threshold_spread(scores: torch.Tensor, y: NDArray[np.int64]) -> tuple[float, float]:
    """The threshold chosen on these (val) scores (balanced accuracy, ties to 0; 0 with one class) and their
    standard deviation."""
    threshold = choose_threshold(scores.numpy(), y, reference=0.0) if len(np.unique(y)) == 2 else 0.0
    spread = float(scores.std(unbiased=False)) if len(scores) > 1 else 1.0
    return threshold, spread


def rethreshold(probe: Probe, val: ProbeData | Sequence[ProbeData]) -> Probe:
    """*probe* with its threshold, spread and calibration chosen on *val* (balanced accuracy, ties to its natural
    threshold 0; threshold 0 when val has one class), and its adaptation: the same chosen on the val scores of
    each part centred on their own mean. The weights are untouched."""
    parts = [val] if isinstance(val, ProbeData) else list(val)
    scores = [probe.score_matrix(p.x, p.lengths, p.codes) for p in parts]
    y = np.concatenate([p.y for p in parts]) if parts else np.zeros(0, np.int64)
    joined = torch.cat(scores) if scores else torch.zeros(0)
    threshold, spread = _threshold_spread(joined, y)
    centred = torch.cat([s - s.double().mean().float() for s in scores if len(s)]) if len(joined) else joined
    a_threshold, a_spread = _threshold_spread(centred, y)
    share, separation = class_separation(centred.numpy(), y)
    adaptation = Adaptation(
        a_threshold, a_spread, platt(centred.numpy(), y, a_threshold, a_spread), share=share, separation=separation
    )
    calibration = platt(joined.numpy(), y, threshold, spread)
    return dataclasses.replace(
        probe, threshold=threshold, spread=spread, calibration=calibration, adaptation=adaptation
    )


def _val_notes(y: NDArray[np.int64]) -> list[str]:
    """What a threshold chosen on val with labels *y* cannot do."""
    if len(np.unique(y)) == 2:
        return []
    what = "no val samples" if len(y) == 0 else f"val has one class only ({_class_name(int(y[0]))})"
    return [f"{what}: threshold 0 (train midpoint / decision boundary), not tuned"]


def fit_probe(
    design: ProbeDesign,
    train: ProbeData | Sequence[ProbeData],
    val: ProbeData | Sequence[ProbeData],
    *,
    seed: int = 0,
    meta: Mapping[str, Any] | None = None,
) -> Probe:
    """A *design* fitted on *train* (one part per dataset), its threshold, spread, calibration and adaptation
    chosen on *val* (:func:`rethreshold`); the test split is not an argument. Each part's states are the design's
    reads side by side (:func:`probe_data`).

    >>> x = torch.tensor([[1.0, 0.2], [1.2, -0.1], [-1.0, 0.1], [-0.9, 0.0]])
    >>> data = ProbeData(x, np.array([1, 1, 0, 0]))
    >>> probe = fit_probe(ProbeDesign((18,), ("code_mean",), C=1.0), data, data)
    >>> probe.key, (probe.score_matrix(x) > probe.threshold).tolist()
    ('logistic@code_mean@L18|C=1', [True, True, False, False])
    """
    parts = [train] if isinstance(train, ProbeData) else list(train)
    if not parts:
        raise ValueError("a probe needs training data")
    width = parts[0].x.shape[1]
    if width % len(design.reads):
        raise ValueError(f"{width} state columns do not split into the design's {len(design.reads)} reads")
    fitted = _combined(design, parts, seed, width // len(design.reads))
    vals = [val] if isinstance(val, ProbeData) else list(val)
    notes = _val_notes(np.concatenate([v.y for v in vals]) if vals else np.zeros(0, np.int64))
    info = {"n_train": sum(len(p) for p in parts), "n_val": sum(len(v) for v in vals), **(meta or {})}
    states_only = dataclasses.replace(design, tokens=0.0)
    probe = Probe(states_only, fitted.weight, fitted.bias, 0.0, 1.0, fitted.length_weight, fitted.length_centre,
                  name=design.kind, meta={**info, **({"notes": notes} if notes else {})})  # fmt: skip
    if design.reads_code:
        probe = _with_lexical(probe, design, parts, vals)
    return rethreshold(probe, vals)


def _with_lexical(probe: Probe, design: ProbeDesign, parts: Sequence[ProbeData], vals: Sequence[ProbeData]) -> Probe:
    """*probe* (fitted on the states alone) with *design*'s bag-of-tokens term: fitted on the training parts' code,
    scaled so its val spread is ``design.tokens`` times the probe's (its own on train when val is too small)."""
    from ..stats.lexical import LexicalModel

    data = _joined(parts)
    if not data.codes:
        raise ValueError(f"design {design.key} has a bag-of-tokens term: its training data needs the code's text")
    lexical = LexicalModel.fit(data.codes, data.y, C=design.tokens_C)
    scale = [v for v in vals if v.codes] if sum(len(v) for v in vals if v.codes) > 1 else [data]
    probe_spread = float(torch.cat([probe.score_matrix(v.x, v.lengths) for v in scale]).std(unbiased=False))
    lexical_spread = float(np.concatenate([lexical.scores(v.codes) for v in scale]).std())
    factor = design.tokens * (probe_spread or 1.0) / (lexical_spread or 1.0)
    return dataclasses.replace(probe, design=design, lexical=lexical.scaled(factor))


def _class_name(y: int) -> str:
    return "vulnerable" if y == 1 else "secure"


# ------------------------------------------------------------------------------------------ threshold


def choose_threshold(scores: ArrayLike, y: ArrayLike, reference: float | None = None) -> float:
    """The threshold (vulnerable iff ``score > t``) that maximises balanced accuracy on *scores* / *y*.

    Meant for the **val** split only. Every distinct prediction is one cell of the real line between
    consecutive distinct scores; among the cells with the best balanced accuracy (ties within 1e-12), the one
    nearest *reference* wins: *reference* itself if it lies in a best cell, otherwise the midpoint of the
    nearest best cell (the outer cells are represented half a typical gap beyond the extreme scores).
    *reference* defaults to the median score; :func:`fit_probe` passes 0, the score's natural threshold.

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
