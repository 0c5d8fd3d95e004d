"""Detector families: the plug-ins of the protocol.

A *family* (the glossary's word) is a kind of detector with its controls: constant steering, conditional
steering, the best prompt, the calibrated baseline, the probe alone, and whatever comes next. The protocol
(:mod:`~vulnsteer.experiment.protocol`), the apply engine (:mod:`~vulnsteer.experiment.apply`) and the lead table
(:mod:`~vulnsteer.experiment.lead`) know no family by name: they call, for each family of the run, in order,

1. :meth:`Family.needs`: the unsteered activations it reads (layers and poolings), so every split is extracted
   once (through the activation cache) for all families;
2. :meth:`Family.fit` on **train** (:class:`FitContext`): vectors, gating probes, prompt templates
   (:class:`Artefacts`, what the scoring engine needs) and the family's own state;
3. :meth:`Family.val_conditions`: the **val** conditions it needs, with their controls (one scoring pass serves
   every family);
4. :meth:`Family.select` on **val** only (:class:`ValContext`): its choices (settings, templates, thresholds);
5. :meth:`Family.save`: what it keeps in the run folder (``chosen/``, a saved detector) for ``evaluate --from``;
6. :meth:`Family.held_out_conditions`: what it scores on held-out data (the test split, or another dataset);
7. :meth:`Family.apply` (:class:`HeldOut`): its per-CWE rows, examples and lead-table rows
   (:class:`LeadEntry`, with which rows are controls of which) from the held-out records, and, for families
   that read hidden states, the held-out samples' activations (an adapted family re-estimates a threshold
   from them, unlabelled);
8. :meth:`Family.results`: what ``results.json`` says about it (:class:`~vulnsteer.experiment.results.
   FamilyResults`).

A family also restores its choices from a run folder (:meth:`Family.restore`, for ``evaluate --from``; None when
it keeps nothing to restore). Families are values: :data:`~vulnsteer.experiment.families.DEFAULT_FAMILIES` is one
immutable tuple, ``run_protocol(..., families=...)`` takes another, and each family says whether the
configuration enables it (:meth:`Family.enabled`). A family may read the state of families before it (the probe
family reads the gating probes the conditional family chose): :attr:`ValContext.earlier` and
:attr:`HeldOut.chosen` hold them by name.

>>> from vulnsteer.experiment.families import DEFAULT_FAMILIES
>>> [f.name for f in DEFAULT_FAMILIES]
['calibrated', 'prompt', 'constant', 'conditional', 'probe', 'adapted']
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ..config import ExperimentConfig
from ..config.defaults import DEFAULT_AGGREGATION
from ..data.sample import Sample
from ..data.units import Units
from ..detection.records import DetectionRecord, aggregate_records
from ..io import JsonObject
from ..lm.activations import Activations
from ..lm.prompts import PromptTemplate
from ..steering.probe import Probe
from ..steering.vectors import SteeringVector
from .grid import Condition
from .results import Example, FamilyResults, SavedDetectorInfo
from .tables import HeldOutTable

if TYPE_CHECKING:  # pragma: no cover
    from ..lm.model import LoadedModel
    from .prepare import PreparedData

__all__ = [
    "ActivationNeeds",
    "Applied",
    "Artefacts",
    "Family",
    "FitContext",
    "HeldOut",
    "LeadEntry",
    "Saved",
    "ValContext",
    "merge_artefacts",
]

F = TypeVar("F")
C = TypeVar("C")

#: Vectors and gating probes are keyed ``(target, key)``: a CWE or ``"any"``, and ``method@pooling`` / the
#: probe's key.
Keyed = Mapping[tuple[str, str], Any]


@dataclass(frozen=True)
class ActivationNeeds:
    """Unsteered activations a family reads: *layers* at *poolings* on every split, and *train_poolings* on the
    training split only."""

    layers: tuple[int, ...] = ()
    poolings: tuple[str, ...] = ()
    train_poolings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Artefacts:
    """What the scoring engine needs from a family: vectors and gating probes by ``(target, key)``, and prompt
    templates by name."""

    vectors: Mapping[tuple[str, str], SteeringVector] = field(default_factory=dict)
    probes: Mapping[tuple[str, str], Probe] = field(default_factory=dict)
    templates: Mapping[str, PromptTemplate] = field(default_factory=dict)


def merge_artefacts(parts: Sequence[Artefacts]) -> Artefacts:
    """Every family's artefacts in one (a later family's entry wins a key both name: the same fit)."""
    vectors: dict[tuple[str, str], SteeringVector] = {}
    probes: dict[tuple[str, str], Probe] = {}
    templates: dict[str, PromptTemplate] = {}
    for part in parts:
        vectors.update(part.vectors)
        probes.update(part.probes)
        templates.update(part.templates)
    return Artefacts(vectors, probes, templates)


@dataclass(frozen=True)
class FitContext:
    """What a family fits on: the configuration, the model, the prepared data (train, and val for thresholds),
    the layer sets, the activations of a split (:attr:`acts`, extracted once for every family), where the run
    keeps its files, and the fits of the families before it (by name)."""

    config: ExperimentConfig
    lm: LoadedModel
    data: PreparedData
    layer_sets: tuple[tuple[int, ...], ...]
    layers: tuple[int, ...]
    acts: Callable[[str], Activations]
    out: Path
    progress: bool = True
    earlier: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ValContext:
    """Validation, for a family's choice: per selecting mode, its own conditions (the baseline first), every val
    record by condition key (one per sample: a sample scored as several pieces has its pieces' records aggregated),
    the CWEs, every family's artefacts (what the engine scored with), the prepared data, the choices of the
    families before it (by name), and how pieces are aggregated."""

    config: ExperimentConfig
    cwes: tuple[str, ...]
    conditions: Mapping[str, Sequence[Condition]]
    records: Mapping[str, Sequence[DetectionRecord]]
    artefacts: Artefacts = field(default_factory=lambda: Artefacts())
    data: PreparedData | None = None
    earlier: Mapping[str, Any] = field(default_factory=dict)
    #: how the val pieces' records were added up to the samples' (and will be on held-out data)
    aggregation: str = DEFAULT_AGGREGATION

    def by_detection_mode(self, picked: Mapping[str, C]) -> dict[str, C]:
        """Per mode, what was picked on the val records of the mode that chooses for it."""
        return {mode: picked[self.config.selection_mode(mode)] for mode in self.config.detection.modes}


@dataclass(frozen=True)
class HeldOut:
    """Held-out data a family applies its choices to: the test split (``test``) or every sample of another
    dataset (``all``), by CWE; every held-out record by condition key (each family's and the baseline's in every
    mode, one per sample); the pieces the samples are scored as (:attr:`units`: whole files as their functions,
    long code as windows; None: each sample is one piece) and how their scores add up (:attr:`aggregation`); the
    pieces' unsteered activations (:attr:`activations`, extracted on first use, one row per piece of
    :attr:`pieces`); and what every family chose (by name).

    A family that makes records from the activations makes one per piece and turns them into one per sample with
    :meth:`to_samples`."""

    split: str
    modes: tuple[str, ...]
    samples: Mapping[str, Sequence[Sample]]
    records: Mapping[str, Sequence[DetectionRecord]] = field(default_factory=dict)
    seed: int = 0
    control_seed: int = 1234
    cross_cwe_modes: tuple[str, ...] = ()
    n_examples: int = 0
    activations: Callable[[], Activations] | None = None
    chosen: Mapping[str, Any] = field(default_factory=dict)
    units: Units | None = None
    aggregation: str = DEFAULT_AGGREGATION

    @property
    def cwes(self) -> list[str]:
        return list(self.samples)

    @property
    def pieces(self) -> list[Sample]:
        """What is scored and read, in the activations' row order."""
        if self.units is not None:
            return list(self.units.pieces)
        return [s for group in self.samples.values() for s in group]

    def scored_pieces_by_cwe(self) -> Mapping[str, Sequence[Sample]]:
        """What the scoring engine scores: the pieces by CWE, each code once per CWE and language. Two versions of
        a file share most of their functions, so a pair of large files is scored in about half the passes;
        :meth:`to_samples` gives every copy its piece's record (a copy's score is its first piece's)."""
        if self.units is None:
            return self.samples
        distinct: dict[str, Sequence[Sample]] = {}
        for cwe, pieces in self.units.by_cwe().items():
            first: dict[tuple[str, str, str], Sample] = {}
            for piece in pieces:
                first.setdefault(_same_code(piece), piece)
            distinct[cwe] = list(first.values())
        return distinct

    def to_samples(self, records: Sequence[DetectionRecord]) -> list[DetectionRecord]:
        """One record per sample from records of its pieces (:func:`~vulnsteer.detection.records.
        aggregate_records` by :attr:`aggregation`); a piece with no record of its own takes the record of the
        piece with its code (:meth:`scored_pieces_by_cwe`)."""
        if self.units is None:
            return list(records)
        return aggregate_records(self.units, self._every_piece(records), self.aggregation)

    def _every_piece(self, records: Sequence[DetectionRecord]) -> list[DetectionRecord]:
        assert self.units is not None
        pieces = {p.id: p for p in self.units.pieces}
        by_id = {r.sample_id: r for r in records}
        by_code = {_same_code(p): r for r in records if (p := pieces.get(r.sample_id)) is not None}
        out: list[DetectionRecord] = []
        for piece in self.units.pieces:
            record = by_id.get(piece.id)
            if record is None:
                record = by_code.get(_same_code(piece))
                if record is None:
                    continue
                record = dataclasses.replace(record, sample_id=piece.id, pair_id=piece.pair_id, y_true=piece.y)
            out.append(record)
        return out

    def baseline(self, mode: str) -> Sequence[DetectionRecord]:
        """The baseline's records in *mode* (the apply engine always scores them)."""
        return self.records[Condition("baseline", mode, self.split).key]


def _same_code(piece: Sample) -> tuple[str, str, str]:
    """What makes two held-out pieces score the same: their CWE (a steered score reads its vector), language and
    code (:meth:`HeldOut.scored_pieces_by_cwe`)."""
    return piece.cwe, piece.language, piece.code


@dataclass(frozen=True)
class LeadEntry:
    """One detector a family puts in the lead table, with its records on the held-out samples.

    A control names the detector it controls (*control_of*): the table compares the two on the same samples,
    and the words say what beating it shows (*claim*). The words lead with a *headline* detector (and its
    controls); *what* is how they name a row, *note* what they add after its score."""

    name: str
    label: str
    records: Sequence[DetectionRecord]
    control_of: str | None = None
    claim: str = ""
    what: str = ""
    headline: bool = False
    note: str = ""
    family: str | None = None


@dataclass(frozen=True)
class Applied:
    """What a family found on held-out data: per mode, its lead-table rows, its per-CWE rows and its examples."""

    lead: Mapping[str, Sequence[LeadEntry]] = field(default_factory=dict)
    held_out: Mapping[str, HeldOutTable] = field(default_factory=dict)
    examples: Mapping[str, Sequence[Example]] = field(default_factory=dict)
    #: what the family could not do on this data, in words (e.g. too few inputs to adapt to)
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Saved:
    """What a family kept in the run folder: its ``chosen.json`` entry (per mode and target) and a saved detector."""

    chosen: JsonObject | None = None
    detector: SavedDetectorInfo | None = None


class Family(Protocol[F, C]):
    """A detector family (see the module docstring). *F* is what it fitted, *C* what it chose."""

    @property
    def name(self) -> str: ...

    def enabled(self, config: ExperimentConfig) -> bool:
        """Whether the configuration runs this family."""
        ...

    def needs(
        self, config: ExperimentConfig, layer_sets: Sequence[tuple[int, ...]], num_layers: int
    ) -> ActivationNeeds:
        """The unsteered activations :meth:`fit` and :meth:`apply` read."""
        ...

    def fit(self, ctx: FitContext) -> F:
        """Fit on train (thresholds on val where a fit needs them); nothing here reads test data."""
        ...

    def artefacts(self, fitted: F) -> Artefacts:
        """What the scoring engine needs for this family's conditions."""
        ...

    def val_conditions(self, fitted: F, mode: str) -> list[Condition]:
        """The validation conditions of one selecting mode, with their controls (the baseline is the protocol's)."""
        ...

    def select(self, fitted: F, val: ValContext) -> C:
        """Choose on val only."""
        ...

    def save(self, chosen: C, run: Path, info: JsonObject) -> Saved:
        """Write what ``evaluate --from`` and ``detect`` need into the run folder *run*; *info* is the header of
        what is saved (model, creation time)."""
        ...

    def restore(self, entry: JsonObject, run: Path, lm: LoadedModel, allow_mismatch: bool) -> C | None:
        """The choice saved by :meth:`save` (its ``chosen.json`` *entry*) in the run folder *run*, or None when
        the family keeps nothing to apply elsewhere."""
        ...

    def held_out_conditions(self, chosen: C, held: HeldOut) -> list[Condition]:
        """The conditions it scores on held-out data (the baseline's are always scored)."""
        ...

    def apply(self, chosen: C, held: HeldOut) -> Applied:
        """Its rows on held-out data (nothing is selected here)."""
        ...

    def results(
        self, fitted: F | None, chosen: C | None, applied: Applied | None, saved: Saved | None
    ) -> FamilyResults:
        """What results.json says about the family (any phase may be missing: an interrupted run)."""
        ...
