"""Per-CWE steering vectors for an experiment: fitted on the train split, saved, loaded back, compared.

Vectors are keyed ``(cwe, "method@pooling")`` (``"any"`` is the pooled vector over every CWE's training samples).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..data.sample import Sample
from ..lm.activations import Activations
from ..lm.identity import ModelIdentity
from ..lm.model import LoadedModel
from ..steering.vectors import DirectionFn, SteeringVector, VectorMismatchError, fit_vector
from .grid import POOLED

__all__ = [
    "annotate",
    "fit_cwe_vectors",
    "load_vector_dir",
    "method_key",
    "save_vectors",
    "slug",
    "train_pca",
    "vector_cosines",
]


def method_key(method: str, pooling: str) -> str:
    """``"mean_diff@last"``: how fitted vectors are keyed (with the CWE)."""
    return f"{method}@{pooling}"


def fit_cwe_vectors(
    lm: LoadedModel,
    activations: Activations,
    train_by_cwe: Mapping[str, Sequence[Sample]],
    layers: Sequence[int],
    *,
    methods: Sequence[str | DirectionFn] = ("mean_diff",),
    poolings: Sequence[str] = ("last",),
    pooled: bool = False,
) -> dict[tuple[str, str], SteeringVector]:
    """One vector per (CWE, method@pooling) from the training *activations* (which hold every train sample; the
    pooled ``"any"`` vector too when *pooled*). Provenance records the model, its weights and the data hash."""
    train = [s for samples in train_by_cwe.values() for s in samples]
    index = {sid: i for i, sid in enumerate(activations.sample_ids)}
    groups: dict[str, list[Sample]] = {cwe: list(samples) for cwe, samples in train_by_cwe.items()}
    if pooled:
        groups[POOLED] = train
    vectors: dict[tuple[str, str], SteeringVector] = {}
    for cwe, samples in groups.items():
        sub = activations.subset([index[s.id] for s in samples])
        for pooling in poolings:
            for method in methods:
                name = method if isinstance(method, str) else getattr(method, "__name__", "custom")
                vectors[(cwe, method_key(name, pooling))] = fit_vector(
                    sub,
                    samples,
                    pooling=pooling,
                    layers=list(layers),
                    method=method,
                    cwe=cwe,
                    model=lm.identity,
                )
    return vectors


def slug(name: str) -> str:
    """A file-name-safe form of a CWE or method key."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def save_vectors(vectors: Mapping[tuple[str, str], SteeringVector], folder: Path) -> dict[str, Any]:
    """Save every vector as ``<cwe>-<method@pooling>.safetensors`` in *folder*; returns what results.json lists."""
    info: dict[str, Any] = {}
    for (cwe, key), vec in vectors.items():
        path = folder / f"{slug(cwe)}-{slug(key)}.safetensors"
        vec.save(path)
        info[f"{cwe}|{key}"] = {
            "file": str(path.relative_to(folder.parent)),
            "cwe": cwe,
            "method": key,
            "layers": list(vec.layers),
            "norm": {str(layer): vec.norm(layer) for layer in vec.layers},
            "relative_norm": {str(layer): vec.relative_norm(layer) for layer in vec.layers},
            "n_vulnerable": vec.provenance.n_vulnerable,
            "n_secure": vec.provenance.n_secure,
        }
    return info


def load_vector_dir(
    folder: str | Path,
    hidden_size: int | None = None,
    model: ModelIdentity | None = None,
) -> dict[tuple[str, str], SteeringVector]:
    """Every ``*.safetensors`` vector in *folder*, keyed ``(cwe, "method@pooling")``; refuses a damaged file and,
    given the model's *hidden_size* and identity (*model*), a model mismatch, naming
    the file (without them, only the files are checked: what can be done before a model loads)."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(
            f"{root}: is a file, not a folder of vectors" if root.exists() else f"vector folder not found: {root}"
        )
    vectors: dict[tuple[str, str], SteeringVector] = {}
    for path in sorted(root.glob("*.safetensors")):
        vec = SteeringVector.load(path, hidden_size=hidden_size, model=model)
        key = (vec.cwe, method_key(vec.provenance.method, vec.provenance.pooling))
        if key in vectors:
            raise VectorMismatchError(f"{path}: a second {key[0]} vector for {key[1]} in {root}")
        vectors[key] = vec
    if not vectors:
        raise FileNotFoundError(f"{root}: no .safetensors steering vectors in this folder")
    return vectors


def annotate(vector: SteeringVector, **extra: Any) -> SteeringVector:
    """A copy of *vector* with *extra* provenance (the chosen setting travels inside the vector file)."""
    prov = dataclasses.replace(vector.provenance, extra={**dict(vector.provenance.extra), **extra})
    return SteeringVector({layer: vector.direction(layer) for layer in vector.layers}, prov)


def vector_cosines(vectors: Mapping[tuple[str, str], SteeringVector], layers: Sequence[int]) -> dict[str, Any]:
    """Per method key and layer, the cosine similarity matrix of the per-CWE vectors."""
    out: dict[str, Any] = {}
    for key in dict.fromkeys(k for _, k in vectors):
        names = [cwe for cwe, k in vectors if k == key]
        out[key] = {
            "cwes": names,
            "layers": {
                str(layer): [[vectors[(a, key)].cosine(vectors[(b, key)], layer) for b in names] for a in names]
                for layer in layers
            },
        }
    return out


def train_pca(acts: Activations, samples: Sequence[Sample], pooling: str, layer: int) -> dict[str, Any]:
    """Per CWE: the training activations at *layer* projected on their first two principal components."""
    hidden = acts.get(pooling, layer)
    out: dict[str, Any] = {}
    for cwe in dict.fromkeys(s.cwe for s in samples):
        idx = [i for i, s in enumerate(samples) if s.cwe == cwe]
        x = hidden[idx].double()
        centred = x - x.mean(0)
        _, sv, vh = torch.linalg.svd(centred, full_matrices=False)
        xy = centred @ vh[:2].T
        var = (sv**2) / max(float((sv**2).sum()), 1e-12)
        out[cwe] = {
            "x": xy[:, 0].tolist(),
            "y": xy[:, 1].tolist() if xy.shape[1] > 1 else [0.0] * len(idx),
            "vulnerable": [samples[i].is_vulnerable for i in idx],
            "explained": var[:2].tolist(),
        }
    return {"layer": layer, "pooling": pooling, "split": "train", "cwes": out}
