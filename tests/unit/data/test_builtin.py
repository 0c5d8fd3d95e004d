"""The bundled corpus: coverage, pair structure, realistic size and no label leaks."""

from __future__ import annotations

import difflib
import re
from collections import Counter

import pytest

from vulnsteer.cwe import PRIORITY_CWES
from vulnsteer.data.builtin import load_builtin
from vulnsteer.data.sample import count_by_cwe

SAMPLES = load_builtin()
LEAK = re.compile(r"vuln|insecure|unsafe|exploit|attack|\bcwe|\bfix|patch|//|/\*", re.IGNORECASE)


def test_every_priority_cwe_has_at_least_12_pairs() -> None:
    counts = count_by_cwe(SAMPLES)
    for cwe in PRIORITY_CWES:
        assert counts[cwe]["pairs"] >= 12, cwe
        assert counts[cwe]["vulnerable"] == counts[cwe]["secure"] == counts[cwe]["pairs"]


def test_languages_spread() -> None:
    langs = Counter(s.language for s in SAMPLES)
    assert set(langs) == {"c", "cpp", "python", "javascript", "java"}


def test_ids_unique_and_pairs_complete() -> None:
    assert len({s.id for s in SAMPLES}) == len(SAMPLES)
    by_pair: dict[str, set[str]] = {}
    for s in SAMPLES:
        by_pair.setdefault(s.pair_id or "", set()).add(s.label)
    assert all(labels == {"vulnerable", "secure"} for labels in by_pair.values())


@pytest.mark.parametrize("pair_id", sorted({s.pair_id for s in SAMPLES if s.pair_id}))
def test_pair_differs_only_in_the_fix(pair_id: str) -> None:
    vuln, secure = (
        next(s for s in SAMPLES if s.pair_id == pair_id and s.label == lab) for lab in ("vulnerable", "secure")
    )
    assert vuln.code != secure.code
    assert difflib.SequenceMatcher(None, vuln.code, secure.code).ratio() > 0.6
    for s in (vuln, secure):
        lines = s.code.strip().count("\n") + 1
        assert 8 <= lines <= 60, (s.id, lines)
        assert not LEAK.search(s.code), (s.id, LEAK.search(s.code))
        assert s.description


def test_cwe_filter() -> None:
    only = load_builtin(["89", "CWE-022"])
    assert {s.cwe for s in only} == {"CWE-89", "CWE-22"}
    with pytest.raises(ValueError, match="CWE-9999"):
        load_builtin(["CWE-9999"])
