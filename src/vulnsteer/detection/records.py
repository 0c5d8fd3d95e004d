"""Detection records: one sample's result in one mode (what every detector returns).

A sample scored as several pieces (:class:`~vulnsteer.data.units.Units`: a whole file's functions, a long
function's windows) gets one record from its pieces' (:func:`aggregate_records`). Its score, margin and
gating-probe score are its pieces' aggregated by one rule (:mod:`vulnsteer.stats.aggregate`), the windows of a
function first, then the functions. **Its verdict follows its score** where the pieces' verdicts did: when every
piece carries the same ``threshold`` (its verdict was "vulnerable" exactly when its score was at or above it: the
answer's P(vulnerable) threshold, a probe's threshold), the sample is vulnerable when its aggregated score is at or
above that threshold, as a scanned file's verdict is (:attr:`~vulnsteer.scan.engine.FileScore.verdict`). Otherwise
(a generated answer, which has no score) its verdict is its **top piece**'s (the first piece that says
"vulnerable", else "uncertain", else the first). Its push, answer text and named CWE are the top piece's (the one
with the highest score, else margin). A sample scored as one piece keeps its record exactly.

Before, the verdict was always the top piece's: a file of five functions was called vulnerable whenever one of
them crossed the threshold, so nearly every file was (issue 17's "flags 96-100% of files").

>>> from vulnsteer.data.sample import Sample
>>> from vulnsteer.data.units import Piece
>>> f = Sample("f", "int g(); int h();", "c", "CWE-787", "vulnerable", is_file=True)
>>> pieces = (Sample("f#0", "int g();", "c", "CWE-787", "vulnerable"), Sample("f#1", "int h();", "c", "CWE-787",
...           "vulnerable"))
>>> units = Units((f,), pieces, (Piece(0, 0, "g"), Piece(0, 1, "h")))
>>> records = [DetectionRecord("f#0", "CWE-787", None, 1, "secure", score=0.2, threshold=0.6),
...            DetectionRecord("f#1", "CWE-787", None, 1, "vulnerable", score=0.8, threshold=0.6)]
>>> [(r.sample_id, r.verdict, r.score) for r in aggregate_records(units, records, "mean")]
[('f', 'secure', 0.5)]
>>> [(r.sample_id, r.verdict, r.score) for r in aggregate_records(units, records, "max")]
[('f', 'vulnerable', 0.8)]
>>> no_threshold = [dataclasses.replace(r, threshold=None) for r in records]
>>> [(r.sample_id, r.verdict, r.score) for r in aggregate_records(units, no_threshold, "mean")]
[('f', 'vulnerable', 0.5)]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from ..data.units import Units
from ..stats.aggregate import check_aggregation
from ..stats.metrics import Prediction
from ..stats.shares import top_share_threshold

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = [
    "DetectionRecord",
    "aggregate_records",
    "flag_top_share",
    "judged_by_share",
    "record_from_dict",
    "records_to_predictions",
]

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
    #: the threshold the verdict read the score against (the verdict follows the score), else None (a generated
    #: answer, a verdict read off the margin)
    threshold: float | None = None

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


#: Anything :func:`judged_by_share` re-judges: a dataclass with ``verdict`` and ``threshold`` fields.
_Judged = TypeVar("_Judged", bound="DataclassInstance")

_VERDICT_RANK = {"vulnerable": 2, "uncertain": 1, "secure": 0}


def flag_top_share(records: Sequence[DetectionRecord], share: float) -> list[DetectionRecord]:
    """*records* (each with a score) re-judged by a label-free share rule: vulnerable iff the score is above the
    threshold under which the highest *share* of their scores lie (:func:`~vulnsteer.stats.shares.
    top_share_threshold`), which each then carries. An adapted detector's files flag the share of its functions it
    flagged, so (as a scan's file verdicts do: :func:`~vulnsteer.scan.sources.file_scores`).

    >>> rs = [DetectionRecord(k, "CWE-89", None, 1, "vulnerable", score=x, threshold=0.1) for k, x in
    ...       (("a", 0.2), ("b", 0.9), ("c", 0.4), ("d", 0.3))]
    >>> [(r.sample_id, r.verdict) for r in flag_top_share(rs, 0.25)]
    [('a', 'secure'), ('b', 'vulnerable'), ('c', 'secure'), ('d', 'secure')]
    """
    if not records:
        return []
    scores = _values(records, "score")
    if scores is None:
        raise ValueError("flag_top_share: every record needs a score")
    return judged_by_share(records, scores, share)


def judged_by_share(items: Sequence[_Judged], scores: Sequence[float], share: float) -> list[_Judged]:
    """*items* (dataclasses with ``verdict`` and ``threshold`` fields: detection records, a scan's function scores)
    re-judged by their *scores*: vulnerable iff above the threshold under which the highest *share* of the scores
    lie, which each then carries. The one share rule of every label-free adaptation."""
    threshold = top_share_threshold(scores, share)
    return [
        dataclasses.replace(item, verdict="vulnerable" if x > threshold else "secure", threshold=threshold)
        for item, x in zip(items, scores, strict=True)
    ]


def _values(records: Sequence[DetectionRecord], field: str) -> list[float] | None:
    values = [getattr(r, field) for r in records]
    return None if any(v is None for v in values) else [float(v) for v in values]


def aggregate_records(units: Units, records: Sequence[DetectionRecord], how: str) -> list[DetectionRecord]:
    """One record per sample of *units* whose pieces all have a record in *records* (matched by piece id), in the
    samples' order (see the module docstring). A sample with records for only some of its pieces is an error."""
    check_aggregation(how)
    if not units.split:
        return list(records)
    by_id = {r.sample_id: r for r in records}
    members: dict[int, list[int]] = {}
    for index, piece in enumerate(units.where):
        members.setdefault(piece.sample, []).append(index)
    out = []
    for sample_index, indices in sorted(members.items()):
        found = [by_id.get(units.pieces[i].id) for i in indices]
        if all(r is None for r in found):
            continue
        if any(r is None for r in found):
            missing = next(units.pieces[i].id for i, r in zip(indices, found) if r is None)
            raise ValueError(f"no record for piece {missing!r} of sample {units.samples[sample_index].id!r}")
        out.append(_aggregate(units, sample_index, indices, [r for r in found if r is not None], how))
    return out


def _aggregate(
    units: Units, sample_index: int, indices: Sequence[int], found: Sequence[DetectionRecord], how: str
) -> DetectionRecord:
    sample = units.samples[sample_index]
    if len(found) == 1:
        return dataclasses.replace(found[0], sample_id=sample.id)
    sub = Units((sample,), tuple(units.pieces[i] for i in indices),
                tuple(dataclasses.replace(units.where[i], sample=0) for i in indices))  # fmt: skip
    aggregated: dict[str, float | None] = {}
    top: int | None = None
    for field in ("score", "margin", "gate_score"):
        values = _values(found, field)
        if values is None:
            aggregated[field] = None
            continue
        value, leader = sub.aggregate(values, how)[0]
        aggregated[field] = value
        if top is None:
            top = leader
    if top is None:
        top = max(range(len(found)), key=lambda i: (_VERDICT_RANK.get(found[i].verdict, 0), -i))
    lead = found[top]
    threshold = found[0].threshold
    score = aggregated["score"]
    if threshold is not None and score is not None and all(r.threshold == threshold for r in found):
        verdict = "vulnerable" if score >= threshold else "secure"
    else:
        verdict, threshold = lead.verdict, None
    return DetectionRecord(
        sample.id,
        sample.cwe,
        sample.pair_id,
        sample.y,
        verdict,
        score=score,
        margin=aggregated["margin"],
        text=lead.text,
        named_cwe=lead.named_cwe,
        push=lead.push,
        gate_score=aggregated["gate_score"],
        threshold=threshold,
    )
