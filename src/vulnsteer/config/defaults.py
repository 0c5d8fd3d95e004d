"""Defaults shared by the library and every CLI command that has the option (one value per option).

Plain literals, importable without torch, so ``--help`` stays fast.

>>> DEFAULT_MAX_CODE_TOKENS, DEFAULT_MAX_NEW_TOKENS
(512, 20)
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "DEFAULT_AGGREGATION",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_FILE_FUNCTIONS",
    "DEFAULT_LONG_FUNCTIONS",
    "DEFAULT_MAX_CODE_TOKENS",
    "DEFAULT_MAX_NEW_TOKENS",
    "DEFAULT_METHOD",
    "DEFAULT_POOLING",
    "DEFAULT_STEER_POSITIONS",
    "DEFAULT_TOKENS_C",
    "DEFAULT_UNIT",
    "MAX_SHIFT_RATIO",
    "MIN_ADAPT",
    "WARN_ADAPT",
]

#: ``--max-code-tokens``: the code's token budget; lowered to what fits when a model's context is shorter.
DEFAULT_MAX_CODE_TOKENS = 512
#: ``--aggregation``: how a file's functions (and a long function's windows) add up where nothing was chosen on val:
#: the smooth maximum, which never ties two versions of a file that differ in one function (``max`` does).
DEFAULT_AGGREGATION: Final = "logsumexp"
#: ``--long-functions``: code over the token budget, where the changed lines are not known, is read in windows.
DEFAULT_LONG_FUNCTIONS: Final = "windows"
#: ``--file-functions``: a file's score leaves out the functions it shares with exactly one other scored file (its
#: other version's). On the hand-crafted pairs of ``examples/pairs`` whole-file AUROC rose from 0.661 to 0.722; on
#: the OWASP Benchmark's Java servlets, which share helper methods among many files, it moved 0.549 to 0.546
#: (leaving out every shared function instead lost 0.04 there).
DEFAULT_FILE_FUNCTIONS: Final = "differing"
#: ``--max-new-tokens``: tokens generated in generation mode (``Answer: ...`` plus the ``Weakness:`` line).
DEFAULT_MAX_NEW_TOKENS = 20
#: Regularisation strength C of a bag-of-tokens model (:mod:`vulnsteer.stats.lexical`): the control and a
#: probe design's term where it names none.
DEFAULT_TOKENS_C = 1.0
#: ``--batch-size``: prompts per forward pass.
DEFAULT_BATCH_SIZE = 8
#: ``--positions``: token positions steered (the answer position, as ``vulnsteer run`` chooses strengths for).
DEFAULT_STEER_POSITIONS: Final = "last"
#: ``--unit``: strengths as multiples of the layer's mean hidden-state norm (they transfer between models).
DEFAULT_UNIT: Final = "relative"
#: ``--pooling``: where a vector is fitted (the answer position).
DEFAULT_POOLING: Final = "last"
#: ``--method``: how a vector is fitted (the class-mean difference).
DEFAULT_METHOD: Final = "mean_diff"

#: The largest shift a steering spec may apply, as a multiple of the layer's mean hidden-state norm (useful
#: strengths move a hidden state by a fraction of its norm; a hundred times it saturates the layer and the logits
#: carry nothing). A ``relative`` strength is that multiple itself, so it is checked when a config is read.
MAX_SHIFT_RATIO = 100.0

#: The fewest unlabelled inputs an adapted probe re-estimates its centre from (fewer: it refuses and says so). On the
#: leave-one-dataset-out folds of the embedded model, when the adapted threshold was a fixed offset from the centre,
#: 20 inputs gave the flagged share within about +-10 points of the share the whole left-out dataset gives (5
#: inputs: +-20 points); it now flags a fixed share, but the centre, and so the probabilities, still move so.
MIN_ADAPT = 20
#: Below this many inputs an adaptation is made but warned about (its centre, the mean of so few scores, has a
#: standard error of 1/sqrt(n) score spreads: 0.14 at 50).
WARN_ADAPT = 50
