"""Adaptive batch sizes: back off on (injected) CUDA out-of-memory errors, retry the same rows, lose nothing."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from conftest import toy_samples
from vulnsteer.detection.engine import detect_variants_modes
from vulnsteer.detection.prefix import PrefixStore
from vulnsteer.lm import batching
from vulnsteer.lm.activations import extract_activations
from vulnsteer.lm.batching import AutoBatch, adapts, is_out_of_memory
from vulnsteer.lm.model import LoadedModel
from vulnsteer.steering.hooks import SteeringSpec
from vulnsteer.steering.vectors import Provenance, SteeringVector


def _oom() -> torch.cuda.OutOfMemoryError:
    return torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


class _Limited:
    """A batch function that runs out of (fake) GPU memory above *limit* rows; logs every call's size."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.sizes: list[int] = []

    def __call__(self, rows: list[int]) -> list[int]:
        self.sizes.append(len(rows))
        if len(rows) > self.limit:
            raise _oom()
        return [r * 10 for r in rows]


def test_cuda_backs_off_and_every_row_is_done_exactly_once() -> None:
    batcher = AutoBatch(8, adaptive=True)
    fn = _Limited(3)
    out = list(batcher.map(list(range(21)), fn))
    rows = [r for chunk, _ in out for r in chunk]
    assert rows == list(range(21))  # in order, none lost, none twice
    assert [v for _, result in out for v in result] == [r * 10 for r in range(21)]
    assert batcher.size == 2 and batcher.backoffs == 2
    # 8 fails, 4 fails, then the same first rows at 2, and 2 from then on (the size that fitted is kept)
    assert fn.sizes[:3] == [8, 4, 2] and set(fn.sizes[3:]) <= {2, 1}
    assert all(len(chunk) <= 2 for chunk, _ in out)


def test_on_retry_sees_the_failed_rows() -> None:
    failed: list[list[int]] = []
    out = list(AutoBatch(4, adaptive=True).map(list(range(6)), _Limited(2), on_retry=failed.append))
    assert failed == [[0, 1, 2, 3]]
    assert [chunk for chunk, _ in out] == [[0, 1], [2, 3], [4, 5]]


def test_cpu_never_changes_the_configured_size() -> None:
    batcher = AutoBatch.for_device(8, "cpu")
    assert not batcher.adaptive
    with pytest.raises(torch.cuda.OutOfMemoryError):
        list(batcher.map(list(range(10)), _Limited(3)))
    assert batcher.size == 8 and batcher.backoffs == 0
    ok = list(AutoBatch.for_device(3, "cpu").map(list(range(7)), _Limited(100)))
    assert [len(chunk) for chunk, _ in ok] == [3, 3, 1]


def test_other_errors_and_oom_at_size_one_propagate() -> None:
    def broken(rows: list[int]) -> None:
        raise ValueError("not memory")

    batcher = AutoBatch(8, adaptive=True)
    with pytest.raises(ValueError, match="not memory"):
        list(batcher.map([1, 2, 3], broken))
    assert batcher.size == 8
    with pytest.raises(torch.cuda.OutOfMemoryError):
        list(AutoBatch(4, adaptive=True).map(list(range(4)), _Limited(0)))


def test_device_rules_and_validation() -> None:
    assert adapts("cuda") and adapts(torch.device("cuda", 1)) and not adapts("cpu") and not adapts("meta")
    assert is_out_of_memory(_oom()) and not is_out_of_memory(RuntimeError("CUDA error: device-side assert"))
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="positive integer"):
            AutoBatch(bad)  # type: ignore[arg-type]


def test_for_model_remembers_the_size_that_fitted(monkeypatch: pytest.MonkeyPatch, tiny_lm: LoadedModel) -> None:
    monkeypatch.setattr(batching, "adapts", lambda _device: True)
    lm = LoadedModel(tiny_lm.model, tiny_lm.tokenizer, "m", "f", "test")
    first = AutoBatch.for_model(lm, "work", 16)
    list(first.map(list(range(20)), _Limited(5)))
    assert first.size == 4
    again = AutoBatch.for_model(lm, "work", 16)
    assert again.size == 4 and again.adaptive  # starts where the last call ended
    assert AutoBatch.for_model(lm, "other", 16).size == 16  # another kind of work starts afresh
    assert AutoBatch.for_model(lm, "work", 2).size == 2  # never above the configured size


def _oom_above(model: Any, rows: int) -> Any:
    """A pre-hook making the model run out of (fake) GPU memory on batches of more than *rows* rows."""
    calls: list[int] = []

    def hook(_module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        calls.append(int(ids.shape[0]))
        if ids.shape[0] > rows:
            raise _oom()

    return model.register_forward_pre_hook(hook, with_kwargs=True), calls


def test_extraction_after_backoff_equals_a_plain_run(monkeypatch: pytest.MonkeyPatch, tiny_lm: LoadedModel) -> None:
    samples = toy_samples(5)
    plain = extract_activations(tiny_lm, samples, [1, 2], batch_size=2, progress=False)
    monkeypatch.setattr(batching, "adapts", lambda _device: True)
    lm = LoadedModel(tiny_lm.model, tiny_lm.tokenizer, "m", "f", "test")
    handle, calls = _oom_above(lm.model, 2)
    try:
        backed_off = extract_activations(lm, samples, [1, 2], batch_size=8, progress=False)
    finally:
        handle.remove()
    assert calls[:3] == [8, 4, 2]
    assert lm.extra["batch_sizes"] == {"extraction:8": 2}
    for pos in ("last", "code_mean"):
        torch.testing.assert_close(backed_off.get(pos), plain.get(pos), rtol=1e-4, atol=1e-5)


def _vector(lm: LoadedModel) -> SteeringVector:
    hidden = lm.hidden_size
    direction = torch.randn(hidden, generator=torch.Generator().manual_seed(3))
    prov = Provenance("tiny", lm.fingerprint, hidden, (1,), "last", "mean_diff", "CWE-89", 2, 2, "h", "now")
    return SteeringVector({1: direction}, prov)


def test_detection_after_backoff_equals_a_plain_run(monkeypatch: pytest.MonkeyPatch, tiny_lm: LoadedModel) -> None:
    samples = toy_samples(3)
    vector = _vector(tiny_lm)
    variants = {
        "base": (),
        "plus": (SteeringSpec(vector, 2.0, positions="last", unit="raw"),),
        "minus": (SteeringSpec(vector, -2.0, positions="last", unit="raw"),),
    }
    kwargs: dict[str, Any] = {"modes": ("logit", "generation"), "max_new_tokens": 3, "progress": False}
    plain = detect_variants_modes(tiny_lm, samples, variants, batch_size=1, **kwargs)
    monkeypatch.setattr(batching, "adapts", lambda _device: True)
    lm = LoadedModel(tiny_lm.model, tiny_lm.tokenizer, "m", "f", "test")
    store = PrefixStore()
    handle, calls = _oom_above(lm.model, 3)  # 4 samples x 3 variants do not fit; 1 x 3 does
    try:
        backed_off = detect_variants_modes(lm, samples, variants, batch_size=4, prefix_store=store, **kwargs)
    finally:
        handle.remove()
    assert max(calls) > 3 and lm.extra["batch_sizes"] == {"detection:logit+generation:64:4": 1}
    assert len(store) == len(samples)  # the failed batches' prefixes were dropped, one entry per sample is left
    for mode in ("logit", "generation"):
        for name in variants:
            got = {r.sample_id: r for r in backed_off[mode][name]}
            want = {r.sample_id: r for r in plain[mode][name]}
            assert got.keys() == want.keys() == {s.id for s in samples}
            for sid, record in want.items():
                assert got[sid].verdict == record.verdict and got[sid].text == record.text
                if mode == "logit":
                    assert got[sid].margin == pytest.approx(record.margin, abs=1e-4)
