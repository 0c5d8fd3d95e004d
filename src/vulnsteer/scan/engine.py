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

import hashlib
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from ..config.defaults import WARN_ADAPT
from ..data.functions import CodeUnit, FunctionSplitter, tree_sitter_available
from ..data.sample import VULNERABLE, Sample
from ..data.text import BinaryContentError, read_source
from ..data.units import function_code
from ..progress import Progress, track
from .cache import ScanCache
from .files import SourceCandidate, WalkStats, language_of, printable, walk
from .gitignore import find_repository_top
from .options import ScanOptions
from .results import FunctionResult, ScanReport, ScanStats
from .scorer import FunctionScore, Scorer, StaleDigestError
from .suppression import Suppression, inline_suppression

__all__ = [
    "DISCRIMINATION_MIN_FUNCTIONS",
    "check_paths",
    "display_path",
    "scan",
]

#: A scan of at least this many functions is checked for scores that do not discriminate.
DISCRIMINATION_MIN_FUNCTIONS = 20
#: ... and warned about when at least this share of its functions reaches ``min_score`` (or none does, while
#: every score lies within :data:`FLAT_SPREAD`).
FLAT_SHARE = 0.9
FLAT_SPREAD = 0.05


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
