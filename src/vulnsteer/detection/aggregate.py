"""A sample's detection record from the records of the pieces it was scored as (:class:`~vulnsteer.data.units.
Units`: a whole file's functions, a long function's windows).

The sample's score, margin and gating-probe score are its pieces' aggregated by one rule
(:mod:`vulnsteer.stats.aggregate`: ``max``, ``top2_mean``, ``top3_mean``, ``mean``), the windows of a function
first, then the functions. Its verdict, push, answer text and named CWE are those of its **top piece** (the one
with the highest score, else margin; in generation mode, which has neither, the first piece that says
"vulnerable", else "uncertain", else the first): a file is called vulnerable when its riskiest function is, whatever
rule ranks it. A sample scored as one piece keeps its record exactly.

>>> from vulnsteer.data.sample import Sample
>>> from vulnsteer.data.units import Piece, Units
>>> f = Sample("f", "int g(); int h();", "c", "CWE-787", "vulnerable", is_file=True)
>>> pieces = (Sample("f#0", "int g();", "c", "CWE-787", "vulnerable"), Sample("f#1", "int h();", "c", "CWE-787",
...           "vulnerable"))
>>> units = Units((f,), pieces, (Piece(0, 0, "g"), Piece(0, 1, "h")))
>>> records = [DetectionRecord("f#0", "CWE-787", None, 1, "secure", score=0.2),
...            DetectionRecord("f#1", "CWE-787", None, 1, "vulnerable", score=0.8)]
>>> [(r.sample_id, r.verdict, r.score) for r in aggregate_records(units, records, "mean")]
[('f', 'vulnerable', 0.5)]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from ..data.units import Units
from ..stats.aggregate import check_aggregation
from .records import DetectionRecord

__all__ = ["aggregate_records"]

_VERDICT_RANK = {"vulnerable": 2, "uncertain": 1, "secure": 0}


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
    return DetectionRecord(
        sample.id,
        sample.cwe,
        sample.pair_id,
        sample.y,
        lead.verdict,
        score=aggregated["score"],
        margin=aggregated["margin"],
        text=lead.text,
        named_cwe=lead.named_cwe,
        push=lead.push,
        gate_score=aggregated["gate_score"],
    )
