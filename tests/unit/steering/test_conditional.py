"""Conditional steering: gates read the prompt's own hidden states; batched = one sample at a time, exactly."""

from __future__ import annotations

import doctest

import pytest
import torch

from conftest import random_vector, toy_samples
from vulnsteer.config.design import ProbeDesign
from vulnsteer.detection.engine import detect, detect_variants_modes
from vulnsteer.detection.prefix import PrefixStore
from vulnsteer.lm.activations import ANSWER_POOLINGS, extract_activations, recording
from vulnsteer.lm.model import LoadedModel
from vulnsteer.lm.prompts import answer_token_ids, build_prompt, tokenize_prompts
from vulnsteer.stats.lexical import LexicalModel
from vulnsteer.steering import gate as gate_mod
from vulnsteer.steering.behaviour import answer_vector
from vulnsteer.steering.gate import Gate
from vulnsteer.steering.hooks import SteeringSpec, steer
from vulnsteer.steering.probe import Calibration, Probe


def _probe(tiny: LoadedModel, pooling: str, layer: int = 1) -> Probe:
    """A probe whose threshold splits the toy samples (so both gate signs occur). *pooling* ``code_mean+code_max``:
    a probe reading both code poolings at layers 0 and *layer*, with a length term; ``code_mean|tokens``: a
    ``code_mean`` probe with a bag-of-tokens term on the code's text."""
    samples = toy_samples(4)
    pooling, _, extra = pooling.partition("|")
    poolings = tuple(pooling.split("+"))
    several = len(poolings) > 1
    design = ProbeDesign((0, layer) if several else (layer,), poolings, tokens=1.0 if extra == "tokens" else 0.0)
    weight = torch.randn(64 * len(design.reads), generator=torch.Generator().manual_seed(11))
    acts = extract_activations(tiny, samples, list(design.layers), poolings=list(poolings), progress=False)
    codes = [s.code for s in samples]
    lexical = LexicalModel.fit(codes, [s.y for s in samples], min_df=1).scaled(5.0) if design.reads_code else None
    plain = Probe(design, weight, 0.0, 0.0, length_weight=0.5 if several else 0.0, length_centre=1.0, lexical=lexical)
    scores = plain.scores_of(acts, acts.code_tokens, codes)
    spread = float(scores.std())
    return Probe(design, weight, 0.0, float(scores.median()), spread, plain.length_weight, plain.length_centre,
                 Calibration(1.0 / spread, -float(scores.median()) / spread), lexical=lexical)  # fmt: skip


@pytest.mark.parametrize("pooling", ["code_mean", "last", "code_mean+code_max", "code_mean|tokens"])
@pytest.mark.parametrize("positions", ["last", "answer", "all"])
def test_batched_gated_detection_equals_one_sample_at_a_time(
    tiny_llama: LoadedModel, pooling: str, positions: str
) -> None:
    samples = toy_samples(4)
    probe = _probe(tiny_llama, pooling)
    vec = random_vector((1, 2), seed=5)
    variants = {
        "base": [],
        "sign": [SteeringSpec(vec, 2.0, positions=positions, gate=Gate("sign", probe), unit="raw")],  # type: ignore[arg-type]
        "linear": [
            SteeringSpec(
                vec,
                0.5,
                unit="relative",
                positions=positions,  # type: ignore[arg-type]
                gate=Gate("linear", probe),
            )
        ],
        "one_sided": [
            SteeringSpec(
                vec,
                1.0,
                unit="sigma",
                positions=positions,  # type: ignore[arg-type]
                gate=Gate("one_sided", probe, band=0.3),
            )
        ],
        "calibrated": [SteeringSpec(vec, 2.0, positions=positions, gate=Gate("calibrated", probe))],  # type: ignore[arg-type]
        "toward_secure": [SteeringSpec(vec, 2.0, positions=positions, gate=Gate("toward_secure", probe))],  # type: ignore[arg-type]
        "constant": [SteeringSpec(vec, 2.0, positions=positions, unit="raw")],  # type: ignore[arg-type]
    }
    store = PrefixStore()
    batched = detect_variants_modes(
        tiny_llama,
        samples,
        variants,
        modes=("logit", "generation"),
        batch_size=3,
        max_new_tokens=4,
        progress=False,
        prefix_store=store,
    )
    pushes = {name: [r.push for r in batched["logit"][name]] for name in variants}
    assert set(pushes["sign"]) == {1.0, -1.0}, "the probe should send both ways"
    assert pushes["base"] == [None] * len(samples) and pushes["constant"] == [None] * len(samples)
    assert len(set(pushes["calibrated"])) == len(samples), "the calibrated gate keeps every score apart"
    assert len(set(pushes["toward_secure"])) == len(samples) and max(pushes["toward_secure"]) < 0
    for i, sample in enumerate(samples):
        acts = extract_activations(tiny_llama, [sample], list(probe.layers), probe.poolings, progress=False)
        score = probe.scores_of(acts, acts.code_tokens, [sample.code] if probe.reads_code else None)
        if probe.lexical is not None:  # the term moves the score: a gate that ignored the text would differ
            assert abs(float(probe.lexical.scores([sample.code])[0])) > 1e-3
        for name, specs in variants.items():
            resolved = [sp.gated(float(sp.gate.multipliers(score)[0])) if sp.gate else sp for sp in specs]
            with steer(tiny_llama.model, resolved) if resolved else steer(tiny_llama.model, []):
                alone_logit = detect(tiny_llama, [sample], mode="logit", progress=False)[0]
                alone_gen = detect(tiny_llama, [sample], mode="generation", max_new_tokens=4, progress=False)[0]
            got = batched["logit"][name][i]
            assert got.margin == pytest.approx(alone_logit.margin, abs=1e-4), (name, i)
            assert batched["generation"][name][i].text == alone_gen.text, (name, i)
            if specs and specs[0].gate:
                assert got.push == pytest.approx(float(specs[0].gate.multipliers(score)[0]), abs=1e-4)
                assert got.gate_score == pytest.approx(float(score[0]), abs=1e-4)
    # a second call reuses the stored gate states (same prompts): identical records
    again = detect_variants_modes(
        tiny_llama, samples, variants, modes=("logit",), batch_size=3, progress=False, prefix_store=store
    )
    assert [r.margin for r in again["logit"]["sign"]] == [r.margin for r in batched["logit"]["sign"]]


def test_stored_gate_states_never_depend_on_which_chunks_a_store_saw_before(tiny_llama: LoadedModel) -> None:
    """A store that first ran a chunk whose gates read a pass over the whole prompt (positions ``all``) gives a
    later chunk whose gates read the shared prefix pass exactly the records a fresh store gives (the two passes
    differ in the last bits): a Ray worker's records do not depend on which chunks it happened to run before."""
    samples = toy_samples(4)
    probe = _probe(tiny_llama, "code_mean")
    vec = random_vector((1, 2), seed=5)

    def chunk(positions: str) -> dict[str, list[SteeringSpec]]:
        return {"gated": [SteeringSpec(vec, 2.0, positions=positions, gate=Gate("calibrated", probe), unit="raw")]}  # type: ignore[arg-type]

    def run(store: PrefixStore, positions: str) -> list[tuple[float | None, float | None]]:
        found = detect_variants_modes(tiny_llama, samples, chunk(positions), batch_size=3, progress=False,
                                      prefix_store=store)["logit"]["gated"]  # fmt: skip
        return [(r.gate_score, r.margin) for r in found]

    fresh = run(PrefixStore(), "last")
    seen = PrefixStore()
    run(seen, "all")  # (its gates read a pass over the whole prompt)
    assert run(seen, "last") == fresh
    assert run(seen, "last") == fresh and seen.hits > 0  # (and once its own states are stored)


def test_toward_secure_pushes_one_way_by_the_probability_of_secure(tiny_llama: LoadedModel) -> None:
    probe = _probe(tiny_llama, "code_mean")
    scores = torch.linspace(-3.0, 3.0, 13) * probe.spread + probe.threshold
    pushes = Gate("toward_secure", probe).multipliers(scores)
    assert torch.allclose(pushes, probe.probabilities(scores) - 1.0)
    assert bool((pushes < 0).all() and (pushes > -1).all()), "always toward secure, never past a unit push"
    assert bool((pushes.diff() > 0).all()), "the more vulnerable the probe says, the smaller the push"
    assert float(pushes[6]) == pytest.approx(probe.threshold_probability - 1.0, abs=1e-6)


def test_a_gate_above_the_steered_layers_is_refused(tiny_llama: LoadedModel) -> None:
    probe = _probe(tiny_llama, "last", layer=2)
    with pytest.raises(ValueError, match="condition layer 2 is above the steered layers"):
        SteeringSpec(random_vector((1,), seed=5), 1.0, gate=Gate("sign", probe), positions="all", unit="raw")
    with pytest.raises(ValueError, match="gate kind"):
        Gate("maybe", probe)
    gated = SteeringSpec(random_vector((2,), seed=5), 1.0, gate=Gate("sign", probe), positions="all", unit="raw")
    with pytest.raises(ValueError, match="resolve its gate"), steer(tiny_llama.model, gated):
        pass


def test_sigma_unit_scales_by_the_projection_spread(tiny_llama: LoadedModel) -> None:
    vec = random_vector((1,), seed=5)
    d = vec.direction(1)
    torch.testing.assert_close(
        SteeringSpec(vec, 1.5, unit="sigma", positions="all").delta(1), -1.5 * 2.0 * d / d.norm()
    )


def test_probe_round_trips_and_random_control(tiny_llama: LoadedModel) -> None:
    probe = _probe(tiny_llama, "code_mean")
    tensors, meta = probe.to_tensors()
    again = Probe.from_tensors(tensors, meta)
    assert again.key == probe.key == "logistic@code_mean@L1"
    torch.testing.assert_close(again.weight, probe.weight)
    assert (again.threshold, again.spread, again.calibration) == (probe.threshold, probe.spread, probe.calibration)
    several = _probe(tiny_llama, "code_mean+code_max")
    back = Probe.from_tensors(*several.to_tensors())
    assert back == several and back != probe
    assert back.reads == ((0, "code_mean"), (0, "code_max"), (1, "code_mean"), (1, "code_max"))
    rand = probe.random_like(3)
    assert rand.name == "random" and float(rand.weight.norm()) == pytest.approx(float(probe.weight.norm()))
    assert abs(float(torch.nn.functional.cosine_similarity(rand.weight, probe.weight, dim=0))) < 0.5


def test_answer_vector_contrasts_the_two_answers(tiny_llama: LoadedModel) -> None:
    samples = toy_samples(3)
    vec = answer_vector(tiny_llama, samples, [1, 2], batch_size=2, progress=False)
    assert vec.provenance.method == "answer" and vec.layers == (1, 2)
    assert all(vec.provenance.layer_sigmas[layer] > 0 for layer in (1, 2))
    assert vec.provenance.n_vulnerable == vec.provenance.n_secure == 0  # labels are not used
    again = answer_vector(tiny_llama, samples, [1, 2], batch_size=3, progress=False)  # batching changes nothing
    for layer in (1, 2):
        torch.testing.assert_close(vec.direction(layer), again.direction(layer), rtol=1e-4, atol=1e-4)


def _reference_answer_vector(lm: LoadedModel, samples: list, layers: list[int]) -> dict[int, torch.Tensor]:
    """The answer vector the plain way: one prompt at a time, prompt and answer in one uncached full pass."""
    per_answer: list[dict[int, list[torch.Tensor]]] = [{layer: [] for layer in layers} for _ in range(2)]
    for sample in samples:
        ids = tokenize_prompts(lm.tokenizer, [build_prompt(lm.tokenizer, sample.code, sample.language)]).input_ids
        for k, answer in enumerate(answer_token_ids(lm.tokenizer)):
            with torch.no_grad(), recording(lm.model, layers) as seen:
                lm.model(input_ids=torch.cat([ids, torch.tensor([answer])], dim=1))
            for layer in layers:
                per_answer[k][layer].append(seen[layer][0, -1].float())
    return {
        layer: torch.stack(per_answer[1][layer]).mean(0) - torch.stack(per_answer[0][layer]).mean(0) for layer in layers
    }


def test_answer_vector_equals_the_uncached_one_prompt_reference(tiny_llama: LoadedModel) -> None:
    samples = toy_samples(3)
    vec = answer_vector(tiny_llama, samples, [1, 2], batch_size=4, progress=False)  # batched, left-padded, cached
    reference = _reference_answer_vector(tiny_llama, samples, [1, 2])
    for layer in (1, 2):
        torch.testing.assert_close(vec.direction(layer), reference[layer], rtol=1e-4, atol=1e-4)


def test_answer_poolings_leave_the_other_poolings_unchanged(tiny_llama: LoadedModel) -> None:
    samples = toy_samples(2)
    plain = extract_activations(tiny_llama, samples, [1, 2], progress=False)
    both = extract_activations(tiny_llama, samples, [1, 2], ["last", "code_mean", *ANSWER_POOLINGS], progress=False)
    for pooling in ("last", "code_mean"):
        torch.testing.assert_close(plain.get(pooling), both.get(pooling))
    assert not torch.allclose(both.get("answer_vulnerable"), both.get("answer_secure"))


def test_module_doctests() -> None:
    assert doctest.testmod(gate_mod).failed == 0
