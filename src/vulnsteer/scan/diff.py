"""Diff mode (``vulnsteer diff``): score only the functions that changed between two versions of code, before and
after.

The two versions are two files, two folders (files matched by their path inside each folder), or two revisions
of a git repository (:func:`git_versions`: ``--base REV`` against the work tree or ``--head REV``; tracked files
only, renamed files followed). Each file that differs is read in both versions as ``vulnsteer scan`` reads it
(:func:`~vulnsteer.scan.engine.read_functions`: split into functions, comments stripped), and its functions are
matched by qualified name (:func:`~vulnsteer.data.changes.match_functions`): a function whose cleaned code
differs is ``changed``, one only in the new version ``added``, one only in the old ``removed``, one under a new
name with the same code ``renamed``. Only those are scored (cached by code as a scan caches them); unchanged
functions are counted, not scored. Each change reports the score before and after and their difference: a
positive difference means the change made the function riskier.

The diff fails (exit code 1) when a changed, renamed or added function scores at or above ``fail_on`` after the
change and higher than before (an added function: at all), or when a file could not be read (unless
``allow_unscanned``).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..data.changes import Change, match_functions
from ..data.functions import FunctionSplitter
from ..data.text import BinaryContentError, decode_source
from ..io import portable
from ..progress import track
from .engine import (
    PendingFunction,
    SourceName,
    anchor_of,
    display_path,
    read_file,
    read_functions,
    score_functions,
    settle,
)
from .files import SourceCandidate, WalkStats, language_of, printable, walk
from .options import ScanOptions
from .results import FunctionResult, ScanStats
from .scorer import Scorer

__all__ = [
    "DiffError",
    "DiffReport",
    "FileVersions",
    "FunctionChange",
    "Version",
    "diff",
    "git_versions",
    "path_versions",
]


class DiffError(ValueError):
    """Two versions that cannot be compared (a file against a folder, a revision git does not know ...)."""


@dataclass(frozen=True)
class Version:
    """One version of a file: a path on disk (read as a scan reads it), or the bytes of a git object with the
    names a report gives it."""

    path: Path | None = None
    blob: bytes | None = None
    name: SourceName | None = None


@dataclass(frozen=True)
class FileVersions:
    """One file in two versions (None where it does not exist: added or removed)."""

    before: Version | None
    after: Version | None


@dataclass(frozen=True)
class FunctionChange:
    """One function that differs between the versions: its kind (``changed``, ``added``, ``removed``,
    ``renamed``) and its scan result before and after (None where it does not exist)."""

    kind: str
    before: FunctionResult | None
    after: FunctionResult | None

    @property
    def current(self) -> FunctionResult:
        """The function as it is now (after), or as it was (removed)."""
        found = self.after or self.before
        assert found is not None
        return found

    @property
    def delta(self) -> float | None:
        """Score after minus score before (None for an added or removed function)."""
        if self.before is None or self.after is None:
            return None
        return self.after.score.score - self.before.score.score

    @property
    def riskier(self) -> bool:
        """The change made the function riskier: it scores higher after than before."""
        return self.delta is not None and self.delta > 0

    def fails(self, threshold: float) -> bool:
        """The function scores at or above *threshold* after the change, and higher than before (or is new)."""
        if self.after is None or self.after.score.score < threshold:
            return False
        return self.before is None or self.riskier

    def to_record(self) -> dict[str, Any]:
        """The JSON-lines record of this change (``"type": "change"``)."""

        def side(result: FunctionResult | None) -> dict[str, Any] | None:
            if result is None:
                return None
            return {
                "path": result.path,
                "function": result.name,
                "kind": result.kind,
                "line": result.region.start_line,
                "end_line": result.region.end_line,
                "score": result.score.score,
                "verdict": result.score.verdict,
                "cwe": result.score.cwe,
                "windows": result.score.windows,
                "cached": result.cached,
            }

        now = self.current
        return {
            "type": "change",
            "change": self.kind,
            "path": now.path,
            "language": now.language,
            "function": now.name,
            "score_before": self.before.score.score if self.before else None,
            "score_after": self.after.score.score if self.after else None,
            "delta": self.delta,
            "riskier": self.riskier,
            "before": side(self.before),
            "after": side(self.after),
        }


@dataclass
class DiffReport:
    """What :func:`diff` found: the functions that differ (never the unchanged ones), how many functions were
    the same in both versions (not scored), how many files differed, the reading and scoring counts, what scored
    them and the options."""

    changes: list[FunctionChange]
    unchanged: int
    files: int
    stats: ScanStats
    provenance: Mapping[str, Any]
    digest: str
    options: ScanOptions
    base: Path
    before: str
    after: str
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    @property
    def portable_provenance(self) -> dict[str, Any]:
        """The scorer's provenance without absolute paths (as :attr:`~vulnsteer.scan.results.ScanReport.
        portable_provenance`)."""
        return {key: portable(value, self.base) for key, value in self.provenance.items()}

    def count(self, kind: str) -> int:
        return sum(1 for c in self.changes if c.kind == kind)

    @property
    def riskier(self) -> list[FunctionChange]:
        """The changes that made a function riskier, the largest rise first."""
        return sorted((c for c in self.changes if c.riskier), key=lambda c: (-(c.delta or 0.0), c.current.path))

    def ordered(self) -> list[FunctionChange]:
        """The changes as reports list them: the ones that made a function riskier first (the largest rise
        first), then the added functions (highest score first), then the other changes, the removed ones last."""

        def order(c: FunctionChange) -> tuple[int, float, str, int]:
            group = 0 if c.riskier else 1 if c.kind == "added" else 3 if c.kind == "removed" else 2
            rise = c.delta if c.delta is not None else c.current.score.score
            return group, -rise, c.current.path, c.current.region.start_line

        return sorted(self.changes, key=order)

    def failures(self) -> list[str]:
        """Why the diff fails, one line per reason (empty: it passes)."""
        lines = []
        threshold = self.options.fail_threshold
        failing = [c for c in self.changes if c.fails(threshold)]
        if failing:
            worst = max(failing, key=lambda c: (c.after.score.score if c.after else 0.0, c.current.path))
            now = worst.current
            before = f"{worst.before.score.score:.2f} -> " if worst.before is not None else "new, "
            lines.append(
                f"{len(failing)} changed or added function(s) at or above --fail-on {threshold:.2f} and riskier "
                f"than before, the highest {now.path}:{now.region.start_line} {now.name} ({before}"
                f"{now.score.score:.2f})"
            )
        if self.stats.unscanned and not self.options.allow_unscanned:
            lines.append(
                f"{len(self.stats.unscanned)} source file(s) not read ({self.stats.unscanned[0]}); "
                "--allow-unscanned to pass anyway"
            )
        return lines

    @property
    def exit_code(self) -> int:
        return 1 if self.failures() else 0

    def summary(self) -> dict[str, Any]:
        return {
            "type": "summary",
            "before": self.before,
            "after": self.after,
            "files": self.files,
            "changed": self.count("changed"),
            "added": self.count("added"),
            "removed": self.count("removed"),
            "renamed": self.count("renamed"),
            "unchanged": self.unchanged,
            "riskier": len(self.riskier),
            "scored": self.stats.scored,
            "cached": sum(1 for c in self.changes for r in (c.before, c.after) if r is not None and r.cached),
            "seconds": round(self.seconds, 3),
            "min_score": self.options.min_score,
            "fail_on": self.options.fail_threshold,
            "aggregation": self.options.aggregation,
            "warnings": [*self.stats.warnings, *self.warnings],
            "not_read": list(self.stats.unscanned),
            "exit_code": self.exit_code,
            "failures": self.failures(),
        }

    def summary_line(self) -> str:
        s = self.summary()
        return (
            f"vulnsteer: {s['files']} file(s) differ between {self.before} and {self.after}: "
            f"{s['changed']} function(s) changed ({s['riskier']} riskier), {s['added']} added, "
            f"{s['removed']} removed, {s['renamed']} renamed, "
            f"{s['unchanged']} unchanged (not scored); {s['scored']} scored, {s['cached']} from the cache, "
            f"{s['seconds']:.1f}s"
        )


def path_versions(old: Path, new: Path, options: ScanOptions) -> list[FileVersions]:
    """The files that differ between two files or two folders (matched by their path inside each folder, in
    sorted order; a file with the same bytes in both is left out); an error when one is a file and the other a
    folder, or one does not exist."""
    for path in (old, new):
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or folder")
    if old.is_dir() != new.is_dir():
        raise DiffError(f"diff compares two files or two folders; {old} and {new} are not both one or the other")
    if not old.is_dir():
        return [FileVersions(Version(old), Version(new))] if _differ(old, new) else []
    walked = WalkStats()
    before = {c.rel: c.path for c in walk([old], options.files, walked)}
    after = {c.rel: c.path for c in walk([new], options.files, walked)}
    out = []
    for rel in sorted(before.keys() | after.keys()):
        a, b = before.get(rel), after.get(rel)
        if a is not None and b is not None and not _differ(a, b):
            continue
        out.append(FileVersions(Version(a) if a else None, Version(b) if b else None))
    return out


def _differ(a: Path, b: Path) -> bool:
    try:
        return a.stat().st_size != b.stat().st_size or a.read_bytes() != b.read_bytes()
    except OSError:
        return True  # (reading it again says why)


def _git(top: Path, *args: str) -> bytes:
    try:
        done = subprocess.run(["git", "-C", str(top), *args], capture_output=True, check=False)
    except FileNotFoundError:
        raise DiffError("--base needs git, which is not installed") from None
    if done.returncode != 0:
        message = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise DiffError(f"git {' '.join(args[:2])}: {message[-1] if message else 'failed'}")
    return done.stdout


def _revision(top: Path, rev: str, flag: str) -> str:
    try:
        return _git(top, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}").decode().strip()
    except DiffError:
        raise DiffError(f"{flag} {rev}: not a commit of the repository {top}") from None


def git_versions(
    base_rev: str, head_rev: str | None, paths: Sequence[Path], base: Path, options: ScanOptions
) -> tuple[list[FileVersions], str, str]:
    """The tracked files under *paths* (all of them in one repository) that differ between revision *base_rev*
    and *head_rev* (None: the work tree), renames followed; with the two versions' labels (short commit ids, or
    ``work tree``). Files the options leave out (``--include``/``--exclude``) and files of no known language are
    left out."""
    start = paths[0] if paths else Path(".")
    where = start if start.is_dir() else start.parent
    try:
        top = Path(_git(where, "rev-parse", "--show-toplevel").decode().strip())
    except DiffError:
        raise DiffError(f"--base: {where} is not in a git repository") from None
    old = _revision(top, base_rev, "--base")
    new = _revision(top, head_rev, "--head") if head_rev is not None else None
    specs = [os.path.relpath(os.path.abspath(p), top) for p in paths] or ["."]
    raw = _git(top, "diff", "--name-status", "-z", "-M", "--no-ext-diff", old, *([new] if new else []), "--", *specs)
    fields = raw.decode("utf-8", "surrogateescape").split("\0")
    out = []
    i = 0
    while i < len(fields) and fields[i]:
        status = fields[i][0]
        if status in "RC":
            before_rel, after_rel = fields[i + 1], fields[i + 2]
            i += 3
        else:
            before_rel = after_rel = fields[i + 1]
            i += 2
        if status == "A":
            before_rel = ""
        if status == "D":
            after_rel = ""
        if status == "C":
            before_rel = ""  # (a copy is new code in its new place)
        rel = after_rel or before_rel
        if not options.files.included(rel) or options.files.excluded(rel):
            continue
        if options.language is None and language_of(Path(rel)) is None:
            continue
        out.append(
            FileVersions(
                _git_version(top, old, before_rel, base) if before_rel else None,
                (_git_version(top, new, after_rel, base) if new else Version(top / after_rel)) if after_rel else None,
            )
        )
    return out, old[:12], new[:12] if new else "the work tree"


def _git_version(top: Path, commit: str, rel: str, base: Path) -> Version:
    blob = _git(top, "cat-file", "blob", f"{commit}:{rel}")
    path = top / rel
    shown = f"{display_path(path, base)}@{commit[:12]}"
    return Version(blob=blob, name=SourceName(printable(shown), printable(rel), quote(os.fsencode(rel)), path))


def _read(
    version: Version | None, splitter: FunctionSplitter, options: ScanOptions, stats: ScanStats, base: Path
) -> list[PendingFunction]:
    if version is None:
        return []
    if version.path is not None:
        path = version.path
        candidate = SourceCandidate(path, path.name, language_of(path) if path.suffix else None)
        return read_file(candidate, anchor_of(path), base, splitter, options, stats)
    assert version.blob is not None and version.name is not None
    name = version.name
    if len(version.blob) > options.max_file_bytes:
        stats.not_scanned(name.shown, "too large", f"{len(version.blob)} bytes, over --max-file-bytes")
        return []
    try:
        source = decode_source(version.blob, name.shown)
    except BinaryContentError:
        stats.skipped["binary"] += 1
        return []
    stats.replaced_bytes += source.replaced
    return read_functions(source.text, name, splitter, options, stats)


def _identify(function: PendingFunction) -> tuple[str, str]:
    return function.unit.name, function.code


def diff(
    versions: Iterable[FileVersions],
    scorer: Scorer,
    options: ScanOptions,
    labels: tuple[str, str],
    *,
    cache_dir: Path | None = None,
    progress: bool = True,
    base: Path | None = None,
) -> DiffReport:
    """Score the functions that differ between the two versions of each file (see the module docstring);
    *labels* name the old and the new version in the report."""
    started = time.perf_counter()
    base = Path(os.path.abspath(base or Path.cwd()))
    splitter = FunctionSplitter()
    stats = ScanStats(min_score=options.min_score)
    files = list(versions)
    matched: list[Change[PendingFunction]] = []
    for pair in track(files, "reading", unit="file", enabled=progress):
        before = _read(pair.before, splitter, options, stats, base)
        after = _read(pair.after, splitter, options, stats, base)
        matched += match_functions(before, after, _identify)
    todo = [c for c in matched if c.kind != "unchanged"]
    pending = [f for c in todo for f in (c.before, c.after) if f is not None]
    options = settle(options, pending, stats)
    scored, options = score_functions(pending, scorer, cache_dir, options, stats, progress)
    results = iter(scored)
    changes = [
        FunctionChange(
            c.kind, next(results) if c.before is not None else None, next(results) if c.after is not None else None
        )
        for c in todo
    ]
    report = DiffReport(
        changes,
        unchanged=len(matched) - len(todo),
        files=len(files),
        stats=stats,
        provenance=dict(scorer.provenance),
        digest=scorer.digest,
        options=options,
        base=base,
        before=labels[0],
        after=labels[1],
    )
    report.seconds = time.perf_counter() - started
    return report
