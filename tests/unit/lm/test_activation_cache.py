"""The on-disk activation cache: extracted once, reused exactly, keyed so that nothing stale is read."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

from vulnsteer.lm import activation_cache as actcache
from vulnsteer.lm.activation_cache import ActivationCache
from vulnsteer.lm.activations import extract_activations
from vulnsteer.lm.model import LoadedModel


@pytest.fixture
def samples() -> Any:
    from conftest import toy_samples

    return toy_samples(3)


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """Records the layers of every real extraction."""
    calls: list[list[int]] = []
    real = actcache.extract_activations

    def spy(lm: LoadedModel, samples: Any, layers: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(list(layers))
        return real(lm, samples, layers, *args, **kwargs)

    monkeypatch.setattr(actcache, "extract_activations", spy)
    return calls


def test_second_call_reads_the_cache_exactly(
    tmp_path: Path, tiny_llama: LoadedModel, samples: Any, counting: list[list[int]]
) -> None:
    cache = ActivationCache(tmp_path)
    first, stats = cache.load_or_extract(tiny_llama, samples, [1, 3], ["last", "code_mean"], progress=False)
    assert (stats.hits, stats.misses, stats.extracted_layers) == (0, 4, [1, 3])
    assert len(list(tmp_path.rglob("*.safetensors"))) == 4
    second, stats = cache.load_or_extract(tiny_llama, samples, [1, 3], ["last", "code_mean"], progress=False)
    assert (stats.hits, stats.misses) == (4, 0)
    assert counting == [[1, 3]]
    direct = extract_activations(tiny_llama, samples, [1, 3], ["last", "code_mean"], progress=False)
    for pos in ("last", "code_mean"):
        assert torch.equal(first.get(pos), second.get(pos))
        assert torch.equal(first.get(pos), direct.get(pos))
    assert second.sample_ids == [s.id for s in samples] and second.layers == [1, 3]


def test_only_missing_layers_are_extracted(
    tmp_path: Path, tiny_llama: LoadedModel, samples: Any, counting: list[list[int]]
) -> None:
    cache = ActivationCache(tmp_path)
    cache.load_or_extract(tiny_llama, samples, [1], ["last"], progress=False)
    acts, stats = cache.load_or_extract(tiny_llama, samples, [1, 2], ["last"], progress=False)
    assert counting == [[1], [2]]
    assert (stats.hits, stats.misses) == (1, 1)
    assert acts.get("last").shape == (len(samples), 2, tiny_llama.hidden_size)


def test_keys_separate_models_data_and_poolings(
    tmp_path: Path, tiny_tokenizer: Any, tiny_llama: LoadedModel, samples: Any, counting: list[list[int]]
) -> None:
    from conftest import make_tiny

    cache = ActivationCache(tmp_path)
    cache.load_or_extract(tiny_llama, samples, [1], ["last"], progress=False)
    other_weights = make_tiny(tiny_tokenizer, "llama", seed=1)
    assert other_weights.fingerprint == tiny_llama.fingerprint  # same architecture ...
    assert other_weights.identity.digest() != tiny_llama.identity.digest()  # ... but not the same model
    _, stats = cache.load_or_extract(other_weights, samples, [1], ["last"], progress=False)
    assert stats.misses == 1
    changed = [dataclasses.replace(samples[0], code=samples[0].code + " "), *samples[1:]]
    _, stats = cache.load_or_extract(tiny_llama, changed, [1], ["last"], progress=False)
    assert stats.misses == 1
    _, stats = cache.load_or_extract(tiny_llama, samples, [1], ["code_mean"], progress=False)
    assert stats.misses == 1
    assert len(counting) == 4


def test_damaged_or_foreign_entries_are_misses(tmp_path: Path, tiny_llama: LoadedModel, samples: Any) -> None:
    cache = ActivationCache(tmp_path)
    cache.load_or_extract(tiny_llama, samples, [1], ["last"], progress=False)
    (entry,) = tmp_path.rglob("*.safetensors")
    entry.write_bytes(b"not a safetensors file")
    acts, stats = cache.load_or_extract(tiny_llama, samples, [1], ["last"], progress=False)
    assert stats.misses == 1 and acts.get("last").shape[0] == len(samples)
    # an entry whose header names other samples is not used either
    from safetensors.torch import save_file

    save_file(
        {"hidden": torch.zeros(len(samples), tiny_llama.hidden_size)},
        str(entry),
        metadata={"format": "vulnsteer.ActivationCache", "sample_ids": "[]"},
    )
    _, stats = cache.load_or_extract(tiny_llama, samples, [1], ["last"], progress=False)
    assert stats.misses == 1


def test_disabled_cache_writes_nothing(tmp_path: Path, tiny_llama: LoadedModel, samples: Any) -> None:
    cache = ActivationCache(tmp_path / "c", enabled=False)
    _, stats = cache.load_or_extract(tiny_llama, samples, [1], ["last"], progress=False)
    _, stats = cache.load_or_extract(tiny_llama, samples, [1], ["last"], progress=False)
    assert stats.misses == 1 and not (tmp_path / "c").exists()


def test_default_root_follows_vulnsteer_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VULNSTEER_CACHE", str(tmp_path))
    assert ActivationCache().root == tmp_path / "activations"
