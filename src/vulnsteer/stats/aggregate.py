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

Which of a file's functions its score reads (:data:`~vulnsteer.config.vocabulary.FILE_FUNCTIONS`,
:func:`read_members`): with ``differing``, a function that exactly one other scored file also has is left out of
both files' scores where a file has other functions. Two versions of one file (a vulnerable file and its fix)
share every function the fix left alone; those add the same value to both files, which pulls the two scores
together (a smooth maximum of probabilities stays near their mean), so each is read by what tells it from the
other. A function three or more files share is a helper they all call, and it counts for each of them.

>>> read_members([["f", "g"], ["f", "h"], ["k"]], "differing")
[[1], [1], [0]]
>>> read_members([["f"], ["f"]], "differing"), read_members([["f", "g"], ["f", "h"]], "all")
([[0], [0]], [[0, 1], [0, 1]])
>>> read_members([["f", "g"], ["f", "h"], ["f", "k"]], "differing")  # (a helper of three files counts)
[[0, 1], [0, 1], [0, 1]]
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Sequence

from ..config.vocabulary import AGGREGATIONS, FILE_FUNCTIONS

__all__ = ["aggregate", "check_aggregation", "read_members", "top_index"]

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


def read_members(files: Sequence[Sequence[Hashable]], rule: str) -> list[list[int]]:
    """For each file (its members' keys: a function's language and code), the indices of the members its score
    reads by *rule* (one of :data:`~vulnsteer.config.vocabulary.FILE_FUNCTIONS`; see the module docstring):
    ``all``, every one; ``differing``, those whose key no other file has or at least two others have, or every
    one where that leaves none."""
    if rule not in FILE_FUNCTIONS:
        raise ValueError(f"file functions must be one of {', '.join(FILE_FUNCTIONS)}, got {rule!r}")
    everything = [list(range(len(members))) for members in files]
    if rule == "all":
        return everything
    holders = Counter(key for members in files for key in set(members))
    out = []
    for members, indices in zip(files, everything, strict=True):
        kept = [i for i in indices if holders[members[i]] != 2]
        out.append(kept or indices)
    return out
