"""The names vulnsteer's options take, declared once (torch-free; every layer may import this module).

Each tuple is the vocabulary of one concept (see the glossary in ``docs/glossary.md``): the configuration's
parsers, the CLI's choices and the library's checks all read these.

>>> MODES, POOLINGS
(('logit', 'generation'), ('last', 'code_mean'))
"""

from __future__ import annotations

__all__ = [
    "BACKEND_NAMES",
    "BEHAVIOURS",
    "DUPLICATE_POLICIES",
    "EXECUTORS",
    "FORMATS",
    "GATE_KINDS",
    "METHOD_NAMES",
    "MODES",
    "POOLINGS",
    "POSITIONS",
    "PROBES",
    "STRENGTH_UNITS",
]

#: Detector modes: the answer logits, or a generated verdict.
MODES: tuple[str, ...] = ("logit", "generation")
#: How a hidden state is read from a prompt's tokens: the answer position, or the mean over the code tokens.
POOLINGS: tuple[str, ...] = ("last", "code_mean")
#: The token positions a steering hook edits.
POSITIONS: tuple[str, ...] = ("last", "answer", "prompt", "generated", "all")
#: How a steering strength is scaled: as written, x the layer's mean hidden-state norm, x the spread along the vector.
STRENGTH_UNITS: tuple[str, ...] = ("raw", "relative", "sigma")
#: Direction methods of a steering vector fitted from secure and vulnerable activations.
METHOD_NAMES: tuple[str, ...] = ("mean_diff", "pca", "logistic")
#: What conditional steering pushes: the answer-token contrast, the answer axis, or a data-derived vector.
BEHAVIOURS: tuple[str, ...] = ("answer", "unembedding", *METHOD_NAMES)
#: Gating probes: logistic regression, or the class-mean difference.
PROBES: tuple[str, ...] = ("logistic", "direction")
#: Gates of conditional steering (``none`` is constant steering).
GATE_KINDS: tuple[str, ...] = ("sign", "linear", "one_sided")
#: What to do with code found in several splits.
DUPLICATE_POLICIES: tuple[str, ...] = ("merge", "drop", "keep")
#: Execution backends of a forward pass.
BACKEND_NAMES: tuple[str, ...] = ("hooks", "nnsight")
#: Where a sweep's chunks are scored.
EXECUTORS: tuple[str, ...] = ("local", "ray")
#: The dataset formats the loaders read (``data.format``, ``--format``).
FORMATS: tuple[str, ...] = ("sven", "juliet", "paired-dir", "castle", "jsonl", "csv")
