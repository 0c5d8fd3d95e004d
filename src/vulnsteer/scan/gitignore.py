""".gitignore semantics for walking a tree: nested ``.gitignore`` files, ``.git/info/exclude``, negation,
directory-only and anchored patterns (matching by ``pathspec``'s ``GitIgnoreSpec``, an optional dependency).

Precedence follows git: within one file the last matching pattern wins, a deeper ``.gitignore`` overrides a
shallower one, and a file inside an ignored directory stays ignored (the walker does not enter the directory).
The ``.gitignore`` files above the scanned folder, up to the repository's top (the folder holding ``.git``),
apply too.

>>> import tempfile, pathlib
>>> top = pathlib.Path(tempfile.mkdtemp())
>>> _ = (top / ".gitignore").write_text("*.log\\n!keep.log\\nbuild/\\n")
>>> rules = IgnoreRules(top)
>>> [rules.ignored(top / name, is_dir) for name, is_dir in [("a.log", False), ("keep.log", False), ("build", True)]]
[True, False, True]
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

__all__ = ["IgnoreRules", "find_repository_top", "pathspec_available"]


def pathspec_available() -> bool:
    """True when ``pathspec`` imports (``pip install 'vulnsteer[scan]'``).

    >>> isinstance(pathspec_available(), bool)
    True
    """
    try:
        importlib.import_module("pathspec")
    except ImportError:
        return False
    return True


def find_repository_top(path: Path) -> Path | None:
    """The nearest folder at or above *path* holding ``.git`` (a folder or a worktree's file), or None.

    >>> find_repository_top(Path("/")) is None or (find_repository_top(Path("/")) / ".git").exists()
    True
    """
    current = path if path.is_dir() else path.parent
    for folder in (current, *current.parents):
        if (folder / ".git").exists():
            return folder
    return None


class IgnoreRules:
    """The ignore rules that apply under *root*; call :meth:`enter` for each folder the walk reaches.

    Without ``pathspec`` nothing is ignored and :attr:`available` is False (the caller reports it).

    >>> IgnoreRules(Path(".")).ignored(Path(".").resolve() / ".git", is_dir=True)  # doctest: +SKIP
    False
    """

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        #: per folder, its rule files in order (``.git/info/exclude`` first at the top) with their patterns
        self._specs: dict[Path, list[tuple[Path, Any]]] = {}
        self._entered: set[Path] = set()
        self._module: Any = None
        self.available = pathspec_available()
        #: ``.gitignore`` files read so far (the caller warns when there are some but pathspec is missing).
        self.files_seen = 0
        if self.available:
            self._module = importlib.import_module("pathspec")
        top = find_repository_top(self.root)
        if top is not None:
            # .git/info/exclude first: the top .gitignore's patterns come after it and win over it
            self._load(top, top / ".git" / "info" / "exclude")
            chain = [self.root, *self.root.parents]
            for folder in reversed(chain[: chain.index(top) + 1]):
                self.enter(folder)
        else:
            self.enter(self.root)

    def _load(self, folder: Path, file: Path) -> None:
        try:
            lines = file.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:  # absent or unreadable: no rules
            return
        self.files_seen += 1
        if self._module is None:
            return
        self._specs.setdefault(folder, []).append((file, self._module.GitIgnoreSpec.from_lines(lines)))

    def enter(self, folder: Path) -> None:
        """Read ``folder/.gitignore`` (once)."""
        folder = folder.resolve()
        if folder in self._entered:
            return
        self._entered.add(folder)
        if (folder / ".gitignore").is_file():
            self._load(folder, folder / ".gitignore")

    def ignored(self, path: Path, is_dir: bool) -> bool:
        """Whether git would ignore *path* (a file, or a folder when *is_dir*)."""
        return self.ignored_by(path, is_dir) is not None

    def ignored_by(self, path: Path, is_dir: bool) -> Path | None:
        """The rule file (a ``.gitignore`` or ``.git/info/exclude``) that makes git ignore *path*, or None when git
        would not ignore it."""
        if not self._specs:
            return None
        path = path if path.is_absolute() else path.resolve()
        verdict: Path | None = None
        for folder in reversed(path.parents):
            for file, spec in self._specs.get(folder, ()):
                rel = path.relative_to(folder).as_posix() + ("/" if is_dir else "")
                result = spec.check_file(rel)
                if result.include is not None:
                    verdict = file if result.include else None
        return verdict
