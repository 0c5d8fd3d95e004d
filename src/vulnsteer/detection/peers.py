"""Peer static analysers, the external detectors a user compares vulnsteer with: cppcheck and flawfinder (C/C++),
bandit (Python), each run on samples.

Each sample's code (as the caller gives it: the transfer protocol gives it as the model reads it, comments
stripped and truncated to the token budget; ``detector evaluate`` as it was written) goes to its own file with its
language's extension, and each tool runs once over the folder. A finding flags the sample; the score is the
severity-weighted count of findings (cppcheck: error 3, warning 2, style/performance/portability 1, parse and
configuration messages ignored; flawfinder: the sum of hit levels; bandit: HIGH 3, MEDIUM 2, LOW 1). The tools are
not fitted, so nothing is left out: the transfer protocol's row for a fold is the tool on the left-out dataset's
samples of its languages. A tool that is not installed is skipped with a note; none is a dependency of vulnsteer.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..data.sample import Sample

__all__ = ["PEER_LANGUAGES", "PeerScores", "run_peer"]

#: The languages each peer reads, and the file extension a sample of each is written with.
PEER_LANGUAGES: Mapping[str, Mapping[str, str]] = {
    "cppcheck": {"c": ".c", "cpp": ".cpp"},
    "flawfinder": {"c": ".c", "cpp": ".cpp"},
    "bandit": {"python": ".py"},
}
_CPPCHECK_WEIGHT = {"error": 3, "warning": 2, "style": 1, "performance": 1, "portability": 1}
_CPPCHECK_IGNORED = frozenset(
    {
        "syntaxError",
        "unknownMacro",
        "missingInclude",
        "missingIncludeSystem",
        "checkersReport",
        "internalAstError",
        "preprocessorErrorDirective",
        "normalCheckLevelMaxBranches",
        "toomanyconfigs",
        "noValidConfiguration",
        "unmatchedSuppression",
        "cppcheckError",
        "internalError",
    }
)
_BANDIT_WEIGHT = {"HIGH": 3, "MEDIUM": 2, "LOW": 1}


@dataclass(frozen=True)
class PeerScores:
    """One tool on one dataset: a score per sample it read (by sample id; > 0: flagged), or why it did not run."""

    tool: str
    scores: Mapping[str, float]
    note: str = ""


def _cppcheck(exe: str, folder: Path, files: Mapping[str, str]) -> dict[str, float]:
    proc = subprocess.run(
        [exe, "--enable=warning,style,performance,portability", "--inconclusive", "--xml", "-q", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    scores = dict.fromkeys(files.values(), 0.0)
    root = ET.fromstring(proc.stderr or "<results><errors/></results>")
    for err in root.iter("error"):
        loc = err.find("location")
        if err.get("id") in _CPPCHECK_IGNORED or loc is None:
            continue
        sid = files.get(Path(loc.get("file", "")).name)
        if sid is not None:
            scores[sid] += _CPPCHECK_WEIGHT.get(err.get("severity", ""), 0)
    return scores


def _flawfinder(exe: str, folder: Path, files: Mapping[str, str]) -> dict[str, float]:
    proc = subprocess.run([exe, "--csv", "--quiet", str(folder)], capture_output=True, text=True, check=False)
    scores = dict.fromkeys(files.values(), 0.0)
    for row in csv.DictReader(io.StringIO(proc.stdout)):
        sid = files.get(Path(row.get("File", "")).name)
        if sid is not None:
            scores[sid] += float(row.get("Level") or 0)
    return scores


def _bandit(exe: str, folder: Path, files: Mapping[str, str]) -> dict[str, float]:
    proc = subprocess.run([exe, "-r", "-q", "-f", "json", str(folder)], capture_output=True, text=True, check=False)
    scores = dict.fromkeys(files.values(), 0.0)
    for res in json.loads(proc.stdout or "{}").get("results", []):
        sid = files.get(Path(res.get("filename", "")).name)
        if sid is not None:
            scores[sid] += _BANDIT_WEIGHT.get(res.get("issue_severity", ""), 0)
    return scores


_RUNNERS: Mapping[str, Callable[[str, Path, Mapping[str, str]], dict[str, float]]] = {
    "cppcheck": _cppcheck,
    "flawfinder": _flawfinder,
    "bandit": _bandit,
}


def run_peer(tool: str, samples: Sequence[Sample]) -> PeerScores:
    """*tool* over the samples of its languages (none: an empty result with a note; not installed: skipped with
    a note)."""
    languages = PEER_LANGUAGES[tool]
    mine = [s for s in samples if s.language in languages]
    if not mine:
        return PeerScores(tool, {}, f"no {'/'.join(languages)} samples")
    exe = shutil.which(tool) or shutil.which(tool, path=str(Path(sys.executable).parent))  # (pip-installed beside)
    if exe is None:
        return PeerScores(tool, {}, f"{tool} is not installed (not on PATH nor beside this Python): skipped")
    with tempfile.TemporaryDirectory(prefix=f"vulnsteer-{tool}-") as tmp:
        folder = Path(tmp)
        files = {}
        for k, s in enumerate(mine):
            name = f"s{k:05d}{languages[s.language]}"
            (folder / name).write_text(s.code, encoding="utf-8")
            files[name] = s.id
        try:
            return PeerScores(tool, _RUNNERS[tool](exe, folder, files))
        except (OSError, ET.ParseError, ValueError) as exc:
            return PeerScores(tool, {}, f"{tool} failed ({exc}): skipped")
