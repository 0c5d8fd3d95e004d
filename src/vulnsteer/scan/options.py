"""How to scan (:class:`ScanOptions`): which files, what counts as a finding and what fails the scan, how a file's
functions add up, and whether the detector adapts to the functions scanned."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..config.defaults import DEFAULT_AGGREGATION, DEFAULT_FILE_FUNCTIONS, MIN_ADAPT
from ..config.vocabulary import ADAPT_MODES, FILE_FUNCTIONS
from ..cwe import normalize_cwe
from ..stats.aggregate import check_aggregation
from ..stats.shares import check_share
from .files import FileFilter
from .scorer import FunctionScore

__all__ = ["ScanOptions"]


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
        file_functions: which of a file's functions its score reads: ``differing`` leaves out a function that
            exactly one other scanned file also has (what two versions of one file share), ``all`` reads every one
            (:func:`~vulnsteer.stats.aggregate.read_members`).
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
    file_functions: str = DEFAULT_FILE_FUNCTIONS
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
        if self.file_functions not in FILE_FUNCTIONS:
            raise ValueError(
                f"--file-functions must be one of {', '.join(FILE_FUNCTIONS)}, got {self.file_functions!r}"
            )
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
