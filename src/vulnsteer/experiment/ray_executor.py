"""Sweeps on a Ray cluster: chunks of conditions scored by a pool of Ray workers (:class:`~vulnsteer.lm.ray_pool.
RayPool`), each holding one loaded model.

``[run] executor = "ray"`` (or ``--executor ray``) hands the chunks of :func:`~vulnsteer.experiment.engine.
run_conditions` to :class:`RayExecutor`:

- each worker is a Ray actor that loads the model of the ``[model]`` section once (on its own GPU, or on a share
  of the CPUs) and keeps its own prompt-prefix store; the driver computes the activations, vectors and probes once
  and puts them, with the samples, in the Ray object store, where every worker reads them;
- the driver hands each worker one chunk at a time (the next one as soon as it returns one; the first ones once
  every worker is up) and appends each finished chunk to ``records.jsonl`` itself (one writer, as in a local
  run), so the run directory holds the same records, a killed driver resumes like a local sweep, and one progress
  bar counts every worker's conditions; a chunk's records do not depend on which worker scored it, nor on what
  that worker scored before (its prefix store reuses only what the chunk would compute itself);
- a worker whose process dies is restarted by Ray (up to ``max_restarts`` times) and the chunk it was scoring
  is run again; finished chunks are never redone. A chunk that fails ``max_attempts`` times, or a pool with no
  worker left, stops the sweep with :class:`WorkerFailedError` naming the worker and its error, once the chunks
  still in flight are stored.

Ray is an optional extra (``pip install 'vulnsteer[ray]'``), imported only when a Ray executor starts.

>>> from vulnsteer.config import RunSection
>>> check_executor(RunSection())  # the local executor needs nothing
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial

import torch

from ..config import RunSection
from ..data.sample import Sample
from ..detection.prefix import PrefixStore
from ..detection.records import DetectionRecord
from ..lm.activations import ActivationSink
from ..lm.identity import ModelIdentity
from ..lm.model import LoadedModel
from ..lm.ray_pool import INSTALL_HINT, RayPool, RayUnavailableError, WorkerFailedError, check_ray
from ..steering.probe import Probe
from ..steering.vectors import SteeringVector
from .engine import ChunkDone, ChunkInputs, Executor, LocalExecutor, ScoringOptions, score_chunk
from .grid import Condition

__all__ = [
    "INSTALL_HINT",
    "RayExecutor",
    "RayUnavailableError",
    "WorkerFailedError",
    "check_executor",
    "open_executor",
]

#: How a chunk is scored on a worker: :func:`~vulnsteer.experiment.engine.score_chunk`'s signature.
ScoreFn = Callable[..., dict[str, list[DetectionRecord]]]


def check_executor(run: RunSection) -> None:
    """Refuse ``executor = "ray"`` without Ray installed (before any model loads), naming the install command.

    >>> check_executor(RunSection(executor="ray"))  # doctest: +SKIP
    Traceback (most recent call last):
    ...
    vulnsteer.lm.ray_pool.RayUnavailableError: run.executor = "ray" needs Ray, which is not installed: pip install ...
    """
    check_ray(run.executor)


@contextlib.contextmanager
def open_executor(run: RunSection, load: Callable[[], LoadedModel], lm: LoadedModel) -> Iterator[Executor]:
    """The executor ``[run]`` asks for: a :class:`~vulnsteer.experiment.engine.LocalExecutor` on *lm*, or a
    started :class:`RayExecutor` whose workers each call *load* (a picklable function returning the same model as
    *lm*, e.g. ``functools.partial(load_model, config.model)``), stopped on exit.

    >>> with open_executor(RunSection(), load, lm) as executor:  # doctest: +SKIP
    ...     run_conditions(lm, conditions, store, data.by_cwe, vectors, executor=executor)
    """
    check_executor(run)
    if run.executor == "local":
        yield LocalExecutor(lm)
        return
    with RayExecutor(
        load,
        workers=run.ray_workers,
        gpus_per_worker=run.ray_gpus_per_worker,
        address=run.ray_address,
        prefix_cache_bytes=run.prefix_cache_mib * 1024**2,
        expect_model=lm.identity,
    ) as executor:
        yield executor


@dataclass(frozen=True)
class _Shared:
    """What every chunk of one :meth:`RayExecutor.map_chunks` call reads: put in the object store once."""

    samples: Mapping[str, Mapping[str, Sequence[Sample]]]
    vectors: Mapping[tuple[str, str], SteeringVector]
    probes: Mapping[tuple[str, str], Probe]
    options: ScoringOptions
    #: the layers of the driver's activation sink (None: it has none)
    sink_layers: list[int] | None


@dataclass(frozen=True)
class _Scored:
    """One chunk's result from a worker: records by condition key, the worker's prefix-store counters, and the
    unsteered states its sink recorded (``{sample_id: {pooling: [layers, hidden]}}``)."""

    records: dict[str, list[DetectionRecord]]
    prefix_cache: dict[str, int]
    sink_rows: dict[str, dict[str, torch.Tensor]]


def _prefix_store(max_bytes: int, lm: LoadedModel) -> PrefixStore:
    """A worker's own prompt-prefix store (the pool's *setup*)."""
    return PrefixStore(max_bytes=max_bytes)


def _score_task(
    score: ScoreFn, lm: LoadedModel, store: PrefixStore, inputs: _Shared, chunk: list[Condition]
) -> _Scored:
    """One chunk of conditions scored on a worker (the pool's task), with the worker's prefix store."""
    sink = None if inputs.sink_layers is None else ActivationSink(inputs.sink_layers)
    found = score(
        lm,
        chunk,
        inputs.samples[chunk[0].split],
        inputs.vectors,
        inputs.options,
        probes=inputs.probes,
        sink=sink,
        prefix_store=store,
    )
    prefix = {"hits": store.hits, "misses": store.misses, "entries": len(store)}
    return _Scored(found, prefix, sink.rows if sink is not None else {})


def _describe(chunk: Sequence[Condition]) -> str:
    return ", ".join(c.key for c in chunk[:3]) + (" ..." if len(chunk) > 3 else "")


class RayExecutor(RayPool):
    """Chunks of conditions scored by a pool of Ray workers (see the module docstring), each with its own
    prompt-prefix store. Use as a context manager.

    Args:
        load: a picklable function returning the model (each worker calls it once, and again after a restart).
        prefix_cache_bytes: each worker's prompt-prefix store budget.
        score: the chunk scorer run on the workers (:func:`~vulnsteer.experiment.engine.score_chunk`).
        workers, gpus_per_worker, address, expect_model, max_attempts, max_restarts, restart_timeout_s, threads:
            the pool's (:class:`~vulnsteer.lm.ray_pool.RayPool`).

    >>> from functools import partial
    >>> with RayExecutor(partial(load_model, "Qwen/Qwen2.5-1.5B-Instruct"), workers=2) as executor:  # doctest: +SKIP
    ...     run_conditions(lm, conditions, store, data.by_cwe, vectors, executor=executor)
    """

    def __init__(
        self,
        load: Callable[[], LoadedModel],
        *,
        workers: int = 0,
        gpus_per_worker: float | None = None,
        address: str | None = None,
        prefix_cache_bytes: int = 2 * 1024**3,
        expect_model: ModelIdentity | None = None,
        max_attempts: int = 3,
        max_restarts: int = 3,
        restart_timeout_s: float = 1800.0,
        threads: int | None = None,
        score: ScoreFn = score_chunk,
    ) -> None:
        super().__init__(
            load,
            workers=workers,
            gpus_per_worker=gpus_per_worker,
            address=address,
            expect_model=expect_model,
            max_attempts=max_attempts,
            max_restarts=max_restarts,
            restart_timeout_s=restart_timeout_s,
            threads=threads,
            setup=partial(_prefix_store, prefix_cache_bytes),
        )
        self.score = score

    def __enter__(self) -> RayExecutor:
        super().__enter__()
        return self

    def map_chunks(self, chunks: Sequence[Sequence[Condition]], inputs: ChunkInputs) -> Iterator[ChunkDone]:
        """Score *chunks* on the workers; yield each as it finishes. Each worker keeps its own prefix store (the
        driver's is not used); what the workers' sinks record is added to the driver's sink in chunk order once
        every chunk is in, so it holds what a local run's would."""
        if not chunks:
            return
        splits = dict.fromkeys(chunk[0].split for chunk in chunks)
        shared = _Shared(
            {split: inputs.samples_for(split) for split in splits},
            dict(inputs.vectors),
            dict(inputs.probes or {}),
            inputs.options,
            None if inputs.sink is None else list(inputs.sink.layers),
        )
        sink_rows: dict[int, dict[str, dict[str, torch.Tensor]]] = {}
        for done in self.map(chunks, partial(_score_task, self.score), shared, describe=_describe):
            scored: _Scored = done.result
            self.workers[done.worker].extra["prefix_cache"] = scored.prefix_cache
            if scored.sink_rows:
                sink_rows[done.index] = scored.sink_rows
            yield chunks[done.index], scored.records, done.seconds / len(chunks[done.index])
        if inputs.sink is not None:
            for i in sorted(sink_rows):  # chunk order: a state recorded twice ends as a local run's does
                for sample_id, by_pooling in sink_rows[i].items():
                    for pooling, value in by_pooling.items():
                        inputs.sink.add(sample_id, pooling, value)
