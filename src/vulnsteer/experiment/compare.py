"""Every number of two results, side by side: did a change of code change a result?

:func:`numbers` flattens :class:`~vulnsteer.experiment.results.Results` into ``{path: value}`` under paths that do
not depend on the file's schema (``lead/logit/conditional/balanced_accuracy``, ``val/logit/<condition key>/CWE-89/
auroc``, ``families/constant/choices/logit/CWE-89/chosen``, ``records/<condition key>/<sample id>/margin``, ...);
:func:`compare` lists the paths whose values differ and those only one side has. Where and how fast a run went
(timings, caches, memory, environment, absolute paths) is left out.

>>> from vulnsteer.experiment.results import Results
>>> from vulnsteer.experiment.tables import LeadRow, LeadTable, MetricBlock
>>> a = Results(lead={"logit": LeadTable("test", (LeadRow("baseline", "", MetricBlock(4, balanced_accuracy=0.5)),))})
>>> compare(a, a).same
True
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .results import Results
from .tables import HeldOutRow, MetricBlock

__all__ = ["Comparison", "compare", "numbers"]

Value = float | int | str | bool | None


def _flat(prefix: str, value: Any) -> Iterator[tuple[str, Value]]:
    """Leaves of plain data (dataclasses, mappings, sequences) under *prefix*."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from _flat(f"{prefix}/{f.name}", getattr(value, f.name))
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _flat(f"{prefix}/{k}", v)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _flat(f"{prefix}/{i}", v)
    else:
        yield prefix, value


def _block(prefix: str, block: MetricBlock | None) -> Iterator[tuple[str, Value]]:
    if block is not None:
        yield from _flat(prefix, block)


def _row(prefix: str, row: HeldOutRow) -> Iterator[tuple[str, Value]]:
    for name in ("n", "n_pairs", "chosen", "delta", "delta_ci", "p_value", "flips", "lever_rate"):
        yield from _flat(f"{prefix}/{name}", getattr(row, name))
    yield from _block(f"{prefix}/baseline", row.baseline)
    yield from _block(f"{prefix}/steered", row.steered)
    for role, control in row.controls.items():
        yield from _block(f"{prefix}/controls/{role}", control.metrics)
        yield f"{prefix}/controls/{role}/delta", control.delta
    if row.best_not_chosen is not None:
        yield from _row(f"{prefix}/best_not_chosen", row.best_not_chosen)


def numbers(results: Results) -> dict[str, Value]:
    """Every result of *results* (see the module docstring) by a schema-independent path."""
    out: dict[str, Value] = {}

    def put(items: Iterator[tuple[str, Value]]) -> None:
        out.update(items)

    for mode, lead in results.lead.items():
        for detector in lead.rows:
            p = f"lead/{mode}/{detector.name}"
            put(_block(p, detector.metrics))
            for name in ("delta", "delta_ci", "p_value", "flips", "lever_rate", "versus"):
                put(_flat(f"{p}/{name}", getattr(detector, name)))
        put(_flat(f"lead/{mode}/margins", lead.margins))
    for mode, entries in results.val.items():
        for entry in entries:
            put(_flat(f"val/{mode}/{entry.condition.key}", entry.metrics))
    for name, family in results.families.items():
        p = f"families/{name}"
        for mode, by_target in family.choices.items():
            for target, choice in by_target.items():
                q = f"{p}/choices/{mode}/{target}"
                out[f"{q}/chosen"] = choice.chosen
                out[f"{q}/best"] = None if choice.best is None else choice.best.key
                out[f"{q}/val_best"] = choice.val_best
                out[f"{q}/val_baseline"] = choice.val_baseline
        put(_flat(f"{p}/templates", family.templates))
        put(_flat(f"{p}/thresholds", family.thresholds))
        for mode, table in family.held_out.items():
            for cwe, row in table.rows.items():
                put(_row(f"{p}/held_out/{mode}/rows/{cwe}", row))
            for cwe, row in table.pooled.items():
                put(_row(f"{p}/held_out/{mode}/pooled/{cwe}", row))
            cross = table.cross_cwe
            if cross is not None:
                for vector, line in zip(cross.vectors, cross.delta_balanced_accuracy, strict=True):
                    for target, value in zip(cross.targets, line, strict=True):
                        out[f"{p}/held_out/{mode}/cross_cwe/{vector}/{target}"] = value
        for key, info in family.vectors.items():
            put(_flat(f"{p}/vectors/{key}/norm", info.norm))
            put(_flat(f"{p}/vectors/{key}/relative_norm", info.relative_norm))
            out[f"{p}/vectors/{key}/n"] = f"{info.n_vulnerable}/{info.n_secure}"
        put(_flat(f"{p}/cosine", family.cosine))
        for key, gate in family.probes.items():
            out[f"{p}/probes/{key}/threshold"] = gate.threshold
            out[f"{p}/probes/{key}/spread"] = gate.spread
        if family.saved is not None:
            saved = dataclasses.replace(family.saved, folder="")
            put(_flat(f"{p}/saved", saved))
    for probe in results.probes:
        p = f"probes/{probe.detector}/{probe.pooling}/{probe.layer}/{probe.cwe}"
        put(_flat(p, probe.to_dict()))
    put(_flat("pca", results.pca))
    for key, records in results.records.items():
        for r in records:
            for name, value in dataclasses.asdict(r).items():
                out[f"records/{key}/{r.sample_id}/{name}"] = value
    if results.data is not None:
        out["data/cwes"] = ",".join(results.data.cwes)
        if results.data.splits is not None:
            for split in ("train", "val", "test"):
                out[f"data/{split}/n"] = results.data.splits.size(split)
    return out


def _same(a: Value, b: Value, rel: float) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b or math.isclose(a, b, rel_tol=rel, abs_tol=rel)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


@dataclass(frozen=True)
class Comparison:
    """What :func:`compare` found: the paths compared, those that differ (with both values), and those only one
    side has."""

    compared: int
    differ: dict[str, tuple[Value, Value]] = field(default_factory=dict)
    only_before: tuple[str, ...] = ()
    only_after: tuple[str, ...] = ()

    @property
    def same(self) -> bool:
        """No value differs (paths only one side has are reported, not counted as a difference)."""
        return not self.differ

    def summary(self) -> str:
        return (
            f"{self.compared} values compared: {len(self.differ)} differ; {len(self.only_before)} only before, "
            f"{len(self.only_after)} only after"
        )


def compare(before: Results, after: Results, rel: float = 0.0) -> Comparison:
    """Every number of *before* against *after* (equal, or within *rel* relative tolerance for floats)."""
    a, b = numbers(before), numbers(after)
    shared = [k for k in a if k in b]
    differ = {k: (a[k], b[k]) for k in shared if not _same(a[k], b[k], rel)}
    return Comparison(
        len(shared),
        differ,
        tuple(k for k in a if k not in b),
        tuple(k for k in b if k not in a),
    )
