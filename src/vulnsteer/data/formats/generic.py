"""``jsonl`` / ``csv``: generic rows with ``code``, ``label``, ``cwe`` and optional ``pair_id``, ``language``,
``id``, ``group``, ``source``, ``whole_file`` (a file, or a directory searched for ``*.jsonl`` / ``*.csv``)."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vulnsteer.data.clean import canonical_language
from vulnsteer.data.sample import Sample

from .reader import Reader, language_of

__all__ = ["read_csv", "read_jsonl"]

_GENERIC_FIELDS = ("code", "label", "cwe")
#: How ``whole_file`` (jsonl/csv) is spelled (JSON booleans read as ``true``/``false``).
_FLAGS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def read_jsonl(reader: Reader, path: Path) -> list[Sample]:
    """Every row of a generic JSONL file (or of every ``*.jsonl`` under a directory) as a sample."""
    files = reader.data_files(path, ".jsonl")
    samples: list[Sample] = []
    for file in files:
        for lineno, row in reader.jsonl_rows(file):
            sample = _row(reader, row, f"{file}:{lineno}", file, f"{file.stem}:{lineno}")
            if sample is not None:
                samples.append(sample)
    return samples


def read_csv(reader: Reader, path: Path) -> list[Sample]:
    """Every row of a generic CSV file (or of every ``*.csv`` under a directory) as a sample."""
    files = reader.data_files(path, ".csv")
    samples: list[Sample] = []
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))
    for file in files:
        text = reader.read_text(file, source=False)
        if text is None:
            continue
        table = csv.DictReader(io.StringIO(text, newline=""))
        header = table.fieldnames or []
        missing = [f for f in _GENERIC_FIELDS if f not in header]
        if missing:
            reader.problem(f"{file}:1: missing column {missing[0]!r} in the header (found {', '.join(header)})")
            continue
        start = table.line_num + 1
        try:
            for row in table:
                reader.report.rows_read += 1
                where = f"{file}:{start}"
                clean = {k: v for k, v in row.items() if k is not None}
                sample = _row(reader, clean, where, file, f"{file.stem}:{start}")
                if sample is not None:
                    samples.append(sample)
                start = table.line_num + 1
        except csv.Error as exc:
            reader.problem(f"{file}:{table.line_num}: malformed CSV ({exc})")
    return samples


def _row(reader: Reader, row: Mapping[str, Any], where: str, file: Path, default_id: str) -> Sample | None:
    for name in _GENERIC_FIELDS:
        value = row.get(name)
        if value is None or (isinstance(value, str) and not value.strip() and name != "code"):
            reader.problem(f"{where}: missing field {name!r}")
            return None
    code = row["code"]
    if not isinstance(code, str):
        reader.problem(f"{where}: field 'code' must be a string, got {type(code).__name__}")
        return None
    if not code.strip():
        reader.problem(f"{where}: empty field 'code'")
        return None
    code = reader.code_text(code, where)
    if code is None:
        return None
    label = reader.label(row["label"], where, "label")
    cwe = reader.cwe(row["cwe"], where, "cwe")
    if label is None or cwe is None:
        return None
    pair_id = row.get("pair_id")
    pair = str(pair_id) if pair_id not in (None, "") else None
    language = str(row.get("language") or "")
    if not language and isinstance(row.get("file_name"), str):
        language = language_of(row["file_name"])
    sample_id = str(row.get("id") or "") or default_id
    whole = row.get("whole_file")
    is_file = _FLAGS.get(str(whole).strip().lower()) if whole not in (None, "") else False
    if is_file is None:
        reader.problem(f"{where}: cannot read field 'whole_file' = {whole!r} as true or false (or 1/0, yes/no)")
        return None
    meta = {
        k: v for k, v in row.items() if k not in ("code", "label", "cwe", "pair_id", "language", "id", "whole_file")
    }
    meta["upstream_file"] = file.as_posix()
    return Sample(
        id=sample_id,
        code=code,
        language=canonical_language(language) if language else "unknown",
        cwe=cwe,
        label=label,
        pair_id=pair,
        source=str(row.get("source") or file.stem),
        group=str(row.get("group") or ""),
        meta=meta,
        is_file=is_file,
    )
