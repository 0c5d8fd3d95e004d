"""Detector families are plug-ins of the protocol: a family defined here (fitted on train, thresholded on val,
applied to the held-out activations, with an adapted variant and a control) reaches results.json and report.md
without editing the protocol, the apply engine or the lead table, which name no family."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from conftest import write_toy_jsonl
from vulnsteer.config.design import ProbeDesign
from vulnsteer.config.experiment import ExperimentConfig
from vulnsteer.detection.detector import SavedDetector
from vulnsteer.detection.probe import choose_threshold
from vulnsteer.detection.records import DetectionRecord
from vulnsteer.experiment import apply, lead, protocol
from vulnsteer.experiment.chosen import load_chosen
from vulnsteer.experiment.evaluate import evaluate_from_run, transfer_config
from vulnsteer.experiment.families import DEFAULT_FAMILIES, by_name, conditional, enabled
from vulnsteer.experiment.families.setting import SettingChoices
from vulnsteer.experiment.family import (
    ActivationNeeds,
    Applied,
    Artefacts,
    FitContext,
    HeldOut,
    LeadEntry,
    Saved,
    ValContext,
)
from vulnsteer.experiment.grid import Condition, Setting
from vulnsteer.experiment.protocol import run_protocol
from vulnsteer.experiment.results import FamilyResults
from vulnsteer.experiment.select import Choice
from vulnsteer.experiment.upgrade import load_results
from vulnsteer.io import JsonObject
from vulnsteer.lm.model import LoadedModel
from vulnsteer.steering.probe import Adaptation, Probe

LAYER, POOLING = 1, "code_mean"


@dataclass(frozen=True)
class Direction:
    """What the toy family fitted: a class-mean direction (train) and its threshold (val); once chosen, the modes
    it is kept for."""

    weight: torch.Tensor
    threshold: float
    modes: tuple[str, ...] = ()


@dataclass(frozen=True)
class MeanDirectionFamily:
    """A toy detector family: the class-mean direction of the code-mean hidden state at one layer, fitted on train,
    thresholded on val; applied to the held-out activations as is, *adapted* (its threshold re-estimated as the
    median of the unlabelled held-out scores), and with a control (a random direction of the same norm)."""

    name: str = "mean_direction"
    label: str = "class-mean direction of the hidden state"

    def enabled(self, config: ExperimentConfig) -> bool:
        return True

    def needs(
        self, config: ExperimentConfig, layer_sets: Sequence[tuple[int, ...]], num_layers: int
    ) -> ActivationNeeds:
        return ActivationNeeds((LAYER,), (POOLING,))

    def _scores(self, direction: torch.Tensor, ctx_acts: torch.Tensor) -> torch.Tensor:
        return ctx_acts.float() @ direction

    def fit(self, ctx: FitContext) -> Direction:
        train, val = ctx.acts("train").get(POOLING, LAYER), ctx.acts("val").get(POOLING, LAYER)
        y = torch.tensor([s.y for s in ctx.data.samples("train")])
        weight = train[y == 1].float().mean(0) - train[y == 0].float().mean(0)
        scores = self._scores(weight, val).numpy()
        return Direction(weight, choose_threshold(scores, [s.y for s in ctx.data.samples("val")]))

    def artefacts(self, fitted: Direction) -> Artefacts:
        return Artefacts()

    def val_conditions(self, fitted: Direction, mode: str) -> list[Condition]:
        return []

    def select(self, fitted: Direction, val: ValContext) -> Direction:
        return dataclasses.replace(fitted, modes=tuple(val.config.detection.modes))

    def save(self, chosen: Direction, run: Path, info: JsonObject) -> Saved:
        kept = {"weight": chosen.weight.tolist(), "threshold": chosen.threshold}
        return Saved(chosen={mode: kept for mode in chosen.modes})  # chosen.json keys every entry by mode

    def restore(self, entry: JsonObject, run: Path, lm: LoadedModel, allow_mismatch: bool) -> Direction | None:
        if not entry:
            return None
        kept = next(iter(entry.values()))
        return Direction(torch.tensor(kept["weight"]), float(kept["threshold"]), tuple(entry))

    def held_out_conditions(self, chosen: Direction, held: HeldOut) -> list[Condition]:
        return []

    def _records(self, held: HeldOut, weight: torch.Tensor, threshold: float | None) -> list[DetectionRecord]:
        assert held.activations is not None
        samples = [s for group in held.samples.values() for s in group]
        scores = self._scores(weight, held.activations().get(POOLING, LAYER))
        cut = float(scores.median()) if threshold is None else threshold  # adapted: no label is read
        verdicts = ["vulnerable" if float(x) > cut else "secure" for x in scores]
        return [
            DetectionRecord(s.id, s.cwe, s.pair_id, s.y, v, score=float(x))
            for s, v, x in zip(samples, verdicts, scores, strict=True)
        ]

    def apply(self, chosen: Direction, held: HeldOut) -> Applied:
        random = torch.randn(chosen.weight.shape, generator=torch.Generator().manual_seed(0))
        random = random * chosen.weight.norm() / random.norm()
        entries = [
            LeadEntry(self.name, "class-mean direction, threshold on val",
                      self._records(held, chosen.weight, chosen.threshold)),
            LeadEntry(f"{self.name}_adapted", "the same, threshold re-estimated on the unlabelled held-out inputs",
                      self._records(held, chosen.weight, None)),
            LeadEntry(f"{self.name}_control", "a random direction of the same norm",
                      self._records(held, random, chosen.threshold), control_of=self.name,
                      claim="the direction matters", what="the random direction"),
        ]  # fmt: skip
        return Applied({mode: entries for mode in held.modes})

    def results(
        self, fitted: Direction | None, chosen: Direction | None, applied: Applied | None, saved: Saved | None
    ) -> FamilyResults:
        return FamilyResults(self.name, self.label, thresholds={"any": chosen.threshold} if chosen else {})


def _config(tmp_path: Path, **keys: object) -> ExperimentConfig:
    base: dict[str, object] = {
        "data__path": str(write_toy_jsonl(tmp_path / "toy.jsonl", n_pairs=5)),
        "data__format": "jsonl",
        "data__max_code_tokens": 64,
        "steering__layers": [[1]],
        "steering__strengths": {"raw": [0.5]},
        "conditional__strengths": {"sigma": [2.0]},
        "detection__modes": ["logit"],
        "baselines__templates": [],
        "report__probes": False,
        "run__cache_dir": str(tmp_path / "cache"),
    }
    return ExperimentConfig().replace(**{**base, **keys})


def test_a_family_defined_here_reaches_results_and_report(tmp_path: Path, tiny_lm: LoadedModel) -> None:
    families = (*DEFAULT_FAMILIES, MeanDirectionFamily())
    out = run_protocol(_config(tmp_path), tmp_path / "run", lm=tiny_lm, progress=False, families=families)
    results = load_results(out / "results.json")
    assert list(results.families) == [f.name for f in families]
    assert math.isfinite(results.families["mean_direction"].thresholds["any"])
    table = results.lead["logit"]
    rows = {r.name: r for r in table.rows}
    n = rows["baseline"].metrics.n
    adapted = rows["mean_direction_adapted"].metrics.vulnerable_rate  # a median split of the held-out scores
    assert adapted is not None and abs(adapted - 0.5) <= 1 / n
    names = [r.name for r in table.rows]
    assert names[-3:] == ["mean_direction", "mean_direction_adapted", "mean_direction_control"]
    assert names[:2] == ["baseline", "calibrated"] and "conditional" in names and "probe" in names
    mine = rows["mean_direction"]
    assert mine.family == "mean_direction" and mine.metrics.n == rows["baseline"].metrics.n  # the same samples
    control = rows["mean_direction_control"]
    assert control.control_of == "mean_direction" and control.versus is not None  # compared with what it controls
    assert rows["gate_control"].control_of == "conditional" and rows["gate_control"].versus is not None
    report = (out / "report.md").read_text()
    for name in ("mean_direction", "mean_direction_adapted", "mean_direction_control"):
        assert f"| **{name}** |" in report
    # the configuration picks the families: without conditional steering, neither it nor its probe runs
    off = run_protocol(
        _config(tmp_path, conditional__enabled=False), tmp_path / "off", lm=tiny_lm, progress=False, families=families
    )
    assert list(load_results(off / "results.json").families) == [
        "calibrated",
        "prompt",
        "constant",
        "mean_direction",
    ]


def test_a_family_defined_here_is_applied_unchanged_by_evaluate_from(tmp_path: Path, tiny_lm: LoadedModel) -> None:
    """It keeps its choice in the run's chosen/ folder; evaluate --from restores it and applies it to another
    dataset, reading that dataset's activations (as an adapted detector will)."""
    families = (*DEFAULT_FAMILIES, MeanDirectionFamily())
    config = _config(tmp_path, conditional__enabled=False)
    run = run_protocol(config, tmp_path / "run", lm=tiny_lm, progress=False, families=families)
    other = write_toy_jsonl(tmp_path / "other.jsonl", cwes=("CWE-89", "CWE-22"), n_pairs=3, prefix="other")
    transfer = transfer_config(run, {"data.path": (str(other), "--data"), "data.format": ("jsonl", "--format")})
    out = evaluate_from_run(run, transfer, tmp_path / "t", lm=tiny_lm, progress=False, families=families)
    results = load_results(out / "results.json")
    assert list(results.families) == ["constant", "mean_direction"]  # what the run kept, re-applied
    rows = {r.name: r for r in results.lead["logit"].rows}
    assert rows["mean_direction"].metrics.n == rows["baseline"].metrics.n == 6  # CWE-89's samples (22: no choice)
    assert rows["mean_direction_control"].control_of == "mean_direction"
    kept = load_results(run / "results.json").families["mean_direction"].thresholds
    assert results.families["mean_direction"].thresholds == kept  # the run's threshold, not re-chosen


def test_families_are_values() -> None:
    assert isinstance(DEFAULT_FAMILIES, tuple)
    for family in DEFAULT_FAMILIES:
        with pytest.raises(dataclasses.FrozenInstanceError):
            family.name = "other"  # type: ignore[misc]
    assert by_name(DEFAULT_FAMILIES, "conditional") is DEFAULT_FAMILIES[3] and by_name(DEFAULT_FAMILIES, "x") is None
    with pytest.raises(ValueError, match="two detector families are named 'constant'"):
        enabled((*DEFAULT_FAMILIES, DEFAULT_FAMILIES[2]), ExperimentConfig())


@pytest.mark.parametrize("module", [protocol, apply, lead])
def test_the_protocol_the_apply_engine_and_the_lead_table_name_no_family(module: object) -> None:
    code = Path(str(getattr(module, "__file__", ""))).read_text().splitlines()
    source = "\n".join(line for line in code if not line.startswith(("from ", "import ")))  # (detection.probe_table)
    names = [f.name for f in DEFAULT_FAMILIES]
    found = re.findall(rf"\b({'|'.join(names)}|gated)\b", source)
    assert not found, found


def test_a_gating_probe_of_several_states_with_the_calibrated_gate(tmp_path: Path, tiny_lm: LoadedModel) -> None:
    """conditional.designs: a probe reading two layers at both code poolings, residualised on length, gates the
    push (every layer it reads at or below the steered one); the saved detector and chosen/ keep it whole."""
    design = {"layers": [0, 1], "poolings": ["code_mean", "code_max"], "length": "residual", "C": 0.5}
    config = _config(
        tmp_path, conditional__designs=[design], conditional__gates=["calibrated", "sign"], conditional__min_adapt=4
    )
    out = run_protocol(config, tmp_path / "run", lm=tiny_lm, progress=False)
    results = load_results(out / "results.json")
    key = "logistic@code_mean+code_max@L0,1|C=0.5|length=residual"
    assert any(key in k for k in results.families["conditional"].probes)
    detector = SavedDetector.load(out / "detector", tiny_lm)
    assert detector.probe.key == key and detector.probe.reads_length and detector.gate in ("calibrated", "sign")
    rows = {r.name: r for r in results.lead["logit"].rows}
    for name in ("conditional", "probe", "adapted"):
        assert rows[name].metrics.n == rows["baseline"].metrics.n and rows[name].metrics.auroc is not None
    probes = list((out / "chosen" / "probes-alone").glob("*.safetensors"))
    assert probes and Probe.load(probes[0]).key == key


def test_one_gated_setting_for_every_cwe_is_chosen_on_every_cwes_val_samples(
    tmp_path: Path, tiny_lm: LoadedModel
) -> None:
    """[conditional] select = "pooled": every CWE gets the same choice, the one whose val balanced accuracy over
    every CWE's samples together is the best (ties to the smaller |strength|), against the baseline's over the same
    samples; per_cwe (the default) chooses from each CWE's own samples."""
    keys = {"conditional__gates": ["linear", "toward_secure"], "conditional__strengths": {"sigma": [2.0, 8.0]}}
    pooled = _config(tmp_path, conditional__select="pooled", conditional__min_adapt=4, **keys)
    out = run_protocol(pooled, tmp_path / "run", lm=tiny_lm, progress=False)
    results = load_results(out / "results.json")
    choices = results.families["conditional"].choices["logit"]
    assert sorted(choices) == ["CWE-78", "CWE-89"]
    first, second = choices.values()
    assert dataclasses.replace(second, target=first.target) == first
    assert "every CWE together" in first.selected_by
    entries = [e for e in results.val["logit"] if e.family == "conditional" and e.condition.role == "steered"]
    overall = {e.condition.key: e.metrics["overall"].balanced_accuracy for e in entries}
    best = max(entries, key=lambda e: (overall[e.condition.key], -abs(e.condition.strength)))
    assert first.best == best.condition.setting and first.val_best == overall[best.condition.key]
    baseline = next(e for e in results.val["logit"] if e.condition.role == "baseline")
    assert first.val_baseline == baseline.metrics["overall"].balanced_accuracy
    assert first.chosen == ("steered" if first.val_best > first.val_baseline else "baseline")
    assert "one setting for every CWE" in (out / "report.md").read_text()
    # its steered test scores, adapted: the threshold flags the gate probe's calibration share of them
    rows = {r.name: r for r in results.lead["logit"].rows}
    if first.chosen == "steered":
        entry = load_chosen(out).families["conditional"]["logit"][first.target]
        share = Probe.load(out / "chosen" / entry["probes"][str(first.best.probe)]).adaptation.share
        adapted = rows["conditional_adapted"].metrics
        assert adapted.auroc == rows["conditional"].metrics.auroc
        assert adapted.vulnerable_rate == pytest.approx(share, abs=1 / adapted.n)
    else:
        assert "conditional_adapted" not in rows

    per_cwe = run_protocol(_config(tmp_path, **keys), tmp_path / "per-cwe", lm=tiny_lm, progress=False)
    own = load_results(per_cwe / "results.json").families["conditional"].choices["logit"]
    for cwe, choice in own.items():
        assert "every CWE together" not in choice.selected_by
        assert choice.val_best == max(e.metrics[cwe].balanced_accuracy for e in entries)


def test_the_adapted_steered_row_flags_the_gate_probes_share_of_the_steered_scores() -> None:
    """conditional_adapted: one gated setting for every CWE (its pooled probe filed under "any", as a run holds
    it) re-thresholds the steered scores to flag the highest share of them, the gate probe's calibration share;
    scores unchanged, no label read. Per-CWE choices, the baseline chosen, or too few inputs: no row."""
    design = ProbeDesign((1,), ("code_mean",))
    probe = Probe(design, torch.tensor([1.0]), 0.0, 0.0, adaptation=Adaptation(0.0, 1.0, share=0.25))
    setting = Setting("answer", "answer", (1,), "sigma", 4.0, "last", "toward_secure", design.key)
    choice = Choice("CWE-89", "steered", setting, 0.75, 0.5, scope="pooled")
    chosen = SettingChoices({"logit": {"CWE-89": choice}}, probes={("any", design.key): probe})
    scores = [0.9, 0.1, 0.8, 0.3, 0.2, 0.7, 0.4, 0.6]
    records = [
        DetectionRecord(f"s{i}", "CWE-89", None, i % 2, "secure", score=x, threshold=0.95) for i, x in enumerate(scores)
    ]
    steered = LeadEntry("conditional", "conditional steering", records)
    entry, why = conditional.adapted_entry(chosen, "logit", steered, min_adapt=4)
    assert why is None and entry is not None and entry.name == conditional.ADAPTED_ROW
    assert [r.score for r in entry.records] == scores
    assert [r.sample_id for r in entry.records if r.verdict == "vulnerable"] == ["s0", "s2"]  # the top 25%
    assert conditional.adapted_entry(chosen, "logit", steered, min_adapt=9) == (
        None, "logit mode: the steered model is not adapted: 8 inputs (at least 9)"
    )  # fmt: skip
    per_cwe = SettingChoices({"logit": {"CWE-89": dataclasses.replace(choice, scope="per_cwe")}}, probes=chosen.probes)
    baseline = SettingChoices(
        {"logit": {"CWE-89": dataclasses.replace(choice, chosen="baseline")}}, probes=chosen.probes
    )
    for other in (per_cwe, baseline):
        assert conditional.adapted_entry(other, "logit", steered, min_adapt=4) == (None, None)
