"""The report's first lines say the answer (issue 19.13, 17.6): did the headline detector beat the baseline, its
controls and the length-only control; which probe (unadapted or adapted) held on the held-out data."""

from __future__ import annotations

import dataclasses

from vulnsteer.detection.probe_table import ProbeResult
from vulnsteer.experiment.results import Results
from vulnsteer.experiment.tables import Change, LeadRow, LeadTable, MetricBlock
from vulnsteer.report.answer import answer_lines, headline, verdicts_of
from vulnsteer.report.markdown import render_markdown


def _block(ba: float, ci: tuple[float, float], auroc: float | None = None, flagged: float = 0.5) -> MetricBlock:
    return MetricBlock(
        n=100, n_vulnerable=50, balanced_accuracy=ba, balanced_accuracy_ci=ci, auroc=auroc, vulnerable_rate=flagged
    )


def _lead(steered_delta_ci: tuple[float, float], steered_p: float) -> LeadTable:
    return LeadTable(
        "test",
        (
            LeadRow("baseline", "the model", _block(0.5, (0.5, 0.5))),
            LeadRow(
                "conditional", "probe-gated", _block(0.62, (0.55, 0.69)), 0.12, steered_delta_ci, steered_p,
                family="conditional",
            ),
            LeadRow(
                "random_gate", "random gate", _block(0.51, (0.45, 0.57)), 0.01, (-0.05, 0.07), 0.9,
                family="conditional", control_of="conditional", versus=Change(0.11, (0.04, 0.18), 0.004),
            ),
            LeadRow(
                "random_vector", "random vector", _block(0.60, (0.53, 0.67)), 0.10, (0.03, 0.17), 0.01,
                family="conditional", control_of="conditional", versus=Change(0.02, (-0.04, 0.08), 0.6),
            ),
            LeadRow("probe", "the probe alone", _block(0.64, (0.57, 0.71), auroc=0.66, flagged=0.85), family="probe"),
            LeadRow("adapted", "adapted probe", _block(0.52, (0.46, 0.58), auroc=0.66, flagged=0.48), family="adapted"),
        ),
    )  # fmt: skip


def _length(ba: float, auroc: float) -> ProbeResult:
    return ProbeResult(
        "length", "code_mean", -1, "overall", 0.0, auroc, ba, auroc, ba, 80, 40, 100, (ba - 0.1, ba + 0.1)
    )


def test_each_mode_says_what_was_beaten_and_what_was_not() -> None:
    results = Results(
        command="sweep",
        lead={"logit": _lead((0.05, 0.19), 0.001), "generation": _lead((-0.02, 0.2), 0.2)},
        probes=(_length(0.58, 0.70),),
    )
    logit, generation = verdicts_of(results)
    assert [c.beat for c in logit.comparisons] == [True, True, False, False]
    assert [c.reference for c in logit.comparisons] == [
        "the baseline",
        "the random gate",
        "the random vector",
        "the length-only control",
    ]
    assert not generation.beat_baseline
    assert (
        headline([logit, generation]) == "conditional steering beat the baseline in logit mode, not in generation mode"
    )
    lines = answer_lines(results)
    assert lines[0].startswith("- **Answer (logit mode, TEST)**: conditional steering **beat** the baseline")
    assert "did **not** beat the random vector" in lines[0]
    assert "did **not** beat the length-only control (0.580" in lines[0]
    assert lines[1].startswith(
        "- **Answer (generation mode, TEST)**: conditional steering did **not** beat the baseline"
    )
    # the gating probe (AUROC 0.66) ranks below its length control (0.70): said, not hidden
    caution = [line for line in lines if line.startswith("- **Caution**")]
    assert len(caution) == 1 and "(AUROC 0.660, balanced accuracy 0.640)" in caution[0]
    assert "length-only control (AUROC 0.700, balanced accuracy 0.580)" in caution[0]


def test_the_answer_is_the_reports_first_lines() -> None:
    results = Results(command="sweep", lead={"logit": _lead((0.05, 0.19), 0.001)}, probes=(_length(0.5, 0.5),))
    text = render_markdown(results).splitlines()
    assert text[0] == "# vulnsteer report (sweep): conditional steering beat the baseline"
    assert text[2].startswith("- **Answer (logit mode, TEST)**")
    assert not any(line.startswith("- **Caution**") for line in text)  # the probe (0.66) beats length (0.50)


def test_a_probe_within_005_auroc_of_its_length_control_is_cautioned() -> None:
    """The demo's case (issue 19.13): the probe ranked at 0.674, its length control at 0.667 (and beat it on
    balanced accuracy 0.625 to 0.583): nothing said so."""
    results = Results(command="sweep", lead={"logit": _lead((0.05, 0.19), 0.001)}, probes=(_length(0.5, 0.63),))
    assert any(line.startswith("- **Caution**") for line in answer_lines(results))


def test_the_headline_flag_picks_the_detector_and_old_files_fall_back_to_the_most_controlled() -> None:
    table = _lead((0.05, 0.19), 0.001)
    constant = LeadRow("constant", "", _block(0.5, (0.5, 0.5)), family="constant")
    control = LeadRow("constant_control", "", _block(0.5, (0.5, 0.5)), control_of="constant",
                      versus=Change(0.0, (0.0, 0.0), 1.0))  # fmt: skip
    rows = (table.rows[0], constant, control, *table.rows[1:])
    old = Results(command="sweep", lead={"logit": LeadTable("test", rows)})
    assert [v.detector for v in verdicts_of(old)] == ["conditional"]  # two controls beat one
    flagged = tuple(dataclasses.replace(r, headline=r.name == "constant") for r in rows)
    new = Results(command="sweep", lead={"logit": LeadTable("test", flagged)})
    assert [v.detector for v in verdicts_of(new)] == ["constant"]
    assert LeadRow.from_json(flagged[1].to_json()).headline


def test_transfer_line_says_which_probe_held_on_left_out_data() -> None:
    results = Results(command="evaluate --from", lead={"logit": _lead((0.05, 0.19), 0.001)})
    line = next(x for x in answer_lines(results) if "Transfer" in x)
    assert line.startswith("- **Transfer to the left-out data**: balanced accuracy of the gating probe 0.640")
    assert "the gating probe 0.640 [0.57, 0.71] (above chance), flagging 85%" in line
    assert "the adapted probe 0.520 [0.46, 0.58] (**not** above chance), flagging 48%" in line
    assert "(50% truly vulnerable): the unadapted probe transferred better" in line
    assert "both rank at AUROC 0.660" in line
    sweep = Results(command="sweep", lead=results.lead)
    assert any(x.startswith("- **Probe, unadapted vs adapted (TEST)**") for x in answer_lines(sweep))


def test_no_answer_line_without_controls() -> None:
    table = LeadTable("test", (LeadRow("baseline", "", _block(0.5, (0.5, 0.5))),))
    results = Results(command="sweep", lead={"logit": table})
    assert answer_lines(results) == []
    assert render_markdown(results).splitlines()[0] == "# vulnsteer report (sweep)"


def test_a_left_out_report_without_steered_rows_is_titled_by_which_probe_transferred() -> None:
    """17.6: applied to CWEs the run never chose for, only the probe families score; the title says which of
    the unadapted and adapted probes transferred, and whether either is above chance."""
    rows = tuple(r for r in _lead((0.05, 0.19), 0.001).rows if r.name in ("baseline", "probe", "adapted"))
    results = Results(command="evaluate --from", lead={"logit": LeadTable("all", rows)})
    first = render_markdown(results).splitlines()[0]
    assert first == (
        "# vulnsteer report (evaluate --from): the unadapted probe transferred better "
        "(balanced accuracy above chance: the gating probe)"
    )
    # a difference below the printed precision names no winner (0.58333 both ways, summed in another order)
    tied = tuple(
        dataclasses.replace(r, metrics=dataclasses.replace(r.metrics, balanced_accuracy=x))
        for r, x in zip(rows[1:], (7 / 12, 0.5 / 2 + 1 / 3), strict=True)
    )
    assert 7 / 12 != 0.5 / 2 + 1 / 3
    line = render_markdown(Results(command="evaluate --from", lead={"logit": LeadTable("all", tied)}))
    assert "neither transferred better (same balanced accuracy)" in line.splitlines()[0]


def test_a_ci_above_zero_that_mcnemar_does_not_confirm_says_why_it_is_not_beaten() -> None:
    """Found trying it (the demo): 'did not beat the random gate (Δ +0.167 [+0.04, +0.29], p=0.344)' read as a
    contradiction; both tests must agree, and the line now says the second one did not."""
    table = _lead((0.05, 0.19), 0.001)
    rows = tuple(
        dataclasses.replace(r, versus=Change(0.17, (0.04, 0.29), 0.344)) if r.name == "random_gate" else r
        for r in table.rows
    )
    [line] = answer_lines(Results(command="sweep", lead={"logit": LeadTable("test", rows)}))[:1]
    assert "did **not** beat the random gate (0.510; Δ +0.170 [+0.04, +0.29], p=0.344: the CI lies above 0 but" in line
