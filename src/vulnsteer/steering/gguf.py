"""llama.cpp control vectors: export a steering vector to GGUF, and import one back.

The format, as llama.cpp reads it (``common_control_vector_load_one`` in ``common/common.cpp``,
``llama_adapter_cvec`` in ``src/llama-adapter.cpp``, ``build_cvec`` in each ``src/models/*.cpp`` graph):

- a GGUF file with ``general.architecture = "controlvector"``; by convention (llama.cpp's ``cvector-generator``,
  repeng) also ``controlvector.model_hint`` (the Hugging Face ``model_type``, e.g. ``llama``, ``qwen2``) and
  ``controlvector.layer_count``. llama.cpp's loader reads none of this metadata;
- one F32 1-D tensor ``direction.N`` of length ``hidden_size`` per steered layer. The loader puts ``direction.N``
  (times the file's scale, ``--control-vector-scaled FILE S``) at offset ``(N - 1) * n_embd`` of its buffer, and
  ``llama_adapter_cvec::apply`` hands offset ``(il - 1) * n_embd`` to layer ``il``; each model graph calls
  ``build_cvec(cur, il)`` right after block ``il``'s final residual add, and ``apply_to`` does
  ``cur = ggml_add(cur, direction)``. So ``direction.N`` is **added** to the output of 0-based decoder block ``N``
  (Hugging Face ``hidden_states[N + 1]``), at **every position** (prompt and generated tokens);
- ``direction.0`` is rejected ("invalid (zero) direction tensor layer index"): block 0 cannot be steered;
- tensors for the same layer from several files are summed.

vulnsteer's layer ``L`` is the 0-based decoder block whose output :func:`~vulnsteer.steering.hooks.steer` edits, so
``L`` maps to ``direction.L`` unchanged. A vulnsteer vector points vulnerable -> secure and a positive strength
*subtracts* it; the exported tensor is the hook's own shift, ``SteeringSpec(vector, strength, unit=...).delta(L)``
(``-strength * scale * d``), so llama.cpp at scale 1 does what ``steer(model, vector, strength,
positions="all")`` does. llama.cpp has no position modes: the steering holds at every position.

vulnsteer also writes its own keys (``vulnsteer.*``: provenance, strength, unit, per-layer scale), which llama.cpp
ignores, so that :func:`import_gguf` gives back the original vector. The file holds no absolute path
(a local model's folder in the provenance is written as its name: the file is meant to be shared). A file without
them (made by another tool) imports as the direction ``-tensor``: steering it with strength 1 (raw) equals
llama.cpp at scale 1.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config.defaults import DEFAULT_UNIT
from ..io import atomic_open, portable
from .hooks import SteeringSpec, StrengthUnit
from .vectors import Provenance, SteeringVector

__all__ = [
    "ARCHITECTURE",
    "ControlVectorError",
    "ControlVectorFile",
    "ExportInfo",
    "control_vector_data",
    "export_gguf",
    "import_gguf",
    "read_control_vector",
]

#: ``general.architecture`` of a control-vector GGUF file.
ARCHITECTURE = "controlvector"
KEY_MODEL_HINT = f"{ARCHITECTURE}.model_hint"
KEY_LAYER_COUNT = f"{ARCHITECTURE}.layer_count"
KEY_PROVENANCE = "vulnsteer.provenance"
KEY_STRENGTH = "vulnsteer.strength"
KEY_UNIT = "vulnsteer.unit"
KEY_LAYERS = "vulnsteer.layers"
KEY_SCALES = "vulnsteer.layer_scales"
TENSOR_PREFIX = "direction."

#: What every export says about positions.
POSITIONS_NOTE = (
    "llama.cpp adds a control vector at every position (prompt and generated tokens), as vulnsteer's "
    'positions="all" does; other position modes have no llama.cpp equivalent'
)


class ControlVectorError(ValueError):
    """A control vector cannot be exported or imported; the message names the file and the problem."""


@dataclass(frozen=True)
class ExportInfo:
    """What :func:`export_gguf` wrote."""

    path: Path
    layers: tuple[int, ...]
    model_hint: str
    strength: float
    unit: str
    norms: dict[int, float] = field(default_factory=dict)  # norm of each exported tensor

    def describe(self) -> str:
        norms = ", ".join(f"direction.{layer}: |v|={norm:.4g}" for layer, norm in self.norms.items())
        return (
            f"wrote {self.path} (llama.cpp control vector, model hint {self.model_hint!r}, strength {self.strength:g} "
            f"{self.unit} baked in: load it at scale 1, e.g. --control-vector {self.path.name}); {norms}.\n"
            f"Note: {POSITIONS_NOTE}."
        )


@dataclass(frozen=True)
class ControlVectorFile:
    """The contents of a control-vector GGUF file: ``tensors[N]`` is ``direction.N``; ``metadata`` every key."""

    path: Path
    tensors: dict[int, np.ndarray]
    metadata: dict[str, Any]

    @property
    def model_hint(self) -> str:
        return str(self.metadata.get(KEY_MODEL_HINT, "") or "")

    @property
    def hidden_size(self) -> int:
        return int(next(iter(self.tensors.values())).shape[0])


def _spec(vector: SteeringVector, strength: float, unit: StrengthUnit, layers: Sequence[int] | None) -> SteeringSpec:
    return SteeringSpec(vector, strength, tuple(layers or ()), "all", unit)


def export_gguf(
    vector: SteeringVector,
    path: str | Path,
    *,
    strength: float = 1.0,
    unit: StrengthUnit = DEFAULT_UNIT,
    layers: Sequence[int] | None = None,
    model_hint: str | None = None,
) -> ExportInfo:
    """Write *vector* at *strength* (and *unit*) as a llama.cpp control vector, atomically.

    Each steered layer ``L`` becomes ``direction.L`` = the shift vulnsteer's hook adds there (sign convention
    applied: positive strength = toward "vulnerable"). Refuses layer 0 (llama.cpp cannot steer block 0), a zero
    strength, and a vector without a model type unless *model_hint* is given.

    >>> info = export_gguf(vector, "cwe-89.gguf", strength=0.5, unit="relative")  # doctest: +SKIP
    >>> print(info.describe())  # doctest: +SKIP
    """
    path = Path(path)
    spec = _spec(vector, strength, unit, layers)
    if 0 in spec.layers:
        raise ControlVectorError(
            f"cannot export {path}: llama.cpp cannot steer decoder block 0 (its loader rejects direction.0); "
            f"choose other layers with --layers (the vector has {list(vector.layers)})"
        )
    if strength == 0:
        raise ControlVectorError(f"cannot export {path}: strength 0 gives a control vector that does nothing")
    hint = model_hint or vector.provenance.model_type
    if not hint:
        prov = vector.provenance
        why = (
            "it was imported from a file without controlvector.model_hint"
            if prov.method == "gguf-import"
            else "it was fitted without its model's identity (fit_vector on activations that do not record it)"
            if not prov.model_fingerprint
            else "it was fitted by a vulnsteer that did not record it yet"
        )
        raise ControlVectorError(
            f"cannot export {path}: the vector records no model type ({why}); pass --model-hint with the Hugging "
            "Face model_type, e.g. llama or qwen2"
        )
    tensors: dict[int, np.ndarray] = {}
    scales: list[float] = []
    for layer in spec.layers:
        delta = spec.delta(layer).to(torch.float32)
        direction = vector.direction(layer)
        tensors[layer] = delta.numpy()
        scales.append(-float(delta.double() @ direction.double()) / float(direction.double() @ direction.double()))
    _write(path, tensors, hint, vector.provenance, float(strength), unit, scales)
    norms = {layer: float(np.linalg.norm(t)) for layer, t in tensors.items()}
    return ExportInfo(path, spec.layers, hint, float(strength), unit, norms)


def _write(
    path: Path,
    tensors: dict[int, np.ndarray],
    hint: str,
    provenance: Provenance,
    strength: float,
    unit: str,
    scales: list[float],
) -> None:
    import gguf

    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp) / "vector.gguf"
        writer = gguf.GGUFWriter(staging, arch=ARCHITECTURE)
        writer.add_string(KEY_MODEL_HINT, hint)
        writer.add_int32(KEY_LAYER_COUNT, len(tensors))
        writer.add_string(KEY_PROVENANCE, json.dumps(portable(json.loads(provenance.to_json())), sort_keys=True))
        writer.add_float32(KEY_STRENGTH, strength)
        writer.add_string(KEY_UNIT, unit)
        writer.add_array(KEY_LAYERS, [int(layer) for layer in tensors])
        writer.add_array(KEY_SCALES, scales)
        for layer, tensor in tensors.items():
            writer.add_tensor(f"{TENSOR_PREFIX}{layer}", np.ascontiguousarray(tensor, dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        blob = staging.read_bytes()
    with atomic_open(path, "wb") as handle:
        handle.write(blob)


def _field_value(reader_field: Any) -> Any:
    """The value of a GGUF metadata field: a scalar, a string, or a list of them."""
    import gguf

    kinds = list(reader_field.types)

    def one(part: Any, kind: Any) -> Any:
        if kind == gguf.GGUFValueType.STRING:
            return bytes(part).decode("utf-8", "replace")
        return part.tolist()[0] if len(part) == 1 else part.tolist()

    if not kinds:
        return None
    if kinds[0] == gguf.GGUFValueType.ARRAY:
        item_kind = kinds[-1]
        return [one(reader_field.parts[i], item_kind) for i in reader_field.data]
    return one(reader_field.parts[reader_field.data[0]], kinds[0])


def read_control_vector(path: str | Path) -> ControlVectorFile:
    """Read and check a control-vector GGUF as llama.cpp's loader would: every tensor named ``direction.N`` with
    ``N >= 1``, F32, 1-D, all of one length.

    >>> read_control_vector("cwe-89.gguf").tensors.keys()  # doctest: +SKIP
    dict_keys([15])
    """
    import gguf

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"control vector file not found: {path}")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:
        raise ControlVectorError(f"{path}: not a GGUF file ({exc})") from None
    metadata = {name: _field_value(f) for name, f in reader.fields.items() if not name.startswith("GGUF.")}
    arch = metadata.get("general.architecture")
    if arch != ARCHITECTURE:
        raise ControlVectorError(
            f"{path}: general.architecture is {arch!r}, not {ARCHITECTURE!r}: not a control vector"
        )
    tensors: dict[int, np.ndarray] = {}
    for tensor in reader.tensors:
        name = str(tensor.name)
        prefix, _, index = name.partition(".")
        if prefix != "direction" or not index.isdigit():
            raise ControlVectorError(f"{path}: tensor {name!r} is not named direction.<layer>")
        layer = int(index)
        if layer == 0:
            raise ControlVectorError(
                f"{path}: tensor direction.0: llama.cpp rejects layer 0 (block 0 cannot be steered)"
            )
        if tensor.tensor_type != gguf.GGMLQuantizationType.F32:
            raise ControlVectorError(f"{path}: tensor {name} is {tensor.tensor_type.name}, not F32")
        data = np.asarray(tensor.data, dtype=np.float32)
        if not np.isfinite(data).all():
            raise ControlVectorError(f"{path}: tensor {name} has non-finite values (NaN or infinity)")
        if data.ndim != 1:
            raise ControlVectorError(f"{path}: tensor {name} has shape {tuple(data.shape)}, not 1-D")
        if layer in tensors:
            raise ControlVectorError(f"{path}: tensor {name} appears twice")
        tensors[layer] = data.copy()
    if not tensors:
        raise ControlVectorError(f"{path}: no direction.<layer> tensors")
    lengths = {t.shape[0] for t in tensors.values()}
    if len(lengths) != 1:
        raise ControlVectorError(f"{path}: direction tensors have different lengths {sorted(lengths)}")
    return ControlVectorFile(path, dict(sorted(tensors.items())), metadata)


def import_gguf(path: str | Path, *, hidden_size: int | None = None, model_hint: str | None = None) -> SteeringVector:
    """A :class:`SteeringVector` from a control-vector GGUF file.

    A file exported by vulnsteer gives back the original vector and provenance (the export's strength and unit are
    recorded in ``provenance.extra["gguf"]``). Any other file gives the direction ``-direction.N`` per layer, so that
    ``steer(model, vector, 1.0, positions="all")`` does what llama.cpp does at scale 1. Refuses a file whose hidden
    size differs from *hidden_size*, and one without ``controlvector.model_hint`` unless *model_hint* is given (and
    a *model_hint* that contradicts the file's).

    >>> vector = import_gguf("cwe-89.gguf", hidden_size=576)  # doctest: +SKIP
    """
    cv = read_control_vector(path)
    path = cv.path
    if hidden_size is not None and cv.hidden_size != hidden_size:
        raise ControlVectorError(
            f"{path}: direction tensors have length {cv.hidden_size}, but the model's hidden size is {hidden_size}"
        )
    if model_hint and cv.model_hint and model_hint != cv.model_hint:
        raise ControlVectorError(f"{path}: {KEY_MODEL_HINT} is {cv.model_hint!r}, not {model_hint!r}")
    hint = cv.model_hint or model_hint
    if not hint:
        raise ControlVectorError(
            f"{path}: no {KEY_MODEL_HINT}; pass --model-hint with the Hugging Face model_type (e.g. llama, qwen2)"
        )
    ours = _vulnsteer_part(cv)
    if ours is not None:
        provenance, scales, strength, unit = ours
        directions = {
            layer: torch.from_numpy(-t.astype(np.float64) / scales[layer]).float() for layer, t in cv.tensors.items()
        }
        extra = {
            **dict(provenance.extra),
            "model_type": hint,
            "gguf": {"file": str(path), "strength": strength, "unit": unit},
        }
        layers = tuple(sorted(directions))  # the exported layers (an export may take a subset)
        norms = {layer: n for layer, n in provenance.layer_norms.items() if layer in directions}
        return SteeringVector(directions, replace(provenance, layers=layers, layer_norms=norms, extra=extra))
    directions = {layer: torch.from_numpy(-t) for layer, t in cv.tensors.items()}
    layers = tuple(sorted(directions))
    provenance = Provenance(
        model_id=f"llama.cpp control vector {path.name}",
        model_fingerprint="",
        hidden_size=cv.hidden_size,
        layers=layers,
        pooling="all",
        method="gguf-import",
        cwe="any",
        n_vulnerable=0,
        n_secure=0,
        dataset_hash="-",
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        extra={"model_type": hint, "gguf": {"file": str(path), "strength": 1.0, "unit": "raw"}},
    )
    return SteeringVector(directions, provenance)


def _vulnsteer_part(cv: ControlVectorFile) -> tuple[Provenance, dict[int, float], float, str] | None:
    """vulnsteer's own keys of a file it exported: provenance, per-layer scale, strength, unit (None if absent or
    inconsistent with the tensors, e.g. a file edited by another tool)."""
    meta = cv.metadata
    if KEY_PROVENANCE not in meta or KEY_SCALES not in meta or KEY_LAYERS not in meta:
        return None
    try:
        provenance = Provenance.from_json(str(meta[KEY_PROVENANCE]))
        scales = {int(layer): float(s) for layer, s in zip(meta[KEY_LAYERS], meta[KEY_SCALES], strict=True)}
    except (ValueError, KeyError, TypeError, json.JSONDecodeError):
        return None
    if set(scales) != set(cv.tensors) or provenance.hidden_size != cv.hidden_size or 0 in scales.values():
        return None
    return provenance, scales, float(meta.get(KEY_STRENGTH, 1.0)), str(meta.get(KEY_UNIT, "raw"))


def control_vector_data(files: Sequence[tuple[str | Path, float]], n_layers: int) -> tuple[np.ndarray, int]:
    """The buffer llama.cpp builds from ``--control-vector-scaled FILE SCALE`` options: ``direction.N * SCALE``
    summed over files at offset ``(N - 1) * n_embd``; returns ``(data, n_embd)`` for llama.cpp's C API
    ``llama_set_adapter_cvec(ctx, data, len(data), n_embd, 1, n_layers - 1)`` (e.g. from llama-cpp-python).

    >>> data, n_embd = control_vector_data([("cwe-89.gguf", 1.0)], n_layers=30)  # doctest: +SKIP
    """
    loaded = [(read_control_vector(path), float(scale)) for path, scale in files]
    if not loaded:
        raise ControlVectorError("no control vector files given")
    n_embd = loaded[0][0].hidden_size
    data = np.zeros(n_embd * max(1, n_layers - 1), dtype=np.float32)
    for cv, scale in loaded:
        if cv.hidden_size != n_embd:
            raise ControlVectorError(f"{cv.path}: hidden size {cv.hidden_size} differs from the first file's {n_embd}")
        for layer, tensor in cv.tensors.items():
            if layer >= n_layers:
                raise ControlVectorError(f"{cv.path}: direction.{layer} is beyond the model's {n_layers} layers")
            start = (layer - 1) * n_embd
            data[start : start + n_embd] += tensor * scale
    return data, n_embd
