"""`vulnsteer sweep`: config validation, selection on val only, resumability (SIGKILL, SIGINT), outputs."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import write_toy_jsonl

from vulnsteer.detect.engine import DetectionRecord
from vulnsteer.experiment import sweep as sweep_mod
from vulnsteer.experiment.engine import Condition
from vulnsteer.experiment.sweep import (
    ConfigError,
    Setting,
    SweepConfig,
    config_document,
    dump_toml,
    load_config,
    parse_config,
    run_sweep,
    select_settings,
)
from vulnsteer.lm.model import LoadedModel

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def write_config(
    path: Path,
    data: Path,
    *,
    cache_dir: Path,
    modes: str = '["logit"]',
    group_size: int = 4,
    strengths: str = "{ relative = [0.5, 2.0] }",
    extra: str = "",
) -> Path:
    path.write_text(
        f"""
[data]
path = "{data}"
format = "jsonl"
max_code_tokens = 64

[vectors]
methods = ["mean_diff"]
positions = ["last"]
pooled = true

[steering]
layers = [[1], [2], [1, 2]]
strengths = {strengths}

[detection]
modes = {modes}
max_new_tokens = 3

[run]
group_size = {group_size}
cache_dir = "{cache_dir}"
{extra}
""",
        encoding="utf-8",
    )
    return path


def test_examples_parse() -> None:
    for name in ("default.toml", "quick.toml", "sven.toml"):
        config = load_config(EXAMPLES / name)
        assert config.modes and config.strengths
    default = load_config(EXAMPLES / "default.toml")
    assert default.layers == ((10,), (15,), (20,), (10, 15, 20))
    assert all(unit == "relative" for unit, _ in default.strengths)


def test_unknown_keys_are_rejected_with_name_and_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[steering]\nstrenghts = [1.0]\n")
    with pytest.raises(ConfigError, match=r"bad\.toml.*steering\.strenghts"):
        load_config(bad)
    bad.write_text("[stearing]\nlayers = [1]\n")
    with pytest.raises(ConfigError, match=r"bad\.toml.*stearing"):
        load_config(bad)
    bad.write_text("model = 'x'\n")
    with pytest.raises(ConfigError, match="'model' must be a table"):
        load_config(bad)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[vectors]\nmethods = ['magic']", "vectors.methods.*magic"),
        ("[steering]\nlayers = [[]]", "empty"),
        ("[steering]\nlayers = [[3, 3]]", "repeats"),
        ("[steering]\nstrengths = [1.0]", "steering.unit"),
        ("[steering]\nstrengths = { furlongs = [1.0] }", "furlongs"),
        ("[steering]\nstrengths = [1.0, inf]\nunit = 'raw'", "finite"),
        ("[steering]\nstrengths = { raw = [1.0] }\nunit = 'raw'", "plain list"),
        ("description = 3", "description"),
        ("[steering]\nstrengths = { raw = [0.0] }", "non-zero"),
        ("[data]\nfractions = [0.5, 0.5, 0.5]", "fractions"),
        ("[data]\ncwes = ['not-a-cwe']", "data.cwes"),
        ("[data]\nmax_code_tokens = 8", "at least 32"),
        ("[detection]\nmodes = ['vibes']", "vibes"),
        ("[run]\ncache = 'yes'", "true or false"),
    ],
)
def test_invalid_values_name_the_key(tmp_path: Path, text: str, match: str) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(text + "\n")
    with pytest.raises(ConfigError, match=match):
        load_config(bad)


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    config = parse_config(
        {
            "data": {"cwes": [89, "cwe-78"], "merge": {"77": "78"}},
            "steering": {"layers": [10, [-1, 5]], "strengths": [0.1, -0.2], "unit": "relative"},
        }
    )
    assert config.cwes == ("CWE-89", "CWE-78")
    assert config.layers == ((10,), (-1, 5))
    assert config.strengths == (("relative", 0.1), ("relative", -0.2))
    config = dataclasses.replace(config, description='a "quoted" sweep')
    text = dump_toml(config_document(config), "header", {"description": config.description})
    again = parse_config(tomllib.loads(text))
    assert again == config
    mixed = parse_config({"steering": {"strengths": {"raw": [2, 4], "relative": [0.1]}}})
    assert parse_config(tomllib.loads(dump_toml(config_document(mixed)))) == mixed


def test_data_path_is_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    cfg = tmp_path / "sub" / "c.toml"
    cfg.write_text("[data]\npath = '../d.jsonl'\n")
    assert load_config(cfg).data_path == str((tmp_path / "d.jsonl").resolve())


def _records(pattern: dict[str, int]) -> list[DetectionRecord]:
    """Records whose verdict per sample id is given (1 = vulnerable)."""
    out = []
    for sid, pred in pattern.items():
        cwe, pair, label = sid.split(":")
        y = 1 if label == "v" else 0
        out.append(DetectionRecord(sid, cwe, pair, y, "vulnerable" if pred else "secure"))
    return out


def test_point_metrics_of_records_is_the_evaluation_modules() -> None:
    from vulnsteer.experiment.sweep import point_metrics
    from vulnsteer.stats.metrics import point_metrics as of_predictions

    records = [
        DetectionRecord("a", "CWE-89", "p", 1, "vulnerable", score=0.9),
        DetectionRecord("b", "CWE-89", "p", 0, "vulnerable", score=0.4),
    ]
    names = ("balanced_accuracy", "pair_accuracy", "auroc")
    assert point_metrics(records, names) == of_predictions([r.to_prediction() for r in records], names)
    assert point_metrics(records, names) == {"balanced_accuracy": 0.5, "pair_accuracy": 0.0, "auroc": 1.0}


def test_select_settings_prefers_smaller_strength_and_refuses_test() -> None:
    base = Condition("baseline", "logit", "val")
    weak = Setting("mean_diff", "last", (1,), "relative", 0.5, "last")
    strong = dataclasses.replace(weak, strength=2.0)
    conds = [
        base,
        strong.condition("steered", "logit", "val", None, 0),
        weak.condition("steered", "logit", "val", None, 0),
    ]
    wrong = {"A:p:v": 0, "A:p:s": 0}
    right = {"A:p:v": 1, "A:p:s": 0}
    records = {conds[0].key: _records(wrong), conds[1].key: _records(right), conds[2].key: _records(right)}
    choice = select_settings(conds, records, ["A"], pooled=False)["A"]
    assert choice.chosen == "steered" and choice.best == weak
    records[conds[0].key] = _records(right)
    choice = select_settings(conds, records, ["A"], pooled=False)["A"]
    assert choice.chosen == "baseline" and choice.best == weak  # ties go to the baseline (strength 0)
    with pytest.raises(ValueError, match="validation"):
        select_settings([Condition("baseline", "logit", "test")], {}, ["A"])


def test_held_out_results_rows_matrix_and_pooled() -> None:
    """A steered choice, a baseline choice and the pooled vector, on fabricated test records."""
    from vulnsteer.experiment.sweep import Choice, held_out_conditions, held_out_results

    good = Setting("mean_diff", "last", (1,), "relative", 0.5, "last")
    choices = {
        "A": Choice("A", "steered", good, 1.0, 0.5),
        "B": Choice("B", "baseline", good, 0.5, 0.5),
        "any": Choice("any", "steered", dataclasses.replace(good, strength=1.0), 0.75, 0.5),
    }
    conds = held_out_conditions(choices, "logit", "test", 7)
    assert len(conds) == 1 + 2 * 3 and {c.vector_cwe for c in conds} == {None, "A", "B", "any"}
    samples = {f"{cwe}:{p}:{lab}": 0 for cwe in "AB" for p in ("p1", "p2") for lab in "vs"}
    all_vuln = {sid: 1 for sid in samples}
    perfect = {sid: int(sid.endswith(":v")) for sid in samples}
    records = {}
    for cond in conds:
        if cond.kind == "steered" and cond.vector_cwe in ("A", "any"):
            records[cond.key] = _records(perfect)
        else:
            records[cond.key] = _records(all_vuln)
    out = held_out_results(choices, records, "logit", "test", ["A", "B"], 7)
    a, b = out["rows"]["A"], out["rows"]["B"]
    assert a["delta"] == pytest.approx(0.5) and a["steered"]["balanced_accuracy"] == 1.0
    assert a["control"]["balanced_accuracy"] == 0.5 and a["control_delta"] == 0.0
    assert "beats the random-direction control" in a["words"]
    assert b["delta"] == 0.0 and b["best_steered_not_chosen"]["delta"] == 0.0
    assert out["cross_cwe"]["vectors"] == ["A", "B", "any"]
    assert out["cross_cwe"]["delta_balanced_accuracy"] == [[0.5, 0.5], [0.0, 0.0], [0.5, 0.5]]
    assert out["pooled"]["overall"]["delta"] == pytest.approx(0.5) and out["pooled"]["overall"]["n"] == 8


def _sweep(config_path: Path, out: Path, lm: LoadedModel, **overrides: Any) -> dict[str, Any]:
    run_sweep(load_config(config_path, overrides), out, lm=lm, progress=False)
    results: dict[str, Any] = json.loads((out / "results.json").read_text())
    return results


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory: pytest.TempPathFactory, tiny_lm: LoadedModel) -> tuple[Path, Path, dict[str, Any]]:
    """One finished sweep on the toy data (config, run directory, results), shared by the tests below."""
    root = tmp_path_factory.mktemp("toy")
    config = write_config(root / "sweep.toml", write_toy_jsonl(root / "toy.jsonl"), cache_dir=root / "cache")
    return config, root / "run", _sweep(config, root / "run", tiny_lm)


def test_sweep_end_to_end_and_resume(toy_run: tuple[Path, Path, dict[str, Any]], tiny_lm: LoadedModel) -> None:
    config, out, results = toy_run
    assert results["status"] == "complete"
    assert results["layer_sets"] == [[1], [2], [1, 2]]
    summary = results["summary"]["logit"]
    assert set(summary) == {"CWE-89", "CWE-78"}
    for row in summary.values():
        assert row["split"] == "test"
        assert row["n"] == row["baseline"]["n"]
    cross = results["cross_cwe"]["logit"]
    assert cross["targets"] == results["data"]["cwes"] and set(cross["targets"]) == {"CWE-89", "CWE-78"}
    assert cross["vectors"][-1] == "any"
    assert len(cross["delta_balanced_accuracy"]) == len(cross["vectors"])
    assert set(results["cosine"]["mean_diff@last"]["layers"]) == {"1", "2"}
    assert results["activation_cache"]["misses"] == 2  # two layers, one position
    n_val = 1 + 3 * 3 * 2  # baseline + (own steered, own control, pooled steered) x 3 layer sets x 2 strengths
    assert len(results["val"]["logit"]) == n_val
    # val runs in chunks of 4 conditions: every chunk after the first reuses the stored prompt prefixes
    assert results["prefix_cache"]["hits"] >= results["prefix_cache"]["misses"] > 0
    chosen = json.loads((out / "chosen" / "chosen.json").read_text())
    for target, entry in chosen["modes"]["logit"].items():
        assert (out / "chosen" / entry["vector"]).is_file(), target
    report = (out / "report.md").read_text()
    assert "VAL" in report and "TEST" in report and "random" in report
    for line in report.splitlines():
        if line.startswith("![") and "](" in line:
            assert (out / line.split("](")[1].rstrip(")")).is_file()
    assert len(list((out / "plots").glob("*.png"))) >= 5
    resolved = load_config(out / "config.resolved.toml")
    assert resolved == load_config(config)

    lines = (out / "records.jsonl").read_text().splitlines()
    again = _sweep(config, out, tiny_lm)  # same directory: everything is skipped
    assert (out / "records.jsonl").read_text().splitlines() == lines
    assert again["summary"] == results["summary"]
    assert again["activation_cache"]["hits"] == 2 and again["activation_cache"]["misses"] == 0


def test_resuming_a_different_sweep_is_refused(
    tmp_path: Path, toy_run: tuple[Path, Path, dict[str, Any]], tiny_lm: LoadedModel
) -> None:
    config, out, _ = toy_run
    with pytest.raises(ConfigError, match=r"steering\.layers"):
        run_sweep(dataclasses.replace(load_config(config), layers=((1,),)), out, lm=tiny_lm, progress=False)
    # where, not what: another cache directory may resume the same run directory
    lines = (out / "records.jsonl").read_text()
    run_sweep(load_config(config, {"cache_dir": str(tmp_path / "other")}), out, lm=tiny_lm, progress=False)
    assert (out / "records.jsonl").read_text() == lines


def test_resuming_with_changed_data_is_refused(tmp_path: Path, tiny_lm: LoadedModel) -> None:
    data = write_toy_jsonl(tmp_path / "toy.jsonl", n_pairs=4)
    config = write_config(tmp_path / "s.toml", data, cache_dir=tmp_path / "cache", strengths="{ raw = [1.0] }")
    _sweep(config, tmp_path / "run", tiny_lm)
    data.write_text(data.read_text().replace("SELECT *", "SELECT id"))  # same path, other contents
    with pytest.raises(ConfigError, match="changed: data_"):
        _sweep(config, tmp_path / "run", tiny_lm)


def test_test_labels_cannot_change_the_choice(
    tmp_path: Path, toy_run: tuple[Path, Path, dict[str, Any]], tiny_lm: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Flip every test label (and so every test metric): the per-CWE choice and the saved vectors are unchanged."""
    config, plain_out, plain = toy_run
    real_prepare = sweep_mod.prepare_data

    def flipped(*args: Any, **kwargs: Any) -> Any:
        data = real_prepare(*args, **kwargs)
        test = [dataclasses.replace(s, label="secure" if s.is_vulnerable else "vulnerable") for s in data.splits.test]
        return dataclasses.replace(data, splits=dataclasses.replace(data.splits, test=test))

    monkeypatch.setattr(sweep_mod, "prepare_data", flipped)
    other = _sweep(config, tmp_path / "flipped", tiny_lm)
    assert other["selection"] == plain["selection"]
    assert other["val"] == plain["val"]
    a = json.loads((plain_out / "chosen" / "chosen.json").read_text())["modes"]
    b = json.loads((tmp_path / "flipped" / "chosen" / "chosen.json").read_text())["modes"]
    assert a == b
    # ... while the flip did reach the test evaluation (the same answers, read against flipped labels)
    assert [r["baseline"]["tpr"] for r in other["summary"]["logit"].values()] == [
        r["baseline"]["fpr"] for r in plain["summary"]["logit"].values()
    ]


# ------------------------------------------------------------------------------------------ subprocess runs


@pytest.fixture
def tiny_model_dir(tmp_path: Path, tiny_tokenizer: Any) -> Path:
    from conftest import make_tiny

    lm = make_tiny(tiny_tokenizer, "llama", layers=3)
    folder = tmp_path / "tiny-model"
    lm.model.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


def _cli(args: list[str], tmp_path: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "VULNSTEER_CACHE": str(tmp_path / "vcache"),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    }
    # SIGINT back to its default: a test runner started in the background by a non-interactive shell ignores
    # SIGINT, its children inherit that, and Python then never raises KeyboardInterrupt
    return subprocess.Popen(
        [sys.executable, "-m", "vulnsteer.cli", "--no-progress", "sweep", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _wait_for_lines(proc: subprocess.Popen[bytes], path: Path, n: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and path.read_bytes().count(b"\n") >= n:
            return
        if proc.poll() is not None:
            out = proc.stdout.read().decode() if proc.stdout else ""
            pytest.fail(f"sweep ended (rc {proc.returncode}) before {n} chunk(s) were on disk:\n{out}")
        time.sleep(0.005)
    proc.kill()
    pytest.fail("timed out waiting for the first chunk")


def _slow_config(tmp_path: Path) -> Path:
    """Many one-condition chunks in generation mode, so that a kill lands mid-sweep."""
    data = write_toy_jsonl(tmp_path / "toy.jsonl", n_pairs=8)
    return write_config(
        tmp_path / "slow.toml",
        data,
        cache_dir=tmp_path / "acache",
        modes='["generation"]',
        group_size=1,
        strengths="{ relative = [0.25, 0.5, 1.0, 2.0, 4.0] }",
        extra="controls_on_val = true",
    )


def _entries(path: Path) -> dict[str, Any]:
    return {json.loads(line)["condition"]["key"]: json.loads(line)["records"] for line in path.read_text().splitlines()}


def _comparable(results: dict[str, Any]) -> dict[str, Any]:
    return {k: results[k] for k in ("val", "selection", "summary", "pooled", "cross_cwe", "cosine", "vectors")}


@pytest.mark.slow
def test_sigkill_mid_sweep_loses_at_most_the_chunk_in_flight(tmp_path: Path, tiny_model_dir: Path) -> None:
    config = _slow_config(tmp_path)
    out = tmp_path / "killed"
    records = out / "records.jsonl"
    proc = _cli([str(config), "--model", str(tiny_model_dir), "--out", str(out)], tmp_path)
    _wait_for_lines(proc, records, 1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    before = records.read_bytes()
    done_before = before[: before.rfind(b"\n") + 1].decode().splitlines()
    assert done_before, "nothing finished before the kill"
    assert not (out / "results.json").exists(), "the sweep finished before it was killed"

    resumed = _cli([str(config), "--model", str(tiny_model_dir), "--out", str(out)], tmp_path)
    assert resumed.wait(timeout=600) == 0, resumed.stdout.read().decode() if resumed.stdout else ""
    after = records.read_text().splitlines()
    assert after[: len(done_before)] == done_before, "finished chunks were rewritten"
    keys = [json.loads(line)["condition"]["key"] for line in after]
    assert len(keys) == len(set(keys)), "finished conditions were redone"

    fresh_out = tmp_path / "uninterrupted"
    fresh = _cli(
        [
            str(config),
            "--model",
            str(tiny_model_dir),
            "--out",
            str(fresh_out),
            "--cache-dir",
            str(tmp_path / "fresh-cache"),
        ],
        tmp_path,
    )
    assert fresh.wait(timeout=600) == 0, fresh.stdout.read().decode() if fresh.stdout else ""
    assert _entries(records) == _entries(fresh_out / "records.jsonl")
    killed_results = json.loads((out / "results.json").read_text())
    fresh_results = json.loads((fresh_out / "results.json").read_text())
    assert _comparable(killed_results) == _comparable(fresh_results)


@pytest.mark.slow
def test_sigint_stops_cleanly_with_a_partial_report(tmp_path: Path, tiny_model_dir: Path) -> None:
    config = _slow_config(tmp_path)
    out = tmp_path / "interrupted"
    proc = _cli([str(config), "--model", str(tiny_model_dir), "--out", str(out)], tmp_path)
    _wait_for_lines(proc, out / "records.jsonl", 1)
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 130, output
    assert "interrupted" in output
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "interrupted"
    finished = (out / "records.jsonl").read_text().splitlines()
    assert len(results["finished_conditions"]) == len(finished)
    assert "INTERRUPTED" in (out / "report.md").read_text()


def test_sweep_cli_reports_config_errors(tmp_path: Path) -> None:
    from vulnsteer.cli import main

    bad = tmp_path / "bad.toml"
    bad.write_text("[steering]\nlayerz = [1]\n")
    assert main(["sweep", str(bad)]) == 2
    assert main(["sweep", str(tmp_path / "missing.toml")]) == 2


def test_default_strengths_follow_a_configured_unit() -> None:
    config = parse_config({"steering": {"unit": "raw"}})
    assert {u for u, _ in config.strengths} == {"raw"}
    assert SweepConfig().strengths == parse_config({}).strengths
