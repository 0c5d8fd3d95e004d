"""``juliet``: Juliet C/C++ and Java test cases, de-labelled (pairing, multi-file cases and renaming:
:mod:`vulnsteer.data.juliet`)."""

from __future__ import annotations

from pathlib import Path

from vulnsteer.data.juliet import find_juliet_files, group_cases, parse_case
from vulnsteer.data.sample import Sample
from vulnsteer.progress import track

from .reader import Reader

__all__ = ["read_juliet"]


def read_juliet(reader: Reader, path: Path) -> list[Sample]:
    """Every Juliet test case under *path* as its samples (a case without both a bad and a good function is
    skipped and noted)."""
    files = find_juliet_files(path)
    if not files:
        reader.problem(f"{path}: no Juliet test-case files (CWE<n>_<name>__<variant>_<NN>.c/.cpp/.java) found")
        return []
    root = path if path.is_dir() else path.parent
    cases = group_cases(files)
    samples: list[Sample] = []
    for case in track(cases, f"juliet {path.name}", unit="case", enabled=reader.progress):
        reader.report.juliet_cases += 1
        reader.report.juliet_multi_file_cases += case.multi_file
        found, reason = parse_case(case, lambda p: reader.read_text(p) or "", root)
        if reason is not None:
            reader.report.skipped_juliet_cases += 1
            reader.report.notes.append(f"{case.files[0].parent}: juliet case skipped: {reason}")
        samples.extend(found)
    reader.report.rows_read += len(cases)
    return samples
