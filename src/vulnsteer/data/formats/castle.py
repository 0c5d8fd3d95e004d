"""``castle``: a JSON list ``[{"name", "cwe", "vulnerable", "code"}]`` or ``{"tests": [...]}`` (a file or a
directory of ``*.json``); unpaired, comments stripped (CASTLE files carry their label in a header comment); each
sample is a whole program."""

from __future__ import annotations

import json
from pathlib import Path

from vulnsteer.data.clean import LANGUAGE_ALIASES, canonical_language, strip_comments
from vulnsteer.data.sample import Sample

from .reader import Reader, json_loads

__all__ = ["read_castle"]

_CASTLE_FIELDS = ("name", "cwe", "vulnerable", "code")


def read_castle(reader: Reader, path: Path) -> list[Sample]:
    """Every test of a CASTLE JSON file (or of every ``*.json`` under a directory) as a whole-program sample."""
    files = reader.data_files(path, ".json")
    samples: list[Sample] = []
    for file in files:
        text = reader.read_text(file, source=False)
        if text is None:
            continue
        try:
            data = json_loads(text)
        except json.JSONDecodeError as exc:
            reader.problem(f"{file}:{exc.lineno}: malformed JSON ({exc.msg} at column {exc.colno})")
            continue
        items = data.get("tests") if isinstance(data, dict) else data
        if not isinstance(items, list):
            reader.problem(f"{file}: expected a JSON list of tests or an object with a 'tests' list")
            continue
        for index, item in enumerate(items):
            reader.report.rows_read += 1
            sample = _castle_item(reader, file, index, item)
            if sample is not None:
                samples.append(sample)
    return samples


def _castle_item(reader: Reader, file: Path, index: int, item: object) -> Sample | None:
    where = f"{file}: test #{index}"
    if not isinstance(item, dict):
        reader.problem(f"{where}: expected a JSON object, got {type(item).__name__}")
        return None
    if isinstance(item.get("name"), str):
        where += f" ({item['name']})"
    missing = [f for f in _CASTLE_FIELDS if f not in item]
    if missing:
        reader.problem(f"{where}: missing field {missing[0]!r}")
        return None
    code = reader.text_field(item, "code", where)
    if code is None:
        return None
    code = reader.code_text(code, where)
    if code is None:
        return None
    cwe = reader.cwe(item["cwe"], where, "cwe")
    label = reader.label(item["vulnerable"], where, "vulnerable")
    if cwe is None or label is None:
        return None
    name = str(item["name"])
    language = canonical_language(str(item.get("language") or Path(name).suffix or "c"))
    if language not in LANGUAGE_ALIASES.values():
        language = "c"
    try:
        cleaned = strip_comments(code, language)
    except ValueError:
        cleaned = code
    return Sample(
        id=f"castle:{name}",
        code=cleaned,
        language=language,
        cwe=cwe,
        label=label,
        pair_id=None,
        source="castle",
        group=f"castle:{name}",
        meta={k: v for k, v in item.items() if k != "code"} | {"file": file.as_posix()},
        is_file=True,
    )
