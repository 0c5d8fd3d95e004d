"""Steering vectors: safe (de)serialisation, immutability, refusals, and methods that point the right way."""

from __future__ import annotations

import dataclasses
import pickle
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from conftest import toy_samples
from vulnsteer.data.sample import Sample, dataset_hash
from vulnsteer.lm.activations import Activations
from vulnsteer.lm.identity import ModelIdentity, ModelMismatchError
from vulnsteer.steering.vectors import (
    METHODS,
    Provenance,
    SteeringVector,
    VectorMismatchError,
    fit_vector,
    mean_difference,
)

HIDDEN = 16


def _prov(layers: tuple[int, ...] = (1, 3), **changes: Any) -> Provenance:
    prov = Provenance(
        model_id="tiny-llama",
        model_fingerprint="abcd1234abcd1234",
        hidden_size=HIDDEN,
        layers=layers,
        pooling="last",
        method="mean_diff",
        cwe="CWE-89",
        n_vulnerable=5,
        n_secure=6,
        dataset_hash="feedbeef",
        created="2024-01-01T00:00:00+00:00",
        layer_norms={layer: 10.0 + layer for layer in layers},
        extra={"split_seed": 0, "note": ["a", 1]},
    )
    return dataclasses.replace(prov, **changes)


def _vector(layers: tuple[int, ...] = (1, 3), seed: int = 0) -> SteeringVector:
    gen = torch.Generator().manual_seed(seed)
    return SteeringVector({layer: torch.randn(HIDDEN, generator=gen) for layer in layers}, _prov(layers))


# ---------------------------------------------------------------- save / load


def test_save_load_roundtrip(tmp_path: Path) -> None:
    vec = _vector((0, 2, 5))
    path = tmp_path / "sub" / "cwe-89-mean_diff.safetensors"
    vec.save(path)
    back = SteeringVector.load(path)
    assert back.layers == (0, 2, 5)
    for layer in vec.layers:
        assert torch.equal(back.directions[layer], vec.directions[layer])
    assert back.provenance == vec.provenance
    assert back.provenance.layer_norms == {0: 10.0, 2: 12.0, 5: 15.0}
    assert back.provenance.extra == {"split_seed": 0, "note": ["a", 1]}
    assert back.relative_norm(2) == pytest.approx(vec.norm(2) / 12.0)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # atomic write left no temp file


def test_load_checks_pass_for_the_right_model(tmp_path: Path) -> None:
    path = tmp_path / "v.safetensors"
    _vector().save(path)
    back = SteeringVector.load(path, hidden_size=HIDDEN, model=ModelIdentity("tiny-llama", "abcd1234abcd1234"))
    assert back.cwe == "CWE-89"


def test_load_refuses_hidden_size_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "v.safetensors"
    _vector().save(path)
    with pytest.raises(VectorMismatchError) as info:
        SteeringVector.load(path, hidden_size=576)
    message = str(info.value)
    assert str(path) in message
    assert "hidden size 16" in message and "576" in message


def test_load_refuses_fingerprint_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "v.safetensors"
    _vector().save(path)
    with pytest.raises(ModelMismatchError) as info:
        SteeringVector.load(path, hidden_size=HIDDEN, model=ModelIdentity("other", "0000000000000000"))
    message = str(info.value)
    assert str(path) in message
    assert "abcd1234abcd1234" in message and "0000000000000000" in message
    assert "--allow-model-mismatch" in message


def test_load_checks_the_fingerprint_even_without_a_hidden_size(tmp_path: Path) -> None:
    path = tmp_path / "v.safetensors"
    _vector().save(path)
    with pytest.raises(ModelMismatchError, match="fingerprint"):
        SteeringVector.load(path, model=ModelIdentity("other", "0000000000000000"))


def test_load_checks_the_weights_digest_in_the_same_dtype_only(tmp_path: Path) -> None:
    path = tmp_path / "v.safetensors"
    ident = {"weights_digest": "1111222233334444", "dtype": "float32"}
    vec = _vector()
    SteeringVector(dict(vec.directions), dataclasses.replace(vec.provenance, extra=ident)).save(path)
    same = ModelIdentity("tiny-llama", "abcd1234abcd1234", "1111222233334444", "float32")
    SteeringVector.load(path, model=same)  # the same weights
    with pytest.raises(ModelMismatchError) as info:  # a fine-tune: same architecture, other weights
        SteeringVector.load(path, model=dataclasses.replace(same, weights_digest="9999888877776666"))
    message = str(info.value)
    assert str(path) in message and "other weights" in message and "1111222233334444" in message
    assert "--allow-model-mismatch" in message
    # another dtype gives another digest for the same weights: not evidence of other weights
    SteeringVector.load(path, model=dataclasses.replace(same, weights_digest="9999888877776666", dtype="bfloat16"))
    # vectors saved without a digest (older files, hand-made ones) are checked on the fingerprint only
    _vector().save(path)
    SteeringVector.load(path, model=same)


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.safetensors"):
        SteeringVector.load(tmp_path / "nope.safetensors")


@pytest.mark.parametrize("content", [b"", b"hello, not a tensor file", b"\xff" * 64])
def test_non_safetensors_file_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "junk.safetensors"
    path.write_bytes(content)
    with pytest.raises(VectorMismatchError, match="not a safetensors file") as info:
        SteeringVector.load(path)
    assert str(path) in str(info.value)


def test_plain_safetensors_without_our_header_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "plain.safetensors"
    save_file({"layer.1": torch.zeros(HIDDEN)}, str(path))
    with pytest.raises(VectorMismatchError, match="not a vulnsteer steering vector") as info:
        SteeringVector.load(path)
    assert str(path) in str(info.value)
    save_file({"layer.1": torch.zeros(HIDDEN)}, str(path), metadata={"format": "something-else"})
    with pytest.raises(VectorMismatchError, match="not a vulnsteer steering vector"):
        SteeringVector.load(path)


class _Payload:
    """Unpickling this creates a marker file: proof that something was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (Path.touch, (self.marker,))


def test_loader_never_unpickles(tmp_path: Path) -> None:
    marker = tmp_path / "UNPICKLED"
    raw = tmp_path / "raw.safetensors"
    raw.write_bytes(pickle.dumps({"layer.1": _Payload(marker)}))
    zipped = tmp_path / "torch.safetensors"
    torch.save({"layer.1": torch.zeros(HIDDEN), "payload": _Payload(marker)}, zipped)
    for path in (raw, zipped):
        with pytest.raises(VectorMismatchError, match="not a safetensors file"):
            SteeringVector.load(path)
    assert not marker.exists()
    pickle.loads(raw.read_bytes())  # sanity: the payload does work when unpickled
    assert marker.exists()


# ---------------------------------------------------------------- immutability


def test_vector_is_frozen() -> None:
    vec = _vector()
    with pytest.raises(dataclasses.FrozenInstanceError):
        vec.directions = {}  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        vec.provenance.cwe = "CWE-79"  # type: ignore[misc]
    with pytest.raises(TypeError):
        vec.directions[1] = torch.zeros(HIDDEN)  # type: ignore[index]
    with pytest.raises(TypeError):
        del vec.directions[1]  # type: ignore[attr-defined]


def test_direction_returns_a_copy() -> None:
    vec = _vector()
    before = vec.directions[1].clone()
    got = vec.direction(1)
    got.mul_(0).add_(123.0)
    assert torch.equal(vec.directions[1], before)
    assert torch.equal(vec.direction(1), before)


def test_vector_keeps_private_copies_of_its_inputs() -> None:
    source = torch.ones(HIDDEN)
    vec = SteeringVector({1: source, 3: torch.ones(HIDDEN)}, _prov())
    source.fill_(-5.0)
    assert torch.equal(vec.directions[1], torch.ones(HIDDEN))
    assert vec.directions[1].dtype == torch.float32


def test_vector_validates_directions() -> None:
    with pytest.raises(ValueError, match="at least one layer"):
        SteeringVector({}, _prov())
    with pytest.raises(ValueError, match=r"direction shape \(8,\)"):
        SteeringVector({1: torch.zeros(8)}, _prov())
    with pytest.raises(ValueError, match="non-finite"):
        SteeringVector({1: torch.full((HIDDEN,), float("nan"))}, _prov())


# ---------------------------------------------------------------- methods


def _synthetic(n: int = 120, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Paired secure/vulnerable activations differing along a known unit direction, plus noise."""
    gen = torch.Generator().manual_seed(seed)
    true = torch.randn(HIDDEN, generator=gen)
    true = true / true.norm()
    base = 3.0 * torch.randn(n, HIDDEN, generator=gen) + 5.0  # shared per pair, offset from the origin
    secure = base + 2.0 * true + 0.3 * torch.randn(n, HIDDEN, generator=gen)
    vulnerable = base - 2.0 * true + 0.3 * torch.randn(n, HIDDEN, generator=gen)
    return secure, vulnerable, true


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_points_toward_secure(method: str) -> None:
    secure, vulnerable, true = _synthetic()
    direction = METHODS[method](secure, vulnerable)
    assert direction.shape == (HIDDEN,)
    diff = mean_difference(secure, vulnerable)
    assert float(direction @ diff) > 0
    assert float(direction @ true) / float(direction.norm()) > 0.9
    # flipping the classes flips the direction
    flipped = METHODS[method](vulnerable, secure)
    assert float(flipped @ diff) < 0


@pytest.mark.parametrize("method", ["pca", "logistic"])
def test_pca_and_logistic_are_rescaled_to_the_mean_diff_projection(method: str) -> None:
    secure, vulnerable, _ = _synthetic(seed=3)
    direction = METHODS[method](secure, vulnerable)
    unit = direction / direction.norm()
    projection = float(mean_difference(secure, vulnerable) @ unit)
    assert projection > 0
    assert float(direction.norm()) == pytest.approx(projection, rel=1e-5)
    # and the length is comparable to the mean difference (here ~4: the classes are 4 apart along `true`)
    assert 3.0 < float(direction.norm()) <= float(mean_difference(secure, vulnerable).norm()) + 1e-5


def test_mean_difference_is_exact() -> None:
    secure = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    vulnerable = torch.tensor([[0.0, 0.0], [0.0, 2.0], [0.0, 4.0]])
    assert torch.allclose(mean_difference(secure, vulnerable), torch.tensor([2.0, 1.0]))


def test_methods_are_read_only() -> None:
    assert set(METHODS) == {"mean_diff", "pca", "logistic"}
    with pytest.raises(TypeError):
        METHODS["evil"] = mean_difference  # type: ignore[index]


# ---------------------------------------------------------------- random control


def test_random_like_keeps_norms_and_layers_and_is_seeded() -> None:
    vec = _vector((0, 2, 5))
    a, a2, b = vec.random_like(seed=1), vec.random_like(seed=1), vec.random_like(seed=2)
    assert a.layers == vec.layers
    for layer in vec.layers:
        assert a.norm(layer) == pytest.approx(vec.norm(layer), rel=1e-5)
        assert b.norm(layer) == pytest.approx(vec.norm(layer), rel=1e-5)
        assert torch.equal(a.directions[layer], a2.directions[layer])
        assert not torch.allclose(a.directions[layer], b.directions[layer])
        assert not torch.allclose(a.directions[layer], vec.directions[layer])
    assert a.provenance.layer_norms == vec.provenance.layer_norms
    assert a.provenance.hidden_size == vec.provenance.hidden_size
    assert a.provenance.method == "random-control(mean_diff,seed=1)"
    assert vec.provenance.method == "mean_diff"


# ---------------------------------------------------------------- fit_vector / dataset_hash


def _acts_for(samples: list[Sample], layers: list[int], seed: int = 0) -> Activations:
    gen = torch.Generator().manual_seed(seed)
    true = torch.randn(len(layers), HIDDEN, generator=gen)
    rows = []
    for s in samples:
        noise = 0.1 * torch.randn(len(layers), HIDDEN, generator=gen)
        rows.append(noise + (true if not s.is_vulnerable else -true))
    acts = torch.stack(rows)
    return Activations(layers=layers, sample_ids=[s.id for s in samples], by_pooling={"last": acts})


def test_fit_vector_records_provenance() -> None:
    samples = toy_samples(4)
    acts = _acts_for(samples, [1, 3])
    vec = fit_vector(
        acts,
        samples,
        layers=[3],
        method="mean_diff",
        cwe="CWE-89",
        model=ModelIdentity("tiny", "f" * 16),
        extra={"k": 1},
    )
    prov = vec.provenance
    assert vec.layers == (3,) == prov.layers
    assert (prov.n_vulnerable, prov.n_secure, prov.hidden_size) == (4, 4, HIDDEN)
    assert prov.layer_norms == {3: pytest.approx(acts.mean_norms("last")[3])}
    assert prov.dataset_hash == dataset_hash(samples)
    assert prov.extra["k"] == 1 and prov.model == ModelIdentity("tiny", "f" * 16)
    h = acts.get("last", 3)
    secure = torch.tensor([not s.is_vulnerable for s in samples])
    expected = h[secure].mean(0) - h[~secure].mean(0)
    assert torch.allclose(vec.directions[3], expected, atol=1e-6)


def test_fit_vector_pairs_rows_for_pca_whatever_the_input_order() -> None:
    samples = toy_samples(5)
    acts = _acts_for(samples, [0])
    order = list(range(len(samples)))
    random.Random(4).shuffle(order)
    shuffled = [samples[i] for i in order]
    vec_a = fit_vector(acts, samples, method="pca")
    vec_b = fit_vector(acts.subset(order), shuffled, method="pca")
    assert torch.allclose(vec_a.directions[0], vec_b.directions[0], atol=1e-5)
    assert vec_a.provenance.dataset_hash == vec_b.provenance.dataset_hash


def test_fit_vector_refuses_one_class() -> None:
    only_vulnerable = [s for s in toy_samples(3) if s.is_vulnerable]
    acts = _acts_for(only_vulnerable, [0])
    with pytest.raises(ValueError, match="3 vulnerable and 0 secure"):
        fit_vector(acts, only_vulnerable, cwe="CWE-89")


def test_fit_vector_refuses_misaligned_samples_and_unknown_methods() -> None:
    samples = toy_samples(2)
    acts = _acts_for(samples, [0])
    with pytest.raises(ValueError, match="do not match"):
        fit_vector(acts, list(reversed(samples)))
    with pytest.raises(ValueError, match="unknown vector method"):
        fit_vector(acts, samples, method="magic")


def test_dataset_hash_is_order_independent_and_content_sensitive() -> None:
    samples = toy_samples(4)
    shuffled = list(samples)
    random.Random(1).shuffle(shuffled)
    assert shuffled != samples
    assert dataset_hash(shuffled) == dataset_hash(samples)
    changed_code = [dataclasses.replace(samples[0], code=samples[0].code + " "), *samples[1:]]
    changed_label = [dataclasses.replace(samples[0], label="secure"), *samples[1:]]
    hashes = {dataset_hash(samples), dataset_hash(changed_code), dataset_hash(changed_label), dataset_hash(samples[1:])}
    assert len(hashes) == 4
