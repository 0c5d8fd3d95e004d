"""Probes: linear read-outs of a prompt's hidden states, one immutable type for every use.

A :class:`~vulnsteer.config.design.ProbeDesign` says what a probe reads and how it is fitted: its layers and
poolings (several at once), the probe kind, ``concat`` or per-layer ``ensemble``, pair-difference training, length
handling and per-dataset standardisation. Fitting lives in :mod:`vulnsteer.detection.probe`
(:func:`~vulnsteer.detection.probe.fit_probe`).

A :class:`Probe` is a fitted design: every design is linear in the read states, so a probe is one weight vector
over their concatenation, a bias, and a length term::

    score = concat(states at its reads) @ weight + bias - length_weight * (log(code tokens) - length_centre)

plus, for a design with a bag-of-tokens term (``tokens``), the :class:`~vulnsteer.stats.lexical.LexicalModel`'s
score of the code's text (:attr:`Probe.lexical`, scaled when fitted); higher = more vulnerable, with a threshold
and a spread (of the val scores, the ``linear`` gate's scale) and a Platt calibration (:class:`Calibration`, to a
probability) chosen on val. One type serves the gate of conditional
steering (:class:`~vulnsteer.steering.gate.Gate`), the report's table of probes, the transfer protocol and saved
detectors; a file is a safetensors file (weights) with its numbers in the header (nothing is pickled).

**Label-free adaptation** (:meth:`Probe.adapted`): the probe's centre re-estimated from the unlabelled inputs it is
applied to. Their mean state replaces the training data's centre; for a linear read-out that is subtracting their
mean score. Its calibration was chosen on val scores centred the same way (each dataset's val inputs on their own
mean, :class:`Adaptation`), and it flags the highest share of the inputs that those val scores had vulnerable (or a
share the caller states), so it reads no label of the data it is applied to. Below
:data:`~vulnsteer.config.defaults.MIN_ADAPT` inputs it refuses (:class:`AdaptationError`) and says so.

>>> design = ProbeDesign(layers=(3,), poolings=("code_mean",))
>>> design.key
'logistic@code_mean@L3'
>>> probe = Probe(design, torch.tensor([1.0, 0.0]), bias=0.0, threshold=0.5, adaptation=Adaptation(0.1))
>>> probe.scores({(3, "code_mean"): torch.tensor([[2.0, 9.0], [-1.0, 9.0]])}).tolist()
[2.0, -1.0]
>>> adapted = probe.adapted(torch.tensor([2.0, -1.0, 2.0]), min_count=2)  # centred on the mean of these scores
>>> adapted.bias, adapted.threshold, adapted.centred
(-1.0, 0.1, 3)
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config.defaults import MIN_ADAPT
from ..config.design import ProbeDesign, Read
from ..io import atomic_open
from ..stats.lexical import LexicalModel
from ..stats.shares import check_share, logit, top_share_threshold

__all__ = [
    "PROBE_FORMAT",
    "Adaptation",
    "AdaptationError",
    "Calibration",
    "Probe",
    "ProbeFileError",
    "log_lengths",
]

#: The format tag in a probe file's header.
PROBE_FORMAT = "vulnsteer.Probe"


class AdaptationError(ValueError):
    """A probe that cannot adapt to the inputs it was given (too few, or no adaptation fitted); says why."""


class ProbeFileError(ValueError):
    """A probe file that cannot be used; the message names the file and the field."""


def log_lengths(counts: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """``log(max(code tokens, 1))`` as float32: the length a probe's length term reads.

    >>> log_lengths([1, 0]).tolist()
    [0.0, 0.0]
    """
    n = torch.as_tensor(counts, dtype=torch.float64).clamp(min=1.0)
    return n.log().to(torch.float32)


@dataclass(frozen=True)
class Calibration:
    """Platt scaling: ``P(vulnerable) = sigmoid(slope * score + intercept)``, fitted on val scores.

    >>> Calibration(2.0, -1.0).probabilities(torch.tensor([0.5])).tolist()
    [0.5]
    """

    slope: float = 1.0
    intercept: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.slope) and math.isfinite(self.intercept)):
            raise ValueError("a calibration's slope and intercept must be finite")

    def probabilities(self, scores: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(scores.double() * self.slope + self.intercept).float()

    def probability(self, score: float) -> float:
        """P(vulnerable) of one score (a threshold's, say), as :meth:`probabilities` computes it."""
        return float(self.probabilities(torch.tensor([score]))[0])

    def with_prior(self, fitted_share: float, share: float) -> Calibration:
        """This calibration, fitted on data whose vulnerable share was *fitted_share*, for data whose share is
        *share*: the prior's log-odds replace the fitted data's (Bayes' rule; the likelihood ratio a score carries
        is unchanged).

        >>> round(Calibration(1.0, 0.0).with_prior(0.5, 0.2).probability(0.0), 6)
        0.2
        """
        check_share(fitted_share, "fitted_share")
        check_share(share, "share")
        return Calibration(self.slope, self.intercept + logit(share) - logit(fitted_share))

    def to_json(self) -> dict[str, float]:
        return {"slope": self.slope, "intercept": self.intercept}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Calibration:
        return cls(float(doc["slope"]), float(doc["intercept"]))


@dataclass(frozen=True)
class Adaptation:
    """What the adapted probe applies once its centre is re-estimated: a spread and a calibration chosen on val
    scores each centred on their own dataset's mean (no label of the adapted-to data is read), and the share it
    flags.

    *share*: the vulnerable share of the centred scores the calibration was fitted on (the prior its probabilities
    assume). The adapted probe flags that share of the inputs it adapted to, unless a prevalence is stated
    (:meth:`Probe.adapted`). *separation*: their class-mean separation (vulnerable minus secure, in score units),
    with which a stated prevalence corrects the centre. Both None in files written before vulnsteer knew them: such
    a probe adapts with its *threshold* (a fixed offset from the centre, chosen on the same scores), but not to a
    stated prevalence."""

    threshold: float
    spread: float = 1.0
    calibration: Calibration = field(default_factory=Calibration)
    share: float | None = None
    separation: float | None = None

    def __post_init__(self) -> None:
        if self.share is not None and not 0.0 < self.share < 1.0:
            raise ValueError(f"an adaptation's share must be in (0, 1), got {self.share}")
        if self.separation is not None and not math.isfinite(self.separation):
            raise ValueError("an adaptation's separation must be finite")

    def to_json(self) -> dict[str, Any]:
        doc = {"threshold": self.threshold, "spread": self.spread, "calibration": self.calibration.to_json()}
        if self.share is not None and self.separation is not None:
            doc.update(share=self.share, separation=self.separation)
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Adaptation:
        share, separation = doc.get("share"), doc.get("separation")
        return cls(
            float(doc["threshold"]),
            float(doc["spread"]),
            Calibration.from_json(doc["calibration"]),
            None if share is None else float(share),
            None if separation is None else float(separation),
        )


@dataclass(frozen=True, eq=False)
class Probe:
    """A fitted probe (see the module docstring). Immutable: :meth:`adapted` and :meth:`random_like` return new
    probes.

    >>> probe = Probe(ProbeDesign((3,), ("code_mean",)), torch.tensor([1.0, -1.0]), bias=0.5, threshold=0.0)
    >>> probe.scores({(3, "code_mean"): torch.tensor([[2.0, 1.0]])}).tolist(), probe.reads
    ([1.5], ((3, 'code_mean'),))

    Attributes:
        design: what it reads and how it was fitted.
        weight: ``[len(reads) * hidden]``, float32, CPU (the states concatenated in :attr:`ProbeDesign.reads` order).
        bias, threshold: vulnerable iff ``score > threshold`` (chosen on val).
        spread: standard deviation of the val scores (the ``linear`` gate's scale, the ``one_sided`` band's unit).
        length_weight, length_centre: the length term (0 unless the design residualises on length).
        calibration: Platt scaling to a probability, fitted on val.
        adaptation: the adapted probe's threshold and calibration (None: this probe cannot adapt).
        name: what fitted it: its probe kind, or ``random`` (the random-gate control).
        meta: provenance (training data, counts, notes, and for an adapted probe how many inputs it adapted to).
        centred: how many unlabelled inputs its centre was re-estimated from (0: not adapted).
        lexical: the bag-of-tokens term added to the score (None: the design has none).
    """

    design: ProbeDesign
    weight: torch.Tensor
    bias: float
    threshold: float
    spread: float = 1.0
    length_weight: float = 0.0
    length_centre: float = 0.0
    calibration: Calibration = field(default_factory=Calibration)
    adaptation: Adaptation | None = None
    name: str = "logistic"
    meta: Mapping[str, Any] = field(default_factory=dict)
    centred: int = 0
    lexical: LexicalModel | None = None

    def __post_init__(self) -> None:
        if self.weight.ndim != 1:
            raise ValueError(f"probe weight must be 1-D, got shape {tuple(self.weight.shape)}")
        numbers = (self.bias, self.threshold, self.length_weight, self.length_centre)
        if not torch.isfinite(self.weight).all() or not all(map(math.isfinite, numbers)):
            raise ValueError("probe weight, bias, threshold and length term must be finite")
        if self.weight.shape[0] % len(self.design.reads):
            raise ValueError(f"probe weight has {self.weight.shape[0]} entries for {len(self.design.reads)} states")
        object.__setattr__(self, "weight", self.weight.detach().to("cpu", torch.float32).clone())
        object.__setattr__(self, "spread", float(self.spread) if self.spread > 0 else 1.0)
        if (self.lexical is not None) != self.design.reads_code:
            raise ValueError(f"probe {self.design.key}: a bag-of-tokens term exactly when the design has tokens > 0")

    def __eq__(self, other: object) -> bool:
        """The same weights and the same numbers (the provenance in :attr:`meta` aside)."""
        if not isinstance(other, Probe):
            return NotImplemented
        same_lexical = (self.lexical is None) == (other.lexical is None) and (
            self.lexical is None or other.lexical is None or self.lexical.equals(other.lexical)
        )
        return self.header() == other.header() and torch.equal(self.weight, other.weight) and same_lexical

    __hash__ = object.__hash__

    # ---------------------------------------------------------------------------------------------- reading

    @property
    def reads(self) -> tuple[Read, ...]:
        return self.design.reads

    @property
    def layers(self) -> tuple[int, ...]:
        return self.design.layers

    @property
    def poolings(self) -> tuple[str, ...]:
        return self.design.poolings

    @property
    def hidden_size(self) -> int:
        return self.weight.shape[0] // len(self.reads)

    @property
    def key(self) -> str:
        """How settings name their gating probe (the design's key; ``random`` controls are keyed by their caller)."""
        return self.design.key

    @property
    def reads_length(self) -> bool:
        """Whether scores need the code-token counts."""
        return self.length_weight != 0.0

    @property
    def reads_code(self) -> bool:
        """Whether scores need the code's text (a bag-of-tokens term)."""
        return self.lexical is not None

    def scores(
        self,
        states: Mapping[Read, torch.Tensor],
        lengths: torch.Tensor | None = None,
        codes: Sequence[str] | None = None,
    ) -> torch.Tensor:
        """Scores ``[n]`` (float32, CPU) of the states ``{(layer, pooling): [n, hidden]}``; *lengths* are the
        code-token counts (needed when :attr:`reads_length`), *codes* the code's text (when :attr:`reads_code`)."""
        missing = [r for r in self.reads if r not in states]
        if missing:
            raise KeyError(f"the probe reads layer {missing[0][0]} at {missing[0][1]}, which was not given")
        parts = [states[r].detach().to("cpu", torch.float32) for r in self.reads]
        return self.score_matrix(parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1), lengths, codes)

    def score_matrix(
        self, hidden: torch.Tensor, lengths: torch.Tensor | None = None, codes: Sequence[str] | None = None
    ) -> torch.Tensor:
        """Scores of the read states already side by side (``[n, len(reads) * hidden]``, :attr:`reads` order)."""
        out = hidden.detach().to("cpu", torch.float32) @ self.weight + self.bias
        if self.reads_length:
            if lengths is None:
                raise ValueError("this probe residualises on length: give the code-token counts")
            out = out - self.length_weight * (log_lengths(lengths) - self.length_centre)
        if self.lexical is not None:
            if codes is None or not len(codes):
                if len(out):
                    raise ValueError("this probe has a bag-of-tokens term: give the code's text")
                return out
            if len(codes) != len(out):
                raise ValueError(f"{len(codes)} codes for {len(out)} states")
            out = out + torch.as_tensor(self.lexical.scores(codes), dtype=torch.float32)
        return out

    def scores_of(
        self, acts: Any, lengths: torch.Tensor | None = None, codes: Sequence[str] | None = None
    ) -> torch.Tensor:
        """Scores of an :class:`~vulnsteer.lm.activations.Activations` (every read layer and pooling recorded)."""
        states = {(layer, pooling): acts.get(pooling, layer) for layer, pooling in self.reads}
        return self.scores(states, lengths, codes)

    def verdicts(self, scores: torch.Tensor) -> torch.Tensor:
        """1 (vulnerable) where a score is above the threshold, else 0: the probe alone as a detector."""
        return (scores > self.threshold).long()

    def probabilities(self, scores: torch.Tensor) -> torch.Tensor:
        """Calibrated P(vulnerable) of *scores*."""
        return self.calibration.probabilities(scores)

    @property
    def threshold_probability(self) -> float:
        """The threshold as a calibrated probability: a score is ``vulnerable`` exactly where its probability is
        above it (the calibration is increasing)."""
        return self.calibration.probability(self.threshold)

    def fingerprint(self) -> bytes:
        """The weights, and the bag-of-tokens term when there is one, as bytes (for digests of what decides a
        score; the other numbers are in :meth:`header`)."""
        weights = self.weight.numpy().tobytes()
        return weights if self.lexical is None else weights + self.lexical.fingerprint()

    # ---------------------------------------------------------------------------------------------- new probes

    def adapted(self, scores: torch.Tensor, min_count: int = MIN_ADAPT, prevalence: float | None = None) -> Probe:
        """This probe with its centre re-estimated from the unlabelled inputs whose (unadapted) *scores* are given:
        their mean score becomes 0, and the adaptation's spread and calibration apply. Its threshold flags the
        highest share of these inputs (:func:`~vulnsteer.stats.shares.top_share_threshold`): the share of the
        calibration data (:attr:`Adaptation.share`; no label of these inputs is read, so their own share is assumed,
        not found), or a stated *prevalence*. An adaptation without a share (a file written before vulnsteer
        stored it) applies its :attr:`Adaptation.threshold` to the centred scores instead. Refuses
        (:class:`AdaptationError`) fewer than *min_count* inputs, or a probe fitted without an adaptation.

        *prevalence*: the share of these inputs the caller expects to be vulnerable (a prior it states; no label is
        read). Their mean then sits ``(prevalence - share) * separation`` above where a set with the calibration
        data's share would sit (:class:`Adaptation`), so the centre moves by that much; the calibration takes the
        stated prior (:meth:`Calibration.with_prior`); and the threshold flags the highest *prevalence* share of
        these inputs. Refused by an adaptation without a share and separation.

        >>> a = Adaptation(0.0, 1.0, Calibration(1.0, 0.0), share=0.5, separation=2.0)
        >>> probe = Probe(ProbeDesign((3,), ("code_mean",)), torch.tensor([1.0]), 0.0, 0.0, adaptation=a)
        >>> states = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
        >>> assumed = probe.adapted(torch.tensor([0.0, 1.0, 2.0, 3.0]), 2)  # the calibration data's share: half
        >>> assumed.bias, assumed.verdicts(assumed.score_matrix(states)).tolist()
        (-1.5, [0, 0, 1, 1])
        >>> low = probe.adapted(torch.tensor([0.0, 1.0, 2.0, 3.0]), 2, prevalence=0.25)
        >>> low.bias, low.verdicts(low.score_matrix(states)).tolist()
        (-2.0, [0, 0, 0, 1])
        """
        if self.adaptation is None:
            raise AdaptationError("this probe was fitted without an adaptation (no val scores to choose its threshold)")
        n = int(scores.numel())
        if n < max(1, min_count):
            raise AdaptationError(
                f"{n} input{'s' if n != 1 else ''} to adapt to: at least {max(1, min_count)} are needed to "
                "re-estimate the probe's centre (the unadapted probe applies)"
            )
        a = self.adaptation
        centre = float(scores.double().mean())
        threshold, calibration, meta = a.threshold, a.calibration, self.meta
        if prevalence is not None:
            check_share(prevalence, "a prevalence")
            if a.share is None or a.separation is None:
                raise AdaptationError(
                    "this probe's adaptation has no share and separation (written by an older vulnsteer): it adapts "
                    "to a stated prevalence once refitted"
                )
            centre -= (prevalence - a.share) * a.separation
            calibration = calibration.with_prior(a.share, prevalence)
            meta = {**self.meta, "prevalence": prevalence}
        flagged = prevalence if prevalence is not None else a.share
        if flagged is not None:
            threshold = top_share_threshold((scores.double() - centre).numpy(), flagged)
        return dataclasses.replace(
            self,
            bias=self.bias - centre,
            threshold=threshold,
            spread=a.spread,
            calibration=calibration,
            adaptation=None,
            meta=meta,
            centred=n,
        )

    def random_like(self, seed: int) -> Probe:
        """The random-gate control: a random direction of the same norm over the same states, no length term (the
        caller chooses its threshold, spread and calibration on val: :func:`~vulnsteer.detection.probe.rethreshold`)."""
        gen = torch.Generator().manual_seed(seed)
        rand = torch.randn(self.weight.shape[0], generator=gen)
        weight = rand / rand.norm() * self.weight.norm()
        design = dataclasses.replace(self.design, tokens=0.0)
        return Probe(design, weight, 0.0, 0.0, name="random", meta={"seed": seed})

    # ---------------------------------------------------------------------------------------------- files

    def header(self) -> dict[str, Any]:
        """Every number but the weight (what ``detector.json`` prints and a probe file's header holds)."""
        return {
            "name": self.name,
            "design": self.design.to_json(),
            "bias": self.bias,
            "threshold": self.threshold,
            "spread": self.spread,
            "length_weight": self.length_weight,
            "length_centre": self.length_centre,
            "calibration": self.calibration.to_json(),
            "adaptation": None if self.adaptation is None else self.adaptation.to_json(),
            "centred": self.centred,
            **({} if self.lexical is None else {"lexical": self.lexical.summary()}),
        }

    def to_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """Tensors and string metadata for a safetensors file."""
        meta = {"format": PROBE_FORMAT, "probe": json.dumps(self.header()),
                "meta": json.dumps(dict(self.meta), default=str)}  # fmt: skip
        # the single-state fields older readers (and `detector show`) read
        if len(self.reads) == 1:
            meta.update(layer=str(self.layers[0]), pooling=self.poolings[0])
        tensors = {"weight": self.weight.contiguous()}
        if self.lexical is not None:
            arrays, meta["lexical"] = self.lexical.to_arrays()
            tensors.update({f"lexical.{k}": torch.from_numpy(v.copy()) for k, v in arrays.items()})
        return tensors, meta

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, str]) -> Probe:
        """A probe from its file's tensors and header; reads the single-state probes of earlier versions too
        (``layer``, ``pooling``, ``bias``, ``threshold``, ``spread``, ``name`` in the header)."""
        weight = tensors["weight"]
        extra = json.loads(meta.get("meta", "{}"))
        if "probe" not in meta:  # an earlier version's single-state probe
            name = meta.get("name", "logistic")
            design = ProbeDesign((int(meta["layer"]),), (meta["pooling"],), "logistic" if name == "random" else name)
            return cls(design, weight, float(meta["bias"]), float(meta["threshold"]),
                       float(meta.get("spread", "1.0")), name=name, meta=extra)  # fmt: skip
        doc = json.loads(meta["probe"])
        adaptation = doc.get("adaptation")
        return cls(
            ProbeDesign.from_json(doc["design"]),
            weight,
            float(doc["bias"]),
            float(doc["threshold"]),
            float(doc["spread"]),
            float(doc.get("length_weight", 0.0)),
            float(doc.get("length_centre", 0.0)),
            Calibration.from_json(doc["calibration"]),
            None if adaptation is None else Adaptation.from_json(adaptation),
            str(doc.get("name", "logistic")),
            extra,
            int(doc.get("centred", 0)),
            None
            if "lexical" not in meta
            else LexicalModel.from_arrays(
                {k.removeprefix("lexical."): v.numpy() for k, v in tensors.items() if k.startswith("lexical.")},
                meta["lexical"],
            ),
        )

    def save(self, path: str | Path) -> Path:
        """Write the probe as one safetensors file (atomically)."""
        from safetensors.torch import save

        tensors, meta = self.to_tensors()
        with atomic_open(Path(path), "wb") as handle:
            handle.write(save(tensors, metadata=meta))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> Probe:
        """Read a probe file; a damaged or foreign file is a :class:`ProbeFileError` naming it."""
        from safetensors import safe_open

        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"probe file not found: {file}")
        try:
            with safe_open(str(file), framework="pt") as handle:
                return cls.from_tensors({k: handle.get_tensor(k) for k in handle.keys()}, handle.metadata() or {})  # noqa: SIM118
        except KeyError as exc:
            raise ProbeFileError(f"{file}: missing field {exc.args[0]!r}") from None
        except Exception as exc:  # safetensors raises its own error types for a damaged file
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ProbeFileError(f"{file}: not a usable probe ({reason})") from None
