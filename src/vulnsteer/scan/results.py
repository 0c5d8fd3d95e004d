"""What a scan found, as objects: each scored function (:class:`FunctionResult`), what the scan did
(:class:`ScanStats`) and the whole report (:class:`ScanReport`) the formatters write; and the SARIF level of a
score (:func:`level_for`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.region import Region
from ..io import portable
from .options import ScanOptions
from .scorer import FunctionScore

__all__ = ["ERROR_AT", "FunctionResult", "ScanReport", "ScanStats", "level_for"]

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
    def file_share(self) -> float | None:
        """Where the scan adapted, the share of its distinct functions the adapted detector flags: the share of
        the files its file verdicts flag (:func:`~vulnsteer.scan.sources.file_scores`); else None (each file's
        score against its functions' threshold)."""
        if self.options.adapt != "on" or not self.results:
            return None
        flagged = {r.code_hash: r.score.verdict == "vulnerable" for r in self.results}
        return sum(flagged.values()) / len(flagged)

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
