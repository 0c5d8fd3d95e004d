"""On-disk activation cache: hidden states are extracted once per (model, data, prompt, layer, pooling).

A sweep fits many vectors (methods x poolings x layer sets) from the same training activations; extracting
them is the slowest step, so they are stored as safetensors files keyed by hashes and reused by every
configuration of a sweep and by later runs:

``<root>/<key[:2]>/<key>.safetensors`` holds ``[n_samples, hidden]`` for one layer at one pooling, where
``key = sha256(model, data hash, prompt template, layer, pooling)``. The model's part is its identity's digest
(:meth:`~vulnsteer.lm.identity.ModelIdentity.digest`): the architecture fingerprint, a digest of the weights, the
dtype and the device type (numbers differ between CPU and CUDA), so a
fine-tune of the same architecture never reads another model's activations. The header repeats every part of
the key and the sample ids; an entry whose header does not match is treated as missing. Files are written
atomically, so a killed run never leaves a half-written entry.

Default root: ``vulnsteer.lm.model.cache_root() / "activations"`` (``$VULNSTEER_CACHE`` moves it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save

from ..config.defaults import DEFAULT_BATCH_SIZE
from ..data.sample import Sample, dataset_hash
from ..io import atomic_open
from .activations import Activations, extract_activations
from .model import LoadedModel, cache_root
from .prompts import DEFAULT_TEMPLATE, PromptTemplate, build_prompt, code_token_counts

__all__ = ["ActivationCache", "CacheStats", "default_cache_dir", "template_hash"]

log = logging.getLogger(__name__)

FORMAT = "vulnsteer.ActivationCache"
FORMAT_VERSION = "2"


def default_cache_dir() -> Path:
    return cache_root() / "activations"


def template_hash(template: PromptTemplate) -> str:
    return hashlib.sha256(json.dumps(template.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class CacheStats:
    """What one :meth:`ActivationCache.load_or_extract` call found and did."""

    hits: int = 0
    misses: int = 0
    extracted_layers: list[int] = field(default_factory=list)
    seconds_extracting: float = 0.0
    seconds_loading: float = 0.0
    entries: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "hits": self.hits,
            "misses": self.misses,
            "extracted_layers": self.extracted_layers,
            "seconds_extracting": round(self.seconds_extracting, 3),
            "seconds_loading": round(self.seconds_loading, 3),
            "entries": self.entries,
        }


class ActivationCache:
    """Activations of *samples* at *layers* and *poolings*, read from disk where present, else extracted once
    (one forward pass for every missing layer and pooling) and written back.

    ``ActivationCache(None)`` uses :func:`default_cache_dir`; ``enabled=False`` always extracts and writes nothing.
    """

    def __init__(self, root: str | Path | None = None, *, enabled: bool = True) -> None:
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()
        self.enabled = enabled

    def key(self, model: str, data: str, template: str, layer: int, pooling: str) -> str:
        text = json.dumps([FORMAT_VERSION, model, data, template, int(layer), pooling])
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def _read(self, key: str, header: dict[str, str]) -> torch.Tensor | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as handle:
                meta = handle.metadata() or {}
                tensor = handle.get_tensor("hidden")
        except Exception as exc:  # a damaged entry is a miss, not an error
            log.warning("activation cache: ignoring unreadable %s (%s)", path, exc)
            return None
        if any(meta.get(k) != v for k, v in header.items()):
            log.warning("activation cache: %s does not match its key; extracting again", path)
            return None
        return tensor

    def _write(self, key: str, tensor: torch.Tensor, header: dict[str, str]) -> None:
        blob = save({"hidden": tensor.contiguous()}, metadata=header)
        with atomic_open(self.path(key), "wb") as handle:
            handle.write(blob)

    def load_or_extract(
        self,
        lm: LoadedModel,
        samples: Sequence[Sample],
        layers: Sequence[int],
        poolings: Sequence[str],
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        template: PromptTemplate = DEFAULT_TEMPLATE,
        progress: bool = True,
        desc: str = "activations",
    ) -> tuple[Activations, CacheStats]:
        """Activations ``[n, len(layers), hidden]`` per pooling, in the order of *samples* (*desc* names the
        extraction's progress phase)."""
        layers = sorted(set(int(x) for x in layers))
        stats = CacheStats()
        ids = [s.id for s in samples]
        identity = lm.identity
        mkey, dhash, thash = identity.digest(), dataset_hash(samples), template_hash(template)
        ids_hash = hashlib.sha256("\0".join(ids).encode()).hexdigest()[:16]
        headers: dict[tuple[int, str], dict[str, str]] = {}
        keys: dict[tuple[int, str], str] = {}
        for layer in layers:
            for pos in poolings:
                keys[(layer, pos)] = self.key(mkey, dhash, thash, layer, pos)
                headers[(layer, pos)] = {
                    "format": FORMAT,
                    "format_version": FORMAT_VERSION,
                    "model_digest": mkey,
                    "model_id": identity.id,
                    "data_hash": dhash,
                    "template_hash": thash,
                    "layer": str(layer),
                    "pooling": pos,
                    "sample_ids_hash": ids_hash,
                    "sample_ids": json.dumps(ids),
                }
        found: dict[tuple[int, str], torch.Tensor] = {}
        start = time.perf_counter()
        if self.enabled:
            for item, key in keys.items():
                tensor = self._read(key, headers[item])
                if tensor is not None and tensor.shape[0] == len(samples):
                    found[item] = tensor
        stats.seconds_loading = time.perf_counter() - start
        missing_layers = sorted({layer for (layer, pos) in keys if (layer, pos) not in found})
        stats.hits = len(found)
        stats.misses = len(keys) - len(found)
        if missing_layers:
            start = time.perf_counter()
            fresh = extract_activations(
                lm,
                samples,
                missing_layers,
                list(poolings),
                batch_size=batch_size,
                template=template,
                progress=progress,
                desc=desc,
            )
            stats.seconds_extracting = time.perf_counter() - start
            stats.extracted_layers = missing_layers
            for layer in missing_layers:
                for pos in poolings:
                    tensor = fresh.get(pos, layer).clone()
                    found[(layer, pos)] = tensor
                    if self.enabled:
                        self._write(keys[(layer, pos)], tensor, headers[(layer, pos)])
        stats.entries = [str(self.path(keys[item])) for item in sorted(keys)] if self.enabled else []
        by_pooling = {pos: torch.stack([found[(layer, pos)] for layer in layers], dim=1) for pos in poolings}
        prompts = [build_prompt(lm.tokenizer, s.code, s.language, template) for s in samples]
        counts = torch.tensor(code_token_counts(lm.tokenizer, prompts), dtype=torch.long)
        return Activations(list(layers), ids, by_pooling, identity, counts), stats
