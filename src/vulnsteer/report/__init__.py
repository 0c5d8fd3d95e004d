"""Reports: ``report.md`` and its plots, rendered from typed :class:`~vulnsteer.experiment.results.Results` (read a
``results.json`` of any readable schema with :func:`~vulnsteer.experiment.upgrade.load_results`).

>>> from vulnsteer.report import render_markdown, write_report
"""

from __future__ import annotations

from pathlib import Path

from ..experiment.results import Results
from ..io import write_text
from .markdown import render_markdown
from .plots import report_plots

__all__ = ["render_markdown", "report_plots", "write_report"]


def write_report(results: Results, out_dir: str | Path) -> Path:
    """Draw every plot (none for an interrupted run) and write ``report.md`` into *out_dir*; returns its path."""
    out = Path(out_dir)
    plots = [] if results.interrupted else report_plots(results, out)
    path = out / "report.md"
    write_text(path, render_markdown(results, plots))
    return path
