"""``owasp``: an OWASP Benchmark checkout (BenchmarkPython, BenchmarkJava): ``expectedresults-<version>.csv`` (``#``
comment lines, then ``test name, category, real vulnerability, cwe``) beside the test cases, one
``BenchmarkTest<n>.py`` or ``.java`` file each, anywhere below the folder. Unpaired; each test case is a whole file
(a route or servlet whose handler either lets the input reach the sink or does not); comments and a leading module
docstring (the licence header every file shares) are dropped."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from vulnsteer.data.clean import strip_comments
from vulnsteer.data.sample import Sample
from vulnsteer.progress import track

from .reader import Reader, language_of

__all__ = ["EXPECTED_RESULTS", "read_owasp"]

#: The name pattern of the benchmark's label file.
EXPECTED_RESULTS = "expectedresults-*.csv"
_SOURCE_SUFFIXES = (".py", ".java")
_FIELDS = ("test name", "category", "real vulnerability", "cwe")
_DOCSTRING = re.compile(r"\A\s*(?:'''[\s\S]*?'''|\"\"\"[\s\S]*?\"\"\")\s*")


def read_owasp(reader: Reader, path: Path) -> list[Sample]:
    """Every test case listed in the benchmark's expected results, with its source file's code.

    *path* is the checkout (the folder holding ``expectedresults-*.csv``) or that CSV file; the test cases are
    looked up by name below the CSV's folder. A listed test without its file, or a row that cannot be read, is a
    problem naming the CSV's line and field.
    """
    results = _expected_results(reader, path)
    if results is None:
        return []
    sources = _source_files(results.parent)
    text = reader.read_text(results, source=False)
    if text is None:
        return []
    samples: list[Sample] = []
    rows = [(n, row) for n, row in enumerate(csv.reader(io.StringIO(text)), 1) if row and not row[0].startswith("#")]
    for lineno, row in track(rows, f"owasp {results.parent.name}", unit="case", enabled=reader.progress):
        reader.report.rows_read += 1
        sample = _test_case(reader, f"{results}:{lineno}", [cell.strip() for cell in row], sources, results.parent)
        if sample is not None:
            samples.append(sample)
    return samples


def _expected_results(reader: Reader, path: Path) -> Path | None:
    if path.is_file():
        return path
    found = sorted(path.glob(EXPECTED_RESULTS))
    if len(found) != 1:
        what = "no" if not found else f"{len(found)} ({', '.join(p.name for p in found)}; pass one of them)"
        reader.problem(f"{path}: {what} {EXPECTED_RESULTS} files found")
        return None
    return found[0]


def _source_files(root: Path) -> dict[str, Path]:
    """Each test case's source file by its name (``BenchmarkTest00001``)."""
    return {p.stem: p for p in sorted(root.rglob("BenchmarkTest*")) if p.suffix in _SOURCE_SUFFIXES and p.is_file()}


def _test_case(reader: Reader, where: str, row: list[str], sources: dict[str, Path], root: Path) -> Sample | None:
    if len(row) < len(_FIELDS):
        reader.problem(f"{where}: expected {len(_FIELDS)} fields ({', '.join(_FIELDS)}), got {len(row)}")
        return None
    name, category, vulnerable, cwe_field = row[: len(_FIELDS)]
    file = sources.get(name)
    if file is None:
        reader.problem(f"{where}: field 'test name': no source file {name}.py or {name}.java below {root}")
        return None
    cwe = reader.cwe(cwe_field, where, "cwe")
    label = reader.label(vulnerable, where, "real vulnerability")
    code = reader.read_text(file)
    if cwe is None or label is None or code is None:
        return None
    language = language_of(file.name)  # python or java: only those files are read (_SOURCE_SUFFIXES)
    code = strip_comments(_DOCSTRING.sub("", code, count=1) if language == "python" else code, language)
    return Sample(
        id=f"owasp:{name}",
        code=code,
        language=language,
        cwe=cwe,
        label=label,
        pair_id=None,
        source="owasp",
        group=f"owasp:{name}",
        meta={"category": category, "file": file.as_posix()},
        is_file=True,
    )
