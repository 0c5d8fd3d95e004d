"""Experiments: prepare data, fit per-CWE vectors, evaluate baseline vs steered vs random control.

The engine is a set of small functions that ``vulnsteer run``, ``sweep`` and ``evaluate`` share:

- :func:`prepare_data` loads a dataset (or the bundled corpus), strips comments, truncates token-aware and
  splits by group (pairs never straddle splits);
- :func:`fit_cwe_vectors` records training activations and fits one vector per CWE;
- :func:`run_condition` evaluates one :class:`Condition` (baseline, steered, or control) on one split;
- :func:`select_per_cwe` picks a configuration per CWE on the **validation** split only.

Finished conditions are appended to ``records.jsonl`` in the run directory, so a killed run resumes where it
stopped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..cwe import PRIORITY_CWES, normalize_cwe, parse_merge_map
from ..data.builtin import BUILTIN_NAME, load_builtin
from ..data.clean import strip_comments
from ..data.sample import UPSTREAM_SPLIT_KEY, Sample
from ..data.splits import Splits, dedupe_across_splits, split_samples
from ..data.truncate import truncate_sample
from ..detect.engine import DetectionRecord, PrefixStore, detect_variants_modes
from ..io import append_jsonl, read_jsonl
from ..lm.activations import Activations, ActivationSink, extract_activations
from ..lm.model import LoadedModel, resolve_layers
from ..lm.prompts import DEFAULT_TEMPLATE, PromptTemplate
from ..steer.hooks import POSITION_MODES, STRENGTH_UNITS, SteeringSpec
from ..steer.vectors import METHODS, SteeringVector, fit_vector

__all__ = [
    "MODES",
    "SCHEMA_VERSION",
    "Condition",
    "PreparedData",
    "ResultStore",
    "RunConfig",
    "condition_specs",
    "environment_info",
    "fit_cwe_vectors",
    "prepare_data",
    "run_condition_group",
    "run_conditions",
    "select_per_cwe",
]

SCHEMA_VERSION = 1
MODES: tuple[str, ...] = ("logit", "generation")


#: What :func:`prepare_data` does with code that occurs in more than one split (see ``RunConfig.duplicates``).
DUPLICATE_POLICIES: tuple[str, ...] = ("merge", "drop", "keep")


@dataclass(frozen=True)
class RunConfig:
    """Everything that decides a run's numbers. Stored resolved in ``results.json``."""

    model: str | None = None
    data: str | None = None
    format: str | None = None
    cwes: tuple[str, ...] = ()
    merge_cwe: tuple[str, ...] = ()
    layers: tuple[int, ...] = ()
    position: str = "last"
    method: str = "mean_diff"
    # x the steered layer's mean hidden-state norm (unit vector), both signs: raw mean differences are a few
    # per cent of the hidden norm on small models and move nothing; validation picks the sign and size
    strengths: tuple[float, ...] = (-1.0, -0.3, 0.3, 1.0)
    unit: str = "relative"
    steer_positions: str = "last"
    modes: tuple[str, ...] = MODES
    max_new_tokens: int = 20
    batch_size: int = 8
    seed: int = 0
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    respect_upstream: bool = False
    keep_comments: bool = False
    max_code_tokens: int = 512
    max_pairs_per_cwe: int | None = None
    # duplicates (same code after stripping comments and whitespace) across splits: "merge" puts them in one split
    # group (nothing dropped), "drop" drops val/test copies with their pair partner, "keep" only reports them
    duplicates: str = "merge"
    control_seed: int = 1234
    n_examples: int = 2
    device: str | None = None
    dtype: str | None = None

    def __post_init__(self) -> None:
        for mode in self.modes:
            if mode not in MODES:
                raise ValueError(f"unknown detector mode {mode!r}; choose from {MODES}")
        if self.method not in METHODS:
            raise ValueError(f"unknown vector method {self.method!r}; choose from {sorted(METHODS)}")
        if self.position not in ("last", "code_mean"):
            raise ValueError(f"position must be 'last' or 'code_mean', got {self.position!r}")
        if self.unit not in STRENGTH_UNITS:
            raise ValueError(f"unit must be one of {STRENGTH_UNITS}, got {self.unit!r}")
        if self.steer_positions not in POSITION_MODES:
            raise ValueError(f"steer_positions must be one of {POSITION_MODES}, got {self.steer_positions!r}")
        if len(self.fractions) != 3 or abs(sum(self.fractions) - 1) > 1e-6 or min(self.fractions) < 0:
            raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {self.fractions}")
        if self.duplicates not in DUPLICATE_POLICIES:
            raise ValueError(f"duplicates must be one of {DUPLICATE_POLICIES}, got {self.duplicates!r}")
        if self.max_code_tokens < 32:
            raise ValueError("max_code_tokens must be at least 32")
        object.__setattr__(self, "cwes", tuple(normalize_cwe(c) for c in self.cwes))
        object.__setattr__(self, "strengths", tuple(float(s) for s in self.strengths))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class PreparedData:
    """Cleaned, truncated and split samples, with what was done to them."""

    splits: Splits
    cwes: list[str]
    source: str
    notes: dict[str, Any] = field(default_factory=dict)

    def by_cwe(self, split: str) -> dict[str, list[Sample]]:
        out: dict[str, list[Sample]] = defaultdict(list)
        for s in self.splits.get(split):
            out[s.cwe].append(s)
        return {cwe: out[cwe] for cwe in self.cwes if out.get(cwe)}


def _cap_pairs(samples: Sequence[Sample], max_pairs: int | None, seed: int) -> list[Sample]:
    """Keep at most *max_pairs* pair ids per CWE (chosen by a seeded hash, so the choice is stable)."""
    if not max_pairs:
        return list(samples)
    by_cwe: dict[str, dict[str, list[Sample]]] = defaultdict(lambda: defaultdict(list))
    for s in samples:
        by_cwe[s.cwe][s.pair_id or s.id].append(s)
    kept: list[Sample] = []
    for groups in by_cwe.values():
        ranked = sorted(groups, key=lambda k: hashlib.sha256(f"{seed}:{k}".encode()).hexdigest())
        for key in ranked[:max_pairs]:
            kept.extend(groups[key])
    return kept


def load_dataset(config: RunConfig) -> tuple[list[Sample], str, dict[str, Any]]:
    """Raw samples of the configured dataset (bundled corpus when ``config.data`` is None)."""
    merge = parse_merge_map(list(config.merge_cwe))
    if config.data is None:
        samples = load_builtin(config.cwes or None)
        if merge:
            samples = [dataclasses.replace(s, cwe=merge.get(s.cwe, s.cwe)) for s in samples]
        return samples, BUILTIN_NAME, {}
    from ..data.loaders import LoadReport, load_samples

    report = LoadReport()
    samples = load_samples(config.data, config.format, merge=merge, cwes=config.cwes or None, report=report)
    return samples, str(config.data), dataclasses.asdict(report) if dataclasses.is_dataclass(report) else {}


def prepare_data(
    config: RunConfig, tokenizer: Any | None = None, progress: bool = True, require: Sequence[str] = ()
) -> PreparedData:
    """Load, clean (comments stripped unless ``keep_comments``), truncate to the token budget, and split.

    *require* names splits that must not come out empty (``("val", "test")`` for experiments that choose on val
    and report on test): an empty one is a ``ValueError`` that says how the split was made."""
    samples, source, load_notes = load_dataset(config)
    if not samples:
        raise ValueError(f"no samples loaded from {source}")
    if config.respect_upstream:  # the dataset's own held-out split is kept whole; the cap thins what train/val use
        held = [s for s in samples if s.meta.get(UPSTREAM_SPLIT_KEY) == "val"]
        rest = [s for s in samples if s.meta.get(UPSTREAM_SPLIT_KEY) != "val"]
        samples = _cap_pairs(rest, config.max_pairs_per_cwe, config.seed) + held
    else:
        samples = _cap_pairs(samples, config.max_pairs_per_cwe, config.seed)
    notes: dict[str, Any] = {"load": load_notes, "comments_stripped": not config.keep_comments}
    cleaned: list[Sample] = []
    failed_clean = 0
    changed_clean = 0
    for s in tqdm(samples, desc="cleaning", unit="sample", disable=not progress):
        if not config.keep_comments:
            try:
                code = strip_comments(s.code, s.language)
            except ValueError:
                failed_clean += 1
                code = s.code
            if code != s.code:
                changed_clean += 1
                s = dataclasses.replace(s, code=code)
        if tokenizer is not None:

            def count(text: str) -> int:
                return len(tokenizer(text, add_special_tokens=False)["input_ids"])

            s = truncate_sample(s, count, config.max_code_tokens)
        cleaned.append(s)
    notes["comments_removed_from"] = changed_clean
    notes["comment_strip_unsupported_language"] = failed_clean
    notes["truncated"] = sum(1 for s in cleaned if s.meta.get("truncation", {}).get("truncated"))
    notes["max_code_tokens"] = config.max_code_tokens
    try:
        splits = split_samples(
            cleaned,
            config.fractions,
            seed=config.seed,
            respect_upstream=config.respect_upstream,
            merge_duplicates=config.duplicates == "merge",
        )
    except ValueError as exc:  # name the dataset: the splitter only sees samples
        raise ValueError(f"{source}: {exc}") from None
    if config.duplicates == "drop":
        found = splits.duplicates.as_dict()
        splits = dedupe_across_splits(splits)
        splits = dataclasses.replace(
            splits,
            notes={
                **splits.notes,
                "duplicates_before_dedupe": {k: found[k] for k in ("exact", "normalised", "affected")},
            },
        )
    for name in require:
        if not getattr(splits, name):
            how = (
                "the dataset's upstream val split"
                if name == "test" and config.respect_upstream
                else f"fractions {list(config.fractions)}"
            )
            raise ValueError(
                f"{source}: the {name} split is empty ({len(cleaned)} samples, {how}, "
                f"max_pairs_per_cwe {config.max_pairs_per_cwe}); vectors are fitted on train, "
                "strengths chosen on val and reported on test, so each needs samples"
            )
    present = sorted({s.cwe for s in cleaned}, key=_cwe_order)
    cwes = [c for c in (config.cwes or present) if c in present]
    return PreparedData(splits=splits, cwes=cwes, source=source, notes=notes)


def _cwe_order(cwe: str) -> tuple[int, int]:
    return (PRIORITY_CWES.index(cwe) if cwe in PRIORITY_CWES else len(PRIORITY_CWES), int(cwe.split("-")[1]))


def fit_cwe_vectors(
    lm: LoadedModel,
    train_by_cwe: Mapping[str, Sequence[Sample]],
    layers: Sequence[int],
    *,
    position: str = "last",
    methods: Sequence[str] = ("mean_diff",),
    batch_size: int = 8,
    pooled: bool = False,
    template: PromptTemplate = DEFAULT_TEMPLATE,
    progress: bool = True,
    activations: Activations | None = None,
) -> dict[tuple[str, str], SteeringVector]:
    """One vector per (CWE, method) from training activations (``"any"`` = all CWEs pooled, if asked)."""
    train = [s for samples in train_by_cwe.values() for s in samples]
    acts = activations or extract_activations(
        lm, train, list(layers), positions=[position], batch_size=batch_size, template=template, progress=progress
    )
    index = {sid: i for i, sid in enumerate(acts.sample_ids)}
    groups: dict[str, list[Sample]] = {cwe: list(samples) for cwe, samples in train_by_cwe.items()}
    if pooled:
        groups["any"] = train
    vectors: dict[tuple[str, str], SteeringVector] = {}
    identity = lm.weights_identity
    for cwe, samples in groups.items():
        sub = acts.subset([index[s.id] for s in samples])
        for method in methods:
            vectors[(cwe, method)] = fit_vector(
                sub,
                samples,
                position=position,
                layers=list(layers),
                method=method,
                cwe=cwe,
                model_id=lm.model_id,
                model_fingerprint=lm.fingerprint,
                extra=identity,
            )
    return vectors


@dataclass(frozen=True)
class Condition:
    """One evaluated setting. ``kind`` is ``baseline``, ``steered`` or ``control`` (random direction, same norm)."""

    kind: str
    mode: str
    split: str
    strength: float = 0.0
    layers: tuple[int, ...] = ()
    unit: str = "raw"
    positions: str = "all"
    method: str = "mean_diff"
    vector_cwe: str | None = None  # None: each CWE's own vector
    control_seed: int = 0

    @property
    def setting(self) -> str:
        """What was steered and how, without kind, mode and split: a steered row and its control share it."""
        if self.kind == "baseline":
            return "baseline"
        layers = ",".join(map(str, self.layers))
        return f"{self.method}|L{layers}|{self.unit}:{self.strength:g}|{self.positions}|{self.vector_cwe or 'own'}"

    @property
    def key(self) -> str:
        seed = f"|seed={self.control_seed}" if self.kind == "control" else ""
        return f"{self.kind}|{self.mode}|{self.split}|{self.setting}{seed}"

    def label(self) -> str:
        if self.kind == "baseline":
            return "baseline"
        return f"{self.kind} {self.method} L{','.join(map(str, self.layers))} {self.unit} {self.strength:g}"

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["key"] = self.key
        return data


def control_vector(vector: SteeringVector, seed: int) -> SteeringVector:
    """The random-direction control for *vector* (same norms, same layers), seeded per CWE."""
    digest = int(hashlib.sha256(f"{seed}:{vector.cwe}:{vector.provenance.method}".encode()).hexdigest()[:8], 16)
    return vector.random_like(digest)


def condition_specs(
    condition: Condition, cwe: str, vectors: Mapping[tuple[str, str], SteeringVector]
) -> list[SteeringSpec] | None:
    """The steering specs of *condition* for samples of *cwe* (``[]`` for the baseline, None if no vector)."""
    if condition.kind == "baseline":
        return []
    source = condition.vector_cwe or cwe
    vec = vectors.get((source, condition.method))
    if vec is None:
        return None
    if condition.kind == "control":
        vec = control_vector(vec, condition.control_seed)
    return [
        SteeringSpec(
            vec,
            condition.strength,
            layers=condition.layers or vec.layers,
            positions=condition.positions,  # type: ignore[arg-type]
            unit=condition.unit,  # type: ignore[arg-type]
        )
    ]


def run_condition_group(
    lm: LoadedModel,
    conditions: Sequence[Condition],
    samples_by_cwe: Mapping[str, Sequence[Sample]],
    vectors: Mapping[tuple[str, str], SteeringVector],
    *,
    batch_size: int = 8,
    max_new_tokens: int = 24,
    template: PromptTemplate = DEFAULT_TEMPLATE,
    progress: bool = True,
    sink: ActivationSink | None = None,
    prefix_store: PrefixStore | None = None,
) -> dict[str, list[DetectionRecord]]:
    """Run conditions together: one batched pass over the samples serves every condition and detector mode
    (each row steered with its own CWE's vector; the unsteered prompt prefix shared where positions allow, and
    kept in *prefix_store* for later groups). Returns records by condition key."""
    specs_cache: dict[tuple[str, str], list[SteeringSpec] | None] = {}
    by_variant: dict[str, list[Condition]] = defaultdict(list)
    for cond in conditions:
        by_variant[_variant_key(cond)].append(cond)

    def variant(cond: Condition) -> Callable[[Sample], list[SteeringSpec] | None]:
        def for_sample(sample: Sample) -> list[SteeringSpec] | None:
            key = (_variant_key(cond), sample.cwe)
            if key not in specs_cache:
                specs_cache[key] = condition_specs(cond, sample.cwe, vectors)
            return specs_cache[key]

        return for_sample

    samples = [s for group in samples_by_cwe.values() for s in group]
    modes = sorted({c.mode for c in conditions})
    found = detect_variants_modes(
        lm,
        samples,
        {key: variant(conds[0]) for key, conds in by_variant.items()},
        modes=modes,
        template=template,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        progress=progress,
        desc=f"{'+'.join(modes)} x{len(by_variant)}",
        sink=sink,
        prefix_store=prefix_store,
    )
    return {c.key: found[c.mode][key] for key, conds in by_variant.items() for c in conds}


def _variant_key(cond: Condition) -> str:
    """What a condition steers with, regardless of detector mode."""
    return cond.key.replace(f"|{cond.mode}|", "|", 1)


class ResultStore:
    """Append-only ``records.jsonl``: one line per finished condition, fsynced; a rerun skips what is done."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._done: dict[str, dict[str, Any]] = {}
        for entry in read_jsonl(self.path):
            self._done[entry["condition"]["key"]] = entry

    def __contains__(self, key: str) -> bool:
        return key in self._done

    def get(self, key: str) -> list[DetectionRecord]:
        return [_record_from_dict(r) for r in self._done[key]["records"]]

    def add(self, condition: Condition, records: Sequence[DetectionRecord], seconds: float) -> None:
        entry = {
            "condition": condition.to_dict(),
            "seconds": round(seconds, 3),
            "records": [r.to_dict() for r in records],
        }
        append_jsonl(self.path, entry)
        self._done[condition.key] = entry

    def entries(self) -> list[dict[str, Any]]:
        return list(self._done.values())


def _record_from_dict(data: Mapping[str, Any]) -> DetectionRecord:
    names = {f.name for f in dataclasses.fields(DetectionRecord)}
    return DetectionRecord(**{k: v for k, v in data.items() if k in names})


def run_conditions(
    lm: LoadedModel,
    conditions: Iterable[Condition],
    store: ResultStore,
    samples_for: Callable[[str], Mapping[str, Sequence[Sample]]],
    vectors: Mapping[tuple[str, str], SteeringVector],
    *,
    batch_size: int = 8,
    max_new_tokens: int = 24,
    group_size: int = 16,
    template: PromptTemplate = DEFAULT_TEMPLATE,
    progress: bool = True,
    sink: ActivationSink | None = None,
    prefix_store: PrefixStore | None = None,
) -> dict[str, list[DetectionRecord]]:
    """Run every condition not already in *store*; returns all records by condition key.

    Pending conditions are grouped by split in chunks of at most *group_size*; each chunk shares its forward
    passes (across detector modes too) and is appended to the store as soon as it finishes, so a killed run loses
    at most the chunk in flight. Pass a :class:`~vulnsteer.detect.engine.PrefixStore` (one per model and run) to
    compute each batch's unsteered prompt prefix once for all chunks instead of once per chunk.
    """
    todo = list(conditions)
    pending: dict[str, list[Condition]] = defaultdict(list)
    for cond in todo:
        if cond.key not in store and cond not in pending[cond.split]:
            pending[cond.split].append(cond)
    chunks = [group[i : i + group_size] for group in pending.values() for i in range(0, len(group), group_size)]
    bar = tqdm(total=sum(len(c) for c in chunks), desc="conditions", unit="cond", disable=not progress)
    for chunk in chunks:
        start = time.perf_counter()
        found = run_condition_group(
            lm,
            chunk,
            samples_for(chunk[0].split),
            vectors,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            template=template,
            progress=False,
            sink=sink,
            prefix_store=prefix_store,
        )
        seconds = (time.perf_counter() - start) / len(chunk)
        for cond in chunk:
            store.add(cond, found[cond.key], seconds)
        bar.update(len(chunk))
    bar.close()
    return {cond.key: store.get(cond.key) for cond in todo}


def select_per_cwe(
    candidates: Sequence[Condition],
    metrics_for: Callable[[Condition, str], float | None],
    cwes: Sequence[str],
) -> dict[str, Condition]:
    """Per CWE, the candidate with the best validation score; ties go to the smaller |strength|, then order.

    *metrics_for(condition, cwe)* must read the **validation** split only. Baseline candidates (strength 0)
    take part, so "no steering" wins when nothing beats it.
    """
    chosen: dict[str, Condition] = {}
    for cwe in cwes:
        best: tuple[float, float, int] | None = None
        for order, cond in enumerate(candidates):
            if cond.split != "val":
                raise ValueError(f"selection may only use validation conditions, got {cond.key}")
            value = metrics_for(cond, cwe)
            if value is None:
                continue
            rank = (-value, abs(cond.strength), order)
            if best is None or rank < best:
                best = rank
                chosen[cwe] = cond
    return chosen


def resolve_run_layers(config_layers: Sequence[int], num_layers: int) -> list[int]:
    """The configured layers, or the middle layer by default."""
    return resolve_layers(list(config_layers) or [num_layers // 2], num_layers)


def environment_info() -> dict[str, Any]:
    import numpy
    import torch
    import transformers

    from .. import __version__

    return {
        "vulnsteer": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": numpy.__version__,
        "cuda": torch.cuda.is_available(),
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def json_ready(obj: Any) -> Any:
    """Round-trip through JSON to turn tuples/dataclasses into plain data (for results.json)."""
    return json.loads(json.dumps(obj, default=_plain))


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)
