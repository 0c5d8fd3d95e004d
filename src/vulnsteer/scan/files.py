"""Finding the files to scan and reading them: walking folders (default excludes, ``.gitignore``, include and
exclude globs), the language from the extension and the content, and decoding with
:func:`vulnsteer.data.text.read_source`.

>>> language_of(Path("app.py")), language_of(Path("lib.h"), "class A { };"), language_of(Path("run"), "#!/bin/sh")
('python', 'cpp', 'bash')
>>> language_of(Path("README.md")) is None
True
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..data.clean import LANGUAGE_ALIASES, canonical_language
from .gitignore import IgnoreRules

__all__ = [
    "DEFAULT_EXCLUDES",
    "SCAN_LANGUAGES",
    "FileFilter",
    "SourceCandidate",
    "WalkStats",
    "glob_matches",
    "language_of",
    "walk",
]

#: Folder and file names left out of a walk unless ``--no-default-excludes``: version control, dependencies,
#: build output, virtual environments and caches, minified JavaScript.
DEFAULT_EXCLUDES: tuple[str, ...] = (
    ".git",
    ".hg",
    ".svn",
    "node_modules",
    "bower_components",
    "vendor",
    "third_party",
    "third-party",
    "build",
    "dist",
    "target",
    ".venv",
    "venv",
    "site-packages",
    "__pycache__",
    ".tox",
    ".nox",
    ".eggs",
    "*.egg-info",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
    ".gradle",
    ".next",
    ".idea",
    "*.min.js",
)

#: Languages scanned (the languages :mod:`vulnsteer.data.clean` names); anything else is skipped and counted.
SCAN_LANGUAGES: frozenset[str] = frozenset(LANGUAGE_ALIASES.values())

_SHEBANGS: tuple[tuple[str, str], ...] = (
    ("python", "python"),
    ("node", "javascript"),
    ("deno", "typescript"),
    ("ts-node", "typescript"),
    ("ruby", "ruby"),
    ("php", "php"),
    ("bash", "bash"),
    ("zsh", "bash"),
    ("sh", "bash"),
)
_CPP_HEADER = re.compile(r"^\s*(?:class|namespace|template\s*<|using\s+namespace)\b|std::", re.MULTILINE)


def language_of(path: Path, head: str | None = None) -> str | None:
    """The language of a file from its extension, refined by its first characters *head* (a ``.h`` header with
    C++ constructs is C++; a file without an extension is read by its ``#!`` line); None when unknown."""
    if path.suffix:
        language = canonical_language(path.suffix)
        if language == "c" and path.suffix.lower() == ".h" and head is not None and _CPP_HEADER.search(head):
            return "cpp"
        return language if language in SCAN_LANGUAGES else None
    if head is None or not head.startswith("#!"):
        return None
    first = head.splitlines()[0]
    words = re.split(r"[\s/]+", first[2:].strip())
    for word in reversed(words):
        for prefix, language in _SHEBANGS:
            if re.fullmatch(rf"{re.escape(prefix)}[\d.]*", word):
                return language
    return None


def glob_matches(pattern: str, rel: str) -> bool:
    """Whether a ``--include``/``--exclude`` glob matches a path relative to the scanned folder (POSIX form).

    A pattern without ``/`` matches any path component (``tests``, ``*.min.js``); one with ``/`` matches the path
    from the scanned folder on (``src/legacy/*``, ``**/gen/*.c``), a folder's pattern covering what is inside it.

    >>> glob_matches("*.py", "src/a.py"), glob_matches("tests", "tests/a.c"), glob_matches("src/*.c", "lib/src/a.c")
    (True, True, False)
    """
    pattern = pattern.strip()
    if "/" not in pattern.rstrip("/"):
        return any(fnmatch.fnmatchcase(part, pattern.rstrip("/")) for part in rel.split("/"))
    pattern = pattern.strip("/")
    if pattern.startswith("**/"):
        pattern = pattern[3:]
        candidates = ["/".join(rel.split("/")[i:]) for i in range(len(rel.split("/")))]
    else:
        candidates = [rel]
    parts_of = [c.split("/") for c in candidates]
    prefixes = ["/".join(parts[:k]) for parts in parts_of for k in range(1, len(parts) + 1)]
    return any(fnmatch.fnmatchcase(p, pattern) for p in prefixes)


@dataclass(frozen=True)
class FileFilter:
    """What a walk leaves out.

    >>> FileFilter(include=("*.py",)).included("src/a.py"), FileFilter().excluded("node_modules/x.js")
    (True, True)

    Attributes:
        include: globs a file must match (any one) to be scanned; empty = all files.
        exclude: globs that leave files and folders out (see :func:`glob_matches`).
        default_excludes: leave out :data:`DEFAULT_EXCLUDES`.
        gitignore: honour ``.gitignore`` files.
    """

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    default_excludes: bool = True
    gitignore: bool = True

    def excluded(self, rel: str) -> bool:
        patterns = (*self.exclude, *(DEFAULT_EXCLUDES if self.default_excludes else ()))
        return any(glob_matches(p, rel) for p in patterns)

    def included(self, rel: str) -> bool:
        return not self.include or any(glob_matches(p, rel) for p in self.include)


@dataclass(frozen=True)
class SourceCandidate:
    """A file to read: its path, its path relative to the folder it was found in, and its language from the
    extension (None for a file without one, decided from its content).

    >>> SourceCandidate(Path("src/a.py"), "a.py", "python").language
    'python'
    """

    path: Path
    rel: str
    language: str | None


@dataclass
class WalkStats:
    """Counts of what a walk left out: ``ignored`` (excludes, include globs, ``.gitignore``) and ``skipped``
    (reason -> files, e.g. ``unknown language``).

    >>> WalkStats().skipped["binary"]
    0
    """

    ignored: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    gitignore_unread: int = 0


def walk(paths: Sequence[Path], file_filter: FileFilter, stats: WalkStats) -> Iterator[SourceCandidate]:
    """The files under *paths*, in a stable (sorted) order. A path naming a file is always scanned; folders are
    walked without following symbolic links to folders.

    >>> stats = WalkStats()
    >>> [c.rel for c in walk([Path(__file__).parent], FileFilter(include=("region.py",)), stats)]
    ['region.py']
    """
    for root in paths:
        if root.is_file():
            yield SourceCandidate(root, root.name, language_of(root) if root.suffix else None)
            continue
        absolute = root.resolve()
        rules = IgnoreRules(absolute) if file_filter.gitignore else None
        for folder, dirs, files in os.walk(root, followlinks=False):
            here = Path(folder)
            rel_here = here.relative_to(root)
            if rules is not None:
                rules.enter(absolute / rel_here)
            kept_dirs = []
            for name in sorted(dirs):
                rel = (rel_here / name).as_posix()
                if file_filter.excluded(rel) or (rules is not None and rules.ignored(absolute / rel, True)):
                    stats.ignored += 1
                    continue
                kept_dirs.append(name)
            dirs[:] = kept_dirs
            for name in sorted(files):
                rel = (rel_here / name).as_posix()
                if (
                    file_filter.excluded(rel)
                    or not file_filter.included(rel)
                    or (rules is not None and rules.ignored(absolute / rel, False))
                ):
                    stats.ignored += 1
                    continue
                path = here / name
                if not path.is_file():
                    stats.skipped["not a regular file"] += 1
                    continue
                language = language_of(path) if path.suffix else None
                if path.suffix and language is None:
                    stats.skipped["unknown language"] += 1
                    continue
                yield SourceCandidate(path, rel, language)
        if rules is not None and not rules.available:
            stats.gitignore_unread += rules.files_seen
