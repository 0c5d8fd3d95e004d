"""Saved detectors: written by the protocol, loaded back exactly, refused on another model, used by `detect`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import toy_samples, write_toy_jsonl
from runs import held_out, run, write_config
from vulnsteer.cli import main
from vulnsteer.config.experiment import load_config
from vulnsteer.detection.detector import SavedDetector, SavedDetectorError
from vulnsteer.experiment.evaluate import evaluate_from_run, transfer_config
from vulnsteer.experiment.results import Results
from vulnsteer.experiment.upgrade import load_results
from vulnsteer.lm.identity import ModelMismatchError
from vulnsteer.lm.model import LoadedModel


def _fit_detector(root: Path, lm: LoadedModel, conditional: str, pooled: str = "true") -> tuple[Path, Results]:
    """The protocol on the toy data with *conditional* (the ``[conditional]`` section's lines); its run folder."""
    config = write_config(
        root / "c.toml",
        write_toy_jsonl(root / "toy.jsonl"),
        cache_dir=root / "cache",
        strengths="{ relative = [0.5] }",
        pooled=pooled,
        extra=f"[conditional]\n{conditional}",
    )
    return root / "run", run(load_config(config), root / "run", lm)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory, tiny_lm: LoadedModel) -> tuple[Path, Results]:
    root = tmp_path_factory.mktemp("detector")
    return _fit_detector(root, tiny_lm, 'gates = ["sign"]   # the tests below check the sign gate\'s pushes', "false")


def test_the_protocol_saves_a_detector_that_loads_back(fitted: tuple[Path, Results], tiny_lm: LoadedModel) -> None:
    out, results = fitted
    info = results.families["conditional"].saved
    assert info is not None and info.folder == "detector"
    detector = SavedDetector.load(out / "detector", tiny_lm)
    assert detector.digest == info.digest and detector.gate == "sign"
    assert detector.vector.provenance.method == "answer" and detector.probe.name == "logistic"
    assert detector.probe.design.deepest <= min(detector.layers)
    doc = json.loads((out / "detector" / "detector.json").read_text())
    assert doc["validation"]["balanced_accuracy"] == info.balanced_accuracy
    assert doc["training"]["n_train"] > 0 and doc["model"]["fingerprint"] == tiny_lm.fingerprint
    records = detector.detect(tiny_lm, toy_samples(2), mode="logit", progress=False)
    assert all(r.gate_score is not None and r.push in (-1.0, 1.0) for r in records)
    # the gate pushes toward the probe's verdict
    assert all((r.push > 0) == (r.gate_score > detector.probe.threshold) for r in records if r.push is not None)


def test_a_detector_refuses_another_model_and_damaged_files(
    fitted: tuple[Path, Results], tmp_path: Path, tiny_tokenizer: Any
) -> None:
    from conftest import make_tiny

    out, _ = fitted
    with pytest.raises(ModelMismatchError, match="fingerprint"):
        SavedDetector.load(out / "detector", make_tiny(tiny_tokenizer, "llama", layers=5))
    with pytest.raises(ModelMismatchError, match="other weights"):
        SavedDetector.load(out / "detector", make_tiny(tiny_tokenizer, "llama", seed=3))
    broken = tmp_path / "broken"
    broken.mkdir()
    with pytest.raises(SavedDetectorError, match=r"no detector\.json"):
        SavedDetector.load(broken)
    (broken / "detector.json").write_text(json.dumps({"format": "vulnsteer.Detector"}))
    with pytest.raises(SavedDetectorError, match="missing field 'setting'"):
        SavedDetector.load(broken)
    (broken / "detector.json").write_text("{nope")
    with pytest.raises(SavedDetectorError, match="not valid JSON"):
        SavedDetector.load(broken)


def test_detect_with_a_detector_prints_the_probe_score(
    fitted: tuple[Path, Results], tiny_lm: LoadedModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, _ = fitted
    model_dir = tmp_path / "model"
    tiny_lm.model.save_pretrained(model_dir)
    tiny_lm.tokenizer.save_pretrained(model_dir)
    src = tmp_path / "q.py"
    src.write_text("q = 'SELECT * FROM t WHERE id=' + uid\ncur.execute(q)\n")
    argv = [
        "--no-progress",
        "detect",
        str(src),
        "--model",
        str(model_dir),
        "--detector",
        str(out / "detector"),
        "--mode",
        "logit",
        "--json",
    ]
    assert main(argv) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["verdict"] in ("vulnerable", "secure") and "probe_score" in line and line["push"] in (-1.0, 1.0)
    assert main([*argv[:-3], "--vector", "x.safetensors", "--strength", "1"]) == 2
    assert "exclude each other" in capsys.readouterr().err
    assert main(["detector", "show", str(out / "detector")]) == 0
    shown = capsys.readouterr().out
    assert "probe: logistic" in shown and "gate sign" in shown and "val balanced accuracy" in shown


def test_evaluate_from_applies_the_conditional_choice_too(
    fitted: tuple[Path, Results], tiny_lm: LoadedModel, tmp_path: Path
) -> None:
    out, results = fitted
    other = write_toy_jsonl(tmp_path / "other.jsonl", n_pairs=3, prefix="other")
    config = transfer_config(out, {"data.path": (str(other), "--data"), "data.format": ("jsonl", "--format")})
    got = load_results(evaluate_from_run(out, config, tmp_path / "t", lm=tiny_lm, progress=False) / "results.json")
    assert got.families["conditional"].choices == results.families["conditional"].choices
    for row in held_out(got, "logit", "conditional").rows.values():
        shown = row.best_not_chosen or row
        assert row.split == "all" and shown.controls["gate_control"] and shown.controls["control"]
        assert shown.lever_rate is not None and shown.lever_rate.pushed > 0
    gated = [k for k in got.records if "|sign:" in k]
    assert gated and all(r.push is not None for k in gated for r in got.records[k])


def test_probe_weights_survive_the_round_trip(fitted: tuple[Path, Results]) -> None:
    out, _ = fitted
    a = SavedDetector.load(out / "detector")
    b_dir = out.parent / "copy"
    a.save(b_dir)
    b = SavedDetector.load(b_dir)
    torch.testing.assert_close(a.probe.weight, b.probe.weight)
    assert a.digest == b.digest


def test_a_hand_edited_or_damaged_detector_folder_is_named(fitted: tuple[Path, Results], tmp_path: Path) -> None:
    """What `detector show` prints must be what is applied, and a damaged probe file is an error naming it."""
    import shutil

    out, _ = fitted
    edited = tmp_path / "edited"
    shutil.copytree(out / "detector", edited)
    doc = json.loads((edited / "detector.json").read_text())
    doc["probe"]["threshold"] = float("inf")
    (edited / "detector.json").write_text(json.dumps(doc))
    with pytest.raises(SavedDetectorError, match=r"field 'probe\.threshold' \(inf\) differs from .*probe\.safetensors"):
        SavedDetector.load(edited)
    damaged = tmp_path / "damaged"
    shutil.copytree(out / "detector", damaged)
    blob = (damaged / "probe.safetensors").read_bytes()
    (damaged / "probe.safetensors").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(SavedDetectorError, match=r"probe\.safetensors: not a usable probe"):
        SavedDetector.load(damaged)


def test_a_gate_with_a_bag_of_tokens_term_reads_the_prompts_code(
    tmp_path: Path, tiny_lm: LoadedModel, capsys: pytest.CaptureFixture[str]
) -> None:
    """A gating design with ``tokens``: the protocol fits the term with the probe, the saved detector keeps it (its
    digest covers it), and each input's gate score is the states' part plus the term on that input's code."""
    _, results = _fit_detector(
        tmp_path, tiny_lm, 'gates = ["linear"]\ndesigns = [{ layers = [1], poolings = ["code_mean"], tokens = 1.0 }]'
    )
    info = results.families["conditional"].saved
    assert info is not None
    detector = SavedDetector.load(tmp_path / "run" / info.folder, tiny_lm)
    assert detector.probe.lexical is not None and detector.probe.design.tokens == 1.0
    assert detector.digest == info.digest
    samples = toy_samples(3)
    records = detector.detect(tiny_lm, samples, mode="logit", progress=False)
    from vulnsteer.lm.activations import extract_activations

    probe = detector.probe
    acts = extract_activations(tiny_lm, samples, list(probe.layers), list(probe.poolings), progress=False)
    expected = probe.scores_of(acts, acts.code_tokens, [s.code for s in samples])
    states_only = expected - torch.as_tensor(probe.lexical.scores([s.code for s in samples]), dtype=torch.float32)
    assert [r.gate_score for r in records] == pytest.approx(expected.tolist(), abs=1e-4)
    assert not torch.allclose(expected, states_only)
    # saved and loaded again: the same term (a replaced term would change the digest)
    copy = SavedDetector.load(detector.save(tmp_path / "copy"))
    assert copy.probe == probe and copy.digest == detector.digest
    assert main(["detector", "show", str(tmp_path / "copy")]) == 0
    assert "plus a bag-of-tokens term" in capsys.readouterr().out
