"""The protocol: prepare data -> fit on train -> score on val -> select on val -> apply once on test -> results.

``vulnsteer run`` is this protocol with the default configuration; ``vulnsteer sweep CONFIG.toml`` is it with a
file. Test data never reaches a choice: :mod:`~vulnsteer.experiment.select` refuses anything but validation
conditions, and the test split is scored only by the apply engine, after the choices are saved.

>>> from vulnsteer.config import ExperimentConfig
>>> config = ExperimentConfig()
>>> config.selecting_modes()  # generation's setting is chosen on logit-mode validation by default
('logit',)
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from .._version import __version__
from ..config import ExperimentConfig, config_document, dump_config, identity_of
from ..config.vocabulary import POOLINGS
from ..data.sample import Sample, dataset_hash
from ..detection.prefix import PrefixStore
from ..detection.probe import evaluate_length_control, evaluate_probes
from ..detection.records import DetectionRecord
from ..lm.activation_cache import ActivationCache, model_key
from ..lm.activations import ANSWER_POOLINGS, Activations
from ..lm.memory import peak_memory, reset_peak_memory
from ..lm.model import LoadedModel
from ..lm.prompts import DEFAULT_TEMPLATE
from ..steering.gate import LinearProbe
from .apply import apply_choices
from .conditional import (
    behaviour_vectors,
    build_detector,
    condition_layers,
    condition_probes,
    conditional_settings,
    probe_records,
    prompt_templates,
    template_conditions,
)
from .engine import Executor, LocalExecutor, ResultStore, ScoringOptions, run_conditions
from .fit import fit_cwe_vectors, save_vectors, train_pca, vector_cosines
from .grid import POOLED, RANDOM_PROBE, Condition, Setting, candidate_settings, resolve_layer_sets, val_conditions
from .lead import build_lead
from .preflight import check_before_loading, load_configured_model
from .prepare import PreparedData, load_dataset, prepare_data
from .ray_executor import open_executor
from .results import examples, json_ready, new_results, save_chosen, train_code_hashes, val_entries
from .rundir import CHOSEN_DIR, CHOSEN_NAME, RESOLVED_NAME, RunDir
from .select import Choice, select_settings, select_templates

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
) -> Path:
    """Run (or resume) the experiment of *config* into *out_dir* (default ``run.out``, else
    ``runs/<name>-<timestamp>``); returns the run directory.

    Inputs are checked before anything is written (the output folder is writable, the data loads, the splits are
    not empty, the layers exist); the folder is then locked and a rerun resumes only the same experiment. Ctrl-C
    writes ``results.json`` / ``report.md`` marked interrupted with what is finished, then re-raises.

    >>> run_dir = run_protocol(load_config("examples/quick.toml"), "runs/quick")  # doctest: +SKIP
    >>> json.loads((run_dir / "results.json").read_text())["summary"]["logit"]["CWE-89"]["delta"]  # doctest: +SKIP
    0.0
    """
    run = RunDir(out_dir or config.run.out or default_out_dir(name or command))
    run.check_writable("--out")
    loaded = load_dataset(config.data)  # data errors before the model loads
    check_before_loading(config, loaded, need_model=lm is None)
    own = lm is None
    if lm is None:
        lm = load_configured_model(config.model)
    try:
        data = prepare_data(
            config.data, lm.tokenizer, samples=loaded, progress=progress, require=("train", "val", "test")
        )
        layer_sets = resolve_layer_sets(config.steering.layers, lm.num_layers)
        identity = {
            **identity_of(config),
            "model_key": model_key(lm),
            "template": DEFAULT_TEMPLATE.to_dict(),
            **{f"data_{n}": dataset_hash(part) for n, part in data.splits.items()},
        }
        header = (
            f"vulnsteer {__version__} resolved config: `vulnsteer sweep {run.resolved}` reproduces this run.\n"
            "Every default is filled in; layers are as written (negative = from the end)."
        )
        with (
            run.open(identity, "experiment", resolved=dump_config(config, header)),
            open_executor(config.run, partial(load_configured_model, config.model), lm) as executor,
        ):
            protocol = _Protocol(config, run, lm, data, layer_sets, command, progress, executor)
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
    ) -> None:
        self.config, self.run_dir, self.lm, self.data, self.progress = config, run, lm, data, progress
        self.executor = executor or LocalExecutor(lm)
        self.layer_sets = list(layer_sets)
        self.layers = sorted({layer for group in layer_sets for layer in group})
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
        conditional = config.conditional.enabled
        self.condition_layers = condition_layers(config, self.layer_sets, lm.num_layers) if conditional else []
        self._acts: dict[str, Activations] = {}

    def split_acts(self, split: str) -> Activations:
        """A split's unsteered activations at every layer and pooling the run reads (the answer poolings on train
        only), extracted once per run through the activation cache (so a resumed run reads the same numbers)."""
        if split not in self._acts:
            cfg = self.config
            conditional = cfg.conditional.enabled
            answer = split == "train" and conditional and "answer" in cfg.conditional.behaviours
            poolings = [
                *cfg.vectors.pooling,
                *(POOLINGS if cfg.report.probes else ()),
                *(["last", *cfg.conditional.pooling] if conditional else ()),
                *(ANSWER_POOLINGS if answer else ()),
            ]
            acts, stats = self.cache.load_or_extract(
                self.lm,
                self.data.samples(split),
                sorted({*self.layers, *self.condition_layers}),
                list(dict.fromkeys(poolings)),
                batch_size=cfg.detection.batch_size,
                progress=self.progress,
            )
            self._acts[split] = acts
            if split == "train":
                self.results["activation_cache"] = {
                    "dir": str(self.cache.root),
                    "enabled": cfg.run.cache,
                    **stats.to_dict(),
                }
        return self._acts[split]

    def _timed(self, name: str, start: float) -> None:
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start

    def run(self) -> None:
        cfg, data, results = self.config, self.data, self.results
        results.update(
            {
                "layer_sets": [list(g) for g in self.layer_sets],
                "layers": self.layers,
                "data": {
                    "source": data.source,
                    "cwes": data.cwes,
                    "notes": data.notes,
                    "splits": data.splits.summary(),
                },
            }
        )
        acts = self._fit()
        settings = candidate_settings(cfg, self.layer_sets) + self.gated
        val_conds = {mode: self._val_conditions(settings, mode) for mode in cfg.selecting_modes()}
        t = time.perf_counter()
        val_records = run_conditions(
            self.lm,
            [c for conds in val_conds.values() for c in conds],
            self.store,
            data.by_cwe,
            self.vectors,
            self.options,
            probes=self.cond_probes,
            prefix_store=self.prefix_store,
            executor=self.executor,
        )
        self._timed("score_val", t)
        results["val"] = {mode: val_entries(conds, val_records, data.cwes) for mode, conds in val_conds.items()}
        choices, conditional, templates = self._select(val_conds, val_records)
        t = time.perf_counter()
        test = data.by_cwe("test")
        applied = apply_choices(
            self.lm,
            choices,
            test,
            self.vectors,
            self.store,
            split="test",
            control_seed=cfg.steering.control_seed,
            cross_cwe_modes=cfg.detection.cross_cwe_modes,
            options=self.options,
            seed=cfg.data.seed,
            probes=self.cond_probes,
            prefix_store=self.prefix_store,
            executor=self.executor,
        )
        gated = None
        if conditional:
            gated = apply_choices(
                self.lm,
                conditional,
                test,
                self.vectors,
                self.store,
                split="test",
                control_seed=cfg.steering.control_seed,
                cross_cwe_modes=(),
                options=self.options,
                seed=cfg.data.seed,
                probes=self.cond_probes,
                prefix_store=self.prefix_store,
                executor=self.executor,
            )
        prompted = self._prompted(templates, test)
        self._timed("score_test", t)
        for key in ("summary", "pooled", "cross_cwe"):
            results[key] = {mode: found[key if key != "summary" else "rows"] for mode, found in applied.by_mode.items()}
        if gated is not None:
            results["conditional"] = {mode: found["rows"] for mode, found in gated.by_mode.items()}
        conds = applied.conditions + (gated.conditions if gated else [])
        everything = {**applied.records, **(gated.records if gated else {}), **prompted}
        results["records"] = {c.key: [r.to_dict() for r in everything[c.key]] for c in conds}
        results["examples"] = {
            mode: examples(gated or applied, (conditional or choices)[mode], mode, "test", cfg.report.n_examples)
            for mode in cfg.detection.modes
            if mode == "generation" and cfg.report.n_examples
        }
        results["lead"] = self._lead(choices, conditional, templates, val_records, everything)
        if cfg.report.probes:
            t = time.perf_counter()
            results["probes"] = self._probes(acts)
            self._timed("probes", t)
        ps = self.prefix_store
        results["prefix_cache"] = {
            "hits": ps.hits,
            "misses": ps.misses,
            "entries": len(ps),
            "mib": round(ps.used_bytes / 1024**2, 1),
        }
        results["status"] = "complete"

    def _fit(self) -> Activations:
        """Training activations (cached), the per-CWE vectors and, for conditional steering, the behaviour
        vectors and the gating probes (thresholds on val) and their settings."""
        cfg, data, results = self.config, self.data, self.results
        train_by_cwe, train = data.by_cwe("train"), data.samples("train")
        conditional = cfg.conditional.enabled
        t = time.perf_counter()
        acts = self.split_acts("train")
        self._timed("activations", t)
        t = time.perf_counter()
        vectors = fit_cwe_vectors(
            self.lm,
            acts,
            train_by_cwe,
            self.layers,
            methods=cfg.vectors.methods,
            poolings=cfg.vectors.pooling,
            pooled=cfg.vectors.pooled,
        )
        results["vectors"] = save_vectors(vectors, self.run_dir.path / "vectors")
        results["cosine"] = vector_cosines(vectors, self.layers)
        middle = self.layers[len(self.layers) // 2]
        results["pca"] = {p: train_pca(acts, train, p, middle) for p in cfg.vectors.pooling}
        self._timed("fit_vectors", t)
        self.vectors = dict(vectors)
        self.cond_probes: dict[tuple[str, str], LinearProbe] = {}
        self.gated: list[Setting] = []
        if conditional:
            t = time.perf_counter()
            behaviours = behaviour_vectors(self.lm, cfg, acts, train_by_cwe, self.layers, progress=self.progress)
            self.vectors.update(behaviours)
            val = data.samples("val")
            val_acts = self.split_acts("val")
            self.cond_probes = condition_probes(cfg, (acts, train), (val_acts, val), self.condition_layers)
            keys = sorted({k for _, k in self.cond_probes if not k.startswith(RANDOM_PROBE)})
            self.gated = conditional_settings(cfg, self.layer_sets, keys)
            results["behaviours"] = save_vectors(
                {k: v for k, v in behaviours.items() if k[0] == POOLED}, self.run_dir.path / "behaviours"
            )
            results["condition_probes"] = {
                f"{target}|{key}": {"threshold": p.threshold, "spread": p.spread, **dict(p.meta)}
                for (target, key), p in self.cond_probes.items()
            }
            self._timed("fit_conditional", t)
        self.templates = prompt_templates(cfg, train, DEFAULT_TEMPLATE)
        self.options = dataclasses.replace(self.options, templates=self.templates)
        return acts

    def _val_conditions(self, settings: Sequence[Setting], mode: str) -> list[Condition]:
        """The validation grid of one mode: constant settings (and the pooled vector), gated settings with both
        controls, and the prompting baselines."""
        cfg = self.config
        constant = val_conditions(cfg, [s for s in settings if not s.gated], mode)
        seed = cfg.steering.control_seed
        kinds = ("steered", "control", "gate_control") if cfg.run.controls_on_val else ("steered",)
        gated = [s.condition(kind, mode, "val", control_seed=seed) for s in settings if s.gated for kind in kinds]
        return constant + gated + template_conditions(list(self.templates), mode, "val")

    def _select(
        self, val_conds: Mapping[str, Sequence[Condition]], records: Mapping[str, Sequence[DetectionRecord]]
    ) -> tuple[dict[str, dict[str, Choice]], dict[str, dict[str, Choice]], dict[str, dict[str, str]]]:
        """Per selecting mode and CWE, on val: the constant setting, the conditional one, the prompt template."""
        cfg, cwes = self.config, self.data.cwes
        picked, gated, prompts = {}, {}, {}
        for mode, conds in val_conds.items():
            how = f"{mode} mode, val split"
            plain = [c for c in conds if c.template == "default" and (c.setting is None or not c.setting.gated)]
            picked[mode] = select_settings(plain, records, cwes, cfg.vectors.pooled, how)
            with_gate = [c for c in conds if c.template == "default" and (c.setting is None or c.setting.gated)]
            if self.gated:
                gated[mode] = select_settings(with_gate, records, cwes, False, how)
            prompts[mode] = select_templates([c for c in conds if c.kind == "baseline"], records, cwes)
        choices = {mode: picked[cfg.selection_mode(mode)] for mode in cfg.detection.modes}
        conditional = {mode: gated[cfg.selection_mode(mode)] for mode in cfg.detection.modes} if gated else {}
        templates = {mode: prompts[cfg.selection_mode(mode)] for mode in cfg.detection.modes}
        self.results["selection"] = {m: {t: c.to_dict() for t, c in by.items()} for m, by in choices.items()}
        if conditional:
            self.results["conditional_selection"] = {
                m: {t: c.to_dict() for t, c in by.items()} for m, by in conditional.items()
            }
        self.results["prompt_selection"] = templates
        header = {
            "run_dir": str(self.run_dir.path),
            "model": self.results["model"],
            "config": self.results["config"],
            "template": DEFAULT_TEMPLATE.to_dict(),
            "control_seed": cfg.steering.control_seed,
            "sign_convention": self.results["sign_convention"],
            "train_code_hashes": train_code_hashes(self.data.samples("train")),
            "selection": "per CWE on the validation split only (balanced accuracy, ties to the smaller |strength|)",
        }
        save_chosen(self.run_dir, choices, self.vectors, header, conditional, self.cond_probes)
        if self.gated:
            self._save_detector(val_conds[cfg.selecting_modes()[0]], records)
        return choices, conditional, templates

    def _save_detector(self, conds: Sequence[Condition], records: Mapping[str, Sequence[DetectionRecord]]) -> None:
        """``RUN/detector/`` (:func:`~.conditional.build_detector`), and its summary in results.json."""
        detector = build_detector(
            self.config,
            self.data,
            conds,
            records,
            self.vectors,
            self.cond_probes,
            {"model": self.results["model"], "created": self.results["environment"]["time"]},
        )
        if detector is not None:
            detector.save(self.run_dir.path / "detector")
            self.results["detector"] = {"folder": "detector", "digest": detector.digest, **detector.info["validation"]}

    def _prompted(
        self, templates: Mapping[str, Mapping[str, str]], test: Mapping[str, Sequence[Sample]]
    ) -> dict[str, list[DetectionRecord]]:
        """The test baselines under the prompt templates some CWE chose on val."""
        conds = [
            Condition("baseline", mode, "test", template=name)
            for mode, by_cwe in templates.items()
            for name in sorted(set(by_cwe.values()))
            if name != "default"
        ]
        if not conds:
            return {}
        return run_conditions(
            self.lm,
            conds,
            self.store,
            lambda _split: test,
            self.vectors,
            self.options,
            prefix_store=self.prefix_store,
            executor=self.executor,
        )

    def _lead(
        self,
        choices: Mapping[str, Mapping[str, Choice]],
        conditional: Mapping[str, Mapping[str, Choice]],
        templates: Mapping[str, Mapping[str, str]],
        val_records: Mapping[str, Sequence[DetectionRecord]],
        records: Mapping[str, Sequence[DetectionRecord]],
    ) -> dict[str, Any]:
        """Per mode, the first screen: every detector on the same test samples (:func:`~.lead.build_lead`)."""
        lead, thresholds = build_lead(
            self.config,
            self.data.cwes,
            choices,
            conditional,
            templates,
            val_records,
            records,
            self._probe_alone(conditional),
        )
        if thresholds:
            self.results["calibrated_thresholds"] = thresholds
        return lead

    def _probe_alone(self, conditional: Mapping[str, Mapping[str, Choice]]) -> list[DetectionRecord]:
        """The gating probe of each CWE's conditional setting (chosen, else best) read alone on test."""
        if not conditional:
            return []
        by_target = next(iter(conditional.values()))
        keys = {cwe: c.best.probe for cwe, c in by_target.items() if c is not None and c.best and c.best.probe}
        if not keys:
            return []
        test = self.data.samples("test")
        acts = self.split_acts("test")
        out: list[DetectionRecord] = []
        for cwe in self.data.cwes:
            # a CWE without val samples has no choice: its samples are read by the (pooled) probe the others chose
            key = keys.get(cwe) or next(iter(keys.values()))
            probe = self.cond_probes.get((cwe, key)) or self.cond_probes[(POOLED, key)]
            out += [r for r in probe_records(probe, acts, test) if r.cwe == cwe]
        return out

    def _probes(self, train_acts: Activations) -> list[dict[str, Any]]:
        """Probe detectors on the val/test activations, extracted the way the training activations are (through
        the activation cache), so a resumed run reads exactly the numbers an uninterrupted one does."""
        splits: dict[str, tuple[Activations, list[Any]]] = {"train": (train_acts, self.data.samples("train"))}
        for name in ("val", "test"):
            splits[name] = (self.split_acts(name), self.data.samples(name))
        seed = self.config.data.seed
        probes = evaluate_probes(splits["train"], splits["val"], splits["test"], layers=self.layers, seed=seed)
        probes += evaluate_length_control(*(splits[n][1] for n in ("train", "val", "test")), seed=seed)
        return [p.to_dict() for p in probes]

    def finish(self, interrupted: bool = False) -> None:
        """Write results.json and the report (partial when interrupted)."""
        from ..io import write_json
        from ..report import write_report

        if interrupted:
            self.results["status"] = "interrupted"
            on_disk = ResultStore(self.run_dir.records)  # what is on disk, even if Ctrl-C hit mid-bookkeeping
            self.results["finished_conditions"] = [e["condition"] for e in on_disk.entries()]
        self.timings["total"] = time.perf_counter() - self.started
        self.results["timings_s"] = {k: round(v, 2) for k, v in self.timings.items()}
        self.results["peak_memory"] = peak_memory(self.lm.device)
        self.results["executor"] = self.executor.stats()
        self.results["files"] = {
            "resolved_config": RESOLVED_NAME,
            "chosen": f"{CHOSEN_DIR}/{CHOSEN_NAME}",
            "records": self.run_dir.records.name,
        }
        results = json_ready(self.results)
        write_json(self.run_dir.path / "results.json", results)
        write_report(results, self.run_dir.path)
