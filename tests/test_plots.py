"""Report plots render from results data alone, and a broken plot never costs the results."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

from vulnsteer.experiment.grid import Condition, Setting
from vulnsteer.experiment.header import DataInfo
from vulnsteer.experiment.results import CosineBlock, FamilyResults, PcaBlock, PcaPoints, Results, ValEntry
from vulnsteer.experiment.tables import CrossCwe, HeldOutTable, PointMetrics
from vulnsteer.report.plots import plot_cross_cwe, report_plots

CWES = ["CWE-89", "CWE-78"]
PNG = b"\x89PNG\r\n\x1a\n"


def _metrics(rng: random.Random) -> dict[str, PointMetrics]:
    return {cwe: PointMetrics(6, rng.choice([0.5, 0.67, 0.83])) for cwe in [*CWES, "overall"]}


def fake_results(seed: int = 0) -> Results:
    """The parts of a sweep's results that the plots read."""
    rng = random.Random(seed)
    entries = [ValEntry(Condition("baseline", "logit", "val"), _metrics(rng))]
    for layers in ((10,), (15,), (10, 15)):
        for strength in (-1.0, 0.5, 2.0):
            setting = Setting("mean_diff", "last", layers, "relative", strength, "last")
            for role in ("steered", "control"):
                for target in (None, "any"):
                    entries.append(ValEntry(setting.condition(role, "logit", "val", target), _metrics(rng), "constant"))
    cross = CrossCwe(
        (*CWES, "any"),
        tuple(CWES),
        ((0.1, None), (-0.2, 0.0), (0.05, 0.3)),
        "test",
        {"CWE-89": "steered", "CWE-78": "baseline", "any": "steered"},
    )
    names = (*CWES, "any")
    pca = {
        cwe: PcaPoints(
            tuple(rng.gauss(0, 1) for _ in range(8)),
            tuple(rng.gauss(0, 1) for _ in range(8)),
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
