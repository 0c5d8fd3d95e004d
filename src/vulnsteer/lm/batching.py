"""Batch sizes that adapt to GPU memory: back off on out-of-memory and retry the same rows.

On CUDA a batch that runs out of memory is retried at half the size (the CUDA cache is emptied first), from the
first row of the failed batch: nothing is lost and nothing is done twice, because the batch function's results
are only kept once it returns. The size that fitted is remembered for the rest of the run (and, with
:meth:`AutoBatch.for_model`, for later calls on the same loaded model). On the CPU the configured size is never
changed: an error there is re-raised as it is.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

__all__ = ["AutoBatch", "adapts", "is_out_of_memory"]

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

#: Key under which :meth:`AutoBatch.for_model` remembers fitted sizes in ``LoadedModel.extra``.
_EXTRA_KEY = "batch_sizes"


def adapts(device: torch.device | str) -> bool:
    """Whether batch sizes adapt on *device*: on CUDA only (the CPU keeps the configured size).

    >>> adapts("cpu"), adapts("cuda:1")
    (False, True)
    """
    return torch.device(device).type == "cuda"


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether *exc* is a CUDA out-of-memory error (``torch.cuda.OutOfMemoryError``).

    >>> is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory")), is_out_of_memory(ValueError())
    (True, False)
    """
    return isinstance(exc, torch.cuda.OutOfMemoryError)


def _free_cuda_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass
class AutoBatch:
    """A batch size that halves on CUDA out-of-memory errors (see the module docstring).

    Attributes:
        size: the current batch size (starts at the configured one; only ever shrinks).
        adaptive: whether out-of-memory errors shrink it (True on CUDA; see :func:`adapts`).
        backoffs: how many times it shrank.

    >>> batcher = AutoBatch(4, adaptive=False)
    >>> [(rows, out) for rows, out in batcher.map(range(6), sum)]
    [([0, 1, 2, 3], 6), ([4, 5], 9)]
    """

    size: int
    adaptive: bool = False
    backoffs: int = 0
    memo: tuple[dict[str, int], str] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"batch size must be a positive integer, got {self.size!r}")

    @classmethod
    def for_device(cls, size: int, device: torch.device | str) -> AutoBatch:
        """An :class:`AutoBatch` that adapts when *device* is a CUDA device.

        >>> AutoBatch.for_device(8, "cpu")
        AutoBatch(size=8, adaptive=False, backoffs=0)
        """
        return cls(size, adaptive=adapts(device))

    @classmethod
    def for_model(cls, lm: Any, key: str, size: int) -> AutoBatch:
        """An :class:`AutoBatch` for work *key* on a loaded model (``LoadedModel``): it adapts when the model is on
        CUDA, and starts from the size that fitted last time for the same *key* and configured *size* (kept in
        ``lm.extra``), so a long run pays for an out-of-memory error once, not once per call.

        >>> from types import SimpleNamespace
        >>> lm = SimpleNamespace(device=torch.device("cpu"), extra={})
        >>> AutoBatch.for_model(lm, "extraction", 8).size
        8
        """
        table = lm.extra.setdefault(_EXTRA_KEY, {})
        memo_key = f"{key}:{size}"
        start = min(size, int(table.get(memo_key, size)))
        return cls(start, adaptive=adapts(lm.device), memo=(table, memo_key))

    def shrink(self, exc: BaseException) -> bool:
        """Halve the size after *exc* if it is an out-of-memory error this batcher recovers from (adaptive, size
        above 1); returns whether it did, i.e. whether the failed rows should be run again.

        >>> batcher = AutoBatch(8, adaptive=True)
        >>> batcher.shrink(torch.cuda.OutOfMemoryError("CUDA out of memory")), batcher.size
        (True, 4)
        """
        if not (self.adaptive and is_out_of_memory(exc)) or self.size <= 1:
            return False
        old, self.size = self.size, max(1, self.size // 2)
        self.backoffs += 1
        if self.memo is not None:
            table, key = self.memo
            table[key] = self.size
        log.warning("out of GPU memory at batch size %d; running the same rows again at %d", old, self.size)
        return True

    def map(
        self,
        rows: Sequence[T],
        fn: Callable[[list[T]], R],
        *,
        on_retry: Callable[[list[T]], None] | None = None,
    ) -> Iterator[tuple[list[T], R]]:
        """Yield ``(chunk, fn(chunk))`` over consecutive chunks of *rows* of the current size, in order.

        A chunk whose call runs out of CUDA memory is dropped (its result is never yielded), the size halves, the
        CUDA cache is emptied, *on_retry* (if given) is called with the failed chunk, and the same rows are run
        again: every row ends up in exactly one yielded chunk. Any other error, or one at size 1, propagates.
        """
        items: list[T] = list(rows)
        start = 0
        while start < len(items):
            chunk = items[start : start + self.size]
            retry = False
            try:
                result = fn(chunk)
            except Exception as exc:
                if not self.shrink(exc):
                    raise
                retry = True
            if retry:  # outside the except block: the failed call's tensors are released by now
                _free_cuda_memory()
                if on_retry is not None:
                    on_retry(chunk)
                continue
            yield chunk, result
            start += len(chunk)
