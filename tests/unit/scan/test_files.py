"""Walking: default excludes, .gitignore semantics, include/exclude globs, languages from extension and content."""

from __future__ import annotations

import doctest
from pathlib import Path

import pytest

from vulnsteer.scan import files as files_module
from vulnsteer.scan import gitignore as gitignore_module
from vulnsteer.scan.files import FileFilter, WalkStats, glob_matches, language_of, walk
from vulnsteer.scan.gitignore import pathspec_available

needs_pathspec = pytest.mark.skipif(not pathspec_available(), reason="pathspec not installed")


def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def _walked(root: Path, file_filter: FileFilter | None = None) -> tuple[list[str], WalkStats]:
    stats = WalkStats()
    return [c.rel for c in walk([root], file_filter or FileFilter(), stats)], stats


def test_default_excludes_leave_dependencies_and_build_output_out(tmp_path: Path) -> None:
    root = _tree(
        tmp_path / "repo",
        {
            "src/app.py": "x = 1\n",
            "node_modules/lib/index.js": "x\n",
            "build/gen.c": "int x;\n",
            "vendor/dep.go": "package dep\n",
            ".venv/lib/site.py": "x\n",
            "pkg/__pycache__/m.py": "x\n",
            "web/app.min.js": "x\n",
            "web/app.js": "x\n",
        },
    )
    rels, stats = _walked(root)
    assert rels == ["src/app.py", "web/app.js"]
    assert stats.ignored == 6
    everything, _ = _walked(root, FileFilter(default_excludes=False))
    assert "node_modules/lib/index.js" in everything and "build/gen.c" in everything


@needs_pathspec
def test_gitignore_nested_negation_directory_only_and_anchored(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    (root / ".git").mkdir(parents=True)
    _tree(
        root,
        {
            ".gitignore": "*.gen.c\n/top.py\nout/\n!keep.gen.c\n",
            "top.py": "x\n",
            "sub/top.py": "x\n",
            "a.gen.c": "x\n",
            "keep.gen.c": "x\n",
            "out/x.py": "x\n",
            "sub/out": "not a folder, so out/ does not match it\n",
            "sub/.gitignore": "local.py\n!a.gen.c\n",
            "sub/local.py": "x\n",
            "sub/a.gen.c": "x\n",
            "other/local.py": "x\n",
        },
    )
    rels, stats = _walked(root)
    # extensionless files (.gitignore, sub/out) are candidates too: their content decides their language
    assert rels == [
        ".gitignore",
        "keep.gen.c",
        "other/local.py",
        "sub/.gitignore",
        "sub/a.gen.c",
        "sub/out",
        "sub/top.py",
    ]
    assert stats.ignored == 5  # .git/ (a default exclude), a.gen.c, top.py, out/, sub/local.py
    unfiltered, _ = _walked(root, FileFilter(gitignore=False))
    assert "top.py" in unfiltered and "out/x.py" in unfiltered


@needs_pathspec
def test_gitignore_above_the_scanned_folder_applies(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    (root / ".git" / "info").mkdir(parents=True)
    _tree(root, {".gitignore": "secret_*.py\n", "src/secret_a.py": "x\n", "src/b.py": "x\n", "src/c.py": "x\n"})
    (root / ".git" / "info" / "exclude").write_text("c.py\n", encoding="utf-8")
    rels, _ = _walked(root / "src")
    assert rels == ["b.py"]  # secret_a.py by the .gitignore above, c.py by .git/info/exclude


def test_without_pathspec_gitignore_files_are_reported_unread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gitignore_module, "pathspec_available", lambda: False)
    root = _tree(tmp_path / "repo", {".gitignore": "a.py\n", "a.py": "x\n"})
    rels, stats = _walked(root)
    assert rels == [".gitignore", "a.py"]
    assert stats.gitignore_unread == 1


def test_include_and_exclude_globs(tmp_path: Path) -> None:
    root = _tree(
        tmp_path / "r",
        {"src/a.py": "x\n", "src/b.c": "x\n", "tests/t.py": "x\n", "src/legacy/old.py": "x\n", "gen/x.c": "x\n"},
    )
    rels, _ = _walked(root, FileFilter(include=("*.py",), exclude=("tests", "src/legacy")))
    assert rels == ["src/a.py"]
    rels, _ = _walked(root, FileFilter(exclude=("**/*.c",)))
    assert rels == ["src/a.py", "src/legacy/old.py", "tests/t.py"]
    assert glob_matches("src/*.py", "src/a.py") and not glob_matches("src/*.py", "lib/src/a.py")


def test_unknown_languages_are_skipped_and_counted_and_named_files_always_scanned(tmp_path: Path) -> None:
    root = _tree(tmp_path / "r", {"a.py": "x\n", "notes.md": "x\n", "data.json": "{}\n", "build/b.py": "x\n"})
    rels, stats = _walked(root)
    assert rels == ["a.py"]
    assert stats.skipped["unknown language"] == 2
    named = [c.rel for c in walk([root / "build" / "b.py"], FileFilter(), WalkStats())]
    assert named == ["b.py"]


def test_language_from_extension_and_content() -> None:
    assert language_of(Path("x.cc")) == "cpp"
    assert language_of(Path("x.h"), "int f(void);\n") == "c"
    assert language_of(Path("x.h"), "namespace a { int f(); }\n") == "cpp"
    assert language_of(Path("x.tsx")) == "typescript"
    assert language_of(Path("tool"), "#!/usr/bin/env python3\nprint(1)\n") == "python"
    assert language_of(Path("tool"), "#!/usr/bin/node\n") == "javascript"
    assert language_of(Path("tool"), "plain text\n") is None
    assert language_of(Path("x.txt")) is None


def test_module_doctests() -> None:
    for module in (files_module, gitignore_module):
        assert doctest.testmod(module).failed == 0
