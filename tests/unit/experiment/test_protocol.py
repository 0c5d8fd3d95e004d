"""The protocol end to end on a tiny model: outputs, resume, run == sweep on its resolved config, val-only choice,
run-folder identity and locking, nothing written before the inputs are validated, SIGKILL / SIGINT."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import write_toy_jsonl
from runs import chunk_entries, held_out, run, run_numbers, sweep_process, wait_for_lines, write_config
from vulnsteer.config.experiment import ConfigError, ExperimentConfig, load_config, parse_config
from vulnsteer.config.sections import ConditionalSection
from vulnsteer.experiment import protocol as protocol_mod
from vulnsteer.experiment.chosen import load_chosen
from vulnsteer.experiment.grid import Condition
from vulnsteer.experiment.protocol import run_protocol
from vulnsteer.experiment.results import SCHEMA_VERSION, Results
from vulnsteer.experiment.rundir import RunDir, RunDirBusyError, _locked
from vulnsteer.experiment.tables import Flips
from vulnsteer.experiment.upgrade import load_results
from vulnsteer.io import OutputError
from vulnsteer.lm.model import LoadedModel


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory: pytest.TempPathFactory, tiny_lm: LoadedModel) -> tuple[Path, Path, Results]:
    """One finished sweep on the toy data (config, run directory, results), shared by the tests below."""
    root = tmp_path_factory.mktemp("toy")
    config = write_config(root / "sweep.toml", write_toy_jsonl(root / "toy.jsonl"), cache_dir=root / "cache")
    return config, root / "run", run(load_config(config), root / "run", tiny_lm)


def test_outputs_and_resume(toy_run: tuple[Path, Path, Results], tiny_lm: LoadedModel) -> None:
    config, out, results = toy_run
    assert results.schema_version == SCHEMA_VERSION and results.status == "complete" and results.command == "sweep"
    assert json.loads((out / "results.json").read_text())["schema_version"] == SCHEMA_VERSION == 3
    assert results.layer_sets == ((1,), (2,), (1, 2))
    summary = held_out(results).rows
    assert set(summary) == {"CWE-89", "CWE-78"}
    for row in summary.values():
        assert row.split == "test" and row.n == row.baseline.n
        assert isinstance(row.flips, Flips)
    cross = held_out(results).cross_cwe
    assert cross is not None
    assert set(cross.targets) == {"CWE-89", "CWE-78"} and cross.vectors[-1] == "any"
    assert len(cross.delta_balanced_accuracy) == len(cross.vectors)
    assert set(results.families["constant"].cosine["mean_diff@last"].layers) == {1, 2}
    # two layers x four poolings: last, code_mean (the probes) and the two answer poolings (the answer vector)
    assert results.activation_cache is not None and results.activation_cache.misses == 8
    entries = [e.condition for e in results.val["logit"]]
    constant = [c for c in entries if c.template == "default" and (c.setting is None or not c.setting.gated)]
    assert len(constant) == 1 + 3 * 3 * 2  # baseline + (own steered, own control, pooled) x 3 layer sets x 2 strengths
    gated = [
        c for c in entries if c.setting is not None and c.setting.gate in ConditionalSection().gates
    ]  # the default gate
    # answer vector x (L1 probe under sets [1] and [1,2]; L1 and L2 probes under [2]) x 3 strengths x 3 roles
    assert len(gated) == 4 * 3 * 3 and {c.role for c in gated} == {"steered", "control", "gate_control"}
    assert {c.template for c in entries if c.template != "default"} == {"strict", "one_shot"}
    assert results.prefix_cache["hits"] >= results.prefix_cache["misses"] > 0
    assert {p.detector for p in results.probes} == {"direction", "logistic", "length"}
    chosen = load_chosen(out)
    for target, entry in chosen.families["constant"]["logit"].items():
        assert (out / "chosen" / entry["vector"]).is_file(), target
    report = (out / "report.md").read_text()
    assert "VAL" in report and "TEST" in report and "random" in report and "Probe detectors" in report
    for line in report.splitlines():
        if line.startswith("![") and "](" in line:
            assert (out / line.split("](")[1].rstrip(")")).is_file()
    assert len(list((out / "plots").glob("*.png"))) >= 5
    assert load_config(out / "config.resolved.toml") == load_config(config)

    lines = (out / "records.jsonl").read_text().splitlines()
    again = run(load_config(config), out, tiny_lm)  # same directory: everything is skipped
    assert (out / "records.jsonl").read_text().splitlines() == lines
    for name, family in results.families.items():
        assert again.families[name].held_out == family.held_out and again.families[name].choices == family.choices
    assert again.activation_cache is not None
    assert again.activation_cache.hits == 8 and again.activation_cache.misses == 0
    # the resume's seconds add to the first attempt's, phase by phase (a resume that skips everything keeps them)
    for phase, seconds in results.timings_s.items():
        assert again.timings_s[phase] >= seconds, phase
    assert again.timings_s["total"] > results.timings_s["total"]
    assert json.loads((out / "timings.json").read_text()) == dict(again.timings_s)


def test_timings_of_another_attempt_are_dropped_with_its_other_files(tmp_path: Path, caplog: Any) -> None:
    run = RunDir(tmp_path / "run")
    with run.open({"data": "a"}, "toy run"):
        run.add_timings({"fit": 5.0})
    with run.open({"data": "b"}, "toy run"):  # finished nothing, other inputs: taken over, stale timings gone
        assert run.add_timings({"fit": 1.0}) == {"fit": 1.0}
    (run.path / "timings.json").write_text("[1, 2]")
    with caplog.at_level("WARNING"):
        assert run.add_timings({"fit": 2.0}) == {"fit": 2.0}
    assert "timings.json: unreadable" in caplog.text


def test_run_equals_sweep_on_its_resolved_config(tmp_path: Path, tiny_lm: LoadedModel) -> None:
    """`vulnsteer run` (flags) and `vulnsteer sweep RUN/config.resolved.toml`: the same choices and test numbers."""
    from vulnsteer.cli import build_parser
    from vulnsteer.cli.options import config_from_args

    data = write_toy_jsonl(tmp_path / "toy.jsonl", n_pairs=5)
    args = build_parser().parse_args(
        [
            "run",
            "--data",
            str(data),
            "--format",
            "jsonl",
            "--max-code-tokens",
            "64",
            "--layers",
            "1",
            "--layers",
            "2",
            "--max-new-tokens",
            "3",
            "--cache-dir",
            str(tmp_path / "cache"),
        ]
    )
    first = run(config_from_args(args), tmp_path / "run", tiny_lm, command="run")
    assert set(first.families["constant"].held_out) == {"logit", "generation"}
    choices = first.families["constant"].choices
    assert choices["generation"] == choices["logit"]  # chosen on logit val by default
    resolved = load_config(tmp_path / "run" / "config.resolved.toml")
    second = run(resolved, tmp_path / "sweep", tiny_lm, command="sweep")
    assert run_numbers(second) == run_numbers(first)
    assert chunk_entries(tmp_path / "sweep" / "records.jsonl") == chunk_entries(tmp_path / "run" / "records.jsonl")
    gen = {
        e["condition"]["key"]
        for e in map(json.loads, (tmp_path / "run" / "records.jsonl").read_text().splitlines())
        if e["condition"]["mode"] == "generation"
    }
    assert all("|test" in key for key in gen), "generation ran on val although logit val chooses its setting"


def test_a_different_experiment_in_the_same_folder_is_refused(
    tmp_path: Path, toy_run: tuple[Path, Path, Results], tiny_lm: LoadedModel
) -> None:
    config, out, _ = toy_run
    with pytest.raises(ConfigError, match=r"changed: steering\.layers"):
        run_protocol(load_config(config).replace(steering__layers=[[1]]), out, lm=tiny_lm, progress=False)
    other = write_toy_jsonl(tmp_path / "other.jsonl", n_pairs=4, prefix="other")
    with pytest.raises(ConfigError, match=r"changed: .*data\.path"):
        run_protocol(load_config(config).replace(data__path=str(other)), out, lm=tiny_lm, progress=False)
    # where, not what: another cache directory may resume the same run directory
    lines = (out / "records.jsonl").read_text()
    run_protocol(load_config(config).replace(run__cache_dir=str(tmp_path / "c2")), out, lm=tiny_lm, progress=False)
    assert (out / "records.jsonl").read_text() == lines


def test_changed_data_behind_the_same_path_is_refused(tmp_path: Path, tiny_lm: LoadedModel) -> None:
    data = write_toy_jsonl(tmp_path / "toy.jsonl", n_pairs=4)
    config = load_config(
        write_config(
            tmp_path / "s.toml", data, cache_dir=tmp_path / "cache", strengths="{ raw = [1.0] }", pooled="false"
        )
    )
    run(config, tmp_path / "run", tiny_lm)
    data.write_text(data.read_text().replace("SELECT *", "SELECT id"))  # same path, other contents
    with pytest.raises(ConfigError, match="changed: data_"):
        run_protocol(config, tmp_path / "run", lm=tiny_lm, progress=False)


def test_nothing_is_written_before_the_inputs_are_validated(tmp_path: Path, tiny_lm: LoadedModel) -> None:
    out = tmp_path / "run"
    config = ExperimentConfig().replace(data__path=str(tmp_path / "missing.jsonl"))
    with pytest.raises(Exception, match=r"missing\.jsonl"):
        run_protocol(config, out, lm=tiny_lm, progress=False)
    assert not out.exists()
    with pytest.raises(ValueError, match=r"steering\.layers \(--layers\): layer 40 out of range"):
        run_protocol(
            ExperimentConfig().replace(steering__layers=[[40]], data__cwes=["CWE-89"]), out, lm=tiny_lm, progress=False
        )
    assert not out.exists()
    with pytest.raises(ValueError, match="the test split is empty"):
        run_protocol(
            ExperimentConfig().replace(data__fractions=[0.8, 0.2, 0.0], data__cwes=["CWE-89"]),
            out,
            lm=tiny_lm,
            progress=False,
        )
    assert not out.exists()
    with pytest.raises(OutputError, match="--out /proc/vulnsteer-run: cannot create files in /proc"):
        run_protocol(ExperimentConfig(), "/proc/vulnsteer-run", lm=tiny_lm, progress=False)


def test_a_folder_that_finished_nothing_is_taken_over_by_the_corrected_rerun(
    tmp_path: Path, tiny_lm: LoadedModel
) -> None:
    """A strength can only be checked against the hidden-state scale once the vectors are fitted, i.e. after the
    folder is opened: that failed attempt finished nothing, so the corrected rerun into the same folder runs (it
    was refused as 'other inputs' before), and no file of the earlier attempt stays."""
    out = tmp_path / "run"
    base = ExperimentConfig().replace(
        data__path=str(write_toy_jsonl(tmp_path / "toy.jsonl")),
        data__format="jsonl",
        data__max_code_tokens=64,
        steering__layers=[[1]],
        conditional__enabled=False,
        baselines__templates=[],
        baselines__calibrated=False,
        report__probes=False,
        run__cache=False,
    )
    absurd = base.replace(steering__strengths={"raw": [1e30]})
    with pytest.raises(ValueError, match=r"far beyond the hidden-state scale|not finite"):
        run_protocol(absurd.replace(data__cwes=["CWE-89", "CWE-78"]), out, lm=tiny_lm, progress=False)
    assert (out / "identity.json").is_file() and not (out / "records.jsonl").is_file()
    stale = {p.name for p in (out / "vectors").glob("*")}
    results = run(base.replace(steering__strengths={"raw": [0.5]}, data__cwes=["CWE-89"]), out, tiny_lm)
    assert results.status == "complete" and set(held_out(results).rows) == {"CWE-89"}
    assert not any("78" in name for name in {p.name for p in (out / "vectors").glob("*")}), stale
    # a folder that holds records is still protected, and the message says what changed
    with pytest.raises(ConfigError, match=r"holds an experiment computed from other inputs \(changed: [^)]*steering"):
        run_protocol(base.replace(data__cwes=["CWE-89"]), out, lm=tiny_lm, progress=False)
    # a run of an older version lacks the keys added since: at their defaults they change nothing and it resumes;
    # given another value, the key is named as a change
    done = base.replace(steering__strengths={"raw": [0.5]}, data__cwes=["CWE-89"])
    identity = json.loads((out / "identity.json").read_text())
    del identity["detection.aggregations"]
    (out / "identity.json").write_text(json.dumps(identity))
    assert run(done, out, tiny_lm).status == "complete"
    with pytest.raises(ConfigError, match=r"\(changed: detection\.aggregations\)"):
        run_protocol(done.replace(detection__aggregations=["max"]), out, lm=tiny_lm, progress=False)


def test_a_busy_run_folder_names_its_holder(
    tmp_path: Path, toy_run: tuple[Path, Path, Results], tiny_lm: LoadedModel
) -> None:
    config, out, _ = toy_run
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); "
            "fcntl.flock(f, fcntl.LOCK_EX); f.truncate(0); f.write('process 4242\\n'); f.flush(); "
            "print('locked', flush=True); time.sleep(30)",
            str(out / ".lock"),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"locked"
        with pytest.raises(RunDirBusyError, match="in use by process 4242"):
            run_protocol(load_config(config), out, lm=tiny_lm, progress=False)
        # refused before any data or model loads (the check writes nothing to the held lock)
        with pytest.raises(RunDirBusyError, match="in use by process 4242"):
            RunDir(out).check_writable()
        assert (out / ".lock").read_text() == "process 4242\n"
    finally:
        holder.kill()
        holder.wait()
    with _locked(out / ".lock"):  # released: the lock is free again
        pass


def test_test_labels_cannot_change_the_choice(
    tmp_path: Path, toy_run: tuple[Path, Path, Results], tiny_lm: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Flip every test label: the selection is unchanged; only the test rows move."""
    config, _, plain = toy_run
    real = protocol_mod.prepare_data

    def flipped(*args: Any, **kwargs: Any) -> Any:
        data = real(*args, **kwargs)
        test = [
            dataclasses.replace(s, label="secure" if s.label == "vulnerable" else "vulnerable")
            for s in data.splits.test
        ]
        data.splits = dataclasses.replace(data.splits, test=test)
        return data

    monkeypatch.setattr(protocol_mod, "prepare_data", flipped)
    results = run(load_config(config), tmp_path / "flipped", tiny_lm)
    for name, family in plain.families.items():
        assert results.families[name].choices == family.choices, name
        assert results.families[name].templates == family.templates, name
        assert results.families[name].thresholds == family.thresholds, name
    assert [r.baseline.tpr for r in held_out(results).rows.values()] == [
        r.baseline.fpr for r in held_out(plain).rows.values()
    ]


def test_examples_and_generation_rows(tmp_path: Path, tiny_lm: LoadedModel) -> None:
    data = write_toy_jsonl(tmp_path / "toy.jsonl", n_pairs=5)
    config = parse_config(
        {
            "data": {"path": str(data), "format": "jsonl", "max_code_tokens": 64},
            "steering": {"layers": [1]},
            "detection": {"modes": ["generation"], "max_new_tokens": 3},
            "report": {"n_examples": 1, "probes": False},
            "run": {"cache_dir": str(tmp_path / "c")},
        }
    )
    results = run(config, tmp_path / "run", tiny_lm)
    for name in ("constant", "conditional"):
        family = results.families[name]
        assert family.choices["generation"]["CWE-89"].selected_by == "generation mode, val split"
        examples = family.examples["generation"]
        assert {e.cwe for e in examples} == {"CWE-89", "CWE-78"} and all(e.steered for e in examples)
        test_ids = {r.sample_id for r in results.records[Condition("baseline", "generation", "test").key]}
        assert all(e.split == "test" and e.sample_id in test_ids for e in examples)  # never val's samples
    assert "Example generations (generation mode, TEST split" in (tmp_path / "run" / "report.md").read_text()
    cross = held_out(results, "generation").cross_cwe
    assert not results.probes and cross is not None and not cross.targets


# ------------------------------------------------------------------------------------------ subprocess runs


@pytest.fixture
def tiny_model_dir(tmp_path: Path, tiny_tokenizer: Any) -> Path:
    from conftest import make_tiny

    lm = make_tiny(tiny_tokenizer, "llama", layers=3)
    folder = tmp_path / "tiny-model"
    lm.model.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


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
    )


@pytest.mark.slow
def test_sigkill_mid_run_loses_at_most_the_chunk_in_flight(tmp_path: Path, tiny_model_dir: Path) -> None:
    config = _slow_config(tmp_path)
    out = tmp_path / "killed"
    records = out / "records.jsonl"
    proc = sweep_process([str(config), "--model", str(tiny_model_dir), "--out", str(out)], tmp_path)
    wait_for_lines(proc, records, 1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    before = records.read_bytes()
    done_before = before[: before.rfind(b"\n") + 1].decode().splitlines()
    assert done_before, "nothing finished before the kill"
    assert not (out / "results.json").exists(), "the run finished before it was killed"

    resumed = sweep_process([str(config), "--model", str(tiny_model_dir), "--out", str(out)], tmp_path)
    assert resumed.wait(timeout=600) == 0, resumed.stdout.read().decode() if resumed.stdout else ""
    after = records.read_text().splitlines()
    assert after[: len(done_before)] == done_before, "finished chunks were rewritten"
    keys = [json.loads(line)["condition"]["key"] for line in after]
    assert len(keys) == len(set(keys)), "finished conditions were redone"

    fresh_out = tmp_path / "uninterrupted"
    fresh = sweep_process(
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
    assert chunk_entries(records) == chunk_entries(fresh_out / "records.jsonl")
    killed = load_results(out / "results.json")
    uninterrupted = load_results(fresh_out / "results.json")
    assert run_numbers(killed) == run_numbers(uninterrupted)


@pytest.mark.slow
def test_sigint_stops_cleanly_with_a_partial_report(tmp_path: Path, tiny_model_dir: Path) -> None:
    config = _slow_config(tmp_path)
    out = tmp_path / "interrupted"
    proc = sweep_process([str(config), "--model", str(tiny_model_dir), "--out", str(out)], tmp_path)
    wait_for_lines(proc, out / "records.jsonl", 1)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    results = load_results(out / "results.json")
    assert results.status == "interrupted" and results.finished_conditions
    assert "INTERRUPTED" in (out / "report.md").read_text()


def test_several_datasets_train_together_and_keep_their_groups(tmp_path: Path) -> None:
    from vulnsteer.experiment.prepare import prepare_data

    a = write_toy_jsonl(tmp_path / "a.jsonl", n_pairs=5, prefix="a")
    b = write_toy_jsonl(tmp_path / "b.jsonl", n_pairs=5, prefix="b")
    file = tmp_path / "multi.toml"
    file.write_text(
        '[data]\npaths = ["a.jsonl", "b.jsonl", "builtin"]\nformats = ["jsonl", "jsonl", "builtin"]\n'
        'cwes = ["CWE-89", "CWE-78"]\n'
    )
    config = load_config(file)
    assert config.data.paths[:2] == (str(a), str(b))  # relative to the config file
    data = prepare_data(config.data, progress=False, require=("train", "val", "test"))
    every = [s for _, part in data.splits.items() for s in part]
    assert {s.meta["dataset"] for s in every} == {str(a), str(b), "builtin"}
    assert all(s.group.split(":", 1)[0] in ("0", "1", "2") for s in every)
    where: dict[str, set[str]] = {}
    for name, part in data.splits.items():
        for s in part:
            where.setdefault(s.pair_id or s.id, set()).add(name)
    assert all(len(v) == 1 for v in where.values()), "a pair straddles splits"
    with pytest.raises(ConfigError, match="exclude each other"):
        parse_config({"data": {"path": str(a), "paths": [str(b)]}})
    with pytest.raises(ConfigError, match="names 1 formats for 2"):
        parse_config({"data": {"paths": [str(a), str(b)], "formats": ["jsonl"]}})
