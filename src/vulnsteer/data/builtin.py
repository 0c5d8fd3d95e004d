"""The corpus that ships with vulnsteer: vulnerable/fixed pairs written by the vulnsteer authors.

One JSON file per CWE in ``vulnsteer/corpus/``: ``{"cwe": "CWE-22", "pairs": [{id, language, description,
vulnerable, secure}, ...]}``. Each pair differs only in the fix; the code carries no comments or label words.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from importlib import resources

from ..cwe import normalize_cwe
from .sample import SECURE, VULNERABLE, Sample

__all__ = ["BUILTIN_NAME", "builtin_files", "load_builtin"]

BUILTIN_NAME = "builtin"


def builtin_files() -> list[str]:
    root = resources.files("vulnsteer") / "corpus"
    return sorted(p.name for p in root.iterdir() if p.name.endswith(".json"))


def load_builtin(cwes: Collection[str] | None = None) -> list[Sample]:
    """All bundled samples (both halves of every pair), optionally only the given CWEs.

    >>> samples = load_builtin(["CWE-89"])
    >>> len(samples), samples[0].cwe, {s.label for s in samples} == {"vulnerable", "secure"}
    (28, 'CWE-89', True)
    """
    wanted = {normalize_cwe(c) for c in cwes} if cwes else None
    root = resources.files("vulnsteer") / "corpus"
    samples: list[Sample] = []
    for name in builtin_files():
        data = json.loads((root / name).read_text(encoding="utf-8"))
        cwe = normalize_cwe(data["cwe"])
        if wanted is not None and cwe not in wanted:
            continue
        for index, pair in enumerate(data["pairs"]):
            for field in ("id", "language", "description", "vulnerable", "secure"):
                if field not in pair:
                    raise ValueError(f"corpus/{name}: pair {index} is missing field {field!r}")
            pid = f"{BUILTIN_NAME}:{pair['id']}"
            for label, code in ((VULNERABLE, pair["vulnerable"]), (SECURE, pair["secure"])):
                samples.append(
                    Sample(
                        id=f"{pid}:{label[0]}",
                        code=code,
                        language=pair["language"],
                        cwe=cwe,
                        label=label,
                        pair_id=pid,
                        source=BUILTIN_NAME,
                        group=pid,
                        description=pair["description"],
                    )
                )
    if wanted:
        missing = wanted - {s.cwe for s in samples}
        if missing:
            raise ValueError(f"the bundled corpus has no samples for {sorted(missing)}")
    return samples
