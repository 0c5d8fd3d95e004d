"""``vulnsteer scan --executor ray``: the functions to score sent in chunks to a pool of Ray workers.

:class:`RayScorer` is a :class:`~vulnsteer.scan.model_scorer.ModelScorer` spread over the workers of a
:class:`~vulnsteer.lm.ray_pool.RayPool` (the sweeps' pool): each worker loads the ``[model]`` section once and
builds the same scorer on it; the scan engine hands it all its chunks at once (:meth:`RayScorer.score_chunks`),
each worker scores one chunk at a time exactly as a local scan scores it (the same chunks, batches and torch
threads, so the same numbers), and the driver writes each finished chunk to the score cache (the only writer).
A worker whose process dies is restarted and its chunk scored again. The digest, provenance and ``--adapt`` are
the driver's scorer's: a rescan whose functions are all cached starts no Ray at all.

>>> with RayScorer(ModelScorer(spec), RunSection(executor="ray", ray_workers=2)) as scorer:  # doctest: +SKIP
...     report = scan(["src/"], scorer, cache_dir=cache)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from functools import partial
from typing import Any

from ..config import RunSection
from ..data.sample import Sample
from ..lm.prompts import PromptTemplate
from ..lm.ray_pool import Task, check_ray
from .model_scorer import ModelScorer
from .scorer import FunctionScore
from .spec import ScorerSpec

__all__ = ["RayScorer"]


def _worker_scorer(spec: ScorerSpec, template: PromptTemplate, lm: Any) -> ModelScorer:
    """The scorer a worker builds on its model (the pool's *setup*)."""
    return ModelScorer(spec, lm=lm, template=template)


def _score_task(lm: Any, scorer: ModelScorer, shared: None, chunk: list[Sample]) -> list[FunctionScore]:
    """One chunk of functions scored on a worker (the pool's task)."""
    return scorer.score(chunk, progress=False)


def _describe(chunk: Sequence[Sample]) -> str:
    return ", ".join(s.id for s in chunk[:3]) + (" ..." if len(chunk) > 3 else "")


class RayScorer:
    """*scorer* with its chunks scored on Ray workers as *run* (the ``[run]`` section: ``ray_address``,
    ``ray_workers``, ``ray_gpus_per_worker``) says; see the module docstring. Use as a context manager (the pool
    and the scorer are closed on exit). *task* scores a chunk on a worker (tests inject faults with it)."""

    def __init__(self, scorer: ModelScorer, run: RunSection, *, task: Task = _score_task) -> None:
        check_ray("ray")
        self.scorer, self.run, self.task = scorer, run, task
        self.pool: Any = None

    @property
    def digest(self) -> str:
        return self.scorer.digest

    @property
    def provenance(self) -> Mapping[str, Any]:
        return self.scorer.provenance

    @property
    def aggregation(self) -> str:
        return self.scorer.aggregation

    def adapt(
        self, scores: Sequence[FunctionScore], prevalence: float | None = None
    ) -> tuple[list[FunctionScore], int]:
        """The driver's scorer's :meth:`~vulnsteer.scan.model_scorer.ModelScorer.adapt` (no model needed)."""
        return self.scorer.adapt(scores, prevalence)

    def score(self, units: Sequence[Sample], progress: bool = True) -> list[FunctionScore]:
        """*units* scored as one chunk on a worker."""
        return next(self.score_chunks([units]))[1] if units else []

    def score_chunks(self, chunks: Sequence[Sequence[Sample]]) -> Iterator[tuple[int, list[FunctionScore]]]:
        """``(index, scores)`` of each chunk as a worker finishes it (in any order); no chunk starts no pool."""
        if not chunks:
            return
        pool = self._pool()
        for done in pool.map([list(c) for c in chunks], self.task, None, describe=_describe):
            yield done.index, done.result

    def _pool(self) -> Any:
        """The pool, started on the first chunks to score (its workers load the model meanwhile)."""
        if self.pool is None:
            from ..lm.model import load_model
            from ..lm.ray_pool import RayPool

            spec, run = self.scorer.spec, self.run
            pool = RayPool(
                partial(load_model, spec.model),
                workers=run.ray_workers,
                gpus_per_worker=run.ray_gpus_per_worker,
                address=run.ray_address,
                expect_model=self.scorer.identity,
                setup=partial(_worker_scorer, spec, self.scorer.template),
                noun="function",
            )
            self.pool = pool.__enter__()
        return self.pool

    def stats(self) -> dict[str, Any]:
        """The pool's workers, chunks and retries (``{"kind": "ray", ...}``), or ``{}`` when none started."""
        return self.pool.stats() if self.pool is not None else {}

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
        self.scorer.close()

    def __enter__(self) -> RayScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
