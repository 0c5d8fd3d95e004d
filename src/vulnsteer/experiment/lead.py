"""The first screen of a report: every detector on the same held-out samples, with CIs and p-values against the
baseline.

The rows are the baseline and, in the order of the families, every :class:`~vulnsteer.experiment.family.LeadEntry`
the families contribute (each CWE contributing its own choice, so every row covers exactly the baseline's samples;
an entry that does not is left out). A control is also compared with the detector it controls, on the same
samples. The words lead with the headline detector and its controls; without one they name the best detector.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..detection.records import DetectionRecord
from ..stats.compare import compare_to_baseline, metrics_block, significant, significant_gain
from .family import LeadEntry
from .tables import Change, Flips, LeadRow, LeadTable, LeverRate, MarginsByClass, MetricBlock

__all__ = ["BASELINE_LABEL", "build_lead", "compose", "lead_rows", "lead_words", "lever_rate", "margins_by_class"]

BASELINE_LABEL = "the model as it is (default template)"


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


def lever_rate(records: Sequence[DetectionRecord]) -> LeverRate:
    """How often the verdict follows the direction a gate pushed: among records with a non-zero push, the share
    answering "vulnerable" where the push was toward vulnerable and "secure" where it was toward secure.

    >>> from vulnsteer.detection.records import DetectionRecord
    >>> recs = [DetectionRecord("a", "CWE-89", "p", 1, "vulnerable", push=1.0),
    ...         DetectionRecord("b", "CWE-89", "p", 0, "vulnerable", push=-1.0)]
    >>> lever_rate(recs)
    LeverRate(rate=0.5, pushed=2, followed=1)
    """
    pushed = [r for r in records if r.push]
    followed = sum(1 for r in pushed if r.verdict == ("vulnerable" if (r.push or 0) > 0 else "secure"))
    return LeverRate(followed / len(pushed) if pushed else None, len(pushed), followed)


def _change(base: Sequence[DetectionRecord], other: Sequence[DetectionRecord], seed: int) -> tuple[Change, Flips]:
    o = compare_to_baseline(base, other, [], seed)["overall"]
    lo, hi = o["delta_ci"]
    return Change(o["delta_balanced_accuracy"], (lo, hi), o["mcnemar_p"]), Flips(o["mcnemar_c"], o["mcnemar_b"])


def lead_rows(base: Sequence[DetectionRecord], entries: Sequence[LeadEntry], seed: int = 0) -> tuple[LeadRow, ...]:
    """One row per detector: balanced accuracy [CI], pair accuracy, Δ vs the baseline [paired CI], McNemar p,
    flips, and (for pushed records) the lever rate; a control also against the detector it controls."""
    rows = [LeadRow("baseline", BASELINE_LABEL, MetricBlock.from_json(metrics_block(base, seed)))]
    ids = {r.sample_id for r in base}
    by_name = {e.name: e for e in entries}
    for entry in entries:
        recs = [r for r in entry.records if r.sample_id in ids]
        if {r.sample_id for r in recs} != ids:
            continue
        change, flips = _change(base, recs, seed)
        versus = None
        target = by_name.get(entry.control_of or "")
        if target is not None:
            # the detector against its control, paired on the same samples (> 0: the detector is better)
            versus, _ = _change(recs, [r for r in target.records if r.sample_id in ids], seed)
        rows.append(
            LeadRow(
                entry.name,
                entry.label,
                MetricBlock.from_json(metrics_block(recs, seed)),
                change.delta,
                change.delta_ci,
                change.p_value,
                flips,
                lever_rate(recs) if any(r.push for r in recs) else None,
                entry.family,
                entry.control_of,
                versus,
                entry.headline,
            )
        )
    return tuple(rows)


def _ba(row: LeadRow) -> float:
    return float("nan") if row.metrics.balanced_accuracy is None else row.metrics.balanced_accuracy


def lead_words(rows: Sequence[LeadRow], entries: Sequence[LeadEntry], split: str) -> str:
    """What beat what, in one or two sentences (significance: McNemar p < 0.05 and a CI that excludes 0).

    >>> from vulnsteer.experiment.tables import Change, LeadRow, MetricBlock
    >>> rows = [LeadRow("baseline", "", MetricBlock(balanced_accuracy=0.5)),
    ...         LeadRow("steered", "", MetricBlock(balanced_accuracy=0.8), 0.3, (0.1, 0.5), 0.001),
    ...         LeadRow("random_gate", "", MetricBlock(balanced_accuracy=0.52), 0.02, (-0.1, 0.1), 0.8,
    ...                 control_of="steered", versus=Change(0.28, (0.1, 0.45), 0.002)),
    ...         LeadRow("reader", "", MetricBlock(balanced_accuracy=0.82))]
    >>> entries = [LeadEntry("steered", "", [], what="the steered model", headline=True),
    ...            LeadEntry("random_gate", "", [], "steered", "the reading matters", "the random gate"),
    ...            LeadEntry("reader", "", [], what="the reader alone", note="the ceiling")]
    >>> print(lead_words(rows, entries, "test"))
    On test, the steered model scores balanced accuracy 0.800 against the baseline's 0.500 (Δ +0.300, p=0.001: \
significant); the random gate scores 0.520 (steered +0.280 [+0.10, +0.45], p=0.002: the reading matters); the \
reader alone scores 0.820 (the ceiling).
    """
    base = next((r for r in rows if r.name == "baseline"), None)
    if base is None:
        return ""
    b = _ba(base)
    shown = {r.name: r for r in rows}
    spec = {e.name: e for e in entries}
    head = next((shown[e.name] for e in entries if e.headline and e.name in shown), None)
    if head is None:
        best = max(rows, key=_ba)
        return f"On {split}, the best detector is {best.name} at balanced accuracy {_ba(best):.3f} (baseline {b:.3f})."
    sig = significant(head.delta_ci, head.p_value)
    words = [
        f"On {split}, {spec[head.name].what or head.name} scores balanced accuracy {_ba(head):.3f} against the "
        f"baseline's {b:.3f} (Δ {head.delta:+.3f}, p={head.p_value:.3g}: {'significant' if sig else 'not significant'})"
    ]
    for row in rows:
        entry = spec.get(row.name)
        if entry is None or row.control_of != head.name:
            continue
        score = f"{entry.what or row.name} scores {_ba(row):.3f}"
        if row.versus is None:
            words.append(score)
            continue
        lo, hi = row.versus.delta_ci
        decided = significant_gain(row.versus.delta_ci, row.versus.p_value)
        claim = entry.claim if decided else "no evidence yet that " + entry.claim
        words.append(
            f"{score} ({head.name} {row.versus.delta:+.3f} [{lo:+.2f}, {hi:+.2f}], p={row.versus.p_value:.3g}: {claim})"
        )
    for row in rows:
        entry = spec.get(row.name)
        if entry is not None and entry.note:
            words.append(f"{entry.what or row.name} scores {_ba(row):.3f} ({entry.note})")
    return "; ".join(words) + "."


def margins_by_class(records: Sequence[DetectionRecord]) -> MarginsByClass:
    """Answer margins split by the truth (for the margin-distribution plot)."""
    vulnerable = tuple(float(r.margin) for r in records if r.margin is not None and r.y_true == 1)
    secure = tuple(float(r.margin) for r in records if r.margin is not None and r.y_true != 1)
    return MarginsByClass(vulnerable, secure)


def build_lead(
    mode: str, split: str, base: Sequence[DetectionRecord], entries: Sequence[LeadEntry], seed: int = 0
) -> LeadTable:
    """One mode's lead table: the rows, the words, and (logit mode) the answer margins by class of the baseline
    and of the headline detectors."""
    rows = lead_rows(base, entries, seed)
    margins: dict[str, MarginsByClass] = {}
    if mode == "logit":
        margins["baseline"] = margins_by_class(base)
        margins.update({e.name: margins_by_class(e.records) for e in entries if e.headline})
    return LeadTable(split, rows, lead_words(rows, entries, split), margins)
