"""`vulnsteer evaluate --from RUN_DIR`: a sweep's chosen configurations applied unchanged to another dataset."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import write_toy_jsonl

from test_sweep import _sweep, write_config
from vulnsteer.experiment.engine import RunConfig, prepare_data
from vulnsteer.experiment.sweep import ConfigError, load_config
from vulnsteer.experiment.transfer import transfer
from vulnsteer.lm.model import LoadedModel
from vulnsteer.steer.vectors import VectorMismatchError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory, tiny_lm: LoadedModel) -> tuple[Path, Path, dict[str, Any]]:
    root = tmp_path_factory.mktemp("transfer")
    config = write_config(root / "sweep.toml", write_toy_jsonl(root / "toy.jsonl"), cache_dir=root / "cache")
    return config, root / "run", _sweep(config, root / "run", tiny_lm)


def _data(path: Path, **kwargs: Any) -> RunConfig:
    return RunConfig(data=str(path), format="jsonl", max_code_tokens=64, **kwargs)


def test_transfer_applies_the_choice_to_every_sample(
    tmp_path: Path, swept: tuple[Path, Path, dict[str, Any]], tiny_lm: LoadedModel
) -> None:
    _, run, results = swept
    other = write_toy_jsonl(tmp_path / "other.jsonl", cwes=("CWE-89", "CWE-78", "CWE-22"), n_pairs=3, prefix="other")
    out = transfer(run, _data(other), tmp_path / "t", lm=tiny_lm, progress=False)
    assert out["selection"] == results["selection"]  # nothing was selected again
    assert set(out["summary"]["logit"]) == {"CWE-89", "CWE-78"}
    for row in out["summary"]["logit"].values():
        assert row["split"] == "all" and row["n"] == 6  # all three pairs, no split
        assert row["p_value"] is not None
    assert out["data"]["skipped_cwes"] == {"CWE-22": 6}
    assert out["data"]["overlap_with_sweep_train"] > 0  # the toy code repeats across the two files
    cross = out["cross_cwe"]["logit"]
    assert cross["split"] == "all" and len(cross["delta_balanced_accuracy"]) == len(cross["vectors"])
    report = (tmp_path / "t" / "report.md").read_text()
    assert "unchanged" in report and "CWE-22 (6 samples)" in report and "ALL samples" in report
    assert "the all numbers" not in report and " on all unchanged" not in report  # sentences say "all samples"
    assert (tmp_path / "t" / "plots" / "cross_cwe_logit.png").is_file()
    again = transfer(run, _data(other), tmp_path / "t", lm=tiny_lm, progress=False)  # resumes: nothing to redo
    assert again["summary"] == out["summary"]
    another = write_toy_jsonl(tmp_path / "another.jsonl", n_pairs=2, prefix="another")
    with pytest.raises(ConfigError, match="changed: data"):
        transfer(run, _data(another), tmp_path / "t", lm=tiny_lm, progress=False)


def test_transfer_to_the_sweeps_own_test_split_reproduces_its_numbers(
    tmp_path: Path, swept: tuple[Path, Path, dict[str, Any]], tiny_lm: LoadedModel
) -> None:
    """The same vectors, settings, controls and statistics: on the sweep's test samples, the same rows."""
    config, run, results = swept
    data = prepare_data(load_config(config).run_config(), tiny_lm.tokenizer, progress=False)
    rows = [
        {"id": s.id, "pair_id": s.pair_id, "cwe": s.cwe, "label": s.label, "language": s.language, "code": s.code}
        for s in data.splits.test
    ]
    test_file = tmp_path / "test.jsonl"
    test_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = transfer(run, _data(test_file), tmp_path / "t", lm=tiny_lm, progress=False)

    def strip(value: Any) -> Any:
        """Without the split's name (``all`` there, ``test`` here)."""
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in ("split", "words")}
        return [strip(v) for v in value] if isinstance(value, list) else value

    assert strip(out["summary"]) == strip(results["summary"])
    assert strip(out["pooled"]) == strip(results["pooled"])
    assert (
        out["cross_cwe"]["logit"]["delta_balanced_accuracy"] == results["cross_cwe"]["logit"]["delta_balanced_accuracy"]
    )


def test_model_mismatch_is_refused(
    tmp_path: Path, swept: tuple[Path, Path, dict[str, Any]], tiny_tokenizer: Any
) -> None:
    from conftest import make_tiny

    _, run, _ = swept
    other = write_toy_jsonl(tmp_path / "other.jsonl", n_pairs=2, prefix="other")
    deeper = make_tiny(tiny_tokenizer, "llama", layers=5)
    with pytest.raises(VectorMismatchError, match="fingerprint"):
        transfer(run, _data(other), tmp_path / "a", lm=deeper, progress=False)
    reseeded = make_tiny(tiny_tokenizer, "llama", seed=7)
    with pytest.raises(VectorMismatchError, match="different weights"):
        transfer(run, _data(other), tmp_path / "b", lm=reseeded, progress=False)
    out = transfer(run, _data(other), tmp_path / "c", lm=deeper, allow_model_mismatch=True, progress=False)
    assert out["warnings"] and "fingerprint" in out["warnings"][0]


def test_evaluate_from_cli(
    tmp_path: Path, swept: tuple[Path, Path, dict[str, Any]], tiny_lm: LoadedModel, capsys: pytest.CaptureFixture[str]
) -> None:
    from vulnsteer.cli import main

    _, run, _ = swept
    model_dir = tmp_path / "model"
    tiny_lm.model.save_pretrained(model_dir)
    tiny_lm.tokenizer.save_pretrained(model_dir)
    other = write_toy_jsonl(tmp_path / "other.jsonl", cwes=("CWE-89", "CWE-22"), n_pairs=2, prefix="other")
    args = [
        "--no-progress",
        "evaluate",
        "--from",
        str(run),
        "--data",
        str(other),
        "--format",
        "jsonl",
        "--model",
        str(model_dir),
        "--max-code-tokens",
        "64",
        "--out",
        str(tmp_path / "t"),
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "CWE-89" in printed and "skipped" in printed and "CWE-22" in printed
    assert json.loads((tmp_path / "t" / "results.json").read_text())["command"] == "evaluate --from"
    assert main(["evaluate", "--from", str(tmp_path / "nowhere"), "--data", str(other)]) == 2
    assert main(["evaluate", "--from", str(run)]) == 2  # --data is required with --from


@pytest.mark.data
@pytest.mark.skipif(not (SHARED_DATA / "juliet-java").is_dir(), reason="shared/data/juliet-java not present")
def test_transfer_to_juliet_java(
    tmp_path: Path, swept: tuple[Path, Path, dict[str, Any]], tiny_lm: LoadedModel
) -> None:
    _, run, _ = swept
    config = RunConfig(data=str(SHARED_DATA / "juliet-java"), format="juliet", max_code_tokens=64, max_pairs_per_cwe=2)
    out = transfer(run, config, tmp_path / "t", lm=tiny_lm, progress=False)
    assert set(out["summary"]["logit"]) == {"CWE-89", "CWE-78"}
    assert out["data"]["skipped_cwes"]  # Juliet Java has CWEs the toy sweep never chose for
