"""The shipped detector's machinery on a tiny model: fitted from a finished transfer run with the design it chose,
calibrated on out-of-dataset scores, its threshold measured against each left-out dataset's vulnerable share,
verified by digest, refusing another model, and used by scan and detect by default."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import EXAMPLES
from runs import transfer_config
from vulnsteer.config.defaults import MIN_ADAPT
from vulnsteer.config.design import ProbeDesign
from vulnsteer.config.experiment import load_config
from vulnsteer.config.vocabulary import PEERS
from vulnsteer.data.functions import tree_sitter_available
from vulnsteer.detection.probe_detector import SHIPPED_DETECTOR, ProbeDetector, ProbeDetectorError, is_probe_detector
from vulnsteer.experiment.transfer import TransferResults, run_transfer
from vulnsteer.experiment.transfer.ship import FoldCalibration, fit_default, fold_measurements
from vulnsteer.lm.identity import ModelMismatchError
from vulnsteer.lm.model import LoadedModel
from vulnsteer.scan import ModelScorer, ScanOptions, ScorerSpec, scan
from vulnsteer.scan.engine import display_path
from vulnsteer.scan.sources import file_scores
from vulnsteer.stats.shares import share_threshold
from vulnsteer.steering.probe import AdaptationError

needs_grammars = pytest.mark.skipif(not tree_sitter_available(), reason="tree-sitter-language-pack not installed")


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory, tiny_lm: LoadedModel) -> tuple[Path, Path]:
    """A finished tiny transfer run (no steering) and the detector fitted from it."""
    tmp = tmp_path_factory.mktemp("shipped")
    run = run_transfer(transfer_config(tmp, steered=False), tmp / "run", lm=tiny_lm, progress=False)
    fit_default(run, tmp / "detector", lm=tiny_lm, progress=False)
    return run, tmp / "detector"


def test_it_is_the_design_the_run_chose_with_its_provenance(shipped: tuple[Path, Path], tiny_lm: LoadedModel) -> None:
    run, folder = shipped
    results = TransferResults.from_json(json.loads((run / "results.json").read_text()))
    assert is_probe_detector(folder)
    detector = ProbeDetector.load(folder, tiny_lm)
    assert detector.probe.key == results.non_nested_design
    assert detector.model == tiny_lm.identity
    info = detector.info
    assert [d["name"] for d in info["datasets"]] == [d.name for d in results.datasets]
    assert all(d["hash"] and d["licence"]["licence"] for d in info["datasets"])
    table = info["leave_one_dataset_out"]
    assert list(table) == [f.left_out for f in results.folds]
    assert all({"probe", "length"} <= set(fold["rows"]) for fold in table.values())
    for kind in ("plain", "adapted"):
        measured = info["out_of_dataset"][kind]
        assert set(measured["folds"]) == set(measured["nested"]) == set(table)
        for row in measured["nested"].values():
            assert row["share_gap"] == pytest.approx(row["flagged_share"] - row["vulnerable_share"])
        gaps = [abs(r["share_gap"]) for r in measured["folds"].values()]
        assert measured["summary"]["max_share_gap"] == pytest.approx(max(gaps))


def test_its_scores_are_the_out_of_dataset_calibration_in_its_own_units(
    shipped: tuple[Path, Path], tiny_lm: LoadedModel
) -> None:
    _, folder = shipped
    detector = ProbeDetector.load(folder)
    probe, info = detector.probe, detector.info
    scale = info["score_scale"]
    a = info["out_of_dataset"]["plain"]["calibration"]
    raw = torch.tensor([scale["training_score_mean"], scale["training_score_mean"] + scale["training_score_sd"]])
    z = torch.tensor([0.0, 1.0], dtype=torch.float64)
    expected = torch.sigmoid(z * a["slope"] + a["intercept"]).float()
    torch.testing.assert_close(probe.probabilities(raw), expected, atol=1e-5, rtol=1e-5)
    # the threshold (in score units) is where the calibrated probability reaches the chosen one
    at = float(probe.probabilities(torch.tensor([probe.threshold]))[0])
    assert at == pytest.approx(info["out_of_dataset"]["plain"]["threshold"], abs=1e-4)


def test_a_replaced_probe_file_and_another_model_are_refused(
    shipped: tuple[Path, Path], tmp_path: Path, tiny_lm: LoadedModel
) -> None:
    _, folder = shipped
    detector = ProbeDetector.load(folder)
    copy = detector.save(tmp_path / "copy")
    ProbeDetector.load(copy, tiny_lm)
    other = dataclasses.replace(detector.probe, bias=detector.probe.bias + 1.0)
    other.save(copy / "probe.safetensors")
    with pytest.raises(ProbeDetectorError, match="SHA-256 differs"):
        ProbeDetector.load(copy)
    foreign = dataclasses.replace(detector, model=dataclasses.replace(detector.model, fingerprint="another"))
    foreign.save(tmp_path / "foreign")
    with pytest.raises(ModelMismatchError, match="not this model"):
        ProbeDetector.load(tmp_path / "foreign", tiny_lm)


def test_adaptation_refuses_too_few_inputs(shipped: tuple[Path, Path]) -> None:
    detector = ProbeDetector.load(shipped[1])
    with pytest.raises(AdaptationError, match=f"at least {detector.min_adapt}"):
        detector.adapted(torch.zeros(detector.min_adapt - 1))
    adapted = detector.adapted(torch.arange(detector.min_adapt, dtype=torch.float32))
    assert adapted.centred == detector.min_adapt


def _fold(name: str, shift: float, share: float, n: int, seed: int) -> FoldCalibration:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < share).astype(np.int64)
    z = rng.normal(size=n) + 1.5 * y + shift
    return FoldCalibration(name, z, z - z.mean(), y, tuple(f"{name}{i // 2}" for i in range(n)))


def test_threshold_travels_by_share_and_adaptation_removes_a_dataset_offset() -> None:
    folds = [_fold("a", 0.0, 0.5, 400, 1), _fold("b", 2.5, 0.5, 400, 2), _fold("c", -2.5, 0.5, 400, 3)]
    plain = fold_measurements(folds, False, 0, 50)
    adapted = fold_measurements(folds, True, 0, 50)
    # each dataset sits elsewhere: no one threshold flags its share everywhere; centred on each, one does
    assert plain["summary"]["max_share_gap"] > 0.3
    assert adapted["summary"]["max_share_gap"] < 0.1 and adapted["nested_summary"]["max_share_gap"] < 0.15
    # the ranking within a dataset is the same either way
    for name in ("a", "b", "c"):
        assert plain["folds"][name]["auroc"] == pytest.approx(adapted["folds"][name]["auroc"])
    t, gap = share_threshold([np.array([0.2, 0.9]), np.array([0.1, 0.3, 0.7, 0.8])], [0.5, 0.5])
    assert gap == 0.0 and 0.3 <= t < 0.7
    # what a stated prevalence corrects by: the centred scores' share and class-mean separation (1.5 drawn)
    assert adapted["share"] == pytest.approx(np.mean([f.share for f in folds]))
    assert adapted["separation"] == pytest.approx(1.5, abs=0.2)


# ------------------------------------------------------------------------------------------ scan and detect


def _tree(root: Path, n: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        body = f"    return db.execute('SELECT * FROM t WHERE id = ' + {i} + x)" if i % 2 else f"    return x + {i}"
        (root / f"m{i}.py").write_text(f"def f{i}(db, x):\n{body}\n", encoding="utf-8")
    return root


@needs_grammars
def test_scan_scores_by_the_probe_detector_alone_and_adapts_without_labels(
    shipped: tuple[Path, Path], tiny_lm: LoadedModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = shipped[1]
    detector = ProbeDetector.load(folder)
    scorer = ModelScorer(ScorerSpec(detector=folder, max_code_tokens=64), lm=tiny_lm)
    tree = _tree(tmp_path / "src", detector.min_adapt + 2)
    deeper = range(max(detector.probe.layers) + 1, tiny_lm.num_layers)
    ran: list[int] = []
    handles = [tiny_lm.layers[k].register_forward_hook(lambda *_, k=k: ran.append(k)) for k in deeper]
    try:
        report = scan([tree], scorer, ScanOptions(min_score=0.0), progress=False)
    finally:
        for handle in handles:
            handle.remove()
    assert list(deeper) and ran == []  # early exit: the layers after the probe's deepest never ran
    assert report.provenance["score"].startswith("probe only")
    raw = torch.tensor([r.score.probe for r in report.results])
    probs = detector.probe.probabilities(raw)
    assert [r.score.score for r in report.results] == pytest.approx(probs.tolist(), abs=1e-6)
    assert all(r.score.push is None for r in report.results)  # nothing steered
    assert report.provenance["scorer"] == "detector"
    adapted = scan([tree], scorer, ScanOptions(min_score=0.0, adapt="on"), progress=False)
    centre = float(raw.double().mean())
    expected = detector.probe.adaptation.calibration.probabilities(raw - centre)  # type: ignore[union-attr]
    assert [r.score.score for r in adapted.results] == pytest.approx(expected.tolist(), abs=1e-5)
    assert adapted.provenance["adapted_to"] == len(report.results)
    assert any("fewer than 50" in w for w in adapted.stats.warnings)
    # each score carries its verdict's threshold (fitted, then adapted: the calibration data's share of these
    # functions flagged), which a file's verdict reads
    a, to_these = detector.probe.adaptation, detector.adapted(raw)
    assert a is not None and a.share is not None
    for found, at in ((report, detector.probe.threshold_probability), (adapted, to_these.threshold_probability)):
        for r in found.results:
            assert r.score.threshold == pytest.approx(at, abs=1e-6)
            assert (r.score.verdict == "vulnerable") == (r.score.score > at)
    assert sum(r.score.verdict == "vulnerable" for r in adapted.results) == round(a.share * len(raw))
    from vulnsteer.cli.scan import _report_on_stderr  # what the scan says it did, and that the share is assumed

    _report_on_stderr(adapted, argparse.Namespace(paths=[str(tree)]))
    said = capsys.readouterr().err
    flagged = sum(r.score.verdict == "vulnerable" for r in adapted.results)
    assert f"re-estimated from the {len(raw)} distinct functions scanned, no label read" in said
    assert (f"it flags the highest {flagged} of them ({flagged / len(raw):.0%}: its calibration data's vulnerable "
            "share, to the nearest function; assumed") in said  # fmt: skip
    many = tmp_path / "one" / "many.py"
    many.parent.mkdir()
    many.write_text("\n\n".join((tree / f"m{i}.py").read_text() for i in range(6)), encoding="utf-8")
    (whole,) = file_scores(scan([many.parent], scorer, ScanOptions(min_score=0.0, aggregation="mean"), progress=False))
    assert whole.functions == 6 and whole.top.score.threshold is not None
    assert whole.verdict == ("vulnerable" if whole.score >= whole.top.score.threshold else "secure")
    assert whole.to_record()["verdict"] == whole.verdict == whole.to_detect_json()["verdict"]
    few = _tree(tmp_path / "few", detector.min_adapt - 1)
    with pytest.raises(AdaptationError, match=f"--adapt: .* at least {detector.min_adapt}"):
        scan([few], scorer, ScanOptions(adapt="on"), progress=False)
    plain = ModelScorer(ScorerSpec(max_code_tokens=64), lm=tiny_lm)
    with pytest.raises(ValueError, match="this scorer has none"):
        scan([few], plain, ScanOptions(adapt="on"), progress=False)


@needs_grammars
def test_auto_adaptation_starts_at_the_detectors_minimum(
    shipped: tuple[Path, Path], tiny_lm: LoadedModel, tmp_path: Path
) -> None:
    """``adapt="auto"`` (the CLI's default with a probe detector) scores below the detector's ``min_adapt``
    distinct functions as fitted, and from it exactly as ``adapt="on"``. With ``findings_at_threshold`` (the
    CLI's without ``--min-score``) its findings start at the adapted threshold: the highest share of the distinct
    functions that its calibration data had vulnerable; without it, at ``min_score``."""
    folder = shipped[1]
    detector = ProbeDetector.load(folder)
    scorer = ModelScorer(ScorerSpec(detector=folder, max_code_tokens=64), lm=tiny_lm)
    least = detector.min_adapt
    auto = ScanOptions(min_score=0.2, adapt="auto", findings_at_threshold=True, adapt_from=least)
    small = _tree(tmp_path / "small", least - 1)
    kept = scan([small], scorer, auto, progress=False)
    as_fitted = scan([small], scorer, ScanOptions(min_score=0.2), progress=False)
    assert "adapted_to" not in kept.provenance and kept.options.adapt == "off" and kept.options.min_score == 0.2
    assert [r.score.score for r in kept.results] == [r.score.score for r in as_fitted.results]
    large = _tree(tmp_path / "large", least + 10)
    adapted = scan([large], scorer, auto, progress=False)
    on = scan([large], scorer, ScanOptions(min_score=0.3, adapt="on"), progress=False)
    assert adapted.provenance["adapted_to"] == least + 10 and on.options.min_score == 0.3
    assert [r.score.score for r in adapted.results] == [r.score.score for r in on.results]
    assert [r.finding for r in on.results] == [r.score.score >= 0.3 for r in on.results]
    share = detector.probe.adaptation.share if detector.probe.adaptation else None
    assert share is not None and sum(r.finding for r in adapted.results) == round(share * (least + 10))
    assert all((r.score.verdict == "vulnerable") == r.finding for r in adapted.results)
    assert adapted.stats.min_score == adapted.options.min_score == pytest.approx(adapted.results[0].score.threshold)
    with pytest.raises(ValueError, match="adapt must be one of"):
        ScanOptions(adapt="sometimes")


@needs_grammars
@pytest.mark.parametrize("prevalence", [None, 0.25])
def test_adapted_file_verdicts_flag_the_share_of_functions_flagged_even_where_files_share_a_function(
    shipped: tuple[Path, Path], tiny_lm: LoadedModel, tmp_path: Path, prevalence: float | None
) -> None:
    """Every file holds one function all files share (as servlets share a ``doGet``) and one of its own. Adapted,
    the file verdicts flag the share of the distinct functions the function verdicts flag (no label read), where
    the functions' threshold applied to the files' smooth maxima flags another share; the names given to
    ``file_scores`` do not move the threshold; as fitted, a file's verdict is still its functions' threshold."""
    folder = shipped[1]
    detector = ProbeDetector.load(folder)
    scorer = ModelScorer(ScorerSpec(detector=folder, max_code_tokens=64), lm=tiny_lm)
    tree = _tree(tmp_path / "src", detector.min_adapt + 9)
    shared = "def handle(request):\n    return run(request.args)\n"
    for path in tree.glob("m*.py"):
        path.write_text(shared + "\n\n" + path.read_text(encoding="utf-8"), encoding="utf-8")
    report = scan([tree], scorer, ScanOptions(min_score=0.0, adapt="on", prevalence=prevalence), progress=False)
    distinct = {r.code_hash: r.score.verdict for r in report.results}
    share = sum(v == "vulnerable" for v in distinct.values()) / len(distinct)
    assert report.file_share == pytest.approx(share)
    files = file_scores(report)
    assert len(files) == detector.min_adapt + 9 and all(f.functions == 2 and f.threshold is not None for f in files)
    flagged = [f.verdict == "vulnerable" for f in files]
    assert sum(flagged) == round(share * len(files))
    ranked = sorted(files, key=lambda f: -f.score)
    assert [f.verdict for f in ranked] == ["vulnerable"] * sum(flagged) + ["secure"] * (len(files) - sum(flagged))
    verdicts = {f.path: f.verdict for f in files}
    named = [tree / "m1.py", tree / "m0.py"]
    picked = file_scores(report, [str(n) for n in named])
    assert [f.path for f in picked] == [str(n) for n in named]
    assert [f.verdict for f in picked] == [verdicts[display_path(n, report.base)] for n in named]
    plain = scan([tree], scorer, ScanOptions(min_score=0.0), progress=False)
    assert plain.file_share is None
    for f in file_scores(plain):
        assert f.threshold is None and f.verdict == ("vulnerable" if f.score >= f.top.score.threshold else "secure")


@needs_grammars
def test_a_stated_prevalence_flags_that_share_of_the_functions_scanned(
    shipped: tuple[Path, Path], tiny_lm: LoadedModel, tmp_path: Path
) -> None:
    """``prevalence``: the detector adapted to it (centre moved, prior taken), the highest that share of the
    distinct functions are the findings, from the adapted threshold on; below the minimum it is said not applied."""
    folder = shipped[1]
    detector = ProbeDetector.load(folder)
    scorer = ModelScorer(ScorerSpec(detector=folder, max_code_tokens=64), lm=tiny_lm)
    tree = _tree(tmp_path / "src", detector.min_adapt + 12)
    plain = scan([tree], scorer, ScanOptions(min_score=0.0, adapt="off"), progress=False)
    raw = torch.tensor([r.score.probe for r in plain.results])
    report = scan([tree], scorer, ScanOptions(adapt="on", prevalence=0.25), progress=False)
    expected = detector.adapted(raw, prevalence=0.25)
    probs = expected.probabilities(raw - (detector.probe.bias - expected.bias))  # (the adapted probe's scores)
    assert [r.score.score for r in report.results] == pytest.approx(probs.tolist(), abs=1e-5)
    assert sum(r.finding for r in report.results) == round(0.25 * len(raw))
    assert report.options.min_score == pytest.approx(expected.threshold_probability, abs=1e-6)
    assert report.stats.min_score == report.options.min_score
    assert all((r.score.verdict == "vulnerable") == r.finding for r in report.results)
    few = _tree(tmp_path / "few", detector.min_adapt - 1)
    auto = ScanOptions(adapt="auto", adapt_from=detector.min_adapt, prevalence=0.25)
    kept = scan([few], scorer, auto, progress=False)
    assert kept.options.adapt == "off" and any("--prevalence not applied" in w for w in kept.stats.warnings)
    with pytest.raises(ValueError, match="needs adaptation"):
        ScanOptions(adapt="off", prevalence=0.25)
    # the as-fitted pass of a labelled evaluation drops the prevalence with the adaptation
    plain_pass = auto.unadapted()
    assert plain_pass.adapt == "off" and plain_pass.prevalence is None and plain_pass.min_score == auto.min_score


def test_prevalence_flags_that_cannot_apply_are_usage_errors(shipped: tuple[Path, Path]) -> None:
    from vulnsteer.cli.options import UsageError, adaptation_options
    from vulnsteer.cli.options import probe_detector as detector_of

    spec = ScorerSpec(detector=shipped[1])
    probe = detector_of(spec)
    assert adaptation_options(_args(prevalence=0.1), spec, probe)["prevalence"] == 0.1
    assert adaptation_options(_args(), spec, probe)["prevalence"] is None
    for given, why in (({"prevalence": 1.5}, "between 0 and 1"), ({"prevalence": 0.1, "no_adapt": True}, "needs"),
                       ({"prevalence": 0.1, "min_score": 0.5}, "drop --min-score")):  # fmt: skip
        with pytest.raises(UsageError, match=why):
            adaptation_options(_args(**given), spec, probe)
    with pytest.raises(UsageError, match="needs"):
        adaptation_options(_args(prevalence=0.1), ScorerSpec(), None)  # the bare model: nothing adapts


def _args(**given: object) -> argparse.Namespace:
    from vulnsteer.cli import build_parser

    argv = ["scan", "x"]
    for flag, value in given.items():
        argv += [f"--{flag.replace('_', '-')}"] + ([] if value is True else [str(value)])
    return build_parser().parse_args(argv)


def test_scan_and_detect_default_to_the_shipped_detector_with_the_embedded_model(
    shipped: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from vulnsteer.cli.options import UsageError, adapt_from, adapt_mode, detector_folder
    from vulnsteer.cli.options import probe_detector as detector_of
    from vulnsteer.detection import probe_detector

    monkeypatch.setattr(probe_detector, "SHIPPED_DETECTOR", shipped[1])
    assert detector_folder(_args()) == shipped[1]
    assert detector_folder(_args(adapt=True)) == shipped[1]
    assert detector_folder(_args(answer=True)) is None  # the bare model's answer
    assert detector_folder(_args(model="some/other-model")) is None  # the shipped one is for the embedded model
    assert detector_folder(_args(detector="d")) == Path("d")
    probe = detector_of(ScorerSpec(detector=shipped[1]))
    assert probe is not None and detector_of(ScorerSpec()) is None
    shipped_spec = ScorerSpec(detector=shipped[1])
    assert adapt_mode(_args(), shipped_spec, probe) == "auto" and adapt_mode(_args(), ScorerSpec(), None) == "off"
    assert adapt_mode(_args(adapt=True), shipped_spec, probe) == "on"
    assert adapt_mode(_args(no_adapt=True), shipped_spec, probe) == "off"
    assert adapt_mode(_args(), ScorerSpec(detector=Path("missing")), None) == "off"  # (the scorer's check names it)
    assert adapt_from(probe) == ProbeDetector.load(shipped[1]).min_adapt and adapt_from(None) == MIN_ADAPT
    # without --min-score a scan's findings start where the adapted detector's flagged share begins
    from vulnsteer.cli.scan import scan_options

    spec = ScorerSpec(detector=shipped[1])
    default, given = scan_options(_args(), spec), scan_options(_args(min_score=0.3), spec)
    assert default.findings_at_threshold and default.min_score == pytest.approx(probe.threshold_probability())
    assert not given.findings_at_threshold and given.min_score == 0.3
    assert not scan_options(_args(answer=True), ScorerSpec()).findings_at_threshold
    for bad in ({"answer": True, "detector": "d"}, {"answer": True, "adapt": True}):
        with pytest.raises(UsageError):
            detector_folder(_args(**bad))
    monkeypatch.setattr(probe_detector, "SHIPPED_DETECTOR", shipped[1].parent / "missing")
    with pytest.raises(UsageError, match="--answer"):
        detector_folder(_args())


def test_detector_show_prints_the_leave_one_out_table_and_the_length_control(
    shipped: tuple[Path, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from vulnsteer.cli import main
    from vulnsteer.detection import probe_detector

    monkeypatch.setattr(probe_detector, "SHIPPED_DETECTOR", shipped[1])
    assert main(["detector", "show"]) == 0
    out = capsys.readouterr().out
    assert "length only" in out and "leave-one-dataset-out" in out
    detector = ProbeDetector.load(shipped[1])
    for name in detector.info["leave_one_dataset_out"]:
        assert f"    {name} " in out
    assert f"{detector.threshold_probability():.3f}" in out
    a = detector.probe.adaptation
    assert a is not None and a.share is not None
    assert f"adapted, it flags the highest {a.share:.0%} of the distinct functions it adapts to" in out


@needs_grammars
def test_a_detector_with_the_codes_tokens_scores_them_in_scan(
    tmp_path_factory: pytest.TempPathFactory, tiny_lm: LoadedModel, tmp_path: Path
) -> None:
    """A run whose every design adds a bag-of-tokens term ships one; its scan scores are the states' part plus the
    term on each function's text (the same single scoring path as the probe alone)."""
    tmp = tmp_path_factory.mktemp("tokens")
    run = run_transfer(transfer_config(tmp, steered=False, tokens=[1.0]), tmp / "run", lm=tiny_lm, progress=False)
    fit_default(run, tmp / "detector", lm=tiny_lm, progress=False)
    detector = ProbeDetector.load(tmp / "detector", tiny_lm)
    lexical = detector.probe.lexical
    assert detector.probe.key.endswith("|tokens=1") and lexical is not None and lexical.vocabulary
    tree = _tree(tmp_path / "src", 6)
    states_design = dataclasses.replace(detector.probe.design, tokens=0.0)
    states_only = dataclasses.replace(detector.probe, design=states_design, lexical=None)
    plain_folder = ProbeDetector(states_only, detector.model, detector.template, detector.min_adapt).save(
        tmp / "states-only"
    )
    scores = {}
    for folder in (tmp / "detector", plain_folder):
        scorer = ModelScorer(ScorerSpec(detector=folder, max_code_tokens=64), lm=tiny_lm)
        found = scan([tree], scorer, ScanOptions(min_score=0.0, adapt="off"), progress=False)
        scores[folder.name] = {r.name: r.score.probe for r in found.results}
        assert found.provenance["score"].startswith("probe only") and (
            ("bag-of-tokens term" in found.provenance["score"]) == (folder.name == "detector")
        )
    texts = {f"f{i}": (tree / f"m{i}.py").read_text(encoding="utf-8") for i in range(6)}
    assert set(scores["detector"]) == set(scores["states-only"]) == set(texts)
    term = dict(zip(texts, lexical.scores(list(texts.values())), strict=True))
    for name in texts:  # each function's score: the states' part plus the term on its own text
        assert scores["detector"][name] == pytest.approx(scores["states-only"][name] + term[name], abs=1e-4)
    assert len({round(float(v), 6) for v in term.values()}) > 1  # the term tells the functions apart


def _labelled_files(path: Path, n: int, cwes: tuple[str, ...] = ("CWE-89",)) -> Path:
    """*n* whole-file pairs of two functions each, the second differing (string-built SQL vs a parameter); pair *i*
    is labelled with ``cwes[i % len(cwes)]``."""
    rows = []
    for i in range(n):
        common = f"def helper{i}(x):\n    return x + {i}\n\n"
        for label, body in (
            ("vulnerable", "'SELECT * FROM t WHERE id = ' + x"),
            ("secure", "'SELECT * FROM t WHERE id = ?', (x,)"),
        ):
            code = common + f"def get{i}(db, x):\n    return db.execute({body})\n"
            rows.append({"id": f"p{i}-{label[0]}", "pair_id": f"p{i}", "cwe": cwes[i % len(cwes)], "label": label,
                         "language": "python", "code": code, "whole_file": True})  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@needs_grammars
def test_detector_evaluate_measures_labelled_code_as_scan_scores_it(
    shipped: tuple[Path, Path],
    tiny_lm: LoadedModel,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each sample is scored exactly as `scan` scores the same code as a file (fitted and adapted), the rows'
    metrics are those of the file scores and verdicts, and the command prints them (text and JSON)."""
    from sklearn.metrics import roc_auc_score

    from vulnsteer.cli import main
    from vulnsteer.data.loaders import load_samples
    from vulnsteer.detection import probe_detector
    from vulnsteer.scan import labelled

    folder = shipped[1]
    detector = ProbeDetector.load(folder)
    data = _labelled_files(tmp_path / "files.jsonl", detector.min_adapt)
    samples = load_samples(str(data), "jsonl")
    scorer = ModelScorer(ScorerSpec(detector=folder, max_code_tokens=64), lm=tiny_lm)
    options = ScanOptions(min_score=0.0, adapt="auto", adapt_from=detector.min_adapt)
    scored = labelled.score_labelled(samples, scorer, options, progress=False)
    assert scored.adapted is not None and scored.functions == 3 * len(samples) // 2  # helpers shared by a pair
    tree = tmp_path / "tree"
    tree.mkdir()
    for k, s in enumerate(samples):
        (tree / f"f{k}.py").write_text(s.code, encoding="utf-8")
    for adapt, found in (("off", scored.plain), ("on", scored.adapted)):
        by_name = {
            Path(f.path).stem: f for f in file_scores(scan([tree], scorer, ScanOptions(adapt=adapt), progress=False))
        }
        for k, f in enumerate(found):
            assert f is not None and (f.functions, f.shared) == (
                1,
                1,
            )  # the helper the pair's other half has is left out
            assert (f.score, f.verdict) == pytest.approx((by_name[f"f{k}"].score, by_name[f"f{k}"].verdict))
    rows = labelled.measure(scored, n_boot=20)
    assert [r.name for r in rows] == ["detector", "adapted", "changed", "length"]
    y = [s.y for s in samples]
    for row, found in zip(rows, (scored.plain, scored.adapted), strict=False):
        assert row.metrics.n == len(samples) and row.skipped == 0
        assert row.metrics.auroc == pytest.approx(roc_auc_score(y, [f.score for f in found]))  # type: ignore[union-attr]
        flagged = [f.verdict == "vulnerable" for f in found]  # type: ignore[union-attr]
        assert row.metrics.vulnerable_rate == pytest.approx(sum(flagged) / len(flagged))
    # the changed row reads only the function a pair's halves do not share (get<i>; the helper is the same)
    assert [(f.functions, f.top.name) for f in scored.changed] == [  # type: ignore[union-attr]
        (1, f"get{k // 2}") for k in range(len(samples))
    ]
    assert rows[2].metrics.n == len(samples) and rows[2].skipped == 0 and "adapted" in rows[2].label
    assert rows[2].metrics.auroc == pytest.approx(roc_auc_score(y, [f.score for f in scored.changed]))  # type: ignore[union-attr]
    adapted_scan = {
        (Path(r.path).stem, r.name): r.score.score
        for r in scan([tree], scorer, ScanOptions(adapt="on"), progress=False).results
    }
    for k, f in enumerate(scored.changed):  # each is that function's adapted score, as scan gives it
        assert f is not None and f.score == pytest.approx(adapted_scan[(f"f{k}", f.top.name)])
    assert rows[3].metrics.pair_rank_accuracy == 0.5  # the two versions have as many lines: every pair ties
    # with a stated prevalence the adapted pass flags that share of the distinct functions; the fitted pass is as before
    told = labelled.score_labelled(samples, scorer, dataclasses.replace(options, prevalence=0.25), progress=False)
    assert [f.score for f in told.plain] == [f.score for f in scored.plain]  # type: ignore[union-attr]
    assert told.adapted is not None and [f.score for f in told.adapted] != [f.score for f in scored.adapted]  # type: ignore[union-attr]
    # a peer analyser that reads the first half of the pairs: its row and the detector's on exactly those samples
    from vulnsteer.detection.peers import PeerScores

    read = {s.id for s in samples[: len(samples) // 2]}
    monkeypatch.setattr(
        labelled, "run_peer", lambda tool, found: PeerScores(tool, {s.id: float(s.y) for s in found if s.id in read})
    )
    (peer,) = labelled.measure_peers(scored, ["bandit"], n_boot=20)
    assert peer.measured is not None and peer.detector is not None
    assert peer.measured.metrics.n == peer.detector.metrics.n == len(read) and peer.measured.metrics.auroc == 1.0
    half = [k for k, s in enumerate(samples) if s.id in read]
    assert peer.detector.metrics.auroc == pytest.approx(
        roc_auc_score([samples[k].y for k in half], [scored.adapted[k].score for k in half])  # type: ignore[index,union-attr]
    )
    monkeypatch.setattr(labelled, "run_peer", lambda tool, found: PeerScores(tool, {}, f"{tool} is not installed"))
    (missing,) = labelled.measure_peers(scored, ["cppcheck"], n_boot=20)
    assert missing.measured is None and missing.note == "cppcheck is not installed"
    monkeypatch.setattr(probe_detector, "SHIPPED_DETECTOR", folder)
    monkeypatch.setattr("vulnsteer.scan.ModelScorer", lambda spec: ModelScorer(spec, lm=tiny_lm))
    evaluate = ["--no-progress", "detector", "evaluate", "--data", str(data), "--format", "jsonl"]
    assert main([*evaluate, "--json", "--n-boot", "20"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["detector"] == "the shipped detector" and doc["adapted"] and doc["samples"] == len(samples)
    assert doc["fitted_on_this_data"] is None  # (the detector was fitted on alpha, beta, gamma, delta)
    assert [(p["tool"], p["note"]) for p in doc["peers"]] == [(t, f"{t} is not installed") for t in PEERS]
    assert [r["name"] for r in doc["rows"]] == ["detector", "adapted", "changed", "length"]
    assert doc["rows"][0]["auroc"] == pytest.approx(rows[0].metrics.auroc)
    assert main([*evaluate, "--max-pairs-per-cwe", "2", "--no-peers", "--json", "--n-boot", "20"]) == 0
    capped = json.loads(capsys.readouterr().out)
    assert capped["samples"] == 4 and capped["rows"][0]["n_pairs"] == 2  # two pairs of the one CWE, both halves
    assert main([*evaluate, "--no-adapt", "--no-peers"]) == 0
    out = capsys.readouterr().out
    assert "| detector: as fitted | " in out and "not adapted: adaptation is off" in out and "| adapted: " not in out
    assert "per CWE" not in out  # one CWE: no breakdown
    # two CWEs: each measured on its own samples under the adaptation over all (JSON and text)
    pairs = detector.min_adapt + detector.min_adapt % 2  # as many of each CWE
    mixed = _labelled_files(tmp_path / "mixed.jsonl", pairs, cwes=("CWE-89", "CWE-78"))
    two = load_samples(str(mixed), "jsonl")
    everything = labelled.score_labelled(two, scorer, options, progress=False)
    assert main([*evaluate[:4], str(mixed), "--format", "jsonl", "--no-peers", "--json", "--n-boot", "20"]) == 0
    by_cwe = json.loads(capsys.readouterr().out)["by_cwe"]
    assert list(by_cwe) == ["CWE-78", "CWE-89"]  # by number
    for cwe, found in by_cwe.items():
        keep = [k for k, s in enumerate(two) if s.cwe == cwe]
        adapted = {r["name"]: r for r in found}["adapted"]
        assert adapted["n"] == len(keep) == len(two) // 2
        assert adapted["auroc"] == pytest.approx(
            roc_auc_score([two[k].y for k in keep], [everything.adapted[k].score for k in keep])  # type: ignore[index,union-attr]
        )
    assert main([*evaluate[:4], str(mixed), "--format", "jsonl", "--no-peers", "--n-boot", "20"]) == 0
    out = capsys.readouterr().out
    assert "per CWE" in out and f"| CWE-78 | {len(two) // 2} (" in out and f"| CWE-89 | {len(two) // 2} (" in out
    fitted = ProbeDetector.load(folder).info["datasets"][0]
    assert main(["--no-progress", "detector", "evaluate", "--data", fitted["source"], "--no-peers", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["fitted_on_this_data"] == fitted["name"] and "in-distribution" in captured.err
    assert main(["detector", "evaluate"]) == 2
    assert "needs --data" in capsys.readouterr().err


def test_the_demos_gating_probe_is_the_shipped_design_at_or_below_its_steered_layer() -> None:
    """examples/demo.toml names its gating probe's design again (a configuration file cannot import one): it must
    stay the design the shipped detector holds, but for its layers, which are at or below the demo's steered
    layers (the gate reads unsteered states), and the demo chooses one gated setting for every CWE."""
    demo = load_config(EXAMPLES / "demo.toml")
    doc = json.loads((SHIPPED_DETECTOR / "detector.json").read_text(encoding="utf-8"))
    shipped_design = ProbeDesign.from_json(doc["probe"]["design"])
    (design,) = demo.conditional.designs
    assert dataclasses.replace(design, layers=shipped_design.layers) == shipped_design
    assert design.deepest <= min(layer for group in demo.steering.layers for layer in group)
    assert demo.conditional.scope == demo.conditional.select == "pooled"
