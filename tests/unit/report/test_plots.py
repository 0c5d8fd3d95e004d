"""Report plots render from results data alone, and a broken plot never costs the results."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vulnsteer.experiment.grid import Condition, Setting
from vulnsteer.experiment.header import DataInfo
from vulnsteer.experiment.results import CosineBlock, FamilyResults, PcaBlock, PcaPoints, Results, ValEntry
from vulnsteer.experiment.tables import CrossCwe, HeldOutTable, PointMetrics
from vulnsteer.report import write_report
from vulnsteer.report.plots import plot_cross_cwe, report_plots

CWES = ["CWE-89", "CWE-78"]
PNG = b"\x89PNG\r\n\x1a\n"


def _metrics(rng: random.Random | None) -> dict[str, PointMetrics]:
    """Random balanced accuracies (None: 0.5 everywhere, the baseline's too: nothing changes)."""
    return {cwe: PointMetrics(6, rng.choice([0.5, 0.67, 0.83]) if rng else 0.5) for cwe in [*CWES, "overall"]}


def fake_results(
    seed: int | None = 0,
    layer_sets: tuple[tuple[int, ...], ...] = ((10,), (15,), (10, 15)),
    gated: bool = False,
) -> Results:
    """The parts of a sweep's results that the plots read (*seed* None: no setting changes anything; *gated*:
    conditional settings too, gated at the same layers, with both controls)."""
    rng = None if seed is None else random.Random(seed)
    entries = [ValEntry(Condition("baseline", "logit", "val"), _metrics(rng))]
    for layers in layer_sets:
        for strength in (-1.0, 0.5, 2.0):
            setting = Setting("mean_diff", "last", layers, "relative", strength, "last")
            for role in ("steered", "control"):
                for target in (None, "any"):
                    entries.append(ValEntry(setting.condition(role, "logit", "val", target), _metrics(rng), "constant"))
            if gated:
                setting = dataclasses.replace(setting, gate="sign", probe="logistic@code_mean@L10")
                for role in ("steered", "control", "gate_control"):
                    entries.append(ValEntry(setting.condition(role, "logit", "val"), _metrics(rng), "conditional"))
    delta = ((0.1, None), (-0.2, 0.0), (0.05, 0.3)) if rng else ((0.0, None), (0.0, 0.0), (0.0, 0.0))
    cross = CrossCwe(
        (*CWES, "any"),
        tuple(CWES),
        delta,
        "test",
        {"CWE-89": "steered", "CWE-78": "baseline", "any": "steered"},
    )
    names = (*CWES, "any")
    draw = random.Random(seed)
    pca = {
        cwe: PcaPoints(
            tuple(draw.gauss(0, 1) for _ in range(8)),
            tuple(draw.gauss(0, 1) for _ in range(8)),
            tuple(i % 2 == 0 for i in range(8)),
            (0.4, 0.2),
        )
        for cwe in CWES
    }
    cosine = CosineBlock(
        names,
        {
            10: tuple(tuple(1.0 if a == b else 0.3 for b in names) for a in names),
            15: tuple(tuple(1.0 if a == b else -0.2 for b in names) for a in names),
        },
    )
    constant = FamilyResults(
        "constant",
        held_out={"logit": HeldOutTable("test", {}, cross_cwe=cross)},
        cosine={"mean_diff@last": cosine},
    )
    return Results(
        data=DataInfo("toy", tuple(CWES)),
        layer_sets=layer_sets,
        val={"logit": tuple(entries)},
        families={"constant": constant},
        pca={"last": PcaBlock(15, "last", "train", pca)},
    )


def test_every_plot_is_a_png(tmp_path: Path) -> None:
    made = report_plots(fake_results(), tmp_path)
    stems = {Path(p).stem for p in made}
    assert stems == {
        "val_curves_logit_relative",
        "layer_strength_logit_mean_diff_last_last",
        "cross_cwe_logit",
        "cosine_mean_diff_last",
        "pca_last",
    }
    for name in made:
        assert name.startswith("plots/")
        assert (tmp_path / name).read_bytes().startswith(PNG)


def test_a_broken_plot_is_skipped(tmp_path: Path) -> None:
    broken = PcaPoints((1.0,), (), (), ())  # one x, no y and no labels
    results = dataclasses.replace(fake_results(), pca={"last": PcaBlock(15, "last", "train", {"CWE-89": broken})})
    made = report_plots(results, tmp_path)
    assert "plots/pca_last.png" not in made and "plots/cross_cwe_logit.png" in made


def test_empty_cross_matrix_draws_nothing(tmp_path: Path) -> None:
    empty = CrossCwe((), tuple(CWES), (), "test")
    assert plot_cross_cwe(empty, tmp_path, "x.png", "t") is None
    assert not (tmp_path / "plots").exists()


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """The figures the plots draw, kept open (in the order they are saved) so a test can look at them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    close, kept = plt.close, []
    monkeypatch.setattr(plt, "close", kept.append)
    yield kept
    for fig in kept:
        close(fig)


def _drawn(made: list[str], figures: list[Any]) -> dict[str, Any]:
    assert len(made) == len(figures)
    return {Path(name).stem: fig for name, fig in zip(made, figures, strict=True)}


def test_every_curve_has_its_own_label_naming_what_it_is(tmp_path: Path, figures: list[Any]) -> None:
    made = report_plots(fake_results(layer_sets=((10,),), gated=True), tmp_path)
    fig = _drawn(made, figures)["val_curves_logit_relative"]
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert len(labels) == len(set(labels)) == 6  # 2 settings x (steered + its controls) - 1 + the baseline
    gated = "mean_diff@last L10 (steer last, gated by logistic@code_mean@L10 (sign))"
    constant = "mean_diff@last L10 (steer last)"
    assert set(labels) == {
        f"steered {constant}",
        f"random vector control of {constant}",
        f"steered {gated}",
        f"random vector control of {gated}",
        f"random gate control of {gated}",
        "baseline (no steering)",
    }
    styles = {line.get_label(): (line.get_linestyle(), line.get_marker()) for line in fig.axes[0].lines}
    assert styles[f"steered {gated}"] == ("-", "o")
    assert styles[f"random vector control of {gated}"] == ("--", "x")
    assert styles[f"random gate control of {gated}"] == (":", "s")


def test_titles_fit_inside_their_figures(tmp_path: Path, figures: list[Any]) -> None:
    results = fake_results(gated=True)
    constant = results.families["constant"]
    block = constant.cosine["mean_diff@last"]
    one_layer = {"mean_diff@last": dataclasses.replace(block, layers={10: block.layers[10]})}  # a narrow figure
    results = dataclasses.replace(results, families={"constant": dataclasses.replace(constant, cosine=one_layer)})
    drawn = _drawn(report_plots(results, tmp_path), figures)
    assert {"cosine_mean_diff_last", "val_curves_logit_relative", "cross_cwe_logit"} <= set(drawn)
    for name, fig in drawn.items():
        renderer = fig.canvas.get_renderer()
        titles = [t for t in (*fig.texts, *(ax.title for ax in fig.axes)) if t.get_text()]
        assert titles, name
        for title in titles:
            box = title.get_window_extent(renderer)
            assert fig.bbox.x0 - 1 <= box.x0 and box.x1 <= fig.bbox.x1 + 1, (name, title.get_text())
            assert fig.bbox.y0 - 1 <= box.y0 and box.y1 <= fig.bbox.y1 + 1, (name, title.get_text())


def test_plots_without_information_are_neither_written_nor_linked(tmp_path: Path) -> None:
    flat = fake_results(seed=None)  # every setting scores what the baseline scores; the cross matrix is all 0
    report = write_report(flat, tmp_path / "flat").read_text()
    written = {p.stem for p in (tmp_path / "flat" / "plots").glob("*.png")}
    assert written == {"cosine_mean_diff_last", "pca_last"}
    for stem in ("val_curves_logit_relative", "layer_strength_logit_mean_diff_last_last", "cross_cwe_logit"):
        assert stem not in report
    assert "(plots/cosine_mean_diff_last.png)" in report

    one_row = fake_results(layer_sets=((10,),))  # a layer x strength heatmap with a single layer
    report = write_report(one_row, tmp_path / "one").read_text()
    written = {p.stem for p in (tmp_path / "one" / "plots").glob("*.png")}
    assert "layer_strength_logit_mean_diff_last_last" not in written and "layer_strength" not in report
    assert "val_curves_logit_relative" in written and "(plots/val_curves_logit_relative.png)" in report


def test_gated_and_constant_settings_at_the_same_layers_get_their_own_heatmap_rows(
    tmp_path: Path, figures: list[Any]
) -> None:
    drawn = _drawn(report_plots(fake_results(layer_sets=((10,),), gated=True), tmp_path), figures)
    fig = drawn["layer_strength_logit_mean_diff_last_last"]
    rows = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert rows == ["L10", "L10 gated by logistic@code_mean@L10 (sign)"]
