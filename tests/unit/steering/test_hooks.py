"""Steering hooks: exact shifts at exact positions, the sign convention, and clean removal."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from conftest import random_vector, toy_samples
from vulnsteer.lm.activations import extract_activations
from vulnsteer.lm.model import LoadedModel, decoder_layers, hidden_of
from vulnsteer.lm.prompts import build_prompt, tokenize_prompts
from vulnsteer.steering.hooks import SteeringSpec, steer
from vulnsteer.steering.vectors import fit_vector


class _Recorder:
    """Records a layer's output at every call (one before the steering hook, one after)."""

    def __init__(self) -> None:
        self.calls: list[torch.Tensor] = []

    def __call__(self, _m: Any, _a: Any, output: Any) -> None:
        self.calls.append(hidden_of(output).detach().clone())


def _shifts(lm: LoadedModel, spec: SteeringSpec, layer: int, run: Any) -> list[torch.Tensor]:
    """Per forward call at *layer*: (steered output - unsteered output of the same call)."""
    block = decoder_layers(lm.model)[layer]
    before, after = _Recorder(), _Recorder()
    h1 = block.register_forward_hook(before)
    try:
        with steer(lm.model, spec):
            h2 = block.register_forward_hook(after)
            try:
                run()
            finally:
                h2.remove()
    finally:
        h1.remove()
    assert len(before.calls) == len(after.calls) > 0
    return [a - b for a, b in zip(after.calls, before.calls)]


def _batch(lm: LoadedModel) -> Any:
    codes = ["x = 1", "def f(a):\n    return open(a).read()\n" * 2]
    return tokenize_prompts(lm.tokenizer, [build_prompt(lm.tokenizer, c, "python") for c in codes])


@pytest.mark.parametrize("positions", ["last", "prompt", "all"])
def test_shift_is_exact_on_a_forward_pass(tiny: LoadedModel, positions: str) -> None:
    vec = random_vector((1, 2))
    spec = SteeringSpec(vec, 3.0, positions=positions, unit="raw")  # type: ignore[arg-type]
    batch = _batch(tiny)
    for layer in (1, 2):
        (shift,) = _shifts(
            tiny, spec, layer, lambda: tiny.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        )
        expected = -3.0 * vec.direction(layer)
        if positions == "last":
            assert torch.allclose(shift[:, -1], expected.expand(2, -1), atol=1e-5)
            assert shift[:, :-1].abs().max() == 0
        else:
            assert torch.allclose(shift, expected.expand_as(shift), atol=1e-5)


def test_unsteered_layers_untouched(tiny_llama: LoadedModel) -> None:
    spec = SteeringSpec(random_vector((1, 2)), 5.0, layers=(2,), positions="all", unit="raw")
    batch = _batch(tiny_llama)
    (shift,) = _shifts(tiny_llama, spec, 1, lambda: tiny_llama.model(input_ids=batch.input_ids))
    assert shift.abs().max() == 0


@pytest.mark.parametrize("positions", ["generated", "last", "answer", "prompt", "all"])
def test_positions_during_generation(tiny_llama: LoadedModel, positions: str) -> None:
    vec = random_vector((1,))
    spec = SteeringSpec(vec, 2.0, positions=positions, unit="raw")  # type: ignore[arg-type]
    batch = _batch(tiny_llama)
    pad = tiny_llama.tokenizer.pad_token_id

    def run() -> None:
        tiny_llama.model.generate(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            max_new_tokens=4,
            min_new_tokens=4,
            do_sample=False,
            pad_token_id=pad,
        )

    shifts = _shifts(tiny_llama, spec, 1, run)
    assert len(shifts) == 4  # one prompt pass + 3 cached steps
    expected = -2.0 * vec.direction(1)
    prompt_shift, steps = shifts[0], shifts[1:]
    assert prompt_shift.shape[1] == batch.input_ids.shape[1]
    assert all(s.shape[1] == 1 for s in steps)
    on_prompt = {"generated": "none", "last": "last", "answer": "last", "prompt": "all", "all": "all"}[positions]
    if on_prompt == "none":
        assert prompt_shift.abs().max() == 0
    elif on_prompt == "last":
        assert torch.allclose(prompt_shift[:, -1], expected.expand(2, -1), atol=1e-5)
        assert prompt_shift[:, :-1].abs().max() == 0
    else:
        assert torch.allclose(prompt_shift, expected.expand_as(prompt_shift), atol=1e-5)
    for step in steps:
        if positions in ("generated", "answer", "all"):
            assert torch.allclose(step, expected.expand_as(step), atol=1e-5)
        else:
            assert step.abs().max() == 0


def test_relative_unit_scales_by_layer_norm(tiny_llama: LoadedModel) -> None:
    vec = random_vector((1,))
    spec = SteeringSpec(vec, 0.5, unit="relative", positions="all")
    d = vec.direction(1)
    assert torch.allclose(spec.delta(1), -0.5 * 10.0 * d / d.norm())


def test_hooks_removed_even_on_exception(tiny_llama: LoadedModel) -> None:
    blocks = decoder_layers(tiny_llama.model)
    before = [len(b._forward_hooks) for b in blocks]
    with pytest.raises(RuntimeError), steer(tiny_llama.model, random_vector((0, 3)), 1.0, positions="all", unit="raw"):
        assert sum(len(b._forward_hooks) for b in blocks) == sum(before) + 2
        raise RuntimeError("boom")
    assert [len(b._forward_hooks) for b in blocks] == before


def test_steering_never_mutates_weights(tiny_llama: LoadedModel) -> None:
    state = {k: v.clone() for k, v in tiny_llama.model.state_dict().items()}
    batch = _batch(tiny_llama)
    with steer(tiny_llama.model, random_vector((0, 1, 2, 3)), 4.0, positions="all", unit="raw"):
        tiny_llama.model(input_ids=batch.input_ids)
    for k, v in tiny_llama.model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_several_vectors_add_up(tiny_llama: LoadedModel) -> None:
    a, b = random_vector((1,), seed=1), random_vector((1,), seed=2)
    batch = _batch(tiny_llama)
    block = decoder_layers(tiny_llama.model)[1]
    before, after = _Recorder(), _Recorder()
    h1 = block.register_forward_hook(before)
    with steer(
        tiny_llama.model,
        [SteeringSpec(a, 1.0, positions="all", unit="raw"), SteeringSpec(b, -2.0, positions="last", unit="raw")],
    ):
        h2 = block.register_forward_hook(after)
        tiny_llama.model(input_ids=batch.input_ids)
        h2.remove()
    h1.remove()
    shift = after.calls[0] - before.calls[0]
    assert torch.allclose(shift[:, 0], (-1.0 * a.direction(1)).expand(2, -1), atol=1e-5)
    assert torch.allclose(shift[:, -1], (-a.direction(1) + 2.0 * b.direction(1)).expand(2, -1), atol=1e-5)


def test_spec_validation(tiny_llama: LoadedModel) -> None:
    vec = random_vector((1,))
    with pytest.raises(ValueError, match="positions"):
        SteeringSpec(vec, 1.0, positions="middle", unit="raw")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not in the vector"):
        SteeringSpec(vec, 1.0, layers=(3,), positions="all", unit="raw")
    with pytest.raises(ValueError, match="finite"):
        SteeringSpec(vec, float("nan"), positions="all", unit="raw")
    wrong = random_vector((1,), 32)
    with (
        pytest.raises(ValueError, match="hidden size"),
        steer(tiny_llama.model, wrong, 1.0, positions="all", unit="raw"),
    ):
        pass


def test_sign_convention_moves_toward_vulnerable_activations(tiny_llama: LoadedModel) -> None:
    """Positive strength moves the steered layer's activation toward the vulnerable mean."""
    samples = toy_samples(4)
    acts = extract_activations(tiny_llama, samples, [1], poolings=["last"], progress=False)
    vec = fit_vector(acts, samples, layers=[1])
    secure_mean = acts.get("last", 1)[[not s.is_vulnerable for s in samples]].mean(0)
    d = vec.direction(1)
    with steer(tiny_llama.model, vec, 1.0, positions="last", unit="raw"):
        steered = extract_activations(
            tiny_llama, [s for s in samples if not s.is_vulnerable], [1], poolings=["last"], progress=False
        )
    # strength 1 moves the secure mean by exactly one mean difference: onto the vulnerable mean
    moved = steered.get("last", 1).mean(0)
    assert torch.allclose(moved, secure_mean - d, atol=1e-4)
    vuln_mean = acts.get("last", 1)[[s.is_vulnerable for s in samples]].mean(0)
    assert torch.allclose(moved, vuln_mean, atol=1e-4)
