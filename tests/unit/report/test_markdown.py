"""report.md and its plots, rendered from hand-built typed results (what ``results.json`` holds)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from vulnsteer.cwe import cwe_name
from vulnsteer.detection.probe_table import ProbeResult
from vulnsteer.experiment.families import conditional, constant
from vulnsteer.experiment.grid import Condition, Setting
from vulnsteer.experiment.header import DataInfo, DataNotes, ModelInfo, RunFiles, SplitsInfo
from vulnsteer.experiment.results import Example, FamilyResults, Results, ValEntry
from vulnsteer.experiment.select import Choice
from vulnsteer.experiment.tables import (
    Control,
    CrossCwe,
    Flips,
    HeldOutRow,
    HeldOutTable,
    LeadRow,
    LeadTable,
    MetricBlock,
    PointMetrics,
)
from vulnsteer.lm.identity import ModelIdentity
from vulnsteer.report import write_report
from vulnsteer.report.markdown import duplicates_text, fmt, render_markdown

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LABEL = "mean_diff@last L1 relative +0.5 (steer last)"


def _metrics(bal: float, lo: float, hi: float, margin: float | None = 0.25) -> MetricBlock:
    return MetricBlock(
        n=8,
        n_pairs=4,
        accuracy=bal,
        balanced_accuracy=bal,
        tpr=0.75,
        fpr=0.25,
        auroc=0.8,
        pair_accuracy=0.5,
        vulnerable_rate=0.5,
        uncertain_rate=0.0,
        balanced_accuracy_ci=(lo, hi),
        mean_margin=margin,
    )


def _point(bal: float, margin: float | None = 0.25) -> PointMetrics:
    return PointMetrics(8, bal, bal, 0.75, 0.25, 0.5, 0.5, 0.8, margin)


def _row(base: MetricBlock, steered: MetricBlock, control: MetricBlock | None, delta: float, words: str) -> HeldOutRow:
    return HeldOutRow(
        n=8,
        n_pairs=4,
        split="test",
        baseline=base,
        chosen=LABEL if control else "baseline (no steered setting beat it on val)",
        steered=steered,
        delta=delta,
        delta_ci=(0.1, 0.4) if delta else (0.0, 0.0),
        p_value=0.03125 if delta else 1.0,
        flips=Flips(3, 1) if delta else Flips(0, 0),
        words=words,
        controls={} if control is None else {"control": Control(control, 0.02)},
    )


def _setting(strength: float) -> Setting:
    return Setting("mean_diff", "last", (1,), "relative", strength, "last")


def _results() -> Results:
    """Two CWEs on test: CWE-89 steered (chosen at 0.5, with its control), CWE-79 kept at baseline."""
    base89, steer89, ctrl89 = _metrics(0.5, 0.4, 0.6), _metrics(0.75, 0.6, 0.9), _metrics(0.52, 0.41, 0.63)
    base79 = _metrics(0.625, 0.5, 0.75)
    row79 = _row(base79, base79, None, 0.0, "no steered setting beat the baseline on validation")
    row79 = dataclasses.replace(row79, best_not_chosen=_row(base79, _metrics(0.5, 0.4, 0.6), base79, -0.125, "a loss"))
    val = [
        ValEntry(
            Condition("baseline", "logit", "val"),
            {"CWE-89": _point(0.5), "CWE-79": _point(0.7), "overall": _point(0.6, 4.8)},
        )
    ]
    for strength in (0.5, 2.0):
        for role in ("steered", "control"):
            val.append(
                ValEntry(
                    _setting(strength).condition(role, "logit", "val"),
                    {
                        "CWE-89": _point(0.8 if strength == 0.5 else 0.6),
                        "CWE-79": _point(0.6),
                        "overall": _point(0.7, -1.5),
                    },
                    "constant",
                )
            )
    how = "logit mode, val split"
    constant = FamilyResults(
        "constant",
        "constant steering",
        {"control": "random control"},
        choices={
            "logit": {
                "CWE-89": Choice("CWE-89", "steered", _setting(0.5), selected_by=how),
                "CWE-79": Choice("CWE-79", "baseline", _setting(0.5), selected_by=how),
            }
        },
        held_out={
            "logit": HeldOutTable(
                "test",
                {"CWE-89": _row(base89, steer89, ctrl89, 0.25, "gain of +0.250 is significant"), "CWE-79": row79},
                cross_cwe=CrossCwe(
                    ("CWE-89", "CWE-79"),
                    ("CWE-89", "CWE-79"),
                    ((0.25, None), (0.0, -0.125)),
                    "test",
                    {"CWE-89": "steered", "CWE-79": "baseline"},
                ),
            )
        },
        examples={
            "generation": (
                Example(
                    "CWE-89",
                    "p0-v",
                    "vulnerable",
                    "steered",
                    LABEL,
                    "Answer: secure\nnone",
                    "secure",
                    "Answer: `vulnerable`",
                    "vulnerable",
                    "test",
                ),
                Example(
                    "CWE-79",
                    "p3-s",
                    "secure",
                    "baseline",
                    LABEL,
                    "Answer: secure",
                    "secure",
                    "Answer: vulnerable",
                    "vulnerable",
                    "test",
                ),
            )
        },
    )
    probes = (
        ProbeResult("direction", "last", 1, "CWE-89", 0.125, 0.9, 0.875, None, 0.75, 8, 8, 8, (0.7, 1.0)),
        ProbeResult.from_dict(
            {
                "cwe": "CWE-79",
                "detector": "logistic",
                "pooling": "last",
                "layer": 1,
                "skipped": "fewer than 2 train samples per class",
            }
        ),
    )
    splits = {
        "train": {"n": 24},
        "val": {"n": 16},
        "test": {"n": 16},
        "duplicates": {"exact": 0, "normalised": 2},
        "notes": {"merge_duplicates": True},
    }
    return Results(
        command="run",
        status="complete",
        config={
            "data": {"seed": 0},
            "vectors": {"methods": ["mean_diff"], "pooling": ["last"], "pooled": False},
            "steering": {"strengths": {"relative": [0.5, 2.0]}, "positions": ["last"]},
            "detection": {"modes": ["logit"]},
        },
        model=ModelInfo(ModelIdentity("tiny-llama", "abc"), 4, 64),
        layer_sets=((1,),),
        sign_convention="positive strength pushes toward 'vulnerable'",
        data=DataInfo(
            "toy.jsonl",
            ("CWE-89", "CWE-79"),
            DataNotes({"comments_stripped": True, "max_code_tokens": 64, "truncated": 1}),
            SplitsInfo(splits),
        ),
        files=RunFiles("config.resolved.toml", "chosen/chosen.json", "records.jsonl"),
        val={"logit": tuple(val)},
        families={"constant": constant},
        probes=probes,
        timings_s={"activations": 0.5, "total": 3.25},
    )


def _section(markdown: str, heading: str) -> list[str]:
    """The lines under the heading that starts with *heading*, up to the next heading."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("#")), len(lines))
    return lines[start + 1 : end]


def _rows(lines: list[str]) -> list[list[str]]:
    """The body rows of the first Markdown table in *lines*, as stripped cells."""
    table = [line for line in lines if line.startswith("|")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in table[2:]]


def test_fmt() -> None:
    assert (fmt(None), fmt(math.nan), fmt(0.12345), fmt(0.12345, 1), fmt(2.0, 2)) == (
        "–",
        "nan",
        "0.123",
        "0.1",
        "2.00",
    )
    assert (fmt(3), fmt("x")) == ("3", "x")


def test_header_states_model_data_splits_and_protocol() -> None:
    md = render_markdown(_results())
    assert md.startswith("# vulnsteer report (run)\n")
    assert "- model: `tiny-llama` (4 layers, hidden 64, fingerprint abc)" in md
    assert "- data: `toy.jsonl`; CWEs: CWE-89, CWE-79" in md
    assert "train 24, val 16, test 16 samples; cross-split duplicates (merged into one split group): exact 0" in md
    assert "truncated to 64 tokens: 1 samples" in md
    assert "**sign convention**: positive strength pushes toward 'vulnerable'" in md
    assert "Test data never influences a choice" in md and "`config.resolved.toml`" in md


def test_lead_table_has_one_row_per_cwe_with_ci_delta_p_and_flips() -> None:
    md = render_markdown(_results())
    lead = _section(md, "## logit mode: TEST split, setting chosen on the logit mode, val split")
    header = next(line for line in lead if line.startswith("|"))
    assert "n (test)" in header and "random control" in header and "McNemar p" in header and "flips" in header
    rows = {r[0]: r for r in _rows(lead)}
    assert rows[f"CWE-89 ({cwe_name('CWE-89')})"][1:] == [
        "8 (4 pairs)",
        "0.500 [0.40, 0.60]",
        f"0.750 [0.60, 0.90]<br>{LABEL}",
        "0.520 [0.41, 0.63]",
        "+0.250 [+0.10, +0.40]",
        "0.031",
        "+3 / −1",
    ]
    row79 = rows[f"CWE-79 ({cwe_name('CWE-79')})"]
    assert row79[3] == "0.625 [0.50, 0.75]<br>baseline (no steered setting beat it on val)"
    assert row79[4] == "–" and row79[5:] == ["+0.000 [+0.00, +0.00]", "1.000", "+0 / −0"]
    assert "- **CWE-89**: gain of +0.250 is significant." in lead
    best = f"the best steered setting on val (not chosen: the baseline scored at least as well) was {LABEL}"
    assert any(
        line.startswith(f"- **CWE-79**: no steered setting beat the baseline on validation; {best}, which on TEST")
        and "-0.125" in line
        for line in lead
    )
    bullets = [line.split(":")[0] for line in lead if line.startswith("- ")]
    assert bullets == ["- **CWE-89**", "- **CWE-79**"]  # one sentence per CWE


def test_evaluate_headers_say_where_the_settings_come_from() -> None:
    results = _results()
    assert results.data is not None
    data = dataclasses.replace(results.data, n_samples=16, skipped_cwes={"CWE-22": 6}, overlap_with_run_train=2)
    results = dataclasses.replace(results, command="evaluate --from", run_dir="runs/x", data=data)
    md = render_markdown(results)
    assert "settings chosen in `runs/x`" in md and "applied here **unchanged**" in md
    assert "CWE-22 (6 samples)" in md and "also in the run's training split: 2" in md
    results = dataclasses.replace(results, run_dir=None, vectors_from="vecs/", command="evaluate --vectors")
    assert "vectors from `vecs/` at the setting given on the command line" in render_markdown(results)


def test_pooled_cross_val_and_probe_sections() -> None:
    md = render_markdown(_results())
    cross = _rows(_section(md, "### Cross-CWE matrix (logit, TEST)"))
    assert cross == [["CWE-89", "+0.250", "–"], ["CWE-79 (baseline won on val)", "+0.000", "-0.125"]]
    val = _rows(_section(md, "## All candidates, logit mode, VAL split"))
    assert val[0] == ["baseline", "0.500", "**0.700**", "4.80"]  # the baseline is CWE-79's choice
    assert val[1] == [LABEL, "**0.800**", "0.600", "-1.50"]  # controls are left out of this table
    probe = _section(md, "## Probe detectors")
    assert "threshold (val)" in next(line for line in probe if line.startswith("|"))
    rows = _rows(probe)
    assert rows[0] == ["CWE-89", "direction", "last", "1", "0.750", "0.125", "0.900", "0.875 [0.70, 1.00]"]
    assert rows[1][-1] == "skipped: fewer than 2 train samples per class" and set(rows[1][4:-1]) == {"–"}
    without = dataclasses.replace(_results(), probes=())
    assert "Probe detectors" not in render_markdown(without)


def test_examples_timings_and_interrupted_report() -> None:
    md = render_markdown(_results(), ["plots/x.png"])
    assert "![x](plots/x.png)" in md and "**CWE-89** `p0-v` (truth: vulnerable" in md
    assert "`Answer: secure ⏎ none`" in md and "`Answer: 'vulnerable'`" in md  # one line, no backticks inside
    assert "activations: 0.5, total: 3.25" in md
    stopped = Results(
        command="sweep", status="interrupted", finished_conditions=(Condition("baseline", "logit", "val"),)
    )
    text = render_markdown(stopped)
    assert "INTERRUPTED" in text and "- baseline|logit|val" in text


def test_render_markdown_tolerates_nan_and_missing_values() -> None:
    results = _results()
    constant = results.families["constant"]
    table = constant.held_out["logit"]
    row = table.rows["CWE-89"]
    baseline = dataclasses.replace(row.baseline, balanced_accuracy=math.nan, balanced_accuracy_ci=None)
    row = dataclasses.replace(row, baseline=baseline, controls={})
    table = dataclasses.replace(table, rows={**table.rows, "CWE-89": row})
    constant = dataclasses.replace(constant, held_out={"logit": table})
    md = render_markdown(dataclasses.replace(results, families={"constant": constant}))
    assert "nan [–, –]" in md


def test_write_report_writes_markdown_and_plots(tmp_path: Path) -> None:
    path = write_report(_results(), tmp_path)
    text = path.read_text()
    pngs = sorted((tmp_path / "plots").glob("*.png"))
    assert pngs and all(p.read_bytes()[:8] == PNG_MAGIC for p in pngs)
    for png in pngs:
        assert f"(plots/{png.name})" in text
    interrupted = Results(command="sweep", status="interrupted")
    assert "INTERRUPTED" in write_report(interrupted, tmp_path / "i").read_text()
    assert not (tmp_path / "i" / "plots").exists()


def test_duplicates_text_says_what_was_found_and_dropped() -> None:
    kept = SplitsInfo({"duplicates": {"exact": 2, "normalised": 3}, "notes": {}})
    assert duplicates_text(kept) == "cross-split duplicates (kept): exact 2, normalised 3"
    dropped = SplitsInfo(
        {
            "duplicates": {"exact": 0, "normalised": 0},
            "notes": {
                "deduped": {"dropped": {"val": ["a", "b"], "test": ["c"]}},
                "duplicates_before_dedupe": {"exact": 2, "normalised": 3},
            },
        }
    )
    text = duplicates_text(dropped)
    assert "found: exact 2, normalised 3; dropped 2 val and 1 test samples" in text and "left: exact 0" in text


def test_examples_name_their_split_and_whether_val_chose_their_setting() -> None:
    md = render_markdown(_results())
    heading = next(line for line in md.splitlines() if line.startswith("## Example generations"))
    assert heading.startswith("## Example generations (generation mode, TEST split, constant steering;")
    assert "val" not in heading.split(";")[0]
    assert f"**CWE-89** `p0-v` (truth: vulnerable; steered: {LABEL}, chosen on val)" in md
    assert (
        f"**CWE-79** `p3-s` (truth: secure; steered: {LABEL}, the best steered setting on val, not chosen: the "
        "baseline scored at least as well there)" in md
    )


def test_examples_of_older_results_load_and_say_their_split_is_not_recorded() -> None:
    results = _results()
    family = results.families["constant"]
    example = family.examples["generation"][0]
    assert Example.from_json(example.to_json()) == example and example.to_json()["split"] == "test"
    old = {k: v for k, v in example.to_json().items() if k != "split"}  # written before the split was recorded
    loaded = Example.from_json(old)
    assert loaded.split is None and dataclasses.replace(loaded, split="test") == example
    family = dataclasses.replace(family, examples={"generation": (loaded,)})
    md = render_markdown(dataclasses.replace(results, families={"constant": family}))
    assert "## Example generations (generation mode, held-out samples (split not recorded)," in md


def _lead_row(name: str, label: str, family: str | None, control_of: str | None = None) -> LeadRow:
    return LeadRow(name, label, _metrics(0.5, 0.4, 0.6), family=family, control_of=control_of)


def _lead_labels(md: str) -> dict[str, list[tuple[str, str]]]:
    """Per lead table (by its heading): each row's (detector, what it is) cells."""
    heads = [line for line in md.splitlines() if line.startswith("## ") and "every detector on the" in line]
    return {head: [(r[0], r[1]) for r in _rows(_section(md, head))] for head in heads}


def test_lead_rows_of_constant_and_conditional_steering_in_both_modes_have_distinct_labels() -> None:
    rows = [_lead_row("baseline", "the model as it is", None)]
    for family, specs in (("constant", constant.ROWS), ("conditional", conditional.ROWS)):
        rows += [_lead_row(spec.name, spec.label, family, spec.control_of) for spec in specs]
    rows.append(_lead_row("probe", "the gating probe alone (its own verdict, no model)", "probe"))
    lead = {mode: LeadTable("test", tuple(rows), "") for mode in ("logit", "generation")}
    families = {
        "constant": FamilyResults("constant", "constant steering"),
        "conditional": FamilyResults("conditional", "conditional steering, probe-gated"),
        "probe": FamilyResults("probe", "the gating probe alone"),
    }
    tables = _lead_labels(render_markdown(dataclasses.replace(_results(), lead=lead, families=families)))
    assert len(tables) == 2
    for head, cells in tables.items():
        names, labels = [c[0] for c in cells], [c[1] for c in cells]
        assert len(cells) == 7 and len(set(names)) == 7 and len(set(labels)) == 7, head
        control = dict(cells)["**constant_control**"]
        assert "control of constant steering" in control  # says whose control it is, not "its"


def test_lead_rows_that_share_a_name_are_told_apart_by_their_family() -> None:
    rows = (
        _lead_row("baseline", "the model as it is", None),
        _lead_row("probe", "a probe", "probe"),
        _lead_row("probe", "a probe", "other"),
    )
    families = {"probe": FamilyResults("probe", "the gating probe alone"), "other": FamilyResults("other", "")}
    results = dataclasses.replace(_results(), lead={"logit": LeadTable("test", rows, "")}, families=families)
    (cells,) = _lead_labels(render_markdown(results)).values()
    assert [c[0] for c in cells] == ["**baseline**", "**probe (the gating probe alone)**", "**probe (other)**"]
