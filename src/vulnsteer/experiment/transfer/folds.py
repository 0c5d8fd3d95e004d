"""The folds of the transfer protocol: every dataset left out in turn, and, inside each, every other one.

An **outer fold** leaves one dataset out: everything is fitted and chosen on the others, then applied unchanged to
every sample of it. An **inner fold** of an outer fold leaves one more dataset out of the remaining ones: choices
for the outer fold (probe design, gate, strength) are made by their mean over its inner folds (nested), so the
outer fold's data reaches no choice.

>>> [f.key for f in outer_folds(["a", "b", "c"])]
['a', 'b', 'c']
>>> [(f.key, f.training) for f in inner_folds(["a", "b", "c"], "a")]
[('a/b', ('c',)), ('a/c', ('b',))]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Fold", "inner_folds", "outer_folds"]


@dataclass(frozen=True)
class Fold:
    """One dataset left out (*left_out*), fitted and chosen on *training*; *outer*: for an inner fold, the outer
    fold's left-out dataset (which the inner fold neither fits on nor scores)."""

    left_out: str
    training: tuple[str, ...]
    outer: str | None = None

    def __post_init__(self) -> None:
        if not self.training:
            raise ValueError(f"fold {self.key}: no dataset left to fit on (the protocol needs at least 3 datasets)")
        if self.left_out in self.training or (self.outer is not None and self.outer in self.training):
            raise ValueError(f"fold {self.key}: a left-out dataset is among the training datasets")

    @property
    def key(self) -> str:
        """``sven`` (outer) or ``sven/juliet-c`` (the inner fold of outer fold sven that leaves juliet-c out)."""
        return self.left_out if self.outer is None else f"{self.outer}/{self.left_out}"

    @property
    def is_inner(self) -> bool:
        return self.outer is not None


def outer_folds(names: Sequence[str]) -> list[Fold]:
    """One fold per dataset, fitted on all the others."""
    return [Fold(name, tuple(n for n in names if n != name)) for name in names]


def inner_folds(names: Sequence[str], outer: str) -> list[Fold]:
    """The folds of the datasets other than *outer*: each left out in turn, fitted on the rest (never on *outer*)."""
    rest = [n for n in names if n != outer]
    return [Fold(name, tuple(n for n in rest if n != name), outer) for name in rest]
