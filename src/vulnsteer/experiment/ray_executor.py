"""Sweeps on a Ray cluster: chunks of conditions scored by a pool of Ray workers, each holding one loaded model.

``[run] executor = "ray"`` (or ``--executor ray``) hands the chunks of :func:`~vulnsteer.experiment.engine.
run_conditions` to :class:`RayExecutor`:

- each worker is a Ray actor that loads the model of the ``[model]`` section once (on its own GPU, or on a share
  of the CPUs) and keeps its own prompt-prefix store; the driver computes the activations, vectors and probes once
  and puts them, with the samples, in the Ray object store, where every worker reads them;
- the driver hands each worker one chunk at a time (the next one as soon as it returns one) and appends each
  finished chunk to ``records.jsonl`` itself (one writer, as in a local run), so the run directory holds the
  same records, a killed driver resumes like a local sweep, and one progress bar counts every worker's
  conditions;
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
import importlib.util
import logging
import os
import re
import socket
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..config import RunSection
from ..data.sample import Sample
from ..detection.prefix import PrefixStore
from ..detection.records import DetectionRecord
from ..lm.activations import ActivationSink
from ..lm.identity import ModelIdentity, check_same_model
from ..lm.model import LoadedModel
from ..steering.probe import Probe
from ..steering.vectors import SteeringVector
from .engine import ChunkDone, ChunkInputs, Executor, LocalExecutor, ScoringOptions, WorkerStats, score_chunk
from .grid import Condition

__all__ = [
    "INSTALL_HINT",
    "RayExecutor",
    "RayUnavailableError",
    "WorkerFailedError",
    "check_executor",
    "open_executor",
]

INSTALL_HINT = "pip install 'vulnsteer[ray]'"
#: How a chunk is scored on a worker: :func:`~vulnsteer.experiment.engine.score_chunk`'s signature.
ScoreFn = Callable[..., dict[str, list[DetectionRecord]]]
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class RayUnavailableError(ValueError):
    """``executor = "ray"`` where Ray is not installed."""


class WorkerFailedError(RuntimeError):
    """A chunk or every worker kept failing; the chunks finished before are stored (rerun to resume)."""


def check_executor(run: RunSection) -> None:
    """Refuse ``executor = "ray"`` without Ray installed (before any model loads), naming the install command.

    >>> check_executor(RunSection(executor="ray"))  # doctest: +SKIP
    Traceback (most recent call last):
    ...
    vulnsteer.experiment.ray_executor.RayUnavailableError: run.executor = "ray" needs Ray: pip install 'vulnsteer[ray]'
    """
    if run.executor == "ray" and importlib.util.find_spec("ray") is None:
        raise _no_ray()


def _no_ray() -> RayUnavailableError:
    return RayUnavailableError(f'run.executor = "ray" needs Ray, which is not installed: {INSTALL_HINT}')


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


def _one_line(exc: BaseException) -> str:
    """The last line of an error that Ray wraps (the worker's exception type and message), without colours."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException) and not type(cause).__module__.startswith("ray"):
        return f"{type(cause).__name__}: {cause}"
    lines = [line.strip() for line in _ANSI.sub("", str(exc)).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


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
    """One chunk's result from a worker: records by condition key, scoring seconds, the worker's prefix-store
    counters, the unsteered states its sink recorded (``{sample_id: {pooling: [layers, hidden]}}``), and the CPU
    seconds its process has used so far."""

    records: dict[str, list[DetectionRecord]]
    seconds: float
    prefix_cache: dict[str, int]
    sink_rows: dict[str, dict[str, torch.Tensor]]
    cpu_s: float


class _Worker:
    """A Ray actor (see :class:`RayExecutor`): one loaded model, its prefix store, the current inputs."""

    def __init__(self, load: Callable[[], LoadedModel], prefix_bytes: int, threads: int, score: ScoreFn) -> None:
        torch.set_num_threads(threads)
        self.lm = load()
        self.prefix_store = PrefixStore(max_bytes=prefix_bytes)
        self.score_fn = score
        self.shared_key: str | None = None
        self.shared: _Shared | None = None

    def ready(self) -> dict[str, Any]:
        """Who this worker is, and the identity of the model it loaded."""
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "device": str(self.lm.device),
            "model": self.lm.identity,
        }

    def score(self, box: list[Any], chunk: list[Condition]) -> _Scored:
        """Score one chunk; *box* holds the reference to the call's :class:`_Shared` (fetched once per call)."""
        import ray

        ref = box[0]
        if ref.hex() != self.shared_key:
            self.shared, self.shared_key = ray.get(ref), ref.hex()
        inputs = self.shared
        assert inputs is not None
        sink = None if inputs.sink_layers is None else ActivationSink(inputs.sink_layers)
        start = time.perf_counter()
        found = self.score_fn(
            self.lm,
            chunk,
            inputs.samples[chunk[0].split],
            inputs.vectors,
            inputs.options,
            probes=inputs.probes,
            sink=sink,
            prefix_store=self.prefix_store,
        )
        seconds = time.perf_counter() - start
        ps = self.prefix_store
        prefix = {"hits": ps.hits, "misses": ps.misses, "entries": len(ps)}
        return _Scored(found, seconds, prefix, sink.rows if sink is not None else {}, time.process_time())


class RayExecutor:
    """Chunks scored by a pool of Ray workers (see the module docstring). Use as a context manager.

    Args:
        load: a picklable function returning the model (each worker calls it once, and again after a restart).
        workers: how many workers (0: one per *gpus_per_worker* GPUs of the cluster, else 1).
        gpus_per_worker: GPUs each worker holds (None: 1 on a cluster with GPUs, else 0 = CPU workers, which
            share the cluster's CPUs evenly).
        threads: torch's CPU threads in each worker (None: as many as this process uses, so that CPU sums add up
            in the same order as in a local run and the numbers match it bit for bit).
        address: the cluster to join (``auto``, ``HOST:PORT``); None starts a local Ray instance for the run
            (a Ray already initialised in this process is used as it is).
        prefix_cache_bytes: each worker's prompt-prefix store budget.
        expect_model: the driver's model identity (``lm.identity``): a worker that loads another model (other
            weights, dtype or device type) is refused.
        max_attempts: tries per chunk before the sweep stops.
        max_restarts: restarts per worker process (Ray restarts a dead worker, which loads the model again).
        restart_timeout_s: how long a restarting worker may take to be back before it is given up on.
        score: the chunk scorer run on the workers (:func:`~vulnsteer.experiment.engine.score_chunk`).

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
        self.load, self.address, self.score = load, address, score
        self.requested_workers, self.gpus_per_worker = workers, gpus_per_worker
        self.prefix_cache_bytes, self.expect_model = prefix_cache_bytes, expect_model
        self.max_attempts, self.max_restarts, self.restart_timeout_s = max_attempts, max_restarts, restart_timeout_s
        self.threads = threads
        self.owns_ray = False
        self.actors: list[Any] = []
        self.workers: list[WorkerStats] = []
        self.state: list[str] = []  # per worker: starting, alive, gone
        self.deaths: list[int] = []
        self.probes: dict[Any, int] = {}  # readiness calls of starting or restarted workers -> worker
        self.asleep: dict[int, float] = {}  # restarting workers -> when to ask again (monotonic seconds)
        self.restarting_since: dict[int, float] = {}
        self.retried = 0
        self.started = 0.0
        self.ready_s: float | None = None
        self.wall_s = 0.0
        self.info: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------------------ lifecycle

    def __enter__(self) -> RayExecutor:
        try:
            self.start()
        except BaseException:
            self.close()  # a Ray instance this executor started does not outlive the error
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Join or start Ray and start the workers; their models load while the driver goes on (fitting)."""
        try:
            import ray
        except ImportError:
            raise _no_ray() from None
        self.started = time.perf_counter()
        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
            self.owns_ray = True
        resources = ray.cluster_resources()
        cluster_gpus, cluster_cpus = float(resources.get("GPU", 0)), float(resources.get("CPU", 1))
        gpus = self.gpus_per_worker
        if gpus is None:
            gpus = 1.0 if cluster_gpus >= 1 else 0.0
        if gpus > cluster_gpus:
            raise ValueError(
                f"run.ray_gpus_per_worker = {gpus:g}, but the Ray cluster has {cluster_gpus:g} GPUs "
                "(0 runs CPU workers)"
            )
        count = self.requested_workers or (max(1, int(cluster_gpus // gpus)) if gpus else 1)
        cpus = min(1.0, cluster_cpus / count) if gpus else cluster_cpus / count
        threads = self.threads or torch.get_num_threads()
        actor = ray.remote(_Worker).options(
            num_cpus=cpus, num_gpus=gpus, max_restarts=self.max_restarts, max_task_retries=0
        )
        self.info = {
            "address": self.address or "local",
            "gpus_per_worker": gpus,
            "cpus_per_worker": round(cpus, 3),
            "threads_per_worker": threads,
        }
        for index in range(count):
            self.actors.append(actor.remote(self.load, self.prefix_cache_bytes, threads, self.score))
            self.workers.append(WorkerStats(f"ray-{index}"))
            self.state.append("starting")
            self.deaths.append(0)
            self.probes[self.actors[-1].ready.remote()] = index

    def close(self) -> None:
        """Stop the workers, and Ray if this executor started it."""
        if not self.actors and not self.owns_ray:
            return
        import ray

        for actor in self.actors:
            with contextlib.suppress(Exception):
                ray.kill(actor)
        self.actors, self.probes, self.asleep = [], {}, {}
        if self.owns_ray:
            ray.shutdown()
            self.owns_ray = False

    def stats(self) -> dict[str, Any]:
        """``{"kind": "ray", "workers": [...], "retried_chunks", "ready_s", "wall_s", ...}`` for results.json."""
        return {
            "kind": "ray",
            **self.info,
            "workers": [w.to_dict() for w in self.workers],
            "retried_chunks": self.retried,
            "ready_s": None if self.ready_s is None else round(self.ready_s, 2),
            "wall_s": round(self.wall_s, 2),
        }

    # ------------------------------------------------------------------------------------------------ scoring

    def map_chunks(self, chunks: Sequence[Sequence[Condition]], inputs: ChunkInputs) -> Iterator[ChunkDone]:
        """Score *chunks* on the workers; yield each as it finishes. Each worker keeps its own prefix store (the
        driver's is not used); what the workers' sinks record is added to the driver's sink in chunk order once
        every chunk is in, so it holds what a local run's would."""
        if not chunks:
            return
        if not self.actors:
            raise RuntimeError("RayExecutor.map_chunks before start() (use it as a context manager)")
        import ray
        from ray.exceptions import RayActorError

        began = time.perf_counter()
        splits = dict.fromkeys(chunk[0].split for chunk in chunks)
        shared = _Shared(
            {split: inputs.samples_for(split) for split in splits},
            dict(inputs.vectors),
            dict(inputs.probes or {}),
            inputs.options,
            None if inputs.sink is None else list(inputs.sink.layers),
        )
        shared_ref = ray.put(shared)
        sink_rows: dict[int, dict[str, dict[str, torch.Tensor]]] = {}
        queue = deque(range(len(chunks)))
        attempts = [0] * len(chunks)
        running: dict[Any, tuple[int, int]] = {}  # call -> (chunk, worker)
        failure: list[str] = []
        in_a_row: dict[int, set[int]] = {}  # per worker, the different chunks that failed on it in a row

        def fill() -> None:  # one chunk in flight per worker: a worker that dies was running the chunk it held
            busy = {w for _, w in running.values()}
            for w, state in enumerate(self.state):
                if state == "alive" and w not in busy and queue and not failure:
                    i = queue.popleft()
                    attempts[i] += 1
                    running[self.actors[w].score.remote([shared_ref], list(chunks[i]))] = (i, w)

        def failed(i: int, w: int, error: str) -> None:
            self.workers[w].failed_chunks += 1
            if attempts[i] >= self.max_attempts:
                keys = ", ".join(c.key for c in chunks[i][:3]) + (" ..." if len(chunks[i]) > 3 else "")
                failure.append(
                    f"a chunk ({keys}) failed {attempts[i]} times, last on Ray worker {w} "
                    f"({self.workers[w].extra.get('host', '?')}): {error}"
                )
            else:
                self.retried += 1
                queue.appendleft(i)

        try:
            fill()
            while running or (queue and (self.probes or self.asleep) and not failure):
                self._wake()
                waiting = [*running, *self.probes]
                done = ray.wait(waiting, num_returns=1, timeout=0.5)[0] if waiting else []
                if not waiting:
                    time.sleep(0.1)
                for call in done:
                    if call in self.probes:
                        self._probed(call)
                        continue
                    i, w = running.pop(call)
                    try:
                        scored: _Scored = ray.get(call)
                    except RayActorError as exc:  # the worker's process died with the chunk in flight
                        failed(i, w, f"worker process died: {_one_line(exc)}")
                        self._died(w, exc)
                    except Exception as exc:  # the chunk raised on the worker
                        failed(i, w, _one_line(exc))
                        in_a_row.setdefault(w, set()).add(i)
                        if len(in_a_row[w]) >= self.max_attempts:  # several chunks: the worker is broken
                            self._give_up(w, f"{len(in_a_row[w])} chunks failed in a row, last: {_one_line(exc)}")
                    else:
                        in_a_row.pop(w, None)
                        self.workers[w].add(len(chunks[i]), scored.seconds)
                        self.workers[w].extra.update(prefix_cache=scored.prefix_cache, cpu_s=round(scored.cpu_s, 2))
                        if scored.sink_rows:
                            sink_rows[i] = scored.sink_rows
                        fill()  # the worker's next chunk starts while the driver stores this one
                        yield chunks[i], scored.records, scored.seconds / len(chunks[i])
                fill()
            if queue and not failure:
                errors = "; ".join(f"worker {w}: {s.error}" for w, s in enumerate(self.workers) if s.error)
                failure.append(f"no Ray worker is left ({errors})")
            if inputs.sink is not None:
                for i in sorted(sink_rows):  # chunk order: a state recorded twice ends as a local run's does
                    for sample_id, by_pooling in sink_rows[i].items():
                        for pooling, value in by_pooling.items():
                            inputs.sink.add(sample_id, pooling, value)
        finally:
            for call in running:
                with contextlib.suppress(Exception):
                    ray.cancel(call)
            self.wall_s += time.perf_counter() - began
        if failure:
            raise WorkerFailedError(
                f"{failure[0]}; the chunks finished before are stored (rerun the same command to resume)"
            )

    def _probed(self, ref: Any) -> None:
        """A starting or restarted worker answered (or died again)."""
        import ray
        from ray.exceptions import ActorUnavailableError, RayActorError

        w = self.probes.pop(ref)
        try:
            info = ray.get(ref)
        except ActorUnavailableError as exc:  # still restarting: ask again soon
            since = self.restarting_since.setdefault(w, time.monotonic())
            if time.monotonic() - since > self.restart_timeout_s:
                self._give_up(w, f"not back {self.restart_timeout_s:.0f}s after a restart: {_one_line(exc)}")
            else:
                self.asleep[w] = time.monotonic() + 0.5
            return
        except RayActorError as exc:
            self._died(w, exc)
            return
        except Exception as exc:  # pragma: no cover - ready() itself raised
            self._give_up(w, _one_line(exc))
            return
        where = f"Ray worker {w} on {info['host']}"
        expected = self.expect_model
        differs = [] if expected is None else check_same_model(info["model"], expected, where, allow=True, numbers=True)
        if differs:
            self._give_up(
                w,
                f"it loaded another model than this process ({differs[0]}): every worker loads the [model] "
                "section, so give model.name a path or id that every node can load, with the same dtype and device "
                "type",
            )
            return
        self.workers[w].extra.update({k: info[k] for k in ("host", "pid", "device")})
        self.state[w] = "alive"
        self.restarting_since.pop(w, None)
        if self.ready_s is None:
            self.ready_s = time.perf_counter() - self.started

    def _died(self, w: int, exc: BaseException) -> None:
        """Worker *w*'s process died: wait for Ray's restart (a readiness call), or give up on it."""
        if self.state[w] == "gone":
            return
        self.deaths[w] += 1
        if self.deaths[w] > self.max_restarts:
            self._give_up(w, f"its process died {self.deaths[w]} times, last: {_one_line(exc)}")
            return
        self.workers[w].restarts += 1
        self.state[w] = "starting"
        self.probes[self.actors[w].ready.remote()] = w

    def _wake(self) -> None:
        """Ask the restarting workers whose time has come whether they are back."""
        now = time.monotonic()
        for w in [w for w, at in self.asleep.items() if at <= now]:
            del self.asleep[w]
            self.probes[self.actors[w].ready.remote()] = w

    def _give_up(self, w: int, error: str) -> None:
        self.state[w] = "gone"
        self.workers[w].error = error
        self.asleep.pop(w, None)
        for ref in [ref for ref, worker in self.probes.items() if worker == w]:
            del self.probes[ref]
