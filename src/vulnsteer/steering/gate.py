"""Conditional steering: a probe read from the model's own hidden states decides, per input, which way to push.

A :class:`~vulnsteer.steering.probe.Probe` scores a prompt from its unsteered hidden states at the layers and
poolings it reads (``code_mean``, ``code_max`` over the code tokens, ``last`` at the answer position), higher = more
vulnerable, with a threshold, a spread and a calibration chosen on validation data. A :class:`Gate` turns the
score into a multiplier of the behaviour vector's strength:

- ``sign``: ``+1`` on the vulnerable side of the threshold, ``-1`` on the secure side (push toward the probe's
  verdict);
- ``linear``: ``clip((score - threshold) / spread, -1, 1)`` (ACT-like: the push grows with the probe's
  confidence; *spread* is the standard deviation of the probe's validation scores);
- ``one_sided``: ``+1`` / ``-1`` only where the probe is confident (``|score - threshold| > band x spread``), else 0;
- ``calibrated``: ``(p - c) / max(c, 1 - c)`` with ``p`` the calibrated probability and ``c`` its value at the
  threshold: the push follows the probability, never clipped, so no two scores tie and the ranking is kept;
- ``toward_secure``: ``p - 1``, in ``(-1, 0)``: every input is pushed toward *secure*, by the probe's probability
  that it is secure. The push never changes direction, so where the model's answer falls with every push toward
  secure, however large, the steered answer falls monotonically with the probe's probability (on SmolLM2-135M a
  large push either way lowers the "vulnerable" margin, so under the two-way gates the answer stops following the
  probe at large strengths); it also offsets a model that answers "vulnerable" to everything.

The score is read once from the prompt and held for every generated token. Every layer the probe reads must be at
or below the steered layers, so the states it reads are unsteered ones (steering acts at and after its layer).

>>> import torch
>>> from vulnsteer.steering.probe import Probe
>>> from vulnsteer.config.design import ProbeDesign
>>> probe = Probe(ProbeDesign((3,), ("code_mean",)), torch.tensor([1.0, 0.0]), bias=0.0, threshold=0.5)
>>> scores = probe.scores({(3, "code_mean"): torch.tensor([[2.0, 9.0], [-1.0, 9.0], [0.6, 9.0]])})
>>> Gate("sign", probe).multipliers(scores).tolist()
[1.0, -1.0, 1.0]
>>> Gate("one_sided", probe, band=0.5).multipliers(scores).tolist()
[1.0, -1.0, 0.0]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..config.vocabulary import GATE_KINDS
from .probe import Probe

__all__ = ["Gate"]


@dataclass(frozen=True)
class Gate:
    """How a probe's score scales (and signs) a behaviour vector's strength, per input (see the module docstring).

    ``multipliers`` is in ``[-1, 1]``: the steered strength of a row is ``strength x multiplier``.

    >>> from vulnsteer.steering.probe import Probe
    >>> from vulnsteer.config.design import ProbeDesign
    >>> probe = Probe(ProbeDesign((3,), ("last",)), torch.tensor([1.0]), bias=0.0, threshold=0.0, spread=2.0)
    >>> Gate("linear", probe).multipliers(torch.tensor([4.0, 1.0, -1.0])).tolist()
    [1.0, 0.5, -0.5]
    >>> [round(m, 3) for m in Gate("calibrated", probe).multipliers(torch.tensor([4.0, 1.0, -1.0])).tolist()]
    [0.964, 0.462, -0.462]
    >>> [round(m, 3) for m in Gate("toward_secure", probe).multipliers(torch.tensor([4.0, 1.0, -1.0])).tolist()]
    [-0.018, -0.269, -0.731]
    """

    kind: str
    probe: Probe
    band: float = 0.5

    def __post_init__(self) -> None:
        if self.kind not in GATE_KINDS:
            raise ValueError(f"gate kind must be one of {', '.join(GATE_KINDS)}, got {self.kind!r}")
        if not (math.isfinite(self.band) and self.band >= 0):
            raise ValueError(f"gate band must be a non-negative number, got {self.band!r}")

    def multipliers(self, scores: torch.Tensor) -> torch.Tensor:
        if self.kind == "toward_secure":
            return self.probe.probabilities(scores) - 1.0
        if self.kind == "calibrated":
            p = self.probe.probabilities(scores.float()).double()
            c = self.probe.threshold_probability
            return ((p - c) / max(c, 1.0 - c, 1e-6)).float()
        centred = (scores.float() - self.probe.threshold) / self.probe.spread
        if self.kind == "sign":
            return torch.where(centred > 0, 1.0, -1.0)
        if self.kind == "linear":
            return centred.clamp(-1.0, 1.0)
        confident = centred.abs() > self.band
        return torch.where(confident, torch.sign(centred), torch.zeros_like(centred))
