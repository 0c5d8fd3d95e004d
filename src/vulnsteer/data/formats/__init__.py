"""Dataset formats as plug-ins: each reads one layout into samples through a :class:`~.reader.Reader` (which
reports every problem by file, line and field), registered under its ``data.format`` / ``--format`` name in
:data:`FORMATS`. :mod:`vulnsteer.data.loaders` tells a path's format and runs the one named."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType

from vulnsteer.data.sample import Sample

from .castle import read_castle
from .generic import read_csv, read_jsonl
from .itc import itc_trees, read_itc
from .juliet import read_juliet
from .owasp import EXPECTED_RESULTS, read_owasp
from .paired import VULN_NAMES, mirrored_trees, read_paired_dir
from .reader import DataError, LoadReport, Reader, json_loads, parse_label
from .sven import read_sven

__all__ = [
    "EXPECTED_RESULTS",
    "FORMATS",
    "VULN_NAMES",
    "DataError",
    "LoadReport",
    "Reader",
    "itc_trees",
    "json_loads",
    "mirrored_trees",
    "parse_label",
]

#: Every format by its name (:data:`~vulnsteer.config.vocabulary.DATASET_FORMATS`, in that order).
FORMATS: Mapping[str, Callable[[Reader, Path], list[Sample]]] = MappingProxyType(
    {
        "sven": read_sven,
        "juliet": read_juliet,
        "paired-dir": read_paired_dir,
        "castle": read_castle,
        "owasp": read_owasp,
        "itc": read_itc,
        "jsonl": read_jsonl,
        "csv": read_csv,
    }
)
