"""Toys shared by the scan and CLI tests: a stand-in scorer, steering vectors and saved detectors for a tiny model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from vulnsteer.data.sample import Sample
from vulnsteer.lm.model import LoadedModel
from vulnsteer.scan.scorer import FunctionScore
from vulnsteer.steering.vectors import Provenance, SteeringVector, recorded_identity


def toy_vector(lm: LoadedModel, path: Path, scale: float = 1.0, cwe: str = "CWE-89") -> Path:
    """A random steering vector for *lm* at layer 1 (seeded), saved to *path* with its provenance."""
    layers = (1,)
    prov = Provenance(
        lm.model_id,
        lm.fingerprint,
        lm.hidden_size,
        layers,
        "last",
        "mean_diff",
        cwe,
        1,
        1,
        "h",
        "t",
        {},
        recorded_identity(lm.identity),
    )
    generator = torch.Generator().manual_seed(0)
    SteeringVector({1: scale * torch.randn(lm.hidden_size, generator=generator)}, prov).save(path)
    return path


def save_detector(lm: LoadedModel, folder: Path, threshold: float = 0.0, share: float | None = None) -> Path:
    """A probe-gated detector for *lm* (random probe at layer 0 gating a random vector at layer 1), saved; with
    *share*, its probe stores an adaptation with that calibration share."""
    from vulnsteer.config.design import ProbeDesign
    from vulnsteer.detection.detector import SavedDetector
    from vulnsteer.steering.probe import Adaptation, Calibration, Probe

    generator = torch.Generator().manual_seed(1)
    weight = torch.randn(lm.hidden_size, generator=generator)
    adaptation = None if share is None else Adaptation(0.0, 1.0, Calibration(1.0, 0.0), share=share, separation=1.0)
    probe = Probe(ProbeDesign((0,), ("code_mean",)), weight, bias=0.0, threshold=threshold, spread=1.0,
                  adaptation=adaptation)  # fmt: skip
    vector = SteeringVector.load(toy_vector(lm, folder.parent / f"{folder.name}-vector.safetensors", scale=5.0))
    SavedDetector(vector, probe, "sign", 2.0, (1,), positions="last", unit="raw").save(folder)
    return folder


class FakeScorer:
    """Scores 0.9 for code that mentions ``danger``, 0.2 otherwise, and remembers what it was asked to score."""

    def __init__(self, digest: str = "fake-1") -> None:
        self.digest = digest
        self.calls: list[list[str]] = []

    @property
    def provenance(self) -> Mapping[str, Any]:
        return {"scorer": "fake", "digest": self.digest, "model": "fake-model"}

    def score(self, units: Sequence[Sample], progress: bool = True) -> list[FunctionScore]:
        self.calls.append([u.code for u in units])
        return [
            FunctionScore(0.9, "vulnerable", "CWE-78", "Answer: vulnerable")
            if "danger" in u.code
            else FunctionScore(0.2, "secure")
            for u in units
        ]

    @property
    def scored(self) -> list[str]:
        return [code for call in self.calls for code in call]
