"""vulnsteer: steer code LLMs toward finding security vulnerabilities, and measure honestly whether it helps.

Pipeline: data -> prompts -> activations -> vectors -> steering -> detection -> evaluation -> report.

Sign convention: a vector's direction is ``mean(secure) - mean(vulnerable)``; **positive steering strength pushes
the model toward reporting a vulnerability** (the direction is subtracted).

The public API, importable from here (loaded on first use, so ``import vulnsteer`` stays cheap)::

    import vulnsteer as vs

    lm = vs.load_model()                                  # embedded SmolLM2 (or an HF id / folder / .gguf)
    splits = vs.split_samples(vs.load_builtin(["CWE-89"]))  # train/val/test by group: a pair never straddles
    acts = vs.extract_activations(lm, splits.train, layers=[15], poolings=["last"])
    vector = vs.fit_vector(acts, splits.train, cwe="CWE-89")  # records the model (id, weights, type)
    with vs.steer(lm, vector, strength=1.0, unit="relative", positions="last"):   # + = toward "vulnerable"
        records = vs.score_logits(lm, splits.test)
    vs.export_gguf(vector, "cwe-89.gguf", strength=1.0, unit="relative")          # the same push for llama.cpp
    run_dir = vs.run_protocol(vs.ExperimentConfig())       # the whole protocol (what `vulnsteer run` does)
    detector = vs.SavedDetector.load(run_dir / "detector", lm)   # probe-gated steering chosen on val
    records = detector.detect(lm, splits.test, mode="generation")   # verdict, probe score and push per sample
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:  # pragma: no cover - the names below, for type checkers and IDEs
    from .config import ExperimentConfig, load_config, parse_config
    from .config.design import ProbeDesign
    from .data.builtin import load_builtin
    from .data.loaders import load_samples
    from .data.sample import Sample
    from .data.splits import split_samples
    from .detection.detector import SavedDetector
    from .detection.engine import detect, generate_verdicts, score_logits
    from .detection.probe import fit_probe
    from .detection.records import DetectionRecord
    from .experiment.apply import apply_families
    from .experiment.evaluate import evaluate_from_run, evaluate_vectors
    from .experiment.protocol import run_protocol
    from .experiment.results import Results
    from .experiment.upgrade import load_results
    from .lm.activations import Activations, extract_activations
    from .lm.model import LoadedModel, decoder_layers, load_model
    from .lm.prompts import PromptTemplate
    from .scan.engine import scan
    from .steering.behaviour import answer_vector
    from .steering.gate import Gate
    from .steering.gguf import export_gguf, import_gguf
    from .steering.hooks import SIGN_CONVENTION, SteeringSpec, steer, steer_rows
    from .steering.probe import Probe
    from .steering.vectors import SteeringVector, fit_vector

__all__ = [
    "SIGN_CONVENTION",
    "Activations",
    "DetectionRecord",
    "ExperimentConfig",
    "Gate",
    "LoadedModel",
    "Probe",
    "ProbeDesign",
    "PromptTemplate",
    "Results",
    "Sample",
    "SavedDetector",
    "SteeringSpec",
    "SteeringVector",
    "__version__",
    "answer_vector",
    "apply_families",
    "decoder_layers",
    "detect",
    "evaluate_from_run",
    "evaluate_vectors",
    "export_gguf",
    "extract_activations",
    "fit_probe",
    "fit_vector",
    "generate_verdicts",
    "import_gguf",
    "load_builtin",
    "load_config",
    "load_model",
    "load_results",
    "load_samples",
    "parse_config",
    "run_protocol",
    "scan",
    "score_logits",
    "split_samples",
    "steer",
    "steer_rows",
]

#: Where each public name lives.
_HOME = {
    "load_builtin": "data.builtin",
    "load_samples": "data.loaders",
    "Sample": "data.sample",
    "split_samples": "data.splits",
    "SavedDetector": "detection.detector",
    "detect": "detection.engine",
    "generate_verdicts": "detection.engine",
    "score_logits": "detection.engine",
    "fit_probe": "detection.probe",
    "DetectionRecord": "detection.records",
    "apply_families": "experiment.apply",
    "ExperimentConfig": "config",
    "load_config": "config",
    "parse_config": "config",
    "evaluate_from_run": "experiment.evaluate",
    "evaluate_vectors": "experiment.evaluate",
    "run_protocol": "experiment.protocol",
    "Results": "experiment.results",
    "load_results": "experiment.upgrade",
    "Activations": "lm.activations",
    "extract_activations": "lm.activations",
    "LoadedModel": "lm.model",
    "decoder_layers": "lm.model",
    "load_model": "lm.model",
    "PromptTemplate": "lm.prompts",
    "scan": "scan.engine",
    "answer_vector": "steering.behaviour",
    "export_gguf": "steering.gguf",
    "import_gguf": "steering.gguf",
    "Gate": "steering.gate",
    "Probe": "steering.probe",
    "ProbeDesign": "config.design",
    "SIGN_CONVENTION": "steering.hooks",
    "SteeringSpec": "steering.hooks",
    "steer": "steering.hooks",
    "steer_rows": "steering.hooks",
    "SteeringVector": "steering.vectors",
    "fit_vector": "steering.vectors",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'vulnsteer' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
