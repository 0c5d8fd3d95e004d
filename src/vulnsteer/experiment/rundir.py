"""The run directory: one experiment's files, its identity, and a lock.

::

    RUN/
      config.resolved.toml   every key filled in: `vulnsteer sweep RUN/config.resolved.toml` reproduces the run
      identity.json          what the records were computed from (config keys that change numbers, model, data)
      records.jsonl          one line per finished condition (resume skips them)
      vectors/               every fitted vector
      chosen/chosen.json     the choices made on validation (+ their vectors), for `evaluate --from`
      timings.json           seconds spent so far per phase, summed over every attempt (a resume adds its own)
      results.json, report.md, plots/

Nothing is created before the inputs are validated (:meth:`RunDir.check_writable` only looks); a rerun into the
same folder resumes only if its identity matches (otherwise a clear error lists what changed); two processes
never write the same folder at once (the second is told which process holds it).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from ..config import ConfigError, default_identity
from ..io import check_writable, write_json, write_text

__all__ = ["RunDir", "RunDirBusyError"]

RESOLVED_NAME = "config.resolved.toml"
RECORDS_NAME = "records.jsonl"
IDENTITY_NAME = "identity.json"
LOCK_NAME = ".lock"
TIMINGS_NAME = "timings.json"
CHOSEN_DIR = "chosen"
CHOSEN_NAME = "chosen.json"
#: What a run writes besides its records: removed when a rerun with other inputs takes over a folder that finished
#: nothing (so no stale vector or detector of the earlier attempt stays beside the new ones).
DERIVED = ("vectors", "behaviours", "detector", CHOSEN_DIR, "plots", "results.json", "report.md", TIMINGS_NAME)

log = logging.getLogger(__name__)


class RunDirBusyError(RuntimeError):
    """Another process is writing the run directory."""


class RunDir:
    """Paths and guards of one run directory (see the module docstring).

    >>> import tempfile
    >>> run = RunDir(Path(tempfile.mkdtemp()) / "run")
    >>> run.check_writable("--out")
    >>> with run.open({"data": "abc"}, "toy run", resolved="x = 1\\n"):
    ...     run.records.name
    'records.jsonl'
    """

    def __init__(self, path: str | Path, record_files: tuple[str, ...] = (RECORDS_NAME,)) -> None:
        self.path = Path(path)
        #: the files that hold finished work (a rerun with other inputs is refused once one is not empty)
        self.record_files = record_files

    @property
    def records(self) -> Path:
        return self.path / RECORDS_NAME

    @property
    def resolved(self) -> Path:
        return self.path / RESOLVED_NAME

    @property
    def chosen(self) -> Path:
        return self.path / CHOSEN_DIR

    def check_writable(self, option: str = "--out") -> None:
        """Fail now, naming *option*, if the folder could not be created or written, if it holds files that are not
        a run's (a run writes ``report.md``, ``results.json``, ``plots/``...: it would replace the user's own), or
        if another process is writing it (creates nothing; :meth:`open` takes the lock for real once the inputs are
        validated)."""
        check_writable(self.path, option, folder=True)
        if self.path.is_dir() and not (self.path / IDENTITY_NAME).is_file():
            foreign = sorted(p.name for p in self.path.iterdir() if p.name != LOCK_NAME)
            if foreign:
                shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
                raise ConfigError(
                    f"{option} {self.path}: holds files that are not a vulnsteer run ({shown}); a run would "
                    "overwrite them: give a new or empty folder"
                )
        lock = self.path / LOCK_NAME
        if lock.is_file():
            with _locked(lock, probe=True):
                pass

    @contextmanager
    def open(self, identity: Mapping[str, Any], what: str, resolved: str | None = None) -> Iterator[RunDir]:
        """Create the folder, take its lock, and check (or record) its *identity*; write *resolved* (the resolved
        config) when given. Refuses a folder whose records came from other inputs."""
        self.path.mkdir(parents=True, exist_ok=True)
        with _locked(self.path / LOCK_NAME):
            self._check_identity(identity, what)
            if resolved is not None:
                write_text(self.resolved, resolved)
            yield self

    def add_timings(self, spent: Mapping[str, float]) -> dict[str, float]:
        """Seconds per phase summed over every attempt at this run: *spent* (this attempt's) added to what earlier
        attempts recorded in ``timings.json``, written back (so a resume that only re-renders reports does not
        replace the first attempt's fit times with its own near-zero ones). Rounded to 0.01 s.

        >>> import tempfile
        >>> run = RunDir(Path(tempfile.mkdtemp()))
        >>> run.add_timings({"fit": 2.0, "total": 3.0})
        {'fit': 2.0, 'total': 3.0}
        >>> run.add_timings({"fit": 0.5, "score": 1.0, "total": 1.5})
        {'fit': 2.5, 'total': 4.5, 'score': 1.0}
        """
        path = self.path / TIMINGS_NAME
        try:
            earlier = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
            found = {str(k): float(v) for k, v in earlier.items()}
        except (OSError, ValueError, TypeError, AttributeError):
            log.warning("%s: unreadable; timings start again from this attempt", path)
            found = {}
        for name, seconds in spent.items():
            found[name] = round(found.get(name, 0.0) + seconds, 2)
        write_json(path, found)
        return found

    def _check_identity(self, identity: Mapping[str, Any], what: str) -> None:
        path = self.path / IDENTITY_NAME
        plain = json.loads(json.dumps(identity, default=str))
        if path.is_file():
            try:
                old = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ConfigError(f"{path}: unreadable ({exc}); use another output directory") from None
            added = _added_at_default(old, plain)
            changed = sorted(k for k in old.keys() | plain.keys() if old.get(k) != plain.get(k) and k not in added)
            if not changed:
                return
            if self._holds_records():
                rerun = f", or rerun with the config in {self.resolved}" if self.resolved.is_file() else ""
                raise ConfigError(
                    f"{self.path} holds {_article(what)} {what} computed from other inputs (changed: "
                    f"{', '.join(changed)}); use another output directory{rerun}"
                )
            # An earlier attempt stopped before finishing anything (e.g. a strength refused once the vectors were
            # fitted): nothing to protect, so the corrected rerun takes the folder over, without its stale files.
            log.warning("%s: an earlier attempt finished nothing (changed: %s); starting afresh", self.path, changed)
            for name in DERIVED:
                target = self.path / name
                if target.is_dir():
                    shutil.rmtree(target)
                else:
                    target.unlink(missing_ok=True)
        elif self._holds_records():
            raise ConfigError(
                f"{self.path} holds records of unknown origin ({RECORDS_NAME} without "
                f"{IDENTITY_NAME}); use another output directory"
            )
        write_json(path, plain)

    def _holds_records(self) -> bool:
        files = [self.path / name for name in self.record_files]
        return any(f.is_file() and f.stat().st_size > 0 for f in files)


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


@contextmanager
def _locked(path: Path, probe: bool = False) -> Iterator[None]:
    """An exclusive, non-blocking lock on *path* for this process (released on exit, and by the OS if the process
    dies); a busy lock is a :class:`RunDirBusyError` naming the holder. A *probe* only tests an existing lock file
    (it writes nothing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock
        yield
        return
    handle: IO[str] = open(path, "r" if probe else "a+", encoding="utf-8")  # noqa: SIM115 - held for the block
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise RunDirBusyError(
                f"{path.parent} is in use by {holder}; wait for it to finish or use another output directory"
            ) from None
        if not probe:
            handle.seek(0)
            handle.truncate()
            handle.write(f"process {os.getpid()}\n")
            handle.flush()
        yield
    finally:
        handle.close()


def _added_at_default(old: Mapping[str, Any], new: Mapping[str, Any]) -> set[str]:
    """The configuration keys *new* has and the *old* identity (an older version's run) lacks, at their default: a
    key added since, whose default reproduces what that version did, changes nothing. A key given another value is
    a change.

    >>> from vulnsteer.config import default_identity
    >>> key, value = "transfer.gate_adapted", default_identity()["transfer.gate_adapted"]
    >>> sorted(_added_at_default({}, {key: value})), sorted(_added_at_default({}, {key: [True]}))
    (['transfer.gate_adapted'], [])
    """
    defaults = json.loads(json.dumps(default_identity(), default=str))
    return {k for k in new.keys() - old.keys() if k in defaults and new[k] == defaults[k]}
