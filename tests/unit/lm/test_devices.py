"""Device and dtype handling without GPUs.

A model split over two GPUs (``device_map="auto"``) runs each decoder layer on its own device, and a hook sees the
hidden state on that device. Without GPUs the same situation is built on the CPU: layers that run in another dtype
(bfloat16), or on the ``meta`` device, with pre-hooks that move their inputs as accelerate's do. Every hook must put
its delta on the device and dtype of the hidden state it edits; a delta taken from ``model.device`` (the CPU here)
fails on a meta layer and silently promotes a bfloat16 layer's output to float32.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch

from conftest import make_tiny, toy_samples
from vulnsteer.detection.engine import detect_variants_modes
from vulnsteer.lm.activations import extract_activations, masked_mean
from vulnsteer.lm.model import LoadedModel, _pick_dtype, decoder_layers, hidden_of
from vulnsteer.lm.prompts import build_prompt, tokenize_prompts
from vulnsteer.steering.hooks import SteeringSpec, steer, steer_rows
from vulnsteer.steering.vectors import Provenance, SteeringVector


def _convert(obj: Any, device: torch.device | str, dtype: torch.dtype) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device, dtype) if obj.is_floating_point() else obj.to(device)
    if isinstance(obj, tuple):
        return tuple(_convert(o, device, dtype) for o in obj)
    return obj


def _place(module: torch.nn.Module, device: str, dtype: torch.dtype) -> Any:
    """Run *module* on *device* in *dtype*; a pre-hook moves its inputs there (accelerate's alignment hooks do the
    same for a model dispatched over several GPUs). Returns the hook handle."""
    module.to(device, dtype)

    def pre_hook(_m: Any, args: Any, kwargs: dict[str, Any]) -> Any:
        return _convert(args, device, dtype), {k: _convert(v, device, dtype) for k, v in kwargs.items()}

    return module.register_forward_pre_hook(pre_hook, with_kwargs=True)


@contextmanager
def _split(
    lm: LoadedModel, placement: dict[int, tuple[str, torch.dtype]], tail: tuple[str, torch.dtype]
) -> Iterator[None]:
    """Place decoder layers per *placement* (the others stay on the CPU in float32) and the final norm and output
    head on *tail*; everything goes back to the CPU in float32 on exit."""
    blocks = decoder_layers(lm.model)
    handles = []
    try:
        for index, block in enumerate(blocks):
            device, dtype = placement.get(index, ("cpu", torch.float32))
            handles.append(_place(block, device, dtype))
        handles.append(_place(lm.model.model.norm, *tail))
        handles.append(_place(lm.model.lm_head, *tail))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _vector(hidden: int, layers: tuple[int, ...]) -> SteeringVector:
    gen = torch.Generator().manual_seed(7)
    prov = Provenance("tiny", "x", hidden, layers, "last", "mean_diff", "CWE-89", 2, 2, "h", "now", {1: 5.0, 2: 5.0})
    return SteeringVector({layer: torch.randn(hidden, generator=gen) for layer in layers}, prov)


def _prompt(lm: LoadedModel) -> Any:
    return tokenize_prompts(lm.tokenizer, [build_prompt(lm.tokenizer, "x = input()\neval(x)", "python")])


class _Outputs:
    def __init__(self) -> None:
        self.calls: list[torch.Tensor] = []

    def __call__(self, _m: Any, _a: Any, output: Any) -> None:
        self.calls.append(hidden_of(output).detach().clone())


@pytest.fixture
def lm(tiny_tokenizer: Any) -> LoadedModel:
    return make_tiny(tiny_tokenizer, "qwen2")  # a fresh model per test: these tests move its layers


def test_a_bfloat16_layer_gets_a_bfloat16_delta(lm: LoadedModel) -> None:
    vec = _vector(lm.hidden_size, (1, 2))
    batch = _prompt(lm)
    block = decoder_layers(lm.model)[1]
    with _split(lm, {1: ("cpu", torch.bfloat16)}, ("cpu", torch.float32)):
        plain, steered = _Outputs(), _Outputs()
        handle = block.register_forward_hook(plain)
        with steer(lm.model, vec, 2.0, positions="all", unit="raw"):
            inner = block.register_forward_hook(steered)  # runs after the steering hook
            logits = lm.model(input_ids=batch.input_ids).logits
            inner.remove()
        handle.remove()
    assert plain.calls[0].dtype == torch.bfloat16
    assert steered.calls[0].dtype == torch.bfloat16  # a float32 delta would have promoted it to float32
    expected = plain.calls[0] + (-2.0 * vec.direction(1)).to(torch.bfloat16)
    assert torch.equal(steered.calls[0], expected)
    assert logits.dtype == torch.float32 and bool(torch.isfinite(logits).all())


def test_per_row_deltas_follow_each_layer_dtype(lm: LoadedModel) -> None:
    vec = _vector(lm.hidden_size, (1, 2))
    ids = _prompt(lm).input_ids.repeat(2, 1)
    block = decoder_layers(lm.model)[1]
    rows = [
        [SteeringSpec(vec, 1.0, positions="all", unit="raw")],
        [],
    ]  # row 0 steered at layers 1 (bfloat16) and 2 (float32), row 1 not
    with _split(lm, {1: ("cpu", torch.bfloat16)}, ("cpu", torch.float32)):
        plain, steered = _Outputs(), _Outputs()
        handle = block.register_forward_hook(plain)
        with steer_rows(lm.model, rows):
            inner = block.register_forward_hook(steered)
            logits = lm.model(input_ids=ids).logits
            inner.remove()
        handle.remove()
    shift = steered.calls[0] - plain.calls[0]
    assert steered.calls[0].dtype == torch.bfloat16
    assert torch.equal(shift[1], torch.zeros_like(shift[1]))
    assert torch.equal(steered.calls[0][0], plain.calls[0][0] + (-vec.direction(1)).to(torch.bfloat16))
    assert not torch.equal(logits[0], logits[1])


def test_layers_on_another_device_get_their_delta_there(lm: LoadedModel) -> None:
    """Layers 2-3 and the head on ``meta`` (a second "device"), layers 0-1 on the CPU, as with a split model."""
    vec = _vector(lm.hidden_size, (1, 2))
    batch = _prompt(lm)
    blocks = decoder_layers(lm.model)
    with _split(lm, {2: ("meta", torch.float32), 3: ("meta", torch.float32)}, ("meta", torch.float32)):
        assert lm.device.type == "cpu"  # model.device names the first device only
        cpu_plain, cpu_steered, meta_steered = _Outputs(), _Outputs(), _Outputs()
        handle = blocks[1].register_forward_hook(cpu_plain)
        with steer(lm.model, vec, 3.0, positions="last", unit="raw"):
            inner = [blocks[1].register_forward_hook(cpu_steered), blocks[2].register_forward_hook(meta_steered)]
            logits = lm.model(input_ids=batch.input_ids).logits
            for h in inner:
                h.remove()
        handle.remove()
    assert meta_steered.calls[0].device.type == "meta" and logits.device.type == "meta"
    assert logits.shape == (1, batch.input_ids.shape[1], len(lm.tokenizer))
    shift = cpu_steered.calls[0] - cpu_plain.calls[0]
    assert torch.allclose(shift[0, -1], -3.0 * vec.direction(1), atol=1e-6)
    assert shift[0, :-1].abs().max() == 0


def test_a_model_built_on_meta_registers_and_removes_hooks(tiny_tokenizer: Any) -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=len(tiny_tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    with torch.device("meta"):
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    vec = _vector(64, (1, 2))
    seen = _Outputs()
    blocks = decoder_layers(model)
    ids = torch.zeros(2, 5, dtype=torch.long, device="meta")
    with steer(
        model,
        [
            SteeringSpec(vec, 1.0, positions="all", unit="raw"),
            SteeringSpec(vec, -0.5, layers=(2,), unit="relative", positions="all"),
        ],
    ):
        assert [len(b._forward_hooks) for b in blocks] == [0, 1, 1]
        handle = blocks[2].register_forward_hook(seen)
        out = model(input_ids=ids).logits
        handle.remove()
    assert [len(b._forward_hooks) for b in blocks] == [0, 0, 0] and not model._forward_pre_hooks
    assert seen.calls[0].device.type == "meta" and seen.calls[0].dtype == torch.bfloat16
    assert out.shape == (2, 5, len(tiny_tokenizer)) and out.device.type == "meta"


def test_masked_mean_follows_the_hidden_state_device() -> None:
    hidden = torch.empty(2, 3, 4, device="meta")
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]], dtype=torch.bool)
    assert masked_mean(hidden, mask).device.type == "meta"


def test_extraction_and_detection_run_with_a_bfloat16_layer(lm: LoadedModel) -> None:
    samples = toy_samples(2)
    reference = extract_activations(lm, samples, [1, 2], progress=False)
    vec = _vector(lm.hidden_size, (1, 2))
    variants = {"base": (), "steered": (SteeringSpec(vec, 4.0, positions="last", unit="raw"),)}
    with _split(lm, {1: ("cpu", torch.bfloat16)}, ("cpu", torch.float32)):
        acts = extract_activations(lm, samples, [1, 2], progress=False)
        result = detect_variants_modes(lm, samples, variants, progress=False)["logit"]
    assert acts.get("last").dtype == torch.float32 and acts.get("last").device.type == "cpu"
    # layer 1 is computed in bfloat16 (relative error ~ 2^-8), layer 2 in float32 from a bfloat16 input
    torch.testing.assert_close(acts.get("last", 1), reference.get("last", 1), rtol=0.05, atol=0.05)
    margins = {name: [r.margin for r in records] for name, records in result.items()}
    assert all(m is not None and abs(m) < 1e6 for ms in margins.values() for m in ms)
    assert margins["base"] != margins["steered"]


def test_bfloat16_is_the_default_on_cuda() -> None:
    assert _pick_dtype(None, "cuda") == torch.bfloat16
    assert _pick_dtype("auto", "cuda:1") == torch.bfloat16
    assert _pick_dtype(None, "cpu") == torch.float32
    assert _pick_dtype("fp16", "cuda") == torch.float16
