"""The adapted probe family: the gating probe with its centre re-estimated from the held-out inputs it reads. It
never reads a label: permuting the held-out labels changes no adapted score and no verdict."""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest
import torch

from vulnsteer.config.design import ProbeDesign
from vulnsteer.data.sample import Sample
from vulnsteer.detection.probe import ProbeData, fit_probe
from vulnsteer.experiment.families.probe import ADAPTED, PROBE, ProbeChoices
from vulnsteer.experiment.family import HeldOut
from vulnsteer.lm.activations import Activations

DESIGN = ProbeDesign((2,), ("code_mean",))


def _data(n: int, seed: int, shift: float = 0.0) -> tuple[list[Sample], Activations]:
    gen = torch.Generator().manual_seed(seed)
    samples = [
        Sample(f"s{seed}-{i}", "x = 1", "python", "CWE-89" if i % 4 < 2 else "CWE-78",
               "vulnerable" if i % 2 else "secure", pair_id=f"p{seed}-{i // 2}")
        for i in range(n)
    ]  # fmt: skip
    x = torch.randn(n, 8, generator=gen)
    x[:, 0] += torch.tensor([2.0 if s.y else -2.0 for s in samples]) + shift
    acts = Activations([2], [s.id for s in samples], {"code_mean": x[:, None, :]}, code_tokens=torch.full((n,), 30))
    return samples, acts


def _held(samples: list[Sample], acts: Activations) -> HeldOut:
    by_cwe: dict[str, list[Sample]] = {}
    for s in samples:
        by_cwe.setdefault(s.cwe, []).append(s)
    order = [s for group in by_cwe.values() for s in group]
    index = {sid: i for i, sid in enumerate(acts.sample_ids)}
    ordered = acts.subset([index[s.id] for s in order])
    return HeldOut("all", ("logit",), by_cwe, activations=lambda: ordered)


def _choices(min_adapt: int) -> ProbeChoices:
    val, val_acts = _data(60, 2)
    tr_s, tr_acts = _data(80, 1)
    probe = fit_probe(
        DESIGN,
        ProbeData(tr_acts.get("code_mean", 2), np.array([s.y for s in tr_s])),
        ProbeData(val_acts.get("code_mean", 2), np.array([s.y for s in val])),
    )
    return ProbeChoices({}, probe, min_adapt)


def test_adapted_scores_ignore_the_held_out_labels() -> None:
    choices = _choices(20)
    samples, acts = _data(60, 3, shift=3.0)  # another dataset: off the training centre
    labels = [s.label for s in samples]
    random.Random(0).shuffle(labels)
    permuted = [dataclasses.replace(s, label=lab) for s, lab in zip(samples, labels, strict=True)]
    assert labels != [s.label for s in samples]
    a = ADAPTED.apply(choices, _held(samples, acts)).lead["logit"][0].records
    b = ADAPTED.apply(choices, _held(permuted, acts)).lead["logit"][0].records
    assert [(r.sample_id, r.score, r.verdict) for r in a] == [(r.sample_id, r.score, r.verdict) for r in b]
    # off-centre, the plain probe calls nearly everything vulnerable; adapted, about half
    plain = PROBE.apply(choices, _held(samples, acts)).lead["logit"][0].records
    share = {name: np.mean([r.verdict == "vulnerable" for r in recs]) for name, recs in (("plain", plain), ("a", a))}
    assert share["plain"] >= 0.85 and 0.35 < share["a"] < 0.65, share
    assert float(np.mean([r.score for r in a])) == pytest.approx(0.0, abs=1e-4)


def test_too_few_inputs_to_adapt_to_is_said_not_guessed() -> None:
    choices = _choices(100)
    samples, acts = _data(60, 3, shift=3.0)
    applied = ADAPTED.apply(choices, _held(samples, acts))
    assert not applied.lead and any("at least 100" in note for note in applied.notes)
    assert ADAPTED.results(100, choices, applied, None).notes == applied.notes


def test_unstated_the_adapted_probe_flags_its_calibration_share_wherever_the_inputs_sit() -> None:
    """With no prevalence stated, the adapted probe (and a detector's) flags the share of its calibration data
    (0.5 here) of whatever inputs it adapts to: shifted or not, and whatever their own share, which it assumes and
    does not find. An adaptation without a share (an older file) keeps its fixed threshold above the centre."""
    from vulnsteer.detection.probe_detector import ProbeDetector
    from vulnsteer.lm.identity import ModelIdentity
    from vulnsteer.steering.probe import Adaptation

    probe = _choices(20).default
    assert probe.adaptation is not None and probe.adaptation.share == pytest.approx(0.5)
    detector = ProbeDetector(probe, ModelIdentity("tiny", "f00d"))
    for share, shift in ((0.5, -3.0), (0.5, 3.0), (0.1, 0.0), (0.9, 3.0)):
        _, acts = _mixture(200, share, 7, shift)
        adapted = detector.adapted(probe.scores_of(acts, acts.code_tokens))
        flagged = adapted.verdicts(adapted.scores_of(acts, acts.code_tokens)).numpy()
        assert flagged.mean() == pytest.approx(0.5, abs=1.0 / 200), (share, shift)
    old = dataclasses.replace(probe, adaptation=Adaptation(0.25, spread=2.0))
    raw = torch.randn(40, generator=torch.Generator().manual_seed(1)) + 3.0
    adapted = old.adapted(raw, 20)
    assert adapted.threshold == 0.25 and adapted.bias == pytest.approx(probe.bias - float(raw.double().mean()))
    assert detector.threshold_probability() == probe.threshold_probability


def _mixture(n: int, share: float, seed: int, shift: float) -> tuple[list[Sample], Activations]:
    """*n* samples, the first ``round(share * n)`` vulnerable, their states as :func:`_data`'s."""
    k = round(share * n)
    samples = [
        Sample(f"m{seed}-{i}", "x = 1", "python", "CWE-89", "vulnerable" if i < k else "secure") for i in range(n)
    ]
    x = torch.randn(n, 8, generator=torch.Generator().manual_seed(seed))
    x[:, 0] += torch.tensor([2.0 if s.y else -2.0 for s in samples]) + shift
    return samples, Activations([2], [s.id for s in samples], {"code_mean": x[:, None, :]})


@pytest.mark.parametrize("share", [0.1, 0.25])
def test_a_stated_prevalence_flags_that_share_and_its_probabilities_take_it(share: float) -> None:
    """Fitted on balanced val, adapted to data of another dataset (shifted) where only *share* is vulnerable:
    told the share, the adapted probe flags that share of the inputs, its mean probability is that share (the
    prior and the centre corrected), and it ranks as well as the probe. Not told, its centre (the mean of a
    mostly secure set) sits too low and its probabilities overstate the share."""
    probe = _choices(20).default
    a = probe.adaptation
    assert a is not None and a.share == pytest.approx(0.5) and a.separation is not None and a.separation > 0
    samples, acts = _mixture(400, share, 5, shift=3.0)
    y = np.array([s.y for s in samples])
    raw = probe.scores_of(acts)
    told, untold = probe.adapted(raw, 20, prevalence=share), probe.adapted(raw, 20)
    assert told.meta["prevalence"] == share and "prevalence" not in untold.meta
    flagged = told.verdicts(told.scores_of(acts)).numpy()
    assert flagged.mean() == pytest.approx(share, abs=1.0 / len(y))
    assert flagged[y == 1].mean() > 0.8  # the highest share are mostly the vulnerable ones
    p_told = told.probabilities(told.scores_of(acts)).double().mean().item()
    p_untold = untold.probabilities(untold.scores_of(acts)).double().mean().item()
    assert abs(p_told - share) < 0.05 and p_untold - share > 0.15, (p_told, p_untold)
    # a prevalence only moves the centre and the threshold: the order of the scores is the probe's
    assert torch.equal(torch.argsort(told.scores_of(acts)), torch.argsort(raw))


def test_a_prevalence_needs_a_share_and_separation_and_a_share_in_range() -> None:
    from vulnsteer.steering.probe import Adaptation, AdaptationError, Probe

    old = Probe(DESIGN, torch.ones(8), 0.0, 0.0, adaptation=Adaptation(0.1))  # (as files before them were read)
    with pytest.raises(AdaptationError, match="older vulnsteer"):
        old.adapted(torch.arange(30.0), 20, prevalence=0.1)
    assert old.adapted(torch.arange(30.0), 20).centred == 30
    new = _choices(20).default
    for bad in (0.0, 1.0, -0.2):
        with pytest.raises(ValueError, match="prevalence"):
            new.adapted(torch.arange(30.0), 20, prevalence=bad)
    a = new.adaptation
    assert a is not None and Adaptation.from_json(a.to_json()) == a
    assert Adaptation.from_json(Adaptation(0.1).to_json()) == Adaptation(0.1)
    with pytest.raises(ValueError, match="share"):
        Adaptation(0.1, share=1.0, separation=1.0)


def test_prior_algebra_a_prevalence_at_the_fitted_share_is_none_stated() -> None:
    """Golden algebra: a prior moved twice is the prior moved once, moved to itself is no move; a prevalence equal
    to the calibration data's share is the same as none stated (the same centre, calibration and threshold); the
    top share flags ``round(share * n)`` of distinct scores."""
    from vulnsteer.stats.shares import top_share_threshold
    from vulnsteer.steering.probe import Calibration

    c = Calibration(0.7, -0.2)
    s = torch.linspace(-3, 3, 13)
    twice = c.with_prior(0.4, 0.1).with_prior(0.1, 0.3).probabilities(s)
    torch.testing.assert_close(twice, c.with_prior(0.4, 0.3).probabilities(s))
    assert c.with_prior(0.3, 0.3).intercept == pytest.approx(c.intercept) and c.with_prior(0.3, 0.3).slope == c.slope
    probe = _choices(20).default
    a = probe.adaptation
    assert a is not None and a.share is not None
    raw = torch.randn(50, generator=torch.Generator().manual_seed(3))
    same, plain = probe.adapted(raw, 20, prevalence=a.share), probe.adapted(raw, 20)
    assert same.bias == pytest.approx(plain.bias) and same.calibration.slope == plain.calibration.slope
    assert same.threshold == pytest.approx(plain.threshold)  # unstated, the calibration share is flagged
    assert same.calibration.intercept == pytest.approx(plain.calibration.intercept)
    rng = np.random.default_rng(0)
    for n, share in ((7, 0.3), (50, 0.05), (200, 0.5), (31, 0.99)):
        scores = rng.normal(size=n)
        assert int((scores > top_share_threshold(scores, share)).sum()) == round(share * n)


def test_adapted_whole_files_flag_the_share_of_their_functions_flagged() -> None:
    """Whole files scored as their functions (every other file also holds a low-scoring function those files
    share, which pulls their smooth maximum down): adapted, the files flag the share of the distinct functions the
    adapted probe flagged, the highest-scoring ones, each against one threshold; no label moves it. The functions'
    threshold on the files' scores (the rule before) flags another number of them."""
    from vulnsteer.data.units import Piece, Units

    choices = _choices(20)
    own, acts = _data(40, 3, shift=3.0)
    files = [dataclasses.replace(s, code=f"def shared(): pass\n\n{s.code} # {s.id}", is_file=True) for s in own]
    shared_state = acts.get("code_mean", 2)[:1].clone()
    shared_state[0, 0] -= 20.0  # (below every other function: no tie at the threshold)
    pieces, where, rows = [], [], []
    for k, s in enumerate(own):
        mine = dataclasses.replace(s, code=f"{s.code} # {s.id}")
        if k % 2:
            pieces, where, rows = (
                [*pieces, mine],
                [*where, Piece(k, 0, "")],
                [*rows, acts.get("code_mean", 2)[k : k + 1]],
            )
            continue
        pieces += [
            dataclasses.replace(s, id=f"{s.id}#0", code="def shared(): pass"),
            dataclasses.replace(mine, id=f"{s.id}#1"),
        ]
        where += [Piece(k, 0, "shared"), Piece(k, 1, "own")]
        rows += [shared_state, acts.get("code_mean", 2)[k : k + 1]]
    states = torch.cat(rows)[:, None, :]
    piece_acts = Activations([2], [p.id for p in pieces], {"code_mean": states},
                             code_tokens=torch.full((len(pieces),), 30))  # fmt: skip
    units = Units(tuple(files), tuple(pieces), tuple(where))
    held = HeldOut("all", ("logit",), {"CWE-89": files}, activations=lambda: piece_acts, units=units)
    records = ADAPTED.apply(choices, held).lead["logit"][0].records
    assert [r.sample_id for r in records] == [f.id for f in files]
    probe = choices.default.adapted(choices.default.scores_of(piece_acts, piece_acts.code_tokens), 20)
    flagged = probe.verdicts(probe.scores_of(piece_acts, piece_acts.code_tokens)).tolist()
    distinct = {p.code: v for p, v in zip(pieces, flagged, strict=True)}
    share = sum(distinct.values()) / len(distinct)
    assert 0.3 < share < 0.8
    assert sum(r.verdict == "vulnerable" for r in records) == round(share * len(files))
    assert sum((r.score or 0.0) > probe.threshold for r in records) != round(share * len(files))  # the rule before
    ranked = sorted(records, key=lambda r: -(r.score or 0.0))
    verdicts = [r.verdict for r in ranked]
    assert verdicts == sorted(verdicts, key=lambda v: v != "vulnerable")  # the highest-scoring files
    assert len({r.threshold for r in records}) == 1
    relabelled = tuple(dataclasses.replace(f, label="secure") for f in files)
    again = ADAPTED.apply(
        choices,
        dataclasses.replace(held, samples={"CWE-89": relabelled}, units=dataclasses.replace(units, samples=relabelled)),
    )
    assert [r.verdict for r in again.lead["logit"][0].records] == [r.verdict for r in records]
