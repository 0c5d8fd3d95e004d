"""Atomic file output: a reader never sees a half-written file."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """Open a temporary file beside *path*; on success fsync and rename it over *path*.

    On an exception the temporary file is removed and *path* is left untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, target)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def check_writable(path: str | os.PathLike[str], option: str = "--out") -> None:
    """Raise ``PermissionError`` naming *option* unless *path* (a folder or file to be written) could be created and
    written: it, or its nearest existing parent folder, must be a writable folder. Creates nothing.

    >>> check_writable("/proc/no/such/place", "--out")
    Traceback (most recent call last):
    ...
    PermissionError: --out /proc/no/such/place: cannot write under /proc (not writable)
    """
    target = Path(path).expanduser()
    probe = target
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir() and probe != target:
        raise NotADirectoryError(f"{option} {target}: {probe} is a file, not a folder")
    if probe == target and target.exists() and target.is_dir():
        folder = target
    else:
        folder = probe if probe.is_dir() else probe.parent
    try:  # os.access says yes to root even on read-only mounts: try a temporary file (removed at once)
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError:
        raise PermissionError(f"{option} {target}: cannot write under {folder} (not writable)") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_open(path, "w") as handle:
        handle.write(text)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    with atomic_open(path, "w") as handle:
        json.dump(obj, handle, indent=2, sort_keys=False, default=_json_default)
        handle.write("\n")


def _end_torn_line(target: Path) -> None:
    """Before appending: a last line without its newline was torn by a killed writer. Drop it (or, if it is
    complete JSON, just end it) so the next record does not get glued onto it."""
    with open(target, "rb+") as handle:
        end = handle.seek(0, os.SEEK_END)
        if end == 0:
            return
        handle.seek(end - 1)
        if handle.read(1) == b"\n":
            return
        start = pos = end
        while pos > 0 and start == end:
            step = min(1 << 16, pos)
            pos -= step
            handle.seek(pos)
            cut = handle.read(step).rfind(b"\n")
            if cut >= 0:
                start = pos + cut + 1
        if start == end:
            start = 0
        handle.seek(start)
        try:
            json.loads(handle.read())
            handle.write(b"\n")
        except ValueError:
            handle.truncate(start)
        handle.flush()
        os.fsync(handle.fileno())


def append_jsonl(path: str | os.PathLike[str], record: Any) -> None:
    """Append one JSON line and fsync it (a crash loses at most the line being written)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, default=_json_default) + "\n"
    if target.exists():
        _end_torn_line(target)
    with open(target, "a", encoding="utf-8") as handle:
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())


def read_jsonl(path: str | os.PathLike[str]) -> list[Any]:
    """Read a JSONL file written by :func:`append_jsonl`, ignoring a torn last line."""
    target = Path(path)
    if not target.exists():
        return []
    records = []
    lines = target.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):  # torn final line from a killed writer
                break
            raise ValueError(f"{target}:{number}: malformed JSON line") from None
    return records


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
