"""The names vulnsteer's options take, declared once (torch-free; every layer may import this module).

Each tuple is the vocabulary of one concept (see the glossary in ``docs/glossary.md``): the configuration's
parsers, the CLI's choices and the library's checks all read these. Where a ``Literal`` type names the same values
for type checkers, a test checks it against the tuple here.

>>> MODES, POOLINGS
(('logit', 'generation'), ('last', 'code_mean', 'code_max'))
"""

from __future__ import annotations

__all__ = [
    "AGGREGATIONS",
    "BACKEND_NAMES",
    "BEHAVIOURS",
    "CHANGE_KINDS",
    "DATASET_FORMATS",
    "DTYPES",
    "DUPLICATE_POLICIES",
    "EXECUTORS",
    "FILE_FUNCTIONS",
    "GATE_KINDS",
    "LENGTH_MODES",
    "LONG_FUNCTIONS",
    "METHOD_NAMES",
    "MODES",
    "OUTPUT_FORMATS",
    "PEERS",
    "POOLINGS",
    "POSITIONS",
    "PROBE_COMBINES",
    "PROBE_KINDS",
    "PROBE_TEMPLATES",
    "QUANTIZATIONS",
    "SCOPES",
    "STRENGTH_UNITS",
    "TRANSFER_CRITERIA",
]

#: The prompt templates a probe design may read its states under (:data:`~vulnsteer.lm.prompts.PROBE_PROMPTS`, the
#: question before the code: its states depend on it): the default question, or one naming the weakness classes.
PROBE_TEMPLATES: tuple[str, ...] = ("default", "weaknesses")
#: Modes: how the model's verdict is read (the answer logits, or the generated answer text).
MODES: tuple[str, ...] = ("logit", "generation")
#: How a hidden state is read from a prompt's tokens: the answer position, the mean or the maximum (per dimension)
#: over the code tokens.
POOLINGS: tuple[str, ...] = ("last", "code_mean", "code_max")
#: The poolings over the code's tokens only: under causal attention they need no token after the code.
CODE_POOLINGS: tuple[str, ...] = ("code_mean", "code_max")
#: When a scan adapts a probe detector to the functions it scores (label-free): from the detector's minimum
#: (``min_adapt``) of distinct functions, always, or never.
ADAPT_MODES: tuple[str, ...] = ("auto", "on", "off")
#: The token positions a steering hook edits.
POSITIONS: tuple[str, ...] = ("last", "answer", "prompt", "generated", "all")
#: How a steering strength is scaled: as written, x the layer's mean hidden-state norm, x the spread along the vector.
STRENGTH_UNITS: tuple[str, ...] = ("raw", "relative", "sigma")
#: Direction methods of a steering vector fitted from secure and vulnerable activations.
METHOD_NAMES: tuple[str, ...] = ("mean_diff", "pca", "logistic")
#: What conditional steering pushes: the answer vector, the unembedding (answer) axis, or a data-derived vector.
BEHAVIOURS: tuple[str, ...] = ("answer", "unembedding", *METHOD_NAMES)
#: Probe kinds: the class-mean difference read as a direction, or logistic regression.
PROBE_KINDS: tuple[str, ...] = ("direction", "logistic")
#: How a probe reading several layers combines them: one probe over their concatenation, or the mean of one probe
#: per layer (each standardised on train).
PROBE_COMBINES: tuple[str, ...] = ("concat", "ensemble")
#: How a probe handles the code's length (log code-token count): not at all, as a covariate in fitting (dropped when
#: scoring), or by residualising every feature on it.
LENGTH_MODES: tuple[str, ...] = ("none", "covariate", "residual")
#: Gates of conditional steering (constant steering has none).
GATE_KINDS: tuple[str, ...] = ("sign", "linear", "one_sided", "calibrated", "toward_secure")
#: What to do with code found in several splits.
DUPLICATE_POLICIES: tuple[str, ...] = ("merge", "drop", "keep")
#: Execution backends of a forward pass.
BACKEND_NAMES: tuple[str, ...] = ("hooks", "nnsight")
#: Where a sweep's chunks are scored.
EXECUTORS: tuple[str, ...] = ("local", "ray")
#: The dataset formats the loaders read (``data.format``, ``--format`` of the data commands).
DATASET_FORMATS: tuple[str, ...] = ("sven", "juliet", "paired-dir", "castle", "owasp", "itc", "jsonl", "csv")
#: What ``scan`` writes (``scan --format``): a table, JSON lines, or SARIF 2.1.0.
OUTPUT_FORMATS: tuple[str, ...] = ("text", "json", "sarif")
#: The weights' dtype (``model.dtype``; ``auto``: bfloat16 on CUDA, float32 on the CPU), short names included.
DTYPES: tuple[str, ...] = ("auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16")
#: Peer static analysers the transfer protocol runs beside the detectors, where installed.
PEERS: tuple[str, ...] = ("cppcheck", "flawfinder", "bandit")
#: What the transfer protocol chooses designs, gates and strengths by (their mean over inner folds).
TRANSFER_CRITERIA: tuple[str, ...] = ("auroc", "balanced_accuracy")
#: How the scores of a sample's pieces (its functions, a long function's windows) add up to the sample's score: a
#: smooth maximum (the default), the highest, the mean of the highest two or three, the mean of all
#: (:mod:`vulnsteer.stats.aggregate`).
AGGREGATIONS: tuple[str, ...] = ("logsumexp", "max", "top2_mean", "top3_mean", "mean")
#: How code longer than the token budget is read where the changed lines are not known (held-out data, scans):
#: in overlapping windows, each scored, aggregated like functions; or its head only.
LONG_FUNCTIONS: tuple[str, ...] = ("windows", "head")
#: Which of a whole file's functions its score reads: ``differing`` leaves out a function that exactly one other
#: scored file also has (what two versions of one file, a vulnerable file and its fix, have in common), where the
#: file has other functions; ``all`` reads every function (:func:`~vulnsteer.stats.aggregate.read_members`).
FILE_FUNCTIONS: tuple[str, ...] = ("differing", "all")
#: What happened to a function between two versions of a file (matched by qualified name; ``renamed``: another
#: name, the same code).
CHANGE_KINDS: tuple[str, ...] = ("changed", "added", "removed", "renamed", "unchanged")
#: How the weights are quantised once loaded (``model.quantize``): not at all, or the decoder blocks' Linear layers to
#: int8 with dynamically quantised activations (CPU only).
QUANTIZATIONS: tuple[str, ...] = ("none", "int8")

#: Where a conditional choice is made: ``pooled`` (one for every CWE: one gating probe fitted on every CWE's train
#: samples, one gated setting chosen on every CWE's val samples together; what a scanner applies without knowing the
#: CWE) or ``per_cwe`` (one per CWE, from that CWE's samples only).
SCOPES = ("pooled", "per_cwe")
