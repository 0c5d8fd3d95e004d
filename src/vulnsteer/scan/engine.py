"""Scanning: files in, scored functions out.

:func:`scan` walks the paths (:mod:`~vulnsteer.scan.files`), reads each file as text, splits it into functions
(:mod:`~vulnsteer.scan.functions`), strips their comments as training data is stripped
(:func:`vulnsteer.data.clean.strip_comments`), looks every function up in the cache by (scorer digest, hash of
its cleaned code) and scores the rest in batches with the :class:`~vulnsteer.scan.scorer.Scorer` (which truncates
to its token budget), writing each batch to the cache as it finishes. Functions with the same cleaned code are
scored once.

>>> report = scan(["src/"], scorer, ScanOptions(min_score=0.7))  # doctest: +SKIP
>>> report.stats.summary_line()  # doctest: +SKIP
'12 files, 40 functions (35 cached, 5 scored), 3 findings >= 0.70, 2 files skipped (2 unknown language), 1.2 s'
"""

from __future__ import annotations

import hashlib
import os
import textwrap
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..cwe import normalize_cwe
from ..data.clean import strip_comments
from ..data.sample import VULNERABLE, Sample
from ..data.text import BinaryContentError, read_source
from ..progress import Progress, track
from .cache import ScanCache
from .files import FileFilter, SourceCandidate, WalkStats, language_of, walk
from .functions import CodeUnit, FunctionSplitter
from .gitignore import find_repository_top
from .region import Region
from .scorer import FunctionScore, Scorer, StaleDigestError

__all__ = ["ERROR_AT", "FunctionResult", "ScanOptions", "ScanReport", "ScanStats", "check_paths", "level_for", "scan"]

#: Scores at or above this are SARIF ``error`` level (``warning`` from ``min_score``, ``note`` below).
ERROR_AT = 0.8


def level_for(score: float, min_score: float) -> str:
    """SARIF level of a score: ``error`` from :data:`ERROR_AT`, ``warning`` from *min_score*, else ``note``.

    >>> level_for(0.9, 0.5), level_for(0.6, 0.5), level_for(0.2, 0.5)
    ('error', 'warning', 'note')
    """
    if score >= ERROR_AT:
        return "error"
    return "warning" if score >= min_score else "note"


@dataclass(frozen=True)
class ScanOptions:
    """How to scan.

    >>> ScanOptions(min_score=0.7, cwes=("89", "cwe-078")).cwes
    ('CWE-89', 'CWE-78')

    Attributes:
        files: which files (globs, default excludes, ``.gitignore``).
        keep_comments: score functions with their comments (training data has them stripped).
        max_file_bytes: larger files are skipped and counted.
        chunk_size: functions scored per scorer call (each finished chunk is cached).
        min_score: functions at or above it are findings (reported in SARIF and the table).
        fail_on: any function at or above it makes the exit code 1.
        cwes: report only findings naming one of these CWEs (empty: all).
    """

    files: FileFilter = field(default_factory=FileFilter)
    keep_comments: bool = False
    max_file_bytes: int = 2_000_000
    chunk_size: int = 32
    min_score: float = 0.5
    fail_on: float = 0.5
    cwes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("min_score", "fail_on"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"--{name.replace('_', '-')} must be a probability in [0, 1], got {value}")
        if self.chunk_size < 1 or self.max_file_bytes < 1:
            raise ValueError("chunk_size and max_file_bytes must be positive")
        object.__setattr__(self, "cwes", tuple(normalize_cwe(c) for c in self.cwes))

    def counts(self, score: FunctionScore) -> bool:
        """Whether a score's CWE passes the ``cwes`` filter."""
        return not self.cwes or score.cwe in self.cwes


@dataclass(frozen=True)
class FunctionResult:
    """One scored function (:meth:`to_record` is its JSON-lines record).

    >>> result = FunctionResult("a.py", "python", "f", "function", Region(1, 1, 2, 9), "h", "fp",
    ...                         FunctionScore(0.9, "vulnerable"), cached=False, finding=True)
    >>> result.to_record(0.5)["level"]
    'error'

    Attributes:
        path: the file, relative to the base folder (POSIX), or absolute when outside it.
        language: its language.
        name, kind, region: the function (see :class:`~vulnsteer.scan.functions.CodeUnit`).
        code_hash: hash of the cleaned code (the cache key with the scorer digest).
        fingerprint: hash of (path from the repository top, name, whitespace-normalised cleaned code): stable
            across runs and line moves.
        score: the scorer's result.
        cached: the score came from the cache.
        finding: at or above ``min_score`` and passing the CWE filter.
        whole_file: why the unit is a whole file, or None for a function.
    """

    path: str
    language: str
    name: str
    kind: str
    region: Region
    code_hash: str
    fingerprint: str
    score: FunctionScore
    cached: bool
    finding: bool
    whole_file: str | None = None

    def to_record(self, min_score: float) -> dict[str, Any]:
        """The JSON-lines record of this function."""
        return {
            "path": self.path,
            "language": self.language,
            "function": self.name,
            "kind": self.kind,
            "region": self.region.to_dict(),
            "score": self.score.score,
            "level": level_for(self.score.score, min_score),
            "finding": self.finding,
            "verdict": self.score.verdict,
            "cwe": self.score.cwe,
            "explanation": self.score.explanation,
            "truncated": self.score.truncated,
            "probe": self.score.probe,
            "push": self.score.push,
            "cached": self.cached,
            "whole_file": self.whole_file,
            "fingerprint": self.fingerprint,
            "code_hash": self.code_hash,
        }


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


@dataclass
class ScanStats:
    """What a scan did; :meth:`summary_line` is the line printed at the end.

    >>> ScanStats(files=1, functions=2, scored=2).summary_line()
    '1 file, 2 functions (0 cached, 2 scored), 0 findings >= 0.50, 0.0 s'
    """

    files: int = 0
    functions: int = 0
    scored: int = 0
    cached: int = 0
    findings: int = 0
    failing: int = 0
    ignored: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    whole_files: Counter[str] = field(default_factory=Counter)
    parse_errors: int = 0
    replaced_bytes: int = 0
    comments_kept: int = 0
    truncated: int = 0
    min_score: float = 0.5
    unreadable: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "functions": self.functions,
            "scored": self.scored,
            "cached": self.cached,
            "findings": self.findings,
            "failing": self.failing,
            "ignored": self.ignored,
            "skipped": dict(self.skipped),
            "whole_files": dict(self.whole_files),
            "parse_errors": self.parse_errors,
            "decoded_with_replacement": self.replaced_bytes,
            "comment_strip_failed": self.comments_kept,
            "truncated": self.truncated,
            "unreadable": list(self.unreadable),
            "warnings": list(self.warnings),
            "seconds": round(self.seconds, 3),
        }

    def summary_line(self) -> str:
        """``12 files, 40 functions (35 cached, 5 scored), 3 findings >= 0.50, 2 files skipped (...), 1.2 s``."""
        parts = [
            _count(self.files, "file"),
            f"{_count(self.functions, 'function')} ({self.cached} cached, {self.scored} scored)",
            f"{_count(self.findings, 'finding')} >= {self.min_score:.2f}",
        ]
        skipped = sum(self.skipped.values())
        if skipped:
            detail = ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items()))
            parts.append(f"{_count(skipped, 'file')} skipped ({detail})")
        whole = sum(self.whole_files.values())
        if whole:
            detail = ", ".join(f"{n} {reason}" for reason, n in sorted(self.whole_files.items()))
            parts.append(f"{_count(whole, 'whole file')} ({detail})")
        if self.replaced_bytes:
            parts.append(f"{self.replaced_bytes} not UTF-8 (decoded with replacement)")
        parts.append(f"{self.seconds:.1f} s")
        return ", ".join(parts)


@dataclass
class ScanReport:
    """The results of a scan, what produced them and where paths are relative to (see :func:`scan`)."""

    results: list[FunctionResult]
    stats: ScanStats
    provenance: Mapping[str, Any]
    digest: str
    options: ScanOptions
    base: Path

    @property
    def findings(self) -> list[FunctionResult]:
        """The findings, highest score first."""
        found = (r for r in self.results if r.finding)
        return sorted(found, key=lambda r: (-r.score.score, r.path, r.region.start_line))

    @property
    def exit_code(self) -> int:
        """0 when no function reaches ``fail_on``, else 1."""
        return 1 if self.stats.failing else 0


@dataclass(frozen=True)
class _Pending:
    path: str
    language: str
    unit: CodeUnit
    code: str
    code_hash: str
    fingerprint: str
    whole_file: str | None


def check_paths(paths: Sequence[str | Path]) -> list[Path]:
    """The paths to scan; an empty path or one that does not exist is an error naming it.

    >>> check_paths(["."])
    [PosixPath('.')]
    >>> check_paths([""])
    Traceback (most recent call last):
    ...
    ValueError: scan: PATH is an empty string
    """
    if not paths:
        raise ValueError("scan: no PATH given")
    out = []
    for raw in paths:
        if str(raw).strip() == "":
            raise ValueError("scan: PATH is an empty string")
        path = Path(raw)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or folder")
        out.append(path)
    return out


def _display_path(path: Path, base: Path) -> str:
    absolute = Path(os.path.abspath(path))
    try:
        return absolute.relative_to(base).as_posix()
    except ValueError:
        return absolute.as_posix()


def _anchor(root: Path) -> Path:
    top = find_repository_top(root.resolve())
    if top is not None:
        return top
    return root.resolve() if root.is_dir() else root.resolve().parent


def _clean(unit: CodeUnit, language: str, keep_comments: bool) -> tuple[str, bool]:
    """The unit's code as the model sees it (dedented, LF line ends, comments stripped); and whether stripping
    failed (no lexer for the language)."""
    code = textwrap.dedent(unit.indent + unit.text) if unit.indent else unit.text
    code = code.replace("\r\n", "\n").replace("\r", "\n")
    if keep_comments:
        return code, False
    try:
        return strip_comments(code, language), False
    except ValueError:
        return code, True


def _hash(*parts: str) -> str:
    return hashlib.sha256("\n\0".join(parts).encode("utf-8")).hexdigest()


def _read(
    candidate: SourceCandidate,
    anchor: Path,
    base: Path,
    splitter: FunctionSplitter,
    options: ScanOptions,
    stats: ScanStats,
) -> list[_Pending]:
    """The functions of one file (and its counts in *stats*)."""
    path = candidate.path
    try:
        if path.stat().st_size > options.max_file_bytes:
            stats.skipped["too large"] += 1
            return []
        source = read_source(path)
    except BinaryContentError:
        stats.skipped["binary"] += 1
        return []
    except OSError as exc:
        stats.skipped["unreadable"] += 1
        stats.unreadable.append(str(exc) if str(path) in str(exc) else f"{path}: {exc}")
        return []
    text = source.text
    if not text.strip():
        stats.skipped["empty"] += 1
        return []
    language = language_of(path, text[:8192])
    if language is None:
        stats.skipped["unknown language"] += 1
        return []
    stats.files += 1
    stats.replaced_bytes += source.replaced
    split = splitter.split(text, language, path.suffix)
    if split.whole_file:
        stats.whole_files[split.whole_file] += 1
    stats.parse_errors += split.parse_errors
    shown = _display_path(path, base)
    try:
        stable = Path(os.path.abspath(path)).relative_to(anchor).as_posix()
    except ValueError:
        stable = candidate.rel
    out = []
    for unit in split.units:
        code, failed = _clean(unit, language, options.keep_comments)
        stats.comments_kept += failed
        if not code.strip():
            continue
        fingerprint = _hash(stable, unit.name, " ".join(code.split()))[:32]
        out.append(_Pending(shown, language, unit, code, _hash(language, code), fingerprint, split.whole_file))
    return out


def _score_missing(
    pending: Sequence[_Pending],
    scorer: Scorer,
    cache_dir: Path | None,
    options: ScanOptions,
    stats: ScanStats,
    progress: bool,
) -> tuple[dict[str, FunctionScore], set[str]]:
    """Scores by code hash, and the hashes that came from the cache."""
    unique: dict[str, _Pending] = {}
    for item in pending:
        unique.setdefault(item.code_hash, item)
    for _attempt in range(2):
        cache = ScanCache(cache_dir, scorer.digest) if cache_dir is not None else None
        if cache is not None and cache.bad_lines:
            stats.warnings.append(f"{cache.path}: {cache.bad_lines} torn or corrupt cache lines ignored")
        scores: dict[str, FunctionScore] = {}
        hits: set[str] = set()
        if cache is not None:
            for key in unique:
                hit = cache.get(key)
                if hit is not None:
                    scores[key] = hit
                    hits.add(key)
        # shortest first: batches of similar length waste less padding (the engine batches in call order)
        missing = sorted((unique[k] for k in unique if k not in scores), key=lambda p: len(p.code))
        try:
            _score_chunks(missing, scorer, cache, options, scores, progress)
        except StaleDigestError:
            continue
        stats.scored = len(missing)
        return scores, hits
    raise RuntimeError("the scorer's digest changed twice during one scan")


def _score_chunks(
    missing: Sequence[_Pending],
    scorer: Scorer,
    cache: ScanCache | None,
    options: ScanOptions,
    scores: dict[str, FunctionScore],
    progress: bool,
) -> None:
    with Progress(len(missing), "scoring", unit="function", enabled=progress and bool(missing)) as bar:
        for start in range(0, len(missing), options.chunk_size):
            chunk = missing[start : start + options.chunk_size]
            samples = [
                Sample(f"{p.path}:{p.unit.region.start_line}:{p.unit.name}", p.code, p.language, "unknown", VULNERABLE)
                for p in chunk
            ]
            got = scorer.score(samples, progress=False)
            if len(got) != len(chunk):
                raise RuntimeError(f"the scorer returned {len(got)} scores for {len(chunk)} functions")
            fresh = {p.code_hash: s for p, s in zip(chunk, got)}
            if cache is not None:
                cache.put(fresh)
            scores.update(fresh)
            bar.update(len(chunk))


def scan(
    paths: Sequence[str | Path],
    scorer: Scorer,
    options: ScanOptions | None = None,
    *,
    cache_dir: Path | None = None,
    progress: bool = True,
    base: Path | None = None,
) -> ScanReport:
    """Scan files and folders; see the module docstring.

    Args:
        paths: files and folders (an empty or missing path is an error).
        scorer: what scores the functions.
        options: see :class:`ScanOptions`.
        cache_dir: the score cache's folder (None: no cache).
        progress: show progress bars.
        base: paths in the report are relative to it (default: the current folder).

    >>> report = scan(["src/"], scorer, cache_dir=Path("~/.cache/vulnsteer/scan").expanduser())  # doctest: +SKIP
    >>> report.exit_code, len(report.findings)  # doctest: +SKIP
    (1, 3)
    """
    started = time.perf_counter()
    options = options or ScanOptions()
    roots = check_paths(paths)
    base = Path(os.path.abspath(base or Path.cwd()))
    stats = ScanStats(min_score=options.min_score)
    walked = WalkStats()
    splitter = FunctionSplitter()
    pending: list[_Pending] = []
    for root in roots:
        anchor = _anchor(root)
        candidates = list(walk([root], options.files, walked))
        for candidate in track(candidates, f"reading {root}", unit="file", enabled=progress):
            pending.extend(_read(candidate, anchor, base, splitter, options, stats))
    stats.ignored = walked.ignored
    stats.skipped.update(walked.skipped)
    if walked.gitignore_unread:
        stats.warnings.append(
            f"{walked.gitignore_unread} .gitignore files not honoured: pathspec is not installed "
            "(pip install 'vulnsteer[scan]')"
        )
    scores, hits = _score_missing(pending, scorer, cache_dir, options, stats, progress)
    results = []
    for item in pending:
        score = scores[item.code_hash]
        finding = score.score >= options.min_score and options.counts(score)
        stats.failing += score.score >= options.fail_on and options.counts(score)
        stats.findings += finding
        stats.truncated += score.truncated
        results.append(
            FunctionResult(
                item.path,
                item.language,
                item.unit.name,
                item.unit.kind,
                item.unit.region,
                item.code_hash,
                item.fingerprint,
                score,
                cached=item.code_hash in hits,
                finding=finding,
                whole_file=item.whole_file,
            )
        )
    stats.functions = len(results)
    stats.cached = sum(r.cached for r in results)
    stats.seconds = time.perf_counter() - started
    return ScanReport(results, stats, dict(scorer.provenance), scorer.digest, options, base)
