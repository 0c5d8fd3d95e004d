"""Aggregating the scores of a sample's pieces into the sample's score (:data:`~vulnsteer.config.vocabulary.
AGGREGATIONS`): a whole file is scored as its functions, a function longer than the token budget as its windows,
and the pieces' scores add up to one score by one of these rules.

* ``max``: the riskiest piece decides (a file is as risky as its riskiest function). Two versions of a file that
  differ only in a function that is not the riskiest tie.
* ``top2_mean`` / ``top3_mean``: the mean of the two / three highest scores (all of them when there are fewer): still
  led by the riskiest pieces, but a change in the second or third one moves the score.
* ``mean``: every piece counts the same; strictly increasing in each, so a changed function always moves the
  score, while one risky function among many unchanged ones moves it little.
* ``logsumexp``: ``log(mean(exp(v)))``, a smooth maximum at unit temperature (the log-sum-exp less ``log n``, so a
  file does not score higher for having more functions): between the mean and the highest, led by the riskiest
  pieces, and strictly increasing in every piece, so two versions of a file that differ in one function never tie
  (``max`` tied 60-87% of such pairs in the issue-17 research, ``research/FINDINGS.md``). On probabilities (0-1)
  it stays near the mean; on margins and probe scores (spread over several units) it nears the highest. The
  default (:data:`~vulnsteer.config.defaults.DEFAULT_AGGREGATION`).

>>> aggregate([0.2, 0.9, 0.4], "max"), aggregate([0.2, 0.9, 0.4], "top2_mean"), aggregate([0.2, 0.9, 0.4], "mean")
(0.9, 0.65, 0.5)
>>> round(aggregate([0.0, 4.0], "logsumexp"), 3), aggregate([2.5, 2.5], "logsumexp")
(3.325, 2.5)
>>> top_index([0.2, 0.9, 0.4])
1
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..config.vocabulary import AGGREGATIONS

__all__ = ["aggregate", "check_aggregation", "top_index"]

_TOP_K = {"top2_mean": 2, "top3_mean": 3}


def check_aggregation(how: str, where: str = "aggregation") -> str:
    """*how* if it is one of :data:`~vulnsteer.config.vocabulary.AGGREGATIONS`, else a ``ValueError`` naming *where*.

    >>> check_aggregation("median", "--aggregation")
    Traceback (most recent call last):
    ...
    ValueError: --aggregation must be one of logsumexp, max, top2_mean, top3_mean, mean, got 'median'
    """
    if how not in AGGREGATIONS:
        raise ValueError(f"{where} must be one of {', '.join(AGGREGATIONS)}, got {how!r}")
    return how


def aggregate(values: Sequence[float], how: str) -> float:
    """The aggregate of *values* (at least one, all finite) by rule *how* (see the module docstring)."""
    check_aggregation(how)
    if not values:
        raise ValueError("aggregate: no values")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"aggregate: values must be finite, got {list(values)}")
    if how == "max":
        return max(values)
    if how == "mean":
        return math.fsum(values) / len(values)
    if how == "logsumexp":
        top = max(values)  # (shifted by the highest: exp never overflows)
        return top + math.log(math.fsum(math.exp(v - top) for v in values) / len(values))
    highest = sorted(values, reverse=True)[: _TOP_K[how]]
    return math.fsum(highest) / len(highest)


def top_index(values: Sequence[float]) -> int:
    """The index of the highest value (the first of equal ones): the piece a sample's verdict comes from."""
    if not values:
        raise ValueError("top_index: no values")
    return max(range(len(values)), key=lambda i: (values[i], -i))
