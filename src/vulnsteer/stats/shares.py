"""Shares: how many of a set of inputs a threshold flags, and the prior a stated share of vulnerable inputs sets.

* :func:`share_threshold`: the threshold whose flagged share on each of several datasets is nearest its vulnerable
  share (the shipped detector's threshold, chosen out of dataset).
* :func:`top_share_threshold`: the threshold that flags the highest share of one set of inputs (an adapted probe:
  its calibration data's share, or a stated prevalence).
* :func:`nearest_share`: of several options, the one whose flagged share is nearest a share (the steered model's
  strength matched to its inputs, no label read).
* :func:`check_share` and :func:`logit`: a share's range, and its log-odds (a prior's, in Bayes' rule).

No numpy at import: the scan's options check a share before anything heavy is loaded.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import ArrayLike

__all__ = ["check_share", "logit", "nearest_share", "share_threshold", "top_share_threshold"]

#: An option :func:`nearest_share` chooses among (a strength).
K = TypeVar("K")


def check_share(value: float, name: str) -> float:
    """*value* if it is a share strictly between 0 and 1 (a prevalence, a prior), else a ``ValueError`` naming
    *name*.

    >>> check_share(0.05, "--prevalence")
    0.05
    >>> check_share(1.0, "a prevalence")
    Traceback (most recent call last):
    ...
    ValueError: a prevalence must be a share in (0, 1), got 1.0
    """
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be a share in (0, 1), got {value}")
    return value


def logit(p: float) -> float:
    """The log-odds of *p* (strictly between 0 and 1).

    >>> logit(0.5)
    0.0
    """
    return math.log(p / (1.0 - p))


def share_threshold(probs: Sequence[np.ndarray], shares: Sequence[float]) -> tuple[float, float]:
    """The threshold (flagged iff ``p > t``; *probs* in any units, one array per dataset) whose largest gap between
    a dataset's flagged share and its *shares* entry is smallest (ties: nearest 0.5); returns it and that gap. The
    shipped detector's threshold (and its adaptation's fixed offset, which files without a share apply) are chosen
    so, out of dataset.

    >>> import numpy as np
    >>> t, gap = share_threshold([np.array([0.1, 0.2, 0.6, 0.7]), np.array([0.3, 0.4, 0.8, 0.9])], [0.5, 0.5])
    >>> 0.4 <= t < 0.6, gap
    (True, 0.0)
    """
    import numpy as np

    pooled = np.concatenate(list(probs))
    candidates = np.unique(np.concatenate([pooled, [0.5], (pooled[:-1] + pooled[1:]) / 2 if len(pooled) > 1 else []]))
    best, best_gap = 0.5, math.inf
    for t in candidates:
        gap = max(abs(float((p > t).mean()) - s) for p, s in zip(probs, shares, strict=True))
        if gap < best_gap - 1e-12 or (abs(gap - best_gap) <= 1e-12 and abs(t - 0.5) < abs(best - 0.5)):
            best, best_gap = float(t), gap
    return best, best_gap


def nearest_share(flagged: Mapping[K, float], share: float) -> K:
    """The key of *flagged* (an option: a strength) whose flagged share is nearest *share*; ties go to the first in
    order (give the options from the weakest). It reads no label: the shares are of the inputs flagged.

    >>> nearest_share({2.0: 0.98, 8.0: 0.61, 16.0: 0.30}, 0.45), nearest_share({2.0: 0.5, 4.0: 0.4}, 0.45)
    (16.0, 2.0)
    """
    if not flagged:
        raise ValueError("no options to choose a share from")
    return min(flagged, key=lambda k: abs(flagged[k] - share))


def top_share_threshold(scores: ArrayLike, share: float) -> float:
    """The threshold above which (``>``) the highest *share* of *scores* lie: ``round(share * n)`` of them, midway
    between the last one in and the first one out (tied scores fall on the same side, so a tie can flag fewer).
    With a share of 0 it is the highest score (nothing is above it); with every score in, just below the lowest.
    What an adapted probe flags (:meth:`~vulnsteer.steering.probe.Probe.adapted`).

    >>> top_share_threshold([0.1, 0.4, 0.3, 0.2], 0.5), top_share_threshold([0.1, 0.4], 0.0)
    (0.25, 0.4)
    """
    import numpy as np

    if not 0.0 <= share <= 1.0:
        raise ValueError(f"a share must be in [0, 1], got {share}")
    ranked = np.sort(np.asarray(scores, dtype=np.float64).ravel())[::-1]
    if not len(ranked):
        raise ValueError("no scores to choose a threshold from")
    k = round(share * len(ranked))
    if k == 0:
        return float(ranked[0])
    if k == len(ranked):
        return float(np.nextafter(ranked[-1], -np.inf))
    return float((ranked[k - 1] + ranked[k]) / 2)
