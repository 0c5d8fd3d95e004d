"""The configuration keys, declared once per section: default, parser, help text and command-line flag.

:mod:`vulnsteer.config.experiment` assembles them into :class:`~vulnsteer.config.experiment.ExperimentConfig`.

>>> DetectionSection().max_new_tokens, ConditionalSection().gates
(20, ('toward_secure',))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .defaults import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_FILE_FUNCTIONS,
    DEFAULT_LONG_FUNCTIONS,
    DEFAULT_MAX_CODE_TOKENS,
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_METHOD,
    DEFAULT_POOLING,
    DEFAULT_STEER_POSITIONS,
    DEFAULT_TOKENS_C,
    DEFAULT_UNIT,
    MIN_ADAPT,
)
from .design import ProbeDesign
from .values import (
    Parser,
    as_strings,
    boolean,
    cwe_list,
    each_of,
    fractions,
    integer,
    layer_sets,
    merge_list,
    model_name,
    non_negative,
    non_negative_numbers,
    one_of,
    optional_one_of,
    optional_str,
    pairs_cap,
    pairs_caps,
    path_list,
    path_value,
    pooling_sets,
    positive_numbers,
    probe_designs,
    remote_option,
    some_of,
    strength_list,
    switches,
)
from .vocabulary import (
    AGGREGATIONS,
    BACKEND_NAMES,
    BEHAVIOURS,
    DATASET_FORMATS,
    DTYPES,
    DUPLICATE_POLICIES,
    EXECUTORS,
    FILE_FUNCTIONS,
    GATE_KINDS,
    LENGTH_MODES,
    LONG_FUNCTIONS,
    METHOD_NAMES,
    MODES,
    PEERS,
    POOLINGS,
    POSITIONS,
    PROBE_COMBINES,
    PROBE_KINDS,
    PROBE_TEMPLATES,
    QUANTIZATIONS,
    SCOPES,
    TRANSFER_CRITERIA,
)

__all__ = [
    "DEFAULT_CONDITIONAL_STRENGTHS",
    "DEFAULT_STRENGTHS",
    "EXPERIMENT_SECTIONS",
    "SECTIONS",
    "BaselinesSection",
    "ConditionalSection",
    "DataSection",
    "DetectionSection",
    "Key",
    "ModelSection",
    "ReportSection",
    "RunSection",
    "SteeringSection",
    "TransferSection",
    "VectorsSection",
]

# ------------------------------------------------------------------------------------------------ declarations


@dataclass(frozen=True)
class Key:
    """One configuration key: where it lives, its default, parser, help text and command-line flag."""

    section: str
    name: str
    default: Any
    parse: Parser
    help: str
    flag: str | None = None
    #: how the CLI reads the flag: ``str``, ``int``, ``float``, ``bool`` (a switch), ``csv`` (comma-separated
    #: words), ``floats`` (comma-separated numbers), ``repeat`` (repeatable), ``layers`` (repeatable layer set),
    #: ``nobool`` (a switch that sets the key to false)
    cli: str = "str"
    #: False for keys that say where and how fast, not what: a run directory may be resumed with them changed
    identity: bool = True

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.name}"


def _key(
    default: Any, parse: Parser, help: str, flag: str | None = None, cli: str = "str", identity: bool = True
) -> Any:
    return field(default=default, metadata={"key": (parse, help, flag, cli, identity)})


@dataclass(frozen=True)
class ModelSection:
    """``[model]``: which model, on which device."""

    name: str | None = _key(
        None,
        model_name,
        "Hugging Face id, local directory or .gguf file (absent: the embedded SmolLM2-135M-Instruct)",
        "--model",
    )
    # Not part of a run's identity as written: the device type and dtype the model resolved to are (in the model
    # key), so ``--device cpu`` resumes a run started without ``--device`` on a CPU machine.
    device: str | None = _key(
        None, optional_str, "cpu, cuda, cuda:1 ... (absent: cuda if available)", "--device", identity=False
    )
    dtype: str | None = _key(
        None,
        optional_one_of(DTYPES),
        "the weights' dtype: auto (bf16 on CUDA, fp32 on CPU; scan, detect and diff scored by a probe detector "
        "fitted in bf16: bf16 on a CPU with native bf16), float32, bfloat16, float16 (or fp32, bf16, fp16)",
        "--dtype",
    )
    quantize: str = _key(
        "none",
        one_of(QUANTIZATIONS),
        "none, or int8: the decoder blocks' Linear layers quantised to int8 with activations quantised on the fly "
        "(CPU and float32 weights only; faster, and the numbers differ slightly: a different model identity)",
        "--quantize",
    )
    device_map: str | None = _key(
        None, optional_str, "passed to from_pretrained, e.g. 'auto' to spread a large model over GPUs", "--device-map"
    )
    trust_remote_code: bool = _key(
        False, boolean, "allow model repositories to run their own code", "--trust-remote-code", "bool"
    )
    layers_path: str | None = _key(
        None,
        optional_str,
        "dotted attribute path of the decoder blocks, for an architecture vulnsteer does not know (e.g. "
        "transformer.blocks; absent: found automatically)",
        "--layers-path",
    )
    # Not part of a run's identity: both backends give the same numbers on the same device and dtype (tested), so a
    # run may be resumed with the other one. ``remote`` is: another machine is another device.
    backend: str = _key(
        "hooks",
        one_of(BACKEND_NAMES),
        "how steered and recorded passes run: hooks (PyTorch forward hooks) or nnsight (nnsight tracing "
        "contexts; pip install 'vulnsteer[nnsight]')",
        "--backend",
        identity=False,
    )
    remote: bool | str = _key(
        False,
        remote_option,
        "with backend nnsight: run every pass on an NDIF server (true; NDIF_API_KEY and NDIF_HOST configure it), "
        "on the host at this URL, or 'local' to simulate the remote path here (false: run here)",
        "--remote",
    )


@dataclass(frozen=True)
class DataSection:
    """``[data]``: which samples, how they are cleaned, and how they are split."""

    path: str | None = _key(
        None, path_value, "dataset file or folder, relative to the config file (absent: the bundled corpus)", "--data"
    )
    format: str | None = _key(
        None, optional_one_of(DATASET_FORMATS), f"{', '.join(DATASET_FORMATS)} (absent: detected)", "--format"
    )
    paths: tuple[str, ...] = _key(
        (),
        path_list,
        'several datasets trained on together, each split by its own groups ("builtin" = the bundled corpus; '
        "relative to the config file); instead of path",
        "--datasets",
        "csv",
    )
    formats: tuple[str, ...] = _key(
        (),
        each_of((*DATASET_FORMATS, "builtin")),
        "the format of each of paths, in order (empty: detected)",
        "--dataset-formats",
        "csv",
    )
    cwes: tuple[str, ...] = _key((), cwe_list, "CWEs to use (empty: every CWE in the data)", "--cwe", "repeat")
    merge: tuple[str, ...] = _key((), merge_list, 'treat CWE FROM as TO, e.g. ["77=78"]', "--merge-cwe", "repeat")
    fractions: tuple[float, float, float] = _key(
        (0.6, 0.2, 0.2), fractions, "train, val, test fractions (split by pair/group)", "--fractions", "floats"
    )
    seed: int = _key(0, integer(0), "split seed", "--seed", "int")
    respect_upstream: bool = _key(
        False,
        boolean,
        "keep the dataset's own train/val split (its val becomes test)",
        "--respect-upstream-split",
        "bool",
    )
    max_pairs_per_cwe: int | None = _key(
        None,
        pairs_cap,
        "cap pairs per CWE, seeded choice (0: no cap; with "
        "respect_upstream the upstream val split, i.e. test, is not capped)",
        "--max-pairs-per-cwe",
        "int",
    )
    duplicates: str = _key(
        "merge",
        one_of(DUPLICATE_POLICIES),
        "code in several splits: merge (one split group, "
        "nothing dropped), drop (val/test copies and their partners), keep (report only)",
        "--duplicates",
    )
    max_code_tokens: int = _key(
        DEFAULT_MAX_CODE_TOKENS,
        integer(32),
        "token budget for the code (longer code is truncated token-aware)",
        "--max-code-tokens",
        "int",
    )
    keep_comments: bool = _key(False, boolean, "keep comments (they can leak the label)", "--keep-comments", "bool")
    long_functions: str = _key(
        DEFAULT_LONG_FUNCTIONS,
        one_of(LONG_FUNCTIONS),
        "code over the token budget where the changed lines are not known (held-out splits, other datasets, scans): "
        "windows (overlapping windows of the budget, each scored, aggregated like functions) or head (its head "
        "only); training data keeps its diff-centred truncation",
        "--long-functions",
    )
    file_functions: str = _key(
        DEFAULT_FILE_FUNCTIONS,
        one_of(FILE_FUNCTIONS),
        "which of a whole file's functions its score reads where several files are scored together (held-out "
        "splits, other datasets, scans): differing (leave out a function exactly one other file also has, as two "
        "versions of one file share what a fix left alone, where the file has other functions) or all",
        "--file-functions",
    )


@dataclass(frozen=True)
class VectorsSection:
    """``[vectors]``: how steering vectors are fitted on the train split."""

    methods: tuple[str, ...] = _key(
        (DEFAULT_METHOD,), some_of(METHOD_NAMES), "direction methods: mean_diff, pca, logistic", "--method", "csv"
    )
    pooling: tuple[str, ...] = _key(
        (DEFAULT_POOLING,),
        some_of(POOLINGS),
        "activation pooling the vectors are fitted at: last (answer position), code_mean",
        "--pooling",
        "csv",
    )
    pooled: bool = _key(
        False, boolean, "also fit and select a pooled 'any weakness' vector over all CWEs", "--pooled-vector", "bool"
    )


#: ``vulnsteer run``'s candidate strengths (x the layer's mean hidden-state norm, both signs: raw mean differences
#: are a few per cent of the hidden norm on small models and move nothing; validation picks sign and size).
DEFAULT_STRENGTHS: tuple[tuple[str, float], ...] = tuple((DEFAULT_UNIT, s) for s in (-1.0, -0.3, 0.3, 1.0))


@dataclass(frozen=True)
class SteeringSection:
    """``[steering]``: the candidate settings (layer sets x strengths x positions)."""

    layers: tuple[tuple[int, ...], ...] = _key(
        (),
        layer_sets,
        "single layers and layer sets, e.g. [[10], [15], "
        "[10, 15]]; negatives count from the end ([]: the middle layer)",
        "--layers",
        "layers",
    )
    strengths: tuple[tuple[str, float], ...] = _key(
        DEFAULT_STRENGTHS,
        strength_list,
        "{raw = [...], relative = [...]}; positive = toward 'vulnerable'",
        "--strengths",
        "floats",
    )
    positions: tuple[str, ...] = _key(
        (DEFAULT_STEER_POSITIONS,),
        some_of(POSITIONS),
        "token positions steered: last, answer, prompt, generated, all",
        "--positions",
        "csv",
    )
    control_seed: int = _key(1234, integer(0), "seed of the random-direction controls", "--control-seed", "int")


@dataclass(frozen=True)
class DetectionSection:
    """``[detection]``: the modes (how the verdict is read) and how each one's setting is chosen."""

    modes: tuple[str, ...] = _key(
        MODES, some_of(MODES), "modes (how the verdict is read): logit and/or generation", "--modes", "csv"
    )
    select_generation_by: str = _key(
        "logit",
        one_of(MODES),
        "whose validation results choose the generation "
        "setting: logit (generation then runs on test only) or generation",
        "--select-generation-by",
    )
    cross_cwe_modes: tuple[str, ...] = _key(
        ("logit",),
        some_of(MODES, empty=True),
        "modes in which each CWE's chosen vector is also applied to every other CWE's test samples (cross-CWE matrix)",
        "--cross-cwe-modes",
        "csv",
    )
    max_new_tokens: int = _key(
        DEFAULT_MAX_NEW_TOKENS, integer(1), "generation mode: tokens to generate", "--max-new-tokens", "int"
    )
    aggregations: tuple[str, ...] = _key(
        AGGREGATIONS,
        some_of(AGGREGATIONS),
        "how the scores of a sample's pieces (a whole file's functions, a long function's windows) add up to its "
        "score: the candidates, one chosen on val (best mean AUROC over the val conditions) where val has samples "
        "of several pieces, else the first",
        "--aggregations",
        "csv",
    )
    # Not part of a run's identity: rows are exact under left padding (tested against one sample at a time), so a
    # run that ran out of memory resumes with a smaller batch.
    batch_size: int = _key(
        DEFAULT_BATCH_SIZE, integer(1), "samples per forward pass", "--batch-size", "int", identity=False
    )


#: Conditional steering's default strengths: x the spread of the training activations along the behaviour vector
#: (a push of a few spreads flips the embedded model's answer; validation picks the size).
DEFAULT_CONDITIONAL_STRENGTHS: tuple[tuple[str, float], ...] = tuple(("sigma", s) for s in (2.0, 4.0, 8.0))


@dataclass(frozen=True)
class ConditionalSection:
    """``[conditional]``: steering gated, per input, by a probe read from the prompt's own hidden states."""

    enabled: bool = _key(
        True, boolean, "score conditional (probe-gated) settings beside the constant ones", "--no-conditional", "nobool"
    )
    behaviours: tuple[str, ...] = _key(
        ("answer",),
        some_of(BEHAVIOURS),
        "what to push: answer (the answer-token "
        "contrast, no labels), unembedding (the answer axis), or a data-derived "
        "vector at the answer position (mean_diff, pca, logistic)",
        "--behaviours",
        "csv",
    )
    probe: str = _key(
        "logistic", one_of(PROBE_KINDS), "the gating probe: logistic or direction (mean difference)", "--probe"
    )
    pooling: tuple[str, ...] = _key(
        ("code_mean",),
        some_of(POOLINGS),
        "where the probe reads the prompt: code_mean (mean over the code tokens) or last (answer position)",
        "--probe-pooling",
        "csv",
    )
    layers: tuple[tuple[int, ...], ...] = _key(
        (),
        layer_sets,
        "condition layers the probe reads (each at or below "
        "the steered layers; []: each steered layer set's lowest layer)",
        "--condition-layers",
        "layers",
    )
    designs: tuple[ProbeDesign, ...] = _key(
        (),
        probe_designs,
        "gating probe designs as tables (layers, poolings, kind, C, combine, pairs, length, per_dataset, tokens; "
        "every layer at or below the steered layers; tokens adds a bag-of-tokens term on the prompt's code text), "
        "instead of probe x pooling x layers",
    )
    scope: str = _key(
        "pooled",
        one_of(SCOPES),
        "one probe over every CWE (pooled, what a scanner can use) or one per CWE",
        "--probe-scope",
    )
    select: str = _key(
        "per_cwe",
        one_of(SCOPES),
        "the gated setting chosen on val per CWE (per_cwe: each CWE's val samples alone) or one setting for every "
        "CWE (pooled: chosen on every CWE's val samples together, the saved detector's setting; every CWE is then "
        "read on one scale)",
        "--conditional-select",
    )
    gates: tuple[str, ...] = _key(
        ("toward_secure",),
        some_of(GATE_KINDS),
        "gates: sign, linear (ACT-like: the push follows the probe's score), one_sided, calibrated (the push follows "
        "the calibrated probability), toward_secure (the default: every input pushed toward secure by the probe's "
        "probability that it is secure, so the push never changes direction; the transfer protocol chose it over "
        "linear, which it had chosen over sign and calibrated)",
        "--gates",
        "csv",
    )
    positions: tuple[str, ...] = _key(
        ("last",),
        some_of(POSITIONS),
        "token positions the gated push is added at: last (the answer position, where the verdict's first token is "
        "predicted) or answer (it and every generated token; equal to last in logit mode, so only generation-mode "
        "validation, select_generation_by = generation, can choose between them)",
        "--conditional-positions",
        "csv",
    )
    strengths: tuple[tuple[str, float], ...] = _key(
        DEFAULT_CONDITIONAL_STRENGTHS,
        strength_list,
        "{sigma = [...], relative = [...], raw = [...]}: the push before the gate's sign and scale",
        "--conditional-strengths",
        "floats",
    )
    min_adapt: int = _key(
        MIN_ADAPT,
        integer(1),
        "the adapted probe's fewest unlabelled inputs to re-estimate its centre from (fewer: it does not adapt, and "
        "says so)",
    )
    band: float = _key(
        0.5,
        non_negative,
        "one_sided gate: push only where |score - threshold| > band x the probe's val spread",
        "--gate-band",
        "float",
    )


@dataclass(frozen=True)
class BaselinesSection:
    """``[baselines]``: what a constant shift or another prompt achieves without steering."""

    templates: tuple[str, ...] = _key(
        ("strict", "one_shot"),
        some_of(("strict", "one_shot"), empty=True),
        "prompting baselines chosen on val with the default prompt: strict (answer "
        "secure unless the weakness can be named), one_shot (a train pair shown "
        "first)",
        "--baseline-templates",
        "csv",
    )
    calibrated: bool = _key(
        True,
        boolean,
        "the calibrated baseline: the unsteered answer margin with a threshold chosen on val",
        "--no-calibrated",
        "nobool",
    )


@dataclass(frozen=True)
class ReportSection:
    """``[report]``: what the report adds beyond the lead tables."""

    probes: bool = _key(
        True,
        boolean,
        "probe detectors (the vector and a logistic probe read as classifiers, and "
        "their length-only control) on the val/test activations",
        "--no-probes",
        "nobool",
    )
    n_examples: int = _key(2, integer(0), "example generations per CWE in the report", "--examples", "int")


@dataclass(frozen=True)
class RunSection:
    """``[run]``: where results go and how the work is chunked and cached (none of it changes a number)."""

    out: str | None = _key(
        None, path_value, "run directory (rerun to resume; absent: runs/<name>-<timestamp>)", "--out", identity=False
    )
    group_size: int = _key(
        16,
        integer(1),
        "conditions per saved chunk (a kill loses at most one chunk)",
        "--group-size",
        "int",
        identity=False,
    )
    prefix_cache_mib: int = _key(
        2048,
        integer(0),
        "memory for prompt-prefix KV caches kept between chunks, MiB (0: recompute per chunk)",
        "--prefix-cache-mib",
        "int",
        identity=False,
    )
    cache: bool = _key(True, boolean, "use the on-disk activation cache", identity=False)
    cache_dir: str | None = _key(
        None, path_value, "activation cache folder (absent: <cache root>/activations)", "--cache-dir", identity=False
    )
    controls_on_val: bool = _key(
        True, boolean, "random controls for every candidate on val too (the selection curves' control lines)"
    )
    executor: str = _key(
        "local",
        one_of(EXECUTORS),
        "where chunks are scored: local (this process) or ray (a pool of Ray workers, each with its own copy of "
        "the model; pip install 'vulnsteer[ray]')",
        "--executor",
        identity=False,
    )
    ray_address: str | None = _key(
        None,
        optional_str,
        "Ray cluster to join: auto (the cluster `ray start --head` started on this machine) or HOST:PORT "
        "(absent: start a local Ray instance for this run)",
        "--ray-address",
        identity=False,
    )
    ray_workers: int = _key(
        0,
        integer(0),
        "Ray workers, each loading the model once (0: one per ray_gpus_per_worker GPUs of the cluster, or 1 "
        "on a cluster without GPUs)",
        "--ray-workers",
        "int",
        identity=False,
    )
    ray_gpus_per_worker: float | None = _key(
        None,
        non_negative,
        "GPUs each Ray worker holds (e.g. 2 for a model spread with device_map = 'auto'; 0: CPU workers, which "
        "share the cluster's CPUs; absent: 1 on a cluster with GPUs, else 0)",
        "--ray-gpus-per-worker",
        "float",
        identity=False,
    )


@dataclass(frozen=True)
class TransferSection:
    """``[transfer]``: the leave-one-dataset-out protocol (``vulnsteer transfer``): the probe designs it chooses
    from (the grid of these lists, and ``designs``), how it chooses, and the peers it runs beside. The steered
    detector's candidates are ``[conditional]``'s behaviours, gates, strengths and positions."""

    layers: tuple[tuple[int, ...], ...] = _key(
        ((18,), (10, 14, 18), (6, 10, 14, 18, 22)), layer_sets, "layer sets a probe design reads (the grid)"
    )
    poolings: tuple[tuple[str, ...], ...] = _key(
        (("code_mean",), ("code_mean", "code_max")), pooling_sets, "pooling sets a probe design reads (the grid)"
    )
    probes: tuple[str, ...] = _key(("logistic",), some_of(PROBE_KINDS), "probe kinds (the grid)")
    C: tuple[float, ...] = _key((0.001, 0.01), positive_numbers, "logistic probes' regularisation C (the grid)")
    combine: tuple[str, ...] = _key(
        ("concat", "ensemble"), some_of(PROBE_COMBINES), "several layers: concat or per-layer ensemble (the grid)"
    )
    pairs: tuple[bool, ...] = _key((False,), switches, "pair-difference training off and/or on (the grid)")
    length: tuple[str, ...] = _key(
        ("none", "covariate"), some_of(LENGTH_MODES), "length handling: none, covariate, residual (the grid)"
    )
    per_dataset: tuple[bool, ...] = _key(
        (False,), switches, "standardise each training dataset on its own: off and/or on (the grid)"
    )
    tokens: tuple[float, ...] = _key(
        (0.0,),
        non_negative_numbers,
        "weights of a bag-of-tokens term added to the probe (TF-IDF of the code's tokens, logistic, at this many "
        "times the probe's val spread; 0: none; the grid)",
    )
    tokens_C: tuple[float, ...] = _key(
        (DEFAULT_TOKENS_C,),
        positive_numbers,
        "the bag-of-tokens term's regularisation C (designs with a term; the grid)",
    )
    templates: tuple[str, ...] = _key(
        ("default",),
        some_of(PROBE_TEMPLATES),
        "the prompts a probe design reads its states under (the question before the code; the grid): default, "
        "weaknesses (the question names the weakness classes); each is one more extraction of every dataset. "
        "Probe designs only: the steered model asks the default question, so other templates need steered = false",
    )
    designs: tuple[ProbeDesign, ...] = _key((), probe_designs, "more probe designs as tables, beside the grid")
    select_by: str = _key(
        "auroc",
        one_of(TRANSFER_CRITERIA),
        "what designs, gates and strengths are chosen by: their mean over the inner folds of auroc or "
        "balanced_accuracy",
    )
    max_pairs_per_cwe: tuple[int | None, ...] = _key(
        (),
        pairs_caps,
        "a pair cap per CWE for each of data.paths, in order (0: no cap; empty: data.max_pairs_per_cwe for all)",
    )
    folds: tuple[str, ...] = _key(
        (),
        as_strings,
        "the outer folds to run, by the name of the dataset each leaves out (a path's file or folder name, or "
        '"builtin"); empty: every dataset. Each still chooses on all of its inner folds',
    )
    steered: bool = _key(True, boolean, "score the steered model (the chosen probe gating the push) on every fold")
    gate_adapted: tuple[bool, ...] = _key(
        (False,),
        switches,
        "gate the steered model with the probe as fitted (false) and/or adapted to the inputs it gates (true: its "
        "centre from the left-out dataset's unlabelled inputs, as the adapted row); chosen on the inner folds",
    )
    peers: tuple[str, ...] = _key(
        PEERS, some_of(PEERS, empty=True), "peer analysers run beside the detectors where installed"
    )
    n_boot: int = _key(1000, integer(10), "bootstrap replicates of every interval")

    @property
    def other_prompts(self) -> tuple[str, ...]:
        """The prompt templates other than the default that its designs read (the grid's and ``designs``'), sorted.

        >>> TransferSection(templates=("default", "weaknesses")).other_prompts, TransferSection().other_prompts
        (('weaknesses',), ())
        """
        return tuple(sorted(({d.template for d in self.designs} | set(self.templates)) - {"default"}))


SECTIONS: dict[str, type] = {
    "model": ModelSection,
    "data": DataSection,
    "vectors": VectorsSection,
    "steering": SteeringSection,
    "detection": DetectionSection,
    "conditional": ConditionalSection,
    "baselines": BaselinesSection,
    "report": ReportSection,
    "run": RunSection,
    "transfer": TransferSection,
}

#: The sections the experiment protocol (``run``, ``sweep``, ``evaluate``) reads: ``[transfer]`` is the transfer
#: protocol's, so it is not part of their runs' identity.
EXPERIMENT_SECTIONS: tuple[str, ...] = tuple(name for name in SECTIONS if name != "transfer")
