"""Steering generation with forward hooks.

Sign convention (the one and only): **positive strength pushes the model toward reporting a vulnerability.**
A vector's direction ``d`` points from vulnerable toward secure (``mean(secure) - mean(vulnerable)``), so steering
*subtracts* it: at each steered layer and position the hidden state ``h`` becomes

- ``h - strength * d`` with ``unit="raw"`` (strength 1 moves by one mean difference), or
- ``h - strength * n * d / |d|`` with ``unit="relative"``, where ``n`` is the layer's mean hidden-state norm
  recorded when the vector was fitted (strength 0.1 moves by a tenth of a typical hidden state; settings
  transfer between models and layers), or
- ``h - strength * s * d / |d|`` with ``unit="sigma"``, where ``s`` is the spread (standard deviation) of the
  training activations projected on ``d`` (ITI's unit: strength 1 moves by one typical difference along ``d``).

Positions: ``last`` (each row's last prompt token: correct under left padding, which vulnsteer always uses),
``answer`` (the last prompt token and each generated token: where the model writes its answer), ``prompt`` (all
prompt tokens), ``generated`` (each new token during ``generate`` with the KV cache), ``all``.
A forward pass that starts with an empty KV cache is a prompt pass; one that continues a cache is a generation
step (a pre-hook on the model reads the cache length, so this holds for any batch size and for teacher-forced
continuations too).

:func:`steer` registers hooks on the decoder layers and removes them on exit, exceptions included. It never
modifies the model's weights or attributes, and holds its state in the context only, so any batch size works
and two models can be steered independently. Given a :class:`~vulnsteer.lm.model.LoadedModel` instead of a bare
model, :func:`steer` and :func:`steer_rows` steer with its backend (``hooks`` or ``nnsight``,
:mod:`vulnsteer.lm.backend`): the same shifts at the same positions, applied by the same function.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch

from ..config.defaults import DEFAULT_STEER_POSITIONS, DEFAULT_UNIT, MAX_SHIFT_RATIO
from ..config.vocabulary import POSITIONS, STRENGTH_UNITS
from ..lm.backend import Shifts, backend_of
from ..lm.model import LayerMatcher, decoder_layers
from .gate import Gate
from .vectors import SteeringVector, unit_direction

__all__ = [
    "MAX_SHIFT_RATIO",
    "SIGN_CONVENTION",
    "PositionMode",
    "SteeringSpec",
    "StrengthUnit",
    "steer",
    "steer_rows",
]

#: The type checker's names for :data:`~vulnsteer.config.vocabulary.POSITIONS` and
#: :data:`~vulnsteer.config.vocabulary.STRENGTH_UNITS` (a test checks that they hold the same values).
PositionMode = Literal["last", "answer", "prompt", "generated", "all"]
StrengthUnit = Literal["raw", "relative", "sigma"]
#: The sign convention in one sentence (reports and results.json repeat it).
SIGN_CONVENTION = (
    "Vectors point from vulnerable to secure (mean(secure) - mean(vulnerable)); a positive steering strength "
    "subtracts the vector and so pushes the model toward answering 'vulnerable'."
)
#: The largest shift (L2 norm) when the vector records no layer norm to compare with.
MAX_UNSCALED_SHIFT = 1e6


@dataclass(frozen=True)
class SteeringSpec:
    """What to steer with, where, and how strongly. Validated when built.

    Attributes:
        vector: the steering vector (directions ``secure - vulnerable``).
        strength: positive = toward "vulnerable"; 0 = no change.
        layers: layers to steer (default: all of the vector's layers; negative indices are not allowed here).
        positions: ``last`` (the answer position), ``answer`` (it and every generated token), ``prompt``,
            ``generated`` or ``all``.
        unit: ``raw``, ``relative`` or ``sigma`` (see the module docstring).
        gate: conditional steering (:class:`~vulnsteer.steering.gate.Gate`): the strength is multiplied, per
            input, by the gate's reading of a probe; the detection engine resolves it (:meth:`gated`) before the
            hooks run, since the probe reads the prompt's own hidden states.
        source: what set the strength (``--strength``, a config key ...), named when the strength is refused.

    >>> spec = SteeringSpec(vector, 0.3, layers=(15,), positions="last", unit="relative")  # doctest: +SKIP
    >>> with steer(model, [spec]):  # doctest: +SKIP
    ...     records = detect(lm, samples)
    """

    vector: SteeringVector
    strength: float
    layers: tuple[int, ...] = field(default=())
    positions: PositionMode = DEFAULT_STEER_POSITIONS
    unit: StrengthUnit = DEFAULT_UNIT
    gate: Gate | None = None
    #: What the user set the strength with, named when a strength is refused (not part of the spec's value).
    source: str = field(default="--strength", compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.strength, (int, float)) or not math.isfinite(self.strength):
            raise ValueError(f"steering strength must be a finite number, got {self.strength!r}")
        if self.positions not in POSITIONS:
            raise ValueError(f"--positions must be one of {', '.join(POSITIONS)}, got {self.positions!r}")
        if self.unit not in STRENGTH_UNITS:
            raise ValueError(f"--unit must be one of {', '.join(STRENGTH_UNITS)}, got {self.unit!r}")
        layers = tuple(sorted(self.layers)) if self.layers else self.vector.layers
        missing = [layer for layer in layers if layer not in self.vector.directions]
        if missing:
            raise ValueError(f"layers {missing} are not in the vector (it has {list(self.vector.layers)})")
        scales = {"relative": self.vector.provenance.layer_norms, "sigma": self.vector.provenance.layer_sigmas}
        if self.unit in scales:
            absent = [layer for layer in layers if not scales[self.unit].get(layer)]
            if absent:
                what = "norms" if self.unit == "relative" else "sigmas"
                raise ValueError(f"{self.unit} strength needs the vector's layer {what}; missing for layers {absent}")
        if self.gate is not None and self.gate.probe.design.deepest > min(layers):
            raise ValueError(
                f"the gate's condition layer {self.gate.probe.design.deepest} is above the steered layers "
                f"{list(layers)}: it would read a steered state (every layer a gating probe reads must be at or "
                "below them)"
            )
        object.__setattr__(self, "layers", layers)
        for layer in layers:
            self._check_scale(layer)

    def _check_scale(self, layer: int) -> None:
        """Refuse a shift far beyond the hidden-state scale: it saturates every layer after it, and the logits
        come out non-finite or meaningless (a confident-looking p = 0.5)."""
        per_unit = {"relative": self.vector.provenance.layer_norms, "sigma": self.vector.provenance.layer_sigmas}
        shift = abs(float(self.strength)) * (
            per_unit[self.unit][layer] if self.unit in per_unit else self.vector.norm(layer)
        )
        scale = self.vector.provenance.layer_norms.get(layer)
        where = f"strength {self.strength:g} ({self.unit}) at layer {layer}"
        if self.strength and self.vector.norm(layer) == 0:
            raise ValueError(f"the vector's direction at layer {layer} is zero: steering would change nothing")
        if not math.isfinite(shift):
            raise ValueError(f"steering shift is not finite ({where}); lower {self.source}")
        if scale and shift > MAX_SHIFT_RATIO * scale:
            raise ValueError(
                f"steering shift of {shift:.3g} is {shift / scale:.3g} x the layer's mean hidden-state norm "
                f"{scale:.3g} ({where}), far beyond the hidden-state scale (at most {MAX_SHIFT_RATIO:g} x); "
                f"lower {self.source}"
            )
        if not scale and shift > MAX_UNSCALED_SHIFT:
            raise ValueError(
                f"steering shift of {shift:.3g} ({where}) exceeds {MAX_UNSCALED_SHIFT:g}, beyond any hidden-state "
                f"scale (the vector records no layer norm to compare with); lower {self.source}"
            )

    def gated(self, multiplier: float) -> SteeringSpec:
        """This spec with its gate resolved: ``strength x multiplier``, no gate."""
        return replace(self, strength=float(self.strength) * float(multiplier), gate=None)

    def delta(self, layer: int) -> torch.Tensor:
        """The additive shift applied to the hidden state at *layer* (``-strength * scale * d``)."""
        if self.gate is not None:
            raise ValueError("a gated spec has no fixed shift: resolve its gate per input first (SteeringSpec.gated)")
        d = self.vector.direction(layer)
        if self.unit == "relative":
            d = unit_direction(d) * self.vector.provenance.layer_norms[layer]
        elif self.unit == "sigma":
            d = unit_direction(d) * self.vector.provenance.layer_sigmas[layer]
        return -float(self.strength) * d


def _as_specs(
    vector_or_specs: SteeringVector | SteeringSpec | Sequence[SteeringSpec],
    strength: float | None,
    layers: Sequence[int] | None,
    positions: PositionMode,
    unit: StrengthUnit,
) -> list[SteeringSpec]:
    if isinstance(vector_or_specs, SteeringVector):
        if strength is None:
            raise ValueError("steer(model, vector, strength): strength is required with a bare vector")
        return [SteeringSpec(vector_or_specs, strength, tuple(layers or ()), positions, unit)]
    if isinstance(vector_or_specs, SteeringSpec):
        return [vector_or_specs]
    specs = list(vector_or_specs)
    if not all(isinstance(s, SteeringSpec) for s in specs):
        raise TypeError("steer() takes a SteeringVector, a SteeringSpec, or a sequence of SteeringSpec")
    return specs


@contextmanager
def _steered(model: Any, shifts: Shifts, matcher: LayerMatcher | None) -> Iterator[None]:
    """Apply *shifts* with the model's backend (:mod:`vulnsteer.lm.backend`) within the block."""
    backend, module, own = backend_of(model)
    with backend.steering(module, decoder_layers(module, matcher or own), shifts):
        yield


def _check_specs(model: Any, specs: Sequence[SteeringSpec]) -> None:
    hidden_size = int(getattr(backend_of(model)[1].config, "hidden_size", 0) or 0)
    for spec in specs:
        if hidden_size:
            spec.vector.check_hidden_size(hidden_size, "cannot steer")


@contextmanager
def steer(
    model: Any,
    vector_or_specs: SteeringVector | SteeringSpec | Sequence[SteeringSpec],
    strength: float | None = None,
    *,
    layers: Sequence[int] | None = None,
    positions: PositionMode = DEFAULT_STEER_POSITIONS,
    unit: StrengthUnit = DEFAULT_UNIT,
    layer_matcher: LayerMatcher | None = None,
) -> Iterator[list[SteeringSpec]]:
    """Steer *model* inside a ``with`` block; hooks are removed on exit, exceptions included.

    ``with steer(model, vector, 4.0, positions="last"):`` or ``with steer(model, [spec_a, spec_b]):``.
    Positive strength = toward reporting a vulnerability (the direction is subtracted). *model* is a bare model
    (forward hooks) or a :class:`~vulnsteer.lm.model.LoadedModel` (steered by its backend).

    >>> with steer(lm, vector, 0.3, unit="relative", positions="last"):  # doctest: +SKIP
    ...     records = score_logits(lm, samples)     # toward "vulnerable"; the hooks are gone after the block
    """
    specs = _as_specs(vector_or_specs, strength, layers, positions, unit)
    _check_specs(model, specs)
    per_layer: dict[int, list[tuple[torch.Tensor, str]]] = {}
    for spec in specs:
        for layer in spec.layers:
            if spec.strength != 0:
                per_layer.setdefault(layer, []).append((spec.delta(layer), spec.positions))
    with _steered(model, per_layer, layer_matcher):
        yield specs


@contextmanager
def steer_rows(
    model: Any, rows: Sequence[Sequence[SteeringSpec]], layer_matcher: LayerMatcher | None = None
) -> Iterator[None]:
    """Steer each row of the batch with its own specs (``rows[i]`` for row ``i``; empty = unsteered).

    Lets one batched pass serve several settings at once (baseline, strengths, controls, other CWEs' vectors).
    The batch given to the model must have exactly ``len(rows)`` rows.

    >>> rows = [[], [SteeringSpec(vector, 0.3, unit="relative")]]  # row 0 plain, row 1 steered  # doctest: +SKIP
    >>> with steer_rows(lm.model, rows):  # doctest: +SKIP
    ...     logits = lm.model(input_ids=two_rows).logits
    """
    all_specs = [spec for specs in rows for spec in specs]
    _check_specs(model, all_specs)
    hidden = int(getattr(backend_of(model)[1], "config").hidden_size)  # noqa: B009
    grouped: dict[tuple[int, str], torch.Tensor] = {}
    for row, specs in enumerate(rows):
        for spec in specs:
            if spec.strength == 0:
                continue
            for layer in spec.layers:
                key = (layer, spec.positions)
                if key not in grouped:
                    grouped[key] = torch.zeros(len(rows), hidden)
                grouped[key][row] += spec.delta(layer)
    per_layer: dict[int, list[tuple[torch.Tensor, str]]] = {}
    for (layer, pos), delta in grouped.items():
        per_layer.setdefault(layer, []).append((delta, pos))
    with _steered(model, per_layer, layer_matcher):
        yield
