"""The scan pipeline with a stand-in scorer: cache hits, rescoring only what changed, bad input, SARIF validity."""

from __future__ import annotations

import doctest
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from checks import sarif_validator, slice_region
from conftest import REPO, write_file
from toys import FakeScorer
from vulnsteer.data.functions import tree_sitter_available
from vulnsteer.data.region import Region
from vulnsteer.scan import ScanOptions, scan
from vulnsteer.scan import cache as cache_module
from vulnsteer.scan import engine as engine_module
from vulnsteer.scan import output as output_module
from vulnsteer.scan import sarif as sarif_module
from vulnsteer.scan import scorer as scorer_module
from vulnsteer.scan.cache import ScanCache
from vulnsteer.scan.output import format_jsonl, render
from vulnsteer.scan.sarif import FINGERPRINT_KEY, build_sarif
from vulnsteer.scan.scorer import FunctionScore, Scorer
from vulnsteer.scan.sources import file_scores
from vulnsteer.stats.aggregate import aggregate

DEMO = REPO / "examples" / "scan-demo"
needs_grammars = pytest.mark.skipif(not tree_sitter_available(), reason="tree-sitter-language-pack not installed")


def _rel(path: Path) -> str:
    """*path* as a scan shows it (relative to the current folder)."""
    return Path(os.path.relpath(path)).as_posix()


def _write(root: Path, files: Mapping[str, str | bytes]) -> Path:
    for rel, content in files.items():
        write_file(root / rel, content)
    return root


PY = "def safe(x):\n    return x + 1\n\n\ndef risky(cmd):\n    # note\n    return danger(cmd)\n"


def test_fake_scorer_is_a_scorer() -> None:
    assert isinstance(FakeScorer(), Scorer)


@needs_grammars
def test_rescan_scores_nothing_and_a_changed_function_alone_is_rescored(tmp_path: Path) -> None:
    root = _write(tmp_path / "src", {"a.py": PY, "b.py": "def other(y):\n    return y * 2\n"})
    cache = tmp_path / "cache"
    first = FakeScorer()
    report = scan([root], first, cache_dir=cache, progress=False, base=tmp_path)
    assert report.stats.functions == 3 and report.stats.scored == 3 and report.stats.cached == 0
    assert [r.name for r in report.findings] == ["risky"]
    assert report.exit_code == 1

    second = FakeScorer()
    again = scan([root], second, cache_dir=cache, progress=False, base=tmp_path)
    assert second.calls == []
    assert again.stats.cached == 3 and again.stats.scored == 0
    assert [r.to_record(0.5) | {"cached": False} for r in again.results] == [r.to_record(0.5) for r in report.results]

    (root / "a.py").write_text(PY.replace("return x + 1", "return x + 2"), encoding="utf-8")
    third = FakeScorer()
    changed = scan([root], third, cache_dir=cache, progress=False, base=tmp_path)
    assert third.scored == ["def safe(x):\n    return x + 2"]
    assert changed.stats.scored == 1 and changed.stats.cached == 2

    (root / "a.py").write_text(PY.replace("# note", "# another note"), encoding="utf-8")
    comment_only = FakeScorer()
    scan([root], comment_only, cache_dir=cache, progress=False, base=tmp_path)
    assert comment_only.calls == []  # comments are stripped before hashing, as in training


@needs_grammars
def test_another_scorer_digest_never_reuses_cached_scores(tmp_path: Path) -> None:
    root = _write(tmp_path / "src", {"a.py": PY})
    scan([root], FakeScorer("one"), cache_dir=tmp_path / "c", progress=False)
    other = FakeScorer("two")
    scan([root], other, cache_dir=tmp_path / "c", progress=False)
    assert len(other.scored) == 2


@needs_grammars
def test_identical_functions_are_scored_once(tmp_path: Path) -> None:
    root = _write(tmp_path / "src", {"a.py": PY, "copy/a.py": PY})
    scorer = FakeScorer()
    report = scan([root], scorer, cache_dir=None, progress=False)
    assert report.stats.functions == 4 and len(scorer.scored) == 2
    assert len({r.fingerprint for r in report.results}) == 4  # the path is part of the fingerprint


def test_cache_ignores_torn_and_corrupt_lines(tmp_path: Path) -> None:
    cache = ScanCache(tmp_path, "d")
    cache.put({"k1": FunctionScore(0.7, "vulnerable")})
    with open(cache.path, "ab") as handle:
        handle.write(b'{"format": 2, "digest": "d", "key": "k2", "score": {"score": 0.3, "verd')  # killed writer
    reread = ScanCache(tmp_path, "d")
    assert reread.get("k1") == FunctionScore(0.7, "vulnerable") and reread.get("k2") is None
    assert reread.bad_lines == 1
    reread.put({"k3": FunctionScore(0.1, "secure")})  # the torn line is ended first, never glued to this one
    with open(cache.path, "ab") as handle:
        handle.write(b'{"format": 2, "digest": "d", "key": "k4", "score": {"score": 7, "verdict": "secure"}}\n')
        handle.write(b'{"format": 2, "digest": "other", "key": "k5", "score": {"score": 0.5, "verdict": "secure"}}\n')
        handle.write(b'{"format": 1, "digest": "d", "key": "k6", "score": {"score": 0.5, "verdict": "secure"}}\n')
    final = ScanCache(tmp_path, "d")
    assert final.get("k3") == FunctionScore(0.1, "secure")
    assert final.get("k4") is None and final.get("k5") is None  # an invalid score and another digest's line
    assert final.get("k6") is None  # an earlier layout's line (its scores carry no threshold)
    assert len(final) == 2


@needs_grammars
def test_bad_input_is_skipped_counted_and_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _write(
        tmp_path / "src",
        {
            "ok.py": PY,
            "exe.c": b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00",
            "wide.py": "def wide(a):\n    return danger(a)\n".encode("utf-16"),
            "latin.py": b"def latin(s):\n    return s + '\xe9'\n",
            "empty.py": "\n\n",
            "locked.py": "def locked():\n    pass\n",
            "big.c": "int x;\n" * 100,
            "tool": "#!/usr/bin/env python3\ndef main():\n    return 0\n",
            "notes.txt": "hello\n",
        },
    )
    real = engine_module.read_source

    def read(path: Path) -> Any:
        if Path(path).name == "locked.py":
            raise PermissionError(f"{path}: cannot read (Permission denied)")
        return real(path)

    monkeypatch.setattr(engine_module, "read_source", read)
    report = scan([root], FakeScorer(), ScanOptions(max_file_bytes=500), cache_dir=None, progress=False)
    stats = report.stats
    assert dict(stats.skipped) == {"binary": 1, "empty": 1, "unknown language": 1}  # not source: by design
    assert stats.skipped_named == [f"{_rel(root / 'exe.c')}: binary content, not source text"]  # a .c without text
    # source files that could not be scanned: named one by one, and they fail the gate
    assert sorted(stats.unscanned) == [
        f"{_rel(root / 'big.c')}: 700 bytes, over --max-file-bytes 500",
        f"{_rel(root / 'locked.py')}: cannot read (Permission denied)",
    ]
    assert report.exit_code == 1 and "2 source files not scanned" in report.failures()[-1]
    assert stats.replaced_bytes == 1
    names = {r.name: r for r in report.results}
    assert set(names) == {"safe", "risky", "wide", "latin", "main"}
    assert names["wide"].score.score == 0.9  # UTF-16 read as the text it holds
    assert names["main"].language == "python"  # from the shebang
    summary = stats.summary_line()
    assert "3 files skipped (1 binary, 1 empty, 1 unknown language)" in summary
    assert "2 source files NOT scanned (1 too large, 1 unreadable)" in summary
    assert "1 not UTF-8 (decoded with replacement)" in summary


def test_empty_and_missing_paths_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="empty"):
        scan([""], FakeScorer(), cache_dir=None, progress=False)
    with pytest.raises(FileNotFoundError, match="nope"):
        scan([tmp_path / "nope"], FakeScorer(), cache_dir=None, progress=False)
    with pytest.raises(ValueError, match="no PATH"):
        scan([], FakeScorer(), cache_dir=None, progress=False)


@needs_grammars
def test_min_score_fail_on_and_cwe_filter(tmp_path: Path) -> None:
    root = _write(tmp_path / "src", {"a.py": PY})
    report = scan([root], FakeScorer(), ScanOptions(min_score=0.95, fail_on=0.95), cache_dir=None, progress=False)
    assert report.findings == [] and report.exit_code == 0
    low = scan([root], FakeScorer(), ScanOptions(min_score=0.1, fail_on=0.1), cache_dir=None, progress=False)
    assert len(low.findings) == 2 and low.exit_code == 1
    other_cwe = scan([root], FakeScorer(), ScanOptions(cwes=("89",)), cache_dir=None, progress=False)
    assert other_cwe.findings == [] and other_cwe.exit_code == 0
    same_cwe = scan([root], FakeScorer(), ScanOptions(cwes=("CWE-078",)), cache_dir=None, progress=False)
    assert [r.name for r in same_cwe.findings] == ["risky"] and same_cwe.exit_code == 1
    with pytest.raises(ValueError, match="--fail-on"):
        ScanOptions(fail_on=1.5)


@needs_grammars
def test_demo_sarif_is_schema_valid_with_exact_regions_in_every_language(tmp_path: Path) -> None:
    validator = sarif_validator()
    report = scan([DEMO], FakeScorer(), ScanOptions(min_score=0.0), cache_dir=None, progress=False, base=REPO)
    sarif = json.loads(render(report, "sarif"))
    errors = sorted(validator.iter_errors(sarif), key=str)
    assert not errors, errors[0].message
    run = sarif["runs"][0]
    assert run["tool"]["driver"]["name"] == "vulnsteer" and run["columnKind"] == "unicodeCodePoints"
    assert {r["properties"]["language"] for r in run["results"]} == {
        "c",
        "cpp",
        "java",
        "javascript",
        "typescript",
        "python",
        "go",
    }
    # the demo's README lists each vulnerable function once; each has a fixed twin
    listed = [line for line in (DEMO / "README.md").read_text().splitlines() if line.startswith("| `")]
    assert len(run["results"]) == report.stats.functions == 2 * len(listed)
    assert "uri" not in run["originalUriBaseIds"]["%SRCROOT%"]  # (no absolute path in the log)
    base = report.base
    for result in run["results"]:
        location = result["locations"][0]["physicalLocation"]
        text = (base / location["artifactLocation"]["uri"]).read_text(encoding="utf-8")
        region = Region.from_dict(location["region"])
        code = slice_region(text, region)
        name = result["locations"][0]["logicalLocations"][0]["name"]
        first_line = code.splitlines()[0]
        assert name in first_line or (name.startswith("<callback") and "=>" in first_line)
        if result["properties"]["language"] == "python":
            assert first_line.startswith("def ") and code.endswith(text.splitlines()[region.end_line - 1].strip())
        else:
            assert code.endswith("}") and code.count("{") == code.count("}")
        after = text[len(slice_region(text, Region(1, 1, region.end_line, region.end_column))) :]
        assert after[:1] in ("\n", ")", ";", "")  # the region ends where the function does
        assert result["ruleId"] == run["tool"]["driver"]["rules"][result["ruleIndex"]]["id"]


@needs_grammars
def test_sarif_rules_fingerprints_and_levels(tmp_path: Path) -> None:
    validator = sarif_validator()
    root = _write(tmp_path / "src", {"a.py": PY})
    report = scan([root], FakeScorer(), ScanOptions(min_score=0.1), cache_dir=None, progress=False, base=tmp_path)
    sarif = build_sarif(report)
    assert not list(validator.iter_errors(sarif))
    run = sarif["runs"][0]
    rules = {r["id"]: r for r in run["tool"]["driver"]["rules"]}
    assert set(rules) == {"CWE-78", "vulnerable-function"}
    assert "external/cwe/cwe-78" in rules["CWE-78"]["properties"]["tags"]
    assert rules["CWE-78"]["name"] == "OsCommandInjection"
    levels = {r["locations"][0]["logicalLocations"][0]["name"]: r["level"] for r in run["results"]}
    assert levels == {"risky": "error", "safe": "warning"}
    risky = next(r for r in run["results"] if r["ruleId"] == "CWE-78")
    assert risky["properties"]["score"] == 0.9 and risky["properties"]["detector"] == "fake-1"
    assert "Answer: vulnerable" in risky["message"]["text"]
    assert risky["locations"][0]["physicalLocation"]["artifactLocation"] == {
        "uri": "src/a.py",
        "uriBaseId": "%SRCROOT%",
    }

    # moving the function down keeps its fingerprint; the region follows it
    (root / "a.py").write_text("import os\n\n\n" + PY, encoding="utf-8")
    moved = build_sarif(scan([root], FakeScorer(), ScanOptions(min_score=0.1), cache_dir=None, progress=False))
    moved_risky = next(r for r in moved["runs"][0]["results"] if r["ruleId"] == "CWE-78")
    assert moved_risky["partialFingerprints"][FINGERPRINT_KEY] == risky["partialFingerprints"][FINGERPRINT_KEY]
    start = risky["locations"][0]["physicalLocation"]["region"]["startLine"]
    assert moved_risky["locations"][0]["physicalLocation"]["region"]["startLine"] == start + 3


@needs_grammars
def test_a_file_is_read_by_the_functions_it_does_not_share_with_its_other_version(tmp_path: Path) -> None:
    """Two versions of one file (a vulnerable file and its fix) share what the fix left alone: each file's score
    leaves that function out (``shared_functions`` counts it) and reads the one that tells them apart; a helper
    three files share counts for each; a file whose functions are all shared reads them all; ``all`` reads every
    function. No label is read, and every function is still scored and reported."""
    helper = "def helper(rows):\n    return len(rows)\n\n\n"
    pair_common = "def load(name):\n    return open(name).read()\n\n\n"
    files = {
        "v.py": pair_common + "def run(cmd):\n    return danger(cmd)\n",
        "f.py": pair_common + "def run(cmd):\n    return quote(cmd)\n",
        "a.py": helper + "def first(x):\n    return x\n",
        "b.py": helper + "def second(x):\n    return danger(x)\n",
        "c.py": helper + "def third(x):\n    return x * 2\n",
        "copy1.py": "def same(x):\n    return x - 1\n",
        "copy2.py": "def same(x):\n    return x - 1\n",
    }
    root = _write(tmp_path / "src", files)
    report = scan([root], FakeScorer(), cache_dir=None, progress=False, base=tmp_path)
    found = {Path(f.path).name: f for f in file_scores(report)}
    assert len(report.results) == 2 * 2 + 3 * 2 + 2  # every function is scored and reported
    assert (found["v.py"].score, found["v.py"].functions, found["v.py"].shared) == (0.9, 1, 1)
    assert (found["f.py"].score, found["f.py"].functions, found["f.py"].shared) == (0.2, 1, 1)
    for name in ("a.py", "b.py", "c.py"):  # the helper of three files counts for each
        assert (found[name].functions, found[name].shared) == (2, 0)
    assert found["b.py"].score == pytest.approx(aggregate([0.2, 0.9], "logsumexp"))
    assert (found["copy1.py"].functions, found["copy1.py"].shared) == (1, 0)  # nothing of its own: all read
    records = [json.loads(line) for line in format_jsonl(report).splitlines()]
    by_path = {Path(r["path"]).name: r for r in records if r["type"] == "file"}
    assert (by_path["v.py"]["functions"], by_path["v.py"]["shared_functions"]) == (1, 1)
    every = scan([root], FakeScorer(), ScanOptions(file_functions="all"), cache_dir=None, progress=False)
    whole = {Path(f.path).name: f for f in file_scores(every)}
    assert (whole["v.py"].functions, whole["v.py"].shared) == (2, 0)
    assert whole["v.py"].score == pytest.approx(aggregate([0.2, 0.9], "logsumexp"))
    with pytest.raises(ValueError, match="--file-functions must be one of differing, all"):
        ScanOptions(file_functions="some")


@needs_grammars
def test_json_lines_and_table(tmp_path: Path) -> None:
    root = _write(tmp_path / "src", {"a.py": PY})
    report = scan([root], FakeScorer(), cache_dir=None, progress=False, base=tmp_path)
    lines = [json.loads(line) for line in format_jsonl(report).splitlines()]
    records, files, summary = lines[:-2], lines[-2], lines[-1]
    assert [(r["function"], r["finding"], r["score"]) for r in records] == [("safe", False, 0.2), ("risky", True, 0.9)]
    assert summary["type"] == "summary" and summary["functions"] == 2 and summary["exit_code"] == 1
    # the file's record: its functions' aggregate (logsumexp by default) and the function that leads it
    assert (files["type"], files["path"], files["top_function"], files["functions"]) == ("file", "src/a.py", "risky", 2)
    assert files["aggregation"] == "logsumexp" and files["score"] == pytest.approx(aggregate([0.2, 0.9], "logsumexp"))
    assert 0.2 < files["score"] < 0.9
    assert records[1]["region"] == {"startLine": 5, "startColumn": 1, "endLine": 7, "endColumn": 23}
    table = render(report, "text")
    lines = table.splitlines()
    assert lines[0].split() == ["SCORE", "LEVEL", "CWE", "LOCATION", "FUNCTION"]
    assert lines[1].split() == ["0.90", "error", "CWE-78", "src/a.py:5:1", "risky"]
    assert lines[2].strip() == "| Answer: vulnerable"
    assert len(lines) == 3  # the summary line is not part of the table (the command prints it on stderr)


def test_module_doctests() -> None:
    for module in (cache_module, engine_module, output_module, sarif_module, scorer_module):
        assert doctest.testmod(module).failed == 0
