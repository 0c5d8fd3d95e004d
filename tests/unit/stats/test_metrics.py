from __future__ import annotations

import json
import math
import random
import warnings

import numpy as np
import pytest

from vulnsteer.stats.metrics import (
    METRIC_NAMES,
    McNemarResult,
    Prediction,
    _clusters,
    _Replicates,
    bootstrap_ci,
    bootstrap_diff_ci,
    compute_metrics,
    mcnemar_exact,
    per_cwe,
)


def P(
    sid: str, y_true: int, y_pred: int, pair: str | None = None, cwe: str = "CWE-89", score: float | None = None
) -> Prediction:
    return Prediction(sample_id=sid, cwe=cwe, pair_id=pair, y_true=y_true, y_pred=y_pred, score=score)


def hand_example() -> list[Prediction]:
    """4 pairs + 3 unpaired samples; TP=4 FN=2 FP=3 TN=2 once uncertain counts as wrong."""
    return [
        P("v1", 1, 1, "A"),
        P("s1", 0, 0, "A"),  # pair right
        P("v2", 1, 1, "B"),
        P("s2", 0, 1, "B"),  # FP
        P("v3", 1, 0, "C"),
        P("s3", 0, 0, "C"),  # FN
        P("v4", 1, -1, "D"),
        P("s4", 0, -1, "D"),  # uncertain: FN and FP
        P("u1", 1, 1),
        P("u2", 0, 1),
        P("u3", 1, 1),
    ]


def paired_dataset(n_pairs: int, p_right: float, seed: int, prefix: str = "") -> list[Prediction]:
    rng = random.Random(seed)
    out: list[Prediction] = []
    for i in range(n_pairs):
        for y in (1, 0):
            right = rng.random() < p_right
            score = rng.random() * 0.5 + (0.5 if (y == 1) == right else 0.0)
            out.append(P(f"{prefix}{i}-{y}", y, y if right else 1 - y, f"{prefix}p{i}", score=score))
    return out


# ------------------------------------------------------------------------------------------ metrics


def test_hand_computed_metrics() -> None:
    m = compute_metrics(hand_example())
    assert (m.n, m.n_vulnerable, m.n_secure, m.n_pairs) == (11, 6, 5, 4)
    assert m.accuracy == pytest.approx(6 / 11)
    assert m.tpr == m.recall == pytest.approx(4 / 6)
    assert m.tnr == pytest.approx(2 / 5)
    assert m.fpr == pytest.approx(3 / 5)
    assert m.balanced_accuracy == pytest.approx((4 / 6 + 2 / 5) / 2)
    assert m.precision == pytest.approx(4 / 7)
    assert m.f1 == pytest.approx(2 * 4 / (2 * 4 + 3 + 2))
    assert m.mcc == pytest.approx((4 * 2 - 3 * 2) / math.sqrt(7 * 6 * 5 * 4))
    assert m.pair_accuracy == pytest.approx(1 / 4)
    assert m.vulnerable_rate == pytest.approx(6 / 11)  # uncertain answers do not say "vulnerable"
    assert m.uncertain_rate == pytest.approx(2 / 11)
    assert m.auroc is None  # no scores


def test_auroc_hand_computed() -> None:
    preds = [P("a", 1, 1, score=0.9), P("b", 1, 0, score=0.4), P("c", 0, 0, score=0.3), P("d", 0, 1, score=0.8)]
    preds.append(P("e", 0, 0, score=0.1))
    # positive/negative orderings: 0.9 beats all three, 0.4 beats 0.3 and 0.1 but not 0.8 -> 5/6
    assert compute_metrics(preds).auroc == pytest.approx(5 / 6)
    preds.append(P("f", 1, 1))  # one missing score: no AUROC rather than a biased one
    assert compute_metrics(preds).auroc is None


def test_always_vulnerable_predictor_gains_nothing() -> None:
    """The critique this project must survive: saying "vulnerable" to everything is not detection."""
    preds = [P(f"{i}-{y}", y, 1, f"p{i}", score=0.99) for i in range(20) for y in (1, 0)]
    m = compute_metrics(preds)
    assert m.recall == 1.0
    assert m.accuracy == 0.5
    assert m.balanced_accuracy == 0.5
    assert m.pair_accuracy == 0.0
    assert m.vulnerable_rate == 1.0
    assert m.mcc == 0.0
    assert m.auroc == 0.5
    assert m.tnr == 0.0 and m.fpr == 1.0


def test_uncertain_is_wrong_for_both_classes() -> None:
    preds = [P(f"{i}-{y}", y, -1, f"p{i}") for i in range(3) for y in (1, 0)]
    m = compute_metrics(preds)
    assert (m.accuracy, m.balanced_accuracy, m.tpr, m.tnr, m.pair_accuracy) == (0.0, 0.0, 0.0, 0.0, 0.0)
    assert m.vulnerable_rate == 0.0 and m.uncertain_rate == 1.0
    # on effective predictions an uncertain answer on a secure sample is a false positive: precision 0 / 3,
    # and a model that is always uncertain is "always wrong", i.e. below chance (MCC -1)
    assert m.precision == 0.0 and m.f1 == 0.0
    assert m.mcc == pytest.approx(-1.0)


def test_single_class_present() -> None:
    preds = [P("a", 1, 1, score=0.9), P("b", 1, 1, score=0.8), P("c", 1, 1, score=0.7), P("d", 1, 0, score=0.1)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no sklearn warning spam
        m = compute_metrics(preds)
    assert m.balanced_accuracy == pytest.approx(0.75)  # = recall of the only class present
    assert m.auroc is None
    assert m.mcc == 0.0
    assert math.isnan(m.tnr) and math.isnan(m.fpr)
    assert m.pair_accuracy is None and m.n_pairs == 0
    d = m.to_dict()
    assert d["tnr"] is None and d["auroc"] is None and d["balanced_accuracy"] == pytest.approx(0.75)
    json.dumps(d, allow_nan=False)


def test_secure_only() -> None:
    m = compute_metrics([P("a", 0, 0), P("b", 0, 1)])
    assert m.balanced_accuracy == pytest.approx(0.5)  # tnr
    assert math.isnan(m.tpr) and math.isnan(m.recall)
    assert m.precision == 0.0 and m.f1 == 0.0


def test_pair_accuracy_needs_complete_pairs() -> None:
    preds = [P("v1", 1, 1, "A"), P("s1", 0, 0, "A"), P("v2", 1, 1, "B"), P("v3", 1, 1, "C"), P("s3", 0, 1, "C")]
    m = compute_metrics(preds)
    assert m.n_pairs == 2  # B has only its vulnerable half
    assert m.pair_accuracy == pytest.approx(0.5)


def test_empty_and_invalid_input() -> None:
    with pytest.raises(ValueError):
        compute_metrics([])
    with pytest.raises(ValueError):
        P("x", 2, 1)
    with pytest.raises(ValueError):
        P("x", 1, 5)


def test_per_cwe() -> None:
    preds = [P("a", 1, 1, cwe="CWE-787"), P("b", 0, 0, cwe="CWE-89"), P("c", 1, 0, cwe="CWE-89")]
    groups = per_cwe(preds)
    assert list(groups) == ["CWE-89", "CWE-787", "overall"]
    assert [p.sample_id for p in groups["CWE-89"]] == ["b", "c"]
    assert len(groups["overall"]) == 3


# ------------------------------------------------------------------------------------------ bootstrap


@pytest.mark.parametrize("seed", range(6))
def test_replicates_match_compute_metrics(seed: int) -> None:
    """The vectorised bootstrap formulas agree with compute_metrics on an explicitly resampled list."""
    rng = random.Random(seed)
    preds: list[Prediction] = []
    for i in range(15):
        pair = f"p{i}" if i < 10 else None
        for y in (1, 0) if pair else (rng.randint(0, 1),):
            score = round(rng.random(), 1)  # ties, to check the AUROC's tie handling
            preds.append(P(f"{i}-{y}", y, rng.choice([1, 0, 0, 1, -1]), pair, score=score))
    clusters = _clusters(preds)
    n_clusters = int(clusters.max()) + 1
    rep = _Replicates(preds, clusters, n_clusters)
    np_rng = np.random.default_rng(seed)
    for mult in [np.ones(n_clusters, dtype=np.int64), np_rng.multinomial(n_clusters, [1 / n_clusters] * n_clusters)]:
        # a cluster drawn k times is k distinct pairs, as in the bootstrap
        expanded = []
        for c in range(n_clusters):
            for k in range(mult[c]):
                for p, pc in zip(preds, clusters, strict=True):
                    if pc == c:
                        pid = f"{p.pair_id}#{k}" if p.pair_id else None
                        expanded.append(P(f"{p.sample_id}#{k}", p.y_true, p.y_pred, pid, score=p.score))
        expected = compute_metrics(expanded).to_dict()
        for metric in METRIC_NAMES:
            got = float(rep(metric, mult[None, :])[0])
            want = expected[metric]
            if want is None:
                assert math.isnan(got), metric
            else:
                assert got == pytest.approx(want), metric


def test_ci_contains_point_estimate_and_is_deterministic() -> None:
    preds = paired_dataset(60, 0.7, seed=1)
    m = compute_metrics(preds).to_dict()
    for metric in ("balanced_accuracy", "accuracy", "mcc", "pair_accuracy", "auroc", "f1", "tpr"):
        low, high = bootstrap_ci(preds, metric, n_boot=300, seed=3)
        assert low <= m[metric] <= high, metric
        assert low < high, metric
    assert bootstrap_ci(preds, n_boot=200, seed=5) == bootstrap_ci(preds, n_boot=200, seed=5)
    assert bootstrap_ci(preds, n_boot=200, seed=5) != bootstrap_ci(preds, n_boot=200, seed=6)


def test_ci_narrows_with_more_data() -> None:
    small = paired_dataset(25, 0.7, seed=2)
    big = [P(f"{k}:{p.sample_id}", p.y_true, p.y_pred, f"{k}:{p.pair_id}") for k in range(6) for p in small]
    lo_s, hi_s = bootstrap_ci(small, n_boot=500)
    lo_b, hi_b = bootstrap_ci(big, n_boot=500)
    assert hi_b - lo_b < 0.6 * (hi_s - lo_s)


def test_pair_bootstrap_keeps_pairs_together() -> None:
    # always "vulnerable": every pair holds one vulnerable (right) and one secure (wrong) answer. Resampling
    # whole pairs keeps both classes balanced in every replicate, so balanced accuracy is exactly 0.5 each
    # time; resampling samples one by one would not.
    paired = [P(f"{i}-{y}", y, 1, f"p{i}") for i in range(20) for y in (1, 0)]
    assert bootstrap_ci(paired, "balanced_accuracy", n_boot=300) == (0.5, 0.5)
    assert bootstrap_ci(paired, "accuracy", n_boot=300) == (0.5, 0.5)
    unpaired = [P(p.sample_id, p.y_true, p.y_pred, None) for p in paired]
    low, high = bootstrap_ci(unpaired, "accuracy", n_boot=300)
    assert high - low > 0.1
    # and correlated halves (both right or both wrong) widen the interval compared with independent samples
    corr = [P(f"{i}-{y}", y, y if i % 2 else 1 - y, f"p{i}") for i in range(30) for y in (1, 0)]
    corr_unpaired = [P(p.sample_id, p.y_true, p.y_pred, None) for p in corr]
    w_pairs = np.subtract(*bootstrap_ci(corr, "accuracy", n_boot=1000)[::-1])
    w_iid = np.subtract(*bootstrap_ci(corr_unpaired, "accuracy", n_boot=1000)[::-1])
    assert w_pairs > 1.2 * w_iid


def test_bootstrap_is_nan_safe() -> None:
    # one vulnerable sample among many secure ones: TPR is undefined in replicates that miss it
    preds = [P("v", 1, 1)] + [P(f"s{i}", 0, int(i % 3 == 0)) for i in range(30)]
    low, high = bootstrap_ci(preds, "tpr", n_boot=200)
    assert (low, high) == (1.0, 1.0)
    assert all(math.isnan(x) for x in bootstrap_ci([P("s", 0, 0)], "tpr", n_boot=20))
    assert all(math.isnan(x) for x in bootstrap_ci(preds, "auroc", n_boot=20))  # no scores


def test_bootstrap_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        bootstrap_ci([], n_boot=10)
    with pytest.raises(ValueError):
        bootstrap_ci([P("a", 1, 1)], "nonsense", n_boot=10)


def test_bootstrap_diff_ci() -> None:
    base = paired_dataset(60, 0.6, seed=4)
    assert bootstrap_diff_ci(base, list(reversed(base)), n_boot=200) == (0.0, 0.0)
    # steered fixes every wrong answer of base
    steered = [P(p.sample_id, p.y_true, p.y_true, p.pair_id) for p in reversed(base)]
    low, high = bootstrap_diff_ci(base, steered, n_boot=300, seed=1)
    diff = compute_metrics(steered).balanced_accuracy - compute_metrics(base).balanced_accuracy
    assert 0 < low <= diff <= high
    # pushing every answer to "vulnerable" raises recall but not balanced accuracy above zero for sure
    always = [P(p.sample_id, p.y_true, 1, p.pair_id) for p in base]
    assert bootstrap_diff_ci(base, always, "recall", n_boot=300)[0] > 0
    assert bootstrap_diff_ci(base, always, "vulnerable_rate", n_boot=300)[0] > 0
    lo_ba, _ = bootstrap_diff_ci(base, always, "balanced_accuracy", n_boot=300)
    assert lo_ba < 0
    assert bootstrap_diff_ci(base, steered, n_boot=100, seed=2) == bootstrap_diff_ci(base, steered, n_boot=100, seed=2)


def test_bootstrap_diff_ci_uses_the_same_clusters() -> None:
    # steered is right exactly where base is; a paired bootstrap gives a zero-width interval even though each
    # run's own interval is wide
    base = paired_dataset(40, 0.5, seed=5)
    steered = [P(p.sample_id, p.y_true, p.y_pred, p.pair_id) for p in base]
    lo, hi = bootstrap_ci(base, n_boot=200)
    assert hi - lo > 0.1
    assert bootstrap_diff_ci(base, steered, n_boot=200) == (0.0, 0.0)


def test_bootstrap_diff_ci_rejects_mismatched_runs() -> None:
    base = [P("a", 1, 1), P("b", 0, 0)]
    with pytest.raises(ValueError, match="different samples"):
        bootstrap_diff_ci(base, [P("a", 1, 1), P("c", 0, 0)], n_boot=10)
    with pytest.raises(ValueError, match="y_true"):
        bootstrap_diff_ci(base, [P("a", 1, 1), P("b", 1, 0)], n_boot=10)
    with pytest.raises(ValueError, match="duplicate"):
        bootstrap_diff_ci(base, [P("a", 1, 1), P("b", 0, 0), P("b", 0, 0)], n_boot=10)


# ------------------------------------------------------------------------------------------ McNemar


def test_mcnemar_known_p_value() -> None:
    base = [P(f"w{i}", 1, 0) for i in range(6)] + [P(f"r{i}", 0, 0) for i in range(10)]
    steered = [P(f"w{i}", 1, 1) for i in range(6)] + [P(f"r{i}", 0, 0) for i in range(10)]
    result = mcnemar_exact(base, list(reversed(steered)))
    assert (result.b, result.c) == (0, 6)
    assert result.p_value == pytest.approx(0.03125)
    assert result.statistic == 0.0
    # b=1, c=5: two-sided exact p = 2 * (1 + 6) / 64
    steered[0] = P("w0", 1, -1)  # uncertain counts as wrong
    base[6] = P("r0", 0, 0)
    steered[6] = P("r0", 0, 1)
    result = mcnemar_exact(base, steered)
    assert (result.b, result.c) == (1, 5)
    assert result.p_value == pytest.approx(14 / 64)


def test_mcnemar_identical_predictions() -> None:
    preds = paired_dataset(20, 0.6, seed=7)
    assert mcnemar_exact(preds, preds) == McNemarResult(b=0, c=0, p_value=1.0, statistic=0.0)


def test_mcnemar_rejects_different_samples() -> None:
    with pytest.raises(ValueError):
        mcnemar_exact([P("a", 1, 1)], [P("b", 1, 1)])


def test_point_metrics_match_compute_metrics() -> None:
    from vulnsteer.stats.metrics import point_metrics

    rng = random.Random(0)
    names = ("balanced_accuracy", "accuracy", "tpr", "fpr", "pair_accuracy", "vulnerable_rate", "auroc")
    for trial in range(20):
        preds = [
            Prediction(
                f"s{i}",
                "CWE-89",
                f"p{i // 2}" if trial % 3 else None,
                rng.randint(0, 1) if trial % 5 else 1,
                rng.choice([1, 0, -1]),
                rng.random() if trial % 2 else None,
            )
            for i in range(rng.randint(1, 12))
        ]
        full = compute_metrics(preds).to_dict()
        fast = point_metrics(preds, names)
        for name in names:
            assert fast[name] == pytest.approx(full[name], nan_ok=True), (trial, name)
    assert point_metrics([], names) == {name: None for name in names}
