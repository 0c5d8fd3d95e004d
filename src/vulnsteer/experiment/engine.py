"""The scoring engine: conditions in, detection records out, in resumable chunks.

:func:`run_conditions` is the one place where conditions meet the model. Pending conditions are grouped by split
into chunks; a chunk shares its batched forward passes across its conditions and detector modes (each row
steered with its own specs, :func:`~vulnsteer.detection.engine.detect_variants_modes`), and is appended to the
:class:`ResultStore` (``records.jsonl``) as soon as it is done, so a killed run loses at most the chunk in flight
and a rerun skips what is stored.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.sample import Sample
from ..detection.engine import detect_variants_modes
from ..detection.prefix import PrefixStore
from ..detection.records import DetectionRecord, record_from_dict
from ..io import append_jsonl, read_jsonl
from ..lm.activations import ActivationSink
from ..lm.model import LoadedModel
from ..lm.prompts import DEFAULT_TEMPLATE, PromptTemplate
from ..progress import Progress
from ..steering.gate import LinearProbe
from ..steering.hooks import SteeringSpec
from ..steering.vectors import SteeringVector
from .grid import Condition, condition_specs

__all__ = ["ResultStore", "ScoringOptions", "run_conditions", "score_chunk"]

SamplesFor = Callable[[str], Mapping[str, Sequence[Sample]]]


@dataclass(frozen=True)
class ScoringOptions:
    """How conditions are scored (none of it but the templates and ``max_new_tokens`` changes a number).

    *templates* maps a condition's template name to its prompt (``default`` is the experiment's prompt; the other
    names are the prompting baselines)."""

    batch_size: int = 8
    max_new_tokens: int = 20
    group_size: int = 16
    templates: Mapping[str, PromptTemplate] = field(default_factory=lambda: {"default": DEFAULT_TEMPLATE})
    progress: bool = True

    @property
    def template(self) -> PromptTemplate:
        """The experiment's own prompt."""
        return self.templates["default"]


DEFAULT_OPTIONS = ScoringOptions()


class ResultStore:
    """Append-only ``records.jsonl``: one line per finished condition, fsynced; a rerun skips what is done.

    >>> import tempfile, os
    >>> store = ResultStore(os.path.join(tempfile.mkdtemp(), "records.jsonl"))
    >>> "baseline|logit|val" in store
    False
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._done: dict[str, dict[str, Any]] = {}
        for entry in read_jsonl(self.path):
            self._done[entry["condition"]["key"]] = entry

    def __contains__(self, key: str) -> bool:
        return key in self._done

    def get(self, key: str) -> list[DetectionRecord]:
        return [record_from_dict(r) for r in self._done[key]["records"]]

    def add(self, condition: Condition, records: Sequence[DetectionRecord], seconds: float) -> None:
        entry = {
            "condition": condition.to_dict(),
            "seconds": round(seconds, 3),
            "records": [r.to_dict() for r in records],
        }
        append_jsonl(self.path, entry)
        self._done[condition.key] = entry

    def entries(self) -> list[dict[str, Any]]:
        return list(self._done.values())


def score_chunk(
    lm: LoadedModel,
    conditions: Sequence[Condition],
    samples_by_cwe: Mapping[str, Sequence[Sample]],
    vectors: Mapping[tuple[str, str], SteeringVector],
    options: ScoringOptions = DEFAULT_OPTIONS,
    *,
    probes: Mapping[tuple[str, str], LinearProbe] | None = None,
    sink: ActivationSink | None = None,
    prefix_store: PrefixStore | None = None,
) -> dict[str, list[DetectionRecord]]:
    """Score conditions together: one batched pass over the samples serves every condition and detector mode
    (the unsteered prompt prefix shared where positions allow, and kept in *prefix_store* for later chunks).
    Returns records by condition key. Pure with respect to its inputs, so any worker can run it."""
    specs_cache: dict[tuple[str, str], list[SteeringSpec] | None] = {}
    by_variant: dict[str, list[Condition]] = defaultdict(list)
    for cond in conditions:
        by_variant[cond.variant_key].append(cond)

    def variant(cond: Condition) -> Callable[[Sample], list[SteeringSpec] | None]:
        def for_sample(sample: Sample) -> list[SteeringSpec] | None:
            key = (cond.variant_key, sample.cwe)
            if key not in specs_cache:
                specs_cache[key] = condition_specs(cond, sample.cwe, vectors, probes)
            return specs_cache[key]

        return for_sample

    samples = [s for group in samples_by_cwe.values() for s in group]
    modes = sorted({c.mode for c in conditions})
    found = detect_variants_modes(
        lm,
        samples,
        {key: variant(conds[0]) for key, conds in by_variant.items()},
        modes=modes,
        template=options.templates[_template_of(conditions)],
        batch_size=options.batch_size,
        max_new_tokens=options.max_new_tokens,
        progress=False,
        sink=sink,
        prefix_store=prefix_store,
    )
    return {c.key: found[c.mode][key] for key, conds in by_variant.items() for c in conds}


def _template_of(conditions: Sequence[Condition]) -> str:
    names = {c.template for c in conditions}
    if len(names) != 1:
        raise ValueError(f"one chunk, one prompt template (got {sorted(names)})")
    return names.pop()


def _chunks(pending: Sequence[Condition], size: int) -> list[list[Condition]]:
    """Chunks of at most *size* conditions that share one split, one prompt template and one set of detector
    modes per variant, so a chunk never generates text for a variant that only needs its answer logits."""
    modes: dict[str, set[str]] = defaultdict(set)
    for cond in pending:
        modes[cond.variant_key].add(cond.mode)
    groups: dict[tuple[str, str, tuple[str, ...]], list[Condition]] = defaultdict(list)
    for cond in pending:
        groups[(cond.split, cond.template, tuple(sorted(modes[cond.variant_key])))].append(cond)
    return [group[i : i + size] for group in groups.values() for i in range(0, len(group), size)]


def run_conditions(
    lm: LoadedModel,
    conditions: Iterable[Condition],
    store: ResultStore,
    samples_for: SamplesFor,
    vectors: Mapping[tuple[str, str], SteeringVector],
    options: ScoringOptions = DEFAULT_OPTIONS,
    *,
    probes: Mapping[tuple[str, str], LinearProbe] | None = None,
    sink: ActivationSink | None = None,
    prefix_store: PrefixStore | None = None,
) -> dict[str, list[DetectionRecord]]:
    """Score every condition not already in *store*; returns all records by condition key.

    *samples_for(split)* gives a split's samples by CWE. Pass a :class:`~vulnsteer.detection.prefix.PrefixStore`
    (one per model and run) to compute each batch's unsteered prompt prefix once for all chunks.
    """
    todo = list(dict.fromkeys(conditions))
    chunks = _chunks([c for c in todo if c.key not in store], options.group_size)
    with Progress(sum(len(c) for c in chunks), "conditions", unit="condition", enabled=options.progress) as bar:
        for chunk in chunks:
            start = time.perf_counter()
            found = score_chunk(
                lm,
                chunk,
                samples_for(chunk[0].split),
                vectors,
                options,
                probes=probes,
                sink=sink,
                prefix_store=prefix_store,
            )
            seconds = (time.perf_counter() - start) / len(chunk)
            for cond in chunk:
                store.add(cond, found[cond.key], seconds)
            bar.update(len(chunk))
    return {cond.key: store.get(cond.key) for cond in todo}
