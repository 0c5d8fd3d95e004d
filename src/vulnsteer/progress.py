"""Progress for loops over samples, files and cases: a bar on a terminal, one line per phase in a log.

- On a terminal (the stream is a TTY) a tqdm bar is drawn; on success it stays as the phase's record.
- In a log (stderr redirected to a file or a pipe) no bar frames are written; when the phase ends one line says
  what it did: ``activations: 120/120 samples in 12.3s``.
- On an exception (Ctrl-C included) a terminal bar is erased, so no stray frame is left before the error
  message, and a log gets ``activations: stopped at 40/120 samples after 3.1s``.
- ``enabled=False`` (``--no-progress``) shows nothing at all; so does the ``TQDM_DISABLE`` environment variable.

>>> import io
>>> log = io.StringIO()
>>> with Progress(3, "demo", unit="file", stream=log, clock=lambda: 0.0) as bar:
...     for _ in range(3):
...         bar.update()
>>> log.getvalue()
'demo: 3/3 files in 0.0s\\n'
>>> list(track(range(2), "quiet", enabled=False))
[0, 1]
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import IO, Any, TypeVar

__all__ = ["Progress", "progress_enabled", "track"]

T = TypeVar("T")


def progress_enabled(enabled: bool = True) -> bool:
    """*enabled*, unless the ``TQDM_DISABLE`` environment variable turns progress off globally.

    >>> progress_enabled(False)
    False
    """
    return enabled and os.environ.get("TQDM_DISABLE", "").lower() not in ("1", "true", "yes")


def _plural(unit: str, n: int | None) -> str:
    return unit if n == 1 or unit.endswith("s") else unit + "s"


class Progress:
    """Progress of one phase (see the module docstring). Use as a context manager, or call :meth:`close`.

    Args:
        total: the number of items, if known.
        desc: the phase's name (``"activations"``).
        unit: what is counted (``"sample"``; pluralised in the log line).
        enabled: False shows nothing.
        stream: where to write (default ``sys.stderr``); a bar is drawn only if it is a terminal.
        clock: seconds since some start (default :func:`time.monotonic`; for tests).
    """

    def __init__(
        self,
        total: int | None,
        desc: str,
        *,
        unit: str = "item",
        enabled: bool = True,
        stream: IO[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = total
        self.desc = desc
        self.unit = unit
        self.count = 0
        self._stream = stream if stream is not None else sys.stderr
        self._clock = clock
        self._start = clock()
        self._closed = False
        self._enabled = progress_enabled(enabled)
        self._bar: Any = None
        if self._enabled and _is_terminal(self._stream):
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, file=self._stream, dynamic_ncols=True, disable=False)

    def update(self, n: int = 1) -> None:
        """Count *n* more items done."""
        self.count += n
        if self._bar is not None:
            self._bar.update(n)

    def rewind(self, count: int) -> None:
        """Set the count back to *count* (work that will be done again, e.g. a batch retried in smaller pieces)."""
        self.count = count
        if self._bar is not None:
            self._bar.n = count
            self._bar.refresh()

    def close(self, failed: bool = False) -> None:
        """End the phase: keep the finished bar (terminal) or write the phase's line (log); with *failed* the
        bar is erased and the line says where it stopped. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            if failed:
                self._bar.leave = False  # erase it: no stray frame before the error message
            self._bar.close()
            return
        if not self._enabled:
            return
        elapsed = self._clock() - self._start
        done = f"{self.count}/{self.total}" if self.total is not None else str(self.count)
        units = _plural(self.unit, self.total if self.total is not None else self.count)
        if failed:
            line = f"{self.desc}: stopped at {done} {units} after {elapsed:.1f}s"
        else:
            line = f"{self.desc}: {done} {units} in {elapsed:.1f}s"
        try:
            self._stream.write(line + "\n")
            self._stream.flush()
        except (OSError, ValueError):  # a closed or broken log stream must not turn success into a failure
            pass

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close(failed=exc_type is not None)


def track(
    items: Iterable[T],
    desc: str,
    *,
    unit: str = "item",
    total: int | None = None,
    enabled: bool = True,
    stream: IO[str] | None = None,
) -> Iterator[T]:
    """Iterate *items* inside a :class:`Progress` phase (the total is ``len(items)`` when it has one).

    >>> list(track([1, 2, 3], "squares", enabled=False))
    [1, 2, 3]
    """
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    bar = Progress(total, desc, unit=unit, enabled=enabled, stream=stream)
    failed = True
    try:
        for item in items:
            yield item
            bar.update()
        failed = False
    finally:
        bar.close(failed=failed and bar.count != total)


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
