"""The transfer protocol on a tiny model and tiny synthetic datasets: fold structure (a left-out dataset is never
fitted or chosen on), nesting, resume, label-free adaptation and the table."""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runs import NAMES, transfer_config
from vulnsteer.config import parse_config
from vulnsteer.config.design import ProbeDesign
from vulnsteer.data.sample import Sample
from vulnsteer.experiment.transfer import TransferResults, inner_folds, outer_folds, run_transfer
from vulnsteer.experiment.transfer import designs as designs_mod
from vulnsteer.experiment.transfer import run as run_mod
from vulnsteer.experiment.transfer.designs import design_grid
from vulnsteer.lm.model import LoadedModel
from vulnsteer.report.transfer import render_transfer


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("transfer")


@pytest.fixture(scope="module")
def spied(module_tmp: Path, tiny_lm: LoadedModel) -> Iterator[tuple[Path, list[tuple[str, tuple[str, ...]]]]]:
    """One run, recording every fit's fold and training datasets."""
    fits: list[tuple[str, tuple[str, ...]]] = []
    original = run_mod.fit_on_fold

    def spy(design: ProbeDesign, fold: Any, data: Any, seed: int) -> Any:
        fits.append((fold.key, fold.training))
        return original(design, fold, data, seed)

    mp = pytest.MonkeyPatch()
    mp.setattr(run_mod, "fit_on_fold", spy)
    out = run_transfer(transfer_config(module_tmp), module_tmp / "run", lm=tiny_lm, progress=False)
    mp.undo()
    yield out, fits


def _results(out: Path) -> TransferResults:
    return TransferResults.from_json(json.loads((out / "results.json").read_text()))


def test_folds_leave_their_dataset_out_of_every_fit_and_choice() -> None:
    for outer in outer_folds(NAMES):
        assert outer.left_out not in outer.training and len(outer.training) == len(NAMES) - 1
        inner = inner_folds(NAMES, outer.left_out)
        assert [f.left_out for f in inner] == [n for n in NAMES if n != outer.left_out]
        for fold in inner:
            assert outer.left_out not in fold.training and fold.left_out not in fold.training
            assert set(fold.training) | {fold.left_out, outer.left_out} == set(NAMES)
    with pytest.raises(ValueError, match="no dataset left to fit on"):
        inner_folds(["a", "b"], "a")


def test_a_run_fits_each_fold_on_its_training_datasets_only(
    spied: tuple[Path, list[tuple[str, tuple[str, ...]]]],
) -> None:
    out, fits = spied
    assert fits
    for key, training in fits:
        left = key.split("/")
        assert not set(left) & set(training), (key, training)  # neither left-out dataset is fitted on
    # each (design, training set) is fitted once: inner folds that share a training set share the fit
    results = _results(out)
    assert [f.left_out for f in results.folds] == list(NAMES)
    for fold in results.folds:
        assert fold.left_out not in fold.training
        names = {r.name for r in fold.detectors}
        assert names >= {"probe", "adapted", "steered", "gate_control", "answer", "length", "bag_of_tokens"}
        assert fold.row("bag_of_tokens").control_of == "probe"  # type: ignore[union-attr]
        n = fold.n
        for row in fold.detectors:
            assert row.metrics.n == n  # every detector on every sample of the left-out dataset
            assert row.metrics.auroc is not None and row.metrics.auroc_ci is not None
            assert row.metrics.pair_rank_accuracy is not None and row.metrics.tpr_at_5_fpr is not None
        assert fold.row("gate_control").control_of == "steered"  # type: ignore[union-attr]
        assert fold.row("steered_matched") is None  # one strength in the grid: nothing to match


def test_designs_and_settings_are_chosen_by_their_mean_over_inner_folds(
    spied: tuple[Path, list[tuple[str, tuple[str, ...]]]],
) -> None:
    out, _ = spied
    results = _results(out)
    for fold in results.folds:
        probe = fold.row("probe")
        assert probe is not None
        best = max(fold.designs_inner.values())
        assert fold.designs_inner[probe.chosen] == best  # the design with the best inner mean
        steered = fold.row("steered")
        assert steered is not None and fold.steered_inner[steered.chosen] == max(fold.steered_inner.values())
    # the non-nested choice is the best mean over the outer folds (recomputed from the stored scores)
    store = designs_mod.DesignStore(out / "designs.jsonl")
    keys = list({f.row("probe").chosen for f in results.folds} | {results.non_nested_design})  # type: ignore[union-attr]
    assert results.non_nested_design in keys
    assert all(store.get(f.left_out, results.non_nested_design) is not None for f in results.folds)
    # every design of the grid on every left-out dataset: the chosen probe's row is its entry, and the non-nested
    # choice is the design with the best mean of them
    grid = [d.key for d in design_grid(transfer_config(out.parent), num_layers=4)]
    assert list(results.designs_outer) == grid and len(grid) > 1
    assert all(list(by_fold) == list(NAMES) for by_fold in results.designs_outer.values())
    for fold in results.folds:
        probe = fold.row("probe")
        assert probe is not None and probe.metrics.auroc is not None
        assert results.designs_outer[probe.chosen][fold.left_out] == pytest.approx(probe.metrics.auroc)
    means = {k: sum(v.values()) / len(v) for k, v in results.designs_outer.items()}
    assert results.non_nested_design == max(grid, key=lambda k: means[k])
    report = (out / "report.md").read_text()
    assert "## Every design on the left-out datasets" in report
    assert f"| `{results.non_nested_design}` | {means[results.non_nested_design]:.3f} |" in report


def test_a_rerun_resumes_without_refitting_or_rescoring(
    spied: tuple[Path, list[tuple[str, tuple[str, ...]]]],
    module_tmp: Path,
    tiny_lm: LoadedModel,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out, _ = spied
    before = _results(out)
    lines = {name: (out / name).read_text() for name in ("designs.jsonl", "steered.jsonl")}
    calls: list[str] = []
    original = designs_mod.fit_probe
    monkeypatch.setattr(designs_mod, "fit_probe", lambda *a, **k: calls.append("fit") or original(*a, **k))
    from vulnsteer.experiment.transfer import steered as steered_mod

    monkeypatch.setattr(steered_mod, "detect_variants_modes", lambda *a, **k: calls.append("score") or {})
    run_transfer(transfer_config(module_tmp), out, lm=tiny_lm, progress=False)
    after = _results(out)
    # the steered rows' probes are refitted in memory (cheap); nothing is scored again, no line is appended
    assert "score" not in calls
    assert {name: (out / name).read_text() for name in lines} == lines
    assert [f.to_json() for f in after.folds] == [f.to_json() for f in before.folds]
    # the rerun's timings add to the first attempt's (a re-render does not replace its fit time with ~0)
    assert after.timings_s["designs"] >= before.timings_s["designs"] > 0
    assert after.timings_s["total"] > before.timings_s["total"]


def test_another_config_is_refused_in_the_same_folder(
    spied: tuple[Path, list[tuple[str, tuple[str, ...]]]], module_tmp: Path, tiny_lm: LoadedModel
) -> None:
    out, _ = spied
    with pytest.raises(ValueError, match=r"transfer\.C"):
        run_transfer(transfer_config(module_tmp, C=[0.5]), out, lm=tiny_lm, progress=False)


def test_a_run_of_some_outer_folds_gives_their_rows_of_the_full_run(
    spied: tuple[Path, list[tuple[str, tuple[str, ...]]]], module_tmp: Path, tiny_lm: LoadedModel
) -> None:
    """``transfer.folds`` runs only the outer folds named, each choosing on all of its inner folds: its rows are
    those of the same fold in a run of every fold (only what is chosen over the outer folds, the non-nested rows,
    can differ), nothing is fitted for another outer fold, and the report says the means are over it alone."""
    full, _ = spied
    fits: list[str] = []
    original = run_mod.fit_on_fold

    def spy(design: ProbeDesign, fold: Any, data: Any, seed: int) -> Any:
        fits.append(fold.key)
        return original(design, fold, data, seed)

    mp = pytest.MonkeyPatch()
    mp.setattr(run_mod, "fit_on_fold", spy)
    out = run_transfer(
        transfer_config(module_tmp, folds=["gamma"]), module_tmp / "gamma-only", lm=tiny_lm, progress=False
    )
    mp.undo()
    assert fits and all(key == "gamma" or key.startswith("gamma/") for key in fits)
    (fold,) = _results(out).folds
    (same,) = [f for f in _results(full).folds if f.left_out == "gamma"]
    assert fold.left_out == "gamma" and fold.training == same.training
    rows = {r.name: r for r in fold.detectors if "non_nested" not in r.name}
    assert set(rows) >= {"probe", "adapted", "steered", "gate_control", "answer", "length", "bag_of_tokens"}
    for name, row in rows.items():
        other = same.row(name)
        assert other is not None and row.chosen == other.chosen, name
        assert row.metrics.auroc == pytest.approx(other.metrics.auroc, abs=1e-9), name
        assert row.metrics.balanced_accuracy == pytest.approx(other.metrics.balanced_accuracy, abs=1e-9), name
    assert "only the outer folds gamma were run (transfer.folds)" in (out / "report.md").read_text()
    from vulnsteer.experiment.transfer.ship import fit_default

    with pytest.raises(ValueError, match=r"left out 1 of its 4 datasets \(transfer\.folds\)"):
        fit_default(out, module_tmp / "shipped-gamma", cache_dir=module_tmp / "cache", progress=False)
    with pytest.raises(
        ValueError, match=r"transfer\.folds: no dataset named 'omega' in data\.paths \(its names: alpha"
    ):
        run_transfer(transfer_config(module_tmp, folds=["omega"]), module_tmp / "omega", lm=tiny_lm, progress=False)


def test_adaptation_reads_no_label_of_the_left_out_data(module_tmp: Path, tiny_lm: LoadedModel) -> None:
    """Permuting the left-out dataset's labels changes no adapted score and no adapted threshold."""
    from vulnsteer.experiment.transfer.run import _Transfer

    config = transfer_config(module_tmp)
    from vulnsteer.experiment.rundir import RunDir
    from vulnsteer.experiment.transfer.data import load_transfer_data

    data = load_transfer_data(config, tiny_lm.tokenizer, progress=False)
    t = _Transfer(config, RunDir(module_tmp / "scratch"), tiny_lm, data, False)
    t.extract()
    fold = outer_folds(NAMES)[1]
    design = t.grid[-1]
    probe = t.fit(design, fold)
    plain = designs_mod.probe_scores(probe, fold, t.data[fold.left_out], 5)
    target = t.data[fold.left_out]
    labels = [s.label for s in target.samples]
    random.Random(0).shuffle(labels)
    shuffled = {s.id: dataclasses.replace(s, label=lab) for s, lab in zip(target.samples, labels, strict=True)}
    assert [s.label for s in shuffled.values()] != [s.label for s in target.samples]
    permuted = dataclasses.replace(
        target, splits={k: tuple(shuffled[s.id] for s in v) for k, v in target.splits.items()}
    )
    again = designs_mod.probe_scores(probe, fold, permuted, 5)
    assert plain.adapted is not None and again.adapted == plain.adapted
    assert again.adapted_threshold == plain.adapted_threshold
    # the adapted scores are the unadapted ones centred on their own mean (label-free)
    mean = sum(plain.scores) / len(plain.scores)
    assert max(abs(a - (s - mean)) for a, s in zip(plain.adapted, plain.scores, strict=True)) < 1e-4
    # below the minimum count it refuses and says why
    refused = designs_mod.probe_scores(probe, fold, target, len(target.samples) + 1)
    assert refused.adapted is None and "at least" in refused.note


def test_the_table_has_a_row_per_left_out_dataset_and_the_length_control(
    spied: tuple[Path, list[tuple[str, tuple[str, ...]]]],
) -> None:
    out, _ = spied
    results = _results(out)
    text = render_transfer(results)
    assert (out / "report.md").read_text() == text
    header = next(line for line in text.splitlines() if line.startswith("| left out"))
    for name in ("probe", "adapted", "steered", "gate_control", "answer", "length"):
        assert f" {name} " in header
    for fold in results.folds:
        row = next(line for line in text.splitlines() if line.startswith(f"| {fold.left_out} ("))
        probe = fold.row("probe")
        assert probe is not None and f"{probe.metrics.auroc:.3f}" in row
    assert "| **mean** |" in text and "length-only control" in text


def test_the_grid_is_the_product_of_its_lists() -> None:
    config = parse_config(
        {
            "transfer": {
                "layers": [[1], [0, -1]],
                "poolings": [["code_mean"]],
                "C": [0.1, 0.01],
                "combine": ["concat", "ensemble"],
                "length": ["none", "residual"],
            }
        }
    )
    grid = design_grid(config, num_layers=4)
    # one layer: concat only (an ensemble of one is the probe itself); [0, -1] resolves to (0, 3)
    assert len(grid) == 1 * 2 * 2 + 1 * 2 * 2 * 2
    assert {d.layers for d in grid} == {(1,), (0, 3)} and len(set(grid)) == len(grid)
    # the term's C multiplies the designs with a term only (without one it means nothing)
    tokens = parse_config(
        {"transfer": {"layers": [[1]], "poolings": [["code_mean"]], "C": [0.1], "combine": ["concat"],
                      "length": ["none"], "tokens": [0.0, 1.0], "tokens_C": [1.0, 10.0], "steered": False}}
    )  # fmt: skip
    keys = [d.key for d in design_grid(tokens, num_layers=4)]
    base = "logistic@code_mean@L1"
    assert keys == [base, f"{base}|tokens=1", f"{base}|tokens=1|tokens_C=10"]
    with pytest.raises(ValueError, match="at least 3 datasets"):
        run_transfer(parse_config({"data": {"paths": ["builtin", "builtin"]}}), progress=False)


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [("designs_outer", {"d": {"sven": "abc"}}, "designs_outer"), ("designs_outer", [1], "designs_outer"),
     ("timings_s", [1], "timings_s"), ("folds", None, "folds")],
)  # fmt: skip
def test_a_bad_results_field_is_named_with_the_file(
    spied: tuple[Path, list[tuple[str, tuple[str, ...]]]], key: str, value: Any, named: str
) -> None:
    out, _ = spied
    doc = json.loads((out / "results.json").read_text())
    doc[key] = value
    with pytest.raises(ValueError, match=rf"^bad/results\.json: field '{named}'"):
        TransferResults.from_json(doc, "bad/results.json")
    del doc["status"]
    with pytest.raises(ValueError, match=r"^bad/results\.json: field 'status' is missing"):
        TransferResults.from_json(doc, "bad/results.json")


def test_a_probe_with_a_bag_of_tokens_term_gates_the_steered_model(tmp_path: Path, tiny_lm: LoadedModel) -> None:
    """``transfer.tokens`` with the steered model: each outer fold's steered rows are gated by the chosen probe's
    full score (the states' part plus the term on the prompt's code), the very score its probe row reports; with
    ``gate_adapted``, the adapted gate reads the same scores less their mean over the left-out inputs."""
    from vulnsteer.experiment.transfer.designs import DesignStore

    config = transfer_config(tmp_path, layers=[[1]], poolings=[["code_mean"]], tokens=[1.0], gate_adapted=[False, True])
    out = run_transfer(config, tmp_path / "run", lm=tiny_lm, progress=False)
    results = _results(out)
    designs = DesignStore(out / "designs.jsonl")
    steered = [json.loads(line) for line in (out / "steered.jsonl").read_text().splitlines()]
    for fold, outer in zip(results.folds, outer_folds(NAMES), strict=True):
        probe_row, steered_row = fold.row("probe"), fold.row("steered")
        assert probe_row is not None and steered_row is not None and "tokens=1" in probe_row.chosen
        scores = designs.get(outer.key, probe_row.chosen)
        assert scores is not None
        chunks = sorted((d for d in steered if d["dataset"] == outer.left_out), key=lambda d: d["chunk"])

        def gate_scores(row: str) -> list[float]:
            return [g for doc in chunks for _, _, g in doc["rows"][f"{outer.key}|{row}"]]  # noqa: B023

        plain = steered_row.chosen.removesuffix("|adapted")
        assert gate_scores(plain) == pytest.approx(list(scores.scores), abs=1e-3), outer.left_out
        centre = sum(scores.scores) / len(scores.scores)
        expected = [x - centre for x in scores.scores]
        assert gate_scores(plain + "|adapted") == pytest.approx(expected, abs=1e-3), outer.left_out
        assert len(gate_scores(plain + "|adapted|random")) == len(expected)  # its random gate is adapted too
    settings = {k for fold in results.folds for k in fold.steered_inner}
    assert settings == {f"{g}|sigma:2{a}" for g in ("sign", "calibrated") for a in ("", "|adapted")}


def test_the_matched_strength_flags_the_training_share_without_reading_a_label(
    tmp_path: Path, tiny_lm: LoadedModel
) -> None:
    """With several strengths, each outer fold gets the chosen gate at the strength whose answer on the left-out
    inputs flags the share nearest the training datasets' (recomputed here from ``steered.jsonl``), and its random
    gate under the same rule; the report checks their flagged shares beside the probe's."""
    import numpy as np

    strengths = (1.0, 4.0, 16.0, 64.0)
    conditional = {"gates": ["toward_secure"], "strengths": {"sigma": list(strengths)}}
    config = transfer_config(tmp_path, conditional, layers=[[1]], poolings=[["code_mean"]])
    out = run_transfer(config, tmp_path / "run", lm=tiny_lm, progress=False)
    results = _results(out)
    steered = [json.loads(line) for line in (out / "steered.jsonl").read_text().splitlines()]
    data = {d.name: d for d in run_mod.load_transfer_data(config, tiny_lm.tokenizer, False)}
    for fold, outer in zip(results.folds, outer_folds(NAMES), strict=True):
        share = np.mean([np.mean(data[name].labels) for name in outer.training])
        chunks = sorted((d for d in steered if d["dataset"] == outer.left_out), key=lambda d: d["chunk"])
        for name, suffix in (("steered_matched", ""), ("gate_control_matched", "|random")):
            row = fold.row(name)
            assert row is not None and row.metrics.n == fold.n
            flagged = {
                st: np.mean(
                    [
                        m >= 0
                        for doc in chunks
                        for m, _, _ in doc["rows"][f"{outer.key}|toward_secure|sigma:{st:g}{suffix}"]
                    ]
                )
                for st in strengths
            }
            best = min(strengths, key=lambda st: abs(flagged[st] - share))
            assert row.chosen == f"toward_secure|sigma:{best:g}", (outer.key, flagged, share)
            assert row.metrics.vulnerable_rate == pytest.approx(flagged[best])
            assert f"{share:.2f}" in row.note
        assert fold.row("gate_control_matched").control_of == "steered_matched"  # type: ignore[union-attr]
    assert "Steered at the matched strength, the flagged share is within 15 points" in render_transfer(results)


def test_a_peer_row_carries_the_probe_on_the_same_samples(
    tmp_path: Path, tiny_lm: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A peer analyser reads only the samples of its languages; its row carries the chosen probe's metrics on
    exactly those samples (AUROC from the probe's stored scores there), kept through ``results.json`` and printed
    after the peer's cell in the report."""
    from sklearn.metrics import roc_auc_score

    from vulnsteer.detection.peers import PeerScores
    from vulnsteer.experiment.transfer.designs import DesignStore

    def pair(s: Any) -> int:
        return int(s.pair_id.rsplit("-", 1)[1])

    def fake_peer(tool: str, samples: Any) -> PeerScores:
        # a tool that reads every other pair and flags the vulnerable half of every fourth
        read = [s for s in samples if pair(s) % 2 == 0]
        return PeerScores(tool, {s.id: float(s.y == 1 and pair(s) % 4 == 0) for s in read})

    monkeypatch.setattr(run_mod, "run_peer", fake_peer)
    config = transfer_config(tmp_path, layers=[[1]], poolings=[["code_mean"]], peers=["cppcheck"], steered=False)
    out = run_transfer(config, tmp_path / "run", lm=tiny_lm, progress=False)
    results = _results(out)
    designs = DesignStore(out / "designs.jsonl")
    data = {d.name: d for d in run_mod.load_transfer_data(config, tiny_lm.tokenizer, False)}
    report = (out / "report.md").read_text()
    for fold, outer in zip(results.folds, outer_folds(NAMES), strict=True):
        probe, peer = fold.row("probe"), fold.row("cppcheck")
        assert probe is not None and peer is not None and peer.probe_same is not None
        samples = data[outer.left_out].samples
        read = [k for k, s in enumerate(samples) if pair(s) % 2 == 0]
        assert 0 < len(read) < len(samples)
        assert peer.metrics.n == peer.probe_same.n == len(read) and probe.metrics.n == len(samples)
        scores = designs.get(outer.key, probe.chosen)
        assert scores is not None
        expected = roc_auc_score([samples[k].y for k in read], [scores.scores[k] for k in read])
        assert peer.probe_same.auroc == pytest.approx(expected)
        assert probe.probe_same is None  # the probe reads every sample
        assert f"(probe {peer.probe_same.auroc:.3f})" in report
    again = TransferResults.from_json(json.loads((out / "results.json").read_text()))
    assert again.folds[0].row("cppcheck").probe_same == results.folds[0].row("cppcheck").probe_same  # type: ignore[union-attr]


def test_the_adapted_probe_flags_the_training_datasets_share_of_the_left_out_one(
    spied: tuple[Path, list[tuple[str, tuple[str, ...]]]], module_tmp: Path, tiny_lm: LoadedModel
) -> None:
    """The adapted row reads the left-out dataset's centred scores, flagging the highest share of them that the
    training datasets had vulnerable (each weighing the same): its own share is assumed, never read."""
    import numpy as np

    from vulnsteer.experiment.transfer.designs import DesignStore

    out, _ = spied
    results = _results(out)
    store = DesignStore(out / "designs.jsonl")
    data = {d.name: d for d in run_mod.load_transfer_data(transfer_config(module_tmp), tiny_lm.tokenizer, False)}
    checked = 0
    for fold, outer in zip(results.folds, outer_folds(NAMES), strict=True):
        adapted, probe = fold.row("adapted"), fold.row("probe")
        if adapted is None or probe is None:
            continue
        share = np.mean([np.mean(data[name].labels) for name in NAMES if name != outer.left_out])
        own = store.get(outer.key, probe.chosen)
        assert own is not None and own.adapted is not None
        assert adapted.metrics.vulnerable_rate == pytest.approx(round(share * len(own.adapted)) / len(own.adapted))
        assert "flags the training datasets' share" in adapted.note
        checked += 1
    assert checked == len(NAMES)
    gaps = [abs(f.row("adapted").metrics.vulnerable_rate - f.vulnerable_share) for f in results.folds]  # type: ignore[union-attr,operator]
    within = sum(g <= 0.15 for g in gaps)
    report = render_transfer(results)
    assert (
        f"- Adapted, the flagged share is within 15 points of the true vulnerable share on {within} of 4 folds"
        in report
    )
    assert f"(largest gap {max(gaps) * 100:.0f} points)" in report


def test_a_prompt_template_is_a_design_axis_read_under_its_own_prompt(tmp_path: Path, tiny_lm: LoadedModel) -> None:
    """``transfer.templates``: every design of the grid under each prompt, its states extracted under that prompt
    (the question comes before the code, so they differ), named in its key, its wording in the run's identity; the
    shipped detector of a design read under the weaknesses prompt carries that prompt, which ``scan`` then asks."""
    from vulnsteer.config.vocabulary import PROBE_TEMPLATES
    from vulnsteer.detection.probe_detector import ProbeDetector
    from vulnsteer.experiment.transfer.ship import fit_default
    from vulnsteer.lm.activation_cache import ActivationCache
    from vulnsteer.lm.prompts import PROBE_PROMPTS, WEAKNESSES_TEMPLATE
    from vulnsteer.scan import ModelScorer, ScorerSpec

    assert tuple(PROBE_PROMPTS) == PROBE_TEMPLATES
    config = transfer_config(tmp_path, layers=[[1]], poolings=[["code_mean"]], templates=["default", "weaknesses"],
                     steered=False)  # fmt: skip
    keys = [d.key for d in design_grid(config, tiny_lm.num_layers)]
    assert keys == ["logistic@code_mean@L1", "logistic@code_mean@L1|template=weaknesses"]
    run = run_transfer(config, tmp_path / "run", lm=tiny_lm, progress=False)
    stored = [json.loads(line) for line in (run / "designs.jsonl").read_text().splitlines()]
    by_key = {(d["fold"], d["name"]): d["scores"] for d in stored}
    folds = {d["fold"] for d in stored}
    assert {name for _, name in by_key} == set(keys) and len(by_key) == len(folds) * 2
    assert all(by_key[(f, keys[0])] != by_key[(f, keys[1])] for f in folds)
    assert json.loads((run / "identity.json").read_text())["prompts"] == {"weaknesses": WEAKNESSES_TEMPLATE.to_dict()}
    # the states under the weaknesses prompt are the cache's for that prompt, not the default's
    data = run_mod.load_transfer_data(config, tiny_lm.tokenizer, progress=False)
    cache = ActivationCache(config.run.cache_dir)
    (first,) = run_mod.with_activations(data[:1], tiny_lm, cache, [1], ["code_mean"], 4, False, ["weaknesses"])
    extracted, _ = cache.load_or_extract(tiny_lm, list(first.samples), [1], ["code_mean"], template=WEAKNESSES_TEMPLATE,
                                         progress=False)  # fmt: skip
    assert first.acts("weaknesses").get("code_mean", 1).equal(extracted.get("code_mean", 1))
    with pytest.raises(RuntimeError, match="under the prompt 'default' not extracted"):
        first.acts("default")
    shipped = fit_default(run, tmp_path / "detector", design_key=keys[1], lm=tiny_lm, progress=False)
    assert shipped.template == WEAKNESSES_TEMPLATE and shipped.probe.design.template == "weaknesses"
    loaded = ProbeDetector.load(tmp_path / "detector", tiny_lm)
    assert loaded.template == WEAKNESSES_TEMPLATE
    scorer = ModelScorer(ScorerSpec(detector=tmp_path / "detector", max_code_tokens=64), lm=tiny_lm)
    one = Sample("s", "def f(x):\n    return x\n", "python", "unknown", "vulnerable")
    (found,) = scorer.score([one], progress=False)
    assert scorer.template == WEAKNESSES_TEMPLATE and found.probe is not None


def test_another_prompt_needs_the_steered_model_off_and_a_known_name() -> None:
    with pytest.raises(ValueError, match=r"names the prompt 'weaknesses'.*steered = false"):
        parse_config({"transfer": {"templates": ["default", "weaknesses"]}}, "t.toml")
    with pytest.raises(ValueError, match="names the prompt 'weaknesses'"):
        parse_config({"transfer": {"designs": [{"layers": [1], "template": "weaknesses"}]}}, "t.toml")
    with pytest.raises(ValueError, match=r"transfer\.templates"):
        parse_config({"transfer": {"templates": ["polite"], "steered": False}}, "t.toml")
    with pytest.raises(ValueError, match="unknown prompt template 'polite'"):
        ProbeDesign((1,), ("code_mean",), template="polite")
    assert parse_config({"transfer": {"templates": ["weaknesses"], "steered": False}}).transfer.other_prompts == (
        "weaknesses",
    )
