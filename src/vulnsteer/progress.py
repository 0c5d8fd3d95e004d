"""Progress for loops over samples, files and cases: a bar on a terminal, lines in a log.

- On a terminal (the stream is a TTY) a tqdm bar is drawn; on success it stays as the phase's record.
- In a log (stderr redirected to a file or a pipe) no bar frames are written. A phase prints a line when it starts,
  with its size (``activations (train): 120 samples``), a line every :data:`LOG_INTERVAL` seconds while it runs
  (from a background thread, so even one slow item does not leave the log silent), with the time left at the pace
  so far (``activations (train): 40/120 samples, 31s, about 1m02s left``), and one
  line when it ends (``activations (train): 120/120 samples in 1m33s``): a log is never silent for long inside a
  phase, and says how long the rest will take. Each phase has its own name (callers say which split, which
  mode...), so no two lines of a log are about phases of the same name.
- On an exception (Ctrl-C included) a terminal bar is erased, so no stray frame is left before the error
  message, and a log gets ``activations (train): stopped at 40/120 samples after 31s``.
- ``enabled=False`` (``--no-progress``) shows nothing at all; so does the ``TQDM_DISABLE`` environment variable.

>>> import io
>>> log = io.StringIO()
>>> with Progress(3, "demo", unit="file", stream=log, clock=lambda: 0.0) as bar:
...     for _ in range(3):
...         bar.update()
>>> print(log.getvalue(), end="")
demo: 3 files
demo: 3/3 files in 0.0s
>>> list(track(range(2), "quiet", enabled=False))
[0, 1]
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import IO, Any, TypeVar

__all__ = ["LOG_INTERVAL", "Progress", "format_seconds", "progress_enabled", "track"]

T = TypeVar("T")

#: Seconds between a phase's progress lines in a log.
LOG_INTERVAL = 30.0


def format_seconds(seconds: float) -> str:
    """``12.3s``, ``4m05s``, ``1h02m``.

    >>> format_seconds(12.34), format_seconds(245), format_seconds(3725)
    ('12.3s', '4m05s', '1h02m')
    """
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


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
        interval: seconds between progress lines in a log (default :data:`LOG_INTERVAL`).
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
        interval: float = LOG_INTERVAL,
    ) -> None:
        self.total = total
        self.desc = desc
        self.unit = unit
        self.count = 0
        self._stream = stream if stream is not None else sys.stderr
        self._clock = clock
        self._start = clock()
        self._interval = interval
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._closed = False
        self._enabled = progress_enabled(enabled)
        self._bar: Any = None
        if self._enabled and _is_terminal(self._stream):
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, file=self._stream, dynamic_ncols=True, disable=False)
        elif self._enabled:
            size = f"{total} {_plural(unit, total)}" if total is not None else "started"
            self._write(f"{desc}: {size}")
            if interval > 0:  # a line every interval, even while one slow item (a chunk of conditions) runs
                self._heartbeat = threading.Thread(target=self._beat, name=f"progress: {desc}", daemon=True)
                self._heartbeat.start()

    def update(self, n: int = 1) -> None:
        """Count *n* more items done."""
        self.count += n
        if self._bar is not None:
            self._bar.update(n)

    def _beat(self) -> None:
        while not self._stop.wait(self._interval):
            self._write(self.running_line())

    def running_line(self) -> str:
        """The line a log gets while the phase runs: done so far, time spent, and the time left at that pace."""
        elapsed = self._clock() - self._start
        units = _plural(self.unit, self.total if self.total is not None else self.count)
        if self.total is None:
            return f"{self.desc}: {self.count} {units} so far, {format_seconds(elapsed)}"
        left = (
            f"about {format_seconds(elapsed / self.count * (self.total - self.count))} left"
            if self.count
            else "no estimate yet"
        )
        return f"{self.desc}: {self.count}/{self.total} {units}, {format_seconds(elapsed)}, {left}"

    def _write(self, line: str) -> None:
        try:
            self._stream.write(line + "\n")
            self._stream.flush()
        except (OSError, ValueError):  # a closed or broken log stream must not turn success into a failure
            pass

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
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
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
            self._write(f"{self.desc}: stopped at {done} {units} after {format_seconds(elapsed)}")
        else:
            self._write(f"{self.desc}: {done} {units} in {format_seconds(elapsed)}")

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
