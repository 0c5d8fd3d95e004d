"""The probe detector on synthetic activations (no model): recovery, sign, val-only choices, edge cases."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch

from vulnsteer.config.design import ProbeDesign
from vulnsteer.data.sample import Sample
from vulnsteer.detection.probe import ProbeData, choose_threshold, fit_logistic_probe, fit_probe
from vulnsteer.detection.probe_table import OVERALL, ProbeResult, evaluate_probes
from vulnsteer.lm.activations import Activations
from vulnsteer.report.probes import PROBE_TABLE_COLUMNS, probe_table
from vulnsteer.steering.probe import AdaptationError

HIDDEN = 16
LAYERS = [0, 1]  # layer 0: pure noise, layer 1: planted signal


def unit(i: int) -> torch.Tensor:
    v = torch.zeros(HIDDEN)
    v[i] = 1.0
    return v


def make_split(
    name: str,
    n_pairs: Mapping[str, int],
    *,
    seed: int,
    signal: float = 3.0,
    axes: Mapping[str, torch.Tensor] | None = None,
    drop: Mapping[str, str] | None = None,
) -> tuple[Activations, list[Sample]]:
    """Paired samples per CWE; at layer 1, secure rows sit at ``+signal * axis`` and vulnerable at ``-signal * axis``.

    *drop* removes one class of a CWE (``{"CWE-79": "secure"}``) to build single-class splits.
    """
    gen = torch.Generator().manual_seed(seed)
    axes = axes or {}
    drop = drop or {}
    samples: list[Sample] = []
    rows: list[torch.Tensor] = []
    for cwe, count in n_pairs.items():
        axis = axes.get(cwe, unit(0))
        for p in range(count):
            for label in ("secure", "vulnerable"):
                if drop.get(cwe) == label:
                    continue
                sign = 1.0 if label == "secure" else -1.0
                noise = torch.randn(len(LAYERS), HIDDEN, generator=gen)
                noise[1] += sign * signal * axis
                rows.append(noise)
                pid = f"{name}-{cwe}-{p}"
                samples.append(Sample(f"{pid}-{label[0]}", "x", "c", cwe, label, pair_id=pid))
    last = torch.stack(rows)
    code_mean = last * 0.5 + 0.1 * torch.randn(last.shape, generator=gen)
    acts = Activations(
        layers=list(LAYERS), sample_ids=[s.id for s in samples], by_pooling={"last": last, "code_mean": code_mean}
    )
    return acts, samples


def pick(results: Sequence[ProbeResult], **kw: object) -> ProbeResult:
    found = [r for r in results if all(getattr(r, k) == v for k, v in kw.items())]
    assert len(found) == 1, (kw, found)
    return found[0]


def splits(n: int = 60, **kw: object) -> tuple[tuple[Activations, list[Sample]], ...]:
    counts = {"CWE-89": n}
    return (
        make_split("train", counts, seed=1, **kw),  # type: ignore[arg-type]
        make_split("val", counts, seed=2, **kw),  # type: ignore[arg-type]
        make_split("test", counts, seed=3, **kw),  # type: ignore[arg-type]
    )


# ------------------------------------------------------------------------------------------ scores


def test_direction_probe_sign_and_centre() -> None:
    # secure rows at x0 = +1, vulnerable rows at x0 = -1 (the second coordinate is constant): the class-mean
    # direction scores the vulnerable side higher, and 0 is the midpoint of the two class means
    train = torch.tensor([[1.0, 5.0], [1.0, 5.0], [-1.0, 5.0], [-1.0, 5.0]])
    y = np.array([0, 0, 1, 1])
    probe = fit_probe(ProbeDesign((0,), ("last",), "direction"), ProbeData(train, y), ProbeData(train, y))
    scores = probe.score_matrix(torch.tensor([[1.0, 5.0], [-1.0, 5.0], [3.0, 0.0], [0.0, 5.0]]))
    np.testing.assert_allclose(scores.numpy(), [-1.0, 1.0, -3.0, 0.0], atol=1e-6)  # vulnerable side scores higher
    assert probe.threshold == 0.0  # the natural threshold separates val perfectly
    with pytest.raises(ValueError, match="state columns"):
        fit_probe(
            ProbeDesign((0, 1), ("last",), "direction"), ProbeData(train[:, :1].repeat(1, 3), y), ProbeData(train, y)
        )


def test_logistic_probe_deterministic_and_vulnerable_positive() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, HIDDEN, generator=gen)
    y = np.array([1] * 20 + [0] * 20)
    x[:20, 0] -= 3.0
    a = fit_logistic_probe(x, y, seed=0)
    b = fit_logistic_probe(x.numpy(), y, seed=0)
    np.testing.assert_array_equal(a.decision_function(x.numpy()), b.decision_function(x.numpy()))
    assert a.decision_function(x.numpy())[:20].mean() > 0 > a.decision_function(x.numpy())[20:].mean()
    with pytest.raises(ValueError, match="both classes"):
        fit_logistic_probe(x, np.ones(40))


# ------------------------------------------------------------------------------------------ threshold


def test_choose_threshold_separable() -> None:
    scores = [-3.0, -2.0, -1.0, 1.0, 2.0, 3.0]
    y = [0, 0, 0, 1, 1, 1]
    t = choose_threshold(scores, y, reference=0.0)
    assert t == 0.0  # 0 lies in the best cell (-1, 1): the reference itself
    t = choose_threshold(scores, y, reference=5.0)
    assert -1.0 <= t < 1.0 and t == 0.0  # nearest best cell, represented by its midpoint
    assert choose_threshold(scores, y) == 0.0  # default reference: the median


def test_choose_threshold_rule_is_score_greater_than_threshold() -> None:
    scores = np.array([0.0, 1.0, 1.0, 2.0])
    y = np.array([0, 0, 1, 1])
    t = choose_threshold(scores, y, reference=1.0)
    pred = (scores > t).astype(int)
    bal = ((pred[y == 1] == 1).mean() + (pred[y == 0] == 0).mean()) / 2
    assert bal == pytest.approx(0.75)


def test_choose_threshold_ties_go_to_reference() -> None:
    # every threshold in [-1, 5) is perfect; the tie is broken toward the reference
    scores = [-2.0, -1.0, 5.0, 6.0]
    y = [0, 0, 1, 1]
    assert choose_threshold(scores, y, reference=0.5) == 0.5
    assert choose_threshold(scores, y, reference=100.0) == 2.0  # the best cell's midpoint


def test_choose_threshold_single_class_returns_reference() -> None:
    assert choose_threshold([1.0, 2.0], [1, 1], reference=0.25) == 0.25
    assert choose_threshold([], [], reference=None) == 0.0
    with pytest.raises(ValueError):
        choose_threshold([1.0, 2.0], [1])


# ------------------------------------------------------------------------------------------ evaluate


def test_planted_direction_recovered_and_noise_is_chance() -> None:
    train, val, test = splits(n=100)
    results = evaluate_probes(train, val, test, n_boot=200)
    assert {(r.pooling, r.layer, r.cwe, r.detector) for r in results} == {
        (p, layer, c, d)
        for p in ("last", "code_mean")
        for layer in LAYERS
        for c in ("CWE-89", OVERALL)
        for d in ("direction", "logistic")
    }
    for det in ("direction", "logistic"):
        for pos in ("last", "code_mean"):
            signal = pick(results, detector=det, pooling=pos, layer=1, cwe="CWE-89")
            assert signal.test_auroc is not None and signal.test_auroc > 0.99  # and > 0.5: the sign is right
            assert signal.test_balanced_accuracy > 0.95
            lo, hi = signal.balanced_accuracy_ci
            assert lo <= signal.test_balanced_accuracy <= hi
            noise = pick(results, detector=det, pooling=pos, layer=0, cwe="CWE-89")
            assert noise.test_auroc is not None and abs(noise.test_auroc - 0.5) < 0.15
            assert signal.n_train == signal.n_val == signal.n_test == 200
    best = pick(results, detector="direction", pooling="last", layer=1, cwe="CWE-89")
    assert abs(best.threshold) < 1.0  # the train midpoint is about right on val too
    # vulnerable samples score higher
    vul = [p.score for p in best.predictions if p.y_true == 1]
    sec = [p.score for p in best.predictions if p.y_true == 0]
    assert np.mean(vul) > 2.0 and np.mean(sec) < -2.0  # type: ignore[arg-type]


def test_permuting_test_labels_changes_no_choice() -> None:
    train, val, (test_acts, test_samples) = splits(n=40)
    rng = np.random.default_rng(0)
    labels = [s.label for s in test_samples]
    shuffled = [labels[i] for i in rng.permutation(len(labels))]
    permuted = [replace(s, label=lab) for s, lab in zip(test_samples, shuffled, strict=True)]
    assert [s.label for s in permuted] != labels
    a = evaluate_probes(train, val, (test_acts, test_samples), n_boot=100)
    b = evaluate_probes(train, val, (test_acts, permuted), n_boot=100)
    assert len(a) == len(b)
    changed = 0
    for ra, rb in zip(a, b, strict=True):
        assert (ra.detector, ra.pooling, ra.layer, ra.cwe) == (rb.detector, rb.pooling, rb.layer, rb.cwe)
        assert ra.threshold == rb.threshold
        assert (ra.val_auroc, ra.val_balanced_accuracy) == (rb.val_auroc, rb.val_balanced_accuracy)
        # the fitted probe is the same function: identical scores and verdicts on every test sample
        assert [(p.sample_id, p.score, p.y_pred) for p in ra.predictions] == [
            (p.sample_id, p.score, p.y_pred) for p in rb.predictions
        ]
        changed += ra.test_balanced_accuracy != rb.test_balanced_accuracy
    assert changed  # only the final test metrics see test labels


def test_fit_probe_uses_val_for_threshold_only() -> None:
    (tr_a, tr_s), (va_a, va_s), _ = splits(n=30)
    tr_x, va_x = tr_a.get("last", 1), va_a.get("last", 1)
    tr_y, va_y = np.array([s.y for s in tr_s]), np.array([s.y for s in va_s])
    design = ProbeDesign((1,), ("last",))
    fitted = fit_probe(design, ProbeData(tr_x, tr_y), ProbeData(va_x, va_y))
    other_val = fit_probe(design, ProbeData(tr_x, tr_y), ProbeData(va_x[:10], va_y[:10]))
    np.testing.assert_array_equal(fitted.score_matrix(tr_x), other_val.score_matrix(tr_x))  # val does not touch the fit
    with pytest.raises(ValueError, match="unknown probe kind"):
        ProbeDesign((1,), ("last",), "nope")


def test_per_cwe_directions_versus_pooled() -> None:
    # CWE-89 and CWE-79 carry the signal along opposite axes: each CWE's own direction separates it,
    # the pooled mean difference cancels out
    counts = {"CWE-89": 60, "CWE-79": 60}
    axes = {"CWE-89": unit(0), "CWE-79": -unit(0)}
    train, val, test = (make_split(n, counts, seed=s, axes=axes) for n, s in (("tr", 1), ("va", 2), ("te", 3)))
    results = evaluate_probes(train, val, test, poolings=("last",), layers=[1], kinds=("direction",), n_boot=100)
    assert [r.cwe for r in results] == ["CWE-79", "CWE-89", OVERALL]  # CWE-number order, overall last
    for cwe in ("CWE-79", "CWE-89"):
        r = pick(results, cwe=cwe)
        assert r.test_auroc is not None and r.test_auroc > 0.99
        assert r.n_train == r.n_test == 120
    overall = pick(results, cwe=OVERALL)
    assert overall.n_train == 240
    assert overall.test_auroc is not None and abs(overall.test_auroc - 0.5) < 0.15
    only_overall = evaluate_probes(train, val, test, poolings=("last",), layers=[1], per_cwe=False, n_boot=100)
    assert {r.cwe for r in only_overall} == {OVERALL}


def test_one_class_and_small_cwes_do_not_crash() -> None:
    counts = {"CWE-89": 30, "CWE-79": 10, "CWE-22": 10, "CWE-78": 10, "CWE-20": 10}
    train = make_split("tr", {**counts, "CWE-22": 1}, seed=1)  # CWE-22: one pair in train -> skipped
    val = make_split("va", counts, seed=2, drop={"CWE-79": "secure"})  # CWE-79: val has one class
    test = make_split(
        "te", {k: v for k, v in counts.items() if k != "CWE-20"}, seed=3, drop={"CWE-78": "vulnerable"}
    )  # CWE-78: test one class, CWE-20: no test samples
    results = evaluate_probes(train, val, test, poolings=("last",), layers=[1], n_boot=100)

    skipped = pick(results, cwe="CWE-22", detector="direction")
    assert skipped.is_skipped and "1 vulnerable and 1 secure" in str(skipped.skipped)
    assert math.isnan(skipped.test_balanced_accuracy) and skipped.test_auroc is None
    assert "no test samples" in str(pick(results, cwe="CWE-20", detector="logistic").skipped)

    one_val = pick(results, cwe="CWE-79", detector="logistic")
    assert not one_val.is_skipped and one_val.threshold == 0.0 and one_val.val_auroc is None
    assert any("val has one class" in n for n in one_val.notes)
    assert one_val.test_auroc is not None

    one_test = pick(results, cwe="CWE-78", detector="direction")
    assert one_test.test_auroc is None and any("test has one class" in n for n in one_test.notes)
    assert one_test.test_balanced_accuracy > 0.9  # recall of the secure class
    assert not pick(results, cwe=OVERALL, detector="direction").is_skipped

    rows = probe_table(results)
    assert all(tuple(row) == PROBE_TABLE_COLUMNS for row in rows)
    row = rows[results.index(skipped)]
    assert row["test bal.acc [95% CI]"].startswith("skipped:") and row["test AUROC"] == "–"
    assert rows[results.index(one_test)]["test AUROC"] == "–"
    json.dumps([r.to_dict() for r in results])  # nan-free, JSON-safe


def test_deterministic() -> None:
    train, val, test = splits(n=30)
    a = evaluate_probes(train, val, test, n_boot=100, seed=5)
    b = evaluate_probes(train, val, test, n_boot=100, seed=5)
    assert [r.to_dict() for r in a] == [r.to_dict() for r in b]
    assert [r.predictions for r in a] == [r.predictions for r in b]


def test_table_row_format() -> None:
    train, val, test = splits(n=20)
    results = evaluate_probes(train, val, test, poolings=("last",), layers=[1], per_cwe=False, n_boot=50)
    row = probe_table(results)[0]
    assert row["CWE"] == OVERALL and row["layer"] == "1" and row["pooling"] == "last"
    assert row["test bal.acc [95% CI]"].count("[") == 1
    d = results[0].to_dict()
    assert "predictions" not in d and isinstance(d["balanced_accuracy_ci"], list)


def test_rejects_misaligned_inputs() -> None:
    train, val, (test_acts, test_samples) = splits(n=5)
    with pytest.raises(ValueError, match="test: samples do not match"):
        evaluate_probes(train, val, (test_acts, test_samples[::-1]))
    with pytest.raises(ValueError, match="unknown pooling"):
        evaluate_probes(train, val, (test_acts, test_samples), poolings=("first",))


def test_length_control_reads_length_only_with_the_same_protocol() -> None:
    from vulnsteer.detection.probe_table import evaluate_length_control, surface_features

    def sample(i: int, vulnerable: bool, cwe: str = "CWE-89") -> Sample:
        body = "x = 1\n" * (3 + i % 3) + ("y = 2\n" * 6 if vulnerable else "")  # vulnerable code is longer
        return Sample(
            f"{cwe}-{i}-{vulnerable}",
            body,
            "python",
            cwe,
            "vulnerable" if vulnerable else "secure",
            pair_id=f"{cwe}-{i}",
        )

    def split(lo: int, hi: int) -> list[Sample]:
        return [sample(i, v, cwe) for cwe in ("CWE-89", "CWE-78") for i in range(lo, hi) for v in (True, False)]

    train, val, test = split(0, 8), split(8, 11), split(11, 14)
    feats = surface_features(test)
    assert feats.shape == (len(test), 3) and bool(torch.all(feats > 0))
    results = evaluate_length_control(train, val, test, n_boot=50)
    assert [(r.cwe, r.detector, r.pooling, r.layer) for r in results] == [
        ("CWE-78", "length", "code", -1),
        ("CWE-89", "length", "code", -1),
        (OVERALL, "length", "code", -1),
    ]
    assert all(r.test_auroc == 1.0 for r in results)  # here length alone separates the classes
    rows = probe_table(results)
    assert rows[0]["layer"] == "–" and rows[0]["probe"] == "length"
    # lengths that carry no label: the control is at chance on test
    flat = [replace(s, code="x = 1\n" * 5) for s in test]
    assert all(r.test_auroc == 0.5 for r in evaluate_length_control(train, val, flat, n_boot=50))


# ------------------------------------------------------------------------------------------ designs


def _planted(n: int, seed: int, length_leak: float = 0.0) -> ProbeData:
    """Two states side by side (8 columns each): the label along column 0 of the second; with *length_leak*, the
    code length carries the label too and leaks into every column of the first."""
    gen = torch.Generator().manual_seed(seed)
    y = np.array([i % 2 for i in range(n)])
    lengths = torch.tensor(
        [40.0 + 30.0 * length_leak * yi + float(torch.randint(0, 10, (1,), generator=gen)) for yi in y]
    )
    x = torch.randn(n, 16, generator=gen)
    x[:, 8] += torch.tensor(y * 2.0 - 1.0, dtype=torch.float32) * 1.5
    x[:, :8] += torch.log(lengths)[:, None] * length_leak * 3.0
    pairs = tuple(f"p{i // 2}" for i in range(n))
    return ProbeData(x, y, lengths, pairs)


def test_an_ensemble_is_one_linear_probe_over_every_read_state() -> None:
    train, val = _planted(200, 1), _planted(100, 2)
    design = ProbeDesign((3, 5), ("code_mean",), C=0.5, combine="ensemble")
    probe = fit_probe(design, train, val)
    assert probe.reads == ((3, "code_mean"), (5, "code_mean")) and probe.weight.shape == (16,)
    # the mean of the two per-layer probes, each standardised by its training scores
    parts = [
        fit_probe(
            ProbeDesign((layer,), ("code_mean",), C=0.5),
            ProbeData(train.x[:, cols], train.y),
            ProbeData(val.x[:, cols], val.y),
        )
        for layer, cols in ((3, slice(0, 8)), (5, slice(8, 16)))
    ]
    z = []
    for part, cols in zip(parts, (slice(0, 8), slice(8, 16)), strict=True):
        s_train = part.score_matrix(train.x[:, cols]).double()
        z.append((part.score_matrix(val.x[:, cols]).double() - s_train.mean()) / s_train.std(unbiased=False))
    torch.testing.assert_close(probe.score_matrix(val.x).double(), (z[0] + z[1]) / 2, atol=1e-4, rtol=1e-4)
    scores = probe.scores({(3, "code_mean"): val.x[:, :8], (5, "code_mean"): val.x[:, 8:]})
    torch.testing.assert_close(scores, probe.score_matrix(val.x))


def test_length_handling_reads_the_code_token_count() -> None:
    train, val = _planted(300, 3, length_leak=1.0), _planted(200, 4, length_leak=1.0)
    flat = _planted(200, 5, length_leak=0.0)  # no length signal: only the planted column tells
    plain = fit_probe(ProbeDesign((1,), ("code_mean",)), train, val)
    residual = fit_probe(ProbeDesign((1,), ("code_mean",), length="residual"), train, val)
    covariate = fit_probe(ProbeDesign((1,), ("code_mean",), length="covariate"), train, val)
    assert plain.length_weight == 0.0 and covariate.length_weight == 0.0  # the covariate is dropped when scoring
    assert residual.reads_length and residual.length_weight != 0.0
    with pytest.raises(ValueError, match="code-token counts"):
        residual.score_matrix(val.x)

    def corr_with_length(probe: Any, data: ProbeData) -> float:
        s = probe.score_matrix(data.x, data.lengths).double().numpy()
        return float(abs(np.corrcoef(s, np.log(data.lengths.numpy()))[0, 1]))

    # residualised on length, the score leans less on it than the plain probe's does
    assert corr_with_length(residual, val) < corr_with_length(plain, val)
    # where length carries no label, the residualised probe still reads the planted state, at least as well
    found = {p.key: _auroc(flat.y, p.score_matrix(flat.x, flat.lengths).numpy()) for p in (plain, residual, covariate)}
    assert found[residual.key] > 0.8 and found[residual.key] >= found[plain.key], found


def _auroc(y: np.ndarray, s: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s))


def test_pairs_and_per_dataset_designs_fit_and_read_the_signal() -> None:
    a, b, val = _planted(120, 6), _planted(120, 7), _planted(100, 8)
    b = dataclasses.replace(b, x=b.x * 3.0 + 5.0)  # another dataset on another scale
    for design in (
        ProbeDesign((1,), ("code_mean",), pairs=True),
        ProbeDesign((1,), ("code_mean",), per_dataset=True),
        ProbeDesign((1,), ("code_mean",), "direction", pairs=True),
    ):
        probe = fit_probe(design, [a, b], val)
        assert _auroc(val.y, probe.score_matrix(val.x).numpy()) > 0.8, design.key
    with pytest.raises(ValueError, match="pairs with a vulnerable and a fixed half"):
        fit_probe(ProbeDesign((1,), ("code_mean",), pairs=True), dataclasses.replace(a, pairs=()), val)


def test_calibration_and_adaptation_are_chosen_on_val_without_the_adapted_to_labels() -> None:
    train, val = _planted(200, 9), _planted(200, 10)
    probe = fit_probe(ProbeDesign((1,), ("code_mean",)), train, val)
    p = probe.probabilities(probe.score_matrix(val.x))
    assert float(p[val.y == 1].mean()) > 0.5 > float(p[val.y == 0].mean())  # calibrated toward the truth
    shifted = _planted(200, 11)
    shifted = dataclasses.replace(shifted, x=shifted.x + 4.0)  # unseen data off-centre: the plain probe flags most
    scores = probe.score_matrix(shifted.x)
    adapted = probe.adapted(scores, min_count=20)
    a_scores = adapted.score_matrix(shifted.x)
    assert abs(float(a_scores.double().mean())) < 1e-4 and adapted.centred == 200
    flagged_plain = float((scores > probe.threshold).float().mean())
    flagged_adapted = float((a_scores > adapted.threshold).float().mean())
    assert abs(flagged_adapted - 0.5) < abs(flagged_plain - 0.5)
    with pytest.raises(AdaptationError, match="at least 20"):
        probe.adapted(scores[:19], min_count=20)
