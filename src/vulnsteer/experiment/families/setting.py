"""What the families that choose a steering setting per target share (constant and conditional steering).

Per target (a CWE, or ``"any"`` for a pooled vector) the setting with the best balanced accuracy on val is chosen,
or the baseline where nothing beats it (:func:`~vulnsteer.experiment.select.select_settings`); or, for a family
that asks (``[conditional] select = "pooled"``), one setting for every CWE, chosen on every CWE's val samples
together. On held-out data
every chosen setting runs with its controls, and each CWE gets one row: the baseline, the chosen setting (or the
baseline where it won, with the best steered setting for information only), each control, the change in balanced
accuracy with a paired 95% bootstrap CI, McNemar's exact p, the answers that flipped each way and a sentence
saying whether the change is real. The pooled vector's rows and the cross-CWE matrix (each CWE's vector at its
best setting on every CWE's samples) come with it where the family asks.

A family of this shape declares its lead-table rows as :class:`RowSpec` (a role's records, composed per CWE from
each CWE's choice, with the baseline where it won) and its controls' columns by role.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...config.vocabulary import SCOPES
from ...detection.records import DetectionRecord
from ...io import JsonObject
from ...lm.model import LoadedModel
from ...stats.compare import compare_to_baseline, metrics_block, verdict_words
from ...steering.probe import Probe
from ...steering.vectors import SteeringVector
from ..chosen import load_probes, save_choice_files
from ..family import Applied, Artefacts, HeldOut, LeadEntry, Saved, ValContext
from ..grid import POOLED, Condition
from ..lead import compose, lever_rate
from ..results import Example, FamilyResults
from ..rundir import CHOSEN_DIR, CHOSEN_NAME
from ..select import Choice, balanced_accuracy, select_settings
from ..tables import Control, CrossCwe, Flips, HeldOutRow, HeldOutTable, MetricBlock

__all__ = [
    "RowSpec",
    "SettingChoices",
    "chosen_records",
    "examples",
    "held_out_conditions",
    "held_out_table",
    "restore_choices",
    "select_by_mode",
    "setting_lead",
    "setting_results",
    "split_words",
]


@dataclass(frozen=True)
class RowSpec:
    """A lead-table row of a setting family: the records of *role* (``steered``, ``control``, ``gate_control``)
    under each CWE's choice. See :class:`~vulnsteer.experiment.family.LeadEntry` for the other fields."""

    role: str
    name: str
    label: str
    control_of: str | None = None
    claim: str = ""
    what: str = ""
    headline: bool = False


@dataclass(frozen=True)
class SettingChoices:
    """A setting family's choices per mode and target, with the vectors and gating probes they apply (a run's
    own, or restored from its ``chosen/`` folder)."""

    choices: Mapping[str, Mapping[str, Choice]]
    vectors: Mapping[tuple[str, str], SteeringVector] = field(default_factory=dict)
    probes: Mapping[tuple[str, str], Probe] = field(default_factory=dict)

    @property
    def artefacts(self) -> Artefacts:
        return Artefacts(self.vectors, self.probes)

    @property
    def every_cwe(self) -> bool:
        """Whether its choices are one for every CWE (scope ``pooled``): they apply to a CWE the run never saw."""
        return any(c.scope == "pooled" for by in self.choices.values() for c in by.values())

    def restricted(self, targets: Sequence[str]) -> SettingChoices:
        """Only the choices of *targets* (the CWEs a dataset has, and ``"any"``); a choice made for every CWE
        (scope ``pooled``) is given to each of them, with its vector and gating probes under each, as the engine
        looks them up."""
        kept: dict[str, dict[str, Choice]] = {}
        vectors, probes = dict(self.vectors), dict(self.probes)
        for mode, by in self.choices.items():
            one = next((c for c in by.values() if c.scope == "pooled"), None)
            if one is None:
                kept[mode] = {t: c for t, c in by.items() if t in targets}
                continue
            kept[mode] = {t: dataclasses.replace(one, target=t) for t in targets if t != POOLED}
            for target in kept[mode]:
                vectors.update({(target, k): v for (owner, k), v in self.vectors.items() if owner == one.target})
                probes.update({(target, k): p for (owner, k), p in self.probes.items() if owner == one.target})
        return dataclasses.replace(self, choices=kept, vectors=vectors, probes=probes)


def split_words(split: str) -> str:
    """How a sentence names a split: ``test``, ``val``, or (other datasets) ``all samples``."""
    return "all samples" if split == "all" else split


def select_by_mode(val: ValContext, pooled: bool, scope: str = "per_cwe") -> dict[str, dict[str, Choice]]:
    """Per mode, the choice per target made on the val records of the mode that chooses for it (the
    family's own conditions, the baseline first). *scope* ``per_cwe``: each CWE's choice from its own val samples;
    ``pooled``: one choice from every CWE's val samples together, the same for every CWE."""
    if scope not in SCOPES:
        raise ValueError(f"a selection scope is one of {', '.join(SCOPES)}, got {scope!r}")

    def pick(mode: str, conds: Sequence[Condition]) -> dict[str, Choice]:
        by = f"{mode} mode, val split"
        if scope == "per_cwe":
            return select_settings(conds, val.records, val.cwes, pooled, by)
        one = select_settings(conds, val.records, [POOLED], False, f"{by}, every CWE together").get(POOLED)
        return {} if one is None else {cwe: dataclasses.replace(one, target=cwe, scope="pooled") for cwe in val.cwes}

    return val.by_detection_mode({mode: pick(mode, conds) for mode, conds in val.conditions.items()})


def held_out_conditions(
    choices: Mapping[str, Choice], mode: str, split: str, control_seed: int, cross: bool = True
) -> list[Condition]:
    """The baseline and, per target with a best setting, that setting steered and its controls. With *cross* a
    CWE's vector runs on every sample of the split (the cross-CWE matrix), else on its own CWE's samples."""
    conds = [Condition("baseline", mode, split)]
    for target, choice in choices.items():
        if choice.best is None:
            continue
        cover = "all" if cross or target == POOLED else "target"
        for role in ("steered", "control", "gate_control") if choice.best.gated else ("steered", "control"):
            conds.append(choice.best.condition(role, mode, split, target, cover, control_seed))
    return conds


def _only(records: Sequence[DetectionRecord], cwe: str) -> list[DetectionRecord]:
    return [r for r in records if r.cwe == cwe]


def _block(records: Sequence[DetectionRecord], seed: int) -> MetricBlock:
    return MetricBlock.from_json(metrics_block(records, seed))


def _row(
    cwe: str,
    split: str,
    base: Sequence[DetectionRecord],
    steered: Sequence[DetectionRecord] | None,
    controls: Mapping[str, Sequence[DetectionRecord] | None],
    label: str,
    seed: int,
) -> HeldOutRow:
    """One row: baseline vs steered vs its controls (by role) on one CWE's samples (steered None: the baseline
    was chosen). A gate control (a gated setting) brings the lever rate."""
    base_m = _block(base, seed)
    if steered is None:
        words = (
            "no steered setting beat the baseline on validation, so the baseline is what the "
            f"{split_words(split)} numbers show"
        )
        return HeldOutRow(
            base_m.n, base_m.n_pairs, split, base_m, label, base_m, 0.0, (0.0, 0.0), 1.0, Flips(0, 0), words
        )
    comp = compare_to_baseline(base, steered, [cwe], seed)[cwe]
    found = {}
    for role, records in controls.items():
        if records:
            block = _block(records, seed)
            found[role] = Control(block, _delta(block, base_m))
    control = found.get("control")
    right_to_wrong, wrong_to_right = comp["mcnemar_b"], comp["mcnemar_c"]
    lo, hi = comp["delta_ci"]
    words = verdict_words(
        comp["delta_balanced_accuracy"],
        comp["delta_ci"],
        comp["mcnemar_p"],
        None if control is None else control.delta,
        split_words(split),
        (right_to_wrong, wrong_to_right),
    )
    return HeldOutRow(
        base_m.n,
        base_m.n_pairs,
        split,
        base_m,
        label,
        _block(steered, seed),
        comp["delta_balanced_accuracy"],
        (lo, hi),
        comp["mcnemar_p"],
        Flips(wrong_to_right, right_to_wrong),
        words,
        found,
        lever_rate(steered) if "gate_control" in found else None,
    )


def _delta(block: MetricBlock, base: MetricBlock) -> float | None:
    if block.balanced_accuracy is None or base.balanced_accuracy is None:
        return None
    return block.balanced_accuracy - base.balanced_accuracy


def held_out_table(
    choices: Mapping[str, Choice],
    records: Mapping[str, Sequence[DetectionRecord]],
    mode: str,
    split: str,
    cwes: Sequence[str],
    control_seed: int,
    seed: int = 0,
    cross: bool = True,
) -> HeldOutTable:
    """Per CWE the row of its choice, the pooled vector's rows (per CWE and overall), and the cross-CWE matrix
    (vector A at its best steered setting on CWE B's samples, change vs baseline; empty without *cross*)."""
    base_all = records[Condition("baseline", mode, split).key]
    conds = {(c.role, c.vector): c for c in held_out_conditions(choices, mode, split, control_seed, cross)}

    def of(role: str, target: str) -> list[DetectionRecord] | None:
        cond = conds.get((role, target))
        return None if cond is None else list(records[cond.key])

    present = [cwe for cwe in cwes if _only(base_all, cwe)]
    rows: dict[str, HeldOutRow] = {}
    for cwe in present:
        choice = choices.get(cwe)
        if choice is None or choice.best is None:
            continue
        base = _only(base_all, cwe)
        steered = _only(of("steered", cwe) or [], cwe)
        controls = {role: _only(recs, cwe) for role in ("gate_control", "control") if (recs := of(role, cwe))}
        label = choice.best.label()
        row = _row(cwe, split, base, steered, controls, label, seed)
        if choice.chosen == "steered":
            rows[cwe] = row
        else:
            kept = _row(cwe, split, base, None, {}, "baseline (no steered setting beat it on val)", seed)
            rows[cwe] = dataclasses.replace(kept, best_not_chosen=row)
    pooled_rows: dict[str, HeldOutRow] = {}
    pooled = choices.get(POOLED)
    if pooled is not None and pooled.best is not None:
        steered, control = of("steered", POOLED) or [], of("control", POOLED)
        for cwe in [*present, "overall"]:

            def part(recs: Sequence[DetectionRecord], cwe: str = cwe) -> list[DetectionRecord]:
                return [dataclasses.replace(r, cwe=cwe) for r in recs if cwe == "overall" or r.cwe == cwe]

            pooled_rows[cwe] = _row(
                cwe, split, part(base_all), part(steered), {"control": part(control or [])}, pooled.best.label(), seed
            )
    vectors = [t for t in [*present, POOLED] if cross and t in choices and choices[t].best is not None]
    matrix: list[tuple[float | None, ...]] = []
    for target in vectors:
        steered = of("steered", target) or []
        line: list[float | None] = []
        for cwe in present:
            b, s = balanced_accuracy(base_all, cwe), balanced_accuracy(steered, cwe)
            line.append(None if b is None or s is None else s - b)
        matrix.append(tuple(line))
    cross_cwe = CrossCwe(
        tuple(vectors),
        tuple(present) if cross else (),
        tuple(matrix),
        split,
        {t: choices[t].chosen for t in vectors},
        {t: best.label() for t in vectors if (best := choices[t].best) is not None},
    )
    return HeldOutTable(split, rows, pooled_rows, cross_cwe)


def chosen_records(
    cwes: Sequence[str],
    by_target: Mapping[str, Choice],
    mode: str,
    split: str,
    role: str,
    records: Mapping[str, Sequence[DetectionRecord]],
    cover: str,
    control_seed: int,
) -> dict[str, list[DetectionRecord] | None]:
    """Per CWE, the held-out records of its chosen setting (as *role*), or None where the baseline won."""
    out: dict[str, list[DetectionRecord] | None] = {}
    for cwe in cwes:
        choice = by_target.get(cwe)
        if choice is None or choice.best is None or choice.chosen != "steered":
            out[cwe] = None
            continue
        cond = choice.best.condition(role, mode, split, cwe, cover, control_seed)
        out[cwe] = [r for r in records[cond.key] if r.cwe == cwe]
    return out


def setting_lead(
    rows: Sequence[RowSpec], by_target: Mapping[str, Choice], mode: str, held: HeldOut, cover: str
) -> list[LeadEntry]:
    """The family's lead-table entries in *mode*: per row, each CWE's chosen setting in that role (the
    baseline's records where the baseline won), so every entry covers exactly the baseline's samples."""
    base = held.baseline(mode)
    out = []
    for spec in rows:
        picked = chosen_records(
            held.cwes, by_target, mode, held.split, spec.role, held.records, cover, held.control_seed
        )
        out.append(
            LeadEntry(
                spec.name,
                spec.label,
                compose(held.cwes, base, picked),
                spec.control_of,
                spec.claim,
                spec.what,
                spec.headline,
            )
        )
    return out


def examples(
    choices: Mapping[str, Choice], records: Mapping[str, Sequence[DetectionRecord]], mode: str, split: str, n: int,
    control_seed: int, cross: bool,
) -> list[Example]:  # fmt: skip
    """Per CWE, up to *n* samples of *split* (the held-out samples, never val's): the baseline's and the chosen
    (else best) steered setting's generated text."""
    base = {r.sample_id: r for r in records.get(Condition("baseline", mode, split).key, [])}
    out = []
    for cwe, choice in choices.items():
        if choice.best is None or cwe == POOLED:
            continue
        cover = "all" if cross else "target"
        steered = records.get(choice.best.condition("steered", mode, split, cwe, cover, control_seed).key, [])
        for r in [r for r in steered if r.cwe == cwe][:n]:
            b = base.get(r.sample_id)
            out.append(
                Example(
                    cwe,
                    r.sample_id,
                    "vulnerable" if r.y_true else "secure",
                    choice.chosen,
                    choice.best.label(),
                    b.text if b else None,
                    b.verdict if b else None,
                    r.text,
                    r.verdict,
                    split,
                )
            )
    return out


def apply_settings(
    chosen: SettingChoices, held: HeldOut, rows: Sequence[RowSpec], cross_modes: Sequence[str]
) -> Applied:
    """A setting family's rows on held-out data: per mode its per-CWE table, its lead entries and (generation
    mode) its examples. *cross_modes*: the modes whose vectors also run on every other CWE's samples."""
    lead, tables, found = {}, {}, {}
    for mode in held.modes:
        by_target = chosen.choices.get(mode)
        if by_target is None:
            continue
        cross = mode in cross_modes
        tables[mode] = held_out_table(
            by_target, held.records, mode, held.split, held.cwes, held.control_seed, held.seed, cross
        )
        lead[mode] = setting_lead(rows, by_target, mode, held, "all" if cross else "target")
        if mode == "generation" and held.n_examples:
            found[mode] = examples(by_target, held.records, mode, held.split, held.n_examples, held.control_seed, cross)
    return Applied(lead, tables, found)


def conditions_of(chosen: SettingChoices, held: HeldOut, cross_modes: Sequence[str]) -> list[Condition]:
    """What a setting family scores on held-out data: per mode, the baseline and every chosen setting with its
    controls."""
    return [
        c
        for mode in held.modes
        if mode in chosen.choices
        for c in held_out_conditions(chosen.choices[mode], mode, held.split, held.control_seed, mode in cross_modes)
    ]


def save_choices(chosen: SettingChoices, run: Path) -> Saved:
    """Every chosen (target, method@pooling) vector and gating probe under ``RUN/chosen/``, and the family's
    entry of ``chosen.json`` (per mode and target: the choice and its files)."""
    entry = {
        mode: {
            target: save_choice_files(run, target, choice, chosen.vectors, chosen.probes)
            for target, choice in by_target.items()
        }
        for mode, by_target in chosen.choices.items()
    }
    return Saved(chosen=entry)


def restore_choices(entry: JsonObject, run: Path, lm: LoadedModel, allow_mismatch: bool) -> SettingChoices:
    """The choices of a family's ``chosen.json`` entry with their vectors and gating probes (refusing another
    model's unless mismatches are allowed)."""
    choices: dict[str, dict[str, Choice]] = {}
    for mode, by in entry.items():
        for target, item in by.items():
            try:
                choices.setdefault(mode, {})[target] = Choice.from_dict(item)
            except (KeyError, TypeError, ValueError) as exc:
                where = Path(run) / CHOSEN_DIR / CHOSEN_NAME
                raise ValueError(f"{where}: choice {mode}.{target}: {exc}") from None
    vectors: dict[tuple[str, str], SteeringVector] = {}
    probes: dict[tuple[str, str], Probe] = {}
    for mode, by_target in entry.items():
        for target, item in by_target.items():
            best = choices[mode][target].best
            if item.get("vector") and best is not None:
                vectors[(target, best.method_key)] = SteeringVector.load(
                    Path(run) / "chosen" / item["vector"],
                    hidden_size=lm.hidden_size,
                    model=None if allow_mismatch else lm.identity,
                )
                probes.update(load_probes(run, item, target))
    return SettingChoices(choices, vectors, probes)


def setting_results(
    family: str,
    label: str,
    controls: Mapping[str, str],
    chosen: SettingChoices | None,
    applied: Applied | None,
    **fitted: Any,
) -> FamilyResults:
    """What results.json says about a setting family: its choices, its per-CWE rows and examples (when it got
    that far), its controls' columns, and what it fitted (*fitted*: :class:`FamilyResults` fields)."""
    return FamilyResults(
        family,
        label,
        controls,
        choices=chosen.choices if chosen else {},
        held_out=applied.held_out if applied else {},
        examples={m: tuple(e) for m, e in applied.examples.items()} if applied else {},
        notes=applied.notes if applied else (),
        **fitted,
    )
