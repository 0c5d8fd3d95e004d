"""Source files named one by one (``vulnsteer detect FILE...``): checked before anything loads, then scanned like
any other path, and one score per file.

A file's score is its functions' aggregate (:func:`file_score`, by the scan's aggregation:
:mod:`vulnsteer.stats.aggregate`; ``logsumexp`` by default), with the function that leads it (the highest-scoring).

>>> from vulnsteer.scan.results import FunctionResult
>>> from vulnsteer.data.region import Region
>>> from vulnsteer.scan.scorer import FunctionScore
>>> def result(name, p):
...     return FunctionResult("a.c", "c", name, "function", Region(1, 1, 2, 1), "h", "f", FunctionScore(p, "secure"),
...                           cached=False, finding=False)
>>> score = file_score("a.c", [result("f", 0.2), result("g", 0.7)])
>>> round(score.score, 4), score.top.name, score.functions, score.aggregation
(0.4809, 'g', 2, 'logsumexp')
>>> file_score("a.c", [result("f", 0.2), result("g", 0.7)], "max").score
0.7

A scan that adapts flags the same share of the files as its adapted detector flags of the distinct functions
(:attr:`~vulnsteer.scan.results.ScanReport.file_share`): a file's verdict is then its score against the threshold
above which that share of the files' scores lie (:func:`file_scores`), not against its functions' threshold. A
file's smooth maximum sits below its riskiest function's score when the others score lower, so the functions'
threshold applied to files flags fewer files than functions, far fewer where many files share a low-scoring
function (the OWASP Benchmark's Java servlets: 19% of the files against 45% of the functions).

By default (:attr:`~vulnsteer.scan.options.ScanOptions.file_functions` ``differing``) a file's score leaves out the
functions that exactly one other scanned file also has, where it has others
(:func:`~vulnsteer.stats.aggregate.read_members`): scanned together, a vulnerable file and its fix are each read by
the functions that tell them apart. No label is read, and the functions left out are still scored and reported.

>>> def at(path, name, p):
...     return FunctionResult(path, "c", name, "function", Region(1, 1, 2, 1), name, "f", FunctionScore(p, "secure"),
...                           cached=False, finding=False)
>>> from vulnsteer.scan.options import ScanOptions
>>> report = ScanReport([at("v.c", "main", 0.1), at("v.c", "copy", 0.9), at("f.c", "main", 0.1),
...                      at("f.c", "copy-checked", 0.3)], None, {}, "", ScanOptions(), Path("."))
>>> [(f.path, round(f.score, 2), f.shared) for f in file_scores(report)]
[('v.c', 0.9, 1), ('f.c', 0.3, 1)]
>>> report.options = ScanOptions(file_functions="all")
>>> [(f.path, round(f.score, 2), f.shared) for f in file_scores(report)]
[('v.c', 0.58, 0), ('f.c', 0.2, 0)]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config.defaults import DEFAULT_AGGREGATION
from ..data.clean import LANGUAGE_ALIASES, canonical_language
from ..data.text import BinaryContentError, read_source
from ..stats.aggregate import aggregate, read_members, top_index
from ..stats.shares import top_share_threshold
from .engine import display_path
from .results import FunctionResult, ScanReport

__all__ = ["MAX_SOURCE_BYTES", "FileScore", "check_language", "check_source_files", "file_score", "file_scores"]

#: The largest file read when named on its own: far beyond any function's token budget (tokenising more only
#: costs time).
MAX_SOURCE_BYTES = 8 << 20


def check_language(language: str) -> tuple[str, list[str]]:
    """A ``--language`` given for every file: its canonical name, and a warning when vulnsteer does not know it
    (it is prompted as written).

    >>> check_language("Py")
    ('python', [])
    """
    if not language.strip():
        raise ValueError("--language is empty")
    known = set(LANGUAGE_ALIASES) | set(LANGUAGE_ALIASES.values())
    if canonical_language(language) in known:
        return canonical_language(language), []
    names = ", ".join(sorted(set(LANGUAGE_ALIASES.values())))
    return language, [f"--language {language!r} is no language vulnsteer knows; it goes into the prompt as written "
                      f"(known: {names})"]  # fmt: skip


def check_source_files(names: Sequence[str], language_given: bool) -> tuple[list[str], list[str]]:
    """The files to score, in the order given (repeats once), and the warnings to show: a binary file is skipped
    (a warning each, and a count), an undecodable byte is replaced, and (unless *language_given*) an extension of no
    known language is prompted as plain source code. A folder, a missing, special, empty or too large file is an
    error naming it, as is a list left with no file."""
    from .files import language_of

    files: list[str] = []
    warnings: list[str] = []
    skipped = 0
    for name in dict.fromkeys(names):
        path = Path(name)
        if path.is_dir():
            raise ValueError(f"{path}: is a folder; detect takes source files (pass them, e.g. {path}/*.c)")
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file")
        if not path.is_file():
            raise ValueError(f"{path}: not a regular file (a device, pipe or socket); pass source files")
        size = path.stat().st_size
        if size > MAX_SOURCE_BYTES:
            raise ValueError(
                f"{path}: {size / 2**20:.1f} MiB is too large for one source file (at most "
                f"{MAX_SOURCE_BYTES // 2**20} MiB); pass the part to check"
            )
        try:
            decoded = read_source(path)
        except BinaryContentError as exc:
            warnings.append(f"{exc}; skipped")
            skipped += 1
            continue
        if not decoded.text.strip():
            raise ValueError(f"{path}: file is empty")
        if decoded.replaced:
            warnings.append(f"{path}: not valid {decoded.encoding}; undecodable bytes replaced")
        if not language_given and language_of(path, decoded.text[:8192]) is None:
            suffix = path.suffix.lower().lstrip(".")
            what = f"extension '.{suffix}'" if suffix else "no extension"
            warnings.append(
                f"{path}: {what} names no known language; prompting it as plain source code (pass --language)"
            )
        files.append(name)
    if skipped:
        warnings.append(f"skipped {skipped} binary file(s)")
    if not files:
        raise ValueError("no source files left to scan (every file given is binary)")
    return files, warnings


@dataclass(frozen=True)
class FileScore:
    """One file's score: the aggregate of its functions' scores (by *aggregation*), the function that leads it
    (the highest-scoring), and its :attr:`verdict`; *threshold*: where set (a scan that adapted), the file is
    vulnerable iff its score is above it (:func:`file_scores`). *functions* counts the functions read; *shared*
    the file's functions left out of its score because exactly one other scanned file has them too (see the
    module docstring)."""

    path: str
    score: float
    top: FunctionResult
    functions: int
    aggregation: str = DEFAULT_AGGREGATION
    threshold: float | None = None
    shared: int = 0

    @property
    def verdict(self) -> str:
        """The file's verdict: its score above its own :attr:`threshold` where it has one (a scan that adapted
        flags a share of the files); else its score against the threshold its functions' verdicts use, where they
        use one (a probe detector, the answer's P(vulnerable)), so the verdict follows the score reported beside it;
        else (a generated answer) the leading function's. With ``max`` the two agree; with a smoother aggregation a
        file is no longer called vulnerable only because one of its many functions crossed the line.

        >>> from vulnsteer.scan.results import FunctionResult
        >>> from vulnsteer.data.region import Region
        >>> from vulnsteer.scan.scorer import FunctionScore
        >>> fs = [FunctionResult("a.c", "c", name, "function", Region(1, 1, 2, 1), "h", "f",
        ...                      FunctionScore(p, "vulnerable" if p >= 0.5 else "secure", threshold=0.5),
        ...                      cached=False, finding=p >= 0.5) for name, p in (("f", 0.6), ("g", 0.2), ("h", 0.3))]
        >>> file_score("a.c", fs, "max").verdict, file_score("a.c", fs, "mean").verdict
        ('vulnerable', 'secure')
        >>> dataclasses.replace(file_score("a.c", fs, "mean"), threshold=0.3).verdict
        'vulnerable'
        """
        if self.threshold is not None:
            return "vulnerable" if self.score > self.threshold else "secure"
        threshold = self.top.score.threshold
        if threshold is None:
            return self.top.score.verdict
        return "vulnerable" if self.score >= threshold else "secure"

    def to_record(self) -> dict[str, Any]:
        """The JSON-lines record of this file (``"type": "file"``)."""
        top = self.top
        return {
            "type": "file",
            "path": self.path,
            "language": top.language,
            "score": self.score,
            "aggregation": self.aggregation,
            "functions": self.functions,
            "shared_functions": self.shared,
            "verdict": self.verdict,
            "top_function": top.name,
            "top_line": top.region.start_line,
            "top_score": top.score.score,
        }

    def to_detect_json(self) -> dict[str, Any]:
        """``vulnsteer detect --json``'s object for this file (the README lists its keys)."""
        top, result = self.top, self.top.score
        out = {"file": self.path, "language": top.language or "unknown", "function": top.name,
               "line": top.region.start_line, "functions": self.functions, "verdict": self.verdict,
               "weakness": result.cwe, "p_vulnerable": self.score, "aggregation": self.aggregation,
               "shared_functions": self.shared, "function_p_vulnerable": result.score, "text": result.explanation,
               "truncated": result.truncated,
               "windows": result.windows}  # fmt: skip
        if result.probe is not None:
            out.update(probe_score=result.probe, push=result.push)
        return out


def file_score(path: str, functions: Sequence[FunctionResult], how: str = DEFAULT_AGGREGATION) -> FileScore:
    """The score of the file *path* from its functions' results, aggregated by *how* (the one place that decides
    how a scan's functions add up to a file; see the module docstring for an example)."""
    if not functions:
        raise ValueError(f"{path}: no function was scored")
    values = [r.score.score for r in functions]
    return FileScore(path, aggregate(values, how), functions[top_index(values)], len(functions), how)


def file_scores(report: ScanReport, names: Sequence[str] | None = None) -> list[FileScore]:
    """One :class:`FileScore` per file in *names* (as given to :func:`~vulnsteer.scan.engine.scan`), in order, by
    the scan's aggregation (:attr:`~vulnsteer.scan.options.ScanOptions.aggregation`) of the functions its
    :attr:`~vulnsteer.scan.options.ScanOptions.file_functions` rule reads; without *names*, every file scanned, in
    scan order (named as reports name them). A file whose functions were all empty after cleaning has none. Where
    the scan adapted (:attr:`~vulnsteer.scan.results.ScanReport.file_share`), each file's verdict threshold flags
    that share of every file scanned (named or not: the share is of the scan, as its functions' is), no label
    read."""
    by_path: dict[str, list[FunctionResult]] = {}
    for result in report.results:
        by_path.setdefault(result.path, []).append(result)
    how = report.options.aggregation
    reads = read_members(
        [[r.code_hash for r in results] for results in by_path.values()], report.options.file_functions
    )
    found = {}
    for (path, results), read in zip(by_path.items(), reads, strict=True):
        score = file_score(path, [results[i] for i in read], how)
        found[path] = dataclasses.replace(score, shared=len(results) - len(read))
    share = report.file_share
    if share is not None and found:
        threshold = top_share_threshold([f.score for f in found.values()], share)
        found = {path: dataclasses.replace(f, threshold=threshold) for path, f in found.items()}
    if names is None:
        return list(found.values())
    out = []
    for name in names:
        file = found.get(display_path(Path(name), report.base))
        if file is not None:
            out.append(dataclasses.replace(file, path=name))
    return out
