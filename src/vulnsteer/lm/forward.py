"""One forward pass of a causal LM: fresh or continuing a KV cache, position ids exact under left padding, and only
the logits that are needed (the last position unless asked otherwise). Detection, the answer-token vectors and
scanning all run the model through :func:`forward`.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from .backend import backend_of
from .model import position_ids_for

__all__ = ["NonFiniteLogitsError", "cache_kwarg", "forward"]


class NonFiniteLogitsError(ValueError):
    """The model's logits are NaN or inf: no verdict is reported from them."""


_NON_FINITE_HINT = (
    "; the steering shift is probably far beyond the hidden-state scale (lower --strength), or the dtype "
    "overflows (try --dtype float32)"
)


def cache_kwarg(model: Any) -> str:
    """The name under which *model*'s forward takes a KV cache (``cache`` in newer transformers)."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _logits_kwargs(model: Any) -> dict[str, int]:
    params = inspect.signature(model.forward).parameters
    for name in ("logits_to_keep", "num_logits_to_keep"):
        if name in params:
            return {name: 1}
    return {}


def forward(
    model: Any, ids: torch.Tensor, mask: torch.Tensor, cache: Any, *, all_logits: bool = False
) -> tuple[torch.Tensor, Any]:
    """Run *ids* (continuing *cache*, or fresh when None); returns the logits (last position unless
    *all_logits*) and the updated cache. *model* is a bare model (forward hooks steer it) or a
    :class:`~vulnsteer.lm.model.LoadedModel` (its backend runs the pass, :mod:`vulnsteer.lm.backend`).

    >>> logits, cache = forward(lm, batch.input_ids, batch.attention_mask, None)  # doctest: +SKIP
    """
    backend, model = backend_of(model)[:2]
    positions = position_ids_for(mask)[:, -ids.shape[1] :]
    kwargs: dict[str, Any] = {cache_kwarg(model): cache} if cache is not None else {}
    if not all_logits:
        kwargs.update(_logits_kwargs(model))
    kwargs.update(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
    out = backend.run(model, kwargs)
    new_cache = getattr(out, "cache", None)
    if new_cache is None:
        new_cache = out.past_key_values
    logits = out.logits.float()
    if not bool(torch.isfinite(logits).all()):
        raise NonFiniteLogitsError(f"the model produced non-finite logits (NaN or inf){_NON_FINITE_HINT}")
    return (logits if all_logits else logits[:, -1]), new_cache
