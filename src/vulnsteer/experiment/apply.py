"""The apply engine: chosen settings in, baseline vs chosen vs random-control rows out.

Every evaluation on held-out data goes through :func:`apply_choices`: the protocol's test phase, ``vulnsteer
evaluate --from RUN`` (a run's choices on another dataset) and ``vulnsteer evaluate --vectors DIR`` (saved vectors
at a strength the user gives). So all three emit the same rows:

- per CWE: the baseline, the chosen setting with that CWE's vector, its random-direction control (same norms,
  same layers), the change in balanced accuracy with a paired 95% bootstrap CI, McNemar's exact p, the answers that
  flipped each way, and a sentence saying whether the change is real (where the baseline won on validation, the
  best steered setting is still shown, "for information only");
- the pooled ("any weakness") vector's rows, per CWE and overall, when there is one;
- the cross-CWE matrix (each CWE's vector at its best setting on every CWE's samples), in the modes that ask.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..data.sample import Sample
from ..detection.prefix import PrefixStore
from ..detection.records import DetectionRecord
from ..lm.activations import ActivationSink
from ..lm.model import LoadedModel
from ..stats.compare import compare_to_baseline, metrics_block, verdict_words
from ..steering.gate import LinearProbe
from ..steering.vectors import SteeringVector
from .engine import DEFAULT_OPTIONS, Executor, ResultStore, ScoringOptions, run_conditions
from .grid import POOLED, Condition
from .select import Choice, balanced_accuracy

__all__ = ["Applied", "apply_choices", "held_out_conditions", "held_out_results", "lever_rate", "split_words"]


def lever_rate(records: Sequence[DetectionRecord]) -> dict[str, Any]:
    """How often the verdict follows the direction a gate pushed: among records with a non-zero push, the share
    answering "vulnerable" where the push was toward vulnerable and "secure" where it was toward secure.

    >>> from vulnsteer.detection.records import DetectionRecord
    >>> recs = [DetectionRecord("a", "CWE-89", "p", 1, "vulnerable", push=1.0),
    ...         DetectionRecord("b", "CWE-89", "p", 0, "vulnerable", push=-1.0)]
    >>> lever_rate(recs)
    {'rate': 0.5, 'pushed': 2, 'followed': 1}
    """
    pushed = [r for r in records if r.push]
    followed = sum(1 for r in pushed if r.verdict == ("vulnerable" if (r.push or 0) > 0 else "secure"))
    return {"rate": followed / len(pushed) if pushed else None, "pushed": len(pushed), "followed": followed}


def split_words(split: str) -> str:
    """How a sentence names a split: ``test``, ``val``, or (other datasets) ``all samples``."""
    return "all samples" if split == "all" else split


def held_out_conditions(
    choices: Mapping[str, Choice], mode: str, split: str, control_seed: int, cross: bool = True
) -> list[Condition]:
    """The baseline and, per target with a best setting, that setting steered and its random control. With *cross*
    a CWE's vector runs on every sample of the split (the cross-CWE matrix), else on its own CWE's samples."""
    conds = [Condition("baseline", mode, split)]
    for target, choice in choices.items():
        if choice.best is None:
            continue
        cover = "all" if cross or target == POOLED else "target"
        for kind in ("steered", "control", "gate_control") if choice.best.gated else ("steered", "control"):
            conds.append(choice.best.condition(kind, mode, split, target, cover, control_seed))
    return conds


def _only(records: Sequence[DetectionRecord], cwe: str) -> list[DetectionRecord]:
    return [r for r in records if r.cwe == cwe]


def _row(
    cwe: str,
    split: str,
    base: Sequence[DetectionRecord],
    steered: Sequence[DetectionRecord] | None,
    control: Sequence[DetectionRecord] | None,
    label: str,
    seed: int,
    gate_control: Sequence[DetectionRecord] | None = None,
) -> dict[str, Any]:
    """One row: baseline vs steered vs control on one CWE's samples (steered None: the baseline was chosen)."""
    base_m = metrics_block(base, seed)
    row: dict[str, Any] = {
        "n": base_m["n"],
        "n_pairs": base_m["n_pairs"],
        "split": split,
        "baseline": base_m,
        "chosen": label,
    }
    if steered is None:
        row.update(
            {
                "steered": base_m,
                "control": None,
                "control_delta": None,
                "delta": 0.0,
                "delta_ci": [0.0, 0.0],
                "p_value": 1.0,
                "flips": {"wrong_to_right": 0, "right_to_wrong": 0},
                "words": "no steered setting beat the baseline on validation, so the baseline is what the "
                f"{split_words(split)} numbers show",
            }
        )
        return row
    steered_m = metrics_block(steered, seed)
    comp = compare_to_baseline(base, steered, [cwe], seed)[cwe]
    control_m = metrics_block(control, seed) if control else None
    control_delta = control_m["balanced_accuracy"] - base_m["balanced_accuracy"] if control_m else None
    flips = (comp["mcnemar_b"], comp["mcnemar_c"])
    if gate_control:
        gate_m = metrics_block(gate_control, seed)
        row["gate_control"] = gate_m
        row["gate_control_delta"] = gate_m["balanced_accuracy"] - base_m["balanced_accuracy"]
        row["lever_rate"] = lever_rate(steered)
    row.update(
        {
            "steered": steered_m,
            "control": control_m,
            "control_delta": control_delta,
            "delta": comp["delta_balanced_accuracy"],
            "delta_ci": comp["delta_ci"],
            "p_value": comp["mcnemar_p"],
            "flips": {"wrong_to_right": flips[1], "right_to_wrong": flips[0]},
            "words": verdict_words(
                comp["delta_balanced_accuracy"],
                comp["delta_ci"],
                comp["mcnemar_p"],
                control_delta,
                split_words(split),
                flips,
            ),
        }
    )
    return row


def held_out_results(
    choices: Mapping[str, Choice],
    records: Mapping[str, Sequence[DetectionRecord]],
    mode: str,
    split: str,
    cwes: Sequence[str],
    control_seed: int,
    seed: int = 0,
    cross: bool = True,
) -> dict[str, Any]:
    """``rows`` (per CWE), ``pooled`` (the pooled vector's rows, per CWE and overall) and ``cross_cwe`` (vector A
    at its best steered setting on CWE B's samples, change vs baseline; empty without *cross*)."""
    base_all = records[Condition("baseline", mode, split).key]
    conds = {(c.kind, c.vector): c for c in held_out_conditions(choices, mode, split, control_seed, cross)}

    def pair(target: str) -> tuple[list[DetectionRecord], list[DetectionRecord]]:
        return list(records[conds[("steered", target)].key]), list(records[conds[("control", target)].key])

    def gate_control(target: str) -> list[DetectionRecord] | None:
        cond = conds.get(("gate_control", target))
        return None if cond is None else _only(records[cond.key], target)

    present = [cwe for cwe in cwes if _only(base_all, cwe)]
    rows: dict[str, Any] = {}
    for cwe in present:
        choice = choices.get(cwe)
        if choice is None or choice.best is None:
            continue
        base = _only(base_all, cwe)
        steered, control = (_only(recs, cwe) for recs in pair(cwe))
        label = choice.best.label()
        gated = gate_control(cwe)
        if choice.chosen == "steered":
            rows[cwe] = _row(cwe, split, base, steered, control, label, seed, gated)
        else:
            rows[cwe] = _row(cwe, split, base, None, None, "baseline (no steered setting beat it on val)", seed)
            rows[cwe]["best_steered_not_chosen"] = _row(cwe, split, base, steered, control, label, seed, gated)
    pooled_rows: dict[str, Any] = {}
    pooled = choices.get(POOLED)
    if pooled is not None and pooled.best is not None:
        steered, control = pair(POOLED)
        for cwe in [*present, "overall"]:

            def part(recs: Sequence[DetectionRecord], cwe: str = cwe) -> list[DetectionRecord]:
                return [dataclasses.replace(r, cwe=cwe) for r in recs if cwe == "overall" or r.cwe == cwe]

            pooled_rows[cwe] = _row(cwe, split, part(base_all), part(steered), part(control), pooled.best.label(), seed)
    vectors = [t for t in [*present, POOLED] if cross and t in choices and choices[t].best is not None]
    matrix: list[list[float | None]] = []
    for target in vectors:
        steered, _ = pair(target)
        line: list[float | None] = []
        for cwe in present:
            b, s = balanced_accuracy(base_all, cwe), balanced_accuracy(steered, cwe)
            line.append(None if b is None or s is None else s - b)
        matrix.append(line)
    cross_cwe = {
        "vectors": vectors,
        "targets": present if cross else [],
        "delta_balanced_accuracy": matrix,
        "split": split,
        "chosen": {t: choices[t].chosen for t in vectors},
        "settings": {t: best.label() for t in vectors if (best := choices[t].best) is not None},
    }
    return {"rows": rows, "pooled": pooled_rows, "cross_cwe": cross_cwe}


@dataclass
class Applied:
    """What :func:`apply_choices` found: per mode ``{"rows", "pooled", "cross_cwe"}``, and every record."""

    by_mode: dict[str, dict[str, Any]] = field(default_factory=dict)
    records: dict[str, list[DetectionRecord]] = field(default_factory=dict)
    conditions: list[Condition] = field(default_factory=list)


def apply_choices(
    lm: LoadedModel,
    choices: Mapping[str, Mapping[str, Choice]],
    samples: Mapping[str, Sequence[Sample]],
    vectors: Mapping[tuple[str, str], SteeringVector],
    store: ResultStore,
    *,
    split: str,
    control_seed: int,
    cross_cwe_modes: Sequence[str] = ("logit",),
    options: ScoringOptions = DEFAULT_OPTIONS,
    seed: int = 0,
    probes: Mapping[tuple[str, str], LinearProbe] | None = None,
    sink: ActivationSink | None = None,
    prefix_store: PrefixStore | None = None,
    executor: Executor | None = None,
) -> Applied:
    """Apply each mode's choices (``{mode: {target: Choice}}``) to *samples* (by CWE), scoring only what *store*
    does not hold yet, and build the rows. Nothing is selected here.

    >>> applied = apply_choices(lm, {"logit": choices}, data.by_cwe("test"), vectors, ResultStore("r.jsonl"),
    ...                         split="test", control_seed=1234)  # doctest: +SKIP
    >>> applied.by_mode["logit"]["rows"]["CWE-89"]["delta"]  # doctest: +SKIP
    0.0
    """
    conds = [
        c
        for mode, by_target in choices.items()
        for c in held_out_conditions(by_target, mode, split, control_seed, mode in cross_cwe_modes)
    ]
    records = run_conditions(
        lm,
        conds,
        store,
        lambda _split: samples,
        vectors,
        options,
        probes=probes,
        sink=sink,
        prefix_store=prefix_store,
        executor=executor,
    )
    applied = Applied(records=records, conditions=conds)
    cwes = list(samples)
    for mode, by_target in choices.items():
        applied.by_mode[mode] = held_out_results(
            by_target, records, mode, split, cwes, control_seed, seed, mode in cross_cwe_modes
        )
    return applied
