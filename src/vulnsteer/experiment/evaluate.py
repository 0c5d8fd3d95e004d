"""Evaluating settings chosen elsewhere: ``vulnsteer evaluate --from RUN`` and ``vulnsteer evaluate --vectors DIR``.

Nothing is selected here. ``--from`` applies a run's choices (per mode and CWE, chosen on that run's validation
split; the baseline where the baseline won) unchanged to every sample of another dataset; ``--vectors`` applies
saved vectors at a strength the user gives to one split (as the constant family's choice). Both go through the apply
engine (:func:`~vulnsteer.experiment.apply.apply_families`), so their rows have the test phase's shape: per family
baseline vs chosen vs controls, CIs, McNemar p-values, the pooled vector and the cross-CWE matrix, and the lead
table. ``--from`` re-applies every family that kept its choices in the run's ``chosen/`` folder. A model whose
architecture or weights differ from the vectors' is refused unless mismatches are allowed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from ..config import ExperimentConfig, VectorsSection, config_document, identity_of, parse_config
from ..config.sections import EXPERIMENT_SECTIONS
from ..data.sample import Sample, dataset_hash
from ..data.units import Units
from ..io import write_json
from ..lm.activation_cache import ActivationCache
from ..lm.activations import Activations
from ..lm.identity import check_same_model
from ..lm.memory import peak_memory
from ..lm.model import LoadedModel, load_model
from ..lm.prompts import DEFAULT_TEMPLATE
from .apply import apply_families
from .chosen import ChosenFile, load_chosen
from .engine import ResultStore, ScoringOptions
from .families import DEFAULT_FAMILIES, by_name
from .families.constant import CONSTANT
from .families.setting import SettingChoices
from .family import Artefacts, Family, HeldOut, merge_artefacts
from .fit import load_vector_dir
from .grid import POOLED, Setting, resolve_layer_sets
from .header import DataInfo, DataNotes, PiecesInfo, SplitsInfo
from .preflight import check_before_loading
from .prepare import PreparedData, load_dataset, prepare_data
from .protocol import default_out_dir
from .ray_executor import open_executor
from .results import Results, new_results
from .rundir import CHOSEN_DIR, RunDir
from .select import Choice

__all__ = ["check_run_model", "evaluate_from_run", "evaluate_vectors", "transfer_config"]


def check_run_model(chosen: ChosenFile, where: str, lm: LoadedModel, allow_mismatch: bool) -> list[str]:
    """Refuse a model that is not the run's (:func:`~vulnsteer.lm.identity.check_same_model`, naming *where*, the
    run's ``chosen.json``); returns the warnings that remain when mismatches are allowed."""
    recorded = chosen.model.identity
    warnings = check_same_model(recorded, lm.identity, where, allow=allow_mismatch)
    if not recorded.weights_digest:
        warnings.append(f"{where}: records no weights digest: only the architecture was checked")
    return warnings


def transfer_config(run_dir: str | Path, overrides: Mapping[str, tuple[Any, str]]) -> ExperimentConfig:
    """The run's own configuration with *overrides* (``"data.path"`` etc., as from CLI flags) applied. The run's
    cleaning keys (token budget, comments) stay; which dataset and which of its samples come from *overrides*
    only, and every sample is evaluated (no split, so ``data.duplicates`` is ``keep``)."""
    chosen = load_chosen(run_dir)
    doc = {k: dict(v) if isinstance(v, dict) else v for k, v in chosen.config.items()}
    data = doc.get("data", {})
    doc["data"] = {k: data[k] for k in ("max_code_tokens", "keep_comments") if k in data} | {"duplicates": "keep"}
    doc["run"] = {k: v for k, v in dict(doc.get("run") or {}).items() if k != "out"}  # (the run's own folder)
    return parse_config(doc, f"{run_dir}/{CHOSEN_DIR}/chosen.json", overrides)


def _files_digest(folder: Path) -> str:
    """A digest of the vector files in *folder* (names and bytes): a changed vector is another experiment."""
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.safetensors")):
        digest.update(path.name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]


def _code_hash(sample: Sample) -> str:
    return hashlib.sha256(sample.code.encode()).hexdigest()[:16]


def _run_evaluation(
    command: str,
    config: ExperimentConfig,
    run: RunDir,
    lm: LoadedModel,
    samples: Mapping[str, Sequence[Sample]],
    families: Sequence[Family[Any, Any]],
    chosen: Mapping[str, Any],
    artefacts: Artefacts,
    *,
    modes: Sequence[str],
    split: str,
    control_seed: int,
    identity: Mapping[str, Any],
    extra: Mapping[str, Any],
    progress: bool,
    units: Units,
    aggregation: str,
) -> Results:
    """Apply each family's choice (*chosen*, by name) to *samples* (scored as the pieces *units* has, their
    records added up by *aggregation*) through the apply engine and write results.json and the report; *extra*
    fills the fields that say where the choices come from."""
    from ..report import write_report

    started = time.perf_counter()
    all_samples = [s for items in samples.values() for s in items]
    pieces = list(units.pieces)
    identity = {
        **identity,
        "config": identity_of(config, EXPERIMENT_SECTIONS),
        "model": lm.identity.digest(),
        "data": dataset_hash(all_samples),
        "pieces": dataset_hash(pieces),
        "aggregation": aggregation,
        "split": split,
    }
    d = config.detection
    options = ScoringOptions(
        d.batch_size, d.max_new_tokens, config.run.group_size, {"default": DEFAULT_TEMPLATE}, progress
    )
    load = partial(load_model, config.model)
    with run.open(identity, f"{command} run"), open_executor(config.run, load, lm) as executor:
        held = HeldOut(
            split,
            tuple(modes),
            samples,
            seed=config.data.seed,
            control_seed=control_seed,
            cross_cwe_modes=tuple(d.cross_cwe_modes),
            n_examples=config.report.n_examples,
            activations=_activations(lm, config, families, pieces, progress),
            units=units,
            aggregation=aggregation,
        )
        found = apply_families(
            lm, families, chosen, held, ResultStore(run.records), artefacts, options, executor=executor
        )
        results = dataclasses.replace(
            new_results(command, config_document(config), lm, DEFAULT_TEMPLATE),
            status="complete",
            families={f.name: f.results(None, chosen[f.name], found.applied[f.name], None) for f in families},
            lead=found.lead,
            records={c.key: tuple(found.records[c.key]) for c in found.conditions},
            timings_s={"total": round(time.perf_counter() - started, 2)},
            peak_memory=peak_memory(lm.device),
            executor=executor.stats(),
            **extra,
        )
        write_json(run.path / "results.json", results.to_json())
        write_report(results, run.path)
    return results


def _activations(
    lm: LoadedModel, config: ExperimentConfig, families: Sequence[Family[Any, Any]], samples: Sequence[Sample],
    progress: bool,
) -> Callable[[], Activations]:  # fmt: skip
    """The held-out samples' unsteered activations at what the *families* read, extracted (through the activation
    cache) only when a family asks for them."""
    found: list[Activations] = []

    def extract() -> Activations:
        if not found:
            layer_sets = resolve_layer_sets(config.steering.layers, lm.num_layers)
            needs = [f.needs(config, layer_sets, lm.num_layers) for f in families]
            layers = sorted({layer for n in needs for layer in n.layers})
            poolings = list(dict.fromkeys(p for n in needs for p in n.poolings))
            cache = ActivationCache(config.run.cache_dir, enabled=config.run.cache)
            acts, _ = cache.load_or_extract(
                lm, samples, layers, poolings, batch_size=config.detection.batch_size, progress=progress
            )
            found.append(acts)
        return found[0]

    return extract


def _prepared_samples(
    config: ExperimentConfig, lm: LoadedModel, loaded: Any, split: str, progress: bool
) -> tuple[PreparedData, dict[str, list[Sample]]]:
    require = () if split == "all" else (split,)
    data = prepare_data(config.data, lm.tokenizer, samples=loaded, progress=progress, require=require, train=False)
    return data, data.by_cwe(split)


def _pieces_info(units: Units, aggregation: str, chosen_by: str) -> PiecesInfo:
    return PiecesInfo(aggregation, chosen_by, {}, len(units.samples), units.split, len(units.pieces))


def evaluate_from_run(
    run_dir: str | Path,
    config: ExperimentConfig,
    out_dir: str | Path | None = None,
    *,
    lm: LoadedModel | None = None,
    modes: Sequence[str] | None = None,
    allow_model_mismatch: bool = False,
    progress: bool = True,
    families: Sequence[Family[Any, Any]] = DEFAULT_FAMILIES,
    aggregation: str | None = None,
) -> Path:
    """Apply the choices saved in *run_dir* (``chosen/``) unchanged to every sample of *config*'s dataset (build
    *config* with :func:`transfer_config`), each by the family of *families* that saved it; returns the output
    directory. Whole files are scored as their functions and long code as windows (``data.long_functions``), the
    pieces' scores added up as the run chose on its val split, or by *aggregation* when given.

    >>> config = transfer_config("runs/quick", {"data.path": ("../shared/data/sven", "--data")})  # doctest: +SKIP
    >>> out = evaluate_from_run("runs/quick", config, "runs/quick-on-sven")  # doctest: +SKIP
    """
    source = Path(run_dir)
    chosen = load_chosen(source)
    available = chosen.modes
    modes = [m for m in (modes or config.detection.modes) if m in available]
    if not modes:
        raise ValueError(f"{source}: the run has choices for modes {', '.join(available)} only")
    run = RunDir(out_dir or config.run.out or default_out_dir("transfer"))
    if run.path.resolve() == source.resolve():
        raise ValueError(f"--out {run.path} is the --from run itself; write the evaluation to another folder")
    run.check_writable("--out")
    loaded = load_dataset(config.data)
    check_before_loading(config, loaded, need_model=lm is None)
    own = lm is None
    lm = lm or load_model(config.model)
    try:
        warnings = check_run_model(chosen, str(source / CHOSEN_DIR / "chosen.json"), lm, allow_model_mismatch)
        if chosen.template != DEFAULT_TEMPLATE.to_dict():
            warnings.append("the prompt template differs from the one the run used")
        restored: dict[str, Any] = {}
        for name, entry in chosen.families.items():
            family = by_name(families, name)
            if family is None:
                warnings.append(f"the run's {name} choices are not applied (no detector family of that name)")
                continue
            state = family.restore({m: entry[m] for m in modes if m in entry}, source, lm, allow_model_mismatch)
            if state is not None:
                restored[name] = state
        data, everything = _prepared_samples(config, lm, loaded, "all", progress)
        # the CWEs a family chose settings for (a family without per-CWE choices, or with one choice for every CWE,
        # applies to every CWE)
        per_cwe = {n: s for n, s in restored.items() if isinstance(s, SettingChoices) and not s.every_cwe}
        chose = {t for s in per_cwe.values() for by in s.choices.values() for t in by if t != POOLED}
        covered = sorted(chose) if per_cwe else list(everything)
        samples = {cwe: items for cwe, items in everything.items() if cwe in covered}
        if not samples and len(per_cwe) < len(restored):
            # CWEs the run never chose for (left out of its fit): only the families that read any code (the probe
            # alone and adapted, a pooled probe, one gated setting for every CWE) score them; the per-CWE families
            # have nothing to apply
            samples, covered = dict(everything), list(everything)
            restored = {name: state for name, state in restored.items() if name not in per_cwe}
            warnings.append(
                f"none of these CWEs has a per-CWE choice in {source} (it chose for {', '.join(sorted(chose))}): "
                "only the detectors that apply to any CWE are scored"
            )
        skipped = {cwe: len(items) for cwe, items in everything.items() if cwe not in covered}
        if not samples:
            raise ValueError(
                f"none of the CWEs of {data.source} ({', '.join(everything) or 'none'}) has a chosen "
                f"setting in {source} (it has {', '.join(covered)})"
            )
        targets = [*samples, POOLED]
        restored = {n: s.restricted(targets) if isinstance(s, SettingChoices) else s for n, s in restored.items()}
        applied = [f for f in families if f.name in restored]
        overlap = sum(1 for items in samples.values() for s in items if _code_hash(s) in chosen.train_code_hashes)
        units = data.held_out([s for items in samples.values() for s in items])
        how = aggregation or chosen.aggregation
        words = "given (--aggregations)" if aggregation else f"the run's choice ({source})"
        info = DataInfo(
            data.source,
            tuple(samples),
            DataNotes(data.notes),
            n_samples=sum(len(v) for v in samples.values()),
            skipped_cwes=skipped,
            overlap_with_run_train=overlap,
            pieces=_pieces_info(units, how, words),
        )
        extra = {"run_dir": str(source), "source_model": chosen.model, "warnings": tuple(warnings), "data": info}
        artefacts = merge_artefacts([s.artefacts for s in restored.values() if isinstance(s, SettingChoices)])
        _run_evaluation(
            "evaluate --from",
            config,
            run,
            lm,
            samples,
            applied,
            restored,
            artefacts,
            modes=modes,
            split="all",
            control_seed=chosen.control_seed,
            progress=progress,
            extra=extra,
            identity={"from": str(source.resolve()), "modes": modes},
            units=units,
            aggregation=how,
        )
    finally:
        if own:
            lm.close()
    return run.path


def evaluate_vectors(
    vectors_dir: str | Path,
    config: ExperimentConfig,
    strength: float,
    out_dir: str | Path | None = None,
    *,
    split: str = "test",
    lm: LoadedModel | None = None,
    allow_model_mismatch: bool = False,
    progress: bool = True,
) -> Path:
    """Apply the saved vectors in *vectors_dir* at *strength* (unit and positions from ``[steering]``, layers from
    ``steering.layers`` or the vectors') to every CWE of *config*'s dataset that has one, on *split*; the method
    is ``vectors.methods[0]@vectors.pooling[0]`` when the folder holds it, else the folder's only one.

    >>> out = evaluate_vectors("runs/quick/vectors", ExperimentConfig(), 0.3, "runs/eval")  # doctest: +SKIP
    """
    run = RunDir(out_dir or config.run.out or default_out_dir("evaluate"))
    run.check_writable("--out")
    loaded = load_dataset(config.data)
    check_before_loading(config, loaded, need_model=lm is None)
    load_vector_dir(vectors_dir)  # a damaged vector file is named before the model loads
    own = lm is None
    lm = lm or load_model(config.model)
    try:
        vectors = load_vector_dir(vectors_dir, lm.hidden_size, None if allow_model_mismatch else lm.identity)
        keys = sorted({k for _, k in vectors})
        wanted = f"{config.vectors.methods[0]}@{config.vectors.pooling[0]}"
        default = VectorsSection()
        asked = (config.vectors.methods, config.vectors.pooling) != (default.methods, default.pooling)
        if wanted not in keys and (asked or len(keys) != 1):
            raise ValueError(
                f"{vectors_dir}: holds vectors of {', '.join(keys)}; choose one with --method and --pooling"
            )
        key = wanted if wanted in keys else keys[0]
        data, by_cwe = _prepared_samples(config, lm, loaded, split, progress)
        samples = {cwe: items for cwe, items in by_cwe.items() if (cwe, key) in vectors}
        if not samples:
            raise ValueError(
                f"none of the data's CWEs ({', '.join(by_cwe) or 'none'}) has a {key} vector in {vectors_dir}"
            )
        first = next(v for (c, k), v in vectors.items() if k == key)
        layers = config.steering.layers[0] if config.steering.layers else first.layers
        method, pooling = key.split("@", 1)
        unit = config.steering.strengths[0][0]
        setting = Setting(method, pooling, tuple(layers), unit, float(strength), config.steering.positions[0])
        for cwe in [*samples, *([POOLED] if (POOLED, key) in vectors else [])]:
            missing = [layer for layer in setting.layers if layer not in vectors[(cwe, key)].layers]
            if missing:
                raise ValueError(
                    f"{vectors_dir}: evaluate applies one setting to every CWE ({setting.label()}), but "
                    f"the {cwe} vector has no layer {missing[0]} (it has "
                    f"{list(vectors[(cwe, key)].layers)})"
                )
        targets = [*samples, *([POOLED] if (POOLED, key) in vectors else [])]
        choice = {t: Choice(t, "steered", setting, selected_by="given (evaluate --vectors)") for t in targets}
        given = SettingChoices({mode: choice for mode in config.detection.modes}, vectors)
        units = data.held_out([s for items in samples.values() for s in items])
        how = config.detection.aggregations[0]
        info = DataInfo(
            data.source,
            tuple(samples),
            DataNotes(data.notes),
            SplitsInfo(data.splits.summary()),
            n_samples=sum(len(v) for v in samples.values()),
            skipped_cwes={c: len(v) for c, v in by_cwe.items() if c not in samples},
            pieces=_pieces_info(units, how, "the first of detection.aggregations (nothing is chosen here)"),
        )
        _run_evaluation(
            "evaluate --vectors",
            config,
            run,
            lm,
            samples,
            (CONSTANT,),
            {CONSTANT.name: given},
            given.artefacts,
            modes=config.detection.modes,
            split=split,
            control_seed=config.steering.control_seed,
            progress=progress,
            extra={"vectors_from": str(vectors_dir), "data": info},
            identity={"vectors": _files_digest(Path(vectors_dir)), "strength": strength},
            units=units,
            aggregation=how,
        )
    finally:
        if own:
            lm.close()
    return run.path
