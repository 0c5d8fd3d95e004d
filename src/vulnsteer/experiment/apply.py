"""The apply engine: each family's choices in, its rows on held-out data and the lead table out.

Every evaluation on held-out data goes through :func:`apply_families`: the protocol's test phase, ``vulnsteer
evaluate --from RUN`` (a run's choices on another dataset) and ``vulnsteer evaluate --vectors DIR`` (saved vectors
at a strength the user gives). So all three emit the same rows. For each family, in order, the engine scores what
the family asks (:meth:`~vulnsteer.experiment.family.Family.held_out_conditions`; one scoring pass per family, only
what the records file does not hold yet), then the baseline in every mode, each on the pieces the samples are
scored as (whole files as their functions, long code as windows: :class:`~vulnsteer.data.units.Units`), the
pieces' records aggregated back to one per sample (:meth:`~vulnsteer.experiment.family.HeldOut.to_samples`);
then each family builds its rows from every record (:meth:`~vulnsteer.experiment.family.Family.apply`, which may
also read the held-out pieces' activations), and the lead table puts every family's detectors side by side.
Nothing is selected here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..detection.prefix import PrefixStore
from ..detection.records import DetectionRecord
from ..lm.model import LoadedModel
from .engine import DEFAULT_OPTIONS, Executor, ResultStore, ScoringOptions, run_conditions
from .family import Applied, Artefacts, Family, HeldOut
from .grid import Condition
from .lead import build_lead
from .tables import LeadTable

__all__ = ["HeldOutFound", "apply_families"]


@dataclass
class HeldOutFound:
    """What :func:`apply_families` found: per family what it applied, per mode the lead table, and every
    held-out condition with its records."""

    applied: dict[str, Applied] = field(default_factory=dict)
    lead: dict[str, LeadTable] = field(default_factory=dict)
    conditions: list[Condition] = field(default_factory=list)
    records: dict[str, list[DetectionRecord]] = field(default_factory=dict)


def apply_families(
    lm: LoadedModel,
    families: Sequence[Family[Any, Any]],
    chosen: Mapping[str, Any],
    held: HeldOut,
    store: ResultStore,
    artefacts: Artefacts,
    options: ScoringOptions = DEFAULT_OPTIONS,
    *,
    prefix_store: PrefixStore | None = None,
    executor: Executor | None = None,
) -> HeldOutFound:
    """Apply each family's choice (*chosen*, by family name; a family absent from it is skipped) to *held*'s
    samples, scoring with *artefacts* only what *store* does not hold yet, and build the rows and the lead
    table.

    >>> found = apply_families(lm, families, chosen, HeldOut("test", ("logit",), data.by_cwe("test")),
    ...                        ResultStore("r.jsonl"), artefacts)  # doctest: +SKIP
    >>> found.lead["logit"].rows[0].name  # doctest: +SKIP
    'baseline'
    """
    found = HeldOutFound()
    present = [f for f in families if f.name in chosen]

    def score(conditions: Sequence[Condition]) -> None:
        todo = [c for c in dict.fromkeys(conditions) if c.key not in found.records]
        if not todo:
            return
        records = run_conditions(
            lm,
            todo,
            store,
            lambda _split: held.scored_pieces_by_cwe(),
            artefacts.vectors,
            options,
            probes=artefacts.probes,
            prefix_store=prefix_store,
            executor=executor,
        )
        found.conditions += todo
        found.records.update({key: held.to_samples(recs) for key, recs in records.items()})

    for family in present:
        score(family.held_out_conditions(chosen[family.name], held))
    score([Condition("baseline", mode, held.split) for mode in held.modes])  # every row's reference
    full = dataclasses.replace(held, records=found.records, chosen=chosen)
    for family in present:
        found.applied[family.name] = family.apply(chosen[family.name], full)
    for mode in held.modes:
        entries = [
            dataclasses.replace(entry, family=name)
            for name, applied in found.applied.items()
            for entry in applied.lead.get(mode, ())
        ]
        found.lead[mode] = build_lead(mode, held.split, full.baseline(mode), entries, held.seed)
    return found
