"""Findings a user has already triaged: inline ``vulnsteer: ignore`` comments and a baseline of an earlier scan.

**Inline.** A comment ``vulnsteer: ignore`` on a function's first line, or on the line just above it, keeps every
finding of that function out of the report and the exit code; ``vulnsteer: ignore[CWE-89]`` (several:
``ignore[CWE-89, CWE-78]``) keeps out only findings that name one of those CWEs. The comment syntax is the
language's own (``//``, ``#``, ``/* */``, ``--``): only the words matter.

**Baseline.** ``--baseline FILE`` reads an earlier scan's SARIF (``--format sarif``) or JSON lines
(``--format json``); a finding whose fingerprint (path from the repository top, function name and code, stable
across line moves) is among that scan's findings is not new, and is left out of the report and the exit code.
Both are counted in the summary.

>>> Suppression.parse("    return run(cmd)  # vulnsteer: ignore[CWE-78]").covers("CWE-78")
True
>>> Suppression.parse("int f(void) { // vulnsteer: ignore").covers(None)
True
>>> Suppression.parse("// vulnsteer: ignore[89]").covers("CWE-78"), Suppression.parse("int x;") is None
(False, True)
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..cwe import UnknownCWEError, normalize_cwe

__all__ = ["FINGERPRINT_KEY", "BaselineError", "Suppression", "inline_suppression", "read_baseline"]

_MARK = re.compile(r"\bvulnsteer:\s*ignore\b(?:\[([^\]]*)\])?", re.IGNORECASE)
#: The ``partialFingerprints`` key of vulnsteer's SARIF results: a hash of the function's path from the repository
#: top, its name and its normalised code (what a baseline matches findings by).
FINGERPRINT_KEY = "vulnsteerFunctionHash/v1"


class BaselineError(ValueError):
    """A baseline file that cannot be read; the message names the file."""


@dataclass(frozen=True)
class Suppression:
    """An inline ``vulnsteer: ignore`` comment: every CWE (``cwes`` empty) or only the CWEs listed."""

    cwes: tuple[str, ...] = ()

    @classmethod
    def parse(cls, line: str) -> Suppression | None:
        """The suppression a line of source holds, or None."""
        match = _MARK.search(line)
        if match is None:
            return None
        listed = [item.strip() for item in (match.group(1) or "").split(",") if item.strip()]
        cwes = []
        for item in listed:
            try:
                cwes.append(normalize_cwe(item))
            except (UnknownCWEError, ValueError):
                cwes.append(item.upper())  # never matches a CWE: the comment suppresses nothing it does not name
        return cls(tuple(cwes))

    def covers(self, cwe: str | None) -> bool:
        """Whether a finding naming *cwe* (None: no CWE) is suppressed."""
        return not self.cwes or (cwe is not None and cwe in self.cwes)


def inline_suppression(lines: list[str], start_line: int) -> Suppression | None:
    """The suppression of a function starting at 1-based *start_line* of a file's *lines*: a comment on that line
    or on the one above it.

    >>> inline_suppression(["# vulnsteer: ignore", "def f():", "    pass"], 2)
    Suppression(cwes=())
    """
    for number in (start_line, start_line - 1):
        if 1 <= number <= len(lines):
            found = Suppression.parse(lines[number - 1])
            if found is not None:
                return found
    return None


def read_baseline(path: str | Path) -> frozenset[str]:
    """The fingerprints of the findings in an earlier scan's SARIF or JSON-lines output.

    >>> read_baseline("previous.sarif")  # doctest: +SKIP
    frozenset({'3f1c...'})
    """
    file = Path(path)
    if file.is_dir():
        raise BaselineError(f"--baseline {file}: is a folder; give the SARIF or JSON output of an earlier scan")
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BaselineError(f"--baseline {file}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BaselineError(f"--baseline {file}: cannot read ({exc})") from None
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and "runs" in doc:
        return _from_sarif(doc, file)
    return _from_json_lines(text, file)


def _from_sarif(doc: dict[str, object], file: Path) -> frozenset[str]:
    found: set[str] = set()
    runs = doc.get("runs")
    if not isinstance(runs, list):
        raise BaselineError(f"--baseline {file}: field 'runs' is not a list")
    for run in runs:
        results = run.get("results", []) if isinstance(run, dict) else None
        if not isinstance(results, list):
            raise BaselineError(f"--baseline {file}: field 'runs[].results' is not a list")
        for result in results:
            prints = result.get("partialFingerprints", {}) if isinstance(result, dict) else {}
            value = prints.get(FINGERPRINT_KEY) if isinstance(prints, dict) else None
            if isinstance(value, str):
                found.add(value)
    if not found and any(isinstance(run, dict) and run.get("results") for run in runs):
        raise BaselineError(f"--baseline {file}: no result has a {FINGERPRINT_KEY} fingerprint (not from vulnsteer)")
    return frozenset(found)


def _from_json_lines(text: str, file: Path) -> frozenset[str]:
    found: set[str] = set()
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise BaselineError(
                f"--baseline {file}:{number}: neither SARIF nor vulnsteer's JSON lines (malformed JSON)"
            ) from None
        if not isinstance(record, dict):
            raise BaselineError(f"--baseline {file}:{number}: not a JSON object")
        if record.get("type") in ("summary", "file"):  # (findings are functions)
            continue
        if "fingerprint" not in record or "finding" not in record:
            raise BaselineError(f"--baseline {file}:{number}: no field 'fingerprint' (not vulnsteer scan output)")
        if record["finding"]:
            found.add(str(record["fingerprint"]))
    return frozenset(found)
