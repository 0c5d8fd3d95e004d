"""Checks shared by the test modules: the SARIF 2.1.0 schema's validator and an independent reader of a region's
text."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO
from vulnsteer.data.region import Region

#: the SARIF 2.1.0 JSON schema in ``../shared/schemas`` beside the checkout, else the workplace's (a clean clone in
#: another folder still validates); tests that need it skip when neither is there
_SCHEMA_PLACES = [REPO.parent / "shared" / "schemas", Path("/work/shared/schemas")]
SARIF_SCHEMA = next(
    (p / "sarif-schema-2.1.0.json" for p in _SCHEMA_PLACES if (p / "sarif-schema-2.1.0.json").is_file()),
    _SCHEMA_PLACES[0] / "sarif-schema-2.1.0.json",
)


def sarif_validator() -> Any:
    """A Draft 4 validator of the SARIF 2.1.0 schema; skips the test without ``jsonschema`` or the schema file."""
    jsonschema = pytest.importorskip("jsonschema")
    if not SARIF_SCHEMA.is_file():
        pytest.skip(f"SARIF schema not found at {SARIF_SCHEMA}")
    return jsonschema.Draft4Validator(json.loads(SARIF_SCHEMA.read_text(encoding="utf-8")))


def slice_region(text: str, region: Region) -> str:
    """The characters of *text* inside *region*, found by walking the text (independent of TextIndex): lines end
    at LF, CR LF or CR; columns count code points; the end column is exclusive."""
    out = []
    line, column = 1, 1
    i = 0
    start = (region.start_line, region.start_column)
    end = (region.end_line, region.end_column)
    while i < len(text):
        ch = text[i]
        if start <= (line, column) < end:
            out.append(ch)
        if ch == "\r" and text[i + 1 : i + 2] == "\n":
            if start <= (line, column + 1) < end:
                out.append("\n")
            i += 2
            line, column = line + 1, 1
            continue
        if ch in "\r\n":
            line, column = line + 1, 1
        else:
            column += 1
        i += 1
    return "".join(out)
