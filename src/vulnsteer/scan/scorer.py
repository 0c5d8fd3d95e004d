"""What scanning needs from a detector: a :class:`Scorer` turns functions into :class:`FunctionScore` s.

A scorer is anything with a ``digest`` (a string that changes whenever its scores could: the model and its
weights, a steering vector's bytes and strength, a probe, the prompt, the token budget; cached scores are keyed
by it), a ``provenance`` mapping (what it is, shown in SARIF ``properties`` and JSON records) and a
``score(units, progress)`` method. :class:`~vulnsteer.scan.model_scorer.ModelScorer` is the plain or steered model;
a saved detector plugs in the same way.

>>> s = FunctionScore(0.91, "vulnerable", "CWE-89", "Answer: vulnerable")
>>> FunctionScore.from_dict(s.to_dict()) == s
True
>>> scorer_digest({"model": "abc", "strength": 4.0}) == scorer_digest({"strength": 4.0, "model": "abc"})
True
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

from ..cwe import UnknownCWEError, normalize_cwe
from ..data.sample import Sample

__all__ = ["VERDICTS", "FunctionScore", "Scorer", "StaleDigestError", "scorer_digest"]

#: The verdicts a score may carry.
VERDICTS: tuple[str, ...] = ("vulnerable", "secure", "uncertain")


@dataclass(frozen=True)
class FunctionScore:
    """A scorer's result for one function.

    Attributes:
        score: P(vulnerable), in [0, 1].
        verdict: ``vulnerable``, ``secure`` or ``uncertain``.
        cwe: the weakness the scorer names (``CWE-89``), or None.
        explanation: the scorer's text (a steered model's generated answer), or None.
        truncated: the function was cut to the scorer's token budget before scoring.
        probe: a saved detector's probe score (higher = more vulnerable; its threshold is in the detector), else
            None.
        push: the gate's multiplier of the detector's steering for this function (+ = toward "vulnerable"), else
            None.
        windows: how many windows the function was read in (1: whole, or its head when *truncated*); the score
            is their aggregate, the verdict, explanation and push the top window's.
        threshold: the score at and above which the scorer's verdict is ``vulnerable`` (a probe detector's
            calibrated threshold, adapted or not; the answer's P(vulnerable) threshold), so a file's verdict can
            follow its aggregate score; None where the verdict is not a threshold on the score (a generated answer).
    """

    score: float
    verdict: str
    cwe: str | None = None
    explanation: str | None = None
    truncated: bool = False
    probe: float | None = None
    push: float | None = None
    windows: int = 1
    threshold: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.score, (int, float)) or not math.isfinite(self.score) or not 0 <= self.score <= 1:
            raise ValueError(f"score must be a probability in [0, 1], got {self.score!r}")
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")
        if self.cwe is not None:
            try:
                object.__setattr__(self, "cwe", normalize_cwe(self.cwe))
            except UnknownCWEError:  # a weakness the scorer names without a CWE id
                object.__setattr__(self, "cwe", None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FunctionScore:
        """The score a :meth:`to_dict` mapping holds; ``ValueError``/``TypeError``/``KeyError`` if it is not one."""
        return cls(
            score=float(data["score"]),
            verdict=str(data["verdict"]),
            cwe=None if data.get("cwe") is None else str(data["cwe"]),
            explanation=None if data.get("explanation") is None else str(data["explanation"]),
            truncated=bool(data.get("truncated", False)),
            probe=None if data.get("probe") is None else float(data["probe"]),
            push=None if data.get("push") is None else float(data["push"]),
            windows=int(data.get("windows", 1)),
            threshold=None if data.get("threshold") is None else float(data["threshold"]),
        )


class StaleDigestError(RuntimeError):
    """Raised by :meth:`Scorer.score` when it found its digest was wrong (a model identity recorded for the same
    files no longer matches the loaded model). The scorer has corrected its ``digest``; the caller looks the
    cache up again and rescores.

    >>> issubclass(StaleDigestError, RuntimeError)
    True
    """


@runtime_checkable
class Scorer(Protocol):
    """Scores functions; see the module docstring. ``units`` are :class:`~vulnsteer.data.sample.Sample` s whose
    ``code`` is the function with comments stripped (not yet truncated: the scorer owns its token budget) and
    whose ``language`` is set; ``cwe`` and ``label`` are placeholders. Returns one score per unit, in order.

    >>> class Always:
    ...     digest, provenance = "always-0.5", {"scorer": "always"}
    ...     def score(self, units, progress=True):
    ...         return [FunctionScore(0.5, "uncertain") for _ in units]
    >>> isinstance(Always(), Scorer)
    True
    """

    @property
    def digest(self) -> str: ...

    @property
    def provenance(self) -> Mapping[str, Any]: ...

    def score(self, units: Sequence[Sample], progress: bool = True) -> list[FunctionScore]: ...


def scorer_digest(parts: Mapping[str, Any]) -> str:
    """A stable hex digest of a scorer's identity (a JSON-able mapping; key order does not matter)."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]
