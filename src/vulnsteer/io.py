"""Atomic file output: a reader never sees a half-written file; :func:`check_writable` refuses an output path
that cannot be written before any work is done."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

__all__ = [
    "JsonObject",
    "OutputError",
    "append_jsonl",
    "atomic_open",
    "check_writable",
    "current_umask",
    "json_ready",
    "naming_the_file",
    "portable",
    "read_jsonl",
    "write_folder",
    "write_json",
    "write_text",
]

#: A JSON object as read back (its shape owned by whoever wrote it: a configuration document, an environment, ...).
JsonObject = Mapping[str, Any]


class OutputError(ValueError):
    """An output path that cannot be written; the message names the option and the path."""


def check_writable(
    path: str | os.PathLike[str],
    option: str = "--out",
    *,
    folder: bool = False,
    inputs: Sequence[str | os.PathLike[str]] = (),
) -> Path:
    """Check, without creating anything, that *path* can be written: as a file (``folder=False``: written
    atomically, so its folder must take new files) or as a folder to create or fill. Call it before loading a model
    or data, so that an unwritable ``--out`` costs nothing.

    Returns the path; raises :class:`OutputError` naming *option* and the path otherwise (a parent that is a
    file, an existing folder where a file is wanted or the reverse, a folder that refuses new files: read-only,
    no permission, a read-only file system), or a file that is one of the command's *inputs* (writing it would
    destroy what is being read).

    >>> import tempfile
    >>> tmp = Path(tempfile.mkdtemp())
    >>> check_writable(tmp / "new" / "out.json").name
    'out.json'
    >>> _ = (tmp / "notes.txt").write_text("x")
    >>> check_writable(tmp / "notes.txt" / "out.json", "--vectors-out")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    vulnsteer.io.OutputError: --vectors-out .../notes.txt/out.json: .../notes.txt is a file, not a folder
    """
    target = Path(path).expanduser()
    if str(path).strip() == "":
        raise OutputError(f"{option}: empty path")
    for source in inputs:
        if target.exists() and Path(source).exists() and os.path.samefile(target, source):
            raise OutputError(f"{option} {path}: is one of the inputs ({source}); write the output elsewhere")
    if target.exists():
        if folder and not target.is_dir():
            raise OutputError(f"{option} {path}: exists and is not a folder")
        if not folder and target.is_dir():
            raise OutputError(f"{option} {path}: is a folder; give a file name")
    probe_dir = target if folder and target.is_dir() else target.parent
    existing = probe_dir
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise OutputError(f"{option} {path}: {existing} is a file, not a folder")
    reason = _cannot_create_in(existing)
    if reason is not None:
        raise OutputError(f"{option} {path}: cannot create files in {existing} ({reason})")
    return target


def _cannot_create_in(folder: Path) -> str | None:
    """Why no file can be created in the existing *folder* (None if one can): tried for real with a temporary
    file, which catches read-only file systems and ACLs that permission bits do not show."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".vulnsteer-write-check.", dir=folder)
    except OSError as exc:
        return exc.strerror or str(exc)
    os.close(fd)
    with suppress(OSError):
        os.unlink(tmp)
    return None


@contextmanager
def naming_the_file(path: str | os.PathLike[str]) -> Iterator[None]:
    """An ``OSError`` raised inside names *path* when it names no file (a full disk's ``[Errno 28] No space left
    on device`` otherwise says nothing of where).

    >>> with naming_the_file("out/report.md"):  # doctest: +ELLIPSIS
    ...     raise OSError(28, "No space left on device")
    Traceback (most recent call last):
    ...
    OSError: [Errno 28] No space left on device: 'out/report.md'
    """
    try:
        yield
    except OSError as exc:
        if exc.filename is not None or exc.errno is None:
            raise
        raise type(exc)(exc.errno, exc.strerror or str(exc), str(path)) from exc


@contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """Open a temporary file beside *path*; on success fsync and rename it over *path*.

    On an exception the temporary file is removed and *path* is left untouched; an ``OSError`` (a full disk)
    names *path*. A *path* that exists and is not a regular file (``/dev/null``, ``/dev/stdout``, a named pipe) is
    written directly: renaming over it would replace the device with a file.
    """
    target = Path(path)
    with naming_the_file(target):
        if target.exists() and not target.is_file() and not target.is_dir():
            with open(target, mode, encoding=None if "b" in mode else encoding) as stream:
                yield stream
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp creates 0600; give the file the usual permissions
            os.replace(tmp, target)
        except BaseException:
            with suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_open(path, "w") as handle:
        handle.write(text)


def write_folder(folder: str | os.PathLike[str], fill: Callable[[Path], None]) -> Path:
    """Write *folder* whole or not at all: *fill* writes its files into a temporary folder beside it, which is then
    renamed into place (a kill leaves no half-written folder; an earlier one there is replaced; what a killed write
    left beside it is removed first)."""
    root = Path(folder)
    root.parent.mkdir(parents=True, exist_ok=True)
    for stale in root.parent.glob(f".{root.name}.*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        fill(staging)
        os.chmod(staging, 0o777 & ~current_umask())
        if root.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old.", dir=root.parent))
            os.replace(root, old / root.name)
            os.replace(staging, root)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return root


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
    line = json.dumps(record, default=_json_default) + "\n"
    with naming_the_file(target):
        target.parent.mkdir(parents=True, exist_ok=True)
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
    try:
        lines = target.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ValueError(f"{target}: not UTF-8 text (bad byte at offset {exc.start}); not a JSONL file") from None
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


def portable(value: Any, base: str | os.PathLike[str] | None = None) -> Any:
    """*value* (a string, or lists and dicts of them) without absolute paths, for what is shared with others (a
    SARIF log, a GGUF file): a path under *base* becomes relative to it, any other absolute path its last
    component.

    >>> portable({"model": "/home/me/models/qwen", "file": "/work/v.safetensors", "n": 3}, "/work")
    {'model': 'qwen', 'file': 'v.safetensors', 'n': 3}
    """
    if isinstance(value, str) and os.path.isabs(value):
        path = Path(value)
        if base is not None and path.is_relative_to(base):
            return path.relative_to(base).as_posix()
        return path.name
    if isinstance(value, dict):
        return {key: portable(item, base) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable(item, base) for item in value]
    return value


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


def json_ready(obj: Any) -> Any:
    """*obj* as plain JSON data: tuples become lists, dataclasses dicts, arrays lists, anything else its ``str``.

    >>> json_ready({"pair": (1, 2.5)})
    {'pair': [1, 2.5]}
    """
    return json.loads(json.dumps(obj, default=_plain))


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)
