"""``sven``: SVEN and SafeCoder JSONL (a file, or a directory searched for ``*.jsonl``): one row = one pair,
``func_src_before`` vulnerable, ``func_src_after`` fixed, ``vul_type`` the CWE, ``file_name`` the language (the
layout and the ids: :mod:`vulnsteer.data.loaders`)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vulnsteer.data.sample import SECURE, UPSTREAM_SPLIT_KEY, VULNERABLE, Sample

from .reader import Reader, language_of

__all__ = ["read_sven"]

_SPLITS = ("train", "val", "valid", "validation", "test", "eval")
_SVEN_FIELDS = ("func_src_before", "func_src_after", "vul_type", "file_name")


def read_sven(reader: Reader, path: Path) -> list[Sample]:
    """Every pair of a SVEN/SafeCoder JSONL file (or of every ``*.jsonl`` under a directory) as its two samples."""
    files = reader.data_files(path, ".jsonl")
    samples: list[Sample] = []
    for file in files:
        samples.extend(_sven_file(reader, file))
    return samples


def _sven_file(reader: Reader, file: Path) -> list[Sample]:
    samples: list[Sample] = []
    for lineno, row in reader.jsonl_rows(file):
        where = f"{file}:{lineno}"
        before, after, vul_type, file_name = (reader.text_field(row, f, where) for f in _SVEN_FIELDS)
        if before is None or after is None or vul_type is None or file_name is None:
            continue
        cwe = reader.cwe(row["vul_type"], where, "vul_type")
        if cwe is None:
            continue
        if not before.strip() or not after.strip():
            reader.problem(f"{where}: empty field {'func_src_before' if not before.strip() else 'func_src_after'!r}")
            continue
        if before == after:
            reader.report.dropped_identical += 1
            continue
        before, after = (
            reader.code_text(before, f"{where}: func_src_before"),
            reader.code_text(after, f"{where}: func_src_after"),
        )
        if before is None or after is None:
            continue
        source = _sven_source(file, row)
        split = _split_of(file)
        pair_id = ":".join(p for p in (source, split, file.stem, str(lineno)) if p)
        commit = str(row.get("commit_link") or "")
        group = "commit:" + re.sub(r"^https?://", "", commit).rstrip("/") if commit else pair_id
        language = language_of(file_name)
        base_meta: dict[str, Any] = {
            "file_name": file_name,
            "commit_link": commit,
            UPSTREAM_SPLIT_KEY: split,
            "func_name": row.get("func_name", ""),
            "upstream_file": file.as_posix(),
            "upstream_line": lineno,
        }
        for extra in ("commit_msg", "description", "parent_commit"):
            if extra in row:
                base_meta[extra] = row[extra]
        changes = row.get("line_changes")
        for label, code, side in ((VULNERABLE, before, "deleted"), (SECURE, after, "added")):
            meta = dict(base_meta)
            if isinstance(changes, Mapping):
                meta["line_changes"] = changes
                lines = changes.get(side) or []
                meta["changed_lines"] = [c["line_no"] for c in lines if isinstance(c, Mapping) and "line_no" in c]
            samples.append(
                Sample(
                    id=f"{pair_id}:{label}",
                    code=code,
                    language=language,
                    cwe=cwe,
                    label=label,
                    pair_id=pair_id,
                    source=source,
                    group=group,
                    meta=meta,
                )
            )
    return samples


def _sven_source(file: Path, row: Mapping[str, Any]) -> str:
    parts = [p.lower() for p in file.resolve().parts]
    if any("safecoder" in p for p in parts) or file.stem == "sec-new-desc":
        return "safecoder"
    if any("sven" in p for p in parts):
        return "sven"
    return "safecoder" if "commit_msg" in row else "sven"


def _split_of(file: Path) -> str:
    for part in reversed(file.parent.parts):
        if part.lower() in _SPLITS:
            return part.lower()
    return ""
