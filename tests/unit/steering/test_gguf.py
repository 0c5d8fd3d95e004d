"""llama.cpp control vectors: export -> GGUF reader -> import round trips, the layer mapping, refusals, the CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from conftest import write_toy_jsonl
from vulnsteer.cli import main
from vulnsteer.lm.model import LoadedModel, decoder_layers
from vulnsteer.lm.prompts import build_prompt, tokenize_prompts
from vulnsteer.steering.gguf import (
    ControlVectorError,
    control_vector_data,
    export_gguf,
    import_gguf,
    read_control_vector,
)
from vulnsteer.steering.hooks import SteeringSpec, steer
from vulnsteer.steering.vectors import Provenance, SteeringVector

HIDDEN = 64


def _vector(layers: tuple[int, ...] = (1, 2), model_type: str | None = "llama") -> SteeringVector:
    gen = torch.Generator().manual_seed(11)
    extra = {"model_type": model_type, "weights_digest": "abc", "dtype": "float32"} if model_type else {}
    prov = Provenance(
        "tiny-llama",
        "fp",
        HIDDEN,
        layers,
        "last",
        "mean_diff",
        "CWE-89",
        3,
        3,
        "hash",
        "2026-01-01T00:00:00+00:00",
        layer_norms={layer: 20.0 + layer for layer in layers},
        extra=extra,
    )
    return SteeringVector({layer: torch.randn(HIDDEN, generator=gen) for layer in layers}, prov)


def _reader(path: Path) -> Any:
    import gguf

    return gguf.GGUFReader(str(path))


def _write_foreign(path: Path, tensors: dict[str, np.ndarray], hint: str | None = "llama", arch: str = "controlvector"):  # type: ignore[no-untyped-def]
    """A control vector as other tools write it (llama.cpp's cvector-generator, repeng): no vulnsteer keys."""
    import gguf

    writer = gguf.GGUFWriter(path, arch=arch)
    if hint is not None:
        writer.add_string("controlvector.model_hint", hint)
    writer.add_int32("controlvector.layer_count", len(tensors))
    for name, tensor in tensors.items():
        writer.add_tensor(name, tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize(("strength", "unit"), [(2.5, "raw"), (-0.4, "relative")])
def test_export_writes_the_llama_cpp_format_and_import_gives_the_vector_back(
    tmp_path: Path, strength: float, unit: str
) -> None:
    vector = _vector((1, 3))
    path = tmp_path / "v.gguf"
    info = export_gguf(vector, path, strength=strength, unit=unit)  # type: ignore[arg-type]
    assert info.layers == (1, 3) and info.model_hint == "llama" and 'positions="all"' in info.describe()

    reader = _reader(path)
    fields = {name: f for name, f in reader.fields.items()}
    assert bytes(fields["general.architecture"].parts[-1]).decode() == "controlvector"
    assert bytes(fields["controlvector.model_hint"].parts[-1]).decode() == "llama"
    assert int(fields["controlvector.layer_count"].parts[-1][0]) == 2
    import gguf

    tensors = {t.name: t for t in reader.tensors}
    assert set(tensors) == {"direction.1", "direction.3"}
    for layer in (1, 3):
        tensor = tensors[f"direction.{layer}"]
        assert tensor.tensor_type == gguf.GGMLQuantizationType.F32 and len(tensor.shape) == 1
        # the file holds the shift vulnsteer's hook adds: sign convention and unit applied
        expected = SteeringSpec(vector, strength, unit=unit, positions="all").delta(layer)  # type: ignore[arg-type]
        assert torch.allclose(torch.from_numpy(np.array(tensor.data)), expected, atol=1e-6)
        d = vector.direction(layer)
        scale = strength if unit == "raw" else strength * vector.provenance.layer_norms[layer] / float(d.norm())
        assert torch.allclose(expected, -scale * d, atol=1e-5)

    back = import_gguf(path, hidden_size=HIDDEN)
    assert back.layers == vector.layers
    for layer in vector.layers:
        torch.testing.assert_close(back.direction(layer), vector.direction(layer), rtol=1e-5, atol=1e-6)
    prov, orig = back.provenance, vector.provenance
    assert (prov.model_id, prov.model_fingerprint, prov.cwe, prov.layer_norms) == (
        orig.model_id,
        orig.model_fingerprint,
        orig.cwe,
        orig.layer_norms,
    )
    assert prov.extra["weights_digest"] == "abc" and prov.model_type == "llama"
    assert prov.extra["gguf"] == {"file": str(path), "strength": pytest.approx(strength), "unit": unit}


def test_export_of_some_layers_imports_those_layers(tmp_path: Path) -> None:
    vector = _vector((1, 2, 3))
    export_gguf(vector, tmp_path / "v.gguf", strength=1.0, layers=[2])
    back = import_gguf(tmp_path / "v.gguf")
    assert back.layers == (2,) and back.provenance.layers == (2,) and set(back.provenance.layer_norms) == {2}
    torch.testing.assert_close(back.direction(2), vector.direction(2))


def test_export_refusals(tmp_path: Path) -> None:
    path = tmp_path / "v.gguf"
    with pytest.raises(ControlVectorError, match="block 0"):
        export_gguf(_vector((0, 1)), path)
    export_gguf(_vector((0, 1)), path, layers=[1])  # without layer 0 it is fine
    path.unlink()
    with pytest.raises(ControlVectorError, match="strength 0"):
        export_gguf(_vector(), path, strength=0.0)
    with pytest.raises(ControlVectorError, match="--model-hint"):
        export_gguf(_vector(model_type=None), path)
    assert not path.exists()  # nothing half-written
    info = export_gguf(_vector(model_type=None), path, model_hint="qwen2")
    assert info.model_hint == "qwen2" and read_control_vector(path).model_hint == "qwen2"
    with pytest.raises(ValueError, match="not in the vector"):
        export_gguf(_vector(), path, layers=[3])


def test_import_refusals(tmp_path: Path) -> None:
    good = tmp_path / "good.gguf"
    export_gguf(_vector(), good)
    with pytest.raises(ControlVectorError, match="length 64, but the model's hidden size is 128"):
        import_gguf(good, hidden_size=128)
    with pytest.raises(ControlVectorError, match="not 'qwen2'"):
        import_gguf(good, model_hint="qwen2")
    t = np.ones(HIDDEN, dtype=np.float32)
    no_hint = _write_foreign(tmp_path / "nohint.gguf", {"direction.1": t}, hint=None)
    with pytest.raises(ControlVectorError, match=r"no controlvector\.model_hint; pass --model-hint"):
        import_gguf(no_hint)
    assert import_gguf(no_hint, model_hint="llama").provenance.model_type == "llama"
    cases = {
        "zero.gguf": ({"direction.0": t, "direction.1": t}, "controlvector", "rejects layer 0"),
        "name.gguf": ({"dir.1": t}, "controlvector", "not named direction.<layer>"),
        "shape.gguf": ({"direction.1": np.ones((2, 32), dtype=np.float32)}, "controlvector", "not 1-D"),
        "f16.gguf": ({"direction.1": t.astype(np.float16)}, "controlvector", "not F32"),
        "lengths.gguf": ({"direction.1": t, "direction.2": t[:32]}, "controlvector", "different lengths"),
        "arch.gguf": ({"direction.1": t}, "llama", "not 'controlvector'"),
    }
    for name, (tensors, arch, message) in cases.items():
        path = _write_foreign(tmp_path / name, tensors, arch=arch)
        with pytest.raises(ControlVectorError, match=message) as info:
            import_gguf(path)
        assert str(path) in str(info.value)
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(ControlVectorError, match="not a GGUF file"):
        read_control_vector(tmp_path / "junk.gguf")
    with pytest.raises(FileNotFoundError):
        read_control_vector(tmp_path / "missing.gguf")


def test_a_foreign_control_vector_steers_like_llama_cpp(tmp_path: Path, tiny_lm: LoadedModel) -> None:
    """llama.cpp adds direction.N to the output of 0-based block N (HF hidden_states[N + 1]) at every position:
    the imported vector at strength 1 does exactly that through vulnsteer's hook."""
    t = torch.randn(HIDDEN, generator=torch.Generator().manual_seed(5))
    path = _write_foreign(tmp_path / "cv.gguf", {"direction.2": t.numpy()})
    vector = import_gguf(path, hidden_size=HIDDEN)
    assert vector.layers == (2,) and torch.equal(vector.direction(2), -t)
    batch = tokenize_prompts(tiny_lm.tokenizer, [build_prompt(tiny_lm.tokenizer, "eval(input())", "python")])
    blocks = decoder_layers(tiny_lm.model)

    def block_inputs() -> list[torch.Tensor]:
        """What each block receives: the embeddings, then the previous block's (steered) output."""
        seen: list[torch.Tensor] = []
        handles = [
            b.register_forward_pre_hook(
                lambda _m, args, kwargs: seen.append(kwargs.get("hidden_states", args[0] if args else None)),
                with_kwargs=True,
            )
            for b in blocks
        ]
        with torch.no_grad():
            tiny_lm.model(input_ids=batch.input_ids)
        for h in handles:
            h.remove()
        return seen

    plain = block_inputs()
    with steer(tiny_lm.model, vector, 1.0, positions="all", unit="raw"):
        steered = block_inputs()
    for n in (0, 1, 2):
        assert torch.equal(steered[n], plain[n])  # the embeddings and the outputs of blocks 0 and 1: untouched
    torch.testing.assert_close(steered[3], plain[3] + t, rtol=0, atol=1e-5)  # block 2's output, every position


def test_control_vector_data_lays_out_files_as_llama_cpp(tmp_path: Path) -> None:
    a1, a3, b1 = (np.full(4, v, dtype=np.float32) for v in (1.0, 3.0, 10.0))
    a = _write_foreign(tmp_path / "a.gguf", {"direction.1": a1, "direction.3": a3})
    b = _write_foreign(tmp_path / "b.gguf", {"direction.1": b1})
    data, n_embd = control_vector_data([(a, 2.0), (b, -0.5)], n_layers=5)
    assert n_embd == 4 and data.shape == (16,)  # layers 1..4, no slot for layer 0
    assert np.array_equal(data.reshape(4, 4)[:, 0], [2.0 * 1 - 0.5 * 10, 0.0, 2.0 * 3, 0.0])
    with pytest.raises(ControlVectorError, match="beyond the model's 3 layers"):
        control_vector_data([(a, 1.0)], n_layers=3)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: Any) -> dict[str, Path]:
    """Vectors at layers 0 and 1 fitted by `vulnsteer vectors fit` on a saved tiny Qwen2 model."""
    from conftest import make_tiny

    root = tmp_path_factory.mktemp("gguf-cli")
    lm = make_tiny(tiny_tokenizer, "qwen2")
    model_dir = root / "model"
    lm.model.save_pretrained(model_dir)
    lm.tokenizer.save_pretrained(model_dir)
    data = write_toy_jsonl(root / "train.jsonl", ("CWE-89",), n_pairs=4, prefix="g")
    args = ["--model", str(model_dir), "--data", str(data), "--format", "jsonl", "--layers", "0,1"]
    assert main(["--no-progress", "vectors", "fit", *args, "--max-code-tokens", "64", "--out", str(root / "v")]) == 0
    return {"vector": next((root / "v").glob("cwe-89-*.safetensors")), "root": root}


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vulnsteer: error: ")
    return err[0]


def test_cli_show_export_import(fitted: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    vector_file, root = fitted["vector"], fitted["root"]
    vector = SteeringVector.load(vector_file)
    assert vector.provenance.model_type == "qwen2"  # recorded when fitting
    assert main(["vectors", "show", str(vector_file)]) == 0
    shown = capsys.readouterr().out
    assert "type qwen2" in shown and "layer 0: norm" in shown and "layer 1: norm" in shown

    out = root / "cwe-89.gguf"
    assert main(["vectors", "export", str(vector_file), "--gguf", str(out), "--strength", "1", "--unit", "raw"]) == 2
    assert "block 0" in _error(capsys) and not out.exists()
    code = main(
        ["vectors", "export", str(vector_file), "--gguf", str(out), "--layers", "1", "--strength", "3", "--unit", "raw"]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "every position" in printed and "model hint 'qwen2'" in printed and "strength 3" in printed
    assert main(["vectors", "show", str(out)]) == 0
    assert "controlvector.model_hint: qwen2" in capsys.readouterr().out

    back_file = root / "back.safetensors"
    assert main(["vectors", "import", str(out), "--out", str(back_file), "--hidden-size", str(HIDDEN)]) == 0
    back = SteeringVector.load(back_file)
    torch.testing.assert_close(back.direction(1), vector.direction(1), rtol=1e-5, atol=1e-6)
    assert back.provenance.model_fingerprint == vector.provenance.model_fingerprint

    assert main(["vectors", "import", str(out), "--out", str(root / "x.safetensors"), "--hidden-size", "99"]) == 2
    assert "hidden size is 99" in _error(capsys) and not (root / "x.safetensors").exists()
