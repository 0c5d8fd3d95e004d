"""Which functions changed between two versions of a file: matched by qualified name, compared by code.

Functions of the two versions are matched by their qualified name (``Outer.method``, ``ns::A::f``); several
functions of one name in one file (overloads) are matched in the order they appear. A matched pair whose code
differs is ``changed``, one whose code is the same ``unchanged``; a function only in the old version is
``removed``, one only in the new version ``added``, except that a removed and an added function with the same code
(once the old name is written as the new) are one function ``renamed``. The kinds are
:data:`~vulnsteer.config.vocabulary.CHANGE_KINDS`.

>>> old = [("f", "return 1"), ("g", "return 2"), ("h", "return 3")]
>>> new = [("f", "return 1"), ("g", "return 20"), ("k", "return 3"), ("n", "return 4")]
>>> [(c.kind, c.before and c.before[0], c.after and c.after[0]) for c in match_functions(old, new, lambda f: f)]
[('unchanged', 'f', 'f'), ('changed', 'g', 'g'), ('renamed', 'h', 'k'), ('added', None, 'n')]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["Change", "match_functions"]

T = TypeVar("T")


@dataclass(frozen=True)
class Change(Generic[T]):
    """One function across two versions: its kind (``changed``, ``unchanged``, ``added``, ``removed``,
    ``renamed``) and the function before and after (None where it does not exist)."""

    kind: str
    before: T | None
    after: T | None


def match_functions(
    before: Sequence[T], after: Sequence[T], identify: Callable[[T], tuple[str, str]]
) -> list[Change[T]]:
    """The functions of two versions matched (see the module docstring); *identify* gives a function's
    (qualified name, code). In the new version's order, then the removed functions in the old version's order."""
    seen: dict[str, int] = {}
    old_by_key: dict[tuple[str, int], T] = {}
    for item in before:
        name = identify(item)[0]
        old_by_key[(name, seen.get(name, 0))] = item
        seen[name] = seen.get(name, 0) + 1
    seen = {}
    out: list[Change[T]] = []
    added: list[int] = []
    for item in after:
        name, code = identify(item)
        key = (name, seen.get(name, 0))
        seen[name] = seen.get(name, 0) + 1
        match = old_by_key.pop(key, None)
        if match is None:
            added.append(len(out))
            out.append(Change("added", None, item))
        else:
            out.append(Change("changed" if identify(match)[1] != code else "unchanged", match, item))
    removed = list(old_by_key.values())
    for index in added:
        new = out[index].after
        assert new is not None
        name, code = identify(new)
        twin = next((gone for gone in removed if _renamed(identify(gone), (name, code))), None)
        if twin is not None:
            removed.remove(twin)
            out[index] = Change("renamed", twin, new)
    out += [Change("removed", gone, None) for gone in removed]
    return out


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1].rsplit("::", 1)[-1]


def _renamed(old: tuple[str, str], new: tuple[str, str]) -> bool:
    """The same code under another name: equal once the old (short) name is written as the new one."""
    (old_name, old_code), (new_name, new_code) = old, new
    return old_code == new_code or old_code.replace(_short(old_name), _short(new_name)) == new_code
