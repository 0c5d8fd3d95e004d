"""report.md and its plots, rendered from a hand-built results dict (the shape ``results.json`` has)."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest

from vulnsteer.cwe import cwe_name
from vulnsteer.report.markdown import fmt, plot_strength_curves, render_markdown, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _metrics(bal: float, lo: float, hi: float, margin: float | None = 0.25) -> dict[str, Any]:
    return {
        "balanced_accuracy": bal,
        "balanced_accuracy_ci": [lo, hi],
        "accuracy": bal,
        "tpr": 0.75,
        "fpr": 0.25,
        "pair_accuracy": 0.5,
        "vulnerable_rate": 0.5,
        "uncertain_rate": 0.0,
        "auroc": 0.8,
        "mean_margin": margin,
        "n": 8,
        "n_pairs": 4,
    }


def _cond(kind: str, strength: float = 0.0, split: str = "test", mode: str = "logit") -> dict[str, Any]:
    return {"kind": kind, "mode": mode, "split": split, "strength": strength, "unit": "raw"}


def _results() -> dict[str, Any]:
    """Two CWEs on test: CWE-89 steered (chosen at strength 2, with its control), CWE-79 kept at baseline."""
    base89, steer89, ctrl89 = _metrics(0.5, 0.4, 0.6), _metrics(0.75, 0.6, 0.9), _metrics(0.52, 0.41, 0.63)
    base79 = _metrics(0.625, 0.5, 0.75)
    brief = {k: v for k, v in base79.items() if k not in ("n", "n_pairs", "mean_margin")}
    return {
        "command": "run",
        "config": {
            "seed": 0,
            "method": "mean_diff",
            "position": "last",
            "steer_positions": "last",
            "strengths": [0.0, 2.0, 8.0],
            "unit": "raw",
        },
        "model": {"id": "tiny-llama", "num_layers": 4, "hidden_size": 64},
        "layers": [1],
        "sign_convention": "positive strength pushes toward 'vulnerable'",
        "data": {
            "source": "toy.jsonl",
            "cwes": ["CWE-89", "CWE-79"],
            "notes": {"comments_stripped": True, "max_code_tokens": 64, "truncated": 1},
            "splits": {
                "train": {"n": 24},
                "val": {"n": 16},
                "test": {"n": 16},
                "duplicates": {"exact": 0, "normalised": 2},
            },
        },
        "vectors": {
            "CWE-89|mean_diff": {"cwe": "CWE-89", "relative_norm": {"1": 0.1}},
            "CWE-79|mean_diff": {"cwe": "CWE-79", "relative_norm": {"1": 0.2}},
        },
        "conditions": [
            # deliberately out of order: the strength table sorts them
            {"condition": _cond("steered", 8.0), "metrics": {"CWE-89": _metrics(0.6, 0.5, 0.7)}},
            {"condition": _cond("control", 2.0), "metrics": {"CWE-89": ctrl89}},
            {
                "condition": _cond("steered", 2.0),
                "metrics": {"CWE-89": steer89, "CWE-79": _metrics(0.5, 0.4, 0.6), "overall": _metrics(0.6, 0.5, 0.7)},
            },
            {
                "condition": _cond("baseline"),
                "metrics": {"CWE-89": base89, "CWE-79": base79, "overall": _metrics(0.55, 0.45, 0.65)},
            },
            {"condition": _cond("baseline", split="val"), "metrics": {"CWE-89": _metrics(0.1, 0.0, 0.2)}},
        ],
        "selection": {"logit": {"CWE-89": {"selected_by": "logit mode, val split"}}},
        "summary": {
            "logit": {
                "CWE-89": {
                    "n": 8,
                    "n_pairs": 4,
                    "split": "test",
                    "baseline": base89,
                    "steered": steer89,
                    "chosen": "steered mean_diff L1 raw 2",
                    "control": ctrl89,
                    "delta": 0.25,
                    "delta_ci": [0.1, 0.4],
                    "p_value": 0.03125,
                    "words": "gain of +0.250 is significant",
                },
                "CWE-79": {
                    "n": 8,
                    "n_pairs": 4,
                    "split": "test",
                    "baseline": brief,
                    "steered": brief,
                    "chosen": "baseline (no strength beat it on val)",
                    "control": None,
                    "delta": 0.0,
                    "delta_ci": [0.0, 0.0],
                    "p_value": 1.0,
                    "words": "no steering strength beat the baseline",
                },
            }
        },
        "probes": [
            {
                "cwe": "CWE-89",
                "detector": "direction",
                "position": "last",
                "layer": 1,
                "val_balanced_accuracy": 0.75,
                "threshold": 0.125,
                "test_auroc": 0.9,
                "test_balanced_accuracy": 0.875,
                "balanced_accuracy_ci": [0.7, 1.0],
                "skipped": None,
            },
            {
                "cwe": "CWE-79",
                "detector": "logistic",
                "position": "last",
                "layer": 1,
                "val_balanced_accuracy": None,
                "threshold": None,
                "test_auroc": None,
                "test_balanced_accuracy": None,
                "balanced_accuracy_ci": None,
                "skipped": "fewer than 2 train samples per class",
            },
        ],
        "examples": {
            "generation": [
                {
                    "cwe": "CWE-89",
                    "sample_id": "p0-v",
                    "truth": "vulnerable",
                    "baseline": "Answer: secure\nnone",
                    "baseline_verdict": "secure",
                    "steered": "Answer: `vulnerable`",
                    "steered_verdict": "vulnerable",
                }
            ]
        },
        "timings_s": {"load_model": 0.5, "total": 3.25},
    }


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
    assert fmt(None) == "–"
    assert fmt(math.nan) == "nan"
    assert fmt(0.12345) == "0.123"
    assert fmt(0.12345, 1) == "0.1"
    assert fmt(2.0, 2) == "2.00"
    assert fmt(3) == "3"
    assert fmt("x") == "x"


def test_header_states_model_data_and_split_sizes() -> None:
    md = render_markdown(_results())
    assert md.startswith("# vulnsteer report\n")
    assert "- model: `tiny-llama` (4 layers, hidden 64); steered layer(s): [1]" in md
    assert "- data: `toy.jsonl`; CWEs: CWE-89, CWE-79" in md
    assert "train 24, val 16, test 16 samples; cross-split duplicates (kept): exact 0, normalised 2" in md
    assert "truncated to 64 tokens: 1 samples" in md
    assert "**sign convention**: positive strength pushes toward 'vulnerable'" in md


def test_lead_table_has_one_row_per_cwe_with_ci_delta_and_p() -> None:
    md = render_markdown(_results())
    lead = _section(md, "## logit mode: test split, strength chosen on the logit mode, val split")
    header = next(line for line in lead if line.startswith("|"))
    assert "n (test)" in header and "random control" in header and "McNemar p" in header
    rows = {r[0]: r for r in _rows(lead)}
    assert set(rows) == {f"CWE-89 ({cwe_name('CWE-89')})", f"CWE-79 ({cwe_name('CWE-79')})"}
    assert rows[f"CWE-89 ({cwe_name('CWE-89')})"][1:] == [
        "8 (4 pairs)",
        "0.500 [0.40, 0.60]",
        "0.750 [0.60, 0.90]<br>steered mean_diff L1 raw 2",
        "0.520 [0.41, 0.63]",
        "+0.250 [+0.10, +0.40]",
        "0.031",
    ]
    row79 = rows[f"CWE-79 ({cwe_name('CWE-79')})"]
    assert row79[3] == "0.625 [0.50, 0.75]<br>baseline (no strength beat it on val)"
    assert row79[4] == "–"  # no control for a CWE left at baseline
    assert row79[5:] == ["+0.000 [+0.00, +0.00]", "1.000"]
    # one plain sentence per CWE under the table
    assert "- **CWE-89**: gain of +0.250 is significant." in lead
    assert "- **CWE-79**: no steering strength beat the baseline." in lead


def test_mode_heading_says_how_the_setting_was_chosen() -> None:
    results = _results()
    results["command"] = "evaluate"
    results["selection"] = {}
    assert "## logit mode: test split, settings given by the user" in render_markdown(results)
    results["command"] = "transfer"
    assert "## logit mode: test split, settings chosen on the source run's validation split" in render_markdown(results)


def test_probe_section_renders_skipped_probes_and_the_val_threshold() -> None:
    md = render_markdown(_results())
    probe = _section(md, "## Probe detectors")
    header = next(line for line in probe if line.startswith("|"))
    assert "threshold (val)" in header and "| threshold |" not in header
    rows = _rows(probe)
    assert rows[0] == ["CWE-89", "direction", "last", "1", "0.750", "0.125", "0.900", "0.875 [0.70, 1.00]"]
    assert rows[1][:4] == ["CWE-79", "logistic", "last", "1"]
    assert rows[1][-1] == "skipped: fewer than 2 train samples per class"
    assert set(rows[1][4:-1]) == {"–"}

    without = _results()
    without["probes"] = []
    assert "Probe detectors" not in render_markdown(without)


def test_strength_table_lists_overall_then_baseline_first_by_strength() -> None:
    md = render_markdown(_results())
    rows = _rows(_section(md, "## All conditions, logit mode, test split"))
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("overall", "baseline", "0.0"),
        ("overall", "steered", "2.0"),
        ("CWE-79", "baseline", "0.0"),
        ("CWE-79", "steered", "2.0"),
        ("CWE-89", "baseline", "0.0"),
        ("CWE-89", "control", "2.0"),
        ("CWE-89", "steered", "2.0"),
        ("CWE-89", "steered", "8.0"),
    ]
    by_key = {(r[0], r[1], r[2]): r for r in rows}
    # rel. shift = |vector| / mean hidden norm x raw strength; none for the baseline or the pooled row
    assert by_key[("CWE-89", "baseline", "0.0")][3] == "–"
    assert by_key[("CWE-89", "steered", "8.0")][3] == "0.800"
    assert by_key[("CWE-79", "steered", "2.0")][3] == "0.400"
    assert by_key[("overall", "steered", "2.0")][3] == "nan"
    assert by_key[("CWE-89", "steered", "2.0")][4:] == [
        "0.750 [0.60, 0.90]",
        "0.750",
        "0.750",
        "0.250",
        "0.500",
        "0.500",
        "0.000",
        "0.800",
        "0.25",
    ]
    assert "0.100" not in md  # the val-split condition is not in the test-split tables


def test_examples_timings_and_plot_links() -> None:
    md = render_markdown(_results(), plots=["strength_logit_test.png"])
    assert "![strength_logit_test](strength_logit_test.png)" in md
    examples = _section(md, "## Example generations (generation mode")
    assert "**CWE-89** `p0-v` (truth: vulnerable)" in examples
    assert "- baseline (secure): `Answer: secure ⏎ none`" in examples
    assert "- steered (vulnerable): `Answer: 'vulnerable'`" in examples  # backticks cannot break the code span
    assert "load_model: 0.5, total: 3.25" in _section(md, "## Timings (s)")


def test_render_markdown_tolerates_nan_and_missing_values() -> None:
    results = _results()
    row = results["summary"]["logit"]["CWE-89"]
    row.update(delta=math.nan, delta_ci=[math.nan, math.nan], p_value=None, control=None)
    row["steered"] = dict(row["steered"], balanced_accuracy_ci=None)
    results["conditions"][2]["metrics"]["CWE-89"]["mean_margin"] = None
    md = render_markdown(results)
    cells = {r[0]: r for r in _rows(_section(md, "## logit mode"))}[f"CWE-89 ({cwe_name('CWE-89')})"]
    assert cells[3].startswith("0.750 [–, –]")
    assert cells[4:] == ["–", "+nan [+nan, +nan]", "–"]
    strength = {(r[0], r[1], r[2]): r for r in _rows(_section(md, "## All conditions"))}
    assert strength[("CWE-89", "steered", "2.0")][-1] == "–"  # no margin (generation-only records)


def test_write_report_writes_markdown_and_a_png_per_mode(tmp_path: Path) -> None:
    out = tmp_path / "new" / "run"  # does not exist yet
    path = write_report(_results(), out)
    assert path == out / "report.md"
    png = out / "strength_logit_test.png"
    assert png.read_bytes()[:8] == PNG_MAGIC
    md = path.read_text(encoding="utf-8")
    assert md == render_markdown(_results(), ["strength_logit_test.png"])
    assert sorted(p.name for p in out.iterdir()) == ["report.md", "strength_logit_test.png"]  # no temp files left


def test_plot_strength_curves_needs_matching_conditions(tmp_path: Path) -> None:
    results = _results()
    assert plot_strength_curves(results, tmp_path, "generation") is None
    assert plot_strength_curves(results, tmp_path, "logit", split="train") is None
    assert list(tmp_path.iterdir()) == []
    assert plot_strength_curves(results, tmp_path, "logit", split="val") == "strength_logit_val.png"
    assert (tmp_path / "strength_logit_val.png").read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize("n_cwes", [1, 4])
def test_plot_strength_curves_any_number_of_panels(tmp_path: Path, n_cwes: int) -> None:
    results = _results()
    base = copy.deepcopy(results["conditions"][3])
    base["metrics"] = {f"CWE-{i}": _metrics(0.5, 0.4, 0.6) for i in range(n_cwes)}
    results["conditions"] = [base]
    assert plot_strength_curves(results, tmp_path, "logit") == "strength_logit_test.png"
    assert (tmp_path / "strength_logit_test.png").read_bytes()[:8] == PNG_MAGIC


def test_duplicates_text_says_what_was_found_and_dropped() -> None:
    from vulnsteer.report.markdown import duplicates_text

    kept = {"duplicates": {"exact": 3, "normalised": 1}, "notes": {}}
    assert duplicates_text(kept) == "cross-split duplicates (kept): exact 3, normalised 1"
    deduped = {
        "duplicates": {"exact": 0, "normalised": 0},
        "notes": {
            "duplicates_before_dedupe": {"exact": 3, "normalised": 1},
            "deduped": {"dropped": {"val": ["a", "b"], "test": ["c", "d", "e", "f"]}},
        },
    }
    assert duplicates_text(deduped) == (
        "cross-split duplicates found: exact 3, normalised 1; dropped 2 val and 4 "
        "test samples (with their pair partners); left: exact 0, normalised 0"
    )
