"""``vulnsteer scan``: real code in, findings out.

Walk files and folders, split them into functions with tree-sitter, score each function with a
:class:`~vulnsteer.scan.scorer.Scorer` (the plain or steered model, or a saved detector, as a
:class:`~vulnsteer.scan.spec.ScorerSpec` says: :class:`~vulnsteer.scan.model_scorer.ModelScorer`), cache
scores per (scorer digest, code hash), and write SARIF 2.1.0, JSON lines or a table. ``vulnsteer detect`` is a view
of the same engine: one score per file (:mod:`vulnsteer.scan.sources`).

Nothing here imports torch until a function has to be scored, so a rescan whose functions are all cached is
fast.

>>> from vulnsteer.scan import ModelScorer, ScorerSpec, ScanOptions, scan, render  # doctest: +SKIP
>>> with ModelScorer(ScorerSpec(), identity_store=default_cache_dir() / "models") as scorer:  # doctest: +SKIP
...     report = scan(["src/"], scorer, ScanOptions(), cache_dir=default_cache_dir())
>>> print(render(report, "text"))  # doctest: +SKIP
"""

from pathlib import Path

from ..lm.paths import cache_root
from .engine import scan
from .files import FileFilter
from .model_scorer import ModelScorer
from .options import ScanOptions
from .output import render, write_output
from .results import FunctionResult, ScanReport, ScanStats
from .scorer import FunctionScore, Scorer, StaleDigestError, scorer_digest
from .spec import ScorerSpec, VectorSteering

__all__ = [
    "FileFilter",
    "FunctionResult",
    "FunctionScore",
    "ModelScorer",
    "ScanOptions",
    "ScanReport",
    "ScanStats",
    "Scorer",
    "ScorerSpec",
    "StaleDigestError",
    "VectorSteering",
    "default_cache_dir",
    "render",
    "scan",
    "scorer_digest",
    "write_output",
]


def default_cache_dir() -> Path:
    """Where scan results are cached by default: ``cache_root() / "scan"`` (``$VULNSTEER_CACHE`` moves it)."""
    return cache_root() / "scan"
