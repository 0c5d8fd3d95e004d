"""A transfer run's report: the leave-one-dataset-out table (rows: the left-out dataset; columns: every detector and
the length-only control; AUROC [pair-bootstrap CI] / balanced accuracy / pair-rank accuracy), the checks the
protocol answers (does the chosen probe beat the length-only control by 0.05 AUROC, does the steered score keep the
probe's AUROC within 0.02, how optimistic the non-nested choice is), every design on every left-out dataset, and
per fold every detector in full.

>>> from vulnsteer.experiment.tables import MetricBlock
>>> cell(MetricBlock(auroc=0.61, auroc_ci=(0.58, 0.64), balanced_accuracy=0.55, pair_rank_accuracy=0.7))
'0.610 [0.58, 0.64] / 0.550 / 0.700'
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from ..experiment.tables import MetricBlock
from ..experiment.transfer.results import DetectorRow, FoldResult, TransferResults

__all__ = ["LENGTH_MARGIN", "SHARE_MARGIN", "STEERED_MARGIN", "cell", "designs_table", "lodo_table", "render_transfer"]

#: The AUROC by which a chosen probe should beat the length-only control on every fold.
LENGTH_MARGIN = 0.05
#: The most the steered score's AUROC may fall below its probe's.
STEERED_MARGIN = 0.02
#: The most a detector's flagged share on a left-out dataset may differ from its vulnerable share.
SHARE_MARGIN = 0.15


def _f(value: float | None, digits: int = 3) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def cell(m: MetricBlock) -> str:
    """``AUROC [CI] / balanced accuracy / pair-rank accuracy``."""
    ci = "" if m.auroc_ci is None else f" [{_f(m.auroc_ci[0], 2)}, {_f(m.auroc_ci[1], 2)}]"
    return f"{_f(m.auroc)}{ci} / {_f(m.balanced_accuracy)} / {_f(m.pair_rank_accuracy)}"


def _columns(folds: Sequence[FoldResult]) -> list[tuple[str, str]]:
    seen: dict[str, str] = {}
    for fold in folds:
        for row in fold.detectors:
            seen.setdefault(row.name, row.label)
    return list(seen.items())


def lodo_table(results: TransferResults) -> list[str]:
    """The leave-one-dataset-out table in Markdown, with a mean row (AUROC, balanced accuracy and pair-rank
    accuracy averaged over the folds a detector applies to)."""
    columns = _columns(results.folds)
    lines = [
        "| left out (n, vulnerable share) | " + " | ".join(name for name, _ in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for fold in results.folds:
        cells = [_cell_beside_probe(r) if (r := fold.row(name)) else "–" for name, _ in columns]
        lines.append(f"| {fold.left_out} ({fold.n}, {fold.vulnerable_share:.2f}) | " + " | ".join(cells) + " |")
    means = []
    for name, _ in columns:
        found = [r for f in results.folds if (r := f.row(name)) is not None]
        rows = [r.metrics for r in found]
        parts = [_mean([getattr(m, key) for m in rows]) for key in ("auroc", "balanced_accuracy", "pair_rank_accuracy")]
        same = [r.probe_same.auroc for r in found if r.probe_same is not None]
        means.append(
            " / ".join(_f(p) for p in parts)
            + (f" (probe {_f(_mean(same))})" if same else "")
            + (f" ({len(rows)} folds)" if len(rows) < len(results.folds) else "")
        )
    lines.append("| **mean** | " + " | ".join(means) + " |")
    return lines


def _cell_beside_probe(row: DetectorRow) -> str:
    """A row's cell; for a row that reads only some samples, the chosen probe's AUROC on the same ones after it.

    >>> block = MetricBlock(auroc=0.55, balanced_accuracy=0.54, pair_rank_accuracy=0.6)
    >>> _cell_beside_probe(DetectorRow("cppcheck", "", block, probe_same=MetricBlock(auroc=0.58)))
    '0.550 / 0.540 / 0.600 (probe 0.580)'
    """
    same = "" if row.probe_same is None else f" (probe {_f(row.probe_same.auroc)})"
    return cell(row.metrics) + same


def _mean(values: Sequence[float | None]) -> float | None:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return sum(finite) / len(finite) if finite else None


def _checks(results: TransferResults) -> list[str]:
    lines = []
    short, gaps, nested, non_nested = [], [], [], []
    for fold in results.folds:
        probe, length = fold.row("probe"), fold.row("length")
        if probe and length and probe.metrics.auroc is not None and length.metrics.auroc is not None:
            delta = probe.metrics.auroc - length.metrics.auroc
            if delta < LENGTH_MARGIN:
                short.append(f"{fold.left_out} ({delta:+.3f})")
        steered = fold.row("steered")
        if probe and steered and probe.metrics.auroc is not None and steered.metrics.auroc is not None:
            gaps.append((fold.left_out, steered.metrics.auroc - probe.metrics.auroc))
        other = fold.row("probe_non_nested") or probe
        if probe and other and probe.metrics.auroc is not None and other.metrics.auroc is not None:
            nested.append(probe.metrics.auroc)
            non_nested.append(other.metrics.auroc)
    n = len(results.folds)
    if short:
        lines.append(
            f"- The chosen probe does **not** beat the length-only control by {LENGTH_MARGIN} AUROC on "
            f"{len(short)} of {n} folds: {', '.join(short)}."
        )
    else:
        lines.append(
            f"- The chosen probe beats the length-only control by at least {LENGTH_MARGIN} AUROC on every fold."
        )
    if gaps:
        kept = [f for f, g in gaps if g >= -STEERED_MARGIN]
        words = ", ".join(f"{f} {g:+.3f}" for f, g in gaps)
        lines.append(
            f"- Steered score's AUROC minus its probe's: {words}; within {STEERED_MARGIN} (or above) on "
            f"{len(kept)} of {len(gaps)} folds."
        )
    if nested:
        optimism = sum(non_nested) / len(non_nested) - sum(nested) / len(nested)
        lines.append(
            f"- Mean AUROC of the probe chosen on the inner folds (nested): {sum(nested) / len(nested):.3f}; of the "
            f"design chosen on the outer folds (non-nested, `{results.non_nested_design}`): "
            f"{sum(non_nested) / len(non_nested):.3f} (optimism {optimism:+.3f})."
        )
    gaps_by_row: dict[str, list[float]] = {name: [] for name in _VERDICTS}
    for fold in results.folds:
        rates: dict[str, float] = {}
        for name in _VERDICTS:
            row = fold.row(name)
            if row is not None and row.metrics.vulnerable_rate is not None:
                rates[name] = row.metrics.vulnerable_rate
        if len(rates) > 1:
            lines.append(
                f"- {fold.left_out}: flagged share "
                + ", ".join(f"{rate:.2f} {_VERDICTS[name]}" for name, rate in rates.items())
                + f" (true vulnerable share {fold.vulnerable_share:.2f})."
            )
        for name, rate in rates.items():
            gaps_by_row[name].append(abs(rate - fold.vulnerable_share))
    for name, share_gaps in gaps_by_row.items():
        if share_gaps:
            within = sum(g <= SHARE_MARGIN for g in share_gaps)
            lines.append(
                f"- {_VERDICTS[name].capitalize()}, the flagged share is within "
                f"{SHARE_MARGIN * 100:.0f} points of the true vulnerable share on {within} of {len(share_gaps)} folds "
                f"(largest gap {max(share_gaps) * 100:.0f} points)."
            )
    return lines


#: The rows whose verdict's flagged share the checks compare with the truth, and how the checks name them.
_VERDICTS: dict[str, str] = {
    "probe": "unadapted",
    "adapted": "adapted",
    "steered": "steered",
    "steered_matched": "steered at the matched strength",
}


def _ranked(values: Mapping[str, float]) -> list[tuple[str, float]]:
    """*values* from the highest down (NaN last)."""
    return sorted(values.items(), key=lambda kv: -kv[1] if not math.isnan(kv[1]) else math.inf)


def designs_table(results: TransferResults) -> list[str]:
    """Every design's criterion on each left-out dataset and its mean, best first (empty for a grid of one design):
    the ranking the non-nested choice takes its first row from.

    >>> r = TransferResults("complete", {}, None, (), "auroc", designs_outer={"a": {"x": 0.6, "y": 0.7},
    ...                     "b": {"x": 0.8, "y": 0.7}})
    >>> print("\\n".join(designs_table(r)))
    | design | mean auroc | x | y |
    |---|---|---|---|
    | `b` | 0.750 | 0.800 | 0.700 |
    | `a` | 0.650 | 0.600 | 0.700 |
    """
    if len(results.designs_outer) < 2:
        return []
    folds = list(next(iter(results.designs_outer.values())))
    means = {key: _mean(list(by_fold.values())) for key, by_fold in results.designs_outer.items()}
    lines = [
        f"| design | mean {results.select_by} | " + " | ".join(folds) + " |",
        "|---|---|" + "---|" * len(folds),
    ]
    for key, mean in _ranked({k: math.nan if m is None else m for k, m in means.items()}):
        by_fold = results.designs_outer[key]
        lines.append(f"| `{key}` | {_f(mean)} | " + " | ".join(_f(by_fold.get(f)) for f in folds) + " |")
    return lines


def _row_note(row: DetectorRow) -> str:
    if row.probe_same is None:
        return row.note
    m = row.probe_same
    same = (
        f"the chosen probe on the same samples: AUROC {_f(m.auroc)}, bal. acc {_f(m.balanced_accuracy)}, "
        f"pair-rank {_f(m.pair_rank_accuracy)}"
    )
    return f"{row.note}; {same}" if row.note else same


def _fold_section(fold: FoldResult) -> list[str]:
    lines = [
        f"### left out: {fold.left_out}",
        "",
        f"n = {fold.n} (vulnerable share {fold.vulnerable_share:.2f}); fitted and chosen on "
        f"{', '.join(fold.training)}.",
        "",
        "| detector | applies | AUROC [95% CI] | bal. acc | pair-rank | pair acc | TPR @5% FPR | flagged | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in fold.detectors:
        m = row.metrics
        ci = "" if m.auroc_ci is None else f" [{_f(m.auroc_ci[0], 2)}, {_f(m.auroc_ci[1], 2)}]"
        control = f" (control of {row.control_of})" if row.control_of else ""
        lines.append(
            f"| {row.name}: {row.label}{control} | `{row.chosen or '–'}` | {_f(m.auroc)}{ci} | "
            f"{_f(m.balanced_accuracy)} | {_f(m.pair_rank_accuracy)} | {_f(m.pair_accuracy)} | {_f(m.tpr_at_5_fpr)} | "
            f"{_f(m.vulnerable_rate, 2)} | {_row_note(row)} |"
        )
    best = _ranked(fold.designs_inner)[:5]
    if best:
        lines += [
            "",
            "Designs by their mean over the inner folds (top 5): " + "; ".join(f"`{k}` {v:.3f}" for k, v in best),
        ]
    if fold.steered_inner:
        lines += [
            "",
            "Gates and strengths by their mean over the inner folds: "
            + "; ".join(f"`{k}` {v:.3f}" for k, v in _ranked(fold.steered_inner)),
        ]
    lines += [f"- {note}" for note in fold.notes]
    return [*lines, ""]


def render_transfer(results: TransferResults) -> str:
    """The report (Markdown)."""
    model = results.model.id if results.model else "?"
    datasets = ", ".join(f"{d.name} ({d.n}{'' if d.cap is None else f', {d.cap} per CWE'})" for d in results.datasets)
    lines = [
        "# Leave-one-dataset-out transfer",
        "",
        f'Model: {model}. Datasets: {datasets} (n samples; "k per CWE": at most k pairs, or k unpaired samples, '
        "of each CWE, seeded). Every detector is fitted and chosen on the other datasets and applied "
        f"unchanged to every sample of the one left out; designs, gates and strengths are chosen by their mean "
        f"{results.select_by} over the inner folds (nested). Cells: AUROC [pair-bootstrap 95% CI] / balanced "
        "accuracy at the transferred threshold / pair-rank accuracy (the vulnerable half of a pair scored above its "
        "fix).",
        "",
        *lodo_table(results),
        "",
        *_checks(results),
        "",
        "Columns: " + "; ".join(f"**{name}**: {label}" for name, label in _columns(results.folds)) + ".",
        "The adapted probe re-estimates its centre from the left-out dataset's unlabelled inputs only (no label is "
        "read) and flags the highest share of them that the training datasets had vulnerable; the steered rows "
        "are logit mode (the model's answer margin)."
        + (
            ' A peer analyser reads only the samples of its languages: "(probe X)" after its cell is the chosen '
            "probe's AUROC on those same samples."
            if any(r.probe_same is not None for f in results.folds for r in f.detectors)
            else ""
        ),
        "",
    ]
    if table := designs_table(results):
        lines += [
            "## Every design on the left-out datasets",
            "",
            "Each design fitted on the other datasets and applied to the one left out, for every design of the grid. "
            "Ranking designs by these means reads every left-out dataset's labels (the non-nested choice, its first "
            "row): use it to compare designs; the nested `probe` column above is the estimate of choosing among "
            "them.",
            "",
            *table,
            "",
        ]
    lines += [
        "## Per fold",
        "",
    ]
    for fold in results.folds:
        lines += _fold_section(fold)
    if results.notes:
        lines += ["## Notes", "", *(f"- {n}" for n in results.notes), ""]
    if results.timings_s:
        spent = ", ".join(f"{k} {v:g}" for k, v in results.timings_s.items())
        lines += [f"Timings (s, summed over every attempt at this run): {spent}", ""]
    return "\n".join(lines)
