"""Comparisons of detector runs: metric blocks with CIs, paired change vs a baseline, and the sentence that says
whether a change is real.

Works on anything that turns into a :class:`~vulnsteer.stats.metrics.Prediction` (detection records do).

>>> from vulnsteer.stats.metrics import Prediction
>>> base = [Prediction("a", "CWE-89", "p", 1, 1), Prediction("b", "CWE-89", "p", 0, 1)]
>>> better = [Prediction("a", "CWE-89", "p", 1, 1), Prediction("b", "CWE-89", "p", 0, 0)]
>>> compare_to_baseline(base, better, ["CWE-89"], n_boot=50)["CWE-89"]["delta_balanced_accuracy"]
0.5
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

from .metrics import Prediction, bootstrap_ci, bootstrap_diff_ci, compute_metrics, mcnemar_exact

__all__ = [
    "ALPHA",
    "N_BOOT",
    "Scored",
    "compare_to_baseline",
    "metrics_block",
    "significant",
    "significant_gain",
    "summarize_metrics",
    "verdict_words",
]

#: Bootstrap replicates behind every reported interval.
N_BOOT = 1000


class Scored(Protocol):
    """What the comparisons read: a prediction (and, for logit mode, the answer margin)."""

    @property
    def cwe(self) -> str: ...

    @property
    def margin(self) -> float | None: ...

    def to_prediction(self) -> Prediction: ...


def _prediction(item: Scored | Prediction) -> Prediction:
    return item if isinstance(item, Prediction) else item.to_prediction()


def metrics_block(records: Sequence[Scored | Prediction], seed: int = 0, n_boot: int = N_BOOT) -> dict[str, Any]:
    """Every metric of *records*, pair-bootstrap CIs of balanced accuracy and (where every record has a score)
    AUROC, and the mean answer margin."""
    preds = [_prediction(r) for r in records]
    found = compute_metrics(preds)
    metrics = found.to_dict()
    metrics["balanced_accuracy_ci"] = list(bootstrap_ci(preds, "balanced_accuracy", n_boot=n_boot, seed=seed))
    if found.auroc is not None:
        metrics["auroc_ci"] = list(bootstrap_ci(preds, "auroc", n_boot=n_boot, seed=seed))
    margins = [m for r in records if (m := getattr(r, "margin", None)) is not None]
    # logp(" vulnerable") - logp(" secure"): shows which way a steered setting really pushes the answer
    metrics["mean_margin"] = sum(margins) / len(margins) if margins else None
    return metrics


def summarize_metrics(records: Sequence[Scored], cwes: Sequence[str], seed: int = 0) -> dict[str, Any]:
    """:func:`metrics_block` per CWE and ``overall``."""
    out: dict[str, Any] = {}
    for cwe in cwes:
        subset = [r for r in records if r.cwe == cwe]
        if subset:
            out[cwe] = metrics_block(subset, seed)
    if records:
        out["overall"] = metrics_block(records, seed)
    return out


def compare_to_baseline(
    base: Sequence[Scored | Prediction],
    other: Sequence[Scored | Prediction],
    cwes: Sequence[str],
    seed: int = 0,
    n_boot: int = N_BOOT,
) -> dict[str, Any]:
    """Per CWE and overall: the balanced-accuracy change with a paired bootstrap CI, and McNemar's exact p
    (``mcnemar_b``: right before, wrong after; ``mcnemar_c``: wrong before, right after)."""
    out: dict[str, Any] = {}
    for cwe in [*cwes, "overall"]:
        b = [p for p in map(_prediction, base) if cwe == "overall" or p.cwe == cwe]
        o = [p for p in map(_prediction, other) if cwe == "overall" or p.cwe == cwe]
        if not b or {p.sample_id for p in b} != {p.sample_id for p in o}:
            continue
        diff = compute_metrics(o).balanced_accuracy - compute_metrics(b).balanced_accuracy
        lo, hi = bootstrap_diff_ci(b, o, "balanced_accuracy", n_boot=n_boot, seed=seed)
        test = mcnemar_exact(b, o)
        out[cwe] = {
            "delta_balanced_accuracy": diff,
            "delta_ci": [lo, hi],
            "mcnemar_p": test.p_value,
            "mcnemar_b": test.b,
            "mcnemar_c": test.c,
        }
    return out


#: McNemar's p below which a paired change counts, together with a 95% bootstrap CI that excludes 0.
ALPHA = 0.05


def significant(ci: Sequence[float], p: float) -> bool:
    """A paired change that counts, either way: McNemar's p below :data:`ALPHA` and a CI that excludes 0.

    >>> significant((0.1, 0.4), 0.01), significant((-0.4, -0.1), 0.01), significant((0.1, 0.4), 0.3)
    (True, True, False)
    """
    return p < ALPHA and (ci[0] > 0 or ci[1] < 0)


def significant_gain(ci: Sequence[float], p: float) -> bool:
    """A paired gain that counts: McNemar's p below :data:`ALPHA` and a CI wholly above 0 (what "beat" means in
    the lead table's words and the report's answer).

    >>> significant_gain((0.04, 0.29), 0.344), significant_gain((0.04, 0.29), 0.01)
    (False, True)
    """
    return p < ALPHA and ci[0] > 0


def verdict_words(
    delta: float,
    ci: Sequence[float],
    p: float,
    control_delta: float | None,
    where: str = "test",
    flips: tuple[int, int] | None = None,
) -> str:
    """One plain sentence: is the change real, and does it beat the random control?

    >>> for part in verdict_words(0.25, [0.1, 0.4], 0.01, 0.0).split("; "):
    ...     print(part)
    gain of +0.250 balanced accuracy is significant (p=0.01, 95% CI [+0.100, +0.400])
    beats the random-direction control (+0.000)
    """
    if any(math.isnan(x) for x in (delta, *ci)):
        return "not measurable"
    if delta == 0:
        moved = f" ({flips[0]} answers became wrong, {flips[1]} became right)" if flips else ""
        return f"the chosen setting left balanced accuracy on {where} unchanged (Δ 0.000){moved}"
    sig = significant(ci, p)
    direction = "gain" if delta > 0 else "loss"
    parts = [
        f"{direction} of {delta:+.3f} balanced accuracy is {'significant' if sig else 'not significant'} "
        f"(p={p:.3g}, 95% CI [{ci[0]:+.3f}, {ci[1]:+.3f}])"
    ]
    if control_delta is not None:
        beats = delta > control_delta
        parts.append(f"{'beats' if beats else 'does not beat'} the random-direction control ({control_delta:+.3f})")
    return "; ".join(parts)
