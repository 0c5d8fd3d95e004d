"""What scores code, declared once: the :class:`ScorerSpec` (the ``[model]`` section, the detection options, and
what steers the model: a vector at one setting, a saved detector folder, or nothing), and the dtype its model loads
in (:func:`choose_dtype`). :class:`~vulnsteer.scan.model_scorer.ModelScorer` scores by a spec; ``vulnsteer detect``
and ``vulnsteer scan`` build the same spec from the same flags. Reading a spec loads no model and no torch.

>>> ScorerSpec(vector=VectorSteering(Path("cwe-89.safetensors"), 0.3)).vector.positions
'last'
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config.defaults import (
    DEFAULT_AGGREGATION,
    DEFAULT_BATCH_SIZE,
    DEFAULT_LONG_FUNCTIONS,
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_STEER_POSITIONS,
    DEFAULT_UNIT,
)
from ..config.sections import ModelSection
from ..config.vocabulary import AGGREGATIONS, LONG_FUNCTIONS
from ..lm.cpu import cpu_runs_bf16
from ..stats.aggregate import check_aggregation

__all__ = [
    "AUTO_DTYPE",
    "DtypeChoice",
    "ScorerSpec",
    "VectorSteering",
    "choose_dtype",
    "detector_aggregation",
]


@dataclass(frozen=True)
class VectorSteering:
    """A steering vector file applied at one setting (``--vector``, ``--strength``, ``--layers``, ``--positions``,
    ``--unit``; see :class:`~vulnsteer.steering.hooks.SteeringSpec`). Positions and unit default as the
    configuration's do.

    >>> VectorSteering(Path("vecs/cwe-89.safetensors"), 0.3).positions, VectorSteering(Path("v"), 1.0).unit
    ('last', 'relative')
    """

    vector: Path
    strength: float
    layers: tuple[int, ...] = ()
    positions: str = DEFAULT_STEER_POSITIONS
    unit: str = DEFAULT_UNIT


@dataclass(frozen=True)
class ScorerSpec:
    """What scores code (see the module docstring): the model, what steers it, and the detection options.

    Attributes:
        model: the ``[model]`` section (:func:`~vulnsteer.lm.model.load_model` loads it).
        vector: a vector at one setting, or None.
        detector: a saved detector folder instead of *vector* (its template replaces the default one): a steering
            detector (:class:`~vulnsteer.detection.detector.SavedDetector`) or a probe detector (:class:`~vulnsteer.
            detection.probe_detector.ProbeDetector`, e.g. the shipped one: its calibrated probe alone scores, the
            model generates only with *explain*).
        allow_model_mismatch: use a vector or detector made with another model.
        explain: also generate the answer text (mode ``generation``): verdict, named CWE and explanation.
        max_new_tokens: ``detection.max_new_tokens``, with *explain*.
        batch_size: ``detection.batch_size``.
        max_code_tokens: ``data.max_code_tokens`` as given (an error if it does not fit the model's context), or
            None: its default, lowered to what fits.
        threshold: P(vulnerable) at which the logit verdict is ``vulnerable``.
        long_functions: ``data.long_functions``: a function over the token budget is scored in ``windows``
            (aggregated by *aggregation*) or by its ``head``.
        aggregation: how a function's windows (and a file's functions) add up
            (:data:`~vulnsteer.config.vocabulary.AGGREGATIONS`); None: what the detector's run chose on val
            (:func:`detector_aggregation`), else ``logsumexp``.
        length_buckets: batch the functions of a call by token count (sorted, then put back in order), so a batch
            pads little; False: in the order given. The scores are the same either way (tested), so the digest
            leaves it out.

    >>> ScorerSpec(max_code_tokens=16)
    Traceback (most recent call last):
    ...
    ValueError: --max-code-tokens must be at least 32, got 16
    """

    model: ModelSection = field(default_factory=ModelSection)
    vector: VectorSteering | None = None
    detector: Path | None = None
    allow_model_mismatch: bool = False
    explain: bool = False
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    batch_size: int = DEFAULT_BATCH_SIZE
    max_code_tokens: int | None = None
    threshold: float = 0.5
    long_functions: str = DEFAULT_LONG_FUNCTIONS
    aggregation: str | None = None
    length_buckets: bool = True

    def __post_init__(self) -> None:
        if self.max_code_tokens is not None and self.max_code_tokens < 32:
            raise ValueError(f"--max-code-tokens must be at least 32, got {self.max_code_tokens}")
        if self.long_functions not in LONG_FUNCTIONS:
            raise ValueError(
                f"--long-functions must be one of {', '.join(LONG_FUNCTIONS)}, got {self.long_functions!r}"
            )
        if self.aggregation is not None:
            check_aggregation(self.aggregation, "--aggregation")
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise ValueError("--batch-size and --max-new-tokens must be positive")
        if self.vector is not None and self.detector is not None:
            raise ValueError("--detector and --vector exclude each other (a detector carries its own vector)")

    @property
    def new_tokens(self) -> int:
        """Tokens generated per function (0 without *explain*)."""
        return self.max_new_tokens if self.explain else 0

    @property
    def resolved_aggregation(self) -> str:
        """:attr:`aggregation`, or the detector's (:func:`detector_aggregation`), else the first of
        :data:`~vulnsteer.config.vocabulary.AGGREGATIONS` (``max``)."""
        if self.aggregation is not None:
            return self.aggregation
        recorded = detector_aggregation(self.detector) if self.detector is not None else None
        return recorded or DEFAULT_AGGREGATION


def _detector_document(folder: Path) -> dict[str, Any]:
    """A detector folder's ``detector.json``, or an empty one when it cannot be read (loading the detector says
    why)."""
    try:
        doc = json.loads((folder / "detector.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def detector_aggregation(folder: Path) -> str | None:
    """How the run that saved the detector in *folder* added up a sample's pieces (``detector.json``'s field
    ``validation.aggregation``), or None when it records none (or the folder cannot be read: loading it says why)."""
    validation = _detector_document(folder).get("validation")
    value = validation.get("aggregation") if isinstance(validation, dict) else None
    return value if value in AGGREGATIONS else None


#: Why a model loads in the ``[model]`` dtype's default (``auto``), in words.
AUTO_DTYPE = "auto: bfloat16 on CUDA, float32 on the CPU"


@dataclass(frozen=True)
class DtypeChoice:
    """The ``[model]`` dtype a scorer loads its model with (None or ``auto``: :func:`~vulnsteer.lm.model.load_model`'s
    default, :data:`AUTO_DTYPE`) and why, in words (the scan's provenance and stderr say it); see
    :func:`choose_dtype`."""

    dtype: str | None
    why: str


def choose_dtype(spec: ScorerSpec, *, native_bf16: bool | None = None) -> DtypeChoice:
    """The dtype *spec*'s model loads in: a probe detector fitted in bfloat16 runs in bfloat16 where the CPU has it.

    An explicit ``--dtype`` wins. Without one (None or ``auto``), a probe detector whose ``detector.json`` records
    ``model.dtype`` bfloat16 (the shipped one), scoring alone (no ``explain``: the model then generates, in auto's
    dtype as before), unquantised (``--quantize int8`` quantises float32 weights), on the CPU (``--device cpu``, or
    no GPU), loads in bfloat16 when the CPU runs it natively (*native_bf16*; None: ask this machine,
    :func:`~vulnsteer.lm.cpu.cpu_runs_bf16`). The shipped detector's early-exit path then ran 1.77x faster than in
    float32, with AUROC 0.762 against 0.760 and a Spearman correlation of 0.998 with the float32 scores (README
    "Scanning code"). Everything else keeps auto (:data:`AUTO_DTYPE`): emulated bfloat16 is slower than float32.
    Only a device left to auto imports torch (to see whether CUDA is there), and only when the rest holds.

    >>> choose_dtype(ScorerSpec()).why  # (no detector: the bare model's answer)
    'auto: bfloat16 on CUDA, float32 on the CPU'
    >>> choose_dtype(ScorerSpec(model=ModelSection(dtype="float16")))
    DtypeChoice(dtype='float16', why='--dtype')
    """
    model = spec.model
    if model.dtype not in (None, "auto"):
        return DtypeChoice(model.dtype, "--dtype")
    auto = DtypeChoice(model.dtype, AUTO_DTYPE)
    if spec.detector is None or not _is_probe_detector(spec.detector):
        return auto
    recorded = _detector_document(spec.detector).get("model")
    if not isinstance(recorded, dict) or recorded.get("dtype") != "bfloat16" or model.remote or model.device_map:
        return auto
    if spec.explain:
        return DtypeChoice(model.dtype, f"{AUTO_DTYPE}; --explain generates, so not the detector's bfloat16")
    if model.quantize != "none":
        return DtypeChoice(model.dtype, f"{AUTO_DTYPE}; --quantize {model.quantize} quantises float32 weights")
    if not (cpu_runs_bf16() if native_bf16 is None else native_bf16):
        return DtypeChoice(model.dtype, f"{AUTO_DTYPE}; this CPU has no native bf16, so not the detector's bfloat16")
    if model.device in (None, "", "auto"):
        from ..lm.model import resolve_device

        on_cpu = resolve_device(model.device) == "cpu"
    else:
        on_cpu = str(model.device).split(":")[0] == "cpu"
    if not on_cpu:
        return auto
    return DtypeChoice("bfloat16", "the detector's dtype; this CPU has native bf16")


def _is_probe_detector(folder: Path) -> bool:
    from ..detection.probe_detector import is_probe_detector

    return is_probe_detector(folder)
