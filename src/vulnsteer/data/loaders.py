"""Dataset loaders: SVEN/SafeCoder JSONL, Juliet C/C++/Java, paired directories, CASTLE JSON, OWASP Benchmark,
generic JSONL/CSV.

Every loader returns a list of :class:`~vulnsteer.data.sample.Sample` with canonical CWE ids, and reports
anything wrong with the data as a :class:`DataError` whose message names the file (and the line and field
where that applies). :func:`validate` runs the same loaders but collects every problem instead of stopping
at the first one.

Formats (``fmt``):

``sven``
    SVEN and SafeCoder JSONL (a file, or a directory searched recursively for ``*.jsonl``): one row = one pair,
    ``func_src_before`` vulnerable, ``func_src_after`` fixed, ``vul_type`` the CWE, ``file_name`` gives the
    language. Rows whose two versions are identical are dropped (``LoadReport.dropped_identical``).
    ``pair_id`` = ``<source>:<split>:<file stem>:<line number>``; ``group`` = ``commit:<commit_link>`` (the
    same commit in SVEN and SafeCoder lands in one group); ``meta`` holds ``file_name``, ``commit_link``,
    ``split`` (train/val from the path), ``func_name``, ``line_changes`` and ``changed_lines`` (the line
    numbers changed in this version: deleted lines for the vulnerable one, added lines for the fixed one).
    Source = ``safecoder`` when the path or the rows say so, else ``sven``.
``juliet``
    Juliet C/C++ and Java test cases, de-labelled; see :mod:`vulnsteer.data.juliet` for pairing, multi-file
    cases and renaming. ``pair_id`` = case, ``group`` = functional variant.
``paired-dir``
    ``<root>/<CWE folder>/<stem>.<ext>`` (vulnerable) + ``p_<stem>.<ext>`` (patched) side by side, and/or case
    folders holding ``vuln.<ext>`` + ``patch.<ext>``, or two mirrored trees: ``<root>/vulnerable/<path>`` and its
    fix at ``<root>/fixed/<path>`` (or ``patched/``, ``secure/``); the CWE comes from ``cwe_map.json`` in the root
    (``{"case-folder-or-stem": "CWE-79"}``; in mirrored trees, keyed by the path inside them, with or without its
    extension) or from the nearest enclosing folder whose name starts with ``CWE``. Each sample is a whole file
    (``Sample.is_file``).
``castle``
    A JSON list ``[{"name", "cwe", "vulnerable", "code"}]`` or ``{"tests": [...]}`` (a file or a directory of
    ``*.json``); unpaired; comments are stripped (CASTLE files carry their label in a header comment). Each sample
    is a whole program (``Sample.is_file``).
``owasp``
    An OWASP Benchmark checkout (BenchmarkPython, BenchmarkJava; the folder holding ``expectedresults-*.csv``, or
    that file): each listed test case's ``BenchmarkTest<n>.py``/``.java`` file below it, labelled by the CSV's
    ``real vulnerability`` and ``cwe`` fields; unpaired; comments and a leading module docstring dropped. Each
    sample is a whole file (``Sample.is_file``).
``itc``
    The Toyota ITC benchmarks (``01.w_Defects`` / ``02.wo_Defects`` and the C++ pair): each function that differs
    between a defect file and its look-alike is a vulnerable/fixed pair of function samples, comments stripped,
    the CWE from the defect type (:mod:`vulnsteer.data.formats.itc`). ``pair_id`` = ``itc:<defect type>:<function>``.
``jsonl`` / ``csv``
    Generic rows with ``code``, ``label`` (vulnerable/secure, 1/0, true/false, vuln/safe, bad/good), ``cwe``
    and optional ``pair_id``, ``language``, ``id``, ``group``, ``source``, ``whole_file`` (true/false, 1/0: the
    code is a whole source file, ``Sample.is_file``; default false: one function).

A whole file in which the function splitter finds at least two functions is scored as its functions and their
scores aggregated back to it (:mod:`vulnsteer.data.units`).

Each format is a plug-in of :mod:`vulnsteer.data.formats` (one module each, registered by name in
:data:`~vulnsteer.data.formats.FORMATS`); this module tells a path's format, runs it, and applies what every format
shares: unique ids, the CWE merge map, the CWE filter and the one-sided CWE check.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from vulnsteer.config.vocabulary import DATASET_FORMATS
from vulnsteer.cwe import UnknownCWEError, apply_merge, cwe_sort_key, normalize_cwe
from vulnsteer.data.formats import (
    EXPECTED_RESULTS,
    FORMATS,
    VULN_NAMES,
    DataError,
    LoadReport,
    Reader,
    itc_trees,
    json_loads,
    mirrored_trees,
    parse_label,
)
from vulnsteer.data.juliet import find_juliet_files
from vulnsteer.data.sample import LABELS, SECURE, VULNERABLE, Sample, count_by_cwe
from vulnsteer.data.text import BinaryContentError, decode_source

__all__ = [
    "DataError",
    "LoadReport",
    "dataset_stats",
    "detect_format",
    "load_samples",
    "parse_label",
    "validate",
]

#: Bytes of a JSONL file read to tell its kind.
_PEEK_BYTES = 1 << 20


def _first_jsonl_record(file: Path, max_lines: int = 20) -> Any:
    """The first parseable record among the first *max_lines* non-empty lines (None if there is none); the
    bytes are decoded as source text is (BOMs, UTF-16)."""
    try:
        with open(file, "rb") as handle:
            head = handle.read(_PEEK_BYTES)
        text = decode_source(head, str(file)).text
    except BinaryContentError as exc:
        raise DataError(f"{exc}; expected a JSONL text file") from None
    except OSError as exc:
        raise DataError(f"{file}: cannot read file: {exc.strerror or exc}") from None
    seen = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            return json_loads(line)
        except json.JSONDecodeError:
            seen += 1
            if seen >= max_lines:
                break
    return None


def _jsonl_kind(files: Sequence[Path]) -> str | None:
    for file in files[:5]:
        record = _first_jsonl_record(file)
        if isinstance(record, dict):
            if "func_src_before" in record or "func_src_after" in record:
                return "sven"
            if "code" in record:
                return "jsonl"
    return None


def detect_format(path: Path) -> str:
    """Guess the format of *path* (a file or a directory) from names and a peek at the content.

    Raises:
        DataError: *path* does not exist or its format cannot be told (the message names the path).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in (".jsonl", ".ndjson"):
            if path.stat().st_size == 0:
                raise DataError(f"{path}: empty file")
            kind = _jsonl_kind([path])
            if kind is None:
                raise DataError(
                    f"{path}: cannot tell the format: the first record has neither 'func_src_before' (sven) "
                    "nor 'code' (jsonl); pass --format to read it anyway"
                )
            return kind
        if suffix == ".json":
            return "castle"
        if suffix == ".csv":
            return "owasp" if path.match(EXPECTED_RESULTS) else "csv"
        if find_juliet_files(path):
            return "juliet"
        raise DataError(
            f"{path}: cannot tell the dataset format from the file name; pass --format (one of "
            f"{', '.join(DATASET_FORMATS)})"
        )
    if any(True for _ in path.glob(EXPECTED_RESULTS)):
        return "owasp"
    if itc_trees(path):
        return "itc"
    if (path / "cwe_map.json").is_file() or mirrored_trees(path) is not None:
        return "paired-dir"
    jsonl = sorted(path.rglob("*.jsonl"))
    if jsonl:
        kind = _jsonl_kind(jsonl)
        if kind is not None:
            return kind
    if any(True for _ in _juliet_probe(path)):
        return "juliet"
    files = [p for p in path.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    if any(n.startswith("p_") and n[2:] in names for n in names) or any(p.stem.lower() in VULN_NAMES for p in files):
        return "paired-dir"
    if any(p.suffix.lower() == ".json" for p in files):
        return "castle"
    if any(p.suffix.lower() == ".csv" for p in files):
        return "csv"
    raise DataError(f"{path}: cannot tell the dataset format; pass --format (one of {', '.join(DATASET_FORMATS)})")


def _juliet_probe(path: Path) -> Iterable[Path]:
    from vulnsteer.data.juliet import parse_juliet_name

    for candidate in path.rglob("CWE*"):
        if candidate.is_file() and parse_juliet_name(candidate) is not None:
            yield candidate
            return


def _run(
    path: str | Path,
    fmt: str | None,
    merge: Mapping[str, str] | None,
    cwes: Collection[str] | None,
    report: LoadReport,
    strict: bool,
    progress: bool = True,
) -> list[Sample]:
    root = Path(path)
    loader = Reader(report, strict, progress)
    if fmt is None:
        fmt = detect_format(root)
    elif fmt not in DATASET_FORMATS:
        raise DataError(f"{root}: unknown format {fmt!r} (--format); expected one of {', '.join(DATASET_FORMATS)}")
    elif not root.exists():
        raise DataError(f"{root}: no such file or directory")
    report.formats.append(fmt)
    samples = FORMATS[fmt](loader, root)

    seen: set[str] = set()
    for sample in samples:
        if sample.id in seen:
            loader.problem(f"{root}: duplicate sample id {sample.id!r}")
        seen.add(sample.id)

    if merge:
        try:
            merge_map = {normalize_cwe(k): normalize_cwe(v) for k, v in merge.items()}
        except UnknownCWEError as exc:
            raise DataError(f"merge map: {exc}") from None
        merged: list[Sample] = []
        for sample in samples:
            target = apply_merge(sample.cwe, merge_map)
            if target != sample.cwe:
                report.merged += 1
                sample = replace(sample, cwe=target, meta={**sample.meta, "original_cwe": sample.cwe})
            merged.append(sample)
        samples = merged

    if cwes:
        wanted: list[str] = []
        for value in cwes:
            try:
                wanted.append(normalize_cwe(value))
            except UnknownCWEError:
                raise DataError(f"unknown CWE {value!r} in the requested CWE list") from None
        kept = [s for s in samples if s.cwe in set(wanted)]
        report.filtered_out += len(samples) - len(kept)
        samples = kept
        counts = count_by_cwe(samples)
        for cwe in dict.fromkeys(wanted):
            row = counts.get(cwe, {})
            empty = [label for label in LABELS if not row.get(label)]
            if len(empty) == 2:
                loader.problem(f"{root}: requested {cwe} has no samples at all (neither vulnerable nor secure)")
            elif empty:
                missing = empty[0]
                present = SECURE if missing == VULNERABLE else VULNERABLE
                loader.problem(f"{root}: requested {cwe} has no {missing} samples (only {row[present]} {present})")
    else:
        _one_sided(samples, root, loader)
    report.samples = len(samples)
    return samples


def _one_sided(samples: Sequence[Sample], root: Path, loader: Reader) -> None:
    """CWEs with only vulnerable or only secure samples: recorded in the report; :func:`validate` lists them as
    problems (no vector can be fitted for them), :func:`load_samples` notes them."""
    for cwe, row in sorted(count_by_cwe(samples).items(), key=lambda item: cwe_sort_key(item[0])):
        empty = [label for label in LABELS if not row.get(label)]
        if len(empty) != 1:
            continue
        missing = empty[0]
        present = SECURE if missing == VULNERABLE else VULNERABLE
        loader.report.one_sided_cwes[cwe] = missing
        message = (
            f"{root}: {cwe} has no {missing} samples (only {row[present]} {present}): it cannot be used for "
            f"steering vectors or evaluation; leave it out (--cwe) or add {missing} samples"
        )
        (loader.report.notes if loader.strict else loader.report.problems).append(message)


def load_samples(
    path: str | Path,
    fmt: str | None = None,
    *,
    merge: Mapping[str, str] | None = None,
    cwes: Collection[str] | None = None,
    report: LoadReport | None = None,
    progress: bool = True,
) -> list[Sample]:
    """Load a dataset as samples.

    Args:
        path: a file or a directory (directories are searched recursively).
        fmt: one of :data:`~vulnsteer.config.vocabulary.DATASET_FORMATS`; detected with :func:`detect_format` when None.
        merge: CWE merge map (``{"CWE-77": "CWE-78"}``), applied before the ``cwes`` filter.
        cwes: keep only these CWEs (after the merge); each must end up with vulnerable and secure samples.
            None or empty: keep every CWE.
        report: filled with counters (dropped identical pairs, files with replaced bytes, binary files skipped,
            skipped cases, CWEs with one label only ...).
        progress: progress over Juliet cases (:mod:`vulnsteer.progress`).

    Raises:
        DataError: the first data problem (the message names the file, and line/field where applicable).

    >>> samples = load_samples("../shared/data/sven", "sven", cwes=["CWE-89"])  # doctest: +SKIP
    >>> samples[0].label, samples[0].pair_id is not None  # doctest: +SKIP
    ('vulnerable', True)
    """
    return _run(path, fmt, merge, cwes, report if report is not None else LoadReport(), True, progress)


def validate(
    path: str | Path,
    fmt: str | None = None,
    *,
    merge: Mapping[str, str] | None = None,
    cwes: Collection[str] | None = None,
    report: LoadReport | None = None,
    progress: bool = True,
) -> list[str]:
    """Every problem found in the dataset at *path* (an empty list means it loads cleanly): malformed rows,
    missing fields, binary files, CWEs with only vulnerable or only secure samples ... Never raises for data
    problems; *report* (if given) is filled as :func:`load_samples` fills it."""
    report = report if report is not None else LoadReport()
    try:
        _run(path, fmt, merge, cwes, report, False, progress)
    except DataError as exc:
        report.problems.append(str(exc))
    return report.problems


def _percentiles(values: Sequence[int]) -> dict[str, float]:
    if not values:
        return {"p50": 0.0, "p90": 0.0, "max": 0.0, "mean": 0.0}
    ordered = sorted(values)

    def pct(q: float) -> float:
        pos = (len(ordered) - 1) * q
        lo = int(pos)
        hi = min(lo + 1, len(ordered) - 1)
        return float(ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo))

    return {"p50": pct(0.5), "p90": pct(0.9), "max": float(ordered[-1]), "mean": sum(ordered) / len(ordered)}


def dataset_stats(samples: Sequence[Sample], tokenizer: Callable[[str], int] | None = None) -> dict[str, Any]:
    """Counts and lengths: per-CWE vulnerable/secure/pairs, languages, sources, and length percentiles.

    Args:
        samples: the samples.
        tokenizer: optional callable returning the token count of a code string; adds ``"tokens"`` entries.

    Returns:
        ``{"samples", "vulnerable", "secure", "pairs", "by_cwe": {cwe: {"vulnerable", "secure", "pairs",
        "languages"}}, "languages", "sources", "chars": {"p50", "p90", "max", "mean"}, "tokens": {...}}``.
    """
    by_cwe = count_by_cwe(samples)
    languages_by_cwe: dict[str, Counter[str]] = {}
    for sample in samples:
        languages_by_cwe.setdefault(sample.cwe, Counter())[sample.language] += 1
    stats: dict[str, Any] = {
        "samples": len(samples),
        "vulnerable": sum(1 for s in samples if s.label == VULNERABLE),
        "secure": sum(1 for s in samples if s.label == SECURE),
        "pairs": sum(row["pairs"] for row in by_cwe.values()),
        "by_cwe": {
            cwe: {**by_cwe[cwe], "languages": dict(languages_by_cwe[cwe].most_common())}
            for cwe in sorted(by_cwe, key=cwe_sort_key)
        },
        "languages": dict(Counter(s.language for s in samples).most_common()),
        "sources": dict(Counter(s.source for s in samples).most_common()),
        "chars": _percentiles([len(s.code) for s in samples]),
    }
    if tokenizer is not None:
        stats["tokens"] = _percentiles([int(tokenizer(s.code)) for s in samples])
    return stats
