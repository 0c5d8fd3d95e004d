"""Execution backends: how a forward pass is run with steering shifts added and hidden states read.

Every pass that steers or records goes through one seam: :func:`~vulnsteer.lm.forward.forward`,
:func:`~vulnsteer.lm.activations.recording`, :func:`~vulnsteer.lm.activations.batch_states`,
:func:`~vulnsteer.steering.hooks.steer` and :func:`~vulnsteer.steering.hooks.steer_rows` take either a bare
model (forward hooks, as always) or a :class:`~vulnsteer.lm.model.LoadedModel`, whose ``backend`` says how:

- ``hooks`` (:class:`HookBackend`, the default): PyTorch forward hooks on the decoder layers;
- ``nnsight`` (:class:`~vulnsteer.lm.nnsight_backend.NNSightBackend`): the same edits inside an ``nnsight``
  tracing context, locally or on a remote NDIF server (``remote``).

Both add the same shifts with the same function (:func:`apply_shifts`) and pool with the same function
(:func:`pool`), so their results agree up to float tolerance (exactly, in practice). This module imports torch
only: the nnsight backend ships it by value to a remote server.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

__all__ = [
    "Backend",
    "HookBackend",
    "Readout",
    "Shifts",
    "apply_shifts",
    "backend_of",
    "hidden_of",
    "masked_max",
    "masked_mean",
    "past_length",
    "pool",
    "with_hidden",
]

#: ``{layer index: [(delta, positions), ...]}``: a delta is ``[hidden]`` (every row) or ``[batch, hidden]`` (one
#: per row); positions are ``last``, ``answer``, ``prompt``, ``generated`` or ``all`` (see
#: :mod:`vulnsteer.steering.hooks`).
Shifts = Mapping[int, Sequence[tuple[torch.Tensor, str]]]


def hidden_of(output: Any) -> torch.Tensor:
    """The hidden-state tensor of a decoder layer's output (a tensor in transformers 5, a tuple before).

    >>> hidden_of((torch.ones(1, 2, 3), None)).shape
    torch.Size([1, 2, 3])
    """
    return output if isinstance(output, torch.Tensor) else output[0]


def with_hidden(output: Any, hidden: torch.Tensor) -> Any:
    """A decoder layer output of the same structure as *output* with its hidden state replaced.

    >>> with_hidden((torch.ones(1), "kept"), torch.zeros(1))[1]
    'kept'
    """
    if isinstance(output, torch.Tensor):
        return hidden
    return (hidden, *output[1:])


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the positions where *mask* is true: ``[batch, seq, hidden]`` -> ``[batch, hidden]``.

    >>> masked_mean(torch.tensor([[[1.0], [3.0]]]), torch.tensor([[0, 1]]))
    tensor([[3.]])
    """
    weights = mask.to(hidden.device).unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def masked_max(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Maximum per dimension over the positions where *mask* is true: ``[batch, seq, hidden]`` -> ``[batch,
    hidden]`` (0 for a row without any such position).

    >>> masked_max(torch.tensor([[[1.0], [3.0], [9.0]]]), torch.tensor([[1, 1, 0]]))
    tensor([[3.]])
    """
    keep = mask.to(hidden.device).bool().unsqueeze(-1)
    out = hidden.masked_fill(~keep, float("-inf")).amax(1)
    return torch.where(keep.any(1), out, torch.zeros_like(out))


def pool(hidden: torch.Tensor, poolings: Sequence[str], code_mask: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """A layer's output reduced to each pooling (``last``: the last position, left padding; ``code_mean`` /
    ``code_max``: the mean / the maximum per dimension over *code_mask*), float32 on the CPU.

    >>> pool(torch.tensor([[[1.0], [3.0]]]), ["last", "code_mean", "code_max"], torch.tensor([[1, 1]]))["code_mean"]
    tensor([[2.]])
    """
    out: dict[str, torch.Tensor] = {}
    if "last" in poolings:
        out["last"] = hidden[:, -1].float().cpu()
    for name, reduce in (("code_mean", masked_mean), ("code_max", masked_max)):
        if name in poolings:
            if code_mask is None:
                raise ValueError(f"the {name} pooling needs the batch's code mask")
            out[name] = reduce(hidden.float(), code_mask).cpu()
    return out


def past_length(kwargs: Mapping[str, Any]) -> int:
    """Tokens already in the KV cache at the start of a forward pass (0 for a fresh prompt).

    >>> past_length({"input_ids": None})
    0
    """
    for name in ("cache", "past_key_values", "past_key_value"):
        cache = kwargs.get(name)
        if cache is None:
            continue
        if hasattr(cache, "get_seq_length"):
            return int(cache.get_seq_length())
        if isinstance(cache, (tuple, list)) and cache and cache[0] is not None:  # legacy tuple cache
            return int(cache[0][0].shape[-2])
    return 0


def apply_shifts(hidden: torch.Tensor, items: Sequence[tuple[torch.Tensor, str]], generating: bool) -> torch.Tensor:
    """*hidden* (``[batch, seq, hidden]``) with each ``(delta, positions)`` added at its positions: ``all``
    always, ``prompt`` in a prompt pass, ``generated`` in a cached generation step, ``last`` at the last column of
    a prompt pass (each row's last prompt token under left padding), ``answer`` both at ``last`` and in every
    generation step. Returns *hidden* itself when nothing applies;
    never modifies it in place.

    >>> h = torch.zeros(1, 3, 2)
    >>> apply_shifts(h, [(torch.ones(2), "last")], generating=False)[0, :, 0].tolist()
    [0.0, 0.0, 1.0]
    >>> apply_shifts(h, [(torch.ones(2), "prompt")], generating=True) is h
    True
    """
    new = hidden
    for delta, pos in items:
        delta = delta.to(hidden.device, hidden.dtype)
        if delta.ndim == 2 and delta.shape[0] != hidden.shape[0]:
            raise ValueError(f"per-row steering has {delta.shape[0]} rows but the batch has {hidden.shape[0]}")
        shift = delta.unsqueeze(-2) if delta.ndim == 2 else delta
        if pos == "all" or (pos in ("generated", "answer") and generating) or (pos == "prompt" and not generating):
            new = new + shift
        elif pos in ("last", "answer") and not generating:
            new = new.clone() if new is hidden else new
            new[:, -1:, :] = new[:, -1:, :] + shift
    return new


@dataclass(frozen=True)
class Readout:
    """What :meth:`Backend.states` reads: these layers' outputs, pooled (``last``, ``code_mean`` or ``code_max``
    over *code_mask*).

    >>> Readout((1,), ("last",), None).of(torch.ones(2, 3, 4))["last"].shape
    torch.Size([2, 4])
    """

    layers: tuple[int, ...]
    poolings: tuple[str, ...]
    code_mask: torch.Tensor | None = None

    def of(self, hidden: torch.Tensor) -> dict[str, torch.Tensor]:
        """One layer's output pooled (:func:`pool`)."""
        return pool(hidden, self.poolings, self.code_mask)


class Backend(Protocol):
    """How forward passes run. ``blocks`` are the model's decoder layers (as
    :func:`~vulnsteer.lm.model.decoder_layers` finds them); layer indices index them.

    Steering and recording are contexts: every pass run with :meth:`run` inside them is steered and recorded;
    they nest, and apply in the order they were entered (like hooks registered in that order).
    """

    #: ``hooks`` or ``nnsight``
    name: str
    #: where passes run: False = here; otherwise nnsight's remote option (True = NDIF, ``"local"``, or a host URL)
    remote: bool | str

    def run(self, model: nn.Module, kwargs: dict[str, Any]) -> Any:
        """One forward pass ``model(**kwargs)`` with the active steering and recording applied."""
        ...

    def steering(self, model: nn.Module, blocks: nn.ModuleList, shifts: Shifts) -> AbstractContextManager[None]:
        """Within the block, each pass adds *shifts* (:func:`apply_shifts`) to the layers' outputs."""
        ...

    def recording(
        self, model: nn.Module, blocks: nn.ModuleList, layers: Sequence[int]
    ) -> AbstractContextManager[dict[int, torch.Tensor]]:
        """Within the block, ``out[layer]`` holds the output of each chosen layer in the last pass."""
        ...

    def states(
        self, model: nn.Module, blocks: nn.ModuleList, readout: Readout, kwargs: dict[str, Any]
    ) -> list[dict[str, torch.Tensor]]:
        """One unsteered pass ``model(**kwargs)`` stopped after the deepest layer of *readout*: per layer, its
        output pooled (:meth:`Readout.of`)."""
        ...


class _StopForward(Exception):
    """Raised by the deepest recording hook of :meth:`HookBackend.states`: nothing after it is needed."""


class _PassState:
    """Is the current forward pass a prompt pass or a cached generation step? (set by a pre-hook on the model)"""

    __slots__ = ("generating",)

    def __init__(self) -> None:
        self.generating = False

    def pre_hook(self, _module: nn.Module, _args: Any, kwargs: dict[str, Any]) -> None:
        self.generating = past_length(kwargs) > 0


def _shift_hook(items: Sequence[tuple[torch.Tensor, str]], state: _PassState) -> Any:
    """A forward hook adding each ``(delta, positions)``; the deltas are moved to the layer's device and dtype
    once per (device, dtype)."""
    cache: dict[tuple[torch.device, torch.dtype], list[tuple[torch.Tensor, str]]] = {}

    def hook(_module: nn.Module, _args: Any, output: Any) -> Any:
        hidden = hidden_of(output)
        key = (hidden.device, hidden.dtype)
        if key not in cache:
            cache[key] = [(delta.to(hidden.device, hidden.dtype), pos) for delta, pos in items]
        new = apply_shifts(hidden, cache[key], state.generating)
        return output if new is hidden else with_hidden(output, new)

    return hook


def _check_layers(blocks: nn.ModuleList, layers: Iterator[int] | Sequence[int]) -> None:
    for layer in layers:
        if not 0 <= layer < len(blocks):
            raise ValueError(f"layer {layer} out of range for a model with {len(blocks)} layers")


class HookBackend:
    """PyTorch forward hooks on the decoder layers, removed on exit (exceptions included). Stateless: the hooks
    hold the state, so two models can be steered independently and any batch size works.

    >>> HookBackend().name
    'hooks'
    """

    name = "hooks"
    remote: bool | str = False

    def run(self, model: nn.Module, kwargs: dict[str, Any]) -> Any:
        return model(**kwargs)

    @contextmanager
    def steering(self, model: nn.Module, blocks: nn.ModuleList, shifts: Shifts) -> Iterator[None]:
        _check_layers(blocks, list(shifts))
        state = _PassState()
        handles = []
        try:
            if shifts:
                handles.append(model.register_forward_pre_hook(state.pre_hook, with_kwargs=True))
            for layer, items in shifts.items():
                handles.append(blocks[layer].register_forward_hook(_shift_hook(items, state)))
            yield
        finally:
            for handle in handles:
                handle.remove()

    @contextmanager
    def recording(
        self, model: nn.Module, blocks: nn.ModuleList, layers: Sequence[int]
    ) -> Iterator[dict[int, torch.Tensor]]:
        _check_layers(blocks, layers)
        out: dict[int, torch.Tensor] = {}

        def make(layer: int) -> Any:
            def hook(_module: Any, _args: Any, output: Any) -> None:
                out[layer] = hidden_of(output).detach()

            return hook

        handles = [blocks[layer].register_forward_hook(make(layer)) for layer in layers]
        try:
            yield out
        finally:
            for handle in handles:
                handle.remove()

    def states(
        self, model: nn.Module, blocks: nn.ModuleList, readout: Readout, kwargs: dict[str, Any]
    ) -> list[dict[str, torch.Tensor]]:
        """Each layer's output is pooled inside its hook and moved to the CPU there (on the layer's own device, so
        a model split over GPUs works); the deepest layer's hook stops the pass."""
        layers = readout.layers
        _check_layers(blocks, layers)
        deepest = max(layers)
        pooled: list[dict[str, torch.Tensor]] = [{} for _ in layers]

        def make(li: int, layer: int) -> Any:
            def hook(_module: Any, _args: Any, output: Any) -> None:
                pooled[li] = readout.of(hidden_of(output).detach())
                if layer == deepest:
                    raise _StopForward

            return hook

        handles = [blocks[layer].register_forward_hook(make(li, layer)) for li, layer in enumerate(layers)]
        try:
            model(**kwargs)
        except _StopForward:
            pass
        finally:
            for handle in handles:
                handle.remove()
        return pooled


class _HasBackend(Protocol):
    model: Any
    backend: Backend | None
    layer_matcher: Any


def backend_of(target: Any) -> tuple[Backend, nn.Module, Any]:
    """``(backend, model, layer matcher)`` for a bare model (hooks, no matcher) or a loaded model (its backend,
    hooks when it has none, and its layer matcher).

    >>> backend, model, matcher = backend_of(nn.Linear(1, 1))
    >>> backend.name, matcher
    ('hooks', None)
    """
    if isinstance(target, nn.Module):
        return HookBackend(), target, None
    loaded: _HasBackend = target
    backend = loaded.backend if loaded.backend is not None else HookBackend()
    return backend, loaded.model, loaded.layer_matcher
