"""The plain or steered model, or a saved detector, as a :class:`~vulnsteer.scan.scorer.Scorer`.

The score is P(vulnerable) from the answer logits (:func:`vulnsteer.detection.engine.detect_variants_modes`, logit
mode); with ``explain`` the same first forward step also feeds greedy generation, whose text is the explanation
and whose parsed verdict and named CWE are reported. Steering (``--vector V --strength S``) applies one
:class:`~vulnsteer.steering.hooks.SteeringSpec` to every function; a saved detector (``--detector DIR``,
:class:`~vulnsteer.detection.detector.SavedDetector`) applies its probe-gated spec with its own prompt template, and
each score then carries the probe's score and the push the gate gave.

The model is loaded on the first :meth:`ModelScorer.score` call: a rescan whose functions are all cached never
loads it. The digest covers the model (fingerprint, weights digest, dtype), the vector file's SHA-256 and the
steering settings (or the detector folder's files), the prompt template, the token budget, the threshold and,
with ``explain``, the generation length; see :mod:`vulnsteer.scan.identity` for how the model's identity is known
without loading it.

>>> scorer = ModelScorer(loaded_model, steering=SteeringOptions(Path("cwe-89.safetensors"), 4.0))  # doctest: +SKIP
>>> scorer.score(units)[0].score  # doctest: +SKIP
0.83
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config.defaults import DEFAULT_BATCH_SIZE, DEFAULT_MAX_CODE_TOKENS, DEFAULT_MAX_NEW_TOKENS
from ..cwe import UnknownCWEError, normalize_cwe
from ..data.sample import Sample
from ..data.truncate import truncate_sample
from ..lm.paths import local_model_location
from ..lm.prompts import DEFAULT_TEMPLATE, PromptTemplate
from .identity import ModelIdentity, identity_of, location_key, recall_identity, remember_identity
from .scorer import FunctionScore, StaleDigestError, scorer_digest

__all__ = ["SCORE_FORMAT", "DetectorOptions", "ModelScorer", "ModelSource", "SteeringOptions"]

log = logging.getLogger(__name__)

#: Bumped when what a score means changes (a scorer's digest includes it).
SCORE_FORMAT = 1


@dataclass(frozen=True)
class ModelSource:
    """How to load the model: the ``[model]`` keys (``--model``, ``--device``, ``--dtype``, ``--device-map``,
    ``--trust-remote-code``, ``--layers-path``); ``spec=None`` is the embedded default.

    >>> ModelSource("Qwen/Qwen2.5-1.5B-Instruct", device="cuda").dtype is None
    True
    """

    spec: str | None = None
    device: str | None = None
    dtype: str | None = None
    device_map: str | None = None
    trust_remote_code: bool = False
    layers_path: str | None = None


@dataclass(frozen=True)
class SteeringOptions:
    """A steering vector file and how to apply it (see :class:`~vulnsteer.steering.hooks.SteeringSpec`).

    >>> SteeringOptions(Path("vecs/cwe-89.safetensors"), 4.0, positions="last").unit
    'raw'
    """

    vector: Path
    strength: float
    layers: tuple[int, ...] = ()
    positions: str = "all"
    unit: str = "raw"
    allow_model_mismatch: bool = False


@dataclass(frozen=True)
class DetectorOptions:
    """A saved detector folder (``detector.json``, ``probe.safetensors``, ``vector.safetensors``).

    >>> DetectorOptions(Path("runs/demo/detector")).allow_model_mismatch
    False
    """

    folder: Path
    allow_model_mismatch: bool = False


#: The files of a detector folder that decide its scores (hashed into the scorer's digest).
DETECTOR_FILES = ("detector.json", "probe.safetensors", "vector.safetensors")


def _detector_sha256(folder: Path) -> str:
    if not folder.is_dir():
        raise FileNotFoundError(f"--detector: detector folder not found: {folder}")
    if not (folder / "detector.json").is_file():
        raise ValueError(f"--detector: {folder}: not a detector folder (no detector.json)")
    digest = hashlib.sha256()
    for name in DETECTOR_FILES:
        digest.update(name.encode() + b"\0")
        digest.update(bytes.fromhex(_file_sha256(folder / name, "--detector")))
    return digest.hexdigest()


def _file_sha256(path: Path, option: str = "--vector") -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        raise FileNotFoundError(f"{option}: file not found: {path}") from None
    except OSError as exc:
        raise ValueError(f"{option}: cannot read {path} ({exc.strerror or exc})") from None


class ModelScorer:
    """Scores functions with a model (a :class:`ModelSource` to load when needed, or a loaded
    :class:`~vulnsteer.lm.model.LoadedModel`), optionally steered; see the module docstring.

    Args:
        model: what to score with.
        steering: a vector and strength, or None for the plain model.
        detector: a saved detector instead of *steering* (its template replaces *template*).
        explain: also generate an answer (the verdict, named CWE and explanation text).
        template: the prompt wording (default: :data:`~vulnsteer.lm.prompts.DEFAULT_TEMPLATE`).
        batch_size: functions per forward pass.
        max_new_tokens: generation length with *explain*.
        max_code_tokens: token budget for a function (token-aware truncation, as in training).
        threshold: P(vulnerable) at which the logit verdict is ``vulnerable``.
        identity_store: folder of recorded model identities (None: always load the model to know it).

    >>> with ModelScorer(ModelSource(), identity_store=Path("~/.cache/vulnsteer/scan/models")) as s:  # doctest: +SKIP
    ...     s.score([Sample("x", "os.system(cmd)", "python", "unknown", "vulnerable")])[0].score
    0.97
    """

    def __init__(
        self,
        model: ModelSource | Any,
        *,
        steering: SteeringOptions | None = None,
        detector: DetectorOptions | None = None,
        explain: bool = False,
        template: PromptTemplate | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        max_code_tokens: int = DEFAULT_MAX_CODE_TOKENS,
        threshold: float = 0.5,
        identity_store: Path | None = None,
    ) -> None:
        if max_code_tokens < 32:
            raise ValueError(f"--max-code-tokens must be at least 32, got {max_code_tokens}")
        if batch_size < 1 or max_new_tokens < 1:
            raise ValueError("--batch-size and --max-new-tokens must be positive")
        if steering is not None and detector is not None:
            raise ValueError("--detector and --vector exclude each other (a detector carries its own vector)")
        self.steering = steering
        self.detector = detector
        self._detector_sha = _detector_sha256(detector.folder) if detector is not None else None
        self.explain = explain
        self.template = template or DEFAULT_TEMPLATE
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.max_code_tokens = max_code_tokens
        self.threshold = threshold
        self._identity_store = identity_store
        self._vector_sha = _file_sha256(steering.vector) if steering is not None else None
        self._specs: list[Any] | None = None
        self._vector_cwe: str | None = None
        self._key: str | None = None
        if isinstance(model, ModelSource):
            self._source: ModelSource | None = model
            self._lm: Any = None
            self._owns_model = True
            self._identity = self._recalled_identity(model)
        else:
            self._source = None
            self._lm = model
            self._owns_model = False
            self._identity = identity_of(model)
        if self._identity is None:
            self._load()
        assert self._identity is not None
        self.digest = scorer_digest(self._digest_parts())

    # identity ----------------------------------------------------------------------------------------------

    def _recalled_identity(self, source: ModelSource) -> ModelIdentity | None:
        location = local_model_location(source.spec)
        if location is None or self._identity_store is None or source.device_map is not None:
            return None
        self._key = location_key(location, source.device, source.dtype)
        return recall_identity(self._identity_store, self._key)

    def _digest_parts(self) -> dict[str, Any]:
        assert self._identity is not None
        steering = self.steering
        return {
            "scorer": "model",
            "format": SCORE_FORMAT,
            "model": {k: v for k, v in self._identity.to_dict().items() if k != "model_id"},
            "vector": None
            if steering is None
            else {
                "sha256": self._vector_sha,
                "strength": float(steering.strength),
                "layers": list(steering.layers),
                "positions": steering.positions,
                "unit": steering.unit,
            },
            "detector": self._detector_sha,
            "template": self.template.to_dict() if self.detector is None else None,  # the detector's files hold it
            "max_code_tokens": self.max_code_tokens,
            "threshold": self.threshold,
            "explain": {"max_new_tokens": self.max_new_tokens} if self.explain else None,
        }

    @property
    def provenance(self) -> Mapping[str, Any]:
        """What this scorer is (for SARIF ``properties`` and JSON records)."""
        assert self._identity is not None
        out: dict[str, Any] = {
            "scorer": "model" if self.detector is None else "detector",
            "digest": self.digest,
            "model": self._identity.model_id,
            "model_fingerprint": self._identity.fingerprint,
            "weights_digest": self._identity.weights_digest,
            "dtype": self._identity.dtype,
            "mode": "logit+generation" if self.explain else "logit",
            "max_code_tokens": self.max_code_tokens,
            "prompt_template": "default" if self.template == DEFAULT_TEMPLATE else "custom",
        }
        if self.detector is not None:
            out.update(detector=str(self.detector.folder), detector_sha256=self._detector_sha)
            out.pop("prompt_template")  # the detector's own (in its detector.json)
        if self.steering is not None:
            out.update(
                vector=str(self.steering.vector),
                vector_sha256=self._vector_sha,
                strength=self.steering.strength,
                layers=list(self.steering.layers),
                positions=self.steering.positions,
                unit=self.steering.unit,
            )
        return out

    # loading -----------------------------------------------------------------------------------------------

    def _load(self) -> Any:
        """Load the model (and the vector) if not loaded yet; check a recalled identity against the real one."""
        if self._lm is None:
            from ..lm.model import load_model

            source = self._source
            assert source is not None
            self._lm = load_model(
                source.spec,
                device=source.device,
                dtype=source.dtype,
                device_map=source.device_map,
                trust_remote_code=source.trust_remote_code,
                layer_matcher=source.layers_path,
            )
            measured = identity_of(self._lm)
            recalled = self._identity
            self._identity = measured
            if self._key is None and self._identity_store is not None and source.device_map is None:
                location = local_model_location(source.spec)  # the embedded model exists once loaded
                self._key = location_key(location, source.device, source.dtype) if location is not None else None
            if self._key is not None and self._identity_store is not None and measured != recalled:
                remember_identity(self._identity_store, self._key, measured)
            if recalled is not None and measured != recalled:
                log.warning("the recorded identity of %s was stale; it is updated", measured.model_id)
                self.digest = scorer_digest(self._digest_parts())
                self._prepare_steering()
                raise StaleDigestError(f"model identity changed to {measured}")
        if self._specs is None:
            self._prepare_steering()
        return self._lm

    def _prepare_steering(self) -> None:
        from ..steering.hooks import SteeringSpec
        from ..steering.vectors import SteeringVector

        lm, steering = self._lm, self.steering
        if self.detector is not None:
            self._prepare_detector(self.detector)
            return
        if steering is None:
            self._specs = []
            return
        check = not steering.allow_model_mismatch
        vector = SteeringVector.load(
            steering.vector,
            hidden_size=lm.hidden_size,
            fingerprint=lm.fingerprint if check else None,
            weights=lm.weights_identity if check else None,
        )
        spec = SteeringSpec(
            vector,
            steering.strength,
            layers=steering.layers,
            positions=steering.positions,  # type: ignore[arg-type]
            unit=steering.unit,  # type: ignore[arg-type]
        )
        self._specs = [spec]
        try:
            self._vector_cwe = normalize_cwe(vector.cwe)
        except UnknownCWEError:  # a vector for no one weakness ("any", pooled)
            self._vector_cwe = None

    def _prepare_detector(self, options: DetectorOptions) -> None:
        from ..detection.detector import SavedDetector

        detector = SavedDetector.load(options.folder)
        if not options.allow_model_mismatch:
            detector.check_model(self._lm, str(options.folder))
        self._specs = [detector.spec()]
        self.template = detector.template
        try:
            self._vector_cwe = normalize_cwe(detector.vector.cwe)
        except UnknownCWEError:  # a detector for any weakness
            self._vector_cwe = None

    def close(self) -> None:
        """Release the model if this scorer loaded it."""
        if self._lm is not None and self._owns_model:
            self._lm.close()
            self._lm = None

    def __enter__(self) -> ModelScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # scoring -----------------------------------------------------------------------------------------------

    def score(self, units: Sequence[Sample], progress: bool = True) -> list[FunctionScore]:
        """P(vulnerable) (and with ``explain`` the generated verdict) for each function, in order."""
        if not units:
            return []
        from ..detection.engine import detect_variants_modes

        lm = self._load()
        tokenizer = lm.tokenizer

        def count(text: str) -> int:
            return len(tokenizer(text, add_special_tokens=False)["input_ids"])

        samples = [truncate_sample(u, count, self.max_code_tokens) for u in units]
        # unique ids: the engine keys nothing on them, but records carry them
        samples = [dataclasses.replace(s, id=f"{i}:{s.id}") for i, s in enumerate(samples)]
        modes = ("logit", "generation") if self.explain else ("logit",)
        out = detect_variants_modes(
            lm,
            samples,
            {"scan": list(self._specs or [])},
            modes=modes,
            template=self.template,
            batch_size=self.batch_size,
            max_new_tokens=self.max_new_tokens,
            threshold=self.threshold,
            progress=progress,
            desc="scoring",
        )
        logits = out["logit"]["scan"]
        texts = out["generation"]["scan"] if self.explain else [None] * len(samples)
        scores = []
        for sample, rec, gen in zip(samples, logits, texts):
            p = min(1.0, max(0.0, float(rec.score if rec.score is not None else 0.0)))
            truncated = bool(sample.meta.get("truncation", {}).get("truncated"))
            probe = {"probe": rec.gate_score, "push": rec.push}
            if gen is None:
                scores.append(FunctionScore(p, rec.verdict, self._vector_cwe, None, truncated, **probe))
            else:
                cwe = gen.named_cwe if gen.verdict == "vulnerable" and gen.named_cwe else self._vector_cwe
                text = (gen.text or "").strip() or None
                scores.append(FunctionScore(p, gen.verdict, cwe, text, truncated, **probe))
        return scores
