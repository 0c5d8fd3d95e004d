"""A probe design: what a probe reads and how it is fitted (torch-free: configuration files and the transfer
protocol's grid name designs; :mod:`vulnsteer.steering.probe` fits and applies them).

>>> ProbeDesign((18,), ("code_mean",)).key
'logistic@code_mean@L18'
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .defaults import DEFAULT_TOKENS_C
from .vocabulary import LENGTH_MODES, POOLINGS, PROBE_COMBINES, PROBE_KINDS, PROBE_TEMPLATES

__all__ = ["DEFAULT_C", "ProbeDesign", "Read"]

#: Regularisation strength of the logistic probe (the same as :func:`vulnsteer.steering.vectors.logistic_direction`).
DEFAULT_C = 0.1

#: One state a probe reads: ``(layer, pooling)``.
Read = tuple[int, str]


@dataclass(frozen=True)
class ProbeDesign:
    """What a probe reads and how it is fitted: its layers and poolings (several at once), the probe kind
    (``logistic`` with its regularisation ``C``, or ``direction``, the class-mean difference), ``concat`` (one probe
    over every read state side by side) or ``ensemble`` (one probe per layer, each standardised on its training
    scores, averaged), pair-difference training (``pairs``), how the code's length is handled (``none``,
    ``covariate``: a covariate in fitting, dropped when scoring, ``residual``: every feature residualised on the log
    code-token count), whether each training dataset is standardised on its own (``per_dataset``) and the weight of
    a bag-of-tokens term (``tokens``: a logistic regression on TF-IDF of the code's tokens, :mod:`vulnsteer.stats.
    lexical`, added to the probe's score at *tokens* times the ratio of their val spreads; 0: none) with its own
    regularisation (``tokens_C``; only with a term), and the prompt its states are read under (``template``, one
    of :data:`~vulnsteer.config.vocabulary.PROBE_TEMPLATES`: the question comes before the code, so the code's
    states depend on it).

    >>> ProbeDesign((10, 14), ("code_mean", "code_max"), C=0.01, combine="ensemble", length="covariate").key
    'logistic@code_mean+code_max@L10,14|C=0.01|ensemble|length=covariate'
    >>> ProbeDesign((10, 14), ("code_mean",)).reads
    ((10, 'code_mean'), (14, 'code_mean'))
    >>> ProbeDesign((18,), ("code_mean",), tokens=1).key
    'logistic@code_mean@L18|tokens=1'
    >>> ProbeDesign((18,), ("code_mean",), tokens=1, tokens_C=10).key
    'logistic@code_mean@L18|tokens=1|tokens_C=10'
    >>> ProbeDesign((18,), ("code_mean",), template="weaknesses").key
    'logistic@code_mean@L18|template=weaknesses'
    """

    layers: tuple[int, ...] = (15,)
    poolings: tuple[str, ...] = ("code_mean",)
    kind: str = "logistic"
    C: float = DEFAULT_C
    combine: str = "concat"
    pairs: bool = False
    length: str = "none"
    per_dataset: bool = False
    tokens: float = 0.0
    tokens_C: float = DEFAULT_TOKENS_C
    template: str = "default"

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(int(x) for x in self.layers))
        object.__setattr__(self, "poolings", tuple(str(x) for x in self.poolings))
        if not self.layers or len(set(self.layers)) != len(self.layers):
            raise ValueError(f"a probe design needs distinct layers, got {list(self.layers)}")
        if not self.poolings or len(set(self.poolings)) != len(self.poolings):
            raise ValueError(f"a probe design needs distinct poolings, got {list(self.poolings)}")
        for name, value, allowed in (
            ("pooling", None, POOLINGS),
            ("probe kind", self.kind, PROBE_KINDS),
            ("combine", self.combine, PROBE_COMBINES),
            ("length", self.length, LENGTH_MODES),
            ("prompt template", self.template, PROBE_TEMPLATES),
        ):
            values = self.poolings if value is None else (value,)
            for v in values:
                if v not in allowed:
                    raise ValueError(f"unknown {name} {v!r}; choose from {', '.join(allowed)}")
        if not (math.isfinite(self.C) and self.C > 0):
            raise ValueError(f"a probe's C must be a positive number, got {self.C!r}")
        if not (math.isfinite(self.tokens) and self.tokens >= 0):
            raise ValueError(f"a probe's tokens weight must be 0 or a positive number, got {self.tokens!r}")
        object.__setattr__(self, "tokens", float(self.tokens))
        if not (math.isfinite(self.tokens_C) and self.tokens_C > 0):
            raise ValueError(f"a probe's tokens_C must be a positive number, got {self.tokens_C!r}")
        # without a term its C means nothing: one design, one name
        object.__setattr__(self, "tokens_C", float(self.tokens_C) if self.tokens else DEFAULT_TOKENS_C)
        if len(self.layers) == 1 and self.combine == "ensemble":  # one layer: the ensemble is the probe itself
            object.__setattr__(self, "combine", "concat")

    @property
    def reads(self) -> tuple[Read, ...]:
        """The states read, layer by layer (each layer's poolings side by side)."""
        return tuple((layer, pooling) for layer in self.layers for pooling in self.poolings)

    @property
    def deepest(self) -> int:
        """The deepest layer read: a gate with this probe steers only at or after it."""
        return max(self.layers)

    @property
    def reads_code(self) -> bool:
        """Whether scores need the code's text (a bag-of-tokens term)."""
        return self.tokens > 0

    @property
    def key(self) -> str:
        """A name of the design: ``logistic@code_mean@L15`` for the probe conditional steering has always used,
        with every field that differs from the defaults appended."""
        base = f"{self.kind}@{'+'.join(self.poolings)}@L{','.join(map(str, self.layers))}"
        extra = []
        if self.kind == "logistic" and self.C != DEFAULT_C:
            extra.append(f"C={self.C:g}")
        if self.combine != "concat":
            extra.append(self.combine)
        if self.pairs:
            extra.append("pairs")
        if self.length != "none":
            extra.append(f"length={self.length}")
        if self.per_dataset:
            extra.append("per_dataset")
        if self.tokens:
            extra.append(f"tokens={self.tokens:g}")
        if self.tokens_C != DEFAULT_TOKENS_C:
            extra.append(f"tokens_C={self.tokens_C:g}")
        if self.template != "default":
            extra.append(f"template={self.template}")
        return "|".join([base, *extra])

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["layers"], out["poolings"] = list(self.layers), list(self.poolings)
        return out

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ProbeDesign:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(doc) - names)
        if unknown:
            raise ValueError(f"unknown probe design field {unknown[0]!r} (known: {', '.join(sorted(names))})")
        values = dict(doc)
        for name in ("layers", "poolings"):
            if name in values:
                values[name] = tuple(values[name])
        return cls(**values)
