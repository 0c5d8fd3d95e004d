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
    "printable",
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


def printable(path: str | os.PathLike[str]) -> str:
    """A path as text that can be printed and written to UTF-8 files: the bytes of a name that is not valid UTF-8
    (which Python keeps as lone surrogates) are shown as ``\\xNN`` escapes.

    >>> printable(os.fsdecode(b"src/caf\\xe9.c"))
    'src/caf\\\\xe9.c'
    """
    return os.fsencode(path).decode("utf-8", "backslashreplace")


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
        outputs: files the scan itself writes (its ``-o``, resolved): never read as input, nor counted as skipped.
    """

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    default_excludes: bool = True
    gitignore: bool = True
    outputs: frozenset[Path] = frozenset()

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
    """What a walk left out: ``ignored`` (excludes, include globs, ``.gitignore``; ``ignored_by`` counts the files
    each ``.gitignore`` left out), ``skipped`` (reason -> files, e.g. ``unknown language``) and ``named``: the
    files and folders not read that a user should hear of by name (``path: reason``), such as a symbolic link
    whose target lies outside the scanned folder.

    >>> WalkStats().skipped["binary"]
    0
    """

    ignored: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    gitignore_unread: int = 0
    ignored_by: Counter[str] = field(default_factory=Counter)
    named: list[str] = field(default_factory=list)


#: Why a symbolic link in a walked folder is not read (its target is outside the folder scanned).
OUTSIDE = "symbolic link out of the scanned folder"
#: Why a symbolic link to a folder is not entered.
LINKED_FOLDER = "symbolic link to a folder (not followed)"


def _outside(path: Path, root: Path) -> bool:
    """Whether the symbolic link *path* resolves outside the (resolved) *root*, or does not resolve."""
    try:
        target = path.resolve(strict=True)
    except (OSError, RuntimeError):  # dangling or looping
        return True
    return target != root and root not in target.parents


def _left_out(
    rel: str, is_dir: bool, file_filter: FileFilter, rules: IgnoreRules | None, root: Path, stats: WalkStats
) -> bool:
    """Whether the walk leaves *rel* (a path under *root*) out: excluded, not included, or ignored by git (each
    counted in *stats*, with the ignore file that decided)."""
    if file_filter.excluded(rel) or (not is_dir and not file_filter.included(rel)):
        stats.ignored += 1
        return True
    by = rules.ignored_by(root / rel, is_dir) if rules is not None else None
    if by is not None:
        stats.ignored += 1
        stats.ignored_by[str(by)] += 1
        return True
    return False


def walk(paths: Sequence[Path], file_filter: FileFilter, stats: WalkStats) -> Iterator[SourceCandidate]:
    """The files under *paths*, in a stable (sorted) order. A path naming a file is always scanned; in folders,
    nothing outside the folder is read: symbolic links to folders are not followed, and a symbolic link to a file
    is read only when its target lies inside the folder (the others are counted and named in *stats*).

    >>> stats = WalkStats()
    >>> [c.rel for c in walk([Path(__file__).parent], FileFilter(include=("sarif.py",)), stats)]
    ['sarif.py']
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
                if _left_out(rel, True, file_filter, rules, absolute, stats):
                    continue
                if (here / name).is_symlink():  # (os.walk does not enter it; its target is not read)
                    outside = _outside(here / name, absolute)
                    stats.skipped[OUTSIDE if outside else LINKED_FOLDER] += 1
                    if outside:
                        stats.named.append(f"{printable(here / name)}: {OUTSIDE} (not followed)")
                    continue
                kept_dirs.append(name)
            dirs[:] = kept_dirs
            for name in sorted(files):
                rel = (rel_here / name).as_posix()
                if _left_out(rel, False, file_filter, rules, absolute, stats):
                    continue
                path = here / name
                if file_filter.outputs and path.resolve() in file_filter.outputs:
                    continue  # this scan's own output (an earlier run of the same command wrote it)
                if path.is_symlink() and _outside(path, absolute):
                    stats.skipped[OUTSIDE] += 1
                    stats.named.append(f"{printable(path)}: {OUTSIDE} (not read)")
                    continue
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
