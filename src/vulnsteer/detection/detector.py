"""A saved detector: the conditional-steering setting chosen on validation, ready to apply to new code.

A detector directory holds

- ``detector.json``: the setting (behaviour vector key, steered layers, positions, unit, strength), the gate (kind,
  band), the probe's condition layer, pooling, threshold and spread, the prompt template, the model's identity
  (id, architecture fingerprint, weights digest, dtype), the training data (sources, hashes, counts), the
  validation metrics it was chosen on, and the sign convention;
- ``probe.safetensors``: the probe's weight (its bias and threshold are in the header too);
- ``vector.safetensors``: the behaviour vector (a :class:`~vulnsteer.steering.vectors.SteeringVector`).

Nothing is pickled. Loading refuses a model of another architecture or other weights of the same dtype (as
vectors do) unless mismatches are allowed.

>>> detector = SavedDetector.load("runs/demo/detector", lm)  # doctest: +SKIP
>>> records = detector.detect(lm, samples, mode="generation")  # doctest: +SKIP
>>> records[0].verdict, records[0].gate_score, records[0].text  # doctest: +SKIP
('vulnerable', 1.73, 'Answer: vulnerable\\nWeakness: CWE-89 (SQL Injection)')
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from safetensors import safe_open
from safetensors.torch import save

from ..data.sample import Sample
from ..io import atomic_open, write_json
from ..lm.model import LoadedModel
from ..lm.prompts import PromptTemplate, template_from_dict
from ..steering.gate import Gate, LinearProbe
from ..steering.hooks import SIGN_CONVENTION, PositionMode, SteeringSpec, StrengthUnit
from ..steering.vectors import SteeringVector, VectorMismatchError
from .engine import detect_variants_modes
from .records import DetectionRecord

__all__ = ["DETECTOR_FORMAT", "SavedDetector", "SavedDetectorError"]

DETECTOR_FORMAT = "vulnsteer.Detector"  # (the format tag written into detector.json)
DETECTOR_VERSION = 1


class SavedDetectorError(ValueError):
    """A detector directory that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class SavedDetector:
    """A probe-gated steering setting with its provenance (see the module docstring).

    >>> detector = SavedDetector.load("runs/demo/detector", lm)  # doctest: +SKIP
    >>> records = detector.detect(lm, samples, mode="logit")  # doctest: +SKIP
    >>> records[0].verdict, records[0].score, records[0].push  # doctest: +SKIP
    ('vulnerable', 0.93, 1.0)
    """

    vector: SteeringVector
    probe: LinearProbe
    gate: str
    strength: float
    layers: tuple[int, ...]
    positions: str = "last"
    unit: str = "sigma"
    band: float = 0.5
    template: PromptTemplate = field(default_factory=PromptTemplate)
    info: Mapping[str, Any] = field(default_factory=dict)

    def spec(self) -> SteeringSpec:
        """The gated steering spec (resolved per input by the detection engine)."""
        return SteeringSpec(
            self.vector,
            self.strength,
            layers=self.layers,
            positions=cast(PositionMode, self.positions),
            unit=cast(StrengthUnit, self.unit),
            gate=Gate(self.gate, self.probe, self.band),
        )

    @property
    def digest(self) -> str:
        """A short hash of everything that decides a verdict (for caches keyed by detector)."""
        h = hashlib.sha256()
        decisive = {k: v for k, v in self._document().items() if k in ("setting", "probe", "template", "format")}
        h.update(json.dumps(decisive, sort_keys=True, default=str).encode())
        for tensor in (self.probe.weight, *(self.vector.direction(layer) for layer in self.vector.layers)):
            h.update(tensor.numpy().tobytes())
        return h.hexdigest()[:16]

    def detect(
        self,
        lm: LoadedModel,
        samples: Sequence[Sample],
        *,
        mode: str = "generation",
        batch_size: int = 8,
        max_new_tokens: int = 20,
        progress: bool = True,
    ) -> list[DetectionRecord]:
        """The steered model's verdict on *samples* (each record has the probe's score and the push it got)."""
        found = detect_variants_modes(
            lm,
            samples,
            {"detector": [self.spec()]},
            modes=(mode,),
            template=self.template,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            progress=progress,
            desc=f"detector ({mode})",
        )
        return found[mode]["detector"]

    def _document(self) -> dict[str, Any]:
        return {
            "format": DETECTOR_FORMAT,
            "format_version": DETECTOR_VERSION,
            "sign_convention": SIGN_CONVENTION,
            "setting": {
                "gate": self.gate,
                "band": self.band,
                "strength": self.strength,
                "unit": self.unit,
                "layers": list(self.layers),
                "positions": self.positions,
            },
            "probe": {
                "name": self.probe.name,
                "layer": self.probe.layer,
                "pooling": self.probe.pooling,
                "bias": self.probe.bias,
                "threshold": self.probe.threshold,
                "spread": self.probe.spread,
            },
            "template": self.template.to_dict(),
            **dict(self.info),
        }

    def save(self, folder: str | Path) -> Path:
        """Write ``detector.json``, ``probe.safetensors`` and ``vector.safetensors`` into *folder* (atomically)."""
        root = Path(folder)
        tensors, meta = self.probe.to_tensors()
        with atomic_open(root / "probe.safetensors", "wb") as handle:
            handle.write(save(tensors, metadata=meta))
        self.vector.save(root / "vector.safetensors")
        write_json(root / "detector.json", {**self._document(), "digest": self.digest})
        return root

    @classmethod
    def load(
        cls, folder: str | Path, lm: LoadedModel | None = None, *, allow_model_mismatch: bool = False
    ) -> SavedDetector:
        """Read a detector directory; with *lm*, refuse another model's detector (unless mismatches are allowed)."""
        root = Path(folder)
        path = root / "detector.json"
        if not root.is_dir():
            raise FileNotFoundError(f"detector folder not found: {root}")
        if not path.is_file():
            raise SavedDetectorError(f"{root}: not a detector folder (no detector.json)")
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise SavedDetectorError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(doc, dict) or doc.get("format") != DETECTOR_FORMAT:
            raise SavedDetectorError(f"{path}: field 'format' is not {DETECTOR_FORMAT!r}")
        missing = [key for key in ("setting", "probe", "template") if key not in doc]
        if missing:
            raise SavedDetectorError(f"{path}: missing field {missing[0]!r}")
        probe_path = root / "probe.safetensors"
        try:
            with safe_open(str(probe_path), framework="pt") as handle:
                probe = LinearProbe.from_tensors({"weight": handle.get_tensor("weight")}, handle.metadata() or {})
        except Exception as exc:  # safetensors raises its own error types for a damaged file
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise SavedDetectorError(f"{probe_path}: not a usable probe ({reason})") from None
        try:
            setting, probe_doc = doc["setting"], doc["probe"]
            template = template_from_dict(doc["template"])
            vector = SteeringVector.load(root / "vector.safetensors")
            detector = cls(
                vector,
                probe,
                str(setting["gate"]),
                float(setting["strength"]),
                tuple(int(x) for x in setting["layers"]),
                str(setting["positions"]),
                str(setting["unit"]),
                float(setting.get("band", 0.5)),
                template,
                {k: v for k, v in doc.items() if k in ("model", "training", "validation", "created")},
            )
        except KeyError as exc:
            raise SavedDetectorError(f"{path}: missing field {exc.args[0]!r}") from None
        except (OSError, TypeError, ValueError) as exc:
            raise SavedDetectorError(f"{root}: {exc}") from None
        if (probe.layer, probe.pooling) != (int(probe_doc["layer"]), str(probe_doc["pooling"])):
            raise SavedDetectorError(f"{probe_path}: does not match detector.json's field 'probe'")
        for key in ("bias", "threshold", "spread"):  # what `detector show` prints must be what is applied
            if key in probe_doc and not _same_number(probe_doc[key], getattr(probe, key)):
                raise SavedDetectorError(
                    f"{path}: field 'probe.{key}' ({probe_doc[key]!r}) differs from {probe_path} "
                    f"({getattr(probe, key)!r}); the folder was edited by hand"
                )
        if lm is not None and not allow_model_mismatch:
            detector.check_model(lm, str(root))
        try:
            detector.spec()  # validates the setting against the vector (layers, unit, gate layer)
        except ValueError as exc:
            raise SavedDetectorError(f"{path}: field 'setting': {exc}") from None
        return detector

    def check_model(self, lm: LoadedModel, where: str) -> None:
        """Refuse a model of another hidden size, architecture, or other weights in the same dtype."""
        try:
            self.vector.check_compatible(lm.hidden_size, lm.fingerprint, "model", weights=lm.weights_identity)
        except VectorMismatchError as exc:
            raise VectorMismatchError(f"{where}: {exc}") from None
        if self.probe.weight.shape[0] != lm.hidden_size:
            raise VectorMismatchError(
                f"{where}: the probe reads hidden size {self.probe.weight.shape[0]}, the model has {lm.hidden_size}"
            )


def _same_number(written: Any, value: float) -> bool:
    """*written* (from JSON) is the number *value* (to float precision)."""
    try:
        a, b = float(written), float(value)
    except (TypeError, ValueError):
        return False
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
