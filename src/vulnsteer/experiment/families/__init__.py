"""The detector families of the protocol, one module each (see :mod:`vulnsteer.experiment.family`).

:data:`DEFAULT_FAMILIES` is what ``vulnsteer run`` / ``sweep`` run, in the order of the lead table: the
calibrated baseline, the best prompt, constant steering, conditional steering, the probe alone, the probe adapted to
the held-out data. It is an
immutable tuple of immutable values; pass another to :func:`~vulnsteer.experiment.protocol.run_protocol` to add or
drop a family (the configuration then says which of them run: :meth:`~vulnsteer.experiment.family.Family.enabled`).

>>> [f.name for f in enabled(DEFAULT_FAMILIES, ExperimentConfig().replace(conditional__enabled=False))]
['calibrated', 'prompt', 'constant']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ...config import ExperimentConfig
from ..family import Family
from .calibrated import CALIBRATED
from .conditional import CONDITIONAL
from .constant import CONSTANT
from .probe import ADAPTED, PROBE
from .prompt import PROMPT

__all__ = ["DEFAULT_FAMILIES", "by_name", "enabled"]

#: Every family of the protocol, in the order the lead table lists them.
DEFAULT_FAMILIES: tuple[Family[Any, Any], ...] = (CALIBRATED, PROMPT, CONSTANT, CONDITIONAL, PROBE, ADAPTED)


def enabled(families: Sequence[Family[Any, Any]], config: ExperimentConfig) -> tuple[Family[Any, Any], ...]:
    """The families *config* runs, in order; refuses two families of one name."""
    names = [f.name for f in families]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"two detector families are named {twice[0]!r}: each family needs its own name")
    return tuple(f for f in families if f.enabled(config))


def by_name(families: Sequence[Family[Any, Any]], name: str) -> Family[Any, Any] | None:
    """The family called *name*, or None."""
    return next((f for f in families if f.name == name), None)
