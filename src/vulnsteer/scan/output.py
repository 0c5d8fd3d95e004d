"""Writing a scan: SARIF, JSON lines (one record per function, then a summary record) or a terminal table of
the findings, to a file written atomically (a scan stopped half-way leaves no half-written output) or to standard
output. The summary line (:meth:`~vulnsteer.scan.engine.ScanStats.summary_line`) is not part of the table: the
command prints it on standard error, with the warnings.

>>> format_table([], 0.5)
'no findings at or above 0.50\\n'
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from ..config.vocabulary import OUTPUT_FORMATS
from ..io import write_text
from .engine import FunctionResult, ScanReport, level_for
from .sarif import build_sarif
from .sources import file_scores

__all__ = ["format_jsonl", "format_table", "render", "write_output"]

_EXPLANATION_LINES = 3


def format_jsonl(report: ScanReport) -> str:
    """One JSON record per function (``"type": "function"``: every function, findings or not), in file order, then
    one per file (``"type": "file"``: its functions' aggregate score and the function that leads it), then one
    ``"type": "summary"`` record: the scan's counts, its warnings, the thresholds and the exit code.

    >>> format_jsonl(report).splitlines()[0]  # doctest: +SKIP
    '{"type": "function", "path": "src/a.py", "language": "python", "function": "f", ...}'
    """
    min_score = report.options.min_score
    summary = {
        "type": "summary",
        **report.stats.to_dict(),
        "min_score": min_score,
        "fail_on": report.options.fail_threshold,
        "aggregation": report.options.aggregation,
        "exit_code": report.exit_code,
        "failures": report.failures(),
        "scorer": dict(report.provenance),
    }
    records = [r.to_record(min_score) for r in report.results] + [f.to_record() for f in file_scores(report)]
    return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in [*records, summary])


def format_table(findings: Sequence[FunctionResult], min_score: float) -> str:
    """A readable table of the findings, highest score first (example in the module docstring)."""
    if not findings:
        return f"no findings at or above {min_score:.2f}\n"
    rows = [
        (
            f"{f.score.score:.2f}",
            level_for(f.score.score, min_score),
            f.score.cwe or "-",
            f"{f.path}:{f.region.start_line}:{f.region.start_column}",
            f.name + (" (truncated)" if f.score.truncated else ""),
        )
        for f in findings
    ]
    header = ("SCORE", "LEVEL", "CWE", "LOCATION", "FUNCTION")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    lines = []
    for row, finding in zip([header, *rows], [None, *findings]):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths)) + "  " + row[-1])
        text = finding.score.explanation if finding is not None else None
        if text:
            kept = [line.strip() for line in text.splitlines() if line.strip()][:_EXPLANATION_LINES]
            lines.extend(f"      | {line}" for line in kept)
    return "\n".join(lines) + "\n"


def render(report: ScanReport, fmt: str, command_line: str | None = None) -> str:
    """The scan in one of :data:`~vulnsteer.config.vocabulary.OUTPUT_FORMATS`.

    >>> render(report, "sarif")[:1]  # doctest: +SKIP
    '{'
    """
    if fmt == "sarif":
        return json.dumps(build_sarif(report, command_line), indent=2, ensure_ascii=False) + "\n"
    if fmt == "json":
        return format_jsonl(report)
    if fmt == "text":
        return format_table(report.findings, report.options.min_score)
    raise ValueError(f"--format must be one of {', '.join(OUTPUT_FORMATS)}, got {fmt!r}")


def write_output(text: str, output: Path | None) -> None:
    """Write *text* to *output* atomically, or to standard output when None.

    >>> write_output("no findings\\n", None)
    no findings
    """
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        write_text(output, text)
