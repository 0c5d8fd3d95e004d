"""Prompt-prefix KV caches kept between detection calls (a sweep's chunks score the same prompts)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["PrefixStore"]


def _tensor_bytes(obj: Any) -> int:
    """Bytes held by the tensors of a KV cache (legacy tuples, ``DynamicCache`` of transformers 4 or 5)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(o) for o in obj)
    if hasattr(obj, "layers"):  # transformers >= 4.56: cache.layers[i].keys / .values
        return sum(
            _tensor_bytes(getattr(layer, "keys", None)) + _tensor_bytes(getattr(layer, "values", None))
            for layer in obj.layers
        )
    return _tensor_bytes(getattr(obj, "key_cache", [])) + _tensor_bytes(getattr(obj, "value_cache", []))


@dataclass
class PrefixStore:
    """Unsteered prompt-prefix KV caches kept between calls of :func:`detect_variants_modes`.

    A sweep runs its settings in chunks (so a killed run loses at most one chunk); every chunk scores the same
    samples, and the unsteered prefix of each batch is the same in all of them. Passing one store to every call
    computes each prefix once. Entries are keyed by a hash of the batch's prompt texts, so a store must only be
    shared between calls on the same model; it stops accepting entries once *max_bytes* of caches are held
    (caches stay on the model's device). Use one store per run; it holds no global state.
    """

    max_bytes: int = 2 * 1024**3
    used_bytes: int = 0
    hits: int = 0
    misses: int = 0
    _entries: dict[str, tuple[Any, torch.Tensor | None, tuple[int, ...]]] = field(default_factory=dict, repr=False)
    _states: dict[tuple[str, tuple[int, ...], str], dict[str, torch.Tensor]] = field(default_factory=dict, repr=False)

    @staticmethod
    def key(texts: Sequence[str]) -> str:
        digest = hashlib.sha256()
        for text in texts:
            digest.update(text.encode("utf-8", "replace") + b"\0")
        return digest.hexdigest()

    def get(self, key: str, code_layers: Sequence[int] | None = None) -> tuple[Any, torch.Tensor | None] | None:
        """The prefix cache stored under *key* and its code-mean hidden states (``[batch, layers, hidden]``);
        with *code_layers*, only an entry that recorded the code means at those layers counts."""
        entry = self._entries.get(key)
        if entry is None or (code_layers is not None and (entry[1] is None or entry[2] != tuple(code_layers))):
            self.misses += 1
            return None
        self.hits += 1
        return entry[0], entry[1]

    def put(self, key: str, cache: Any, code_mean: torch.Tensor | None = None, code_layers: Sequence[int] = ()) -> bool:
        """Keep *cache* (not copied: callers must not modify it) unless the budget is spent; True if kept."""
        size = _tensor_bytes(cache)
        if size == 0 or self.used_bytes + size > self.max_bytes:
            return False
        old = self._entries.get(key)
        if old is not None:
            self.used_bytes -= _tensor_bytes(old[0])
        self._entries[key] = (cache, code_mean, tuple(code_layers))
        self.used_bytes += size
        return True

    def get_states(
        self, key: str, layers: Sequence[int], poolings: Sequence[str], source: str
    ) -> dict[str, torch.Tensor] | None:
        """The unsteered pooled hidden states of a batch (what gates read), if stored for these layers by the same
        *source* pass (``prefix``: the shared prompt-prefix pass; ``full``: a pass over the whole prompt). The two
        differ in the last bits (matrix products of other shapes), so a batch only reuses states computed as it
        would compute them itself: its scores never depend on which chunks a store saw before (a Ray worker's
        store sees the chunks it happened to run)."""
        found = self._states.get((key, tuple(layers), source))
        if found is None or any(p not in found for p in poolings):
            return None
        return found

    def put_states(self, key: str, layers: Sequence[int], states: dict[str, torch.Tensor], source: str) -> None:
        """Keep a batch's pooled hidden states (``{pooling: [batch, len(layers), hidden]}``, small: CPU floats),
        computed by the *source* pass (see :meth:`get_states`)."""
        merged = {**self._states.get((key, tuple(layers), source), {}), **states}
        self._states[(key, tuple(layers), source)] = merged

    def discard(self, key: str) -> None:
        """Drop the entry under *key*, if any, freeing its share of the budget (e.g. a batch that ran out of GPU
        memory and is run again in smaller batches, whose keys differ)."""
        old = self._entries.pop(key, None)
        if old is not None:
            self.used_bytes -= _tensor_bytes(old[0])

    def __len__(self) -> int:
        return len(self._entries)
