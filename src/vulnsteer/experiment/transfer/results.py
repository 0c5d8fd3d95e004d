"""What a transfer run found, typed: per fold (left-out dataset) every detector's metrics on all of its samples,
what was chosen for it on its inner folds, and the non-nested choices beside (so the optimism is visible).

``results.json`` holds :meth:`TransferResults.to_json`; :meth:`TransferResults.from_json` reads it back (the schema
version is checked).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ...io import JsonObject
from ..header import ModelInfo
from ..tables import MetricBlock

__all__ = ["TRANSFER_SCHEMA", "DatasetInfo", "DetectorRow", "FoldResult", "TransferResults"]

#: The schema of a transfer run's ``results.json``.
TRANSFER_SCHEMA = 1


@dataclass(frozen=True)
class DetectorRow:
    """One detector on one left-out dataset: its metrics (AUROC with a pair-bootstrap CI, balanced accuracy at the
    threshold it transferred with, pair-rank accuracy, TPR at 5% FPR, the share it flags), what it applied
    (*chosen*: a design, a gate and strength), and a note (e.g. why it did not adapt). A control names the
    detector it controls. A row that reads only some of the fold's samples (a peer analyser reads its languages)
    carries the chosen probe's metrics on the same samples (*probe_same*), so the two compare like for like."""

    name: str
    label: str
    metrics: MetricBlock
    chosen: str = ""
    note: str = ""
    control_of: str | None = None
    probe_same: MetricBlock | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": self.label,
            "metrics": self.metrics.to_json(),
            "chosen": self.chosen,
            "note": self.note,
            "control_of": self.control_of,
            "probe_on_same_samples": None if self.probe_same is None else self.probe_same.to_json(),
        }

    @classmethod
    def from_json(cls, doc: JsonObject) -> DetectorRow:
        return cls(
            str(doc["name"]),
            str(doc["label"]),
            MetricBlock.from_json(doc["metrics"]),
            str(doc.get("chosen", "")),
            str(doc.get("note", "")),
            doc.get("control_of"),
            None if (same := doc.get("probe_on_same_samples")) is None else MetricBlock.from_json(same),
        )


@dataclass(frozen=True)
class FoldResult:
    """One outer fold: the dataset left out, those fitted on, its size and vulnerable share, every detector's row,
    and the choices' inner scores (design key or steered setting -> its mean over the inner folds)."""

    left_out: str
    training: tuple[str, ...]
    n: int
    vulnerable_share: float
    detectors: tuple[DetectorRow, ...]
    designs_inner: Mapping[str, float] = field(default_factory=dict)
    steered_inner: Mapping[str, float] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def row(self, name: str) -> DetectorRow | None:
        return next((d for d in self.detectors if d.name == name), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "left_out": self.left_out,
            "training": list(self.training),
            "n": self.n,
            "vulnerable_share": self.vulnerable_share,
            "detectors": [d.to_json() for d in self.detectors],
            "designs_inner": dict(self.designs_inner),
            "steered_inner": dict(self.steered_inner),
            "notes": list(self.notes),
        }

    @classmethod
    def from_json(cls, doc: JsonObject) -> FoldResult:
        return cls(
            str(doc["left_out"]),
            tuple(doc["training"]),
            int(doc["n"]),
            float(doc["vulnerable_share"]),
            tuple(DetectorRow.from_json(d) for d in doc["detectors"]),
            {str(k): float(v) for k, v in (doc.get("designs_inner") or {}).items()},
            {str(k): float(v) for k, v in (doc.get("steered_inner") or {}).items()},
            tuple(doc.get("notes") or ()),
        )


@dataclass(frozen=True)
class DatasetInfo:
    """One dataset of the run: its name, where it came from, its pair cap, sample count and content hash."""

    name: str
    source: str
    n: int
    n_vulnerable: int
    cap: int | None
    hash: str

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "n": self.n,
            "n_vulnerable": self.n_vulnerable,
            "cap": self.cap,
            "hash": self.hash,
        }

    @classmethod
    def from_json(cls, doc: JsonObject) -> DatasetInfo:
        cap = doc.get("cap")
        return cls(
            str(doc["name"]),
            str(doc["source"]),
            int(doc["n"]),
            int(doc["n_vulnerable"]),
            None if cap is None else int(cap),
            str(doc["hash"]),
        )


@dataclass(frozen=True)
class TransferResults:
    """A transfer run: its configuration, model and datasets, the criterion choices were made by, one
    :class:`FoldResult` per left-out dataset, the non-nested choices (the design and the steered setting with
    the best mean over the outer folds, which read the left-out datasets: the optimism of choosing that way), and
    every design's criterion on each left-out dataset (``designs_outer``: design key -> left-out dataset -> value,
    what the non-nested choice ranks; for comparing designs, not an estimate of choosing among them)."""

    status: str
    config: JsonObject
    model: ModelInfo | None
    datasets: tuple[DatasetInfo, ...]
    select_by: str
    folds: tuple[FoldResult, ...] = ()
    non_nested_design: str = ""
    non_nested_setting: str = ""
    notes: tuple[str, ...] = ()
    timings_s: Mapping[str, float] = field(default_factory=dict)
    designs_outer: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    schema_version: int = TRANSFER_SCHEMA

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "command": "transfer",
            "status": self.status,
            "config": dict(self.config),
            "model": None if self.model is None else self.model.to_json(),
            "datasets": [d.to_json() for d in self.datasets],
            "select_by": self.select_by,
            "folds": [f.to_json() for f in self.folds],
            "non_nested_design": self.non_nested_design,
            "non_nested_setting": self.non_nested_setting,
            "notes": list(self.notes),
            "timings_s": dict(self.timings_s),
            "designs_outer": {key: dict(by_fold) for key, by_fold in self.designs_outer.items()},
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any], where: str = "results.json") -> TransferResults:
        if doc.get("command") != "transfer" or doc.get("schema_version") != TRANSFER_SCHEMA:
            raise ValueError(
                f"{where}: not a transfer run's results of schema {TRANSFER_SCHEMA} (command "
                f"{doc.get('command')!r}, schema {doc.get('schema_version')!r})"
            )

        def read(key: str, parse: Callable[[Any], Any], required: bool = False) -> Any:
            """*parse* of the field *key* (None when absent and not *required*); a bad field is named."""
            if required and key not in doc:
                raise ValueError(f"{where}: field {key!r} is missing")
            try:
                return parse(doc.get(key))
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                raise ValueError(f"{where}: field {key!r}: {type(e).__name__}: {e}") from e

        return cls(
            read("status", str, required=True),
            read("config", lambda v: dict(v or {})),
            read("model", ModelInfo.from_json),
            read("datasets", lambda v: tuple(DatasetInfo.from_json(d) for d in v), required=True),
            read("select_by", str, required=True),
            read("folds", lambda v: tuple(FoldResult.from_json(f) for f in v), required=True),
            read("non_nested_design", lambda v: str(v or "")),
            read("non_nested_setting", lambda v: str(v or "")),
            read("notes", lambda v: tuple(v or ())),
            read("timings_s", _floats),
            read("designs_outer", lambda v: {str(k): _floats(by_fold) for k, by_fold in (v or {}).items()}),
        )


def _floats(value: Mapping[str, Any] | None) -> dict[str, float]:
    """A JSON object of numbers (None: empty)."""
    return {str(k): float(x) for k, x in (value or {}).items()}
