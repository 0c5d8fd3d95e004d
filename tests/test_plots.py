"""Report plots render from results data alone, and a broken plot never costs the results."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from vulnsteer.report.plots import plot_cross_cwe, report_plots

CWES = ["CWE-89", "CWE-78"]
PNG = b"\x89PNG\r\n\x1a\n"


def _metrics(rng: random.Random) -> dict[str, Any]:
    return {cwe: {"n": 6, "balanced_accuracy": rng.choice([0.5, 0.67, 0.83])} for cwe in [*CWES, "overall"]}


def fake_results(seed: int = 0) -> dict[str, Any]:
    """The parts of a sweep's results.json that the plots read."""
    rng = random.Random(seed)
    entries: list[dict[str, Any]] = [
        {"condition": {"kind": "baseline", "vector": None}, "setting": None, "metrics": _metrics(rng)}
    ]
    for layers in ([10], [15], [10, 15]):
        for strength in (-1.0, 0.5, 2.0):
            setting = {
                "method": "mean_diff",
                "pooling": "last",
                "layers": layers,
                "unit": "relative",
                "strength": strength,
                "positions": "last",
            }
            for kind in ("steered", "control"):
                for target in (None, "any"):
                    entries.append(
                        {
                            "condition": {"kind": kind, "vector": target},
                            "setting": setting,
                            "metrics": _metrics(rng),
                        }
                    )
    cross = {
        "vectors": [*CWES, "any"],
        "targets": CWES,
        "split": "test",
        "delta_balanced_accuracy": [[0.1, None], [-0.2, 0.0], [0.05, 0.3]],
        "chosen": {"CWE-89": "steered", "CWE-78": "baseline", "any": "steered"},
    }
    names = [*CWES, "any"]
    pca = {
        cwe: {
            "x": [rng.gauss(0, 1) for _ in range(8)],
            "y": [rng.gauss(0, 1) for _ in range(8)],
            "vulnerable": [i % 2 == 0 for i in range(8)],
            "explained": [0.4, 0.2],
        }
        for cwe in CWES
    }
    return {
        "data": {"cwes": CWES},
        "val": {"logit": entries},
        "cross_cwe": {"logit": cross},
        "cosine": {
            "mean_diff@last": {
                "cwes": names,
                "layers": {
                    "10": [[1.0 if a == b else 0.3 for b in names] for a in names],
                    "15": [[1.0 if a == b else -0.2 for b in names] for a in names],
                },
            }
        },
        "pca": {"last": {"layer": 15, "pooling": "last", "split": "train", "cwes": pca}},
    }


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
    results = fake_results()
    results["pca"] = {"last": {"layer": 15, "cwes": {"CWE-89": {"x": [1.0]}}}}  # missing fields
    made = report_plots(results, tmp_path)
    assert "plots/pca_last.png" not in made and "plots/cross_cwe_logit.png" in made


def test_empty_cross_matrix_draws_nothing(tmp_path: Path) -> None:
    empty = {"vectors": [], "targets": CWES, "delta_balanced_accuracy": [], "chosen": {}, "split": "test"}
    assert plot_cross_cwe(empty, tmp_path, "x.png", "t") is None
    assert not (tmp_path / "plots").exists()
