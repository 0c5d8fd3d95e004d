"""THE sign convention, checked on the embedded SmolLM2-135M-Instruct.

A mean-difference vector ``d = mean(secure) - mean(vulnerable)`` is fitted on 8 bundled pairs (one per CWE; layer
15, position ``last``) and applied at the answer position with ``score_logits``. The convention says positive
strength pushes the model toward answering "vulnerable", i.e. raises ``margin = logp(" vulnerable") -
logp(" secure")``.

Finding (kept as a strict xfail so it cannot silently change): on this model the effect is real, consistent
across held-out samples and antisymmetric in the strength, but its sign is the opposite one. Subtracting the
secure-minus-vulnerable direction at the answer position *lowers* the margin.
"""

from __future__ import annotations

import pytest

from vulnsteer.data.builtin import load_builtin
from vulnsteer.data.sample import Sample
from vulnsteer.detection.engine import score_logits
from vulnsteer.lm.activations import extract_activations
from vulnsteer.lm.model import LoadedModel
from vulnsteer.steering.hooks import steer
from vulnsteer.steering.vectors import fit_vector

pytestmark = [pytest.mark.model, pytest.mark.slow]

LAYER = 15
STRENGTH = 4.0
HELD_OUT = 2  # samples it is tested on: a vulnerable and a secure one from pairs not used for fitting


def _split() -> tuple[list[Sample], list[Sample]]:
    by_cwe: dict[str, dict[str, list[Sample]]] = {}
    for s in load_builtin():
        assert s.pair_id is not None
        by_cwe.setdefault(s.cwe, {}).setdefault(s.pair_id, []).append(s)
    cwes = sorted(by_cwe)
    train = [s for cwe in cwes for s in next(iter(by_cwe[cwe].values()))]  # the first pair of every CWE
    held = [list(by_cwe[cwe].values())[10][i % 2] for i, cwe in enumerate(cwes[:HELD_OUT])]
    return train, held


@pytest.fixture(scope="module")
def margins(embedded: LoadedModel) -> dict[float, list[float]]:
    train, held = _split()
    assert {s.label for s in train} == {"vulnerable", "secure"}
    assert not {s.pair_id for s in train} & {s.pair_id for s in held}
    acts = extract_activations(embedded, train, [LAYER], ["last"], progress=False)
    vector = fit_vector(
        acts,
        train,
        pooling="last",
        method="mean_diff",
        model=embedded.identity,
    )
    assert 0 < vector.relative_norm(LAYER) < 0.1
    out: dict[float, list[float]] = {}
    for strength in (-STRENGTH, 0.0, STRENGTH):
        with steer(embedded.model, vector, strength, positions="last", unit="raw"):
            records = score_logits(embedded, held, progress=False)
        assert [r.sample_id for r in records] == [s.id for s in held]
        out[strength] = [float(r.margin) for r in records]  # type: ignore[arg-type]
    return out


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def test_steering_moves_the_margin_consistently_and_antisymmetrically(margins: dict[float, list[float]]) -> None:
    up = [p - z for p, z in zip(margins[STRENGTH], margins[0.0])]
    down = [n - z for n, z in zip(margins[-STRENGTH], margins[0.0])]
    assert all(abs(x) > 1e-3 for x in up + down), "steering had no effect"
    # every held-out sample moves the same way, and the opposite way for the opposite strength
    assert len({x > 0 for x in up}) == 1
    assert len({x > 0 for x in down}) == 1
    assert (_mean(up) > 0) != (_mean(down) > 0)


@pytest.mark.xfail(
    strict=True,
    reason="finding: on SmolLM2-135M a layer-15 last-position mean-diff vector applied with positive strength "
    "LOWERS logp(' vulnerable') - logp(' secure') (the documented convention says it should raise it)",
)
def test_positive_strength_raises_the_margin_and_negative_lowers_it(margins: dict[float, list[float]]) -> None:
    assert _mean(margins[STRENGTH]) > _mean(margins[0.0]) > _mean(margins[-STRENGTH])


def test_sign_convention_on_the_models_own_answer_axis(embedded: LoadedModel) -> None:
    """With a direction that truly is secure-minus-vulnerable in the model's answer space (the unembedding
    difference), positive strength raises the margin and negative lowers it, monotonically."""
    from vulnsteer.steering.vectors import unembedding_vector

    last = embedded.num_layers - 1
    held = [s for s in load_builtin(["CWE-89"])][:2]
    acts = extract_activations(embedded, held, [last], ["last"], progress=False)
    vector = unembedding_vector(embedded, [last], layer_norms=acts.mean_norms("last"))
    means = {}
    for strength in (-0.2, -0.1, 0.0, 0.1, 0.2):
        with steer(embedded.model, vector, strength, positions="last", unit="relative"):
            means[strength] = _mean([float(r.margin) for r in score_logits(embedded, held, progress=False)])  # type: ignore[arg-type]
    ordered = [means[s] for s in sorted(means)]
    assert ordered == sorted(ordered), means
    assert means[0.2] > means[0.0] + 0.1 and means[-0.2] < means[0.0] - 0.1, means
