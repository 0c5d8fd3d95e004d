"""Golden algebra of steering (repeng-style) and the plug-in points (direction callables, layer matchers)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from conftest import random_vector, toy_samples
from vulnsteer.lm.activations import extract_activations
from vulnsteer.lm.model import LoadedModel, decoder_layers
from vulnsteer.lm.prompts import build_prompt, tokenize_prompts
from vulnsteer.lm.source import ModelLoadError
from vulnsteer.steering.hooks import SteeringSpec, steer, steer_rows
from vulnsteer.steering.vectors import SteeringVector, fit_vector, mean_difference


def _logits(lm: LoadedModel, **kw: Any) -> torch.Tensor:
    prompts = [build_prompt(lm.tokenizer, c, "python") for c in ("x = 1", "os.system('ls ' + d)")]
    batch = tokenize_prompts(lm.tokenizer, prompts)
    with torch.no_grad():
        return lm.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, **kw).logits


def _steered(lm: LoadedModel, *args: Any, **kwargs: Any) -> torch.Tensor:
    with steer(lm.model, *args, **kwargs):
        return _logits(lm)


@pytest.mark.parametrize("positions", ["last", "prompt", "all"])
def test_strength_scales_the_vector(tiny_llama: LoadedModel, positions: str) -> None:
    """steer(v, 2) == steer(2v, 1); steer(v, -1) == steer(-v, 1)."""
    v, v2 = random_vector((1, 2)), random_vector((1, 2), scale=2.0)
    a = _steered(tiny_llama, v, 2.0, positions=positions, unit="raw")
    torch.testing.assert_close(a, _steered(tiny_llama, v2, 1.0, positions=positions, unit="raw"))
    neg = random_vector((1, 2), scale=-1.0)
    torch.testing.assert_close(
        _steered(tiny_llama, v, -1.0, positions=positions, unit="raw"),
        _steered(tiny_llama, neg, 1.0, positions=positions, unit="raw"),
    )
    assert not torch.allclose(a, _logits(tiny_llama))


def test_strength_zero_is_the_plain_model(tiny_llama: LoadedModel) -> None:
    v = random_vector((1,))
    torch.testing.assert_close(
        _steered(tiny_llama, v, 0.0, positions="all", unit="raw"), _logits(tiny_llama), rtol=0, atol=0
    )
    with steer(tiny_llama.model, v, 0.0, positions="all", unit="raw"):
        assert not any(b._forward_hooks for b in decoder_layers(tiny_llama.model))  # nothing registered


def test_relative_strength_ignores_the_vectors_length(tiny_llama: LoadedModel) -> None:
    short, long = random_vector((1,)), random_vector((1,), scale=7.0)
    torch.testing.assert_close(
        _steered(tiny_llama, short, 0.3, unit="relative", positions="all"),
        _steered(tiny_llama, long, 0.3, unit="relative", positions="all"),
    )


def test_specs_add_up(tiny_llama: LoadedModel) -> None:
    """Two specs on one layer == their sum; a spec on each of two layers == a two-layer vector."""
    v, w = random_vector((1,), seed=1), random_vector((1,), seed=2)
    both = SteeringVector({1: v.direction(1) + w.direction(1)}, v.provenance)
    torch.testing.assert_close(
        _steered(
            tiny_llama,
            [SteeringSpec(v, 1.0, positions="all", unit="raw"), SteeringSpec(w, 1.0, positions="all", unit="raw")],
        ),
        _steered(tiny_llama, both, 1.0, positions="all", unit="raw"),
    )
    two = random_vector((1, 2))
    per_layer = [
        SteeringSpec(two, 1.0, layers=(1,), positions="all", unit="raw"),
        SteeringSpec(two, 1.0, layers=(2,), positions="all", unit="raw"),
    ]
    torch.testing.assert_close(
        _steered(tiny_llama, per_layer), _steered(tiny_llama, two, 1.0, positions="all", unit="raw")
    )


def test_last_position_steering_leaves_earlier_positions_alone(tiny_llama: LoadedModel) -> None:
    v = random_vector((1,))
    plain, steered = _logits(tiny_llama), _steered(tiny_llama, v, 5.0, positions="last", unit="raw")
    torch.testing.assert_close(steered[:, :-1], plain[:, :-1], rtol=0, atol=0)
    assert not torch.allclose(steered[:, -1], plain[:, -1])


def test_per_row_steering_equals_one_row_at_a_time(tiny_llama: LoadedModel) -> None:
    v, w = random_vector((1, 2), seed=1), random_vector((2,), seed=2)
    rows = [[SteeringSpec(v, 1.5, positions="all", unit="raw")], [SteeringSpec(w, -2.0, positions="last", unit="raw")]]
    with steer_rows(tiny_llama.model, rows):
        together = _logits(tiny_llama)
    for i, specs in enumerate(rows):
        alone = _steered(tiny_llama, specs)
        torch.testing.assert_close(together[i], alone[i], rtol=1e-5, atol=1e-5)


def test_a_direction_callable_is_a_method(tiny_llama: LoadedModel) -> None:
    samples = toy_samples(3)
    acts = extract_activations(tiny_llama, samples, [1], poolings=["last"], progress=False)

    def halved(secure: torch.Tensor, vulnerable: torch.Tensor) -> torch.Tensor:
        return mean_difference(secure, vulnerable) / 2

    by_name = fit_vector(acts, samples, method="mean_diff", layers=[1])
    custom = fit_vector(acts, samples, method=halved, layers=[1])
    torch.testing.assert_close(custom.direction(1) * 2, by_name.direction(1))
    assert custom.provenance.method == "halved"


def test_a_layer_matcher_finds_blocks_of_an_unknown_architecture(tiny_llama: LoadedModel) -> None:
    class Wrapped(torch.nn.Module):
        """An architecture the built-in paths do not know: the blocks live at ``core.stack``."""

        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.core = torch.nn.Module()
            self.core.stack = inner.model.layers
            self.inner = inner
            self.config = inner.config

        def forward(self, **kw: Any) -> Any:
            return self.inner(**kw)

    wrapped = Wrapped(tiny_llama.model)
    with pytest.raises(ModelLoadError, match="cannot find the decoder layers of Wrapped"):
        decoder_layers(wrapped)
    assert decoder_layers(wrapped, "core.stack") is tiny_llama.model.model.layers
    assert decoder_layers(wrapped, lambda m: m.core.stack) is tiny_llama.model.model.layers
    with pytest.raises(ModelLoadError, match=r"no attribute path 'core\.nothing'"):
        decoder_layers(wrapped, "core.nothing")
    lm = LoadedModel(wrapped, tiny_llama.tokenizer, "wrapped", "f", "test", layer_matcher="core.stack")
    assert lm.num_layers == tiny_llama.num_layers
    samples = toy_samples(1)
    acts = extract_activations(lm, samples, [1], progress=False)
    torch.testing.assert_close(
        acts.get("last"), extract_activations(tiny_llama, samples, [1], progress=False).get("last")
    )
    v = random_vector((1,))
    with steer(wrapped, v, 1.0, layer_matcher="core.stack", positions="all", unit="raw"):
        assert tiny_llama.model.model.layers[1]._forward_hooks
