"""The ``nnsight`` backend: steering and recording inside nnsight tracing contexts, locally or remotely.

Each forward pass becomes one ``with envoy.trace(...)`` block in which the active steering contexts add their
shifts to the decoder layers' outputs (:func:`~vulnsteer.lm.backend.apply_shifts`, the function the hook backend
uses) and the active recording contexts read them, in the order the contexts were entered, layer by layer in
execution order. A prompt pass is told from a cached generation step by the KV cache passed in, as the hook
backend's pre-hook does. So the numbers equal the hook backend's (same dtype, same device).

``remote`` is passed through to nnsight's ``trace(remote=...)``: ``True`` runs every pass on NDIF (the host
and API key come from nnsight's configuration: ``NDIF_HOST`` and ``NDIF_API_KEY``), a URL names another host, and
``"local"`` serialises each pass as a remote request and runs it here (the remote path without a server). The
modules the trace body calls are registered with nnsight to travel by value, since the server lacks vulnsteer.

nnsight is imported only when this backend is built: ``pip install 'vulnsteer[nnsight]'``.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from .backend import Readout, Shifts, apply_shifts, hidden_of, past_length, with_hidden

__all__ = ["INSTALL_HINT", "NNSightBackend", "NNSightMissingError", "require_nnsight"]

INSTALL_HINT = "pip install 'vulnsteer[nnsight]'"

#: One step of a context at a layer: ``("shift", [(delta, positions), ...])`` or ``("read", (out, layer))`` (the
#: recording's dict and the layer index it was asked for).
_Op = tuple[str, Any]


class NNSightMissingError(ImportError):
    """``--backend nnsight`` without the nnsight package installed."""


def require_nnsight() -> None:
    """Raise a one-line :class:`NNSightMissingError` naming the install command when nnsight is absent.

    >>> require_nnsight()  # doctest: +SKIP
    """
    if importlib.util.find_spec("nnsight") is None:
        raise NNSightMissingError(f"--backend nnsight needs the nnsight package; install it with: {INSTALL_HINT}")


def _import_nnsight() -> Any:
    """nnsight, imported. Importing it first mounts a ``save`` method on every Python object (its ``value.save()``
    syntax), which breaks libraries defined afterwards (anyio's typed attribute classes) and makes
    ``hasattr(x, "save")`` true everywhere; vulnsteer calls ``nnsight.save(value)``, so when it is the one importing
    nnsight it takes the mount off again."""
    require_nnsight()
    fresh = "nnsight" not in sys.modules
    import nnsight

    if fresh and hasattr(object, "save"):
        from nnsight._c import unmount

        if unmount is not None:
            unmount("save")
    return nnsight


def _intervene(plan: Sequence[tuple[Any, Sequence[_Op]]], generating: bool) -> dict[Any, torch.Tensor]:
    """The trace body's work, layer by layer in execution order: add the shifts, read what is recorded (a read
    sees the shifts of the contexts entered before it, as a hook registered after theirs would)."""
    reads: dict[Any, torch.Tensor] = {}
    for envoy, ops in plan:
        output = envoy.output
        hidden = hidden_of(output)
        new = hidden
        for kind, arg in ops:
            if kind == "shift":
                new = apply_shifts(new, arg, generating)
            else:
                reads[arg] = new.detach()
        if new is not hidden:
            envoy.output = with_hidden(output, new)
    return reads


def _pooled(envoys: Sequence[Any], readout: Readout) -> list[dict[str, torch.Tensor]]:
    """The trace body of :meth:`NNSightBackend.states`: each layer's output pooled where it is read."""
    return [readout.of(hidden_of(envoy.output).detach()) for envoy in envoys]


class NNSightBackend:
    """Runs passes through ``nnsight`` (a ``TransformersModel`` wrapping the loaded model, or naming a remote one).

    Its state is the steering and recording contexts active on this model (entered and left with ``with``), so
    two models are steered independently. nnsight instruments the wrapped modules once (inert outside a trace);
    the weights are never changed.

    >>> lm = load_model(backend="nnsight")  # doctest: +SKIP
    >>> with steer(lm, vector, 0.3, unit="relative", positions="last"):  # doctest: +SKIP
    ...     records = score_logits(lm, samples)
    """

    name = "nnsight"

    def __init__(self, envoy: Any, remote: bool | str = False) -> None:
        self.envoy = envoy
        self.remote = _checked_remote(remote)
        self._envoys = {id(e._module): e for e in envoy.modules()}
        #: the active contexts, in the order entered: (layer, its envoy, step) per layer they touch
        self._active: list[list[tuple[int, Any, _Op]]] = []

    @classmethod
    def wrap(cls, model: nn.Module, tokenizer: Any, remote: bool | str = False) -> NNSightBackend:
        """The backend for a model loaded here (``remote="local"`` simulates the remote path on it).

        >>> backend = NNSightBackend.wrap(lm.model, lm.tokenizer)  # doctest: +SKIP
        """
        nnsight = _import_nnsight()
        return cls(nnsight.TransformersModel(model, tokenizer=tokenizer), remote)

    @classmethod
    def hosted(cls, model_id: str, tokenizer: Any, remote: bool | str, **options: Any) -> NNSightBackend:
        """The backend for a model that runs remotely (*model_id* on the hub; no weights are loaded here, only
        its architecture on the meta device).

        >>> backend = NNSightBackend.hosted("meta-llama/Llama-3.1-70B", tok, remote=True)  # doctest: +SKIP
        """
        nnsight = _import_nnsight()
        return cls(nnsight.TransformersModel(model_id, tokenizer=tokenizer, **options), remote)

    def _trace_options(self) -> dict[str, Any]:
        if not self.remote:
            return {}
        nnsight = _import_nnsight()
        from . import backend as shared

        nnsight.register(shared)  # the trace body's helpers travel by value: the server has no vulnsteer
        nnsight.register(__name__)
        return {"remote": self.remote}

    def _envoy(self, blocks: nn.ModuleList, layer: int) -> Any:
        found = self._envoys.get(id(blocks[layer]))
        if found is None:
            raise ValueError(f"nnsight does not see layer {layer} of the model (was it wrapped before loading?)")
        return found

    def _plan(self) -> tuple[list[tuple[Any, list[_Op]]], dict[tuple[int, int], tuple[dict[int, torch.Tensor], int]]]:
        """Per layer (in execution order), the steps of every active context (in the order they were entered), and
        where each read goes (a read is named by plain numbers: it may come back from a remote server)."""
        steps: dict[int, tuple[Any, list[_Op]]] = {}
        sinks: dict[tuple[int, int], tuple[dict[int, torch.Tensor], int]] = {}
        for index, entry in enumerate(self._active):
            for layer, envoy, (kind, arg) in entry:
                if kind == "read":
                    sinks[(index, layer)] = arg
                    arg = (index, layer)
                steps.setdefault(layer, (envoy, []))[1].append((kind, arg))
        return [steps[layer] for layer in sorted(steps)], sinks

    @contextmanager
    def _entered(self, entry: list[tuple[int, Any, _Op]]) -> Iterator[None]:
        self._active.append(entry)
        try:
            yield
        finally:
            del self._active[next(i for i, e in enumerate(self._active) if e is entry)]

    def run(self, model: nn.Module, kwargs: dict[str, Any]) -> Any:
        from nnsight import save

        plan, sinks = self._plan()
        generating = past_length(kwargs) > 0
        envoy = self.envoy
        with envoy.trace(**kwargs, **self._trace_options()):
            result = save((_intervene(plan, generating), envoy.output))
        reads, output = result
        for key, value in reads.items():
            out, layer = sinks[key]
            out[layer] = value
        return output

    @contextmanager
    def steering(self, model: nn.Module, blocks: nn.ModuleList, shifts: Shifts) -> Iterator[None]:
        entry: list[tuple[int, Any, _Op]] = []
        for layer, items in shifts.items():
            if not 0 <= layer < len(blocks):
                raise ValueError(f"layer {layer} out of range for a model with {len(blocks)} layers")
            placed = [(self._placed(delta, blocks[layer]), pos) for delta, pos in items]
            entry.append((layer, self._envoy(blocks, layer), ("shift", placed)))
        with self._entered(entry):
            yield

    def _placed(self, delta: torch.Tensor, block: nn.Module) -> torch.Tensor:
        """*delta* on the layer's device and dtype once (not at every pass); left as it is for a remote model."""
        param = next(block.parameters(), None)
        if self.remote or param is None or param.device.type == "meta":
            return delta
        return delta.to(param.device, param.dtype)

    @contextmanager
    def recording(
        self, model: nn.Module, blocks: nn.ModuleList, layers: Sequence[int]
    ) -> Iterator[dict[int, torch.Tensor]]:
        out: dict[int, torch.Tensor] = {}
        entry = [(layer % len(blocks), self._envoy(blocks, layer), ("read", (out, layer))) for layer in layers]
        with self._entered(entry):
            yield out

    def states(
        self, model: nn.Module, blocks: nn.ModuleList, readout: Readout, kwargs: dict[str, Any]
    ) -> list[dict[str, torch.Tensor]]:
        from nnsight import save

        order = sorted({layer % len(blocks) for layer in readout.layers})
        envoys = [self._envoy(blocks, layer) for layer in order]
        with self.envoy.trace(**kwargs, **self._trace_options()) as tracer:
            pooled = save(_pooled(envoys, readout))
            tracer.stop()
        by_layer = dict(zip(order, pooled))
        return [by_layer[layer % len(blocks)] for layer in readout.layers]


def _checked_remote(remote: bool | str) -> bool | str:
    """*remote* as nnsight takes it (``True``/``False``, ``"local"`` or a host URL), or a one-line error."""
    if isinstance(remote, str) and remote != "local" and not remote.startswith(("http://", "https://")):
        raise ValueError(f"--remote must be on, off, local or an http(s) URL of an NDIF host; got {remote!r}")
    return remote
