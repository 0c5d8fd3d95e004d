"""The transfer protocol: leave each dataset out in turn (:mod:`~vulnsteer.experiment.transfer.run`)."""

from __future__ import annotations

from .folds import Fold, inner_folds, outer_folds
from .results import TransferResults
from .run import run_transfer

__all__ = ["Fold", "TransferResults", "inner_folds", "outer_folds", "run_transfer"]
