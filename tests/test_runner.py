"""`vulnsteer run`'s engine: per-CWE metrics, paired comparisons, verdict sentences, and the run end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from vulnsteer.detect.engine import DetectionRecord
from vulnsteer.experiment.engine import RunConfig
from vulnsteer.experiment.runner import compare_to_baseline, run_experiment, summarize_metrics, verdict_words
from vulnsteer.lm.model import LoadedModel


def _records(
    cwe: str, n_pairs: int, *, vuln: str = "vulnerable", secure: str = "secure", margin: float | None = None
) -> list[DetectionRecord]:
    """*n_pairs* pairs of *cwe*; every vulnerable sample gets verdict *vuln*, every secure one *secure*."""
    out = []
    for i in range(n_pairs):
        pid = f"{cwe}-p{i}"
        out.append(DetectionRecord(f"{pid}-v", cwe, pid, 1, vuln, margin=margin))
        out.append(DetectionRecord(f"{pid}-s", cwe, pid, 0, secure, margin=margin))
    return out


# ---------------------------------------------------------------- verdict_words


def test_verdict_words_significant_gain_that_beats_the_control() -> None:
    words = verdict_words(0.25, [0.1, 0.4], 0.01, 0.0)
    assert words == (
        "gain of +0.250 balanced accuracy is significant (p=0.01, 95% CI [+0.100, +0.400]); "
        "beats the random-direction control (+0.000)"
    )


def test_verdict_words_loss_not_significant_not_beating_the_control() -> None:
    words = verdict_words(-0.2, [-0.5, 0.1], 0.3, -0.1)
    assert words.startswith("loss of -0.200 balanced accuracy is not significant (p=0.3, 95% CI [-0.500, +0.100])")
    assert words.endswith("; does not beat the random-direction control (-0.100)")


@pytest.mark.parametrize(
    ("delta", "ci", "p", "expected"),
    [
        (0.2, [-0.05, 0.4], 0.01, "not significant"),  # a small p alone is not enough: the CI must exclude 0
        (0.2, [0.05, 0.4], 0.2, "not significant"),  # nor a CI alone
        (-0.3, [-0.5, -0.1], 0.004, "significant"),  # a significant loss
    ],
)
def test_verdict_words_significance_needs_both_p_and_ci(delta: float, ci: list[float], p: float, expected: str) -> None:
    words = verdict_words(delta, ci, p, None)
    assert f"balanced accuracy is {expected} " in words
    assert "control" not in words  # no control given, none mentioned


def test_verdict_words_zero_and_ties() -> None:
    words = verdict_words(0.0, [0.0, 0.0], 1.0, 0.1)
    assert words == "the chosen steering setting left balanced accuracy on test unchanged (Δ 0.000)"
    assert "does not beat the random-direction control (+0.100)" in verdict_words(0.1, [0.0, 0.2], 0.5, 0.1)


@pytest.mark.parametrize(("delta", "ci"), [(math.nan, [0.0, 0.1]), (0.1, [math.nan, math.nan]), (0.1, [0.0, math.nan])])
def test_verdict_words_not_measurable(delta: float, ci: list[float]) -> None:
    assert verdict_words(delta, ci, 0.5, 0.0) == "not measurable"


# ---------------------------------------------------------------- compare_to_baseline


def test_compare_to_baseline_delta_and_mcnemar_counts() -> None:
    # CWE-89: the baseline calls everything vulnerable (bal.acc 0.5), the steered run gets all 8 right (1.0)
    # CWE-78: both runs get everything right
    base = _records("CWE-89", 4, secure="vulnerable") + _records("CWE-78", 4)
    other = _records("CWE-89", 4) + _records("CWE-78", 4)
    out = compare_to_baseline(base, other, ["CWE-89", "CWE-78"])
    assert set(out) == {"CWE-89", "CWE-78", "overall"}

    sql = out["CWE-89"]
    assert sql["delta_balanced_accuracy"] == pytest.approx(0.5)
    assert sql["delta_ci"] == pytest.approx([0.5, 0.5])  # every pair-bootstrap replicate has the same delta
    assert (sql["mcnemar_b"], sql["mcnemar_c"]) == (0, 4)  # 4 secure samples: wrong before, right after
    assert sql["mcnemar_p"] == pytest.approx(0.125)  # two-sided exact binomial, 4 of 4

    cmd = out["CWE-78"]
    assert cmd["delta_balanced_accuracy"] == 0.0
    assert cmd["delta_ci"] == [0.0, 0.0]
    assert (cmd["mcnemar_b"], cmd["mcnemar_c"], cmd["mcnemar_p"]) == (0, 0, 1.0)

    overall = out["overall"]  # base: TPR 8/8, TNR 4/8 (CWE-78's secure samples only) -> 0.75; steered: 1.0
    assert overall["delta_balanced_accuracy"] == pytest.approx(0.25)
    assert (overall["mcnemar_b"], overall["mcnemar_c"]) == (0, 4)


def test_compare_to_baseline_counts_uncertain_as_wrong_and_is_symmetric() -> None:
    base = _records("CWE-89", 3)
    worse = [
        DetectionRecord(r.sample_id, r.cwe, r.pair_id, r.y_true, "uncertain" if r.y_true else r.verdict) for r in base
    ]
    out = compare_to_baseline(base, worse, ["CWE-89"])["CWE-89"]
    assert (out["mcnemar_b"], out["mcnemar_c"]) == (3, 0)
    assert out["delta_balanced_accuracy"] == pytest.approx(-0.5)  # TPR 1 -> 0, TNR stays 1
    back = compare_to_baseline(worse, base, ["CWE-89"])["CWE-89"]
    assert (back["mcnemar_b"], back["mcnemar_c"]) == (0, 3)
    assert back["mcnemar_p"] == out["mcnemar_p"] == pytest.approx(0.25)
    assert back["delta_balanced_accuracy"] == pytest.approx(0.5)


def test_compare_to_baseline_skips_cwes_whose_samples_differ() -> None:
    base = _records("CWE-89", 3) + _records("CWE-78", 2)
    other = _records("CWE-89", 3)[:-1] + _records("CWE-78", 2)  # one CWE-89 sample missing
    out = compare_to_baseline(base, other, ["CWE-89", "CWE-78", "CWE-22"])
    assert set(out) == {"CWE-78"}  # CWE-89 and overall differ in samples; CWE-22 has none
    assert compare_to_baseline([], [], ["CWE-89"]) == {}


# ---------------------------------------------------------------- summarize_metrics


def test_summarize_metrics_per_cwe_and_overall() -> None:
    records = _records("CWE-89", 3, margin=1.5) + _records("CWE-78", 2, secure="vulnerable", margin=-0.5)
    out = summarize_metrics(records, ["CWE-89", "CWE-78", "CWE-22"])
    assert list(out) == ["CWE-89", "CWE-78", "overall"]  # CWE-22 has no records
    assert (out["CWE-89"]["n"], out["CWE-78"]["n"], out["overall"]["n"]) == (6, 4, 10)
    assert out["CWE-89"]["n_pairs"] == 3
    assert out["CWE-89"]["balanced_accuracy"] == 1.0
    assert out["CWE-78"]["balanced_accuracy"] == 0.5
    assert out["CWE-78"]["pair_accuracy"] == 0.0
    assert out["overall"]["balanced_accuracy"] == pytest.approx((1.0 + 0.6) / 2)  # TPR 5/5, TNR 3/5
    lo, hi = out["overall"]["balanced_accuracy_ci"]
    assert lo <= out["overall"]["balanced_accuracy"] <= hi
    assert out["CWE-89"]["balanced_accuracy_ci"] == [1.0, 1.0]
    assert out["CWE-89"]["mean_margin"] == pytest.approx(1.5)
    assert out["overall"]["mean_margin"] == pytest.approx((6 * 1.5 + 4 * -0.5) / 10)
    json.dumps(out)  # plain data, ready for results.json


def test_summarize_metrics_without_margins_or_records() -> None:
    out = summarize_metrics(_records("CWE-89", 2), ["CWE-89"])
    assert out["CWE-89"]["mean_margin"] is None  # generation mode has no margins
    assert summarize_metrics([], ["CWE-89"]) == {}
    assert set(summarize_metrics(_records("CWE-89", 2), [])) == {"overall"}


# ---------------------------------------------------------------- generation runs the chosen strengths only


def test_generation_runs_only_the_strengths_chosen_on_logit_val() -> None:
    from vulnsteer.experiment.runner import _chosen_conditions, _conditions

    config = RunConfig(cwes=("CWE-89", "CWE-22"), strengths=(0.0, -1.0, 0.5, 1.0), unit="relative")
    conds = _conditions(config, [3])
    gen = [c for c in conds if c.mode == "generation"]
    assert [(c.kind, c.split) for c in gen] == [("baseline", "test")]  # phase 1: the generation baseline only
    logit = {(c.kind, c.split, c.strength) for c in conds if c.mode == "logit"}
    assert logit == {("baseline", s, 0.0) for s in ("val", "test")} | {
        (k, s, x) for k in ("steered", "control") for s in ("val", "test") for x in (-1.0, 0.5, 1.0)
    }
    # logit val: CWE-89 is perfect at +0.5 (and at +1: the tie goes to the smaller strength); CWE-22 gains nothing
    perfect = {"CWE-89": _records("CWE-89", 3), "CWE-22": _records("CWE-22", 3)}
    always = {cwe: _records(cwe, 3, secure="vulnerable") for cwe in perfect}
    records = {}
    for c in conds:
        good = c.split == "val" and c.kind == "steered" and c.strength in (0.5, 1.0)
        records[c.key] = perfect["CWE-89"] + always["CWE-22"] if good else always["CWE-89"] + always["CWE-22"]
    extra = _chosen_conditions(config, conds, records, ["CWE-89", "CWE-22"])
    assert [(c.kind, c.mode, c.split, c.strength, c.unit, c.layers) for c in extra] == [
        (kind, "generation", "test", 0.5, "relative", (3,)) for kind in ("steered", "control")
    ]
    # when nothing beats the baseline on val, generation runs the baseline alone
    flat = {c.key: always["CWE-89"] + always["CWE-22"] for c in conds}
    assert _chosen_conditions(config, conds, flat, ["CWE-89", "CWE-22"]) == []
    # generation-only runs choose on their own val split, every strength (no second phase)
    solo = RunConfig(strengths=(1.0,), modes=("generation",))
    assert {(c.kind, c.split) for c in _conditions(solo, [3])} == {
        (k, s) for k in ("baseline", "steered", "control") for s in ("val", "test")
    }
    assert _chosen_conditions(solo, _conditions(solo, [3]), {}, []) == []


# ---------------------------------------------------------------- end to end on a tiny random model


def test_run_experiment_end_to_end(tmp_path: Path, tiny_llama: LoadedModel) -> None:
    config = RunConfig(
        cwes=("CWE-89", "CWE-22"), strengths=(0.0, 2.0), max_new_tokens=3, max_code_tokens=64, layers=(1,), n_examples=1
    )
    out = run_experiment(config, tmp_path / "run", lm=tiny_llama, progress=False)
    results = json.loads((out / "results.json").read_text())
    report = (out / "report.md").read_text()
    assert results["schema_version"] == 1
    assert results["config"]["strengths"] == [0.0, 2.0]
    assert set(results["summary"]) == {"logit", "generation"}
    kinds = {e["condition"]["kind"] for e in results["conditions"]}
    assert kinds == {"baseline", "steered", "control"}
    for key, records in results["records"].items():
        assert records, key
        if "|generation|" in key:
            assert all(r["text"].startswith("Answer:") for r in records)
    for row in results["summary"]["logit"].values():
        assert row["split"] == "test" and "words" in row
    assert "random control" in report and "sign convention" in report
    assert (out / "vectors").is_dir() and list((out / "vectors").glob("*.safetensors"))
    assert results["probes"]
    assert {p["detector"] for p in results["probes"]} == {"direction", "logistic", "length"}  # + the length control
    assert "`length` is their control" in report
    # a rerun on the same directory resumes: nothing recomputed, same results
    before = (out / "records.jsonl").read_text()
    run_experiment(config, out, lm=tiny_llama, progress=False)
    assert (out / "records.jsonl").read_text() == before


def test_unusable_data_is_an_error_that_leaves_no_run_directory(tmp_path: Path, tiny_llama: LoadedModel) -> None:
    data = tmp_path / "two.jsonl"
    data.write_text(
        '{"code": "x", "label": "vulnerable", "cwe": "CWE-89", "pair_id": "a"}\n'
        '{"code": "y", "label": "secure", "cwe": "CWE-89", "pair_id": "a"}\n',
        encoding="utf-8",
    )
    with pytest.raises(ValueError, match=rf"{data}: the val split is empty"):
        run_experiment(RunConfig(data=str(data), layers=(1,)), tmp_path / "run", lm=tiny_llama, progress=False)
    with pytest.raises(ValueError, match=rf"{data}: respect_upstream: none of the 2 samples"):
        run_experiment(
            RunConfig(data=str(data), layers=(1,), respect_upstream=True),
            tmp_path / "run",
            lm=tiny_llama,
            progress=False,
        )
    assert not (tmp_path / "run").exists()
