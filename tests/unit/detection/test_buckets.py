"""Length buckets: batches of functions of similar token counts pad less, and score exactly as batches in the
order given (left padding keeps every row's positions and masks exact), with the shared prompt prefix still
cached between calls."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from toys import save_detector
from vulnsteer.data.sample import Sample
from vulnsteer.detection.engine import detect_variants_modes
from vulnsteer.detection.prefix import PrefixStore
from vulnsteer.lm.activations import extract_activations, length_order
from vulnsteer.lm.model import LoadedModel
from vulnsteer.scan import ModelScorer, ScorerSpec


def _mixed() -> list[Sample]:
    """Short and long functions, interleaved (so batches in the order given mix lengths)."""
    short = ["x = 1", "def f(): return 0", "int g(void) { return 1; }", "y = x"]
    long = [
        "def read(path):\n    data = open(path).read()\n    return eval(data)\n" * 4,
        "int main(int argc, char **argv) {\n    char buf[16];\n    strcpy(buf, argv[1]);\n    return 0;\n}\n" * 3,
        "def query(db, user):\n    return db.execute('SELECT * FROM t WHERE id = ' + user)\n" * 3,
        "def q(c, u):\n    return c.execute('SELECT name FROM users WHERE id = ' + u)\n" * 2,
    ]
    codes = [code for pair in zip(short, long, strict=True) for code in pair]
    languages = ["c" if "int " in code else "python" for code in codes]
    return [
        Sample(f"u{i}", code, lang, "unknown", "vulnerable") for i, (code, lang) in enumerate(zip(codes, languages))
    ]


class _Padding:
    """Counts the tokens (real and padding) the model's forward passes read, via a hook on its embeddings."""

    def __init__(self, lm: LoadedModel) -> None:
        self.cells = 0
        self.handle = lm.model.get_input_embeddings().register_forward_hook(self._seen)

    def _seen(self, _module: Any, args: Any, _out: Any) -> None:
        self.cells += int(args[0].numel())

    def __enter__(self) -> _Padding:
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()


def test_length_order_sorts_by_token_count_or_keeps_the_order(tiny_lm: LoadedModel) -> None:
    texts = [s.code for s in _mixed()]
    order = length_order(tiny_lm, texts)
    counts = [len(tiny_lm.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    assert sorted(order) == list(range(len(texts))) and order != list(range(len(texts)))
    assert [counts[i] for i in order] == sorted(counts)
    assert length_order(tiny_lm, texts, buckets=False) == list(range(len(texts)))


def test_bucketed_states_equal_unbucketed_ones_and_pad_less(tiny_llama: LoadedModel) -> None:
    """The hidden states the probe detectors read (every pooling), in batches of 3: bucketed == unbucketed, each
    sample's states at its own index, and the bucketed passes read fewer padded cells."""
    samples = _mixed()
    found = {}
    cells = {}
    for buckets in (True, False):
        with _Padding(tiny_llama) as padding:
            found[buckets] = extract_activations(
                tiny_llama, samples, [0, 2, 3], batch_size=3, progress=False, buckets=buckets
            )
        cells[buckets] = padding.cells
    assert cells[True] < cells[False]
    for pooling in ("last", "code_mean", "code_max"):
        assert torch.allclose(found[True].get(pooling), found[False].get(pooling), rtol=0, atol=1e-6), pooling
    alone = extract_activations(tiny_llama, samples[1:2], [0, 2, 3], batch_size=1, progress=False)
    assert torch.allclose(found[True].get("code_mean")[1], alone.get("code_mean")[0], rtol=0, atol=1e-6)


def test_scan_scores_are_the_same_with_and_without_buckets(tiny_lm: LoadedModel, tmp_path: Path) -> None:
    """The model's answer and a probe-gated steering detector, through the scan's scorer: the same scores,
    probes and pushes with and without length buckets (batches of 3 over short and long functions)."""
    samples = _mixed()
    detector = save_detector(tiny_lm, tmp_path / "detector")
    for extra in ({}, {"detector": detector}):
        got = {}
        for buckets in (True, False):
            spec = ScorerSpec(batch_size=3, max_code_tokens=256, length_buckets=buckets, **extra)  # type: ignore[arg-type]
            got[buckets] = ModelScorer(spec, lm=tiny_lm).score(samples, progress=False)
        bucketed, unbucketed = got[True], got[False]
        assert len(bucketed) == len(samples)
        assert torch.allclose(
            torch.tensor([s.score for s in bucketed]), torch.tensor([s.score for s in unbucketed]), rtol=0, atol=1e-6
        ), extra
        assert [s.verdict for s in bucketed] == [s.verdict for s in unbucketed]
        if extra:
            assert [s.push for s in bucketed] == [s.push for s in unbucketed]
            probes = [torch.tensor([s.probe for s in found]) for found in (bucketed, unbucketed)]
            assert torch.allclose(*probes, rtol=0, atol=1e-5)


def test_buckets_keep_the_shared_prefix_cached_between_calls(tiny_llama: LoadedModel) -> None:
    """A second call on the same samples finds every batch's prompt prefix in the store (the bucketed order is
    fixed by the samples alone), and scores as the first call did."""
    samples = _mixed()
    store = PrefixStore()
    first = detect_variants_modes(tiny_llama, samples, {"base": []}, batch_size=3, progress=False, prefix_store=store)
    assert (store.hits, store.misses) == (0, 3)
    again = detect_variants_modes(tiny_llama, samples, {"base": []}, batch_size=3, progress=False, prefix_store=store)
    assert (store.hits, store.misses) == (3, 3)
    assert [r.margin for r in again["logit"]["base"]] == [r.margin for r in first["logit"]["base"]]
    plain = detect_variants_modes(tiny_llama, samples, {"base": []}, batch_size=3, progress=False, buckets=False)
    margins = [torch.tensor([r.margin for r in found["logit"]["base"]]) for found in (first, plain)]
    assert torch.allclose(*margins, rtol=0, atol=1e-5)
