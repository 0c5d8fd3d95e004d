"""The transfer protocol (``vulnsteer transfer CONFIG.toml``): leave each dataset out in turn, fit and choose on
the others, apply unchanged to every sample of the one left out.

For every **outer fold** (one dataset of ``data.paths`` left out):

1. every probe design of ``[transfer]``'s grid is fitted on the other datasets (their train + test splits) and
   thresholded, calibrated and adapted on their val splits, then scores the left-out dataset; the same on every
   **inner fold** (one more dataset left out of the rest);
2. the design is **chosen by its mean over the inner folds** (``transfer.select_by``: AUROC or balanced
   accuracy), never by one in-distribution val split and never on the left-out dataset; the design with the best
   mean over the outer folds is reported beside it (non-nested: it reads the left-out datasets, so its numbers are
   optimistic by as much as the difference);
3. the chosen design gates the steered model (``[conditional]``'s behaviour, gates and strengths; the behaviour
   vector fitted on the fold's training datasets), every gate and strength scored on the inner folds' left-out
   datasets and chosen by their mean there; the outer fold's row is the chosen one, with its random-gate control;
4. every detector is scored on every sample of the left-out dataset: the chosen probe (its threshold transferred),
   the adapted probe (its centre re-estimated from the left-out inputs, no label), the steered model, its random
   gate, the same two at the strength of the grid whose answer flags the training datasets' share of the
   left-out inputs (matched without labels), the model's own answer, the length-only control, the bag-of-tokens
   control (TF-IDF of the code's tokens: what the words alone tell, no model), the non-nested probe, and the peer
   analysers where installed.

Resumable: activations come from the activation cache, every (fold, design) is appended to ``designs.jsonl`` and
every chunk of steered rows to ``steered.jsonl`` as it finishes, peers are kept in ``peers.json``; a rerun into the
same folder skips what is done (and refuses another experiment's folder, naming the keys that changed).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..._version import __version__
from ...config import ExperimentConfig, config_document, dump_config, identity_of
from ...config.design import ProbeDesign
from ...detection.peers import run_peer
from ...detection.records import DetectionRecord
from ...io import write_json, write_text
from ...lm.activation_cache import ActivationCache
from ...lm.activations import ANSWER_POOLINGS
from ...lm.model import LoadedModel, load_model
from ...lm.prompts import DEFAULT_TEMPLATE, PROBE_PROMPTS
from ...progress import Progress
from ...stats.compare import metrics_block
from ...stats.metrics import Prediction
from ...stats.shares import top_share_threshold
from ...steering.probe import Probe
from ..header import ModelInfo
from ..prepare import load_dataset
from ..rundir import RunDir
from ..tables import MetricBlock
from .data import TransferDataset, dataset_sections, load_transfer_data, with_activations
from .designs import (
    DesignStore,
    FoldScores,
    design_grid,
    fit_on_fold,
    length_scores,
    metric_of,
    predictions,
    token_scores,
)
from .designs import probe_scores as probe_fold_scores
from .folds import Fold, inner_folds, outer_folds
from .results import DatasetInfo, DetectorRow, FoldResult, TransferResults
from .steered import (
    Steered,
    SteeredSetting,
    SteeredStore,
    fold_vector,
    matched_strength,
    score_steered,
    steered_layers,
    steered_settings,
    steered_variants,
)

__all__ = ["TRANSFER_SECTIONS", "choose", "run_transfer"]

#: The files of a transfer run that hold finished work (a rerun resumes from them).
RECORD_FILES: tuple[str, ...] = ("designs.jsonl", "steered.jsonl", "peers.json")
#: The configuration sections the transfer protocol reads (its run's identity).
TRANSFER_SECTIONS: tuple[str, ...] = ("model", "data", "steering", "conditional", "transfer")


def choose(candidates: Sequence[str], scores: Mapping[str, Sequence[float]]) -> tuple[str, float]:
    """The candidate with the best mean score (nan scores left out of the mean; a candidate without any scores
    never wins; ties to the earlier candidate), and that mean.

    >>> choose(["a", "b"], {"a": [0.6, 0.7], "b": [0.7, float("nan")]})
    ('b', 0.7)
    """
    best, best_mean = "", -math.inf
    for name in candidates:
        values = [v for v in scores.get(name, ()) if not math.isnan(v)]
        mean = float(np.mean(values)) if values else -math.inf
        if mean > best_mean:
            best, best_mean = name, mean
    if not best:
        raise ValueError(f"no candidate of {len(candidates)} has a score to choose by")
    return best, best_mean


class _Transfer:
    """One run of the protocol (its state kept together so each phase can be resumed)."""

    def __init__(
        self, config: ExperimentConfig, run: RunDir, lm: LoadedModel, data: Sequence[TransferDataset], progress: bool
    ) -> None:
        self.config, self.run, self.lm, self.progress = config, run, lm, progress
        self.names = [d.name for d in data]
        #: the outer folds this run reports (``transfer.folds``; every dataset by default), each with its inner folds
        self.outer = [f for f in outer_folds(self.names) if f.left_out in (config.transfer.folds or self.names)]
        self.data: dict[str, TransferDataset] = {d.name: d for d in data}
        self.grid = design_grid(config, lm.num_layers)
        self.designs = {d.key: d for d in self.grid}
        self.seed = config.data.seed
        self.criterion = config.transfer.select_by
        self.store = DesignStore(run.path / RECORD_FILES[0])
        self.steered_store = SteeredStore(run.path / RECORD_FILES[1])
        self._fits: dict[tuple[str, frozenset[str]], Probe] = {}
        self.timings: dict[str, float] = {}
        self.notes: list[str] = []
        if len(self.outer) < len(self.names):
            self.notes.append(
                f"only the outer folds {', '.join(f.left_out for f in self.outer)} were run (transfer.folds), each "
                "choosing on all of its inner folds; every mean and the non-nested choice are over them alone"
            )

    # ------------------------------------------------------------------------------------------------ phases

    def extract(self) -> None:
        """Every dataset's activations at every layer and pooling a design reads, and (for the steered model) the
        answer poolings and the answer position at every layer it may steer."""
        t = time.perf_counter()
        layers = {layer for d in self.grid for layer in d.layers}
        poolings = {p for d in self.grid for p in d.poolings}
        if self.config.transfer.steered:
            layers |= {layer for d in self.grid for layer in steered_layers(self.config, d.deepest)}
            poolings |= {"last", *ANSWER_POOLINGS}
        cache = ActivationCache(self.config.run.cache_dir, enabled=self.config.run.cache)
        order = [p for p in ("last", "code_mean", "code_max", *ANSWER_POOLINGS) if p in poolings]
        data = with_activations(
            list(self.data.values()),
            self.lm,
            cache,
            sorted(layers),
            order,
            self.config.detection.batch_size,
            self.progress,
            list(dict.fromkeys(d.template for d in self.grid)),
        )
        self.data = {d.name: d for d in data}
        self.timings["activations"] = time.perf_counter() - t

    def fit(self, design: ProbeDesign, fold: Fold) -> Probe:
        """*design* fitted on *fold*'s training datasets (folds with the same training datasets share the fit)."""
        key = (design.key, frozenset(fold.training))
        if key not in self._fits:
            self._fits[key] = fit_on_fold(design, fold, self.data, self.seed)
        return self._fits[key]

    def score_designs(self) -> None:
        """Every design on every outer and inner fold (what ``designs.jsonl`` does not hold yet)."""
        t = time.perf_counter()
        folds = [f for outer in self.outer for f in (outer, *inner_folds(self.names, outer.left_out))]
        todo = [(f, d) for d in self.grid for f in folds if self.store.get(f.key, d.key) is None]
        with Progress(len(todo), "probe designs x folds", unit="fit", enabled=self.progress) as bar:
            for fold, design in todo:
                probe = self.fit(design, fold)
                found = probe_fold_scores(probe, fold, self.data[fold.left_out], self.config.conditional.min_adapt)
                self.store.add(found)
                bar.update(1)
        self.timings["designs"] = time.perf_counter() - t

    def scores(self, fold: Fold, design: ProbeDesign) -> FoldScores:
        found = self.store.get(fold.key, design.key)
        assert found is not None, (fold.key, design.key)
        return found

    def adapted_threshold(self, outer: Fold, found: FoldScores) -> float | None:
        """The adapted probe's threshold on *outer*'s left-out dataset (*found*: its scores there): the one that
        flags the highest share of its adapted scores that the training datasets had vulnerable, each weighing the
        same (:func:`~vulnsteer.stats.shares.top_share_threshold`), as the shipped detector adapted flags the share
        of its calibration data. No label of the left-out dataset is read: its share is assumed, not found. None
        where the probe did not adapt."""
        if found.adapted is None:
            return None
        return top_share_threshold(np.asarray(found.adapted, dtype=np.float64), self.training_share(outer))

    def training_share(self, fold: Fold) -> float:
        """The vulnerable share of *fold*'s training datasets, each weighing the same: the share a label-free rule
        assumes of the left-out inputs."""
        return float(np.mean([np.mean(self.data[name].labels) for name in fold.training]))

    def metric(self, fold: Fold, found: FoldScores) -> float:
        return metric_of(found, self.data[fold.left_out], self.criterion)

    def choose_designs(self) -> tuple[dict[str, str], dict[str, dict[str, float]], str, dict[str, dict[str, float]]]:
        """Per outer fold, the design with the best mean over its inner folds; the non-nested choice; and every
        design's criterion on each outer fold (what the non-nested choice ranks)."""
        chosen: dict[str, str] = {}
        inner_means: dict[str, dict[str, float]] = {}
        keys = [d.key for d in self.grid]
        for outer in self.outer:
            inner = inner_folds(self.names, outer.left_out)
            by_design = {d.key: [self.metric(f, self.scores(f, d)) for f in inner] for d in self.grid}
            chosen[outer.left_out], _ = choose(keys, by_design)
            inner_means[outer.left_out] = {k: _mean(v) for k, v in by_design.items()}
        folds = self.outer
        on_outer = {d.key: {f.left_out: self.metric(f, self.scores(f, d)) for f in folds} for d in self.grid}
        non_nested, _ = choose(keys, {key: list(by_fold.values()) for key, by_fold in on_outer.items()})
        return chosen, inner_means, non_nested, on_outer

    def steer(self, chosen: Mapping[str, str]) -> dict[str, dict[str, list[DetectionRecord]]]:
        """Every fold's steered rows (its outer fold's chosen design gating the push), scored one dataset at a
        time: each dataset's rows of every fold that leaves it out in one pass. Returns rows by fold and name, and
        the unsteered model's answers under ``answer`` (fold-independent)."""
        t = time.perf_counter()
        by_dataset: dict[str, dict[str, Any]] = {name: {} for name in self.names}
        for outer in self.outer:
            design = self.designs[chosen[outer.left_out]]
            for fold in (outer, *inner_folds(self.names, outer.left_out)):
                probe = self.fit(design, fold)
                vector = fold_vector(self.lm, fold, self.data, steered_layers(self.config, design.deepest))
                val = [self.data[n].probe_data(design, ("val",)) for n in fold.training]
                adapt = any(self.config.transfer.gate_adapted)  # (the left-out states only when a gate adapts)
                target = self.data[fold.left_out].probe_data(design) if adapt else None
                for row, spec in steered_variants(self.config, fold, probe, vector, val, target).items():
                    by_dataset[fold.left_out][row.name] = spec
        out: dict[str, dict[str, list[DetectionRecord]]] = {}
        for name in self.names:
            found = score_steered(
                self.lm,
                self.data[name],
                by_dataset[name],
                self.steered_store,
                batch_size=self.config.detection.batch_size,
                progress=self.progress,
            )
            out[name] = found
        self.timings["steered"] = time.perf_counter() - t
        return out

    def peers(self) -> dict[str, dict[str, tuple[dict[str, float], str]]]:
        """Every peer of ``transfer.peers`` on every dataset an outer fold leaves out (kept in ``peers.json``)."""
        path = self.run.path / RECORD_FILES[2]
        done: dict[str, Any] = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        out: dict[str, dict[str, tuple[dict[str, float], str]]] = {}
        for name in (f.left_out for f in self.outer):
            for tool in self.config.transfer.peers:
                key = f"{name}/{tool}"
                if key not in done:
                    found = run_peer(tool, self.data[name].samples)
                    done[key] = {"scores": dict(found.scores), "note": found.note}
                    write_json(path, done)
                out.setdefault(name, {})[tool] = (dict(done[key]["scores"]), str(done[key]["note"]))
        return out

    # ------------------------------------------------------------------------------------------------ rows

    def block(self, preds: Sequence[Prediction]) -> MetricBlock:
        return MetricBlock.from_json(metrics_block(preds, self.seed, self.config.transfer.n_boot))

    def fold_result(
        self,
        outer: Fold,
        design_key: str,
        non_nested: str,
        inner_means: Mapping[str, float],
        steered: Mapping[str, list[DetectionRecord]] | None,
        steered_choice: tuple[SteeredSetting, Mapping[str, float]] | None,
        non_nested_setting: SteeredSetting | None,
        peers: Mapping[str, tuple[dict[str, float], str]],
    ) -> FoldResult:
        """Every detector's row on *outer*'s left-out dataset: the probe and its adapted reading, the steered model
        with its controls, the length and bag-of-tokens controls, the non-nested probe, the peers."""
        target = self.data[outer.left_out]
        found = self.scores(outer, self.designs[design_key])
        rows = self.probe_rows(outer, design_key, found)
        steered_means: Mapping[str, float] = {}
        if steered is not None and steered_choice is not None:
            setting, steered_means = steered_choice
            rows += self.steered_rows(outer, setting, non_nested_setting, steered)
        rows += self.control_rows(outer)
        if non_nested != design_key:
            other_found = self.scores(outer, self.designs[non_nested])
            rows.append(
                DetectorRow(
                    "probe_non_nested",
                    "the probe with the best mean over the outer folds",
                    self.block(predictions(target, other_found.scores, other_found.threshold)),
                    non_nested,
                    "chosen on the outer folds: reads this dataset's labels",
                )
            )
        peer_rows, notes = self.peer_rows(target, predictions(target, found.scores, found.threshold), peers)
        return FoldResult(
            outer.left_out,
            outer.training,
            len(target.samples),
            sum(target.labels) / len(target.samples),
            (*rows, *peer_rows),
            dict(inner_means),
            dict(steered_means),
            tuple(notes),
        )

    def probe_rows(self, outer: Fold, design_key: str, found: FoldScores) -> list[DetectorRow]:
        """The chosen probe at its transferred threshold, and adapted to the left-out inputs (where it adapted)."""
        target = self.data[outer.left_out]
        rows = [
            DetectorRow(
                "probe",
                "the chosen probe (threshold from the training datasets' val)",
                self.block(predictions(target, found.scores, found.threshold)),
                design_key,
            ),
        ]
        adapted_threshold = self.adapted_threshold(outer, found)
        if found.adapted is not None and adapted_threshold is not None:
            rows.append(
                DetectorRow(
                    "adapted",
                    "the chosen probe adapted to the left-out inputs (no labels)",
                    self.block(predictions(target, found.adapted, adapted_threshold)),
                    design_key,
                    f"centre from {len(found.adapted)} unlabelled inputs; flags the training datasets' share",
                )
            )
        else:
            self.notes.append(f"{outer.left_out}: the adapted probe did not adapt ({found.note})")
        return rows

    def steered_rows(
        self,
        outer: Fold,
        setting: SteeredSetting,
        non_nested_setting: SteeredSetting | None,
        steered: Mapping[str, list[DetectionRecord]],
    ) -> list[DetectorRow]:
        """The steered model at the setting chosen on the inner folds, its random gate, the unsteered answer, the
        same two at the matched strength (:meth:`matched_rows`), and the non-nested setting where it differs."""
        name = Steered(outer.key, setting).name
        rows = [
            DetectorRow(
                "steered",
                "the steered model (the chosen probe gating the push), its answer",
                self.block([r.to_prediction() for r in steered[name]]),
                setting.key,
                "score: the answer margin; verdict: the model's own answer",
            ),
            DetectorRow(
                "gate_control",
                "the same push gated by a random direction",
                self.block([r.to_prediction() for r in steered[name + "|random"]]),
                setting.key,
                control_of="steered",
            ),
            DetectorRow(
                "answer",
                "the model's own answer (unsteered)",
                self.block([r.to_prediction() for r in steered["baseline"]]),
                "",
                "score: the answer margin; verdict at 0",
            ),
            *self.matched_rows(outer, setting, steered),
        ]
        if non_nested_setting is not None and non_nested_setting != setting:
            rows.append(
                DetectorRow(
                    "steered_non_nested",
                    "the steered model with the non-nested setting",
                    self.block([r.to_prediction() for r in steered[Steered(outer.key, non_nested_setting).name]]),
                    non_nested_setting.key,
                )
            )
        return rows

    def control_rows(self, outer: Fold) -> list[DetectorRow]:
        """The probe's controls without a model: the code's length, and its words (bag of tokens)."""
        target = self.data[outer.left_out]
        length = length_scores(outer, self.data)
        tokens = token_scores(outer, self.data)
        return [
            DetectorRow(
                "length",
                "length-only control (log code tokens)",
                self.block(predictions(target, length.scores, length.threshold)),
                "",
                length.note,
                control_of="probe",
            ),
            DetectorRow(
                "bag_of_tokens",
                "bag-of-tokens control (TF-IDF of the code's tokens, logistic; no model)",
                self.block(predictions(target, tokens.scores, tokens.threshold)),
                "",
                "what the code's words alone tell",
                control_of="probe",
            ),
        ]

    def peer_rows(
        self,
        target: TransferDataset,
        probe_preds: Sequence[Prediction],
        peers: Mapping[str, tuple[dict[str, float], str]],
    ) -> tuple[list[DetectorRow], list[str]]:
        """Each peer analyser on the samples of its languages, with the chosen probe on the same samples; and a
        note for each peer that read none."""
        rows: list[DetectorRow] = []
        notes: list[str] = []
        for tool, (scores, note) in peers.items():
            mine = [s for s in target.samples if s.id in scores]
            if not mine:
                notes.append(f"{tool}: {note or 'no sample of its languages'}")
                continue
            preds = [Prediction(s.id, s.cwe, s.pair_id, s.y, int(scores[s.id] > 0), scores[s.id]) for s in mine]
            languages = ", ".join(sorted({s.language for s in mine}))
            rows.append(
                DetectorRow(
                    tool,
                    f"{tool} ({languages}; flagged = any finding)",
                    self.block(preds),
                    "",
                    f"{len(mine)} of {len(target.samples)} samples",
                    probe_same=self.block([p for p in probe_preds if p.sample_id in scores]),
                )
            )
        return rows, notes

    def matched_rows(
        self, outer: Fold, setting: SteeredSetting, steered: Mapping[str, list[DetectionRecord]]
    ) -> list[DetectorRow]:
        """The chosen gate at the strength whose answer on the left-out inputs flags the training datasets' share
        (:func:`~.steered.matched_strength`, no label read), and the same rule under the random gate; none where the
        grid has one strength."""
        share = self.training_share(outer)
        settings = steered_settings(self.config)
        rows = []
        for control in (False, True):
            found = matched_strength(steered, outer, setting, share, settings, control=control)
            if found is None:
                return []
            chosen, flagged = found
            rows.append(
                DetectorRow(
                    "gate_control_matched" if control else "steered_matched",
                    "the same push gated by a random direction, its strength matched the same way"
                    if control
                    else "the steered model, the chosen gate at a strength matched to the left-out inputs (no labels)",
                    self.block([r.to_prediction() for r in steered[Steered(outer.key, chosen, control).name]]),
                    chosen.key,
                    f"the strength of the grid whose answer flags the share nearest the training datasets' "
                    f"{share:.2f}: {flagged:.2f} flagged",
                    control_of="steered_matched" if control else None,
                )
            )
        return rows

    def choose_steered(
        self, steered: Mapping[str, Mapping[str, list[DetectionRecord]]]
    ) -> tuple[dict[str, tuple[SteeredSetting, dict[str, float]]], SteeredSetting]:
        """Per outer fold, the setting (gate, strength, adaptation) with the best mean over its inner folds (and
        every setting's mean, by key); and the non-nested one."""
        settings = {s.key: s for s in steered_settings(self.config)}

        def value(fold: Fold, setting: SteeredSetting) -> float:
            records = steered[fold.left_out].get(Steered(fold.key, setting).name)
            if records is None:  # an adapted gate with too few inputs to adapt to
                return math.nan
            block = self.block([r.to_prediction() for r in records])
            got = block.auroc if self.criterion == "auroc" else block.balanced_accuracy
            return math.nan if got is None else float(got)

        out: dict[str, tuple[SteeredSetting, dict[str, float]]] = {}
        for outer in self.outer:
            inner = inner_folds(self.names, outer.left_out)
            by = {key: [value(f, s) for f in inner] for key, s in settings.items()}
            best, _ = choose(list(settings), by)
            out[outer.left_out] = (settings[best], {key: _mean(v) for key, v in by.items()})
        on_outer = {key: [value(f, s) for f in self.outer] for key, s in settings.items()}
        non_nested, _ = choose(list(settings), on_outer)
        return out, settings[non_nested]


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def run_transfer(
    config: ExperimentConfig,
    out_dir: str | Path | None = None,
    *,
    lm: LoadedModel | None = None,
    progress: bool = True,
) -> Path:
    """Run (or resume) the transfer protocol of *config* into *out_dir* (default ``run.out``, else
    ``runs/transfer-<timestamp>``); returns the run folder (``results.json``, ``report.md``, ``designs.jsonl``,
    ``steered.jsonl``, ``peers.json``).

    >>> run_transfer(load_config("examples/transfer.toml"), "/tmp/transfer")  # doctest: +SKIP
    """
    from ...report.transfer import render_transfer
    from ..protocol import default_out_dir

    run = RunDir(out_dir or config.run.out or default_out_dir("transfer"), RECORD_FILES)
    run.check_writable("--out")
    for one in dataset_sections(config):
        load_dataset(one)  # data errors before the model loads
    own = lm is None
    if lm is None:
        lm = load_model(config.model)
    started = time.perf_counter()
    try:
        data = load_transfer_data(config, lm.tokenizer, progress)
        identity = {
            **identity_of(config, TRANSFER_SECTIONS),
            "model": lm.identity.digest(),
            "template": DEFAULT_TEMPLATE.to_dict(),
            **{f"data_{d.name}": d.hash for d in data},
        }
        prompts = config.transfer.other_prompts
        if prompts:  # (a design's wording decides its numbers as its name does not; absent: the runs before them)
            identity["prompts"] = {name: PROBE_PROMPTS[name].to_dict() for name in prompts}
        header = (
            f"vulnsteer {__version__} resolved config: `vulnsteer transfer {run.resolved}` reproduces this run.\n"
            "Every default is filled in; layers are as written (negative = from the end)."
        )
        with run.open(identity, "transfer", resolved=dump_config(config, header)):
            t = _Transfer(config, run, lm, data, progress)
            t.extract()
            t.score_designs()
            chosen, inner_means, non_nested, designs_outer = t.choose_designs()
            steered = t.steer(chosen) if config.transfer.steered else None
            steered_choices, non_nested_setting = t.choose_steered(steered) if steered else ({}, None)
            peers = t.peers()
            folds = tuple(
                t.fold_result(
                    outer,
                    chosen[outer.left_out],
                    non_nested,
                    inner_means[outer.left_out],
                    None if steered is None else steered[outer.left_out],
                    steered_choices.get(outer.left_out),
                    non_nested_setting,
                    peers.get(outer.left_out, {}),
                )
                for outer in t.outer
            )
            t.timings["total"] = time.perf_counter() - started
            results = TransferResults(
                "complete",
                config_document(config),
                ModelInfo.of(lm),
                tuple(
                    DatasetInfo(d.name, d.source, len(d.samples), sum(d.labels), d.cap, d.hash) for d in t.data.values()
                ),
                t.criterion,
                folds,
                non_nested,
                "" if non_nested_setting is None else non_nested_setting.key,
                tuple(t.notes),
                run.add_timings(t.timings),
                designs_outer,
            )
            write_json(run.path / "results.json", results.to_json())
            write_text(run.path / "report.md", render_transfer(results))
    finally:
        if own:
            lm.close()
    return run.path
