"""Reports: ``report.md`` and its plots, rendered from a ``results.json`` dict (no model, no torch).

>>> from vulnsteer.report import render_markdown, write_report
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..io import write_text
from .markdown import render_markdown
from .plots import report_plots

__all__ = ["render_markdown", "report_plots", "write_report"]


def write_report(results: Mapping[str, Any], out_dir: str | Path) -> Path:
    """Draw every plot (none for an interrupted run) and write ``report.md`` into *out_dir*; returns its path."""
    out = Path(out_dir)
    plots = [] if results.get("status") == "interrupted" else report_plots(results, out)
    path = out / "report.md"
    write_text(path, render_markdown(results, plots))
    return path
