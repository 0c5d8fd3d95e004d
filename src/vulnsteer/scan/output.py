"""Writing a scan (or a diff: :func:`render_diff`): SARIF, JSON lines (one record per function, then a summary
record) or a terminal table of the findings, to a file written atomically (a scan stopped half-way leaves no
half-written output) or to standard output. The summary line (:meth:`~vulnsteer.scan.results.ScanStats.
summary_line`) is not part of the table: the command prints it on standard error, with the warnings.

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
from .diff import DiffReport
from .results import FunctionResult, ScanReport, level_for
from .sarif import build_diff_sarif, build_sarif
from .sources import file_scores

__all__ = ["format_diff_table", "format_jsonl", "format_table", "render", "render_diff", "write_output"]

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
    return _table(header, rows, [None, *(f.score.explanation for f in findings)])


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]], notes: Sequence[str | None]) -> str:
    """Columns padded to their widest cell (the last one not), each row followed by the first lines of its note
    (*notes*: one per line, the header's first)."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    lines = []
    for row, text in zip([header, *rows], notes):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths)) + "  " + row[-1])
        if text:
            kept = [line.strip() for line in text.splitlines() if line.strip()][:_EXPLANATION_LINES]
            lines.extend(f"      | {line}" for line in kept)
    return "\n".join(lines) + "\n"


def format_diff_table(report: DiffReport) -> str:
    """A readable table of a diff's changes, in :meth:`~vulnsteer.scan.diff.DiffReport.ordered` order.

    >>> format_diff_table(report).splitlines()[0]  # doctest: +SKIP
    'BEFORE  AFTER  DELTA  CHANGE   LOCATION     FUNCTION'
    """
    if not report.changes:
        return f"no function differs between {report.before} and {report.after}\n"
    changes = report.ordered()
    rows = []
    for c in changes:
        now = c.current
        rows.append(
            (
                f"{c.before.score.score:.2f}" if c.before else "-",
                f"{c.after.score.score:.2f}" if c.after else "-",
                f"{c.delta:+.2f}" if c.delta is not None else "",
                c.kind + (" riskier" if c.riskier else ""),
                f"{now.path}:{now.region.start_line}",
                now.name if c.kind != "renamed" or c.before is None else f"{c.before.name} -> {now.name}",
            )
        )
    header = ("BEFORE", "AFTER", "DELTA", "CHANGE", "LOCATION", "FUNCTION")
    return _table(header, rows, [None, *(c.after.score.explanation if c.after else None for c in changes)])


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


def render_diff(report: DiffReport, fmt: str, command_line: str | None = None) -> str:
    """A diff (:mod:`vulnsteer.scan.diff`) in one of :data:`~vulnsteer.config.vocabulary.OUTPUT_FORMATS`: SARIF,
    JSON lines (one ``"type": "change"`` record per function that differs, then a ``"type": "summary"`` record),
    or a table."""
    if fmt == "sarif":
        return json.dumps(build_diff_sarif(report, command_line), indent=2, ensure_ascii=False) + "\n"
    if fmt == "json":
        records = [*(c.to_record() for c in report.changes), report.summary()]
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if fmt == "text":
        return format_diff_table(report)
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
