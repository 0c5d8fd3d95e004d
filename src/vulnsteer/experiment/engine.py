"""The scoring engine: conditions in, detection records out, in resumable chunks.

:func:`run_conditions` is the one place where conditions meet the model. Pending conditions are grouped by split
into chunks; a chunk shares its batched forward passes across its conditions and modes (each row
steered with its own specs, :func:`~vulnsteer.detection.engine.detect_variants_modes`), and is appended to the
:class:`ResultStore` (``records.jsonl``) as soon as it is done, so a killed run loses at most the chunk in flight
and a rerun skips what is stored.

Where chunks are scored is an :class:`Executor`'s business: :class:`LocalExecutor` scores them one after another
on the driver's model; :class:`~vulnsteer.experiment.ray_executor.RayExecutor` spreads them over a pool of Ray
workers. Either way the driver is the only writer of the store, and chunks are stored in the order they finish
(every reader looks records up by condition key, so nothing depends on that order).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..data.sample import Sample
from ..detection.engine import detect_variants_modes
from ..detection.prefix import PrefixStore
from ..detection.records import DetectionRecord, record_from_dict
from ..io import append_jsonl, read_jsonl
from ..lm.activations import ActivationSink
from ..lm.model import LoadedModel
from ..lm.prompts import DEFAULT_TEMPLATE, PromptTemplate
from ..lm.ray_pool import WorkerStats
from ..progress import Progress
from ..steering.hooks import SteeringSpec
from ..steering.probe import Probe
from ..steering.vectors import SteeringVector
from .grid import Condition, condition_specs

__all__ = [
    "ChunkDone",
    "ChunkInputs",
    "Executor",
    "LocalExecutor",
    "ResultStore",
    "ScoringOptions",
    "WorkerStats",
    "run_conditions",
    "score_chunk",
]

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
    probes: Mapping[tuple[str, str], Probe] | None = None,
    sink: ActivationSink | None = None,
    prefix_store: PrefixStore | None = None,
    on_rows: Callable[[int], None] | None = None,
) -> dict[str, list[DetectionRecord]]:
    """Score conditions together: one batched pass over the samples serves every condition and mode
    (the unsteered prompt prefix shared where positions allow, and kept in *prefix_store* for later chunks).
    Returns records by condition key. Pure with respect to its inputs, so any worker can run it. *sink* records
    the unsteered hidden states of chunks under the experiment's own prompt (template ``default``) only."""
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
    template = _template_of(conditions)
    found = detect_variants_modes(
        lm,
        samples,
        {key: variant(conds[0]) for key, conds in by_variant.items()},
        modes=modes,
        template=options.templates[template],
        batch_size=options.batch_size,
        max_new_tokens=options.max_new_tokens,
        progress=False,
        # the sink holds the experiment's own prompt's states: a prompting baseline's pass must not overwrite them
        sink=sink if template == "default" else None,
        prefix_store=prefix_store,
        on_rows=on_rows,
    )
    return {c.key: found[c.mode][key] for key, conds in by_variant.items() for c in conds}


def _rows(chunk: Sequence[Condition], samples_for: SamplesFor) -> int:
    """How many (sample, setting) rows a chunk scores: one per sample and variant (its modes share the row)."""
    n_samples = sum(len(group) for group in samples_for(chunk[0].split).values())
    return n_samples * len({c.variant_key for c in chunk})


def _template_of(conditions: Sequence[Condition]) -> str:
    names = {c.template for c in conditions}
    if len(names) != 1:
        raise ValueError(f"one chunk, one prompt template (got {sorted(names)})")
    return names.pop()


def _chunks(pending: Sequence[Condition], size: int) -> list[list[Condition]]:
    """Chunks of at most *size* conditions that share one split, one prompt template and one set of
    modes per variant, so a chunk never generates text for a variant that only needs its answer logits."""
    modes: dict[str, set[str]] = defaultdict(set)
    for cond in pending:
        modes[cond.variant_key].add(cond.mode)
    groups: dict[tuple[str, str, tuple[str, ...]], list[Condition]] = defaultdict(list)
    for cond in pending:
        groups[(cond.split, cond.template, tuple(sorted(modes[cond.variant_key])))].append(cond)
    return [group[i : i + size] for group in groups.values() for i in range(0, len(group), size)]


#: One finished chunk: its conditions, their records by condition key, and the scoring seconds per condition.
ChunkDone = tuple[Sequence[Condition], dict[str, list[DetectionRecord]], float]


@dataclass(frozen=True)
class ChunkInputs:
    """What every chunk of one :func:`run_conditions` call reads: *samples_for(split)* (samples by CWE), the
    vectors and gating probes, the scoring options, and the driver's activation sink and prefix store (an
    executor whose workers live in other processes leaves the last two alone), and *on_rows*, told of scored
    (sample, setting) rows as batches finish (a local executor's progress within a chunk)."""

    samples_for: SamplesFor
    vectors: Mapping[tuple[str, str], SteeringVector]
    options: ScoringOptions = DEFAULT_OPTIONS
    probes: Mapping[tuple[str, str], Probe] | None = None
    sink: ActivationSink | None = None
    prefix_store: PrefixStore | None = None
    on_rows: Callable[[int], None] | None = None


class Executor(Protocol):
    """Where chunks of conditions are scored (see the module docstring).

    >>> for chunk, records, seconds in executor.map_chunks(chunks, inputs):  # doctest: +SKIP
    ...     store_them(chunk, records)
    """

    def map_chunks(self, chunks: Sequence[Sequence[Condition]], inputs: ChunkInputs) -> Iterator[ChunkDone]:
        """Score every chunk; yield each as it finishes (in any order)."""
        ...

    def stats(self) -> dict[str, Any]:
        """``{"kind", "workers": [WorkerStats.to_dict(), ...], ...}`` for results.json."""
        ...


class LocalExecutor:
    """Today's loop: each chunk scored in turn on the driver's model, with the driver's sink and prefix store.

    >>> executor = LocalExecutor(lm)  # doctest: +SKIP
    >>> run_conditions(lm, conditions, store, data.by_cwe, vectors, executor=executor)  # doctest: +SKIP
    >>> executor.stats()["workers"][0]["conditions"]  # doctest: +SKIP
    12
    """

    def __init__(self, lm: LoadedModel) -> None:
        self.lm = lm
        self.worker = WorkerStats("local", extra={"device": str(lm.device)})

    def map_chunks(self, chunks: Sequence[Sequence[Condition]], inputs: ChunkInputs) -> Iterator[ChunkDone]:
        for chunk in chunks:
            start = time.perf_counter()
            found = score_chunk(
                self.lm,
                chunk,
                inputs.samples_for(chunk[0].split),
                inputs.vectors,
                inputs.options,
                probes=inputs.probes,
                sink=inputs.sink,
                prefix_store=inputs.prefix_store,
                on_rows=inputs.on_rows,
            )
            seconds = time.perf_counter() - start
            self.worker.add(len(chunk), seconds)
            yield chunk, found, seconds / len(chunk)

    def stats(self) -> dict[str, Any]:
        return {"kind": "local", "workers": [self.worker.to_dict()]}


def _phase(chunks: Sequence[Sequence[Condition]]) -> str:
    """What a scoring phase is called: per split and mode, which kinds of condition it scores (``constant``
    steering and its baselines, ``conditional`` steering, ``prompts``), e.g. ``test logit conditional``: the test
    phases of constant and conditional steering are told apart in a log.

    >>> _phase([[Condition("baseline", "logit", "test")]])
    'test logit constant'
    """
    kinds: dict[tuple[str, str], dict[str, None]] = {}
    for chunk in chunks:
        for c in chunk:
            kind = (
                "conditional"
                if c.setting is not None and c.setting.gated
                else "prompts"
                if c.template != "default"
                else "constant"
            )
            kinds.setdefault((c.split, c.mode), {})[kind] = None
    return " + ".join(f"{split} {mode} {'/'.join(found)}" for (split, mode), found in kinds.items())


def run_conditions(
    lm: LoadedModel,
    conditions: Iterable[Condition],
    store: ResultStore,
    samples_for: SamplesFor,
    vectors: Mapping[tuple[str, str], SteeringVector],
    options: ScoringOptions = DEFAULT_OPTIONS,
    *,
    probes: Mapping[tuple[str, str], Probe] | None = None,
    sink: ActivationSink | None = None,
    prefix_store: PrefixStore | None = None,
    executor: Executor | None = None,
) -> dict[str, list[DetectionRecord]]:
    """Score every condition not already in *store*; returns all records by condition key.

    *samples_for(split)* gives a split's samples by CWE. Pass a :class:`~vulnsteer.detection.prefix.PrefixStore`
    (one per model and run) to compute each batch's unsteered prompt prefix once for all chunks. *executor* says
    where chunks are scored (default: a :class:`LocalExecutor` on *lm*); this function stays the store's only
    writer, appending each chunk as it arrives, and one progress bar counts the conditions of every worker.
    """
    todo = list(dict.fromkeys(conditions))
    chunks = _chunks([c for c in todo if c.key not in store], options.group_size)
    phase = _phase(chunks)
    rows = {id(chunk): _rows(chunk, samples_for) for chunk in chunks}
    total, n_conditions = sum(rows.values()), sum(len(c) for c in chunks)
    # progress counts scored (sample, setting) rows, told batch by batch where the chunk runs here (a chunk of
    # conditions can take minutes: counted in conditions, the log would have no time left until it ends)
    desc = f"conditions ({phase}; {n_conditions} condition{'' if n_conditions == 1 else 's'})"
    with Progress(total, desc, unit="scored sample", enabled=options.progress and total > 0) as bar:
        inputs = ChunkInputs(samples_for, vectors, options, probes, sink, prefix_store, on_rows=bar.update)
        done = (executor or LocalExecutor(lm)).map_chunks(chunks, inputs)
        finished = 0
        try:
            for chunk, found, seconds in done:
                for cond in chunk:
                    store.add(cond, found[cond.key], seconds)
                finished += rows[id(chunk)]
                bar.rewind(finished)  # exact at every chunk's end, whoever scored it
        finally:
            close = getattr(done, "close", None)
            if close is not None:
                close()  # an interrupted sweep stops its workers' chunks in flight
    return {cond.key: store.get(cond.key) for cond in todo}
