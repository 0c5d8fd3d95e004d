"""Steering vectors: per-layer directions with provenance, fitted by plain direction functions.

Convention: a direction points from *vulnerable* toward *secure* (``mean(secure) - mean(vulnerable)`` for the
mean-difference method). Steering with a positive strength subtracts it (see :mod:`vulnsteer.steering.hooks`).

Every method is a plain callable ``(secure [n, h], vulnerable [m, h]) -> direction [h]``; PCA and the logistic
probe return a unit direction rescaled to the length of the mean difference projected on it, so that one
strength means a comparable shift whatever the method.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save

from ..config.defaults import DEFAULT_METHOD, DEFAULT_POOLING
from ..config.vocabulary import METHOD_NAMES
from ..data.sample import Sample, dataset_hash
from ..io import atomic_open
from ..lm.activations import Activations
from ..lm.identity import ModelIdentity, check_same_model

__all__ = [
    "METHODS",
    "DirectionFn",
    "Provenance",
    "SteeringVector",
    "VectorMismatchError",
    "fit_vector",
    "logistic_direction",
    "mean_difference",
    "pca_direction",
    "recorded_identity",
    "unembedding_vector",
    "unit_direction",
]

FORMAT_VERSION = 1
DirectionFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def mean_difference(secure: torch.Tensor, vulnerable: torch.Tensor) -> torch.Tensor:
    """``mean(secure) - mean(vulnerable)``."""
    return secure.float().mean(0) - vulnerable.float().mean(0)


def unit_direction(d: torch.Tensor) -> torch.Tensor:
    """*d* scaled to length 1 (float32). A float32 norm of a vector with entries near 1e20 or beyond overflows to
    infinity, and the "unit" direction would come out zero (a steering shift that silently does nothing): such a
    length is taken in float64. Any other vector is divided by its float32 norm, exactly as before (so earlier runs
    reproduce bit for bit). A zero *d* stays zero.

    >>> unit_direction(torch.full((4,), 1e30)).tolist()
    [0.5, 0.5, 0.5, 0.5]
    """
    narrow = d.detach().float()
    norm = narrow.norm()
    if torch.isfinite(norm):
        return narrow / norm.clamp(min=1e-12)
    wide = d.detach().to(torch.float64)
    return (wide / wide.norm().clamp(min=1e-300)).to(torch.float32)


def _rescale_to_mean_diff(unit: torch.Tensor, secure: torch.Tensor, vulnerable: torch.Tensor) -> torch.Tensor:
    unit = unit_direction(unit)
    projection = float(mean_difference(secure, vulnerable) @ unit)
    if projection < 0:  # orient toward secure
        unit, projection = -unit, -projection
    return unit * projection


def pca_direction(secure: torch.Tensor, vulnerable: torch.Tensor) -> torch.Tensor:
    """First principal component of the paired differences ``secure_i - vulnerable_i`` (uncentred, as in RepE).

    Rows are taken as pairs in order; with unequal counts, the first ``min(n, m)`` of each are paired.
    """
    n = min(len(secure), len(vulnerable))
    if n == 0:
        raise ValueError("PCA direction needs at least one secure and one vulnerable sample")
    diffs = secure[:n].float() - vulnerable[:n].float()
    _, _, vh = torch.linalg.svd(diffs, full_matrices=False)
    return _rescale_to_mean_diff(vh[0], secure, vulnerable)


def logistic_direction(secure: torch.Tensor, vulnerable: torch.Tensor) -> torch.Tensor:
    """Weight vector of an L2-regularised logistic regression separating secure (1) from vulnerable (0)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x = torch.cat([secure, vulnerable]).float().numpy()
    y = [1] * len(secure) + [0] * len(vulnerable)
    scaler = StandardScaler().fit(x)
    clf = LogisticRegression(C=0.1, max_iter=2000).fit(scaler.transform(x), y)
    weights = torch.as_tensor(clf.coef_[0] / scaler.scale_, dtype=torch.float32)
    return _rescale_to_mean_diff(weights, secure, vulnerable)


#: The function of each vector method (``vectors.methods``, ``--method``), by its name in
#: :data:`~vulnsteer.config.vocabulary.METHOD_NAMES`.
METHODS: Mapping[str, DirectionFn] = MappingProxyType(
    dict(zip(METHOD_NAMES, (mean_difference, pca_direction, logistic_direction), strict=True))
)


class VectorMismatchError(ValueError):
    """A vector does not fit the model it is being used with."""


@dataclass(frozen=True)
class Provenance:
    """Where a vector came from: enough to refuse misuse and to reproduce it."""

    model_id: str
    model_fingerprint: str
    hidden_size: int
    layers: tuple[int, ...]
    pooling: str
    method: str
    cwe: str
    n_vulnerable: int
    n_secure: int
    dataset_hash: str
    created: str
    layer_norms: Mapping[int, float] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)
    #: per layer, the spread of the training activations projected on the unit direction (``sigma`` strengths)
    layer_sigmas: Mapping[int, float] = field(default_factory=dict)

    @property
    def model_type(self) -> str:
        """The fitting model's Hugging Face ``model_type`` (kept in :attr:`extra`; empty for older vectors)."""
        return str(self.extra.get("model_type", "") or "")

    @property
    def model(self) -> ModelIdentity:
        """The identity of the model the vector was fitted on (weights digest and dtype from :attr:`extra`, where
        :func:`recorded_identity` puts them; unknown for older or imported vectors)."""
        return ModelIdentity(
            self.model_id,
            self.model_fingerprint,
            str(self.extra.get("weights_digest", "") or ""),
            str(self.extra.get("dtype", "") or ""),
            model_type=self.model_type,
        )

    def to_json(self) -> str:
        data = asdict(self)
        data["layers"] = list(self.layers)
        data["layer_norms"] = {str(k): v for k, v in self.layer_norms.items()}
        data["layer_sigmas"] = {str(k): v for k, v in self.layer_sigmas.items()}
        data["extra"] = dict(self.extra)
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Provenance:
        """Parse :meth:`to_json`'s output; a missing required field is a ``KeyError`` naming it, a wrong type a
        ``TypeError``/``ValueError``."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise TypeError(f"provenance must be a JSON object, got {type(data).__name__}")
        if "position" in data and "pooling" not in data:  # files written before the pooling/positions split
            data["pooling"] = data.pop("position")
        required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        missing = [name for name in required if name not in data]
        if missing:
            raise KeyError(f"provenance lacks field {missing[0]!r}")
        data["layers"] = tuple(int(x) for x in data["layers"])
        data["layer_norms"] = {int(k): float(v) for k, v in data.get("layer_norms", {}).items()}
        data["layer_sigmas"] = {int(k): float(v) for k, v in data.get("layer_sigmas", {}).items()}
        for name in ("layer_norms", "layer_sigmas"):
            if not all(math.isfinite(v) and v >= 0 for v in data[name].values()):
                raise ValueError(f"provenance field {name!r} holds a negative or non-finite value")
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class SteeringVector:
    """Immutable per-layer directions (``secure - vulnerable``) plus provenance.

    ``directions`` is a read-only mapping; the tensors are private copies, and :meth:`direction` returns a copy.

    >>> vector = SteeringVector.load("vecs/cwe-89-mean-diff-last.safetensors", hidden_size=576)  # doctest: +SKIP
    >>> vector.layers, vector.relative_norm(15)  # doctest: +SKIP
    ((15,), 0.04)
    """

    directions: Mapping[int, torch.Tensor]
    provenance: Provenance

    def __post_init__(self) -> None:
        if not self.directions:
            raise ValueError("a steering vector needs at least one layer")
        frozen = {}
        for layer, vec in self.directions.items():
            if vec.ndim != 1 or vec.shape[0] != self.provenance.hidden_size:
                raise ValueError(
                    f"layer {layer}: direction shape {tuple(vec.shape)} != ({self.provenance.hidden_size},)"
                )
            if not torch.isfinite(vec).all():
                raise ValueError(f"layer {layer}: direction has non-finite values")
            frozen[int(layer)] = vec.detach().to("cpu", torch.float32).clone()
        object.__setattr__(self, "directions", MappingProxyType(frozen))

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle as plain data (the read-only mapping is rebuilt): vectors travel to sweep workers."""
        return (SteeringVector, (dict(self.directions), self.provenance))

    def __repr__(self) -> str:
        """One short line (not the tensors): CWE, method, pooling, layers, hidden size, model.

        >>> prov = Provenance("m", "f", 4, (3,), "last", "mean_diff", "CWE-89", 2, 2, "h", "t")
        >>> SteeringVector({3: torch.ones(4)}, prov)
        SteeringVector(CWE-89, mean_diff@last, layers=(3,), hidden=4, model='m')
        """
        p = self.provenance
        return (
            f"SteeringVector({p.cwe}, {p.method}@{p.pooling}, layers={self.layers}, hidden={p.hidden_size}, "
            f"model={p.model_id!r})"
        )

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(sorted(self.directions))

    @property
    def cwe(self) -> str:
        return self.provenance.cwe

    def direction(self, layer: int) -> torch.Tensor:
        return self.directions[layer].clone()

    def norm(self, layer: int) -> float:
        """The direction's length (in float64 where float32 overflows: finite for any finite vector)."""
        norm = float(self.directions[layer].norm())
        return norm if math.isfinite(norm) else float(self.directions[layer].to(torch.float64).norm())

    def relative_norm(self, layer: int) -> float:
        """The direction's length as a fraction of the layer's mean hidden-state norm (nan if unknown)."""
        ref = self.provenance.layer_norms.get(layer)
        return self.norm(layer) / ref if ref else math.nan

    def random_like(self, seed: int = 0) -> SteeringVector:
        """The random-direction control: a random direction per layer with the same norm and layers."""
        gen = torch.Generator().manual_seed(seed)
        dirs = {}
        for layer, vec in self.directions.items():
            rand = torch.randn(vec.shape[0], generator=gen)
            dirs[layer] = unit_direction(rand) * self.norm(layer)
        prov = replace(self.provenance, method=f"random-control({self.provenance.method},seed={seed})")
        return SteeringVector(dirs, prov)

    def cosine(self, other: SteeringVector, layer: int) -> float:
        a, b = self.directions[layer], other.directions[layer]
        return float(a @ b / (a.norm() * b.norm()).clamp(min=1e-12))

    def check_hidden_size(self, hidden_size: int, where: str) -> None:
        """Refuse a model of another hidden size (nothing can override this: the shapes do not fit)."""
        prov = self.provenance
        if hidden_size != prov.hidden_size:
            raise VectorMismatchError(
                f"{where}: vector for {prov.model_id} has hidden size {prov.hidden_size}, but the model has "
                f"{hidden_size}"
            )

    def check_model(
        self, model: ModelIdentity, hidden_size: int, where: str, *, allow_mismatch: bool = False
    ) -> list[str]:
        """Refuse a model of another hidden size, and (unless *allow_mismatch*: then they are returned as warnings)
        another architecture or other weights of it (:func:`~vulnsteer.lm.identity.check_same_model`); *where*
        names the vector's file."""
        self.check_hidden_size(hidden_size, where)
        return check_same_model(self.provenance.model, model, where, allow=allow_mismatch)

    def save(self, path: str | Path) -> None:
        """Write safetensors (``layer.<n>`` tensors) with the provenance JSON in the header, atomically."""
        tensors = {f"layer.{layer}": vec.contiguous() for layer, vec in self.directions.items()}
        blob = save(
            tensors,
            metadata={
                "format": "vulnsteer.SteeringVector",
                "format_version": str(FORMAT_VERSION),
                "provenance": self.provenance.to_json(),
            },
        )
        with atomic_open(path, "wb") as handle:
            handle.write(blob)

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        hidden_size: int | None = None,
        model: ModelIdentity | None = None,
    ) -> SteeringVector:
        """Read a vector written by :meth:`save` (safetensors only: nothing is unpickled); with *hidden_size* and
        *model*, refuse a vector that does not fit that model (errors name the file)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: is a folder, not a vector file" if path.is_dir() else f"vector file not found: {path}"
            )
        try:
            with safe_open(str(path), framework="pt") as handle:
                meta = handle.metadata() or {}
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
        except Exception as exc:
            raise VectorMismatchError(f"{path}: not a safetensors file ({exc})") from None
        if meta.get("format") != "vulnsteer.SteeringVector" or "provenance" not in meta:
            raise VectorMismatchError(f"{path}: not a vulnsteer steering vector (header field 'provenance' missing)")
        try:
            prov = Provenance.from_json(meta["provenance"])
        except json.JSONDecodeError as exc:
            raise VectorMismatchError(
                f"{path}: header field 'provenance' is not valid JSON (line {exc.lineno}, column {exc.colno}): the "
                "file was damaged or edited by hand"
            ) from None
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise VectorMismatchError(f"{path}: header field 'provenance': {_reason(exc)}") from None
        try:
            dirs = {int(key.split(".", 1)[1]): vec for key, vec in tensors.items() if key.startswith("layer.")}
            vector = cls(dirs, prov)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:  # a damaged or hand-edited header
            raise VectorMismatchError(f"{path}: not a usable steering vector: {_reason(exc)}") from None
        if hidden_size is not None:
            vector.check_hidden_size(hidden_size, str(path))
        if model is not None:
            check_same_model(prov.model, model, str(path))
        return vector


def _reason(exc: BaseException) -> str:
    """An exception's message (a ``KeyError``'s without the quotes ``str()`` adds)."""
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    return str(exc) or type(exc).__name__


def recorded_identity(model: ModelIdentity) -> dict[str, str]:
    """What a vector's :attr:`Provenance.extra` records of its model beside ``model_id`` and ``model_fingerprint``
    (read back by :attr:`Provenance.model`)."""
    return {"weights_digest": model.weights_digest, "dtype": model.dtype, "model_type": model.model_type}


def fit_vector(
    acts: Activations,
    samples: Sequence[Sample],
    *,
    pooling: str = DEFAULT_POOLING,
    layers: Sequence[int] | None = None,
    method: str | DirectionFn = DEFAULT_METHOD,
    cwe: str = "any",
    model: ModelIdentity | None = None,
    extra: Mapping[str, Any] | None = None,
) -> SteeringVector:
    """Fit a per-layer direction from recorded activations of *samples* (same order as ``acts``).

    Secure and vulnerable rows are ordered by pair id (then sample id) so that PCA sees aligned pairs. The
    provenance records the identity of the model the activations came from (``acts.model``, or *model* given: what
    loading checks and ``vectors export --gguf`` needs) and *extra*.

    >>> acts = extract_activations(lm, samples, [15], poolings=["last"])  # doctest: +SKIP
    >>> vector = fit_vector(acts, samples, cwe="CWE-89", method="mean_diff", model=lm.identity)  # doctest: +SKIP
    >>> vector.save("cwe-89.safetensors")  # doctest: +SKIP
    """
    if isinstance(method, str):
        if method not in METHODS:
            raise ValueError(f"unknown vector method {method!r}; choose from {', '.join(METHOD_NAMES)}")
        fn, name = METHODS[method], method
    else:
        fn, name = method, getattr(method, "__name__", "custom")
    if [s.id for s in samples] != acts.sample_ids:
        raise ValueError("samples do not match the activations (ids or order differ)")

    def key(i: int) -> tuple[str, str]:
        return (samples[i].pair_id or samples[i].id, samples[i].id)

    secure_idx = sorted((i for i, s in enumerate(samples) if not s.is_vulnerable), key=key)
    vuln_idx = sorted((i for i, s in enumerate(samples) if s.is_vulnerable), key=key)
    if not secure_idx or not vuln_idx:
        raise ValueError(
            f"cannot fit a {cwe} vector: {len(vuln_idx)} vulnerable and {len(secure_idx)} secure samples (need both)"
        )
    chosen = list(layers) if layers is not None else list(acts.layers)
    norms = acts.mean_norms(pooling)
    dirs, sigmas = {}, {}
    for layer in chosen:
        h = acts.get(pooling, layer)
        dirs[layer] = fn(h[secure_idx], h[vuln_idx])
        unit = unit_direction(dirs[layer])
        sigmas[layer] = float((h.float() @ unit).std(unbiased=False)) if len(h) > 1 else 0.0
    identity = model if model is not None else acts.model
    prov = Provenance(
        model_id=identity.id if identity is not None else "",
        model_fingerprint=identity.fingerprint if identity is not None else "",
        hidden_size=int(acts.get(pooling).shape[-1]),
        layers=tuple(sorted(chosen)),
        pooling=pooling,
        method=name,
        cwe=cwe,
        n_vulnerable=len(vuln_idx),
        n_secure=len(secure_idx),
        dataset_hash=dataset_hash(samples),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        layer_norms={layer: norms[layer] for layer in chosen},
        layer_sigmas=sigmas,
        extra={**(recorded_identity(identity) if identity is not None else {}), **(extra or {})},
    )
    return SteeringVector(dirs, prov)


def unembedding_vector(
    lm: Any, layers: Sequence[int], *, layer_norms: Mapping[int, float] | None = None, template: Any = None
) -> SteeringVector:
    """The ``unembedding`` behaviour, the model's own answer axis: ``W_U[" secure"] - W_U[" vulnerable"]``
    (unembedding rows), unit length.

    Data-free, read off the output layer. Steering along it at late layers moves the answer logits directly, so
    it shows the sign convention on a real model, and it is the "pure answer bias" reference against which a
    data-derived vector must show more than a shift toward answering "vulnerable".
    """
    from ..lm.prompts import DEFAULT_TEMPLATE, answer_token_ids

    vuln, secure = answer_token_ids(lm.tokenizer, template or DEFAULT_TEMPLATE)
    weight = lm.model.get_output_embeddings().weight.detach().float().cpu()
    d = weight[secure[0]] - weight[vuln[0]]
    d = d / d.norm()
    identity = lm.identity
    prov = Provenance(
        model_id=identity.id,
        model_fingerprint=identity.fingerprint,
        hidden_size=int(d.shape[0]),
        layers=tuple(layers),
        pooling="answer",
        method="unembedding",
        cwe="any",
        n_vulnerable=0,
        n_secure=0,
        dataset_hash="-",
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        layer_norms=dict(layer_norms or {}),
        extra=recorded_identity(identity),
    )
    return SteeringVector({layer: d.clone() for layer in layers}, prov)
