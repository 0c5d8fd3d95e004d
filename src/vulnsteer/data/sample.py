"""The unit of data: one labelled function."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Label = Literal["vulnerable", "secure"]
VULNERABLE: Label = "vulnerable"
SECURE: Label = "secure"
#: ``Sample.meta`` key of the split a dataset ships (``"train"``/``"val"``, SVEN and SafeCoder): what
#: ``respect_upstream`` splitting keeps as the held-out boundary.
UPSTREAM_SPLIT_KEY = "upstream_split"
LABELS: tuple[Label, Label] = (VULNERABLE, SECURE)


@dataclass(frozen=True)
class Sample:
    """One function with a vulnerable/secure label.

    Attributes:
        id: unique id within its dataset (stable across runs).
        code: source text, exactly as shown to the model (after any cleaning).
        language: lower-case language name (``c``, ``cpp``, ``python``, ``javascript``, ``java``, ...).
        cwe: canonical CWE id (``CWE-89``).
        label: ``"vulnerable"`` or ``"secure"``.
        pair_id: id shared by the vulnerable and the fixed version of the same function; ``None`` if unpaired.
        source: dataset name (``sven``, ``juliet-c``, ``builtin``, ...).
        group: split group: samples of one group always land in the same split (commit, Juliet functional
            variant, ...). Defaults to the pair id, then the sample id.
        description: optional one-line description of the weakness/fix.
        meta: free-form extra fields (file name, commit link, changed lines, truncation notes ...). Never
            shown to the model.
        is_file: the code is a whole source file (set by the loaders that read files: ``paired-dir``, ``castle``,
            and ``jsonl``/``csv`` rows with ``whole_file`` true). A file in which the function splitter finds at
            least two functions is scored as its functions, aggregated back (:mod:`vulnsteer.data.units`); any
            other sample is scored as it is.

    >>> s = Sample("q1-v", "cur.execute('SELECT ' + x)", "python", "CWE-89", "vulnerable", "q1")
    >>> s.is_vulnerable, s.y
    (True, 1)
    """

    id: str
    code: str
    language: str
    cwe: str
    label: Label
    pair_id: str | None = None
    source: str = ""
    group: str = ""
    description: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict)
    is_file: bool = False

    def __post_init__(self) -> None:
        if self.label not in LABELS:
            raise ValueError(f"sample {self.id!r}: label must be one of {LABELS}, got {self.label!r}")
        if not self.group:
            object.__setattr__(self, "group", self.pair_id or self.id)

    @property
    def is_vulnerable(self) -> bool:
        return self.label == VULNERABLE

    @property
    def y(self) -> int:
        """1 for vulnerable, 0 for secure (the positive class is 'vulnerable')."""
        return 1 if self.label == VULNERABLE else 0


def count_by_cwe(samples: Iterable[Sample]) -> dict[str, dict[str, int]]:
    """``{cwe: {"vulnerable": n, "secure": n, "pairs": n}}`` (pairs = pair ids with both halves)."""
    out: dict[str, dict[str, int]] = {}
    halves: dict[tuple[str, str], set[str]] = {}
    for s in samples:
        row = out.setdefault(s.cwe, {"vulnerable": 0, "secure": 0, "pairs": 0})
        row[s.label] += 1
        if s.pair_id is not None:
            halves.setdefault((s.cwe, s.pair_id), set()).add(s.label)
    for (cwe, _), labels in halves.items():
        if len(labels) == 2:
            out[cwe]["pairs"] += 1
    return out


def dataset_hash(samples: Sequence[Sample]) -> str:
    """A short hash of the samples' ids, labels, CWEs and code, whatever their order (identifies the data a
    vector, a probe or a cached activation came from).

    >>> a, b = Sample("a", "x = 1", "python", "CWE-89", "secure"), Sample("b", "y", "c", "CWE-89", "vulnerable")
    >>> dataset_hash([a, b]) == dataset_hash([b, a]) != dataset_hash([a])
    True
    """
    digest = hashlib.sha256()
    for s in sorted(samples, key=lambda s: s.id):
        digest.update(f"{s.id}\0{s.label}\0{s.cwe}\0".encode())
        digest.update(hashlib.sha256(s.code.encode()).digest())
    return digest.hexdigest()[:16]
