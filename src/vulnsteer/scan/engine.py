"""Scanning: files in, scored functions out.

:func:`scan` walks the paths (:mod:`~vulnsteer.scan.files`), reads each file as text, splits it into functions
(:mod:`~vulnsteer.data.functions`), strips their comments as training data is stripped
(:func:`vulnsteer.data.clean.strip_comments`), looks every function up in the cache by (scorer digest, hash of
its cleaned code) and scores the rest in batches with the :class:`~vulnsteer.scan.scorer.Scorer` (which truncates
to its token budget), writing each batch to the cache as it finishes. Functions with the same cleaned code are
scored once.

>>> report = scan(["src/"], scorer, ScanOptions(min_score=0.7))  # doctest: +SKIP
>>> report.stats.summary_line()  # doctest: +SKIP
'12 files, 40 functions (35 cached, 5 scored), 3 findings >= 0.70, 2 files skipped (2 unknown language), 1.2 s'
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..config.defaults import DEFAULT_AGGREGATION, MIN_ADAPT, WARN_ADAPT
from ..config.vocabulary import ADAPT_MODES
from ..cwe import normalize_cwe
from ..data.functions import CodeUnit, FunctionSplitter, tree_sitter_available
from ..data.region import Region
from ..data.sample import VULNERABLE, Sample
from ..data.text import BinaryContentError, read_source
from ..data.units import function_code
from ..io import portable
from ..progress import Progress, track
from ..stats.aggregate import check_aggregation
from ..stats.shares import check_share
from .cache import ScanCache
from .files import FileFilter, SourceCandidate, WalkStats, language_of, printable, walk
from .gitignore import find_repository_top
from .scorer import FunctionScore, Scorer, StaleDigestError
from .suppression import Suppression, inline_suppression

__all__ = [
    "DISCRIMINATION_MIN_FUNCTIONS",
    "ERROR_AT",
    "FunctionResult",
    "ScanOptions",
    "ScanReport",
    "ScanStats",
    "check_paths",
    "display_path",
    "level_for",
    "scan",
]

#: Scores at or above this are SARIF ``error`` level (``warning`` from ``min_score``, ``note`` below).
ERROR_AT = 0.8
#: A scan of at least this many functions is checked for scores that do not discriminate.
DISCRIMINATION_MIN_FUNCTIONS = 20
#: ... and warned about when at least this share of its functions reaches ``min_score`` (or none does, while
#: every score lies within :data:`FLAT_SPREAD`).
FLAT_SHARE = 0.9
FLAT_SPREAD = 0.05


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
    >>> ScanOptions(min_score=0.7).fail_threshold  # (the scan fails from --min-score unless set)
    0.7
    >>> ScanOptions(min_score=0.5, adapt="auto").settled(20).adapt, ScanOptions(adapt="auto").settled(19).adapt
    ('on', 'off')

    Attributes:
        files: which files (globs, default excludes, ``.gitignore``).
        keep_comments: score functions with their comments (training data has them stripped).
        max_file_bytes: larger files are skipped and counted.
        chunk_size: functions scored per scorer call (each finished chunk is cached).
        min_score: functions at or above it are findings (reported in SARIF and the table).
        fail_on: any finding at or above it makes the exit code 1 (None: ``min_score``); it cannot be below
            ``min_score`` (a function that fails the scan is always reported).
        cwes: report only findings naming one of these CWEs (empty: all).
        allow_unscanned: source files that could not be scanned (too large, unreadable) do not fail the scan.
        baseline: fingerprints of findings already known (an earlier scan's; see
            :mod:`~vulnsteer.scan.suppression`): those are not reported and do not fail the scan.
        language: the language of every file (None: each file's own, from its extension or ``#!`` line).
        score_unknown: score a file of no known language whole, as plain source code (else it is skipped).
        aggregation: how a file's functions add up to the file's score (file records, ``detect``): one of
            :data:`~vulnsteer.config.vocabulary.AGGREGATIONS`, the scorer's own for a long function's windows.
        adapt: ``on``: re-read every function's score by the scorer's probe detector adapted to all the functions
            scanned (its centre from their unlabelled scores; see
            :meth:`~vulnsteer.scan.model_scorer.ModelScorer.adapt`); ``off``: never; ``auto``: on from
            ``adapt_from`` distinct functions, off below (:meth:`settled`).
        adapt_from: where ``auto`` starts adapting: a probe detector's minimum (``min_adapt``: below it the
            detector refuses to adapt).
        findings_at_threshold: when the scan adapts, findings start at the adapted detector's threshold (where
            the share it flags begins: :meth:`at_threshold`) instead of ``min_score``: what a scan without
            ``--min-score`` does. A stated ``prevalence`` always does.
        prevalence: the share of the scanned functions the user expects to be vulnerable (a prior, not a label;
            None: none stated). When the scan adapts, the detector adapts to it
            (:meth:`~vulnsteer.steering.probe.Probe.adapted`): the highest that share of the functions are
            flagged, findings start at that threshold (it replaces ``min_score``: :meth:`at_threshold`), and the
            probabilities take it as their prior. Needs adaptation (``adapt`` not ``off``).
    """

    files: FileFilter = field(default_factory=FileFilter)
    keep_comments: bool = False
    max_file_bytes: int = 2_000_000
    chunk_size: int = 32
    min_score: float = 0.5
    fail_on: float | None = None
    cwes: tuple[str, ...] = ()
    allow_unscanned: bool = False
    baseline: frozenset[str] = frozenset()
    language: str | None = None
    score_unknown: bool = False
    aggregation: str = DEFAULT_AGGREGATION
    adapt: str = "off"
    findings_at_threshold: bool = False
    adapt_from: int = MIN_ADAPT
    prevalence: float | None = None

    def __post_init__(self) -> None:
        if self.adapt not in ADAPT_MODES:
            raise ValueError(f"adapt must be one of {', '.join(ADAPT_MODES)}, got {self.adapt!r}")
        if self.prevalence is not None:
            check_share(self.prevalence, "--prevalence")
            if self.adapt == "off":
                raise ValueError("--prevalence adapts the detector to the functions scanned: it needs adaptation")
        for name in ("min_score", "fail_on"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"--{name.replace('_', '-')} must be a probability in [0, 1], got {value}")
        threshold = self.fail_threshold
        if threshold < self.min_score:
            raise ValueError(
                f"--fail-on {threshold:g} is below --min-score {self.min_score:g}: a function could fail the scan "
                f"without being reported; lower --min-score to {threshold:g} or raise --fail-on"
            )
        if self.chunk_size < 1 or self.max_file_bytes < 1:
            raise ValueError("chunk_size and max_file_bytes must be positive")
        object.__setattr__(self, "cwes", tuple(normalize_cwe(c) for c in self.cwes))
        check_aggregation(self.aggregation, "--aggregation")
        object.__setattr__(self, "baseline", frozenset(self.baseline))

    def settled(self, functions: int) -> ScanOptions:
        """These options once the number of distinct *functions* to score is known: ``auto`` adaptation turns
        ``on`` from ``adapt_from`` functions and ``off`` below (a stated ``prevalence`` then does not apply); ``on``
        and ``off`` stay."""
        if self.adapt != "auto":
            return self
        if functions < self.adapt_from:
            return self.unadapted()
        return dataclasses.replace(self, adapt="on")

    def unadapted(self) -> ScanOptions:
        """These options scoring every function as fitted (no adaptation, so no stated prevalence either)."""
        return dataclasses.replace(self, adapt="off", prevalence=None)

    def at_threshold(self, threshold: float) -> ScanOptions:
        """These options with findings from *threshold* (an adapted threshold as a probability) on, or from
        ``fail_on`` where that is lower (a function that fails the scan is still reported).

        >>> ScanOptions(min_score=0.5, fail_on=0.6).at_threshold(0.7).min_score
        0.6
        """
        threshold = min(1.0, max(0.0, threshold))
        return dataclasses.replace(self, min_score=threshold if self.fail_on is None else min(threshold, self.fail_on))

    @property
    def fail_threshold(self) -> float:
        """``fail_on`` once resolved (never None)."""
        return self.min_score if self.fail_on is None else self.fail_on

    def counts(self, score: FunctionScore) -> bool:
        """Whether a score's CWE passes the ``cwes`` filter."""
        return not self.cwes or score.cwe in self.cwes


@dataclass(frozen=True)
class FunctionResult:
    """One scored function (:meth:`to_record` is its JSON-lines record).

    >>> result = FunctionResult("a.py", "python", "f", "function", Region(1, 1, 2, 9), "h", "fp",
    ...                         FunctionScore(0.9, "vulnerable"), cached=False, finding=True, uri="a.py")
    >>> result.to_record(0.5)["level"]
    'error'

    Attributes:
        path: the file, relative to the base folder (POSIX, ``..`` when outside it), printable (a name's bytes that
            are not UTF-8 shown as ``\\xNN``).
        language: its language.
        name, kind, region: the function (see :class:`~vulnsteer.data.functions.CodeUnit`).
        code_hash: hash of the cleaned code (the cache key with the scorer digest).
        fingerprint: hash of (path from the repository top, name, whitespace-normalised cleaned code): stable
            across runs and line moves.
        score: the scorer's result.
        cached: the score came from the cache.
        finding: at or above ``min_score``, passing the CWE filter, and neither suppressed nor in the baseline.
        whole_file: why the unit is a whole file, or None for a function.
        triaged: why a function at or above ``min_score`` is not a finding: ``inline`` (a ``vulnsteer: ignore``
            comment) or ``baseline`` (in the baseline); None otherwise.
        uri: the file's path relative to the base folder as a URI reference (percent-encoded bytes of the name).
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
    triaged: str | None = None
    uri: str = ""

    def to_record(self, min_score: float) -> dict[str, Any]:
        """The JSON-lines record of this function."""
        return {
            "type": "function",
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
            "windows": self.score.windows,
            "probe": self.score.probe,
            "push": self.score.push,
            "cached": self.cached,
            "whole_file": self.whole_file,
            "triaged": self.triaged,
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

    Files left out by design (``skipped``: not source, binary, empty, a link out of the scanned folder) are
    counted; source files that could not be scanned (``unscanned``: too large, unreadable) are named one by one,
    and fail the scan unless allowed (:attr:`ScanOptions.allow_unscanned`).
    """

    files: int = 0
    functions: int = 0
    scored: int = 0
    cached: int = 0
    findings: int = 0
    failing: int = 0
    ignored: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    #: files left out that a user should hear of by name (``path: reason``), e.g. links out of the folder
    skipped_named: list[str] = field(default_factory=list)
    #: source files not scanned, ``path: reason`` (too large, unreadable)
    unscanned: list[str] = field(default_factory=list)
    unscanned_reasons: Counter[str] = field(default_factory=Counter)
    #: ``.gitignore`` (or ``.git/info/exclude``) files and how many files and folders each left out
    ignored_by: Counter[str] = field(default_factory=Counter)
    whole_files: Counter[str] = field(default_factory=Counter)
    parse_errors: int = 0
    #: files where the parser met syntax it could not read (their functions are still scored as found)
    parse_error_files: list[str] = field(default_factory=list)
    replaced_bytes: int = 0
    comments_kept: int = 0
    truncated: int = 0
    #: functions at or above ``min_score`` kept out by a ``vulnsteer: ignore`` comment / by the baseline
    suppressed: int = 0
    in_baseline: int = 0
    #: False when the scores do not tell functions apart (see :func:`_check_discrimination`); None: not checked
    discriminates: bool | None = None
    min_score: float = 0.5
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
            "ignored_by": dict(self.ignored_by),
            "skipped": dict(self.skipped),
            "skipped_named": list(self.skipped_named),
            "unscanned": list(self.unscanned),
            "whole_files": dict(self.whole_files),
            "parse_errors": self.parse_errors,
            "parse_error_files": list(self.parse_error_files),
            "decoded_with_replacement": self.replaced_bytes,
            "comment_strip_failed": self.comments_kept,
            "truncated": self.truncated,
            "suppressed": self.suppressed,
            "in_baseline": self.in_baseline,
            "discriminates": self.discriminates,
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
        if self.suppressed:
            parts.append(f"{self.suppressed} suppressed inline")
        if self.in_baseline:
            parts.append(f"{self.in_baseline} in the baseline")
        skipped = sum(self.skipped.values())
        if skipped:
            detail = ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items()))
            parts.append(f"{_count(skipped, 'file')} skipped ({detail})")
        if self.unscanned:
            detail = ", ".join(f"{n} {reason}" for reason, n in sorted(self.unscanned_reasons.items()))
            parts.append(f"{_count(len(self.unscanned), 'source file')} NOT scanned ({detail})")
        whole = sum(self.whole_files.values())
        if whole:
            detail = ", ".join(f"{n} {reason}" for reason, n in sorted(self.whole_files.items()))
            parts.append(f"{_count(whole, 'whole file')} ({detail})")
        if self.replaced_bytes:
            parts.append(f"{self.replaced_bytes} not UTF-8 (decoded with replacement)")
        parts.append(f"{self.seconds:.1f} s")
        return ", ".join(parts)

    def not_scanned(self, path: str, reason: str, detail: str) -> None:
        """Count a source file that could not be scanned, and name it."""
        self.unscanned_reasons[reason] += 1
        self.unscanned.append(f"{path}: {detail}")


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
    def portable_provenance(self) -> dict[str, Any]:
        """The scorer's provenance without absolute paths (for output that is shared: SARIF, JSON): a path under
        the base folder becomes relative to it, any other absolute path its last component (the digests identify
        what it was)."""
        return {key: portable(value, self.base) for key, value in self.provenance.items()}

    @property
    def findings(self) -> list[FunctionResult]:
        """The findings, highest score first."""
        found = (r for r in self.results if r.finding)
        return sorted(found, key=lambda r: (-r.score.score, r.path, r.region.start_line))

    @property
    def exit_code(self) -> int:
        """1 when a finding reaches ``fail_on`` or a source file could not be scanned (unless allowed), else 0."""
        return 1 if self.failures() else 0

    def failures(self) -> list[str]:
        """Why the scan fails, one line per reason (empty: it passes): the findings that reach
        ``fail_on`` (the highest named), the source files not scanned."""
        lines = []
        if self.stats.failing:
            threshold = self.options.fail_threshold
            worst = max(
                (r for r in self.results if r.finding and r.score.score >= threshold),
                key=lambda r: (r.score.score, r.path),
            )
            lines.append(
                f"{_count(self.stats.failing, 'function')} at or above --fail-on {threshold:.2f}, the highest "
                f"{worst.path}:{worst.region.start_line}:{worst.region.start_column} {worst.name} "
                f"({worst.score.score:.2f})"
            )
        if self.stats.unscanned and not self.options.allow_unscanned:
            first = self.stats.unscanned[0]
            more = f" and {len(self.stats.unscanned) - 1} more" if len(self.stats.unscanned) > 1 else ""
            lines.append(
                f"{_count(len(self.stats.unscanned), 'source file')} not scanned ({first}{more}); "
                "--allow-unscanned to pass anyway"
            )
        return lines


@dataclass(frozen=True)
class PendingFunction:
    """A function read and cleaned, not yet scored (:func:`read_functions`, scored by :func:`score_functions`)."""

    path: str
    uri: str
    language: str
    unit: CodeUnit
    code: str
    code_hash: str
    fingerprint: str
    whole_file: str | None
    suppression: Suppression | None


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


def display_path(path: Path, base: Path) -> str:
    """How a report names *path*: relative to *base* (see :attr:`FunctionResult.path`)."""
    return printable(_relative(path, base))


def _relative(path: Path, base: Path) -> str:
    """*path* relative to *base* (POSIX, with ``..`` when outside it), as the file system names it."""
    return Path(os.path.relpath(os.path.abspath(path), base)).as_posix()


def anchor_of(root: Path) -> Path:
    """Where stable paths (fingerprints) start for files under *root*: its repository top, else the folder."""
    top = find_repository_top(root.resolve())
    if top is not None:
        return top
    return root.resolve() if root.is_dir() else root.resolve().parent


def _hash(*parts: str) -> str:
    return hashlib.sha256("\n\0".join(parts).encode("utf-8")).hexdigest()


def read_file(
    candidate: SourceCandidate,
    anchor: Path,
    base: Path,
    splitter: FunctionSplitter,
    options: ScanOptions,
    stats: ScanStats,
) -> list[PendingFunction]:
    """The functions of one file found by a walk (and its counts in *stats*): read, split and cleaned by
    :func:`read_functions`; a file too large, binary or unreadable is counted and named instead."""
    path = candidate.path
    shown = display_path(path, base)
    named = options.language is not None or options.score_unknown  # (a language, or none, is given)
    try:
        if not named and candidate.language is None and _language_from_head(path) is None:  # not source: skipped
            stats.skipped["unknown language"] += 1
            return []
        size = path.stat().st_size
        if size > options.max_file_bytes:
            stats.not_scanned(shown, "too large", f"{size} bytes, over --max-file-bytes {options.max_file_bytes}")
            return []
        source = read_source(path)
    except BinaryContentError:  # (named: a file with a source file's name that holds no text is worth a look)
        stats.skipped["binary"] += 1
        stats.skipped_named.append(f"{shown}: binary content, not source text")
        return []
    except OSError as exc:  # (read_source's message starts with the path)
        text = str(exc).removeprefix(f"{path}: ") if exc.strerror is None else f"cannot read ({exc.strerror})"
        stats.not_scanned(shown, "unreadable", printable(text))
        return []
    stats.replaced_bytes += source.replaced
    try:
        stable = printable(Path(os.path.abspath(path)).relative_to(anchor).as_posix())
    except ValueError:
        stable = printable(candidate.rel)
    where = SourceName(shown, stable, quote(os.fsencode(_relative(path, base))), path)
    return read_functions(source.text, where, splitter, options, stats)


@dataclass(frozen=True)
class SourceName:
    """How a file's functions are named in a report: its display path (:attr:`FunctionResult.path`), its path
    from the repository top (fingerprints), its URI relative to the base folder (SARIF), and the path its
    language is told from (its extension or ``#!`` line)."""

    shown: str
    stable: str
    uri: str
    path: Path


def read_functions(
    text: str, where: SourceName, splitter: FunctionSplitter, options: ScanOptions, stats: ScanStats
) -> list[PendingFunction]:
    """The functions of one file's *text* as they are scored (split, cleaned, hashed), counted in *stats*; none
    for an empty text or one of no known language (counted as skipped)."""
    if not text.strip():
        stats.skipped["empty"] += 1
        return []
    path, shown = where.path, where.shown
    language = options.language if options.language is not None else language_of(path, text[:8192])
    if language is None and options.score_unknown:
        language = ""
    if language is None:
        stats.skipped["unknown language"] += 1
        return []
    stats.files += 1
    split = splitter.split(text, language, path.suffix)
    if split.whole_file:
        stats.whole_files[split.whole_file] += 1
    stats.parse_errors += split.parse_errors
    if split.parse_errors:
        stats.parse_error_files.append(shown)
    stable, uri = where.stable, where.uri
    lines = text.splitlines()
    out = []
    for unit in split.units:
        code, failed = function_code(unit, language, options.keep_comments)
        stats.comments_kept += failed
        if not code.strip():
            continue
        fingerprint = _hash(stable, unit.name, " ".join(code.split()))[:32]
        suppression = inline_suppression(lines, unit.region.start_line)
        code_hash = _hash(language, code)
        out.append(
            PendingFunction(shown, uri, language, unit, code, code_hash, fingerprint, split.whole_file, suppression)
        )
    return out


def _language_from_head(path: Path) -> str | None:
    """The language of a file without an extension, from its first bytes (a ``#!`` line); None if unknown."""
    with open(path, "rb") as handle:
        head = handle.read(512)
    return language_of(path, head.decode("utf-8", "replace"))


def settle(options: ScanOptions, pending: Sequence[PendingFunction], stats: ScanStats) -> ScanOptions:
    """*options* settled for the distinct functions of *pending* (:meth:`ScanOptions.settled`), their
    ``min_score`` recorded in *stats*: what a scan and a diff do once they have read their functions. A stated
    prevalence that cannot apply (too few functions to adapt) is warned about."""
    functions = len({item.code_hash for item in pending})
    settled = options.settled(functions)
    if options.prevalence is not None and settled.prevalence is None:
        stats.warnings.append(
            f"--prevalence not applied: {functions} distinct functions, fewer than the {options.adapt_from} the "
            "detector adapts from (scored as fitted)"
        )
    stats.min_score = settled.min_score
    return settled


def score_functions(
    pending: Sequence[PendingFunction],
    scorer: Scorer,
    cache_dir: Path | None,
    options: ScanOptions,
    stats: ScanStats,
    progress: bool,
) -> tuple[list[FunctionResult], ScanOptions]:
    """The results of *pending* functions, in order: each function's code scored once (the cache first), each
    result counted in *stats* (a finding unless below ``min_score``, filtered out by CWE or suppressed); and the
    options they were judged by (with a stated prevalence or ``findings_at_threshold``, findings start at the
    adapted threshold)."""
    scores, hits = _score_missing(pending, scorer, cache_dir, options, stats, progress)
    if options.adapt == "on":
        scores = _adapted(scorer, scores, stats, options.prevalence)
        if (options.prevalence is not None or options.findings_at_threshold) and scores:
            threshold = next(iter(scores.values())).threshold
            if threshold is not None:
                options = options.at_threshold(threshold)
                stats.min_score = options.min_score
    return [_result(item, scores[item.code_hash], item.code_hash in hits, options, stats) for item in pending], options


def _score_missing(
    pending: Sequence[PendingFunction],
    scorer: Scorer,
    cache_dir: Path | None,
    options: ScanOptions,
    stats: ScanStats,
    progress: bool,
) -> tuple[dict[str, FunctionScore], set[str]]:
    """Scores by code hash, and the hashes that came from the cache."""
    unique: dict[str, PendingFunction] = {}
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
        # shortest first: each chunk holds functions of similar lengths (its scorer batches them in length buckets)
        missing = sorted((unique[k] for k in unique if k not in scores), key=lambda p: len(p.code))
        try:
            _score_chunks(missing, scorer, cache, options, scores, progress)
        except StaleDigestError:
            continue
        stats.scored = len(missing)
        return scores, hits
    raise RuntimeError("the scorer's digest changed twice during one scan")


def _score_chunks(
    missing: Sequence[PendingFunction],
    scorer: Scorer,
    cache: ScanCache | None,
    options: ScanOptions,
    scores: dict[str, FunctionScore],
    progress: bool,
) -> None:
    """Score *missing* in chunks of ``chunk_size``, each written to the cache as it finishes (here, by this
    process only, whoever scored it)."""
    chunks = [missing[start : start + options.chunk_size] for start in range(0, len(missing), options.chunk_size)]
    samples = [
        [Sample(f"{p.path}:{p.unit.region.start_line}:{p.unit.name}", p.code, p.language, "unknown", VULNERABLE)
         for p in chunk]
        for chunk in chunks
    ]  # fmt: skip
    with Progress(len(missing), "scoring", unit="function", enabled=progress and bool(missing)) as bar:
        for k, got in _chunk_scores(scorer, samples):
            chunk = chunks[k]
            if len(got) != len(chunk):
                raise RuntimeError(f"the scorer returned {len(got)} scores for {len(chunk)} functions")
            fresh = {p.code_hash: s for p, s in zip(chunk, got)}
            if cache is not None:
                cache.put(fresh)
            scores.update(fresh)
            bar.update(len(chunk))


def _chunk_scores(scorer: Scorer, chunks: Sequence[list[Sample]]) -> Iterator[tuple[int, list[FunctionScore]]]:
    """``(index, scores)`` of each chunk as it is done: all at once on a scorer with workers (``score_chunks``,
    e.g. :class:`~vulnsteer.scan.ray_scorer.RayScorer`; in the order they finish), else one after another."""
    score_chunks = getattr(scorer, "score_chunks", None)
    if score_chunks is not None:
        yield from score_chunks(chunks)
        return
    for k, chunk in enumerate(chunks):
        yield k, scorer.score(chunk, progress=False)


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
    pending: list[PendingFunction] = []
    for root in roots:
        anchor = anchor_of(root)
        candidates = list(walk([root], options.files, walked))
        for candidate in track(candidates, f"reading {root}", unit="file", enabled=progress):
            pending.extend(read_file(candidate, anchor, base, splitter, options, stats))
    stats.ignored = walked.ignored
    stats.ignored_by.update(walked.ignored_by)
    stats.skipped.update(walked.skipped)
    stats.skipped_named.extend(walked.named)
    if walked.gitignore_unread:
        stats.warnings.append(
            f"{walked.gitignore_unread} .gitignore files not honoured: pathspec is not installed "
            "(pip install 'vulnsteer[scan]')"
        )
    if stats.files and not tree_sitter_available():
        stats.warnings.append(
            "tree-sitter is not installed: every file was scored whole, not function by function "
            "(pip install 'vulnsteer[scan]')"
        )
    options = settle(options, pending, stats)
    results, options = score_functions(pending, scorer, cache_dir, options, stats, progress)
    provenance = dict(scorer.provenance)
    if options.adapt == "on":
        provenance["adapted_to"] = len({item.code_hash for item in pending})
        if options.prevalence is not None:
            provenance["prevalence"] = options.prevalence
    stats.functions = len(results)
    stats.cached = sum(r.cached for r in results)
    _check_discrimination(results, options, stats)
    stats.seconds = time.perf_counter() - started
    return ScanReport(results, stats, provenance, scorer.digest, options, base)


def _adapted(
    scorer: Scorer, scores: Mapping[str, FunctionScore], stats: ScanStats, prevalence: float | None
) -> dict[str, FunctionScore]:
    """Every distinct function's score re-read by the scorer adapted to all of them (no label is read; to a stated
    *prevalence* if given); a warning below :data:`~vulnsteer.config.defaults.WARN_ADAPT` functions."""
    adapt = getattr(scorer, "adapt", None)
    if adapt is None:
        raise ValueError("--adapt: this scorer cannot adapt (it needs a probe detector)")
    keys = list(scores)
    adapted, n = adapt([scores[k] for k in keys], prevalence)
    if n < WARN_ADAPT:
        stats.warnings.append(
            f"adaptation: the centre comes from {n} functions (fewer than {WARN_ADAPT}): the mean of so few scores "
            f"moves their probabilities (its standard error is {1 / n**0.5:.2f} score spreads)"
        )
    return dict(zip(keys, adapted, strict=True))


def _result(
    item: PendingFunction, score: FunctionScore, cached: bool, options: ScanOptions, stats: ScanStats
) -> FunctionResult:
    """One function's result, counted in *stats*: a finding unless below ``min_score``, filtered out by CWE,
    suppressed inline or in the baseline."""
    triaged = None
    if score.score >= options.min_score and options.counts(score):
        if item.suppression is not None and item.suppression.covers(score.cwe):
            triaged = "inline"
            stats.suppressed += 1
        elif item.fingerprint in options.baseline:
            triaged = "baseline"
            stats.in_baseline += 1
    finding = score.score >= options.min_score and options.counts(score) and triaged is None
    stats.findings += finding
    stats.failing += finding and score.score >= options.fail_threshold
    stats.truncated += score.truncated
    return FunctionResult(
        item.path,
        item.language,
        item.unit.name,
        item.unit.kind,
        item.unit.region,
        item.code_hash,
        item.fingerprint,
        score,
        cached=cached,
        finding=finding,
        whole_file=item.whole_file,
        triaged=triaged,
        uri=item.uri,
    )


def _check_discrimination(results: Sequence[FunctionResult], options: ScanOptions, stats: ScanStats) -> None:
    """On a tree of at least :data:`DISCRIMINATION_MIN_FUNCTIONS` functions, warn when the scores do not tell
    functions apart: nearly every one at or above ``min_score``, or every score within a hair of the others. Such
    findings say more about the model than about the code."""
    if len(results) < DISCRIMINATION_MIN_FUNCTIONS:
        return
    scores = [r.score.score for r in results]
    above = sum(score >= options.min_score for score in scores)
    low, high = min(scores), max(scores)
    nearly_all = above >= FLAT_SHARE * len(scores)
    flat = nearly_all or high - low < FLAT_SPREAD
    stats.discriminates = not flat
    if flat:
        # the evidence that holds: nearly all flagged, else the spread (then "0 of 22 flagged" is not the problem)
        why = (
            f"{above} of {len(scores)} functions score at or above {options.min_score:.2f} (scores {low:.3f} to "
            f"{high:.3f})"
            if nearly_all
            else f"every one of {len(scores)} functions scores between {low:.3f} and {high:.3f}"
        )
        stats.warnings.append(
            f"the scores do not discriminate: {why}, so the findings say little about the code. Use a detector "
            "that was measured to discriminate (the shipped one, the default with the embedded model: `vulnsteer "
            "detector show` prints its numbers; --detector RUN/detector from `vulnsteer detector fit`; "
            "--vector/--strength chosen by `vulnsteer run`; or a larger --model), and read its report before "
            "trusting its scores"
        )
