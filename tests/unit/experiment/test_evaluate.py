"""`vulnsteer evaluate --from RUN` and `--vectors DIR`: one apply engine, the same rows, nothing re-selected."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import write_toy_jsonl
from runs import held_out, run, write_config
from vulnsteer.cli import main
from vulnsteer.config.experiment import ConfigError, load_config, parse_config
from vulnsteer.experiment.chosen import load_chosen
from vulnsteer.experiment.evaluate import evaluate_from_run, evaluate_vectors, transfer_config
from vulnsteer.experiment.fit import load_vector_dir
from vulnsteer.experiment.prepare import prepare_data
from vulnsteer.experiment.results import Results
from vulnsteer.experiment.tables import HeldOutRow, HeldOutTable
from vulnsteer.experiment.upgrade import load_results
from vulnsteer.lm.identity import ModelIdentity, ModelMismatchError
from vulnsteer.lm.model import LoadedModel
from vulnsteer.steering.probe import Probe
from vulnsteer.steering.vectors import Provenance, SteeringVector, VectorMismatchError


def _vector(
    cwe: str,
    *,
    hidden: int = 64,
    fingerprint: str = "f" * 16,
    method: str = "mean_diff",
    layers: tuple[int, ...] = (1,),
) -> SteeringVector:
    prov = Provenance(
        "tiny-llama",
        fingerprint,
        hidden,
        layers,
        "last",
        method,
        cwe,
        4,
        4,
        "h",
        "t",
        layer_norms={layer: 10.0 for layer in layers},
    )
    return SteeringVector({layer: torch.ones(hidden) for layer in layers}, prov)


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory, tiny_lm: LoadedModel) -> tuple[Path, Path, Results]:
    root = tmp_path_factory.mktemp("evaluate")
    config = write_config(root / "sweep.toml", write_toy_jsonl(root / "toy.jsonl"), cache_dir=root / "cache")
    return config, root / "run", run(load_config(config), root / "run", tiny_lm)


def _other(tmp_path: Path, **kwargs: Any) -> dict[str, tuple[Any, str]]:
    data = write_toy_jsonl(tmp_path / "other.jsonl", **kwargs)
    return {"data.path": (str(data), "--data"), "data.format": ("jsonl", "--format")}


def test_from_run_applies_the_choice_to_every_sample(
    tmp_path: Path, swept: tuple[Path, Path, Results], tiny_lm: LoadedModel
) -> None:
    _, run_dir, results = swept
    config = transfer_config(run_dir, _other(tmp_path, cwes=("CWE-89", "CWE-78", "CWE-22"), n_pairs=3, prefix="other"))
    assert config.data.max_code_tokens == 64  # the run's cleaning keys carry over
    out = evaluate_from_run(run_dir, config, tmp_path / "t", lm=tiny_lm, progress=False)
    got = load_results(out / "results.json")
    assert got.command == "evaluate --from"
    for name in ("constant", "conditional"):  # nothing re-selected
        assert got.families[name].choices == results.families[name].choices, name
    assert set(held_out(got).rows) == {"CWE-89", "CWE-78"}
    for row in held_out(got).rows.values():
        assert row.split == "all" and row.n == 6 and row.p_value is not None
    assert got.data is not None and got.data.skipped_cwes == {"CWE-22": 6}
    assert (got.data.overlap_with_run_train or 0) > 0  # the toy code repeats across the two files
    cross = held_out(got).cross_cwe
    assert cross is not None
    assert cross.split == "all" and len(cross.delta_balanced_accuracy) == len(cross.vectors)
    lead = got.lead["logit"]  # the lead table, on the other dataset: every re-applied detector, with its controls
    assert lead.split == "all" and [r.name for r in lead.rows] == [
        "baseline", "constant", "constant_control", "conditional", "gate_control", "vector_control", "probe"
    ]  # fmt: skip
    # the adapted probe needs conditional.min_adapt (20) unlabelled inputs: on these 12 it says it did not adapt
    assert any("at least 20" in note for note in got.families["adapted"].notes)
    assert "not adapted" in (out / "report.md").read_text()
    report = (out / "report.md").read_text()
    assert "unchanged" in report and "CWE-22 (6 samples)" in report and "ALL samples" in report
    assert "the all numbers" not in report and " on all unchanged" not in report  # sentences say "all samples"
    informative = any(v for line in cross.delta_balanced_accuracy for v in line)  # an all-zero matrix is not drawn
    assert (out / "plots" / "cross_cwe_logit.png").is_file() == informative == ("(plots/cross_cwe_logit.png)" in report)
    before = (out / "records.jsonl").read_text()
    evaluate_from_run(run_dir, config, out, lm=tiny_lm, progress=False)  # resumes: nothing to redo
    assert (out / "records.jsonl").read_text() == before
    (tmp_path / "b").mkdir()
    another = transfer_config(run_dir, _other(tmp_path / "b", n_pairs=2, prefix="another"))
    with pytest.raises(ConfigError, match=r"changed: .*data"):
        evaluate_from_run(run_dir, another, out, lm=tiny_lm, progress=False)
    assert another.run.out is None  # not the run's own folder
    with pytest.raises(ValueError, match=r"is the --from run itself"):
        evaluate_from_run(run_dir, another, run_dir, lm=tiny_lm, progress=False)


def test_from_run_on_cwes_it_never_chose_for_scores_the_probes_that_read_any_code(
    tmp_path: Path, swept: tuple[Path, Path, Results], tiny_lm: LoadedModel
) -> None:
    """17.6 (the demo's left-out CWEs): no per-CWE choice covers the data, so constant and conditional steering have
    nothing to apply; the pooled probe, alone and adapted, reads any code and is scored, with a warning."""
    _, run_dir, _ = swept
    config = transfer_config(run_dir, _other(tmp_path, cwes=("CWE-22",), n_pairs=12, prefix="left-out"))
    out = evaluate_from_run(run_dir, config, tmp_path / "t", lm=tiny_lm, progress=False)
    got = load_results(out / "results.json")
    assert got.data is not None and got.data.skipped_cwes == {} and got.data.n_samples == 24
    assert [r.name for r in got.lead["logit"].rows] == ["baseline", "probe", "adapted"]
    assert any("none of these CWEs has a per-CWE choice" in w for w in got.warnings)
    first = (out / "report.md").read_text().splitlines()[0]
    assert first.startswith("# vulnsteer report (evaluate --from): the ") and "probe transferred better" in first


def test_one_gated_setting_for_every_cwe_applies_to_cwes_the_run_never_saw(
    tmp_path: Path, tiny_lm: LoadedModel
) -> None:
    """[conditional] select = "pooled": the run's one gated setting is what a scanner applies to any code, so
    `evaluate --from` scores it (with its controls) on CWEs the run never chose for, as it scores the pooled probe;
    the per-CWE constant steering still has nothing to apply there."""
    extra = '\n[conditional]\nselect = "pooled"\n'
    config = write_config(
        tmp_path / "sweep.toml", write_toy_jsonl(tmp_path / "toy.jsonl"), cache_dir=tmp_path / "cache", extra=extra
    )
    results = run(load_config(config), tmp_path / "run", tiny_lm)
    made = results.families["conditional"].choices["logit"]
    assert sorted(made) == ["CWE-78", "CWE-89"] and {c.scope for c in made.values()} == {"pooled"}
    (tmp_path / "o").mkdir()
    other = transfer_config(tmp_path / "run", _other(tmp_path / "o", cwes=("CWE-22",), n_pairs=12, prefix="new"))
    out = evaluate_from_run(tmp_path / "run", other, tmp_path / "t", lm=tiny_lm, progress=False)
    got = load_results(out / "results.json")
    assert got.data is not None and got.data.skipped_cwes == {} and got.data.n_samples == 24
    rows = {r.name: r for r in got.lead["logit"].rows}
    assert list(rows) == [
        "baseline", "conditional", "gate_control", "vector_control", "conditional_adapted", "probe", "adapted"
    ]  # fmt: skip
    (choice,) = got.families["conditional"].choices["logit"].values()
    assert choice.target == "CWE-22" and choice == dataclasses.replace(made["CWE-89"], target="CWE-22")
    assert "constant" not in got.families and any("per-CWE choice" in w for w in got.warnings)
    assert held_out(got, family="conditional").rows["CWE-22"].n == 24
    # the adapted steered row: the steered scores unchanged, its threshold flagging the gate probe's share of them
    steered, adapted = rows["conditional"].metrics, rows["conditional_adapted"].metrics
    assert adapted.auroc == steered.auroc and adapted.n == steered.n == 24
    chosen = load_chosen(tmp_path / "run")
    (gate_file,) = {e["probes"][choice.best.probe] for e in chosen.families["conditional"]["logit"].values()}
    share = Probe.load(tmp_path / "run" / "chosen" / gate_file).adaptation.share
    assert adapted.vulnerable_rate == pytest.approx(share, abs=1 / 24)
    report = (out / "report.md").read_text()
    assert "conditional steering: one for every CWE" in report and "no label read" in report
    # a choice's scope that is not one: the error names the file, the choice and the field; nothing is written
    doc = json.loads((tmp_path / "run" / "chosen" / "chosen.json").read_text())
    for by in doc["families"]["conditional"].values():
        for item in by.values():
            item["scope"] = "everywhere"
    (tmp_path / "run" / "chosen" / "chosen.json").write_text(json.dumps(doc))
    with pytest.raises(
        ValueError, match=r"chosen\.json: choice logit\.CWE-\d+: a choice's scope is one of .*'everywhere'"
    ):
        evaluate_from_run(tmp_path / "run", other, tmp_path / "bad", lm=tiny_lm, progress=False)
    assert not (tmp_path / "bad").exists()


def _test_split_file(config_path: Path, tiny_lm: LoadedModel, path: Path) -> Path:
    data = prepare_data(load_config(config_path).data, tiny_lm.tokenizer, progress=False)
    rows = [
        {"id": s.id, "pair_id": s.pair_id, "cwe": s.cwe, "label": s.label, "language": s.language, "code": s.code}
        for s in data.splits.test
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _strip(value: HeldOutTable | HeldOutRow | None) -> Any:
    """Without the split's name (``all`` there, ``test`` here) and the sentences that name it."""

    def strip(doc: Any) -> Any:
        if isinstance(doc, dict):
            return {k: strip(v) for k, v in doc.items() if k not in ("split", "words")}
        return [strip(v) for v in doc] if isinstance(doc, list) else doc

    return None if value is None else strip(value.to_json())


def test_from_run_on_the_runs_own_test_split_reproduces_its_numbers(
    tmp_path: Path, swept: tuple[Path, Path, Results], tiny_lm: LoadedModel
) -> None:
    """The same vectors, settings, controls and statistics: on the run's test samples, the same rows."""
    config_path, run_dir, results = swept
    test_file = _test_split_file(config_path, tiny_lm, tmp_path / "test.jsonl")
    config = transfer_config(run_dir, {"data.path": (str(test_file), "--data"), "data.format": ("jsonl", "")})
    out = evaluate_from_run(run_dir, config, tmp_path / "t", lm=tiny_lm, progress=False)
    got = load_results(out / "results.json")
    for name in ("constant", "conditional"):  # rows per CWE, the pooled vector's rows, the cross-CWE matrix
        for mode, table in results.families[name].held_out.items():
            assert _strip(got.families[name].held_out[mode]) == _strip(table), (name, mode)
    for mode, lead in results.lead.items():  # the detectors both have, on the same samples: the same rows
        again = {r.name: r for r in got.lead[mode].rows}
        for row in lead.rows:
            if row.name in again:
                assert again[row.name].metrics == row.metrics and again[row.name].versus == row.versus, row.name


def test_both_evaluate_paths_give_identical_rows(
    tmp_path: Path, swept: tuple[Path, Path, Results], tiny_lm: LoadedModel
) -> None:
    """--vectors with the run's chosen vectors at a chosen setting == --from, for the CWEs that chose it."""
    config_path, run_dir, results = swept
    chosen = load_chosen(run_dir).families["constant"]["logit"]
    steered = {t: e for t, e in chosen.items() if t != "any"}
    target, entry = next(iter(steered.items()))
    setting = entry["best_steered"]
    folder = tmp_path / "vecs"
    folder.mkdir()
    shutil.copy(run_dir / "chosen" / entry["vector"], folder / entry["vector"])
    test_file = _test_split_file(config_path, tiny_lm, tmp_path / "test.jsonl")
    data_keys = {
        "data": {
            "path": str(test_file),
            "format": "jsonl",
            "max_code_tokens": 64,
            "cwes": [target],
            "duplicates": "keep",
        }
    }
    steering = {
        "layers": [setting["layers"]],
        "positions": [setting["positions"]],
        "strengths": {setting["unit"]: [setting["strength"]]},
        "control_seed": results.config["steering"]["control_seed"],
    }
    cfg = parse_config({**data_keys, "steering": steering, "detection": {"modes": ["logit"], "cross_cwe_modes": []}})
    out_v = evaluate_vectors(folder, cfg, setting["strength"], tmp_path / "v", split="all", lm=tiny_lm, progress=False)
    from_cfg = transfer_config(
        run_dir,
        {
            "data.path": (str(test_file), ""),
            "data.format": ("jsonl", ""),
            "data.cwes": ([target], ""),
            "detection.modes": (["logit"], ""),
            "detection.cross_cwe_modes": ([], ""),
        },
    )
    out_f = evaluate_from_run(run_dir, from_cfg, tmp_path / "f", lm=tiny_lm, progress=False)
    rows_v = held_out(load_results(out_v / "results.json")).rows[target]
    rows_f = held_out(load_results(out_f / "results.json")).rows[target]
    if entry["chosen"] == "baseline":
        assert rows_f.best_not_chosen is not None
        rows_f = rows_f.best_not_chosen
    assert _strip(rows_v) == _strip(rows_f)
    assert set(rows_v.controls) == {"control"} and rows_v.controls["control"].delta is not None


def test_model_mismatch_is_refused(tmp_path: Path, swept: tuple[Path, Path, Results], tiny_tokenizer: Any) -> None:
    from conftest import make_tiny

    _, run_dir, _ = swept
    config = transfer_config(run_dir, _other(tmp_path, n_pairs=2, prefix="other"))
    deeper = make_tiny(tiny_tokenizer, "llama", layers=5)
    with pytest.raises(ModelMismatchError, match="fingerprint"):
        evaluate_from_run(run_dir, config, tmp_path / "a", lm=deeper, progress=False)
    reseeded = make_tiny(tiny_tokenizer, "llama", seed=7)
    with pytest.raises(ModelMismatchError, match="other weights"):
        evaluate_from_run(run_dir, config, tmp_path / "b", lm=reseeded, progress=False)
    out = evaluate_from_run(run_dir, config, tmp_path / "c", lm=deeper, allow_model_mismatch=True, progress=False)
    warnings = load_results(out / "results.json").warnings
    assert warnings and "fingerprint" in warnings[0]


def test_load_vector_dir_keys_and_refusals(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="vector folder not found"):
        load_vector_dir(tmp_path / "nowhere", 64, None)
    with pytest.raises(FileNotFoundError, match=r"no \.safetensors steering vectors"):
        load_vector_dir(tmp_path, 64, None)
    _vector("CWE-89").save(tmp_path / "cwe-89-mean_diff.safetensors")
    _vector("CWE-78", method="pca").save(tmp_path / "cwe-78-pca.safetensors")
    (tmp_path / "notes.txt").write_text("not a vector")
    found = load_vector_dir(tmp_path, 64, ModelIdentity("m", "f" * 16))
    assert set(found) == {("CWE-89", "mean_diff@last"), ("CWE-78", "pca@last")}
    with pytest.raises(VectorMismatchError, match=r"cwe-78-pca\.safetensors.*hidden size 64.*has 32"):
        load_vector_dir(tmp_path, 32, None)
    with pytest.raises(ModelMismatchError, match="fingerprint"):
        load_vector_dir(tmp_path, 64, ModelIdentity("m", "0" * 16))
    _vector("CWE-89").save(tmp_path / "again.safetensors")
    with pytest.raises(VectorMismatchError, match="a second CWE-89 vector"):
        load_vector_dir(tmp_path, 64, None)


# ---------------------------------------------------------------- the command line


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: Any) -> dict[str, Any]:
    """A tiny saved model, a dataset with three CWEs, and vectors fitted by `vulnsteer vectors` for two of them."""
    from conftest import make_tiny

    root = tmp_path_factory.mktemp("evaluate-cli")
    lm: LoadedModel = make_tiny(tiny_tokenizer, "llama")
    model_dir = root / "model"
    lm.model.save_pretrained(model_dir)
    lm.tokenizer.save_pretrained(model_dir)
    train = write_toy_jsonl(root / "train.jsonl", ("CWE-89", "CWE-78"), n_pairs=5, prefix="e")
    data = write_toy_jsonl(root / "data.jsonl", ("CWE-89", "CWE-78", "CWE-22"), n_pairs=5, prefix="e")
    vectors = root / "vectors"
    assert (
        main(
            [
                "--no-progress",
                "vectors",
                "fit",
                "--model",
                str(model_dir),
                "--data",
                str(train),
                "--format",
                "jsonl",
                "--max-code-tokens",
                "64",
                "--layers",
                "1",
                "--out",
                str(vectors),
            ]
        )
        == 0
    )
    return {"model": model_dir, "data": data, "vectors": vectors, "fingerprint": lm.fingerprint}


def _evaluate(env: dict[str, Any], out: Path, *extra: str, vectors: Path | None = None) -> int:
    return main(
        [
            "--no-progress",
            "evaluate",
            "--vectors",
            str(vectors or env["vectors"]),
            "--model",
            str(env["model"]),
            "--data",
            str(env["data"]),
            "--format",
            "jsonl",
            "--max-code-tokens",
            "64",
            "--out",
            str(out),
            "--max-new-tokens",
            "3",
            *extra,
        ]
    )


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines, "no error message"
    assert lines[-1].startswith("vulnsteer: error: ")
    return lines[-1]


def test_evaluate_vectors_writes_baseline_steered_and_control(
    env: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval"
    assert _evaluate(env, out, "--strength", "0.5") == 0
    assert f"report: {out / 'report.md'}" in capsys.readouterr().out
    results = load_results(out / "results.json")
    assert results.command == "evaluate --vectors" and results.vectors_from == str(env["vectors"])
    assert results.data is not None and results.data.splits is not None
    assert sorted(results.data.cwes) == ["CWE-78", "CWE-89"]  # CWE-22 has no vector: left out
    test_counts = results.data.splits.class_counts("test")
    for mode in ("logit", "generation"):
        for cwe, row in held_out(results, mode).rows.items():
            assert row.split == "test" and row.n == sum(test_counts[cwe])
            assert row.chosen == "mean_diff@last L1 relative +0.5 (steer last)"
            assert row.baseline and row.steered and row.controls["control"] and row.words
    keys = {k.split("|")[0] for k in results.records}
    assert keys == {"baseline", "steered", "control"}
    logit = {
        k.split("|")[0]: v
        for k, v in results.records.items()
        if ("|logit|" in k and "|CWE-89|" in k) or k == "baseline|logit|test"
    }
    margins = {role: [r.margin for r in recs if r.cwe == "CWE-89"] for role, recs in logit.items()}
    assert margins["steered"] != margins["baseline"] and margins["control"] != margins["steered"]
    report = (out / "report.md").read_text()
    assert "## logit mode: TEST split, setting chosen on the given (evaluate --vectors)" in report
    before = (out / "records.jsonl").read_text()
    assert _evaluate(env, out, "--strength", "0.5") == 0  # resumes from records.jsonl
    assert (out / "records.jsonl").read_text() == before


def test_evaluate_errors_are_one_line(env: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _evaluate(env, tmp_path / "out", "--strength", "1", vectors=tmp_path / "no_such_dir") == 2
    assert "vector folder not found" in _error_line(capsys)
    assert not (tmp_path / "out").exists()
    assert _evaluate(env, tmp_path / "out") == 2
    assert "--vectors DIR needs --strength" in _error_line(capsys)
    folder = tmp_path / "vecs"
    _vector("CWE-89").save(folder / "cwe-89-mean_diff.safetensors")  # right size, another model's fingerprint
    assert _evaluate(env, tmp_path / "refused", "--strength", "1", vectors=folder) == 2
    line = _error_line(capsys)
    assert "cwe-89-mean_diff.safetensors" in line and "fingerprint" in line and "--allow-model-mismatch" in line
    assert _evaluate(env, tmp_path / "allowed", "--strength", "1", "--allow-model-mismatch", vectors=folder) == 0


def test_evaluate_from_cli(
    tmp_path: Path, swept: tuple[Path, Path, Results], tiny_lm: LoadedModel, capsys: pytest.CaptureFixture[str]
) -> None:
    _, run_dir, _ = swept
    model_dir = tmp_path / "model"
    tiny_lm.model.save_pretrained(model_dir)
    tiny_lm.tokenizer.save_pretrained(model_dir)
    other = write_toy_jsonl(tmp_path / "other.jsonl", cwes=("CWE-89", "CWE-22"), n_pairs=2, prefix="other")
    args = [
        "--no-progress",
        "evaluate",
        "--from",
        str(run_dir),
        "--data",
        str(other),
        "--format",
        "jsonl",
        "--model",
        str(model_dir),
        "--out",
        str(tmp_path / "t"),
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "logit CWE-89: n=4" in printed and "skipped (no vector or choice): CWE-22" in printed
    assert main(["--no-progress", "evaluate", "--from", str(run_dir), "--out", str(tmp_path / "u")]) == 2
    assert "needs --data OTHER" in _error_line(capsys)
    assert main(["--no-progress", "evaluate", "--from", str(tmp_path), "--data", str(other)]) == 2
    assert "chosen.json not found" in _error_line(capsys)


def test_evaluate_vectors_refuses_a_method_the_folder_lacks(
    env: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The folder holds only mean_diff vectors: asking for pca is an error, not a silent fallback to mean_diff."""
    assert _evaluate(env, tmp_path / "eval", "--strength", "0.5", "--method", "pca") == 2
    assert "holds vectors of mean_diff@last; choose one with --method and --pooling" in _error_line(capsys)
