"""The protocol: prepare data -> fit on train -> score on val -> select on val -> apply once on test -> results.

``vulnsteer run`` is this protocol with the default configuration; ``vulnsteer sweep CONFIG.toml`` is it with a
file. Every detector comes from a family (:mod:`~vulnsteer.experiment.family`): the protocol runs each phase for
every family the configuration enables, in order, and names none. Test data never reaches a choice: families
select on validation records only (:mod:`~vulnsteer.experiment.select` refuses anything else), and the test split
is scored only by the apply engine, after the choices are saved.

>>> from vulnsteer.config import ExperimentConfig
>>> config = ExperimentConfig()
>>> config.selecting_modes()  # generation's setting is chosen on logit-mode validation by default
('logit',)
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from .._version import __version__
from ..config import ExperimentConfig, config_document, dump_config, identity_of
from ..config.sections import EXPERIMENT_SECTIONS
from ..data.sample import Sample, dataset_hash
from ..detection.prefix import PrefixStore
from ..detection.probe_table import TABLE_POOLINGS, evaluate_length_control, evaluate_probes
from ..detection.records import DetectionRecord, aggregate_records
from ..lm.activation_cache import ActivationCache
from ..lm.activations import Activations
from ..lm.memory import peak_memory, reset_peak_memory
from ..lm.model import LoadedModel, load_model
from ..lm.prompts import DEFAULT_TEMPLATE
from .apply import HeldOutFound, apply_families
from .chosen import save_chosen, train_code_hashes
from .engine import Executor, LocalExecutor, ResultStore, ScoringOptions, run_conditions
from .families import DEFAULT_FAMILIES, enabled
from .family import Artefacts, Family, FitContext, HeldOut, Saved, ValContext, merge_artefacts
from .fit import train_pca
from .grid import Condition, resolve_layer_sets
from .header import ActivationCacheInfo, DataInfo, DataNotes, PiecesInfo, RunFiles, SplitsInfo
from .preflight import check_before_loading
from .prepare import PreparedData, load_dataset, prepare_data
from .ray_executor import open_executor
from .results import PcaBlock, ValEntry, new_results, val_entry
from .rundir import CHOSEN_DIR, CHOSEN_NAME, RESOLVED_NAME, RunDir
from .select import choose_aggregation

__all__ = ["default_out_dir", "run_protocol"]


def default_out_dir(name: str) -> Path:
    """``runs/<name>-<timestamp>``."""
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def run_protocol(
    config: ExperimentConfig,
    out_dir: str | Path | None = None,
    *,
    command: str = "run",
    lm: LoadedModel | None = None,
    progress: bool = True,
    name: str | None = None,
    families: Sequence[Family[Any, Any]] = DEFAULT_FAMILIES,
) -> Path:
    """Run (or resume) the experiment of *config* into *out_dir* (default ``run.out``, else
    ``runs/<name>-<timestamp>``) with the detector *families* the configuration enables; returns the run
    directory.

    Inputs are checked before anything is written (the output folder is writable, the data loads, the splits are
    not empty, the layers exist); the folder is then locked and a rerun resumes only the same experiment. Ctrl-C
    writes ``results.json`` / ``report.md`` marked interrupted with what is finished, then re-raises.

    >>> run_dir = run_protocol(load_config("examples/quick.toml"), "runs/quick")  # doctest: +SKIP
    >>> load_results(run_dir / "results.json").lead["logit"].rows[0].name  # doctest: +SKIP
    'baseline'
    """
    run = RunDir(out_dir or config.run.out or default_out_dir(name or command))
    run.check_writable("--out")
    loaded = load_dataset(config.data)  # data errors before the model loads
    check_before_loading(config, loaded, need_model=lm is None)
    chosen_families = enabled(families, config)
    own = lm is None
    if lm is None:
        lm = load_model(config.model)
    try:
        data = prepare_data(
            config.data, lm.tokenizer, samples=loaded, progress=progress, require=("train", "val", "test")
        )
        layer_sets = resolve_layer_sets(config.steering.layers, lm.num_layers)
        identity = {
            **identity_of(config, EXPERIMENT_SECTIONS),
            "model": lm.identity.digest(),
            "template": DEFAULT_TEMPLATE.to_dict(),
            **{f"data_{n}": dataset_hash(part) for n, part in data.splits.items()},
        }
        header = (
            f"vulnsteer {__version__} resolved config: `vulnsteer sweep {run.resolved}` reproduces this run.\n"
            "Every default is filled in; layers are as written (negative = from the end)."
        )
        with (
            run.open(identity, "experiment", resolved=dump_config(config, header)),
            open_executor(config.run, partial(load_model, config.model), lm) as executor,
        ):
            protocol = _Protocol(config, run, lm, data, layer_sets, command, progress, executor, chosen_families)
            try:
                protocol.run()
            except KeyboardInterrupt:
                protocol.finish(interrupted=True)
                raise
            protocol.finish()
    finally:
        if own:
            lm.close()
    return run.path


class _Protocol:
    """State of one run of the protocol (kept together so an interruption can still write what is finished)."""

    def __init__(
        self,
        config: ExperimentConfig,
        run: RunDir,
        lm: LoadedModel,
        data: PreparedData,
        layer_sets: Sequence[tuple[int, ...]],
        command: str,
        progress: bool,
        executor: Executor | None = None,
        families: Sequence[Family[Any, Any]] = DEFAULT_FAMILIES,
    ) -> None:
        self.config, self.run_dir, self.lm, self.data, self.progress = config, run, lm, data, progress
        self.executor = executor or LocalExecutor(lm)
        self.families = tuple(families)
        self.layer_sets = tuple(layer_sets)
        self.layers = tuple(sorted({layer for group in layer_sets for layer in group}))
        self.timings: dict[str, float] = {}
        self.started = time.perf_counter()
        reset_peak_memory(lm.device)
        self.results = new_results(command, config_document(config), lm, DEFAULT_TEMPLATE)
        self.store = ResultStore(run.records)
        self.prefix_store = PrefixStore(max_bytes=config.run.prefix_cache_mib * 1024**2)
        d = config.detection
        self.options = ScoringOptions(
            d.batch_size, d.max_new_tokens, config.run.group_size, {"default": DEFAULT_TEMPLATE}, progress
        )
        self.cache = ActivationCache(config.run.cache_dir, enabled=config.run.cache)
        self.needs = [f.needs(config, self.layer_sets, lm.num_layers) for f in self.families]
        self.artefacts = Artefacts()
        self.fits: dict[str, Any] = {}
        self.chosen: dict[str, Any] = {}
        self.saved: dict[str, Saved] = {}
        self.found: HeldOutFound | None = None
        self._acts: dict[str, Activations] = {}
        self.aggregation = config.detection.aggregations[0]

    def split_acts(self, split: str) -> Activations:
        """A split's unsteered activations at every layer and pooling a family (or the report's table of probes) reads,
        extracted once per run through the activation cache (so a resumed run reads the same numbers)."""
        if split not in self._acts:
            cfg = self.config
            poolings = [
                *(p for n in self.needs for p in n.poolings),
                *(TABLE_POOLINGS if cfg.report.probes else ()),
                *(p for n in self.needs for p in n.train_poolings if split == "train"),
            ]
            layers = sorted({*self.layers, *(layer for n in self.needs for layer in n.layers)})
            acts, stats = self.cache.load_or_extract(
                self.lm,
                self.data.pieces(split),
                layers,
                list(dict.fromkeys(poolings)),
                batch_size=cfg.detection.batch_size,
                progress=self.progress,
                desc=f"activations ({split})",
            )
            self._acts[split] = acts
            if split == "train":
                found = {"dir": str(self.cache.root), "enabled": cfg.run.cache, **stats.to_dict()}
                self.results = dataclasses.replace(self.results, activation_cache=ActivationCacheInfo.from_json(found))
        return self._acts[split]

    def _timed(self, name: str, start: float) -> None:
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start

    def run(self) -> None:
        cfg, data = self.config, self.data
        info = DataInfo(
            data.source,
            tuple(data.cwes),
            DataNotes(data.notes),
            SplitsInfo(data.splits.summary()),
        )
        self.results = dataclasses.replace(self.results, data=info, layer_sets=self.layer_sets, layers=self.layers)
        self._fit()
        records, conditions = self._validate()
        self._select(conditions, records)
        t = time.perf_counter()
        held = HeldOut(
            "test",
            tuple(cfg.detection.modes),
            data.by_cwe("test"),
            seed=cfg.data.seed,
            control_seed=cfg.steering.control_seed,
            cross_cwe_modes=tuple(cfg.detection.cross_cwe_modes),
            n_examples=cfg.report.n_examples,
            activations=partial(self.split_acts, "test"),
            units=data.units("test"),
            aggregation=self.aggregation,
        )
        self.found = apply_families(
            self.lm,
            self.families,
            self.chosen,
            held,
            self.store,
            self.artefacts,
            self.options,
            prefix_store=self.prefix_store,
            executor=self.executor,
        )
        self._timed("score_test", t)
        if cfg.report.probes:
            t = time.perf_counter()
            self.results = dataclasses.replace(self.results, probes=tuple(self._probes()))
            self._timed("probes", t)
        ps = self.prefix_store
        prefix = {"hits": ps.hits, "misses": ps.misses, "entries": len(ps), "mib": round(ps.used_bytes / 1024**2, 1)}
        self.results = dataclasses.replace(self.results, prefix_cache=prefix, status="complete")

    def _fit(self) -> None:
        """Training activations (cached), every family's fit on train, and the training split's PCA."""
        cfg, data = self.config, self.data
        t = time.perf_counter()
        acts = self.split_acts("train")
        self._timed("activations", t)
        ctx = FitContext(
            cfg, self.lm, data, self.layer_sets, self.layers, self.split_acts, self.run_dir.path, self.progress
        )
        for family in self.families:
            t = time.perf_counter()
            self.fits[family.name] = family.fit(dataclasses.replace(ctx, earlier=dict(self.fits)))
            self._timed(f"fit_{family.name}", t)
        self.artefacts = merge_artefacts([f.artefacts(self.fits[f.name]) for f in self.families])
        templates = {"default": DEFAULT_TEMPLATE, **self.artefacts.templates}
        self.options = dataclasses.replace(self.options, templates=templates)
        middle = self.layers[len(self.layers) // 2]
        train = data.samples("train")
        pca = {p: PcaBlock.from_json(train_pca(acts, train, p, middle)) for p in cfg.vectors.pooling}
        self.results = dataclasses.replace(self.results, pca=pca)

    def _validate(self) -> tuple[dict[str, list[DetectionRecord]], dict[str, dict[str, list[Condition]]]]:
        """Score every family's validation conditions (one pass for all) in every selecting mode; returns the
        records and, per mode and family, its conditions (its mode's baseline first)."""
        t = time.perf_counter()
        conditions: dict[str, dict[str, list[Condition]]] = {}
        for mode in self.config.selecting_modes():
            base = Condition("baseline", mode, "val")
            conditions[mode] = {f.name: [base, *f.val_conditions(self.fits[f.name], mode)] for f in self.families}
        every = [c for by_family in conditions.values() for conds in by_family.values() for c in conds]
        pieces = run_conditions(
            self.lm,
            every,
            self.store,
            lambda split: self.data.units(split).by_cwe(),
            self.artefacts.vectors,
            self.options,
            probes=self.artefacts.probes,
            prefix_store=self.prefix_store,
            executor=self.executor,
        )
        self._timed("score_val", t)
        records = self._to_samples(pieces)
        cwes = self.data.cwes
        val: dict[str, tuple[ValEntry, ...]] = {}
        for mode, by_family in conditions.items():
            owner = {c: name for name, conds in by_family.items() for c in conds[1:]}
            order = dict.fromkeys(c for conds in by_family.values() for c in conds)
            val[mode] = tuple(val_entry(c, records[c.key], cwes, owner.get(c)) for c in order)
        self.results = dataclasses.replace(self.results, val=val)
        return records, conditions

    def _to_samples(self, pieces: dict[str, list[DetectionRecord]]) -> dict[str, list[DetectionRecord]]:
        """Choose how the val pieces' scores add up (:func:`~vulnsteer.experiment.select.choose_aggregation`)
        and every val condition's records, one per sample."""
        units = self.data.units("val")
        how, words, means = choose_aggregation(self.config.detection.aggregations, units, pieces)
        self.aggregation = how
        test = self.data.units("test")
        info = PiecesInfo(how, words, means, len(test.samples), test.split, len(test.pieces))
        if self.results.data is not None:
            self.results = dataclasses.replace(self.results, data=dataclasses.replace(self.results.data, pieces=info))
        return {key: aggregate_records(units, recs, how) for key, recs in pieces.items()}

    def _select(
        self, conditions: dict[str, dict[str, list[Condition]]], records: dict[str, list[DetectionRecord]]
    ) -> None:
        """Every family's choice on val (in order: a family may read the choices before it), then what each keeps
        in the run folder (``chosen/chosen.json``, a saved detector)."""
        cfg, results = self.config, self.results
        for family in self.families:
            val = ValContext(
                cfg,
                tuple(self.data.cwes),
                {mode: by_family[family.name] for mode, by_family in conditions.items()},
                records,
                self.artefacts,
                self.data,
                dict(self.chosen),
                self.aggregation,
            )
            self.chosen[family.name] = family.select(self.fits[family.name], val)
        model = results.model.to_json() if results.model else {}
        info = {"model": model, "created": results.environment.get("time")}
        for family in self.families:
            self.saved[family.name] = family.save(self.chosen[family.name], self.run_dir.path, info)
        header = {
            "run_dir": str(self.run_dir.path),
            "model": model,
            "config": results.config,
            "template": DEFAULT_TEMPLATE.to_dict(),
            "control_seed": cfg.steering.control_seed,
            "sign_convention": results.sign_convention,
            "train_code_hashes": train_code_hashes(self.data.samples("train")),
            "aggregation": self.aggregation,
            "selection": "per CWE on the validation split only (balanced accuracy, ties to the smaller |strength|)",
        }
        entries = {name: saved.chosen for name, saved in self.saved.items() if saved.chosen is not None}
        save_chosen(self.run_dir.path, header, entries)

    def _probes(self) -> list[Any]:
        """Probe detectors on the val/test activations, extracted the way the training activations are (through
        the activation cache), so a resumed run reads exactly the numbers an uninterrupted one does."""
        splits: dict[str, tuple[Activations, list[Sample]]] = {}
        for name in ("train", "val", "test"):  # (val and test as their pieces)
            splits[name] = (self.split_acts(name), self.data.pieces(name))
        seed = self.config.data.seed
        probes = evaluate_probes(splits["train"], splits["val"], splits["test"], layers=list(self.layers), seed=seed)
        probes += evaluate_length_control(*(splits[n][1] for n in ("train", "val", "test")), seed=seed)
        return probes

    def finish(self, interrupted: bool = False) -> None:
        """Write results.json and the report (partial when interrupted)."""
        from ..io import write_json
        from ..report import write_report

        results = self.results
        if interrupted:
            on_disk = ResultStore(self.run_dir.records)  # what is on disk, even if Ctrl-C hit mid-bookkeeping
            finished = tuple(Condition.from_dict(e["condition"]) for e in on_disk.entries())
            results = dataclasses.replace(results, status="interrupted", finished_conditions=finished)
        found = self.found or HeldOutFound()
        families = {
            f.name: f.results(
                self.fits.get(f.name), self.chosen.get(f.name), found.applied.get(f.name), self.saved.get(f.name)
            )
            for f in self.families
        }
        self.timings["total"] = time.perf_counter() - self.started
        results = dataclasses.replace(
            results,
            families=families,
            lead=found.lead,
            records={c.key: tuple(found.records[c.key]) for c in found.conditions},
            timings_s=self.run_dir.add_timings(self.timings),
            peak_memory=peak_memory(self.lm.device),
            executor=self.executor.stats(),
            files=RunFiles(RESOLVED_NAME, f"{CHOSEN_DIR}/{CHOSEN_NAME}", self.run_dir.records.name),
        )
        write_json(self.run_dir.path / "results.json", results.to_json())
        write_report(results, self.run_dir.path)
