"""Diff mode (``vulnsteer diff``): only the functions that changed, scored before and after, between two files,
two folders or two git revisions; table, JSON lines and schema-valid SARIF; exit codes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from checks import sarif_validator
from toys import FakeScorer
from vulnsteer.cli import main
from vulnsteer.data.changes import match_functions
from vulnsteer.data.functions import tree_sitter_available
from vulnsteer.scan import ScanOptions
from vulnsteer.scan.diff import DiffError, DiffReport, diff, git_versions, path_versions
from vulnsteer.scan.output import render_diff

needs_grammars = pytest.mark.skipif(not tree_sitter_available(), reason="tree-sitter-language-pack not installed")
needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")

OLD = """import os


def load(name):
    return open(name).read()


def run(cmd):
    return cmd.strip()


def old_helper(x):
    return x + 1


def same_code_new_name(x):
    return x * 2
"""
NEW = """import os


def load(name):
    # a comment only: the cleaned code is the same, so load is unchanged
    return open(name).read()


def run(cmd):
    os.system("danger " + cmd)


def renamed(x):
    return x * 2


def fresh(cmd):
    os.system("danger " + cmd)
"""


def _diff(versions: Any, scorer: FakeScorer, **options: Any) -> DiffReport:
    return diff(versions, scorer, ScanOptions(**options), ("old", "new"), cache_dir=None, progress=False)


def test_functions_are_matched_by_name_and_compared_by_code() -> None:
    old = [("f", "return 1"), ("g", "return 2"), ("h", "return 3"), ("g", "return 4")]
    new = [("g", "return 2"), ("f", "return 10"), ("g", "return 40"), ("k", "return 3")]
    found = [(c.kind, c.before, c.after) for c in match_functions(old, new, lambda f: f)]
    assert found == [
        ("unchanged", ("g", "return 2"), ("g", "return 2")),  # overloads matched in the order they appear
        ("changed", ("f", "return 1"), ("f", "return 10")),
        ("changed", ("g", "return 4"), ("g", "return 40")),
        ("renamed", ("h", "return 3"), ("k", "return 3")),
    ]


@needs_grammars
def test_two_files_only_changed_functions_are_scored(tmp_path: Path) -> None:
    (tmp_path / "old.py").write_text(OLD)
    (tmp_path / "new.py").write_text(NEW)
    scorer = FakeScorer()
    report = _diff(path_versions(tmp_path / "old.py", tmp_path / "new.py", ScanOptions()), scorer)
    kinds = {(c.kind, c.current.name) for c in report.changes}
    assert kinds == {("changed", "run"), ("renamed", "renamed"), ("added", "fresh"), ("removed", "old_helper")}
    assert report.unchanged == 1 and report.files == 1  # load: a comment changed, its cleaned code did not
    assert not any("open(name)" in code for code in scorer.scored)  # the unchanged function was never scored
    run = next(c for c in report.changes if c.current.name == "run")
    assert run.before is not None and run.after is not None
    assert (run.before.score.score, run.after.score.score, run.riskier) == (0.2, 0.9, True)
    assert run.delta == pytest.approx(0.7)
    assert [c.current.name for c in report.riskier] == ["run"]
    renamed = next(c for c in report.changes if c.kind == "renamed")
    assert renamed.before is not None and renamed.before.name == "same_code_new_name" and renamed.delta == 0
    # exit code: the riskier function and the new one reach --fail-on (0.5 by default); above 0.95 nothing does
    assert report.exit_code == 1 and "2 changed or added function(s)" in report.failures()[0]
    assert _diff(path_versions(tmp_path / "old.py", tmp_path / "new.py", ScanOptions()), FakeScorer(),
                 fail_on=0.95).exit_code == 0  # fmt: skip

    # JSON lines: one record per change, then the summary
    lines = [json.loads(line) for line in render_diff(report, "json").splitlines()]
    changes, summary = lines[:-1], lines[-1]
    by_name = {r["function"]: r for r in changes}
    assert by_name["run"]["score_before"] == 0.2 and by_name["run"]["score_after"] == 0.9 and by_name["run"]["riskier"]
    assert by_name["fresh"]["before"] is None and by_name["fresh"]["after"]["line"] == 17
    assert by_name["old_helper"]["after"] is None and by_name["old_helper"]["change"] == "removed"
    assert (summary["changed"], summary["added"], summary["removed"], summary["renamed"]) == (1, 1, 1, 1)
    assert (summary["unchanged"], summary["riskier"], summary["exit_code"]) == (1, 1, 1)

    # the table: the riskier change first
    table = render_diff(report, "text").splitlines()
    assert table[0].split() == ["BEFORE", "AFTER", "DELTA", "CHANGE", "LOCATION", "FUNCTION"]
    assert table[1].split()[:5] == ["0.20", "0.90", "+0.70", "changed", "riskier"] and table[1].endswith("run")
    assert table[-1].split()[:3] == ["0.20", "-", "removed"]
    assert any(line.endswith("same_code_new_name -> renamed") for line in table)


@needs_grammars
def test_diff_sarif_is_schema_valid_and_says_before_and_after(tmp_path: Path) -> None:
    validator = sarif_validator()
    (tmp_path / "old.py").write_text(OLD)
    (tmp_path / "new.py").write_text(NEW)
    report = _diff(path_versions(tmp_path / "old.py", tmp_path / "new.py", ScanOptions()), FakeScorer())
    sarif = json.loads(render_diff(report, "sarif"))
    errors = sorted(validator.iter_errors(sarif), key=str)
    assert not errors, errors[0].message
    results = sarif["runs"][0]["results"]
    assert [r["properties"]["change"] for r in results] == ["changed", "added", "renamed"]  # removed: no place now
    first = results[0]
    assert first["properties"]["scoreBefore"] == 0.2 and first["properties"]["scoreAfter"] == 0.9
    assert "0.20 -> 0.90 (+0.70): this change made it riskier" in first["message"]["text"]
    assert first["level"] == "error" and first["ruleId"] == "CWE-78"
    assert first["locations"][0]["physicalLocation"]["region"]["startLine"] == 9
    assert sarif["runs"][0]["properties"]["summary"]["removed"] == 1


@needs_grammars
def test_two_folders(tmp_path: Path) -> None:
    old, new = tmp_path / "v1", tmp_path / "v2"
    for root in (old, new):
        (root / "pkg").mkdir(parents=True)
        (root / "pkg" / "same.py").write_text("def same():\n    return 1\n")
    (old / "pkg" / "mod.py").write_text(OLD)
    (new / "pkg" / "mod.py").write_text(NEW)
    (old / "gone.py").write_text("def gone():\n    return 0\n")
    (new / "added.py").write_text("def brand_new():\n    os.system('danger')\n")
    versions = path_versions(old, new, ScanOptions())
    assert len(versions) == 3  # same.py has the same bytes in both: not read
    report = _diff(versions, FakeScorer())
    names = {(c.kind, c.current.name, c.current.path) for c in report.changes if c.kind in ("added", "removed")}
    assert names == {
        ("added", "fresh", os.path.relpath(new / "pkg" / "mod.py").replace(os.sep, "/")),
        ("added", "brand_new", os.path.relpath(new / "added.py").replace(os.sep, "/")),
        ("removed", "old_helper", os.path.relpath(old / "pkg" / "mod.py").replace(os.sep, "/")),
        ("removed", "gone", os.path.relpath(old / "gone.py").replace(os.sep, "/")),
    }
    with pytest.raises(DiffError, match="two files or two folders"):
        path_versions(old, new / "added.py", ScanOptions())


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@e", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}  # fmt: skip
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, f"git {' '.join(args)} exited {done.returncode}: {done.stderr.strip()}"
    return done.stdout.strip()


@needs_grammars
@needs_git
def test_git_range_and_work_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    _git(repo, "init", "-q")
    (repo / "src" / "mod.py").write_text(OLD)
    (repo / "src" / "moved.py").write_text("def keep():\n    return 1\n\n\ndef edit(x):\n    return x\n")
    (repo / "README.md").write_text("not code\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "v1")
    (repo / "src" / "mod.py").write_text(NEW)
    (repo / "src" / "moved.py").rename(repo / "src" / "renamed_file.py")
    (repo / "src" / "renamed_file.py").write_text(
        "def keep():\n    return 1\n\n\ndef edit(x):\n    return x\n\n\ndef extra():\n    return 2\n"
    )
    (repo / "README.md").write_text("still not code\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "v2")
    monkeypatch.chdir(repo)
    options = ScanOptions()
    versions, old, new = git_versions("HEAD~1", "HEAD", [], repo, options)
    assert len(versions) == 2 and len(old) == 12 and new == _git(repo, "rev-parse", "HEAD")[:12]  # README: no code
    report = _diff(versions, FakeScorer())
    kinds = sorted((c.kind, c.current.name) for c in report.changes)
    assert kinds == [
        ("added", "extra"),
        ("added", "fresh"),
        ("changed", "run"),
        ("removed", "old_helper"),
        ("renamed", "renamed"),
    ]  # fmt: skip  (the renamed file: keep and edit are unchanged)
    assert report.unchanged == 3
    run = next(c for c in report.changes if c.current.name == "run")
    assert run.before is not None and run.before.path == f"src/mod.py@{old}" and run.after is not None
    assert run.after.path == f"src/mod.py@{new}"
    # the work tree against HEAD, restricted to a path
    (repo / "src" / "mod.py").write_text(NEW.replace('os.system("danger " + cmd)', "return cmd", 1))
    versions, _, label = git_versions("HEAD", None, [repo / "src"], repo, options)
    assert label == "the work tree" and len(versions) == 1
    report = _diff(versions, FakeScorer())
    assert [(c.kind, c.current.name, c.current.path, c.delta) for c in report.changes] == [
        ("changed", "run", "src/mod.py", pytest.approx(-0.7))
    ]
    assert report.exit_code == 0 and not report.riskier
    with pytest.raises(DiffError, match="--base nope: not a commit"):
        git_versions("nope", None, [], repo, options)
    with pytest.raises(DiffError, match="not in a git repository"):
        git_versions("HEAD", None, [tmp_path], repo, options)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: Any) -> Path:
    from conftest import make_tiny

    folder = tmp_path_factory.mktemp("diff-model") / "tiny"
    make_tiny(tiny_tokenizer, "qwen2", layers=2).model.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


@needs_grammars
def test_diff_command(tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    monkeypatch.setenv("VULNSTEER_CACHE", str(tmp_path / "vcache"))
    (tmp_path / "old.py").write_text(OLD)
    (tmp_path / "new.py").write_text(NEW)
    model = ["--model", str(model_dir), "--device", "cpu", "--max-code-tokens", "64"]
    out = tmp_path / "diff.jsonl"
    code = main(["--no-progress", "diff", str(tmp_path / "old.py"), str(tmp_path / "new.py"), "-o", str(out),
                 "--fail-on", "1", *model])  # fmt: skip
    assert code == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["function"] for r in records[:-1]} == {"run", "renamed", "fresh", "old_helper"}
    run = next(r for r in records if r.get("function") == "run")
    assert 0 <= run["score_before"] <= 1 and 0 <= run["score_after"] <= 1
    assert run["delta"] == pytest.approx(run["score_after"] - run["score_before"])
    assert "1 function(s) changed" in capsys.readouterr().err
    for args, message in [
        ([str(tmp_path / "old.py")], "diff needs OLD NEW"),
        (["--head", "HEAD", "a", "b"], "--head needs --base"),
        ([str(tmp_path / "old.py"), str(tmp_path)], "two files or two folders"),
    ]:
        assert main(["--no-progress", "diff", *args, *model]) == 2
        assert message in capsys.readouterr().err
