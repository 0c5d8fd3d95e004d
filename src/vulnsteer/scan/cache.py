"""Per-function score cache keyed by (scorer digest, code hash): rescanning unchanged code scores nothing.

One append-only JSON-lines file per scorer digest (``<root>/<digest>.jsonl``). Each scored batch is appended
with a single ``write`` on an ``O_APPEND`` descriptor and fsynced, so a killed scan loses at most the batch in
flight and concurrent scans do not interleave lines. Reading trusts only lines that end with a newline, parse,
and carry this digest and a valid score: a torn or corrupt line is skipped (and rescored), never served.

>>> import tempfile
>>> from pathlib import Path
>>> from vulnsteer.scan.scorer import FunctionScore
>>> root = Path(tempfile.mkdtemp())
>>> ScanCache(root, "d1").put({"h1": FunctionScore(0.7, "vulnerable")})
>>> ScanCache(root, "d1").get("h1").score, ScanCache(root, "d2").get("h1")
(0.7, None)
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from .scorer import FunctionScore

__all__ = ["CACHE_FORMAT", "ScanCache"]

#: Version of a cache line's layout; lines of another version are ignored (2: scores carry their verdict's
#: threshold, which a file's verdict reads).
CACHE_FORMAT = 2


class ScanCache:
    """The cached scores of one scorer (*digest*) under *root* (created on the first write); see the module
    docstring for an example."""

    def __init__(self, root: Path, digest: str) -> None:
        if not digest or "/" in digest or digest.startswith("."):
            raise ValueError(f"scorer digest {digest!r} is not usable as a cache file name")
        self.root = root
        self.digest = digest
        self.path = root / f"{digest}.jsonl"
        #: Lines skipped as torn or corrupt when the cache was read.
        self.bad_lines = 0
        self._entries: dict[str, FunctionScore] = self._read()

    def _read(self) -> dict[str, FunctionScore]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        entries: dict[str, FunctionScore] = {}
        lines = raw.split(b"\n")
        for line in lines[:-1]:  # the part after the last newline is torn (or empty)
            entry = self._parse(line)
            if entry is None:
                self.bad_lines += 1 if line.strip() else 0
                continue
            entries[entry[0]] = entry[1]
        if lines[-1].strip():
            self.bad_lines += 1
        return entries

    def _parse(self, line: bytes) -> tuple[str, FunctionScore] | None:
        try:
            data = json.loads(line)
            if data.get("format") != CACHE_FORMAT or data.get("digest") != self.digest:
                return None
            key = data["key"]
            if not isinstance(key, str) or not key:
                return None
            return key, FunctionScore.from_dict(data["score"])
        except (ValueError, TypeError, KeyError, AttributeError):
            return None

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def get(self, key: str) -> FunctionScore | None:
        """The cached score for a code hash, or None."""
        return self._entries.get(key)

    def put(self, scores: Mapping[str, FunctionScore]) -> None:
        """Append scores (code hash -> score) in one write and fsync it."""
        fresh = {k: v for k, v in scores.items() if self._entries.get(k) != v}
        if not fresh:
            return
        body = "".join(
            json.dumps({"format": CACHE_FORMAT, "digest": self.digest, "key": k, "score": v.to_dict()}) + "\n"
            for k, v in fresh.items()
        ).encode("utf-8")
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size:
                # a killed writer may have left a torn line without its newline: end it so ours starts clean
                with open(self.path, "rb") as handle:
                    handle.seek(size - 1)
                    if handle.read(1) != b"\n":
                        body = b"\n" + body
            view = memoryview(body)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        self._entries.update(fresh)
