"""`vulnsteer evaluate --vectors DIR`: saved vectors vs baseline vs random control, on a tiny saved model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from tests.conftest import write_toy_jsonl

from vulnsteer.cli import main
from vulnsteer.experiment.evaluate import load_vector_dir
from vulnsteer.lm.model import LoadedModel
from vulnsteer.steer.vectors import Provenance, SteeringVector, VectorMismatchError


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
def env(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: Any) -> dict[str, Any]:
    """A tiny saved model, a dataset with three CWEs, and vectors fitted by `vulnsteer vectors fit` for two of them."""
    from conftest import make_tiny

    root = tmp_path_factory.mktemp("evaluate")
    lm: LoadedModel = make_tiny(tiny_tokenizer, "llama")
    model_dir = root / "model"
    lm.model.save_pretrained(model_dir)
    lm.tokenizer.save_pretrained(model_dir)
    train = write_toy_jsonl(root / "train.jsonl", ("CWE-89", "CWE-78"), n_pairs=5, prefix="e")
    data = write_toy_jsonl(root / "data.jsonl", ("CWE-89", "CWE-78", "CWE-22"), n_pairs=5, prefix="e")
    vectors = root / "vectors"
    code = main(
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
    assert code == 0
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
            *extra,
        ]
    )


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines, "no error message"
    line = lines[-1]
    assert line.startswith("vulnsteer: error: ")
    return line


# ---------------------------------------------------------------- load_vector_dir


def test_load_vector_dir_keys_by_cwe_and_method(tmp_path: Path) -> None:
    _vector("CWE-89").save(tmp_path / "cwe-89-mean_diff.safetensors")
    _vector("CWE-78", method="pca").save(tmp_path / "cwe-78-pca.safetensors")
    (tmp_path / "notes.txt").write_text("not a vector")
    vectors = load_vector_dir(tmp_path, 64, "f" * 16)
    assert set(vectors) == {("CWE-89", "mean_diff"), ("CWE-78", "pca")}
    assert vectors[("CWE-89", "mean_diff")].layers == (1,)
    assert set(load_vector_dir(tmp_path, 64, None)) == set(vectors)  # None: no fingerprint check


def test_load_vector_dir_refuses_missing_empty_and_mismatched(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="vector folder not found"):
        load_vector_dir(tmp_path / "nowhere", 64, None)
    with pytest.raises(FileNotFoundError, match=r"no \.safetensors steering vectors"):
        load_vector_dir(tmp_path, 64, None)
    _vector("CWE-89").save(tmp_path / "cwe-89-mean_diff.safetensors")
    with pytest.raises(VectorMismatchError, match=r"cwe-89-mean_diff\.safetensors.*hidden size 64.*has 32"):
        load_vector_dir(tmp_path, 32, None)
    with pytest.raises(VectorMismatchError, match="fingerprint"):
        load_vector_dir(tmp_path, 64, "0" * 16)


# ---------------------------------------------------------------- the command


def test_evaluate_writes_baseline_steered_and_control_on_test(
    env: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval"
    assert _evaluate(env, out, "--strength", "8", "--modes", "logit,generation", "--max-new-tokens", "3") == 0
    assert f"report: {out / 'report.md'}" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert results["command"] == "evaluate"
    assert results["vectors_from"] == str(env["vectors"])
    assert results["model"]["fingerprint"] == env["fingerprint"]
    assert results["layers"] == [1]
    assert sorted(results["data"]["cwes"]) == ["CWE-78", "CWE-89"]  # CWE-22 has no vector: left out
    assert set(results["vectors"]) == {"CWE-89|mean_diff", "CWE-78|mean_diff"}
    conds = [e["condition"] for e in results["conditions"]]
    assert sorted((c["mode"], c["kind"]) for c in conds) == sorted(
        (m, k) for m in ("logit", "generation") for k in ("baseline", "steered", "control")
    )
    assert {c["split"] for c in conds} == {"test"}
    assert all(c["strength"] == 8.0 and c["layers"] == [1] for c in conds if c["kind"] != "baseline")

    test_ids = {r["sample_id"] for r in results["records"][next(c["key"] for c in conds if c["kind"] == "baseline")]}
    test_counts = results["data"]["splits"]["test"]["by_cwe"]
    for mode in ("logit", "generation"):
        summary = results["summary"][mode]
        assert set(summary) == {"CWE-78", "CWE-89"}
        for cwe, row in summary.items():
            assert row["split"] == "test"
            assert row["n"] == test_counts[cwe]["vulnerable"] + test_counts[cwe]["secure"] > 0
            assert row["n_pairs"] == test_counts[cwe]["pairs"]
            assert row["chosen"] == "steered mean_diff L1 raw 8"
            assert row["baseline"] and row["steered"] and row["control"]
            assert 0.0 <= row["p_value"] <= 1.0 and "words" in row
    for key, records in results["records"].items():
        assert {r["sample_id"] for r in records} == test_ids, key  # every condition on the same test samples
        assert not any(r["sample_id"].startswith("CWE-22") for r in records)
    by_kind = {c["kind"]: results["records"][c["key"]] for c in conds if c["mode"] == "logit"}
    margins = {kind: [r["margin"] for r in recs] for kind, recs in by_kind.items()}
    assert margins["steered"] != margins["baseline"]  # the vectors were applied
    assert margins["control"] != margins["steered"]  # and the control is another direction

    report = (out / "report.md").read_text()
    assert "## logit mode: test split, settings given by the user" in report
    assert "## generation mode: test split, settings given by the user" in report
    assert "random control" in report and "CWE-22" not in report
    assert (out / "strength_logit_test.png").read_bytes()[:4] == b"\x89PNG"

    # rerunning resumes from records.jsonl
    before = (out / "records.jsonl").read_text()
    assert _evaluate(env, out, "--strength", "8", "--modes", "logit,generation", "--max-new-tokens", "3") == 0
    assert (out / "records.jsonl").read_text() == before


@pytest.mark.parametrize("split", ["all", "val"])
def test_evaluate_split(env: dict[str, Any], tmp_path: Path, split: str) -> None:
    out = tmp_path / split
    assert _evaluate(env, out, "--split", split, "--strength", "2") == 0
    results = json.loads((out / "results.json").read_text())
    assert {e["condition"]["split"] for e in results["conditions"]} == {split}
    expected = 10 if split == "all" else None  # five pairs per CWE in the data file
    for cwe, row in results["summary"]["logit"].items():
        assert row["split"] == split
        if expected is not None:
            assert row["n"] == expected and row["n_pairs"] == 5, cwe
        else:
            counts = results["data"]["splits"]["val"]["by_cwe"][cwe]
            assert row["n"] == counts["vulnerable"] + counts["secure"] > 0, cwe
    assert f"## logit mode: {split} split" in (out / "report.md").read_text()


# ---------------------------------------------------------------- errors: one line, exit 2


def test_evaluate_missing_vector_folder(
    env: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _evaluate(env, tmp_path / "out", vectors=tmp_path / "no_such_dir") == 2
    line = _error_line(capsys)
    assert "vector folder not found" in line and "no_such_dir" in line
    assert not (tmp_path / "out" / "results.json").exists()


def test_evaluate_vector_for_another_hidden_size(
    env: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "vecs"
    _vector("CWE-89", hidden=32, fingerprint=env["fingerprint"]).save(folder / "wide.safetensors")
    assert _evaluate(env, tmp_path / "out", vectors=folder) == 2
    line = _error_line(capsys)
    assert "wide.safetensors" in line and "hidden size 32" in line and "has 64" in line


def test_evaluate_refuses_a_model_mismatch_unless_allowed(
    env: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "vecs"
    _vector("CWE-89").save(folder / "cwe-89-mean_diff.safetensors")  # right size, another model's fingerprint
    assert _evaluate(env, tmp_path / "refused", vectors=folder) == 2
    line = _error_line(capsys)
    assert "cwe-89-mean_diff.safetensors" in line and "fingerprint" in line and "--allow-model-mismatch" in line
    assert _evaluate(env, tmp_path / "allowed", "--allow-model-mismatch", vectors=folder) == 0
    results = json.loads((tmp_path / "allowed" / "results.json").read_text())
    assert list(results["summary"]["logit"]) == ["CWE-89"]


def test_evaluate_refuses_vectors_of_other_weights_of_the_same_architecture(
    env: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A fine-tune has the same fingerprint (architecture) but other weights: the provenance's weights digest
    tells them apart."""
    from transformers import AutoModelForCausalLM

    tuned = AutoModelForCausalLM.from_pretrained(env["model"])
    with torch.no_grad():
        tuned.lm_head.weight.add_(0.01)
    tuned_dir = tmp_path / "tuned"
    tuned.save_pretrained(tuned_dir)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (env["model"] / name).exists():
            (tuned_dir / name).write_bytes((env["model"] / name).read_bytes())
    fitted = SteeringVector.load(next(env["vectors"].glob("cwe-89-*.safetensors")))
    assert fitted.provenance.model_fingerprint == env["fingerprint"]
    assert set(fitted.provenance.extra) == {"weights_digest", "dtype", "model_type"}
    args = [
        "--no-progress",
        "evaluate",
        "--vectors",
        str(env["vectors"]),
        "--model",
        str(tuned_dir),
        "--data",
        str(env["data"]),
        "--format",
        "jsonl",
        "--max-code-tokens",
        "64",
    ]
    assert main([*args, "--out", str(tmp_path / "refused")]) == 2
    line = _error_line(capsys)
    assert "other weights of this architecture" in line and "--allow-model-mismatch" in line
    assert main([*args, "--out", str(tmp_path / "allowed"), "--allow-model-mismatch"]) == 0


def test_evaluate_without_a_matching_cwe_or_without_vectors(
    env: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "vecs"
    _vector("CWE-79", fingerprint=env["fingerprint"]).save(folder / "cwe-79-mean_diff.safetensors")
    assert _evaluate(env, tmp_path / "out", vectors=folder) == 2
    line = _error_line(capsys)
    assert "none of the data's CWEs" in line and str(folder) in line
    assert main(["--no-progress", "evaluate", "--model", str(env["model"]), "--data", str(env["data"])]) == 2
    assert "evaluate needs --vectors DIR" in _error_line(capsys)


@pytest.mark.parametrize(
    ("other", "what"),
    [
        ({"method": "pca"}, "the CWE-89 vector is pca at layers [1]"),
        ({"layers": (2,)}, "the CWE-89 vector is mean_diff at layers [2]"),
    ],
)
def test_evaluate_refuses_vectors_that_need_different_settings(
    env: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str], other: dict[str, Any], what: str
) -> None:
    """One strength, method and layer set for every CWE: a folder mixing them is a clear error, not a KeyError."""
    folder = tmp_path / "vecs"
    _vector("CWE-78", fingerprint=env["fingerprint"]).save(folder / "cwe-78-mean_diff.safetensors")
    _vector("CWE-89", fingerprint=env["fingerprint"], **other).save(folder / "cwe-89-other.safetensors")
    assert _evaluate(env, tmp_path / "out", vectors=folder) == 2
    line = _error_line(capsys)
    assert str(folder) in line and "(mean_diff at layers [1])" in line and what in line
