"""The first screen of a report: every detector on the same held-out samples, with CIs and p-values against the
baseline.

Rows (those a run has): the baseline; the calibrated baseline (the unsteered answer margin, threshold chosen on
val); the best prompt (chosen on val); constant steering (each CWE's setting chosen on val, or the baseline where it
won) and its random-direction control; conditional steering (likewise) with its two controls, the random gate and
the random behaviour vector; the probe alone (the gate's own verdict, no model). Each CWE contributes its own
choice, so every row covers exactly the baseline's samples.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..config import ExperimentConfig
from ..detection.records import DetectionRecord
from ..stats.compare import compare_to_baseline, metrics_block
from .apply import lever_rate
from .conditional import calibrated_records
from .grid import Condition
from .select import Choice

#: The rows that control conditional steering (each is also compared with it directly).
CONTROLS: tuple[str, ...] = ("gate_control", "vector_control")

__all__ = [
    "CONTROLS",
    "LeadEntry",
    "build_lead",
    "chosen_records",
    "compose",
    "lead_table",
    "lead_words",
    "margins_by_class",
]


@dataclass(frozen=True)
class LeadEntry:
    """One detector of the lead table: its name, what it is, and its records on the held-out samples."""

    name: str
    label: str
    records: Sequence[DetectionRecord]


def compose(
    cwes: Sequence[str],
    base: Sequence[DetectionRecord],
    per_cwe: Mapping[str, Sequence[DetectionRecord] | None],
) -> list[DetectionRecord]:
    """Per CWE, *per_cwe*'s records (its chosen setting) or, where there are none (the baseline won), the
    baseline's: one record per baseline sample."""
    out: list[DetectionRecord] = []
    for cwe in cwes:
        chosen = per_cwe.get(cwe)
        out += [r for r in (chosen if chosen is not None else base) if r.cwe == cwe]
    return out


def lead_table(base: Sequence[DetectionRecord], entries: Sequence[LeadEntry], seed: int = 0) -> list[dict[str, Any]]:
    """One row per detector: balanced accuracy [CI], pair accuracy, Δ vs the baseline [paired CI], McNemar p,
    flips, and (for pushed records) the lever rate."""
    rows = []
    base_m = metrics_block(base, seed)
    rows.append(
        {
            "name": "baseline",
            "label": "the model as it is (default prompt)",
            "metrics": base_m,
            "delta": 0.0,
            "delta_ci": [0.0, 0.0],
            "p_value": 1.0,
            "flips": None,
        }
    )
    ids = {r.sample_id for r in base}
    conditional = next((e for e in entries if e.name == "conditional"), None)
    for entry in entries:
        recs = [r for r in entry.records if r.sample_id in ids]
        if {r.sample_id for r in recs} != ids:
            continue
        comp = compare_to_baseline(base, recs, [], seed)["overall"]
        row = {
            "name": entry.name,
            "label": entry.label,
            "metrics": metrics_block(recs, seed),
            "delta": comp["delta_balanced_accuracy"],
            "delta_ci": comp["delta_ci"],
            "p_value": comp["mcnemar_p"],
            "flips": {"wrong_to_right": comp["mcnemar_c"], "right_to_wrong": comp["mcnemar_b"]},
        }
        if any(r.push for r in recs):
            row["lever_rate"] = lever_rate(recs)
        if conditional is not None and entry.name in CONTROLS:
            # the control against conditional steering, paired on the same samples (> 0: conditional is better)
            versus = compare_to_baseline(recs, [r for r in conditional.records if r.sample_id in ids], [], seed)
            o = versus["overall"]
            row["conditional_vs"] = {
                "delta": o["delta_balanced_accuracy"],
                "delta_ci": o["delta_ci"],
                "p_value": o["mcnemar_p"],
            }
        rows.append(row)
    return rows


def _find(rows: Sequence[Mapping[str, Any]], name: str) -> Mapping[str, Any] | None:
    return next((r for r in rows if r["name"] == name), None)


def lead_words(rows: Sequence[Mapping[str, Any]], split: str) -> str:
    """What beat what, in one or two sentences (significance: McNemar p < 0.05 and a CI that excludes 0).

    >>> rows = [{"name": "baseline", "metrics": {"balanced_accuracy": 0.5}},
    ...         {"name": "conditional", "metrics": {"balanced_accuracy": 0.8}, "delta": 0.3, "delta_ci": [0.1, 0.5],
    ...          "p_value": 0.001},
    ...         {"name": "gate_control", "metrics": {"balanced_accuracy": 0.52}, "delta": 0.02,
    ...          "delta_ci": [-0.1, 0.1], "p_value": 0.8,
    ...          "conditional_vs": {"delta": 0.28, "delta_ci": [0.1, 0.45], "p_value": 0.002}},
    ...         {"name": "probe", "metrics": {"balanced_accuracy": 0.82}}]
    >>> print(lead_words(rows, "test"))
    On test, conditional steering scores balanced accuracy 0.800 against the baseline's 0.500 (Δ +0.300, \
p=0.001: significant); the random gate scores 0.520 (conditional +0.280 [+0.10, +0.45], p=0.002: the probe's \
reading matters); the probe alone scores 0.820 (the ceiling conditional steering can reach through the model).
    """
    base = _find(rows, "baseline")
    cond = _find(rows, "conditional")
    if base is None:
        return ""
    b = base["metrics"]["balanced_accuracy"]
    if cond is None:
        best = max(rows, key=lambda r: r["metrics"]["balanced_accuracy"])
        return (
            f"On {split}, the best detector is {best['name']} at balanced accuracy "
            f"{best['metrics']['balanced_accuracy']:.3f} (baseline {b:.3f})."
        )
    c = cond["metrics"]["balanced_accuracy"]
    sig = cond["p_value"] < 0.05 and (cond["delta_ci"][0] > 0 or cond["delta_ci"][1] < 0)
    words = [
        f"On {split}, conditional steering scores balanced accuracy {c:.3f} against the baseline's {b:.3f} "
        f"(Δ {cond['delta']:+.3f}, p={cond['p_value']:.3g}: {'significant' if sig else 'not significant'})"
    ]
    for name, what, claim in (
        ("gate_control", "the random gate", "the probe's reading matters"),
        ("vector_control", "the random behaviour vector", "the direction pushed matters"),
    ):
        control = _find(rows, name)
        if control is None:
            continue
        versus = control.get("conditional_vs")
        score = f"{what} scores {control['metrics']['balanced_accuracy']:.3f}"
        if versus is None:
            words.append(score)
            continue
        lo, hi = versus["delta_ci"]
        decided = versus["p_value"] < 0.05 and lo > 0
        words.append(
            f"{score} (conditional {versus['delta']:+.3f} [{lo:+.2f}, {hi:+.2f}], p={versus['p_value']:.3g}: "
            + (f"{claim})" if decided else "no evidence yet that " + claim + ")")
        )
    probe = _find(rows, "probe")
    if probe is not None:
        words.append(
            f"the probe alone scores {probe['metrics']['balanced_accuracy']:.3f} (the ceiling conditional "
            "steering can reach through the model)"
        )
    return "; ".join(words) + "."


def margins_by_class(records: Sequence[DetectionRecord]) -> dict[str, list[float]]:
    """Answer margins split by the truth (for the margin-distribution plot)."""
    out: dict[str, list[float]] = {"vulnerable": [], "secure": []}
    for r in records:
        if r.margin is not None:
            out["vulnerable" if r.y_true == 1 else "secure"].append(float(r.margin))
    return out


def chosen_records(
    cwes: Sequence[str],
    by_target: Mapping[str, Choice],
    mode: str,
    kind: str,
    records: Mapping[str, Sequence[DetectionRecord]],
    cover: str,
    control_seed: int,
) -> dict[str, list[DetectionRecord] | None]:
    """Per CWE, the test records of its chosen setting (as *kind*), or None where the baseline won."""
    out: dict[str, list[DetectionRecord] | None] = {}
    for cwe in cwes:
        choice = by_target.get(cwe)
        if choice is None or choice.best is None or choice.chosen != "steered":
            out[cwe] = None
            continue
        cond = choice.best.condition(kind, mode, "test", cwe, cover, control_seed)
        out[cwe] = [r for r in records[cond.key] if r.cwe == cwe]
    return out


def build_lead(
    config: ExperimentConfig,
    cwes: Sequence[str],
    choices: Mapping[str, Mapping[str, Choice]],
    conditional: Mapping[str, Mapping[str, Choice]],
    templates: Mapping[str, Mapping[str, str]],
    val_records: Mapping[str, Sequence[DetectionRecord]],
    records: Mapping[str, Sequence[DetectionRecord]],
    probe: Sequence[DetectionRecord],
) -> tuple[dict[str, Any], dict[str, float]]:
    """Per mode, every detector on the same test samples (the rows listed in the module docstring), the words,
    and the answer margins by class (logit mode); also the calibrated baseline's thresholds (chosen on val)."""
    cfg, seed = config, config.data.seed
    out: dict[str, Any] = {}
    calibrated: list[DetectionRecord] | None = None
    thresholds: dict[str, float] = {}
    val_base = val_records.get(Condition("baseline", "logit", "val").key)
    if cfg.baselines.calibrated and val_base is not None and "logit" in cfg.detection.modes:
        test_base = records[Condition("baseline", "logit", "test").key]
        calibrated, thresholds = calibrated_records(val_base, test_base, cwes)
    seed_c = cfg.steering.control_seed
    for mode in cfg.detection.modes:
        base = records[Condition("baseline", mode, "test").key]
        entries = []
        if calibrated is not None:
            entries.append(
                LeadEntry("calibrated", "unsteered logit margin, threshold per CWE chosen on val", calibrated)
            )
        prompt = {
            cwe: None if name == "default" else list(records[Condition("baseline", mode, "test", template=name).key])
            for cwe, name in templates[mode].items()
        }
        entries.append(LeadEntry("prompt", "best prompt template per CWE (chosen on val)", compose(cwes, base, prompt)))
        cover = "all" if mode in cfg.detection.cross_cwe_modes else "target"
        families: list[tuple[Mapping[str, Mapping[str, Choice]], str, tuple[tuple[str, str, str], ...]]] = [
            (
                choices,
                cover,
                (
                    ("steered", "constant", "constant steering (setting per CWE chosen on val)"),
                    ("control", "constant_control", "its random-direction control"),
                ),
            )
        ]
        if conditional:
            families.append(
                (
                    conditional,
                    "target",
                    (
                        ("steered", "conditional", "conditional steering (probe-gated; setting per CWE chosen on val)"),
                        ("gate_control", "gate_control", "random gate: the same push gated by a random direction"),
                        ("control", "vector_control", "random behaviour vector of the same norm under the real gate"),
                    ),
                )
            )
        for by_mode, family_cover, kinds in families:
            for kind, name, label in kinds:
                picked = chosen_records(cwes, by_mode[mode], mode, kind, records, family_cover, seed_c)
                entries.append(LeadEntry(name, label, compose(cwes, base, picked)))
        if probe:
            entries.append(LeadEntry("probe", "the gating probe alone (its own verdict, no model)", probe))
        rows = lead_table(base, entries, seed)
        out[mode] = {"split": "test", "rows": rows, "words": lead_words(rows, "test")}
        if mode == "logit":
            gated = next((e.records for e in entries if e.name == "conditional"), None)
            out[mode]["margins"] = {
                "baseline": margins_by_class(base),
                **({"conditional": margins_by_class(gated)} if gated else {}),
            }
    return out, thresholds
