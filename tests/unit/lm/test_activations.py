"""Activation extraction: shapes, layer indexing, batching/order invariance, and agreement with a manual forward."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

from conftest import toy_samples
from vulnsteer.data.sample import Sample
from vulnsteer.lm.activations import Activations, extract_activations
from vulnsteer.lm.model import LoadedModel, decoder_layers
from vulnsteer.lm.prompts import build_prompt, tokenize_prompts


def _samples() -> list[Sample]:
    """Samples of clearly different lengths, so batches get real left padding."""
    extra = [
        Sample(
            "long-v",
            "def f(path):\n    data = open(path).read()\n    return eval(data)\n" * 2,
            "python",
            "CWE-94",
            "vulnerable",
            "long",
        ),
        Sample("short-s", "x = 1", "python", "CWE-94", "secure", "short"),
        Sample(
            "c-v", "int main(void) { char buf[16]; strcpy(buf, argv[1]); return 0; }", "c", "CWE-787", "vulnerable", "c"
        ),
    ]
    return [*toy_samples(2), *extra]


def _manual_hidden_states(lm: LoadedModel, sample: Sample) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """Unpadded single-prompt forward with output_hidden_states; also returns the code mask."""
    batch = tokenize_prompts(lm.tokenizer, [build_prompt(lm.tokenizer, sample.code, sample.language)])
    assert bool(batch.attention_mask.all())
    with torch.no_grad():
        out = lm.model(input_ids=batch.input_ids, output_hidden_states=True, use_cache=False)
    return out.hidden_states, batch.code_mask[0]


def test_shape_and_layers(tiny: LoadedModel) -> None:
    samples = _samples()
    acts = extract_activations(tiny, samples, [2, 0], progress=False)
    assert acts.layers == [0, 2]
    assert acts.sample_ids == [s.id for s in samples]
    assert set(acts.by_pooling) == {"last", "code_mean", "code_max"}
    for pos in ("last", "code_mean", "code_max"):
        got = acts.get(pos)
        assert got.shape == (len(samples), 2, tiny.hidden_size)
        assert got.dtype == torch.float32
        assert torch.isfinite(got).all()
        assert torch.equal(acts.get(pos, 2), got[:, 1])
    only_last = extract_activations(tiny, samples[:2], 1, poolings=["last"], progress=False)
    assert set(only_last.by_pooling) == {"last"}
    assert only_last.get("last").shape == (2, 1, tiny.hidden_size)


def test_negative_layer_indices(tiny_llama: LoadedModel) -> None:
    samples = _samples()[:3]
    n = tiny_llama.num_layers
    neg = extract_activations(tiny_llama, samples, [-1, -n], progress=False)
    pos = extract_activations(tiny_llama, samples, [n - 1, 0], progress=False)
    assert neg.layers == pos.layers == [0, n - 1]
    for p in ("last", "code_mean"):
        assert torch.equal(neg.get(p), pos.get(p))
    with pytest.raises(ValueError, match="out of range"):
        extract_activations(tiny_llama, samples, [n], progress=False)


def test_independent_of_batch_size_and_order(tiny: LoadedModel) -> None:
    samples = _samples()
    layers = [0, 1, 3]
    ref = extract_activations(tiny, samples, layers, batch_size=1, progress=False)
    big = extract_activations(tiny, samples, layers, batch_size=8, progress=False)
    order = [3, 0, 4, 2, 6, 1, 5]
    shuffled = extract_activations(tiny, [samples[i] for i in order], layers, batch_size=3, progress=False)
    for p in ("last", "code_mean", "code_max"):
        torch.testing.assert_close(big.get(p), ref.get(p), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(shuffled.get(p), ref.get(p)[order], atol=1e-4, rtol=1e-4)
    assert shuffled.sample_ids == [samples[i].id for i in order]
    assert ref.code_tokens is not None and shuffled.code_tokens is not None and bool((ref.code_tokens > 0).all())
    assert shuffled.code_tokens.tolist() == [int(ref.code_tokens[i]) for i in order]


@pytest.mark.parametrize("layer", [0, 2])
def test_last_and_code_mean_match_a_manual_forward(tiny: LoadedModel, layer: int) -> None:
    samples = _samples()
    acts = extract_activations(tiny, samples, [layer, 3], batch_size=4, progress=False)
    assert layer < tiny.num_layers - 1  # hidden_states[layer + 1] is that layer's output (no final norm)
    for i, sample in enumerate(samples):
        states, code_mask = _manual_hidden_states(tiny, sample)
        hidden = states[layer + 1][0]
        torch.testing.assert_close(acts.get("last", layer)[i], hidden[-1], atol=1e-4, rtol=1e-4)
        assert code_mask.sum() > 0
        expected = hidden[code_mask].mean(0)
        torch.testing.assert_close(acts.get("code_mean", layer)[i], expected, atol=1e-4, rtol=1e-4)
        assert not torch.allclose(acts.get("last", layer)[i], expected, atol=1e-3)
        # code_max: the maximum over the same code tokens, per dimension
        torch.testing.assert_close(acts.get("code_max", layer)[i], hidden[code_mask].amax(0), atol=1e-4, rtol=1e-4)
        assert acts.code_tokens is not None and int(acts.code_tokens[i]) == int(code_mask.sum())


def test_final_layer_is_the_block_output_before_the_final_norm(tiny_llama: LoadedModel) -> None:
    sample = _samples()[0]
    last_layer = tiny_llama.num_layers - 1
    captured: list[torch.Tensor] = []

    def hook(_m: Any, _a: Any, output: Any) -> None:
        captured.append((output if isinstance(output, torch.Tensor) else output[0]).detach())

    handle = decoder_layers(tiny_llama.model)[last_layer].register_forward_hook(hook)
    try:
        states, _ = _manual_hidden_states(tiny_llama, sample)
    finally:
        handle.remove()
    acts = extract_activations(tiny_llama, [sample], -1, poolings=["last"], progress=False)
    torch.testing.assert_close(acts.get("last", last_layer)[0], captured[0][0, -1], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(acts.get("last", last_layer)[0], states[-1][0, -1], atol=1e-3)


def test_hooks_are_removed_even_after_the_early_stop(tiny_llama: LoadedModel) -> None:
    blocks = decoder_layers(tiny_llama.model)
    before = [len(b._forward_hooks) for b in blocks]
    extract_activations(tiny_llama, _samples()[:2], [0, 1], progress=False)
    assert [len(b._forward_hooks) for b in blocks] == before
    with pytest.raises(ValueError, match="unknown pooling"):
        extract_activations(tiny_llama, _samples()[:2], [0], poolings=["first"], progress=False)
    assert [len(b._forward_hooks) for b in blocks] == before
    # the model still runs to the end afterwards
    batch = tokenize_prompts(tiny_llama.tokenizer, [build_prompt(tiny_llama.tokenizer, "x = 1", "python")])
    with torch.no_grad():
        logits = tiny_llama.model(input_ids=batch.input_ids).logits
    assert logits.shape[-1] == len(tiny_llama.tokenizer)


def _hand_made() -> Activations:
    last = torch.zeros(3, 2, 4)
    last[:, 0, 0] = torch.tensor([3.0, 0.0, 6.0])  # layer 5: norms 3, 0, 6 -> mean 3
    last[:, 1, :] = 1.0  # layer 9: norm 2 each
    code = torch.arange(24, dtype=torch.float32).reshape(3, 2, 4)
    return Activations(layers=[5, 9], sample_ids=["a", "b", "c"], by_pooling={"last": last, "code_mean": code})


def test_mean_norms() -> None:
    acts = _hand_made()
    assert acts.mean_norms() == {5: pytest.approx(3.0), 9: pytest.approx(2.0)}
    norms = acts.mean_norms("code_mean")
    assert set(norms) == {5, 9}
    assert norms[5] == pytest.approx(float(acts.get("code_mean", 5).norm(dim=-1).mean()))


def test_subset_and_get() -> None:
    acts = _hand_made()
    sub = acts.subset([2, 0])
    assert sub.sample_ids == ["c", "a"]
    assert sub.layers == [5, 9]
    for p in ("last", "code_mean"):
        assert torch.equal(sub.get(p), acts.get(p)[[2, 0]])
    sub.layers.append(99)  # a copy, not shared
    assert acts.layers == [5, 9]
    with pytest.raises(KeyError, match="pooling 'nowhere' was not recorded"):
        acts.get("nowhere")
    with pytest.raises(KeyError, match="layer 7 was not recorded"):
        acts.get("last", 7)


def test_extraction_runs_only_the_layers_up_to_the_deepest_one_read(tiny_llama: LoadedModel) -> None:
    """Early exit: recording layers 0 and 1 of 4 never runs layers 2 and 3 (nor the head), and the states equal a
    full pass's under left padding (samples of other lengths in one batch)."""
    samples = _samples()
    blocks = decoder_layers(tiny_llama.model)
    ran: list[str] = []
    handles = [blocks[k].register_forward_hook(lambda *_, k=k: ran.append(f"layer {k}")) for k in (2, 3)]
    handles.append(tiny_llama.model.lm_head.register_forward_hook(lambda *_: ran.append("head")))
    try:
        early = extract_activations(tiny_llama, samples, [0, 1], batch_size=8, progress=False)
    finally:
        for handle in handles:
            handle.remove()
    assert ran == []
    full = extract_activations(tiny_llama, samples, [0, 1, 3], batch_size=8, progress=False)  # runs every layer
    for pooling in ("last", "code_mean"):
        assert torch.equal(early.get(pooling), full.get(pooling)[:, :2])


def test_code_poolings_alone_stop_at_the_last_code_token(tiny_llama: LoadedModel) -> None:
    """Reading only code poolings runs each prompt through its last code token: the same states as the whole prompt
    (causal attention), on fewer tokens."""
    samples = _samples()
    layers = [0, tiny_llama.num_layers - 1]
    widths: list[int] = []

    def seen(_m: Any, args: Any, kwargs: Any) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        widths.append(int(hidden.shape[1]))

    handle = decoder_layers(tiny_llama.model)[0].register_forward_pre_hook(seen, with_kwargs=True)
    try:
        whole = extract_activations(tiny_llama, samples, layers, ["last", "code_mean", "code_max"], progress=False)
        full_width = sum(widths)
        widths.clear()
        code = extract_activations(tiny_llama, samples, layers, ["code_mean", "code_max"], progress=False)
    finally:
        handle.remove()
    assert sum(widths) < full_width
    for pooling in ("code_mean", "code_max"):
        torch.testing.assert_close(code.get(pooling), whole.get(pooling), atol=1e-5, rtol=1e-5)
    assert code.code_tokens is not None and torch.equal(code.code_tokens, whole.code_tokens)


def test_through_code_cuts_each_prompt_after_its_code(tiny_tokenizer: Any) -> None:
    prompts = [build_prompt(tiny_tokenizer, s.code, s.language) for s in _samples()]
    whole = tokenize_prompts(tiny_tokenizer, prompts)
    cut = tokenize_prompts(tiny_tokenizer, prompts, through_code=True)
    assert cut.input_ids.shape[1] < whole.input_ids.shape[1]
    assert bool(cut.code_mask[:, -1].all()), "every row ends on a code token"
    assert torch.equal(cut.code_mask.sum(1), whole.code_mask.sum(1))
    for row in range(len(prompts)):  # each row is the whole prompt's head
        ids, kept = (
            whole.input_ids[row][whole.attention_mask[row].bool()],
            cut.input_ids[row][cut.attention_mask[row].bool()],
        )
        assert torch.equal(ids[: len(kept)], kept)


def test_samples_with_the_same_prompt_are_run_once(tiny: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two versions of a file share most of their functions: each distinct prompt is run once and its rows are
    copied to every sample that repeats it (the same code in another language is another prompt)."""
    from vulnsteer.lm import activations as activations_module

    samples = _samples()
    copies = [dataclasses.replace(s, id=f"{s.id}-again", label="secure", pair_id=None) for s in samples[:3]]
    other_language = dataclasses.replace(samples[0], id="as-c", language="c")
    mixed = [samples[0], copies[0], *samples[1:], other_language, *copies[1:]]
    rows_run: list[int] = []
    real = activations_module.batch_states

    def counting(lm: LoadedModel, batch: Any, *args: Any) -> dict[str, torch.Tensor]:
        rows_run.append(int(batch.input_ids.shape[0]))
        return real(lm, batch, *args)

    monkeypatch.setattr(activations_module, "batch_states", counting)
    acts = extract_activations(tiny, mixed, [0, 2], batch_size=2, progress=False)
    assert sum(rows_run) == len(samples) + 1  # the copies were not run; the other language was
    assert acts.sample_ids == [s.id for s in mixed]
    assert acts.code_tokens is not None and len(acts.code_tokens) == len(mixed)
    row = {s.id: i for i, s in enumerate(mixed)}
    rows_run.clear()
    alone = extract_activations(tiny, samples, [0, 2], batch_size=2, progress=False)
    for pooling in ("last", "code_mean", "code_max"):
        got = acts.get(pooling)
        for copy, original in zip(copies, samples, strict=False):
            assert torch.equal(got[row[copy.id]], got[row[original.id]])
        for i, sample in enumerate(samples):
            torch.testing.assert_close(got[row[sample.id]], alone.get(pooling)[i], atol=1e-5, rtol=1e-5)
        assert not torch.equal(got[row["as-c"]], got[row[samples[0].id]])
