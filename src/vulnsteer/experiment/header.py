"""What a results file says about the model, the data, the configuration and the run folder.

Summaries owned by other layers (the split summary, the cleaning notes, the configuration document) are kept as
the documents those layers write, read through typed properties (:class:`SplitsInfo`, :class:`DataNotes`,
:class:`GridInfo`).

>>> SplitsInfo({"train": {"n": 24}, "duplicates": {"exact": 1}}).size("train"), SplitsInfo({}).duplicates
(24, (0, 0))
"""

from __future__ import annotations

import dataclasses
import platform
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from .._version import __version__
from ..io import JsonObject
from ..lm.identity import ModelIdentity

if TYPE_CHECKING:  # pragma: no cover
    from ..lm.model import LoadedModel

__all__ = [
    "ActivationCacheInfo",
    "DataInfo",
    "DataNotes",
    "GridInfo",
    "ModelInfo",
    "PiecesInfo",
    "RunFiles",
    "SplitsInfo",
    "as_object",
    "environment_info",
]


def as_object(value: Any) -> dict[str, Any]:
    """A JSON object as a dict (anything else as an empty one)."""
    return dict(value) if isinstance(value, Mapping) else {}


@dataclass(frozen=True)
class ModelInfo:
    """The model a run used: its identity (:class:`~vulnsteer.lm.identity.ModelIdentity`: what ``evaluate --from``
    and a saved detector check), its size, and what its loader adds (the device)."""

    identity: ModelIdentity
    num_layers: int
    hidden_size: int
    extra: JsonObject = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.identity.id

    @property
    def fingerprint(self) -> str:
        return self.identity.fingerprint

    @classmethod
    def of(cls, lm: LoadedModel) -> ModelInfo:
        identity = lm.identity
        extra = {k: v for k, v in lm.extra.items() if k not in identity.to_dict()}
        return cls(identity, lm.num_layers, lm.hidden_size, extra)

    def to_json(self) -> dict[str, Any]:
        return {**self.identity.to_dict(), "num_layers": self.num_layers, "hidden_size": self.hidden_size, **self.extra}

    @classmethod
    def from_json(cls, doc: JsonObject | None, where: str = "results.json") -> ModelInfo | None:
        """The model of a results or chosen file (*where*); older files' ``key`` (a packed identity string) is
        not read: their weights digest, when they have one, is in the document itself."""
        if doc is None:
            return None
        identity = ModelIdentity.from_dict(doc, f"{where}: model")
        known = {*identity.to_dict(), "key", "num_layers", "hidden_size"}
        extra = {k: v for k, v in doc.items() if k not in known}
        return cls(identity, int(doc["num_layers"]), int(doc["hidden_size"]), extra)


@dataclass(frozen=True)
class SplitsInfo:
    """The split summary (:meth:`~vulnsteer.data.splits.Splits.summary`), read through typed properties."""

    document: JsonObject

    def size(self, split: str) -> int:
        return int(as_object(self.document.get(split)).get("n", 0))

    def class_counts(self, split: str) -> dict[str, tuple[int, int]]:
        """Per CWE: (vulnerable, secure) samples of *split*."""
        by_cwe = as_object(as_object(self.document.get(split)).get("by_cwe"))
        return {cwe: (int(c.get("vulnerable", 0)), int(c.get("secure", 0))) for cwe, c in by_cwe.items()}

    @property
    def duplicates(self) -> tuple[int, int]:
        """Cross-split duplicates left: (exact, normalised)."""
        dup = as_object(self.document.get("duplicates"))
        return int(dup.get("exact", 0)), int(dup.get("normalised", 0))

    @property
    def merged_duplicates(self) -> bool:
        return bool(as_object(self.document.get("notes")).get("merge_duplicates"))

    @property
    def dropped(self) -> tuple[int, int] | None:
        """Val and test samples dropped as duplicates (``duplicates = "drop"``), else None."""
        deduped = as_object(self.document.get("notes")).get("deduped")
        if not deduped:
            return None
        dropped = as_object(as_object(deduped).get("dropped"))
        return len(dropped.get("val", [])), len(dropped.get("test", []))

    @property
    def found_before_dedupe(self) -> tuple[int, int]:
        before = as_object(as_object(self.document.get("notes")).get("duplicates_before_dedupe"))
        return int(before.get("exact", 0)), int(before.get("normalised", 0))


@dataclass(frozen=True)
class DataNotes:
    """What preparing the data did (the document :func:`~vulnsteer.experiment.prepare.prepare_data` writes)."""

    document: JsonObject = field(default_factory=dict)

    @property
    def comments_stripped(self) -> bool | None:
        value = self.document.get("comments_stripped")
        return None if value is None else bool(value)

    @property
    def max_code_tokens(self) -> int | None:
        value = self.document.get("max_code_tokens")
        return None if value is None else int(value)

    @property
    def truncated(self) -> int:
        return int(self.document.get("truncated", 0))


@dataclass(frozen=True)
class PiecesInfo:
    """How held-out samples were scored as pieces (:mod:`vulnsteer.data.units`: whole files as their functions,
    long code as windows) and how the pieces' scores add up (:mod:`vulnsteer.stats.aggregate`).

    Attributes:
        aggregation: the rule used.
        chosen_by: how it was chosen (on val, the first candidate by default, or the run's choice).
        val_auroc: per candidate, the mean val AUROC over every val condition with scores (where it was chosen on
            val).
        samples: held-out samples scored.
        split: of them, scored as several pieces.
        pieces: pieces scored.
    """

    aggregation: str
    chosen_by: str
    val_auroc: Mapping[str, float] = field(default_factory=dict)
    samples: int = 0
    split: int = 0
    pieces: int = 0

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "val_auroc": dict(self.val_auroc)}

    @classmethod
    def from_json(cls, doc: JsonObject | None) -> PiecesInfo | None:
        if doc is None:
            return None
        auroc = {str(k): float(v) for k, v in as_object(doc.get("val_auroc")).items()}
        return cls(str(doc["aggregation"]), str(doc.get("chosen_by", "")), auroc,
                   int(doc.get("samples", 0)), int(doc.get("split", 0)), int(doc.get("pieces", 0)))  # fmt: skip


@dataclass(frozen=True)
class DataInfo:
    """The data a command read: its source, CWEs, preparation notes, split summary (run/sweep, evaluate
    --vectors), and what evaluate skipped or found in the run's training split."""

    source: str
    cwes: tuple[str, ...]
    notes: DataNotes = field(default_factory=DataNotes)
    splits: SplitsInfo | None = None
    n_samples: int | None = None
    skipped_cwes: Mapping[str, int] = field(default_factory=dict)
    overlap_with_run_train: int | None = None
    pieces: PiecesInfo | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source": self.source, "cwes": list(self.cwes), "notes": dict(self.notes.document)}
        if self.pieces is not None:
            out["pieces"] = self.pieces.to_json()
        if self.splits is not None:
            out["splits"] = dict(self.splits.document)
        if self.n_samples is not None:
            out["n_samples"] = self.n_samples
        if self.skipped_cwes:
            out["skipped_cwes"] = dict(self.skipped_cwes)
        if self.overlap_with_run_train is not None:
            out["overlap_with_run_train"] = self.overlap_with_run_train
        return out

    @classmethod
    def from_json(cls, doc: JsonObject | None) -> DataInfo | None:
        if doc is None:
            return None
        splits = doc.get("splits")
        return cls(
            str(doc["source"]),
            tuple(doc.get("cwes", ())),
            DataNotes(as_object(doc.get("notes"))),
            None if splits is None else SplitsInfo(dict(splits)),
            doc.get("n_samples"),
            {cwe: int(n) for cwe, n in (doc.get("skipped_cwes") or {}).items()},
            doc.get("overlap_with_run_train"),
            PiecesInfo.from_json(doc.get("pieces")),
        )


@dataclass(frozen=True)
class GridInfo:
    """What the report says about the grid, read from the resolved configuration document."""

    seed: int | None
    methods: tuple[str, ...]
    poolings: tuple[str, ...]
    strengths: Any
    positions: tuple[str, ...]
    modes: tuple[str, ...]
    pooled: bool | None
    #: ``[conditional] select``: ``per_cwe``, or ``pooled`` (one gated setting for every CWE); None in old runs.
    conditional_select: str | None = None

    @classmethod
    def of(cls, config: JsonObject) -> GridInfo:
        data, vectors, steering = (as_object(config.get(k)) for k in ("data", "vectors", "steering"))
        return cls(
            data.get("seed"),
            tuple(vectors.get("methods", ())),
            tuple(vectors.get("pooling", ())),
            steering.get("strengths"),
            tuple(steering.get("positions", ())),
            tuple(as_object(config.get("detection")).get("modes", ())),
            vectors.get("pooled"),
            as_object(config.get("conditional")).get("select"),
        )


@dataclass(frozen=True)
class ActivationCacheInfo:
    """What the activation cache did for the training split: its folder, entries reused and extracted, the layers
    extracted, and the rest of its statistics (seconds, entry files)."""

    dir: str
    enabled: bool = True
    hits: int = 0
    misses: int = 0
    extracted_layers: tuple[int, ...] = ()
    extra: JsonObject = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        head = {"dir": self.dir, "enabled": self.enabled, "hits": self.hits, "misses": self.misses}
        return {**head, "extracted_layers": list(self.extracted_layers), **self.extra}

    @classmethod
    def from_json(cls, doc: JsonObject | None) -> ActivationCacheInfo | None:
        if not doc:
            return None
        known = ("dir", "enabled", "hits", "misses", "extracted_layers")
        return cls(
            str(doc.get("dir")),
            bool(doc.get("enabled", True)),
            int(doc.get("hits", 0)),
            int(doc.get("misses", 0)),
            tuple(int(x) for x in doc.get("extracted_layers") or ()),
            {k: v for k, v in doc.items() if k not in known},
        )


@dataclass(frozen=True)
class RunFiles:
    """The files a run folder holds besides results.json."""

    resolved_config: str
    chosen: str
    records: str

    def to_json(self) -> dict[str, str]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, doc: JsonObject | None) -> RunFiles | None:
        if not doc:
            return None
        return cls(str(doc["resolved_config"]), str(doc["chosen"]), str(doc.get("records", "records.jsonl")))


def environment_info() -> dict[str, Any]:
    """Versions and platform (what reproducing a run needs to know)."""
    import numpy
    import torch
    import transformers

    return {
        "vulnsteer": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": numpy.__version__,
        "cuda": torch.cuda.is_available(),
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
