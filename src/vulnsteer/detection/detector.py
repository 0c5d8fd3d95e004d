"""A saved detector: the conditional-steering setting chosen on validation, ready to apply to new code.

A detector directory holds

- ``detector.json``: the setting (behaviour vector key, steered layers, positions, unit, strength), the gate (kind,
  band), the probe's condition layer, pooling, threshold and spread, the prompt template, the model's identity
  (id, architecture fingerprint, weights digest, dtype), the training data (sources, hashes, counts), the
  validation metrics it was chosen on, and the sign convention;
- ``probe.safetensors``: the probe's weight (its bias and threshold are in the header too);
- ``vector.safetensors``: the behaviour vector (a :class:`~vulnsteer.steering.vectors.SteeringVector`).

Nothing is pickled. The folder is written whole or not at all (into a temporary folder, then renamed), and
``detector.json`` holds a digest of each tensor file: loading refuses a folder whose probe or vector file was
replaced. Loading refuses a model of another architecture or other weights of the same dtype (as vectors do)
unless mismatches are allowed. :func:`caveats` says what a detector's own record shows against trusting it (chosen
on a handful of val samples, no better than the unsteered model on val).

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

from ..config.defaults import DEFAULT_BATCH_SIZE, DEFAULT_MAX_NEW_TOKENS
from ..config.design import ProbeDesign
from ..data.sample import Sample
from ..io import atomic_open, write_folder, write_json
from ..lm.model import LoadedModel
from ..lm.prompts import PromptTemplate, template_from_dict
from ..steering.gate import Gate
from ..steering.hooks import SIGN_CONVENTION, PositionMode, SteeringSpec, StrengthUnit
from ..steering.probe import Probe
from ..steering.vectors import SteeringVector, VectorMismatchError
from .engine import detect_variants_modes
from .records import DetectionRecord

__all__ = ["DETECTOR_FORMAT", "MIN_VAL_SAMPLES", "SavedDetector", "SavedDetectorError", "caveats"]

DETECTOR_FORMAT = "vulnsteer.Detector"  # (the format tag written into detector.json)
DETECTOR_VERSION = 1
#: A detector chosen on fewer val samples than this is said to rest on too little data.
MIN_VAL_SAMPLES = 20
#: The tensor files of a detector folder (each one's digest is in ``detector.json``'s field ``files``).
PROBE_FILE = "probe.safetensors"
VECTOR_FILE = "vector.safetensors"


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
    probe: Probe
    gate: str
    strength: float
    layers: tuple[int, ...]
    positions: str
    unit: str
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
        h.update(self.probe.fingerprint())
        for layer in self.vector.layers:
            h.update(self.vector.direction(layer).numpy().tobytes())
        return h.hexdigest()[:16]

    def detect(
        self,
        lm: LoadedModel,
        samples: Sequence[Sample],
        *,
        mode: str = "generation",
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
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
            "probe": self.probe.header(),
            "template": self.template.to_dict(),
            **dict(self.info),
        }

    def save(self, folder: str | Path) -> Path:
        """Write ``detector.json``, ``probe.safetensors`` and ``vector.safetensors`` as *folder*, whole or not at
        all: into a temporary folder beside it, renamed into place once complete (a kill leaves no half-written
        detector; an earlier detector there is replaced)."""

        def fill(staging: Path) -> None:
            tensors, meta = self.probe.to_tensors()
            with atomic_open(staging / PROBE_FILE, "wb") as handle:
                handle.write(save(tensors, metadata=meta))
            self.vector.save(staging / VECTOR_FILE)
            files = {PROBE_FILE: _probe_digest(self.probe), VECTOR_FILE: _vector_digest(self.vector)}
            write_json(staging / "detector.json", {**self._document(), "digest": self.digest, "files": files})

        return write_folder(folder, fill)

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
            inside = root / "detector"
            hint = f"; did you mean {inside} (a run's detector)?" if (inside / "detector.json").is_file() else ""
            raise SavedDetectorError(f"{root}: not a detector folder (no detector.json){hint}")
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
                probe = Probe.from_tensors({k: handle.get_tensor(k) for k in handle.keys()}, handle.metadata() or {})  # noqa: SIM118
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
        if _design_of(probe_doc) != probe.design:
            raise SavedDetectorError(f"{probe_path}: does not match detector.json's field 'probe'")
        for key in ("bias", "threshold", "spread"):  # what `detector show` prints must be what is applied
            if key in probe_doc and not _same_number(probe_doc[key], getattr(probe, key)):
                raise SavedDetectorError(
                    f"{path}: field 'probe.{key}' ({probe_doc[key]!r}) differs from {probe_path} "
                    f"({getattr(probe, key)!r}); the folder was edited by hand"
                )
        recorded = doc.get("files")
        if isinstance(recorded, dict):  # (folders saved before the digests were recorded have none)
            actual = {PROBE_FILE: _probe_digest(probe), VECTOR_FILE: _vector_digest(vector)}
            for name, digest in actual.items():
                if name in recorded and recorded[name] != digest:
                    raise SavedDetectorError(
                        f"{root / name}: is not the file this detector was saved with (its digest differs from "
                        f"detector.json's field 'files'); it was replaced or edited: refit the detector"
                    )
        if lm is not None:
            detector.check_model(lm, str(root), allow_mismatch=allow_model_mismatch)
        try:
            detector.spec()  # validates the setting against the vector (layers, unit, gate layer)
        except ValueError as exc:
            raise SavedDetectorError(f"{path}: field 'setting': {exc}") from None
        return detector

    def check_model(self, lm: LoadedModel, where: str, *, allow_mismatch: bool = False) -> list[str]:
        """Refuse a model of another hidden size and (unless *allow_mismatch*: then they are returned as warnings)
        another architecture or other weights of it in the same dtype; *where* names the detector's folder."""
        if self.probe.hidden_size != lm.hidden_size:
            raise VectorMismatchError(
                f"{where}: the probe reads hidden size {self.probe.hidden_size}, the model has {lm.hidden_size}"
            )
        return self.vector.check_model(lm.identity, lm.hidden_size, where, allow_mismatch=allow_mismatch)


def caveats(document: Mapping[str, Any]) -> list[str]:
    """What a detector's own record (its ``detector.json`` *document*) shows against trusting it: chosen on fewer
    than :data:`MIN_VAL_SAMPLES` val samples, or no better on val than the unsteered model (or than chance).

    >>> for line in caveats({"training": {"n_val": 2},
    ...                      "validation": {"balanced_accuracy": 0.5, "baseline_balanced_accuracy": 0.5}}):
    ...     print(line)
    chosen on 2 val samples (fewer than 20): its val numbers say almost nothing
    its val balanced accuracy 0.500 is not above the unsteered baseline (0.500): it did no better than the plain model
    """
    out = []
    training, validation = document.get("training") or {}, document.get("validation") or {}
    n_val = training.get("n_val")
    if isinstance(n_val, int) and n_val < MIN_VAL_SAMPLES:
        out.append(f"chosen on {n_val} val samples (fewer than {MIN_VAL_SAMPLES}): its val numbers say almost nothing")
    ba, base = validation.get("balanced_accuracy"), validation.get("baseline_balanced_accuracy")
    if isinstance(ba, (int, float)) and isinstance(base, (int, float)) and ba <= base:
        out.append(
            f"its val balanced accuracy {ba:.3f} is not above the unsteered baseline ({base:.3f}): it did no "
            "better than the plain model"
        )
    elif isinstance(ba, (int, float)) and ba <= 0.5:
        out.append(f"its val balanced accuracy {ba:.3f} is no better than chance (0.5)")
    return out


def _probe_digest(probe: Probe) -> str:
    """The probe file's weights (and its bag-of-tokens term, when it has one)."""
    return hashlib.sha256(probe.fingerprint()).hexdigest()[:16]


def _vector_digest(vector: SteeringVector) -> str:
    h = hashlib.sha256()
    for layer in vector.layers:
        h.update(f"{layer}\0".encode())
        h.update(vector.direction(layer).numpy().tobytes())
    return h.hexdigest()[:16]


def _design_of(doc: Mapping[str, Any]) -> ProbeDesign | None:
    """The probe design ``detector.json`` names (an earlier version's single-state probe: its layer and pooling)."""
    try:
        if "design" in doc:
            return ProbeDesign.from_json(doc["design"])
        kind = str(doc.get("name", "logistic"))
        return ProbeDesign((int(doc["layer"]),), (str(doc["pooling"]),), "logistic" if kind == "random" else kind)
    except (KeyError, TypeError, ValueError):
        return None


def _same_number(written: Any, value: float) -> bool:
    """*written* (from JSON) is the number *value* (to float precision)."""
    try:
        a, b = float(written), float(value)
    except (TypeError, ValueError):
        return False
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
