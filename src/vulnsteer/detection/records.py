"""Detection records: one sample's result in one mode (what every detector returns)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..stats.metrics import Prediction

__all__ = ["DetectionRecord", "record_from_dict", "records_to_predictions"]

_LABEL_TO_Y = {"vulnerable": 1, "secure": 0, "uncertain": -1}


@dataclass(frozen=True)
class DetectionRecord:
    """One sample's detection result. ``text`` holds the full generated answer (generation mode).

    >>> r = DetectionRecord("q1-v", "CWE-89", "q1", 1, "secure", score=0.2)
    >>> r.y_pred, r.to_prediction().correct
    (0, False)
    """

    sample_id: str
    cwe: str
    pair_id: str | None
    y_true: int
    verdict: str
    score: float | None = None
    margin: float | None = None
    text: str | None = None
    named_cwe: str | None = None
    #: conditional steering: the gate's multiplier for this input (+ = pushed toward "vulnerable"), else None
    push: float | None = None
    #: conditional steering: the gating probe's score for this input (higher = more vulnerable), else None
    gate_score: float | None = None

    @property
    def y_pred(self) -> int:
        return _LABEL_TO_Y[self.verdict]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["y_pred"] = self.y_pred
        return data

    def to_prediction(self) -> Prediction:
        return Prediction(self.sample_id, self.cwe, self.pair_id, self.y_true, self.y_pred, self.score)


def records_to_predictions(records: Sequence[DetectionRecord]) -> list[Prediction]:
    return [r.to_prediction() for r in records]


def record_from_dict(data: dict[str, Any]) -> DetectionRecord:
    """A record from its :meth:`DetectionRecord.to_dict` form (extra keys such as ``y_pred`` ignored)."""
    names = set(DetectionRecord.__dataclass_fields__)
    return DetectionRecord(**{k: v for k, v in data.items() if k in names})
