"""A probe detector: a probe read alone (no steered generation), its scores calibrated probabilities, with the
provenance that says where it was fitted and how well it transferred; the **shipped detector** is one of them.

A probe detector folder holds

- ``probe.safetensors``: the :class:`~vulnsteer.steering.probe.Probe` (its weights, and in its header the bias, the
  threshold, the Platt calibration to a probability and the adaptation: see below);
- ``detector.json``: the format tag, the model identity it was fitted with (a mismatched model is refused by
  :func:`~vulnsteer.lm.identity.check_same_model`), the prompt template, the SHA-256 of ``probe.safetensors``
  (loading refuses a replaced or edited file), the fewest inputs it adapts to, and the provenance (design, datasets
  with their hashes and licences, the leave-one-dataset-out table with the length-only control, date, version).

Its score on a function is ``P(vulnerable)`` from the probe's calibration, its verdict ``vulnerable`` iff the score
is above the threshold. **Adapted** (:meth:`ProbeDetector.adapted`): the probe's centre re-estimated from the
unlabelled inputs being scored (their mean score), with the adaptation's own calibration and threshold; no label is
read, and below :attr:`ProbeDetector.min_adapt` inputs it refuses (:class:`~vulnsteer.steering.probe.
AdaptationError`).

The shipped detector (:data:`SHIPPED_DETECTOR`, inside the package) is fitted by ``vulnsteer detector fit-default
RUN`` from a finished transfer run (:mod:`vulnsteer.experiment.transfer.ship`).

>>> detector = ProbeDetector.load(SHIPPED_DETECTOR, lm)  # doctest: +SKIP
>>> raw = detector.raw_scores(lm, samples)  # doctest: +SKIP
>>> detector.probe.probabilities(raw)[:2].tolist(), detector.probe.verdicts(raw)[:2].tolist()  # doctest: +SKIP
([0.71, 0.33], [1, 0])
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config.defaults import DEFAULT_BATCH_SIZE, MIN_ADAPT
from ..data.sample import Sample
from ..io import write_folder, write_json
from ..lm.identity import ModelIdentity, check_same_model
from ..lm.prompts import DEFAULT_TEMPLATE, PromptTemplate, template_from_dict

if TYPE_CHECKING:  # (torch is imported when a detector is loaded: `is_probe_detector` and the paths need none)
    import torch

    from ..lm.model import LoadedModel
    from ..steering.probe import Probe

__all__ = [
    "PROBE_DETECTOR_FORMAT",
    "SHIPPED_DETECTOR",
    "ProbeDetector",
    "ProbeDetectorError",
    "is_probe_detector",
    "reads_code",
]

#: The format tag of a probe detector's ``detector.json``.
PROBE_DETECTOR_FORMAT = "vulnsteer.ProbeDetector"
PROBE_DETECTOR_VERSION = 1
#: The shipped detector: inside the package (``vulnsteer detector fit-default RUN`` writes it).
SHIPPED_DETECTOR = Path(__file__).resolve().parent.parent / "detectors" / "default"
#: A probe detector's files.
DOCUMENT = "detector.json"
PROBE_FILE = "probe.safetensors"


class ProbeDetectorError(ValueError):
    """A probe detector folder that cannot be used; the message names the file and the field."""


def is_probe_detector(folder: str | Path) -> bool:
    """Whether *folder* holds a probe detector (not a steering detector).

    >>> is_probe_detector("/nonexistent")
    False
    """
    path = Path(folder) / DOCUMENT
    if not path.is_file():
        return False
    try:
        return bool(json.loads(path.read_text(encoding="utf-8")).get("format") == PROBE_DETECTOR_FORMAT)
    except (ValueError, AttributeError):
        return False


def reads_code(folder: str | Path) -> bool:
    """Whether the probe detector in *folder* adds a bag-of-tokens term (reads the code's text besides its states);
    False for anything else.

    >>> reads_code("/nonexistent")
    False
    """
    try:
        doc = json.loads((Path(folder) / DOCUMENT).read_text(encoding="utf-8"))
        return bool(float(doc["probe"]["design"].get("tokens", 0.0)) > 0)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class ProbeDetector:
    """A calibrated probe with its model and provenance (see the module docstring).

    >>> import torch
    >>> from vulnsteer.config.design import ProbeDesign
    >>> from vulnsteer.steering.probe import Calibration, Probe
    >>> probe = Probe(ProbeDesign((3,), ("code_mean",)), torch.tensor([1.0, 0.0]), 0.0, 0.0,
    ...               calibration=Calibration(2.0, 0.0))
    >>> d = ProbeDetector(probe, ModelIdentity("tiny", "f00d"))
    >>> d.probe.probabilities(torch.tensor([0.0])).tolist(), d.min_adapt
    ([0.5], 20)
    """

    probe: Probe
    model: ModelIdentity
    template: PromptTemplate = DEFAULT_TEMPLATE
    min_adapt: int = MIN_ADAPT
    info: Mapping[str, Any] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        """A short hash of everything that decides a score (for caches keyed by detector)."""
        h = hashlib.sha256()
        decisive = {"probe": self.probe.header(), "template": self.template.to_dict(), "model": self.model.digest()}
        h.update(json.dumps(decisive, sort_keys=True, default=str).encode())
        h.update(self.probe.fingerprint())
        return h.hexdigest()[:16]

    def check_model(self, lm: LoadedModel, where: str, *, allow_mismatch: bool = False) -> list[str]:
        """Refuse a model of another hidden size, and (unless *allow_mismatch*: then they are returned as warnings)
        another architecture or other weights of it; *where* names the detector's folder."""
        if self.probe.hidden_size != lm.hidden_size:
            raise ProbeDetectorError(
                f"{where}: the probe reads hidden size {self.probe.hidden_size}, the model has {lm.hidden_size}"
            )
        return check_same_model(self.model, lm.identity, where, allow=allow_mismatch)

    def raw_scores(
        self,
        lm: LoadedModel,
        samples: Sequence[Sample],
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        progress: bool = True,
        buckets: bool = True,
    ) -> torch.Tensor:
        """The probe's (uncalibrated) scores ``[n]`` on *samples*: the states it reads, under its template (batched
        in length buckets unless ``buckets=False``)."""
        import torch

        from ..lm.activations import extract_activations

        if not samples:
            return torch.zeros(0)
        acts = extract_activations(
            lm,
            samples,
            sorted(set(self.probe.layers)),
            sorted(set(self.probe.poolings)),
            batch_size=batch_size,
            template=self.template,
            progress=progress,
            desc="probe detector",
            buckets=buckets,
        )
        return self.probe.scores_of(acts, acts.code_tokens, [s.code for s in samples])

    def threshold_probability(self) -> float:
        """The threshold as a calibrated probability (a score above it is ``vulnerable``) as fitted (adapted, the
        threshold depends on the inputs: :meth:`adapted`)."""
        return self.probe.threshold_probability

    def fitted_on(self, source: str) -> str | None:
        """The name of the training dataset *source* (a dataset path, or ``builtin``) looks like, by its path or
        its folder's name (``detector.json``'s ``datasets``), else None: measured there, a number is not one of
        transfer.

        >>> import torch
        >>> from vulnsteer.config.design import ProbeDesign
        >>> from vulnsteer.steering.probe import Probe
        >>> probe = Probe(ProbeDesign((3,), ("code_mean",)), torch.tensor([1.0, 0.0]), 0.0, 0.0)
        >>> d = ProbeDetector(probe, ModelIdentity("tiny", "f00d"),
        ...                   info={"datasets": [{"name": "sven", "source": "/data/sven"}]})
        >>> d.fitted_on("/elsewhere/sven/"), d.fitted_on("/data/sven"), d.fitted_on("my-pairs")
        ('sven', 'sven', None)
        """
        given = Path(source).expanduser()
        for entry in self.info.get("datasets", []):
            name, path = str(entry.get("name", "")), str(entry.get("source", ""))
            same_path = path == source or (
                given.exists() and Path(path).exists() and given.resolve() == Path(path).resolve()
            )
            if same_path or given.name == name:
                return name
        return None

    def adapted(self, raw: torch.Tensor, prevalence: float | None = None) -> Probe:
        """The probe adapted to the unlabelled inputs whose raw scores are *raw* (refuses fewer than
        :attr:`min_adapt`), to a stated *prevalence* if given (:meth:`~vulnsteer.steering.probe.Probe.adapted`)."""
        return self.probe.adapted(raw, self.min_adapt, prevalence)

    # ---------------------------------------------------------------------------------------------- files

    def document(self) -> dict[str, Any]:
        return {
            "format": PROBE_DETECTOR_FORMAT,
            "format_version": PROBE_DETECTOR_VERSION,
            "model": self.model.to_dict(),
            "template": self.template.to_dict(),
            "min_adapt": self.min_adapt,
            "probe": self.probe.header(),
            **dict(self.info),
        }

    def save(self, folder: str | Path) -> Path:
        """Write ``probe.safetensors`` and ``detector.json`` (with the probe file's SHA-256) as *folder*, whole or
        not at all (into a temporary folder beside it, then renamed; an earlier one there is replaced)."""

        def fill(staging: Path) -> None:
            self.probe.save(staging / PROBE_FILE)
            write_json(staging / DOCUMENT, {**self.document(), "files": {PROBE_FILE: _sha256(staging / PROBE_FILE)}})

        return write_folder(folder, fill)

    @classmethod
    def load(
        cls, folder: str | Path, lm: LoadedModel | None = None, *, allow_model_mismatch: bool = False
    ) -> ProbeDetector:
        """Read a probe detector folder, its probe file verified by its digest; with *lm*, refuse another model
        (unless mismatches are allowed)."""
        root = Path(folder)
        path = root / DOCUMENT
        if not path.is_file():
            raise ProbeDetectorError(f"{root}: not a detector folder (no {DOCUMENT})")
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ProbeDetectorError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(doc, dict) or doc.get("format") != PROBE_DETECTOR_FORMAT:
            raise ProbeDetectorError(f"{path}: field 'format' is not {PROBE_DETECTOR_FORMAT!r}")
        recorded = (doc.get("files") or {}).get(PROBE_FILE)
        probe_path = root / PROBE_FILE
        if not probe_path.is_file():
            raise ProbeDetectorError(f"{probe_path}: missing")
        if recorded != _sha256(probe_path):
            raise ProbeDetectorError(
                f"{probe_path}: is not the file this detector was saved with (its SHA-256 differs from {DOCUMENT}'s "
                "field 'files'); it was replaced or edited: refit the detector"
            )
        from ..steering.probe import Probe, ProbeFileError

        try:
            probe = Probe.load(probe_path)
        except ProbeFileError as exc:
            raise ProbeDetectorError(str(exc)) from None
        try:
            model = ModelIdentity.from_dict(doc["model"], str(path))
            template = template_from_dict(doc["template"])
            min_adapt = int(doc.get("min_adapt", MIN_ADAPT))
        except KeyError as exc:
            raise ProbeDetectorError(f"{path}: missing field {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise ProbeDetectorError(f"{path}: {exc}") from None
        own = {"format", "format_version", "model", "template", "min_adapt", "probe", "files"}
        detector = cls(probe, model, template, min_adapt, {k: v for k, v in doc.items() if k not in own})
        if lm is not None:
            detector.check_model(lm, str(root), allow_mismatch=allow_model_mismatch)
        return detector
