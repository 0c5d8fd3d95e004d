"""The constant family: one push per setting, the same for every input.

Fitted on train: a vector per CWE and method@pooling (and the pooled ``"any"`` vector over every CWE's training
samples, with ``vectors.pooled``), saved under ``RUN/vectors/``, with their cosine similarities. On val, every
candidate setting (method x pooling x positions x layer set x strength) runs with each CWE's own vector (and, with
``run.controls_on_val``, its random-direction control, for the selection curves) and with the pooled vector; a
setting per CWE (and for the pooled vector) is chosen there. On held-out data each choice runs with its
random-direction control, and in the ``detection.cross_cwe_modes`` each CWE's vector also runs on every other
CWE's samples (the cross-CWE matrix).

Lead-table rows: ``constant`` and its control ``constant_control``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from ...config import ExperimentConfig
from ...io import JsonObject
from ...lm.model import LoadedModel
from ...steering.vectors import SteeringVector
from ..family import ActivationNeeds, Applied, Artefacts, FitContext, HeldOut, Saved, ValContext
from ..fit import fit_cwe_vectors, save_vectors, vector_cosines
from ..grid import Condition, Setting, candidate_settings, val_conditions
from ..results import CosineBlock, FamilyResults, VectorInfo
from .setting import (
    RowSpec,
    SettingChoices,
    apply_settings,
    conditions_of,
    restore_choices,
    save_choices,
    select_by_mode,
    setting_results,
)

__all__ = ["CONSTANT", "ConstantFamily", "ConstantFit"]

LABEL = "constant steering"
#: Its control's column in the per-CWE table, by role.
CONTROLS = MappingProxyType({"control": "random control"})
ROWS = (
    RowSpec("steered", "constant", "constant steering (setting per CWE chosen on val)", what="constant steering"),
    RowSpec(
        "control",
        "constant_control",
        "random-direction control of constant steering (same norm, same layers)",
        control_of="constant",
        claim="the direction pushed matters",
        what="its random-direction control",
    ),
)


@dataclass(frozen=True)
class ConstantFit:
    """The fitted vectors (with what results list about them), the candidate settings, and the configuration
    that says how val scores them (with random controls, with the pooled vector)."""

    settings: tuple[Setting, ...]
    vectors: Mapping[tuple[str, str], SteeringVector]
    config: ExperimentConfig
    info: Mapping[str, VectorInfo] = field(default_factory=dict)
    cosine: Mapping[str, CosineBlock] = field(default_factory=dict)


@dataclass(frozen=True)
class ConstantFamily:
    """Constant steering (see the module docstring). *vectors_dir*: where in the run folder its vectors go."""

    name: str = "constant"
    label: str = LABEL
    rows: tuple[RowSpec, ...] = ROWS
    vectors_dir: str = "vectors"

    def enabled(self, config: ExperimentConfig) -> bool:
        return True

    def needs(
        self, config: ExperimentConfig, layer_sets: Sequence[tuple[int, ...]], num_layers: int
    ) -> ActivationNeeds:
        layers = tuple(sorted({layer for group in layer_sets for layer in group}))
        return ActivationNeeds(layers, tuple(config.vectors.pooling))

    def fit(self, ctx: FitContext) -> ConstantFit:
        cfg = ctx.config
        vectors = fit_cwe_vectors(
            ctx.lm,
            ctx.acts("train"),
            ctx.data.by_cwe("train"),
            ctx.layers,
            methods=cfg.vectors.methods,
            poolings=cfg.vectors.pooling,
            pooled=cfg.vectors.pooled,
        )
        info = {k: VectorInfo.from_json(v) for k, v in save_vectors(vectors, ctx.out / self.vectors_dir).items()}
        cosine = {k: CosineBlock.from_json(c) for k, c in vector_cosines(vectors, ctx.layers).items()}
        return ConstantFit(tuple(candidate_settings(cfg, ctx.layer_sets)), vectors, cfg, info, cosine)

    def artefacts(self, fitted: ConstantFit) -> Artefacts:
        return Artefacts(fitted.vectors)

    def val_conditions(self, fitted: ConstantFit, mode: str) -> list[Condition]:
        return val_conditions(fitted.config, fitted.settings, mode)

    def select(self, fitted: ConstantFit, val: ValContext) -> SettingChoices:
        return SettingChoices(select_by_mode(val, pooled=fitted.config.vectors.pooled), fitted.vectors)

    def save(self, chosen: SettingChoices, run: Path, info: JsonObject) -> Saved:
        return save_choices(chosen, run)

    def restore(self, entry: JsonObject, run: Path, lm: LoadedModel, allow_mismatch: bool) -> SettingChoices:
        return restore_choices(entry, run, lm, allow_mismatch)

    def held_out_conditions(self, chosen: SettingChoices, held: HeldOut) -> list[Condition]:
        return conditions_of(chosen, held, held.cross_cwe_modes)

    def apply(self, chosen: SettingChoices, held: HeldOut) -> Applied:
        return apply_settings(chosen, held, self.rows, held.cross_cwe_modes)

    def results(
        self,
        fitted: ConstantFit | None,
        chosen: SettingChoices | None,
        applied: Applied | None,
        saved: Saved | None,
    ) -> FamilyResults:
        if fitted is None:
            return setting_results(self.name, self.label, CONTROLS, chosen, applied)
        return setting_results(
            self.name, self.label, CONTROLS, chosen, applied, vectors=fitted.info, cosine=fitted.cosine
        )


CONSTANT = ConstantFamily()
