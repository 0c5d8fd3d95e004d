"""The prompt family: the unsteered model under another prompt template, the template chosen per CWE on val.

Fitted on train: the templates of ``baselines.templates`` (``strict``: answer secure unless the weakness can be
named; ``one_shot``: the first training pair shown with the answers the prompt asks for). On val, the baseline runs
under each; per CWE the template with the best balanced accuracy is chosen (ties to the default prompt). On
held-out data, the chosen templates' baselines run.

Lead-table row: ``prompt`` (the default prompt where it won, so the row covers every baseline sample).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ...config import ExperimentConfig
from ...data.sample import Sample
from ...detection.records import DetectionRecord
from ...io import JsonObject
from ...lm.model import LoadedModel
from ...lm.prompts import DEFAULT_TEMPLATE, TEMPLATES, PromptTemplate
from ..family import ActivationNeeds, Applied, Artefacts, FitContext, HeldOut, LeadEntry, Saved, ValContext
from ..grid import Condition
from ..lead import compose
from ..results import FamilyResults
from ..select import select_templates

__all__ = ["PROMPT", "PromptFamily", "prompt_templates", "template_conditions"]

LABEL = "best prompt"


def prompt_templates(
    config: ExperimentConfig, train: Sequence[Sample], base: PromptTemplate
) -> dict[str, PromptTemplate]:
    """The prompting baselines' templates by name (``one_shot`` shows the first training pair, vulnerable then
    fixed, with the answers the prompt asks for)."""
    out: dict[str, PromptTemplate] = {"default": base}
    for name in config.baselines.templates:
        if name == "one_shot":
            pair = _first_pair(train)
            if pair is None:
                continue
            vuln, fixed = pair
            out[name] = base.with_shots(
                (vuln.code, vuln.language, f"Answer: vulnerable\nWeakness: {vuln.cwe}"),
                (fixed.code, fixed.language, "Answer: secure\nWeakness: none"),
            )
        else:
            out[name] = TEMPLATES[name]
    return out


def _first_pair(samples: Sequence[Sample]) -> tuple[Sample, Sample] | None:
    by_pair: dict[str, list[Sample]] = {}
    for s in samples:
        by_pair.setdefault(s.pair_id or s.id, []).append(s)
    for key in sorted(by_pair):
        group = by_pair[key]
        vuln = next((s for s in group if s.is_vulnerable), None)
        fixed = next((s for s in group if not s.is_vulnerable), None)
        if vuln is not None and fixed is not None:
            return vuln, fixed
    return None


def template_conditions(templates: Sequence[str], mode: str, split: str) -> list[Condition]:
    """The baseline under each prompting baseline's template (the default template's baseline is the baseline)."""
    return [Condition("baseline", mode, split, template=name) for name in templates if name != "default"]


@dataclass(frozen=True)
class PromptFamily:
    """The best prompt (see the module docstring)."""

    name: str = "prompt"
    label: str = LABEL

    def enabled(self, config: ExperimentConfig) -> bool:
        return True

    def needs(
        self, config: ExperimentConfig, layer_sets: Sequence[tuple[int, ...]], num_layers: int
    ) -> ActivationNeeds:
        return ActivationNeeds()

    def fit(self, ctx: FitContext) -> Mapping[str, PromptTemplate]:
        return prompt_templates(ctx.config, ctx.data.samples("train"), DEFAULT_TEMPLATE)

    def artefacts(self, fitted: Mapping[str, PromptTemplate]) -> Artefacts:
        return Artefacts(templates=fitted)

    def val_conditions(self, fitted: Mapping[str, PromptTemplate], mode: str) -> list[Condition]:
        return template_conditions(list(fitted), mode, "val")

    def select(self, fitted: Mapping[str, PromptTemplate], val: ValContext) -> dict[str, dict[str, str]]:
        """Per mode and CWE, the template chosen on val."""
        picked = {mode: select_templates(conds, val.records, val.cwes) for mode, conds in val.conditions.items()}
        return val.by_detection_mode(picked)

    def save(self, chosen: Mapping[str, Mapping[str, str]], run: Path, info: JsonObject) -> Saved:
        return Saved()

    def restore(self, entry: JsonObject, run: Path, lm: LoadedModel, allow_mismatch: bool) -> None:
        return None  # a one-shot template shows a training pair of the run: not kept

    def held_out_conditions(self, chosen: Mapping[str, Mapping[str, str]], held: HeldOut) -> list[Condition]:
        return [
            Condition("baseline", mode, held.split, template=name)
            for mode, by_cwe in chosen.items()
            if mode in held.modes
            for name in sorted(set(by_cwe.values()))
            if name != "default"
        ]

    def apply(self, chosen: Mapping[str, Mapping[str, str]], held: HeldOut) -> Applied:
        lead = {}
        for mode in held.modes:
            by_cwe = chosen.get(mode)
            if by_cwe is None:
                continue
            per_cwe: dict[str, Sequence[DetectionRecord] | None] = {
                cwe: None
                if name == "default"
                else held.records[Condition("baseline", mode, held.split, template=name).key]
                for cwe, name in by_cwe.items()
            }
            label = "best prompt template per CWE (chosen on val)"
            lead[mode] = [LeadEntry(self.name, label, compose(held.cwes, held.baseline(mode), per_cwe))]
        return Applied(lead)

    def results(
        self,
        fitted: Mapping[str, PromptTemplate] | None,
        chosen: Mapping[str, Mapping[str, str]] | None,
        applied: Applied | None,
        saved: Saved | None,
    ) -> FamilyResults:
        return FamilyResults(self.name, self.label, templates=chosen or {})


PROMPT = PromptFamily()
