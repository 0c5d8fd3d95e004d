"""Fitting the probes that gate conditional steering: train -> weights, val -> threshold and spread.

The result is a :class:`~vulnsteer.steering.gate.LinearProbe` in hidden-state space (a logistic probe's scaler is
folded into its weights), so a gate scores a prompt with one dot product. The test split is not an argument of
anything here.

>>> import torch
>>> g = torch.Generator().manual_seed(0)
>>> x = torch.randn(40, 8, generator=g)
>>> y = (x[:, 0] > 0).long()
>>> probe = fit_condition_probe("logistic", x[:30], y[:30], x[30:], y[30:], layer=4, pooling="code_mean")
>>> probe.key, float((probe.verdicts(x[30:]) == y[30:]).float().mean()) >= 0.8
('logistic@code_mean@L4', True)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..config.vocabulary import PROBE_KINDS
from ..steering.gate import LinearProbe
from .probe import DEFAULT_C, choose_threshold, fit_logistic_probe

__all__ = ["fit_condition_probe", "rethreshold"]


def _weights(kind: str, x: torch.Tensor, y: torch.Tensor, C: float, seed: int) -> tuple[torch.Tensor, float]:
    """``(weight, bias)`` with ``score = x @ weight + bias``, higher = more vulnerable."""
    if kind == "logistic":
        pipe = fit_logistic_probe(x, y.numpy(), C=C, seed=seed)
        scaler, clf = pipe.steps[0][1], pipe.steps[1][1]
        coef = clf.coef_[0] / scaler.scale_
        weight = torch.as_tensor(coef, dtype=torch.float32)
        bias = float(clf.intercept_[0] - float(np.dot(scaler.mean_, coef)))
        return weight, bias
    if kind == "direction":
        vul = y.bool()
        mean_v, mean_s = x[vul].float().mean(0), x[~vul].float().mean(0)
        d = mean_v - mean_s  # points toward vulnerable: higher = more vulnerable
        unit = d / d.norm().clamp(min=1e-12)
        return unit, float(-(unit @ ((mean_v + mean_s) / 2)))
    raise ValueError(f"unknown probe kind {kind!r}; choose from {', '.join(PROBE_KINDS)}")


def rethreshold(probe: LinearProbe, val_x: torch.Tensor, val_y: torch.Tensor) -> LinearProbe:
    """*probe* with its threshold chosen on val (balanced accuracy, ties to its natural threshold 0) and its spread
    set to the standard deviation of its val scores; unchanged threshold when val has one class."""
    scores = probe.scores(val_x)
    y = val_y.numpy()
    threshold = choose_threshold(scores.numpy(), y, reference=0.0) if len(np.unique(y)) == 2 else 0.0
    spread = float(scores.std(unbiased=False)) if len(scores) > 1 else 1.0
    return LinearProbe(probe.layer, probe.pooling, probe.weight, probe.bias, threshold, spread, probe.name,
                       dict(probe.meta))  # fmt: skip


def fit_condition_probe(
    kind: str,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    *,
    layer: int,
    pooling: str,
    C: float = DEFAULT_C,
    seed: int = 0,
    meta: dict[str, Any] | None = None,
) -> LinearProbe:
    """Fit a *kind* probe (``logistic`` or ``direction``) on train; threshold and spread from val."""
    if len(torch.unique(train_y)) < 2:
        raise ValueError(f"a {kind} probe needs both classes in train ({len(train_y)} samples)")
    weight, bias = _weights(kind, train_x.float(), train_y.long(), C, seed)
    probe = LinearProbe(layer, pooling, weight, bias, 0.0, 1.0, kind,
                        {"n_train": len(train_y), "n_val": len(val_y), **(meta or {})})  # fmt: skip
    return rethreshold(probe, val_x.float(), val_y.long())
