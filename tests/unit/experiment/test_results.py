"""Typed results: JSON round trips; files of schema 2 (written before detector families) still load, render and keep
every number; anything unreadable is refused naming the file and its schema; record keys never change, so an old
run resumes; and this version reproduces every number of the schema-2 run of the same experiment."""

from __future__ import annotations

import json
import math
import re
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import FIXTURES, write_toy_jsonl
from vulnsteer.config.experiment import load_config
from vulnsteer.experiment.chosen import load_chosen
from vulnsteer.experiment.compare import compare
from vulnsteer.experiment.engine import ResultStore
from vulnsteer.experiment.evaluate import evaluate_from_run, transfer_config
from vulnsteer.experiment.grid import Condition
from vulnsteer.experiment.protocol import run_protocol
from vulnsteer.experiment.results import Results
from vulnsteer.experiment.upgrade import ResultsError, load_results, upgrade_v2
from vulnsteer.lm.model import LoadedModel
from vulnsteer.report import write_report

V2 = FIXTURES / "results_v2"


def _sweep_config(path: Path, data: Path, cache: Path) -> Path:
    """The configuration of the schema-2 fixture run (tests/fixtures/results_v2/README.md)."""
    path.write_text(
        f"""
[data]
path = "{data}"
format = "jsonl"
max_code_tokens = 64
[vectors]
methods = ["mean_diff"]
pooling = ["last"]
pooled = true
[steering]
layers = [[1], [2]]
strengths = {{ relative = [0.5, 2.0] }}
[conditional]
strengths = {{ sigma = [2.0, 4.0] }}
gates = ["sign"]   # the default when the fixture was made (linear since)
[baselines]
templates = ["strict"]
[detection]
modes = ["logit", "generation"]
max_new_tokens = 3
[report]
n_examples = 1
[run]
group_size = 4
cache_dir = "{cache}"
""",
        encoding="utf-8",
    )
    return path


def _leaves(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, f"{path}/{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _leaves(v, f"{path}/{i}")
    else:
        yield path, value


def run_numbers(doc: Any, skip: str = "$^") -> Counter[Any]:
    """Every number of a JSON document (nan as a word), as a multiset; paths matching *skip* left out."""
    found: Counter[Any] = Counter()
    for path, value in _leaves(doc):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not re.search(skip, path):
            found["nan" if isinstance(value, float) and math.isnan(value) else value] += 1
    return found


#: Metrics added after schema 2 (issue 17): absent (None) in its files.
NEW_METRICS = ("auroc_ci", "pair_rank_accuracy", "tpr_at_5_fpr")
NEW_METRIC_PATH = re.compile(r"/(auroc_ci|pair_rank_accuracy|tpr_at_5_fpr)(/|$)")
#: Relative tolerance for the floats of a rerun: float32 kernels round differently from one CPU to the next.
FLOAT32_REL = 1e-5
#: Columns the lead tables gained after schema 2 (AUROC, pair-rank accuracy, TPR at 5% FPR: issue 17), by position.
NEW_LEAD_COLUMNS = (3, 5, 6)


ANSWER_LINES = ("- **Answer", "- **Probe, unadapted", "- **Transfer", "- **Caution")


def _first_screen(report: str) -> list[str]:
    """The report's header and lead tables: every line up to the note under them (the lead tables without the
    columns added since schema 2, so an old file's cells are compared cell for cell)."""
    lines = report.splitlines()
    if lines[0].startswith("# vulnsteer report (") and "): " in lines[0]:  # the answer, since the title has one
        lines[0] = lines[0].split("): ")[0] + ")"
    answers = [i for i, line in enumerate(lines) if line.startswith(ANSWER_LINES)]
    if answers:  # the answer lines under the title (and the blank line after them) are new
        lines = lines[: answers[0]] + lines[answers[-1] + 2 :]
    end = next(i for i, line in enumerate(lines) if line.startswith(("`lever rate`", "`AUROC`")))
    out = []
    for line in lines[:end]:
        if line == "|---" * 11 + "|":  # a lead table's rule in this version
            line = "|---" * 8 + "|"
        cells = line.split(" | ")
        if line.startswith("| ") and len(cells) == 11:  # a lead table's row in this version
            line = " | ".join(c for k, c in enumerate(cells) if k not in NEW_LEAD_COLUMNS)
        out.append(line)
    return out


def test_a_schema_2_run_renders_with_its_first_screen_unchanged(tmp_path: Path) -> None:
    results = load_results(V2 / "run" / "results.json")
    assert results.command == "sweep" and set(results.families) == {
        "calibrated",
        "prompt",
        "constant",
        "conditional",
        "probe",
    }
    new = write_report(results, tmp_path).read_text()
    old = (V2 / "run" / "report.md").read_text()
    assert _first_screen(new) == _first_screen(old)  # header, every detector, the words: line for line
    rows = [line for line in old.splitlines() if line.startswith("| CWE-") and "pairs)" in line]
    assert rows and all(line in new for line in rows)  # constant steering's per-CWE rows, cell for cell
    assert (tmp_path / "plots" / "margins_logit.png").is_file()
    evaluated = write_report(load_results(V2 / "eval" / "results.json"), tmp_path / "eval").read_text()
    old_eval = (V2 / "eval" / "report.md").read_text()
    assert evaluated.splitlines()[:8] == old_eval.splitlines()[:8]  # where the settings come from, the data
    rows = [line for line in old_eval.splitlines() if line.startswith("| CWE-") and "pairs)" in line]
    assert rows and all(line in evaluated for line in rows)


def test_every_number_of_a_schema_2_file_survives_the_upgrade() -> None:
    for name in ("run", "eval"):
        doc = json.loads((V2 / name / "results.json").read_text())
        upgraded = upgrade_v2(doc).to_json()
        # a validation entry's setting was written twice (beside its condition, and in it); the schema is now 3
        missing = run_numbers(doc, skip=r"^/val/\w+/\d+/setting/|^/schema_version$") - run_numbers(upgraded)
        assert not missing, (name, missing)


def test_typed_results_round_trip_through_json() -> None:
    for name in ("run", "eval"):
        doc = load_results(V2 / name / "results.json").to_json()
        assert json.dumps(Results.from_json(doc).to_json()) == json.dumps(doc)
        assert doc["schema_version"] == 3 and set(doc["families"]) >= {"constant", "conditional"}


def test_unreadable_results_are_refused_naming_the_file_and_the_schema(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"schema_version": 1, "command": "run"}))
    with pytest.raises(
        ResultsError, match=rf"{re.escape(str(path))}: results\.json of schema 1; .*reads schemas 2 and 3"
    ):
        load_results(path)
    path.write_text("{nope")
    with pytest.raises(ResultsError, match=rf"{re.escape(str(path))}: not valid JSON"):
        load_results(path)
    path.write_text(json.dumps({"schema_version": 3, "lead": {"logit": {"rows": []}}}))
    with pytest.raises(ResultsError, match=rf"{re.escape(str(path))}: a damaged results\.json of schema 3"):
        load_results(path)
    with pytest.raises(ResultsError, match="cannot read it"):
        load_results(tmp_path / "missing.json")


def test_record_keys_of_schema_2_are_this_versions_keys(tmp_path: Path) -> None:
    """Every condition of the old run names its records exactly as this version does, and an old records.jsonl line
    (its condition says ``kind``, not ``role``) is found by its key: a run of the old version resumes."""
    doc = json.loads((V2 / "run" / "results.json").read_text())
    old = [e["condition"] for entries in doc["val"].values() for e in entries]
    assert any("kind" in c and "role" not in c for c in old)
    for cond in old:  # (the held-out conditions' keys: test_this_version_reproduces_every_number_...)
        assert Condition.from_dict(cond).key == cond["key"]
    line = {"condition": old[1], "seconds": 0.1, "records": doc["records"]["baseline|logit|test"]}
    (tmp_path / "records.jsonl").write_text(json.dumps(line) + "\n")
    store = ResultStore(tmp_path / "records.jsonl")
    cond = Condition.from_dict(old[1])
    assert cond.key in store and store.get(cond.key)


def test_a_schema_2_run_folder_is_applied_by_evaluate_from(tmp_path: Path, tiny_lm: LoadedModel) -> None:
    run = tmp_path / "old-run"
    shutil.copytree(V2 / "run", run)
    chosen = load_chosen(run)
    assert set(chosen.families) == {"constant", "conditional"} and chosen.modes == ["logit", "generation"]
    other = write_toy_jsonl(tmp_path / "other.jsonl", cwes=("CWE-89", "CWE-78"), n_pairs=2, prefix="other")
    config = transfer_config(run, {"data.path": (str(other), "--data"), "data.format": ("jsonl", "--format")})
    got = load_results(evaluate_from_run(run, config, tmp_path / "t", lm=tiny_lm, progress=False) / "results.json")
    old = load_results(run / "results.json")
    for name in ("constant", "conditional"):
        assert got.families[name].choices == old.families[name].choices, name
        assert set(got.families[name].held_out["logit"].rows) == {"CWE-89", "CWE-78"}


def _record_thresholds(differ: dict[str, Any]) -> dict[str, Any]:
    """The records' ``threshold`` keys: each record now carries the threshold its verdict read its score against
    (absent before; a file's verdict follows its score with it). Here every one is the answer's 0.5, and no verdict
    moved."""
    found = {k: v for k, v in differ.items() if k.startswith("records/") and k.endswith("/threshold")}
    assert found and all(old is None and new == 0.5 for old, new in found.values())
    return found


@pytest.mark.slow
def test_this_version_reproduces_every_number_of_the_schema_2_run(tmp_path: Path, tiny_lm: LoadedModel) -> None:
    """The fixture's experiment, rerun: the same val entries, choices, rows, lead table, probes and records."""
    data = write_toy_jsonl(tmp_path / "toy.jsonl", cwes=("CWE-89", "CWE-78"), n_pairs=6)
    config = load_config(_sweep_config(tmp_path / "sweep.toml", data, tmp_path / "cache"))
    run_protocol(config, tmp_path / "run", lm=tiny_lm, progress=False, command="sweep")
    # Floats are compared to FLOAT32_REL: the tiny model runs in float32, whose matmul kernels round differently on
    # different CPUs (a CI machine read a mean margin of 0.19306588 where the fixture's machine read 0.19306600).
    # Counts, verdicts, choices and keys are compared exactly.
    found = compare(
        load_results(V2 / "run" / "results.json"), load_results(tmp_path / "run" / "results.json"), rel=FLOAT32_REL
    )
    # Since one probe type serves the gate and the table of probes, the table scores its probes in float32 as the
    # gate always did (schema 2's table scored the same probe in float64): its thresholds move by < 1e-6, within
    # FLOAT32_REL, so none differs; and detector.json names the probe's design (so its digest changed). Every other
    # number is the same.
    moved = {k: v for k, v in found.differ.items() if k.startswith("probes/") and k.endswith("/threshold")}
    assert not moved, moved
    # the metrics added since (AUROC's CI, pair-rank accuracy, TPR at 5% FPR) were absent (None) before
    added = {k: v for k, v in found.differ.items() if k.rsplit("/", 1)[-1] in NEW_METRICS and v[0] is None}
    thresholds = _record_thresholds(found.differ)
    rest = {
        k: v
        for k, v in found.differ.items()
        if k not in {**added, **thresholds} and k != "families/conditional/saved/digest"
    }
    assert not rest, list(rest.items())[:10]
    assert found.compared > 3000
    # schema 2 compared constant steering's control with nothing; this version with constant steering; the adapted
    # probe (issue 17) and the new metrics are new rows and keys
    assert all("/constant_control/versus" in path or NEW_METRIC_PATH.search(path) for path in found.only_before)
    assert all(
        "/constant_control/versus" in path or "/adapted" in path or NEW_METRIC_PATH.search(path)
        for path in found.only_after
    ), [p for p in found.only_after if "/adapted" not in p][:10]
    other = write_toy_jsonl(tmp_path / "other.jsonl", cwes=("CWE-89", "CWE-78", "CWE-22"), n_pairs=3, prefix="other")
    transfer = transfer_config(tmp_path / "run", {"data.path": (str(other), "--data"), "data.format": ("jsonl", "")})
    out = evaluate_from_run(tmp_path / "run", transfer, tmp_path / "eval", lm=tiny_lm, progress=False)
    evaluated = compare(load_results(V2 / "eval" / "results.json"), load_results(out / "results.json"), rel=FLOAT32_REL)
    new_thresholds = _record_thresholds(evaluated.differ)
    changed = {
        k: v
        for k, v in evaluated.differ.items()
        if not (k.rsplit("/", 1)[-1] in NEW_METRICS and v[0] is None) and k not in new_thresholds
    }
    assert not changed and evaluated.compared > 3000
    assert all(NEW_METRIC_PATH.search(path) for path in evaluated.only_before)
    assert all(path.startswith("lead/") or NEW_METRIC_PATH.search(path) for path in evaluated.only_after)
