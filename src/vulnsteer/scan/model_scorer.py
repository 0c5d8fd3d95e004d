"""The plain or steered model, or a saved detector, as a :class:`~vulnsteer.scan.scorer.Scorer`.

What scores code is declared once, as a :class:`~vulnsteer.scan.spec.ScorerSpec` built from the configuration keys
(the ``[model]`` section, ``detection.max_new_tokens`` and ``batch_size``, ``data.max_code_tokens``) plus what steers
the model: a vector at one setting (:class:`~vulnsteer.scan.spec.VectorSteering`), a saved detector folder, or
nothing. ``vulnsteer detect`` and ``vulnsteer scan`` build the same spec from the same flags, so one function gets
the same score from both.

The score is P(vulnerable) from the answer logits (:func:`vulnsteer.detection.engine.detect_variants_modes`, logit
mode); with ``explain`` (mode ``generation``) the same first forward step also feeds greedy generation, whose
answer text is the explanation and whose parsed verdict and named CWE are reported. A saved detector
(:class:`~vulnsteer.detection.detector.SavedDetector`) applies its probe-gated setting with its own prompt
template, and each score then carries the probe's score and the push the gate gave.

Without an explicit dtype, a probe detector fitted in bfloat16 (the shipped one) loads the model in bfloat16 where
the CPU runs it natively (:func:`~vulnsteer.scan.spec.choose_dtype`; the scan says which dtype and why). The model
is loaded on the first :meth:`ModelScorer.score` call (or when the digest needs an identity nobody recorded): a
rescan whose functions are all cached never loads it. The digest covers the model's identity (its dtype included),
the vector file's SHA-256 and its setting (or the detector folder's files), the prompt template, the token budget,
the threshold and, with ``explain``, the generation length; see :mod:`vulnsteer.scan.identity` for how the model's
identity is known without loading it.

>>> spec = ScorerSpec(vector=VectorSteering(Path("cwe-89.safetensors"), 0.3))  # doctest: +SKIP
>>> with ModelScorer(spec) as scorer:  # doctest: +SKIP
...     scorer.check()                           # files, token budget and vector against the model's config
...     scorer.score(units)[0].score
0.83
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config.defaults import (
    DEFAULT_MAX_CODE_TOKENS,
    MIN_ADAPT,
)
from ..cwe import UnknownCWEError, normalize_cwe
from ..data.sample import Sample
from ..lm.identity import ModelIdentity
from ..lm.paths import local_model_location
from ..lm.prompts import DEFAULT_TEMPLATE, PromptTemplate
from .identity import location_key, recall_identity, remember_identity
from .scorer import FunctionScore, StaleDigestError, scorer_digest
from .spec import (
    DtypeChoice,
    ScorerSpec,
    choose_dtype,
)

if TYPE_CHECKING:  # pragma: no cover
    from ..steering.hooks import SteeringSpec
    from ..steering.vectors import SteeringVector

__all__ = ["SCORE_FORMAT", "ModelScorer", "share_adapted"]

log = logging.getLogger(__name__)

#: Bumped when what a score means changes (a scorer's digest includes it).
SCORE_FORMAT = 2


#: The files of a detector folder that decide its scores (hashed into the scorer's digest).
DETECTOR_FILES = ("detector.json", "probe.safetensors", "vector.safetensors")


def _detector_sha256(folder: Path) -> str:
    if not folder.is_dir():
        raise FileNotFoundError(f"--detector: detector folder not found: {folder}")
    if not (folder / "detector.json").is_file():
        raise ValueError(f"--detector: {folder}: not a detector folder (no detector.json)")
    digest = hashlib.sha256()
    present = [name for name in DETECTOR_FILES if (folder / name).exists()]  # (a probe detector has no vector)
    for name in present:
        digest.update(name.encode() + b"\0")
        digest.update(bytes.fromhex(_file_sha256(folder / name, "--detector")))
    return digest.hexdigest()


def _file_sha256(path: Path, option: str = "--vector") -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        raise FileNotFoundError(f"{option}: file not found: {path}") from None
    except IsADirectoryError:
        raise ValueError(f"{option}: {path}: is a folder, not a vector file") from None
    except OSError as exc:
        raise ValueError(f"{option}: cannot read {path} ({exc.strerror or exc})") from None


def _cwe_of(name: str) -> str | None:
    try:
        return normalize_cwe(name)
    except UnknownCWEError:  # a vector or detector for no one weakness ("any", pooled)
        return None


class ModelScorer:
    """Scores functions as a :class:`ScorerSpec` says; see the module docstring.

    Args:
        spec: what scores.
        lm: an already loaded model to score with (None: load ``spec.model`` when needed; the scorer then owns it).
        identity_store: folder of recorded model identities (None: load the model to know its identity).
        template: the prompt wording without a detector (default: :data:`~vulnsteer.lm.prompts.DEFAULT_TEMPLATE`).
    """

    def __init__(
        self,
        spec: ScorerSpec | None = None,
        *,
        lm: Any = None,
        identity_store: Path | None = None,
        template: PromptTemplate | None = None,
    ) -> None:
        spec = spec or ScorerSpec()
        #: the dtype the model loads in, and why (:func:`choose_dtype`; a model given is as it was loaded)
        self.dtype_choice = choose_dtype(spec) if lm is None else DtypeChoice(spec.model.dtype, "the model given")
        if self.dtype_choice.dtype != spec.model.dtype:
            spec = dataclasses.replace(spec, model=dataclasses.replace(spec.model, dtype=self.dtype_choice.dtype))
        self.spec = spec
        if spec.model.backend == "nnsight":
            from ..lm.nnsight_backend import require_nnsight

            require_nnsight()  # a rescan needs no model, but the flag is not accepted without the package
        self.template = template or DEFAULT_TEMPLATE
        self._vector_sha = _file_sha256(spec.vector.vector) if spec.vector is not None else None
        self._detector_sha = _detector_sha256(spec.detector) if spec.detector is not None else None
        self._lm = lm
        self._owns_model = lm is None
        self._identity_store = identity_store
        self._key: str | None = None
        self._specs: list[Any] | None = None
        self._steering_cwe: str | None = None
        self._probe_detector: Any = None
        self._budget: int | None = None
        self._identity: ModelIdentity | None = lm.identity if lm is not None else self._recalled_identity()
        self._digest: str | None = None

    # identity ----------------------------------------------------------------------------------------------

    def _recalled_identity(self) -> ModelIdentity | None:
        model = self.spec.model
        location = local_model_location(model.name)
        if location is None or self._identity_store is None or model.device_map is not None or model.remote:
            return None
        self._key = location_key(location, model.device, model.dtype, model.quantize)
        return recall_identity(self._identity_store, self._key)

    @property
    def digest(self) -> str:
        """A hash of everything that decides the scores (the cache key's scorer part); loads the model if no
        identity was recorded for it."""
        if self._digest is None:
            if self._identity is None:
                self._load()
            self._digest = scorer_digest(self._digest_parts())
        return self._digest

    @property
    def identity(self) -> ModelIdentity:
        """The model's identity (recorded, or measured: loads the model if nobody recorded it)."""
        _ = self.digest
        assert self._identity is not None
        return self._identity

    def _digest_parts(self) -> dict[str, Any]:
        assert self._identity is not None
        spec, vector = self.spec, self.spec.vector
        return {
            "scorer": "model",
            "format": SCORE_FORMAT,
            "model": self._identity.digest(),
            "vector": None
            if vector is None
            else {
                "sha256": self._vector_sha,
                "strength": float(vector.strength),
                "layers": list(vector.layers),
                "positions": vector.positions,
                "unit": vector.unit,
            },
            "detector": self._detector_sha,
            "template": self.template.to_dict() if spec.detector is None else None,  # the detector's files hold it
            "max_code_tokens": spec.max_code_tokens,
            "threshold": spec.threshold,
            "explain": {"max_new_tokens": spec.max_new_tokens} if spec.explain else None,
            "long_functions": spec.long_functions,
            "aggregation": self.aggregation,
        }

    @property
    def score_kind(self) -> str:
        """Which score this is, in words (the scan's output says it): a probe detector's probe alone (its passes
        stop after the deepest layer it reads), or the (steered) model's answer (every layer runs)."""
        from ..detection.probe_detector import is_probe_detector

        spec = self.spec
        if spec.detector is not None and is_probe_detector(spec.detector):
            from ..detection.probe_detector import reads_code

            explained = "; the explanation is generated by the whole model" if spec.explain else ""
            tokens = ", plus a bag-of-tokens term on the function's text" if reads_code(spec.detector) else ""
            return (
                f"probe only (the detector's probe: the layers after the deepest one it reads are skipped{tokens})"
                f"{explained}"
            )
        steered = "steered " if spec.vector is not None or spec.detector is not None else ""
        return f"{steered}model answer (P(vulnerable) from the answer logits: the whole model)"

    @property
    def provenance(self) -> Mapping[str, Any]:
        """What this scorer is (for SARIF ``properties`` and JSON records)."""
        digest = self.digest
        assert self._identity is not None
        spec, vector = self.spec, self.spec.vector
        out: dict[str, Any] = {
            "scorer": "model" if spec.detector is None else "detector",
            "digest": digest,
            "model": self._identity.id,
            "model_fingerprint": self._identity.fingerprint,
            "weights_digest": self._identity.weights_digest,
            "dtype": self._identity.dtype,
            "dtype_choice": self.dtype_choice.why,
            **({"quantize": self._identity.quantize} if self._identity.quantize else {}),
            "mode": "logit+generation" if spec.explain else "logit",
            "score": self.score_kind,
            "max_code_tokens": spec.max_code_tokens or DEFAULT_MAX_CODE_TOKENS,
            "long_functions": spec.long_functions,
            "aggregation": self.aggregation,
        }
        if spec.detector is not None:
            out.update(detector=str(spec.detector), detector_sha256=self._detector_sha)
        else:
            out["prompt_template"] = "default" if self.template == DEFAULT_TEMPLATE else "custom"
        if vector is not None:
            out.update(dataclasses.asdict(vector), vector=str(vector.vector), layers=list(vector.layers))
            out["vector_sha256"] = self._vector_sha
        return out

    # checking and loading ----------------------------------------------------------------------------------

    def check(self) -> None:
        """What can be wrong before the weights load, each a one-line error naming the file or option: the device,
        the vector file or detector folder, the token budget against the model's context, and the vector's
        hidden size, layers and strength against the model's config."""
        from ..lm.budget import model_budget
        from ..lm.model import resolve_device

        spec = self.spec
        resolve_device(spec.model.device)
        vector = self._read_vector() if spec.vector is not None else None
        if spec.detector is not None:
            _load_detector(spec.detector)
        config, _, self._budget = model_budget(spec.model, spec.max_code_tokens, max_new_tokens=spec.new_tokens)
        if vector is not None:
            self._check_vector_shape(vector, config)

    def _fit_budget(self, context: int | None, tokenizer: Any) -> None:
        from ..lm.budget import fit_code_tokens

        spec = self.spec
        if spec.max_code_tokens is not None:
            self._budget = spec.max_code_tokens
        else:
            self._budget = fit_code_tokens(context, tokenizer, max_new_tokens=spec.new_tokens)

    def _read_vector(self) -> SteeringVector:
        from ..steering.vectors import SteeringVector

        assert self.spec.vector is not None
        return SteeringVector.load(self.spec.vector.vector)

    def _steering_spec(self, vector: SteeringVector) -> SteeringSpec:
        from ..steering.hooks import SteeringSpec

        steering = self.spec.vector
        assert steering is not None
        try:
            return SteeringSpec(
                vector,
                steering.strength,
                layers=steering.layers,
                positions=steering.positions,  # type: ignore[arg-type]
                unit=steering.unit,  # type: ignore[arg-type]
            )
        except ValueError as exc:
            raise ValueError(f"{steering.vector}: {exc}") from None

    def _check_vector_shape(self, vector: SteeringVector, config: Any) -> None:
        """The vector's hidden size and steered layers against the model's config, and its setting."""
        steering = self.spec.vector
        assert steering is not None
        hidden = getattr(config, "hidden_size", None)
        if isinstance(hidden, int):
            vector.check_hidden_size(hidden, str(steering.vector))
        layers = getattr(config, "num_hidden_layers", None)
        steered = steering.layers or vector.layers
        outside = [layer for layer in steered if isinstance(layers, int) and not 0 <= layer < layers]
        if outside:
            raise ValueError(f"{steering.vector}: steers layers {outside}, but the model has {layers} layers")
        self._steering_spec(vector)

    def _load(self) -> Any:
        """Load the model (and what steers it) if not loaded yet; check a recalled identity against the real one."""
        if self._lm is None:
            from ..lm.model import load_model

            model = self.spec.model
            self._lm = load_model(model)
            measured = self._lm.identity
            recalled = self._identity
            self._identity = measured
            if self._key is None and self._identity_store is not None and model.device_map is None:
                location = local_model_location(model.name)  # the embedded model exists once loaded
                self._key = (
                    location_key(location, model.device, model.dtype, model.quantize) if location is not None else None
                )
            if self._key is not None and self._identity_store is not None and measured != recalled:
                remember_identity(self._identity_store, self._key, measured)
            if recalled is not None and measured != recalled:
                log.warning("the recorded identity of %s was stale; it is updated", measured.id)
                self._digest = None
                self._prepare()
                raise StaleDigestError(f"model identity changed to {measured}")
        if self._specs is None:
            self._prepare()
        return self._lm

    def _prepare(self) -> None:
        """The steering specs and the token budget, once the model is loaded (refusing another model's vector or
        detector unless mismatches are allowed)."""
        lm, spec = self._lm, self.spec
        if self._budget is None:
            self._fit_budget(lm.context_length, lm.tokenizer)
        allow = spec.allow_model_mismatch
        if spec.detector is not None:
            detector = _load_detector(spec.detector)
            for warning in detector.check_model(lm, str(spec.detector), allow_mismatch=allow):
                log.warning("%s", warning)
            self.template = detector.template
            if hasattr(detector, "spec"):
                self._specs = [detector.spec()]
                self._steering_cwe = _cwe_of(detector.vector.cwe)
            else:  # a probe detector: its probe alone scores (the model generates only to explain)
                self._specs = []
                self._probe_detector = detector
        elif spec.vector is not None:
            vector = self._read_vector()
            for warning in vector.check_model(
                lm.identity, lm.hidden_size, str(spec.vector.vector), allow_mismatch=allow
            ):
                log.warning("%s", warning)
            self._specs = [self._steering_spec(vector)]
            self._steering_cwe = _cwe_of(vector.cwe)
        else:
            self._specs = []

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
        """P(vulnerable) (and with ``explain`` the generated verdict) for each function, in order; a function over
        the token budget is scored in windows, aggregated (``long_functions``), or by its head."""
        if not units:
            return []
        from ..data.units import head_fitter, held_out_units, window_fitter
        from ..detection.engine import detect_variants_modes

        lm = self._load()
        tokenizer = lm.tokenizer
        spec = self.spec
        assert self._budget is not None

        def count(text: str) -> int:
            return len(tokenizer(text, add_special_tokens=False)["input_ids"])

        # unique ids: the engine keys nothing on them, but records carry them
        named = [dataclasses.replace(u, id=f"{i}:{u.id}") for i, u in enumerate(units)]
        fitter = window_fitter if spec.long_functions == "windows" else head_fitter
        read = held_out_units(named, {}, {}, fitter(count, self._budget))
        if self._probe_detector is not None:
            return self._probe_scores(lm, read, len(units), progress)
        modes = ("logit", "generation") if spec.explain else ("logit",)
        out = detect_variants_modes(
            lm,
            list(read.pieces),
            {"scan": list(self._specs or [])},
            modes=modes,
            template=self.template,
            batch_size=spec.batch_size,
            max_new_tokens=spec.max_new_tokens,
            threshold=spec.threshold,
            progress=progress,
            desc="scoring",
            buckets=spec.length_buckets,
        )
        logits = out["logit"]["scan"]
        texts = out["generation"]["scan"] if spec.explain else [None] * len(logits)
        how = self.aggregation
        scores = read.aggregate([min(1.0, max(0.0, float(r.score or 0.0))) for r in logits], how)
        gated = all(r.gate_score is not None for r in logits)
        probes = read.aggregate([float(r.gate_score or 0.0) for r in logits], how) if gated else None
        count_windows = [0] * len(units)
        truncated = [False] * len(units)
        for piece, where in zip(read.pieces, read.where):
            count_windows[where.sample] += 1
            truncated[where.sample] |= bool(piece.meta.get("truncation", {}).get("truncated"))
        results = []
        for k, (p, top) in enumerate(scores):
            rec, gen = logits[top], texts[top]
            cut = truncated[k] and count_windows[k] == 1  # (read from its head only)
            probe = {"probe": probes[k][0] if probes is not None else None, "push": rec.push}
            threshold: float | None = None
            if gen is None:  # the answer's verdict: its P(vulnerable) (over windows: aggregated) against the threshold
                threshold = spec.threshold
                verdict = "vulnerable" if p >= threshold else "secure"
                cwe, text = self._steering_cwe, None
            else:
                verdict = gen.verdict
                cwe = gen.named_cwe if gen.verdict == "vulnerable" and gen.named_cwe else self._steering_cwe
                text = (gen.text or "").strip() or None
            results.append(
                FunctionScore(p, verdict, cwe, text, cut, **probe, windows=count_windows[k], threshold=threshold)
            )
        return results

    @property
    def aggregation(self) -> str:
        """How a function's windows add up (:attr:`ScorerSpec.resolved_aggregation`)."""
        return self.spec.resolved_aggregation

    def _probe_scores(self, lm: Any, read: Any, n: int, progress: bool) -> list[FunctionScore]:
        """A probe detector's calibrated P(vulnerable) and verdict per function: its raw score on each piece (a
        long function's windows) aggregated as the model's scores are (kept as ``probe``), then calibrated; with
        ``explain``, the unsteered model's generated answer on the top piece as the explanation (the verdict stays
        the probe's)."""
        import torch

        detector, spec = self._probe_detector, self.spec
        pieces = list(read.pieces)
        raw = detector.raw_scores(lm, pieces, batch_size=spec.batch_size, progress=progress,
                                  buckets=spec.length_buckets)  # fmt: skip
        found = read.aggregate([float(x) for x in raw.tolist()], self.aggregation)
        texts: list[Any] = [None] * len(pieces)
        if spec.explain:
            from ..detection.engine import detect_variants_modes

            out = detect_variants_modes(lm, pieces, {"scan": []}, modes=("generation",), template=self.template,
                                        batch_size=spec.batch_size, max_new_tokens=spec.max_new_tokens,
                                        progress=progress, desc="explaining",
                                        buckets=spec.length_buckets)  # fmt: skip
            texts = [(r.text or "").strip() or None for r in out["generation"]["scan"]]
        count_windows, truncated = [0] * n, [False] * n
        for piece, where in zip(read.pieces, read.where):
            count_windows[where.sample] += 1
            truncated[where.sample] |= bool(piece.meta.get("truncation", {}).get("truncated"))
        scores = torch.tensor([value for value, _ in found], dtype=torch.float32)
        probs, verdicts, threshold = _probe_verdicts(detector.probe, scores)
        return [
            FunctionScore(
                p,
                v,
                None,
                texts[top],
                truncated[k] and count_windows[k] == 1,
                probe=value,
                windows=count_windows[k],
                threshold=threshold,
            )
            for k, ((value, top), p, v) in enumerate(zip(found, probs, verdicts, strict=True))
        ]

    def adapt(
        self, scores: Sequence[FunctionScore], prevalence: float | None = None
    ) -> tuple[list[FunctionScore], int]:
        """*scores* (this scorer's, of every function scanned) re-read by the detector adapted to them (no label is
        read). A probe detector: its centre re-estimated from their raw probe scores, to a stated *prevalence* if
        given (the share of them expected vulnerable: the highest that share are flagged, and the probabilities take
        it as their prior). A steering detector: its verdict threshold re-estimated as a quantile of their steered
        scores, which it leaves as they are (:func:`share_adapted`). Refuses (``AdaptationError``) fewer than the
        detector's minimum, and a scorer with no detector. Returns the scores and how many inputs the adaptation
        came from."""
        from ..steering.probe import AdaptationError

        detector = self._probe_detector
        if detector is None and self.spec.detector is not None:
            detector = _load_detector(self.spec.detector)  # (every score came from the cache: no model needed)
        if detector is None:
            raise AdaptationError(
                "--adapt re-estimates a detector's centre or threshold (the shipped detector, or --detector); this "
                "scorer has none"
            )
        from ..detection.detector import SavedDetector

        if isinstance(detector, SavedDetector):
            return share_adapted(scores, detector.probe, prevalence), len(scores)
        import torch

        raw = torch.tensor([s.probe for s in scores], dtype=torch.float32)
        try:
            adapted = detector.adapted(raw, prevalence)
        except AdaptationError as exc:
            raise AdaptationError(f"--adapt: {exc}") from None
        centred = raw - (detector.probe.bias - adapted.bias)  # (the adapted probe's score: minus its centre)
        probs, verdicts, threshold = _probe_verdicts(adapted, centred)
        out = [
            dataclasses.replace(s, score=p, verdict=v, threshold=threshold)
            for s, p, v in zip(scores, probs, verdicts, strict=True)
        ]
        return out, adapted.centred


def share_adapted(
    scores: Sequence[FunctionScore], gate: Any, prevalence: float | None = None, min_count: int = MIN_ADAPT
) -> list[FunctionScore]:
    """A steering detector's *scores* (the steered model's P(vulnerable), one per distinct function scanned) with
    the verdict threshold that flags the highest share of them (:func:`~vulnsteer.stats.shares.top_share_threshold`):
    a stated *prevalence*, else the share of its *gate* probe's calibration data (``Adaptation.share``), assumed, as
    a probe detector's adaptation assumes it (no label is read). The scores stay the steered model's; a verdict
    follows its score. Refuses (``AdaptationError``) fewer than *min_count* scores, or no share to flag.

    >>> from vulnsteer.steering.probe import Adaptation, Calibration, Probe
    >>> from vulnsteer.config.design import ProbeDesign
    >>> import torch
    >>> gate = Probe(ProbeDesign((3,), ("code_mean",)), torch.tensor([1.0]), 0.0, 0.0,
    ...              adaptation=Adaptation(0.0, 1.0, Calibration(1.0, 0.0), share=0.5, separation=2.0))
    >>> found = share_adapted([FunctionScore(p, "vulnerable", threshold=0.5) for p in (0.9, 0.8, 0.7, 0.6)], gate,
    ...                       min_count=4)
    >>> [(s.score, s.verdict) for s in found], found[0].threshold
    ([(0.9, 'vulnerable'), (0.8, 'vulnerable'), (0.7, 'secure'), (0.6, 'secure')], 0.75)
    """
    from ..detection.records import judged_by_share
    from ..steering.probe import AdaptationError

    if len(scores) < max(1, min_count):
        raise AdaptationError(
            f"--adapt: {len(scores)} inputs to adapt to: at least {max(1, min_count)} are needed to re-estimate the "
            "steering detector's threshold"
        )
    share = prevalence
    if share is None and gate.adaptation is not None:
        share = gate.adaptation.share
    if share is None:
        raise AdaptationError(
            "--adapt: this steering detector's gate probe has no calibration share (written by an older "
            "vulnsteer): state --prevalence, or refit it"
        )
    return judged_by_share(scores, [s.score for s in scores], share)


def _probe_verdicts(probe: Any, raw: Any) -> tuple[list[float], list[str], float]:
    """Calibrated probabilities (clamped to [0, 1]) and verdicts of a probe's scores *raw*, and the probability of
    its threshold (:attr:`~vulnsteer.steering.probe.Probe.threshold_probability`)."""
    probs = [min(1.0, max(0.0, float(p))) for p in probe.probabilities(raw).tolist()]
    verdicts = ["vulnerable" if v else "secure" for v in probe.verdicts(raw).tolist()]
    return probs, verdicts, probe.threshold_probability


def _load_detector(folder: Path) -> Any:
    """The detector in *folder*: a probe detector or a steering detector (each refuses a folder it cannot use)."""
    from ..detection.probe_detector import ProbeDetector, is_probe_detector

    if is_probe_detector(folder):
        return ProbeDetector.load(folder)
    from ..detection.detector import SavedDetector

    return SavedDetector.load(folder)
