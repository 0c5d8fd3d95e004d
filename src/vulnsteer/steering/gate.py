"""Conditional steering: a probe read from the model's own hidden states decides, per input, which way to push.

A :class:`LinearProbe` scores a prompt from its unsteered hidden state at a *condition layer* (pooled over the
code tokens, ``code_mean``, or at the answer position, ``last``): ``score = h @ weight + bias``, higher = more
vulnerable, with a threshold chosen on validation data. A :class:`Gate` turns the score into a multiplier of the
behaviour vector's strength:

- ``sign``: ``+1`` on the vulnerable side of the threshold, ``-1`` on the secure side (push toward the probe's
  verdict);
- ``linear``: ``clip((score - threshold) / spread, -1, 1)`` (ACT-like: the push grows with the probe's
  confidence; *spread* is the standard deviation of the probe's validation scores);
- ``one_sided``: ``+1`` / ``-1`` only where the probe is confident (``|score - threshold| > band x spread``), else 0.

The score is read once from the prompt and held for every generated token. The condition layer must not be above
the steered layers, so the state it reads is the unsteered one (steering acts at and after its layer).

>>> import torch
>>> probe = LinearProbe(layer=3, pooling="code_mean", weight=torch.tensor([1.0, 0.0]), bias=0.0, threshold=0.5,
...                     spread=1.0)
>>> scores = probe.scores(torch.tensor([[2.0, 9.0], [-1.0, 9.0], [0.6, 9.0]]))
>>> Gate("sign", probe).multipliers(scores).tolist()
[1.0, -1.0, 1.0]
>>> Gate("one_sided", probe, band=0.5).multipliers(scores).tolist()
[1.0, -1.0, 0.0]
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ..config.vocabulary import GATE_KINDS

__all__ = ["Gate", "LinearProbe"]


@dataclass(frozen=True)
class LinearProbe:
    """``score(h) = h @ weight + bias`` on the hidden state at *layer* / *pooling*; higher = more vulnerable.

    Attributes:
        layer: the condition layer (0-based decoder block whose output is read).
        pooling: ``code_mean`` or ``last``.
        weight, bias: the linear score in hidden-state space (a logistic probe's scaler folded in).
        threshold: vulnerable iff ``score > threshold`` (chosen on validation data).
        spread: standard deviation of the validation scores (the scale of the ``linear`` gate and the
            ``one_sided`` band).
        name: what fitted it (``logistic``, ``direction``, ``random``).
        meta: provenance (training data hash and counts, validation metrics, ...).

    >>> probe = LinearProbe(3, "code_mean", torch.tensor([1.0, -1.0]), bias=0.5, threshold=0.0)
    >>> probe.scores(torch.tensor([[2.0, 1.0], [0.0, 3.0]])).tolist()
    [1.5, -2.5]
    """

    layer: int
    pooling: str
    weight: torch.Tensor
    bias: float
    threshold: float
    spread: float = 1.0
    name: str = "logistic"
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.weight.ndim != 1:
            raise ValueError(f"probe weight must be 1-D, got shape {tuple(self.weight.shape)}")
        if not torch.isfinite(self.weight).all() or not all(map(math.isfinite, (self.bias, self.threshold))):
            raise ValueError("probe weight, bias and threshold must be finite")
        if self.pooling not in ("code_mean", "last"):
            raise ValueError(f"probe pooling must be code_mean or last, got {self.pooling!r}")
        object.__setattr__(self, "weight", self.weight.detach().to("cpu", torch.float32).clone())
        object.__setattr__(self, "spread", float(self.spread) if self.spread > 0 else 1.0)

    @property
    def key(self) -> str:
        """``"logistic@code_mean@L10"``: how settings name their condition."""
        return f"{self.name}@{self.pooling}@L{self.layer}"

    def scores(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scores of ``hidden [n, h]`` (float32, CPU)."""
        return hidden.detach().to("cpu", torch.float32) @ self.weight + self.bias

    def verdicts(self, hidden: torch.Tensor) -> torch.Tensor:
        """1 (vulnerable) where the score is above the threshold, else 0: the probe alone as a detector."""
        return (self.scores(hidden) > self.threshold).long()

    def random_like(self, seed: int) -> LinearProbe:
        """The random-gate control: a random direction of the same norm, its bias and threshold shifted so the
        same share of the training midpoint falls on each side (the caller re-chooses the threshold on val)."""
        gen = torch.Generator().manual_seed(seed)
        rand = torch.randn(self.weight.shape[0], generator=gen)
        weight = rand / rand.norm() * self.weight.norm()
        return LinearProbe(self.layer, self.pooling, weight, 0.0, 0.0, 1.0, "random", {"seed": seed})

    def to_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """Tensors and string metadata for a safetensors file."""
        meta = {"layer": str(self.layer), "pooling": self.pooling, "bias": repr(self.bias),
                "threshold": repr(self.threshold), "spread": repr(self.spread), "name": self.name,
                "meta": json.dumps(dict(self.meta), default=str)}  # fmt: skip
        return {"weight": self.weight.contiguous()}, meta

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, str]) -> LinearProbe:
        return cls(int(meta["layer"]), meta["pooling"], tensors["weight"], float(meta["bias"]),
                   float(meta["threshold"]), float(meta.get("spread", "1.0")), meta.get("name", "logistic"),
                   json.loads(meta.get("meta", "{}")))  # fmt: skip


@dataclass(frozen=True)
class Gate:
    """How a probe's score scales (and signs) a behaviour vector's strength, per input (see the module docstring).

    ``multipliers`` is in ``[-1, 1]``: the steered strength of a row is ``strength x multiplier``.

    >>> probe = LinearProbe(3, "last", torch.tensor([1.0]), bias=0.0, threshold=0.0, spread=2.0)
    >>> Gate("linear", probe).multipliers(torch.tensor([4.0, 1.0, -1.0])).tolist()
    [1.0, 0.5, -0.5]
    """

    kind: str
    probe: LinearProbe
    band: float = 0.5

    def __post_init__(self) -> None:
        if self.kind not in GATE_KINDS:
            raise ValueError(f"gate kind must be one of {', '.join(GATE_KINDS)}, got {self.kind!r}")
        if not (math.isfinite(self.band) and self.band >= 0):
            raise ValueError(f"gate band must be a non-negative number, got {self.band!r}")

    def multipliers(self, scores: torch.Tensor) -> torch.Tensor:
        centred = (scores.float() - self.probe.threshold) / self.probe.spread
        if self.kind == "sign":
            return torch.where(centred > 0, 1.0, -1.0)
        if self.kind == "linear":
            return centred.clamp(-1.0, 1.0)
        confident = centred.abs() > self.band
        return torch.where(confident, torch.sign(centred), torch.zeros_like(centred))
