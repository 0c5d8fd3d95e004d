"""Detectors: shared-prefix fast path equals the full computation; greedy decoding equals HF generate."""

from __future__ import annotations

import pytest
import torch

from conftest import toy_samples
from vulnsteer.detection.engine import DetectionRecord, detect_variants, generate_verdicts, score_logits
from vulnsteer.lm.model import LoadedModel
from vulnsteer.lm.prompts import answer_token_ids, build_prompt, tokenize_prompts
from vulnsteer.steering.hooks import SteeringSpec, steer
from vulnsteer.steering.vectors import Provenance, SteeringVector


def _vec(layers: tuple[int, ...] = (1, 2), scale: float = 3.0) -> SteeringVector:
    gen = torch.Generator().manual_seed(7)
    dirs = {layer: scale * torch.randn(64, generator=gen) for layer in layers}
    return SteeringVector(dirs, Provenance("tiny", "x", 64, layers, "last", "mean_diff", "CWE-89", 1, 1, "h", "t"))


def _variants() -> dict[str, list[SteeringSpec]]:
    v = _vec()
    return {
        "base": [],
        "last+": [SteeringSpec(v, 2.0, positions="last", unit="raw")],
        "last-": [SteeringSpec(v, -2.0, positions="last", unit="raw")],
        "gen": [SteeringSpec(v, 1.0, positions="generated", unit="raw")],
        "both": [
            SteeringSpec(v, 1.0, positions="last", unit="raw"),
            SteeringSpec(v, 0.5, positions="generated", unit="raw"),
        ],
        "answer": [SteeringSpec(v, 1.5, positions="answer", unit="raw")],
        "last+gen": [
            SteeringSpec(v, 1.5, positions="last", unit="raw"),
            SteeringSpec(v, 1.5, positions="generated", unit="raw"),
        ],
    }


@pytest.mark.parametrize("mode", ["logit", "generation"])
def test_shared_prefix_matches_full_computation(tiny_llama: LoadedModel, mode: str) -> None:
    samples = toy_samples(3)
    kwargs = dict(mode=mode, batch_size=4, max_new_tokens=5, progress=False)
    fast = detect_variants(tiny_llama, samples, _variants(), share_prefix=True, max_rows=64, **kwargs)  # type: ignore[arg-type]
    slow = detect_variants(tiny_llama, samples, _variants(), share_prefix=False, max_rows=1, **kwargs)  # type: ignore[arg-type]
    for name in _variants():
        for a, b in zip(fast[name], slow[name]):
            assert a.sample_id == b.sample_id
            if mode == "logit":
                assert a.margin == pytest.approx(b.margin, abs=1e-4)
            else:
                assert a.text == b.text
    answer, split = fast["answer"], fast["last+gen"]  # answer = last + generated
    assert [(r.text, r.margin) for r in answer] == [(r.text, r.margin) for r in split]
    if mode == "logit":  # steering really changed something
        assert any(abs(a.margin - b.margin) > 1e-3 for a, b in zip(fast["base"], fast["last+"]))  # type: ignore[operator]


def test_steered_variant_equals_outer_steer_context(tiny_llama: LoadedModel) -> None:
    samples = toy_samples(2)
    v = _vec()
    spec = SteeringSpec(v, 2.0, positions="all", unit="raw")
    inner = detect_variants(tiny_llama, samples, {"s": [spec]}, progress=False)["s"]
    with steer(tiny_llama.model, spec):
        outer = score_logits(tiny_llama, samples, progress=False)
    assert [r.margin for r in inner] == pytest.approx([r.margin for r in outer], abs=1e-4)


def test_greedy_matches_hf_generate(tiny_llama: LoadedModel) -> None:
    samples = toy_samples(2)
    ours = generate_verdicts(tiny_llama, samples, max_new_tokens=6, batch_size=4, progress=False)
    tok = tiny_llama.tokenizer
    for s, rec in zip(samples, ours):
        batch = tokenize_prompts(tok, [build_prompt(tok, s.code, s.language)])
        out = tiny_llama.model.generate(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            max_new_tokens=6,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
        )
        text = "Answer:" + tok.decode(out[0, batch.input_ids.shape[1] :], skip_special_tokens=True)
        assert rec.text == text


def test_batching_does_not_change_scores(tiny_llama: LoadedModel) -> None:
    samples = toy_samples(3)
    one = score_logits(tiny_llama, samples, batch_size=1, progress=False)
    many = score_logits(tiny_llama, samples, batch_size=6, progress=False)
    assert [r.margin for r in one] == pytest.approx([r.margin for r in many], abs=1e-3)


def test_records_keep_sample_order_and_fields(tiny_llama: LoadedModel) -> None:
    samples = toy_samples(2)
    recs = score_logits(tiny_llama, samples, progress=False)
    assert [r.sample_id for r in recs] == [s.id for s in samples]
    assert all(isinstance(r, DetectionRecord) and 0 <= (r.score or 0) <= 1 for r in recs)
    assert [r.y_true for r in recs] == [1, 0, 1, 0]
    assert recs[0].to_prediction().y_pred in (0, 1)


def test_answer_tokens_distinct(tiny_llama: LoadedModel) -> None:
    vuln, secure = answer_token_ids(tiny_llama.tokenizer)
    assert vuln != secure


@pytest.mark.parametrize("share", [True, False])
def test_sink_records_the_same_activations_as_extraction(tiny_llama: LoadedModel, share: bool) -> None:
    from vulnsteer.lm.activations import ActivationSink, extract_activations

    samples = toy_samples(3)
    sink = ActivationSink([1, 3])
    variants = {"base": [], "steered": [SteeringSpec(_vec((1, 2)), 2.0, positions="last", unit="raw")]}
    detect_variants(tiny_llama, samples, variants, share_prefix=share, batch_size=4, progress=False, sink=sink)
    ids = [s.id for s in samples]
    assert sink.complete(ids)
    got = sink.activations(ids)
    want = extract_activations(tiny_llama, samples, [1, 3], progress=False)
    for pos in ("last", "code_mean"):
        assert torch.allclose(got.get(pos), want.get(pos), atol=1e-4), pos


def test_prefix_store_computes_each_prefix_once_and_changes_nothing(tiny_llama: LoadedModel) -> None:
    from vulnsteer.detection.engine import PrefixStore, detect_variants_modes

    samples = toy_samples(3)
    n_batches = -(-len(samples) // 4)
    assert n_batches > 1
    variants = _variants()
    first, second = dict(list(variants.items())[:2]), dict(list(variants.items())[2:])
    kwargs = dict(modes=("logit", "generation"), batch_size=4, max_new_tokens=4, progress=False)
    store = PrefixStore()
    got = {**detect_variants_modes(tiny_llama, samples, first, prefix_store=store, **kwargs)["logit"]}  # type: ignore[arg-type]
    assert (store.hits, store.misses, len(store)) == (0, n_batches, n_batches) and store.used_bytes > 0
    again = detect_variants_modes(tiny_llama, samples, second, prefix_store=store, **kwargs)  # type: ignore[arg-type]
    assert (store.hits, store.misses) == (n_batches, n_batches)  # the second call reused every prefix
    got.update(again["logit"])
    want = detect_variants_modes(tiny_llama, samples, variants, **kwargs)  # type: ignore[arg-type]
    for name in variants:
        assert [r.margin for r in got[name]] == pytest.approx([r.margin for r in want["logit"][name]], abs=1e-5)
    assert [r.text for r in again["generation"]["gen"]] == [r.text for r in want["generation"]["gen"]]


def test_prefix_store_respects_its_budget_and_the_sink(tiny_llama: LoadedModel) -> None:
    from vulnsteer.detection.engine import PrefixStore, detect_variants_modes
    from vulnsteer.lm.activations import ActivationSink, extract_activations

    samples = toy_samples(3)
    variants = {"base": [], "s": [SteeringSpec(_vec((1,)), 1.0, positions="last", unit="raw")]}
    empty = PrefixStore(max_bytes=0)
    detect_variants_modes(tiny_llama, samples, variants, batch_size=4, progress=False, prefix_store=empty)
    detect_variants_modes(tiny_llama, samples, variants, batch_size=4, progress=False, prefix_store=empty)
    assert len(empty) == 0 and empty.hits == 0 and empty.used_bytes == 0

    store = PrefixStore()
    detect_variants_modes(tiny_llama, samples, variants, batch_size=4, progress=False, prefix_store=store)
    want = extract_activations(tiny_llama, samples, [1, 2], progress=False)
    ids = [s.id for s in samples]
    n_batches = -(-len(samples) // 4)
    for attempt in range(2):  # 1st: the stored entry has no code means -> recomputed; 2nd: served from the store
        sink = ActivationSink([1, 2])
        detect_variants_modes(
            tiny_llama, samples, variants, batch_size=4, progress=False, prefix_store=store, sink=sink
        )
        assert store.hits == attempt * n_batches
        for pos in ("last", "code_mean"):
            assert torch.allclose(sink.activations(ids).get(pos), want.get(pos), atol=1e-4), (attempt, pos)
    other = ActivationSink([3])  # code means at other layers are not served from the store
    detect_variants_modes(tiny_llama, samples, variants, batch_size=4, progress=False, prefix_store=store, sink=other)
    assert store.hits == n_batches
    assert torch.allclose(
        other.activations(ids, ("code_mean",)).get("code_mean"),
        extract_activations(tiny_llama, samples, [3], progress=False).get("code_mean"),
        atol=1e-4,
    )


@pytest.mark.parametrize("positions", ["last", "all"])
def test_variants_that_leave_samples_out_run_only_the_rest(tiny_llama: LoadedModel, positions: str) -> None:
    """A variant returning None for some samples skips their rows; the others match a run on them alone."""
    from conftest import toy_samples
    from vulnsteer.detection.engine import detect_variants_modes
    from vulnsteer.detection.prefix import PrefixStore

    samples = toy_samples(3, "CWE-89") + toy_samples(3, "CWE-78")
    spec = SteeringSpec(_vec((1, 2)), 1.5, positions=positions, unit="raw")  # type: ignore[arg-type]
    variants = {"base": [], "only89": lambda s: [spec] if s.cwe == "CWE-89" else None}
    mixed = detect_variants_modes(
        tiny_llama,
        samples,
        variants,
        modes=("logit", "generation"),
        batch_size=4,
        max_new_tokens=3,
        progress=False,
        prefix_store=PrefixStore(),
    )
    alone = detect_variants_modes(
        tiny_llama,
        samples[:6],
        {"only89": [spec]},
        modes=("logit", "generation"),
        batch_size=4,
        max_new_tokens=3,
        progress=False,
    )
    assert [r.sample_id for r in mixed["logit"]["only89"]] == [s.id for s in samples[:6]]
    assert [r.margin for r in mixed["logit"]["only89"]] == pytest.approx(
        [r.margin for r in alone["logit"]["only89"]], abs=1e-4
    )
    assert [r.text for r in mixed["generation"]["only89"]] == [r.text for r in alone["generation"]["only89"]]
    assert len(mixed["logit"]["base"]) == len(samples)
