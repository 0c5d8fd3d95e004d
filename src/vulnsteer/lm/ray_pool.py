"""A pool of Ray workers, each holding one loaded model, that runs chunks of work and hands the results back.

The sweeps (:class:`~vulnsteer.experiment.ray_executor.RayExecutor`) and ``vulnsteer scan --executor ray``
(:class:`~vulnsteer.scan.ray_scorer.RayScorer`) run on the same pool:

- each worker is a Ray actor that loads the model once (on its own GPU, or on a share of the CPUs) and keeps what
  *setup* builds from it (a sweep's prompt-prefix store, a scan's scorer);
- :meth:`RayPool.map` puts what every chunk reads in the Ray object store once; the driver hands each worker one
  chunk at a time (the next one as soon as it returns one), starting once every worker has loaded its model (or
  failed to), so every worker gets work whatever the order they came up in; the driver gets each finished chunk as
  it comes in (and is the only one to write anything down);
- a worker whose process dies is restarted by Ray (up to ``max_restarts`` times) and the chunk it held is run
  again; finished chunks are never redone. A chunk that fails ``max_attempts`` times, or a pool with no worker
  left, stops the map with :class:`WorkerFailedError` naming the worker and its error, once the chunks still in
  flight are handed back.

Ray is an optional extra (``pip install 'vulnsteer[ray]'``), imported only when a pool starts.

>>> check_ray("local")  # the local executor needs nothing
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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import torch

from .identity import ModelIdentity, check_same_model
from .model import LoadedModel

__all__ = [
    "INSTALL_HINT",
    "Finished",
    "RayPool",
    "RayUnavailableError",
    "WorkerFailedError",
    "WorkerStats",
    "check_ray",
    "one_line",
]

INSTALL_HINT = "pip install 'vulnsteer[ray]'"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")

T = TypeVar("T")
#: What a worker runs on one chunk: ``task(lm, state, shared, chunk)``, where *state* is what the pool's *setup*
#: built from the worker's model (None without one) and *shared* what :meth:`RayPool.map` put in the object store.
Task = Callable[[LoadedModel, Any, Any, Any], Any]


class RayUnavailableError(ValueError):
    """``executor = "ray"`` where Ray is not installed."""


class WorkerFailedError(RuntimeError):
    """A chunk or every worker kept failing; the chunks finished before were handed back (rerun to resume)."""


def check_ray(executor: str) -> None:
    """Refuse the executor ``ray`` without Ray installed (before any model loads), naming the install command.

    >>> check_ray("ray")  # doctest: +SKIP
    Traceback (most recent call last):
    ...
    vulnsteer.lm.ray_pool.RayUnavailableError: run.executor = "ray" needs Ray, which is not installed: pip install ...
    """
    if executor == "ray" and importlib.util.find_spec("ray") is None:
        raise _no_ray()


def _no_ray() -> RayUnavailableError:
    return RayUnavailableError(f'run.executor = "ray" needs Ray, which is not installed: {INSTALL_HINT}')


def one_line(exc: BaseException) -> str:
    """The last line of an error that Ray wraps (the worker's exception type and message), without colours."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException) and not type(cause).__module__.startswith("ray"):
        return f"{type(cause).__name__}: {cause}"
    lines = [line.strip() for line in _ANSI.sub("", str(exc)).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


@dataclass
class WorkerStats:
    """What one worker did: chunks and items (*noun*: conditions of a sweep, functions of a scan) done, seconds
    spent on them, restarts after a crash, chunk attempts that failed on it, and its last error (set when it was
    given up on).

    >>> worker = WorkerStats("local")
    >>> worker.add(items=4, seconds=2.0)
    >>> worker.to_dict()["conditions_per_s"]
    2.0
    """

    id: str
    chunks: int = 0
    items: int = 0
    seconds: float = 0.0
    restarts: int = 0
    failed_chunks: int = 0
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    noun: str = "condition"

    def add(self, items: int, seconds: float) -> None:
        self.chunks += 1
        self.items += items
        self.seconds += seconds

    def to_dict(self) -> dict[str, Any]:
        """``{"id", "chunks", "<noun>s", "seconds", "<noun>s_per_s", ...}`` (for results.json)."""
        rate = self.items / self.seconds if self.seconds > 0 else None
        out = {
            "id": self.id,
            "chunks": self.chunks,
            f"{self.noun}s": self.items,
            "seconds": round(self.seconds, 3),
            f"{self.noun}s_per_s": None if rate is None else round(rate, 3),
            "restarts": self.restarts,
            "failed_chunks": self.failed_chunks,
            **self.extra,
        }
        if self.error is not None:
            out["error"] = self.error
        return out


@dataclass(frozen=True)
class Finished(Generic[T]):
    """One chunk done: its index in the chunks given to :meth:`RayPool.map`, the worker that did it, the task's
    result, and the seconds the task took on the worker."""

    index: int
    worker: int
    result: T
    seconds: float


class _Worker:
    """A Ray actor (see :class:`RayPool`): one loaded model, what *setup* built from it, the current shared input."""

    def __init__(self, load: Callable[[], LoadedModel], threads: int, setup: Callable[[LoadedModel], Any] | None):
        torch.set_num_threads(threads)
        self.lm = load()
        self.state = setup(self.lm) if setup is not None else None
        self.shared_key: str | None = None
        self.shared: Any = None

    def ready(self) -> dict[str, Any]:
        """Who this worker is, and the identity of the model it loaded."""
        return {"pid": os.getpid(), "host": socket.gethostname(), "device": str(self.lm.device),
                "model": self.lm.identity}  # fmt: skip

    def run(self, task: Task, box: list[Any], chunk: Any) -> tuple[Any, float, float]:
        """*task* on one chunk; *box* holds the reference to the map's shared input (fetched once per map).
        Returns the result, the seconds it took, and the CPU seconds this process has used so far."""
        import ray

        ref = box[0]
        if ref.hex() != self.shared_key:
            self.shared, self.shared_key = ray.get(ref), ref.hex()
        start = time.perf_counter()
        result = task(self.lm, self.state, self.shared, chunk)
        return result, time.perf_counter() - start, time.process_time()


class RayPool:
    """Workers on Ray, each with one loaded model (see the module docstring). Use as a context manager.

    Args:
        load: a picklable function returning the model (each worker calls it once, and again after a restart).
        workers: how many workers (0: one per *gpus_per_worker* GPUs of the cluster, else 1).
        gpus_per_worker: GPUs each worker holds (None: 1 on a cluster with GPUs, else 0 = CPU workers, which
            share the cluster's CPUs evenly).
        address: the cluster to join (``auto``, ``HOST:PORT``); None starts a local Ray instance (a Ray already
            initialised in this process is used as it is).
        expect_model: the driver's model identity: a worker that loads another model (other weights, dtype or
            device type) is refused.
        max_attempts: tries per chunk before the map stops.
        max_restarts: restarts per worker process (Ray restarts a dead worker, which loads the model again).
        restart_timeout_s: how long a restarting worker may take to be back before it is given up on.
        threads: torch's CPU threads in each worker (None: as many as this process uses, so that CPU sums add up
            in the same order as in a local run and the numbers match it bit for bit).
        setup: a picklable function each worker calls once on its model; tasks get what it returns.
        noun: what a chunk holds, for the workers' stats (``condition``, ``function``).

    >>> with RayPool(partial(load_model, "Qwen/Qwen2.5-1.5B-Instruct"), workers=2) as pool:  # doctest: +SKIP
    ...     for done in pool.map(chunks, task, shared):
    ...         store(chunks[done.index], done.result)
    """

    def __init__(
        self,
        load: Callable[[], LoadedModel],
        *,
        workers: int = 0,
        gpus_per_worker: float | None = None,
        address: str | None = None,
        expect_model: ModelIdentity | None = None,
        max_attempts: int = 3,
        max_restarts: int = 3,
        restart_timeout_s: float = 1800.0,
        threads: int | None = None,
        setup: Callable[[LoadedModel], Any] | None = None,
        noun: str = "condition",
    ) -> None:
        self.load, self.address, self.setup, self.noun = load, address, setup, noun
        self.requested_workers, self.gpus_per_worker = workers, gpus_per_worker
        self.expect_model = expect_model
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

    def __enter__(self) -> RayPool:
        try:
            self.start()
        except BaseException:
            self.close()  # a Ray instance this pool started does not outlive the error
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Join or start Ray and start the workers; their models load while the driver goes on."""
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
            self.actors.append(actor.remote(self.load, threads, self.setup))
            self.workers.append(WorkerStats(f"ray-{index}", noun=self.noun))
            self.state.append("starting")
            self.deaths.append(0)
            self.probes[self.actors[-1].ready.remote()] = index

    def close(self) -> None:
        """Stop the workers, and Ray if this pool started it."""
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
        """``{"kind": "ray", "workers": [...], "retried_chunks", "ready_s", "wall_s", ...}``."""
        return {
            "kind": "ray",
            **self.info,
            "workers": [w.to_dict() for w in self.workers],
            "retried_chunks": self.retried,
            "ready_s": None if self.ready_s is None else round(self.ready_s, 2),
            "wall_s": round(self.wall_s, 2),
        }

    # ------------------------------------------------------------------------------------------------ mapping

    def map(
        self,
        chunks: Sequence[Sequence[Any]],
        task: Task,
        shared: Any = None,
        *,
        describe: Callable[[Sequence[Any]], str] = lambda chunk: f"{len(chunk)} items",
    ) -> Iterator[Finished[Any]]:
        """Run *task* on every chunk on the workers (see the module docstring); yield each as it finishes.
        *describe* names a chunk in an error."""
        if not chunks:
            return
        if not self.actors:
            raise RuntimeError("RayPool.map before start() (use it as a context manager)")
        import ray
        from ray.exceptions import RayActorError

        began = time.perf_counter()
        shared_ref = ray.put(shared)
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
                    running[self.actors[w].run.remote(task, [shared_ref], list(chunks[i]))] = (i, w)

        def failed(i: int, w: int, error: str) -> None:
            self.workers[w].failed_chunks += 1
            if attempts[i] >= self.max_attempts:
                failure.append(
                    f"a chunk ({describe(chunks[i])}) failed {attempts[i]} times, last on Ray worker {w} "
                    f"({self.workers[w].extra.get('host', '?')}): {error}"
                )
            else:
                self.retried += 1
                queue.appendleft(i)

        try:
            self._await_start()
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
                        result, seconds, cpu_s = ray.get(call)
                    except RayActorError as exc:  # the worker's process died with the chunk in flight
                        failed(i, w, f"worker process died: {one_line(exc)}")
                        self._died(w, exc)
                    except Exception as exc:  # the chunk raised on the worker
                        failed(i, w, one_line(exc))
                        in_a_row.setdefault(w, set()).add(i)
                        if len(in_a_row[w]) >= self.max_attempts:  # several chunks: the worker is broken
                            self._give_up(w, f"{len(in_a_row[w])} chunks failed in a row, last: {one_line(exc)}")
                    else:
                        in_a_row.pop(w, None)
                        self.workers[w].add(len(chunks[i]), seconds)
                        self.workers[w].extra["cpu_s"] = round(cpu_s, 2)
                        fill()  # the worker's next chunk starts while the driver stores this one
                        yield Finished(i, w, result, seconds)
                fill()
            if queue and not failure:
                errors = "; ".join(f"worker {w}: {s.error}" for w, s in enumerate(self.workers) if s.error)
                failure.append(f"no Ray worker is left ({errors})")
        finally:
            for call in running:
                with contextlib.suppress(Exception):
                    ray.cancel(call)
            self.wall_s += time.perf_counter() - began
        if failure:
            raise WorkerFailedError(
                f"{failure[0]}; the chunks finished before are stored (rerun the same command to resume)"
            )

    def _await_start(self) -> None:
        """Wait until no worker is still starting (each has loaded its model, or was given up on): chunks handed
        out while some workers still load would all go to the first one up."""
        import ray

        while any(state == "starting" for state in self.state) and (self.probes or self.asleep):
            self._wake()
            waiting = list(self.probes)
            done = ray.wait(waiting, num_returns=1, timeout=0.5)[0] if waiting else []
            if not waiting:
                time.sleep(0.1)
            for call in done:
                self._probed(call)

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
                self._give_up(w, f"not back {self.restart_timeout_s:.0f}s after a restart: {one_line(exc)}")
            else:
                self.asleep[w] = time.monotonic() + 0.5
            return
        except RayActorError as exc:
            self._died(w, exc)
            return
        except Exception as exc:  # pragma: no cover - ready() itself raised
            self._give_up(w, one_line(exc))
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
            self._give_up(w, f"its process died {self.deaths[w]} times, last: {one_line(exc)}")
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
