"""Reports: ``report.md`` (and PNG plots) rendered from a run's ``results.json`` data.

The Markdown leads with one table per detector mode: per CWE, n, the baseline, the steered setting chosen on
validation, its random-direction control, the change with its confidence interval, McNemar's p-value, and a
sentence saying whether the gain is real. Every number says which split it comes from.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..cwe import cwe_name
from ..detect.probe import PROBE_TABLE_COLUMNS, probe_table
from ..io import atomic_open, write_text

__all__ = [
    "ci_cell",
    "duplicates_text",
    "fmt",
    "lead_table",
    "markdown_table",
    "plot_strength_curves",
    "render_markdown",
    "write_report",
]


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.{digits}f}"
    return str(value)


def duplicates_text(splits: Mapping[str, Any]) -> str:
    """What the split's cross-split duplicate check found and what was done about it (from ``Splits.summary``)."""
    dup = splits.get("duplicates") or {}
    notes = splits.get("notes") or {}
    deduped = notes.get("deduped")
    if not deduped:
        return f"cross-split duplicates (kept): exact {dup.get('exact', 0)}, normalised {dup.get('normalised', 0)}"
    before = notes.get("duplicates_before_dedupe") or {}
    dropped = deduped.get("dropped") or {}
    return (
        f"cross-split duplicates found: exact {before.get('exact', 0)}, normalised "
        f"{before.get('normalised', 0)}; dropped {len(dropped.get('val', []))} val and "
        f"{len(dropped.get('test', []))} test samples (with their pair partners); left: exact "
        f"{dup.get('exact', 0)}, normalised {dup.get('normalised', 0)}"
    )


def ci_cell(block: Mapping[str, Any] | None) -> str:
    if not block:
        return "–"
    lo, hi = block.get("balanced_accuracy_ci") or (None, None)
    return f"{fmt(block.get('balanced_accuracy'))} [{fmt(lo, 2)}, {fmt(hi, 2)}]"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def lead_table(summary: Mapping[str, Any]) -> list[str]:
    rows = []
    for cwe, row in summary.items():
        rows.append(
            [
                f"{cwe} ({cwe_name(cwe)})",
                f"{row['n']} ({row['n_pairs']} pairs)",
                ci_cell(row["baseline"]),
                f"{ci_cell(row['steered'])}<br>{row['chosen']}",
                ci_cell(row.get("control")),
                f"{row['delta']:+.3f} [{row['delta_ci'][0]:+.2f}, {row['delta_ci'][1]:+.2f}]",
                fmt(row["p_value"], 3),
            ]
        )
    header = [
        "CWE",
        "n (test)",
        "baseline bal.acc [95% CI]",
        "steered (chosen on val)",
        "random control",
        "Δ bal.acc [95% CI]",
        "McNemar p",
    ]
    lines = markdown_table(header, rows)
    lines.append("")
    lines += [f"- **{cwe}**: {row['words']}." for cwe, row in summary.items()]
    return lines


def _strength_table(results: Mapping[str, Any], mode: str, split: str) -> list[str]:
    """Every condition of one mode on one split: the full picture behind the lead table."""
    header = [
        "CWE",
        "condition",
        "strength",
        "rel. shift",
        "bal.acc [95% CI]",
        "acc",
        "TPR",
        "FPR",
        "pair acc",
        "'vulnerable' rate",
        "uncertain",
        "AUROC",
        "mean margin",
    ]
    rows = []
    rel = _relative_shift(results)
    for entry in results["conditions"]:
        cond = entry["condition"]
        if cond["mode"] != mode or cond["split"] != split:
            continue
        for cwe, m in entry["metrics"].items():
            shift = rel.get(cwe, math.nan) * cond["strength"] if cond["unit"] == "raw" else cond["strength"]
            rows.append(
                [
                    cwe,
                    cond["kind"],
                    fmt(float(cond["strength"]), 1),
                    "–" if cond["kind"] == "baseline" else fmt(shift, 3),
                    ci_cell(m),
                    fmt(m["accuracy"]),
                    fmt(m["tpr"]),
                    fmt(m["fpr"]),
                    fmt(m["pair_accuracy"]),
                    fmt(m["vulnerable_rate"]),
                    fmt(m["uncertain_rate"]),
                    fmt(m["auroc"]),
                    fmt(m.get("mean_margin"), 2),
                ]
            )
    rows.sort(key=lambda r: (r[0] != "overall", r[0], r[1] != "baseline", float(r[2]), r[1]))
    return markdown_table(header, rows)


def _relative_shift(results: Mapping[str, Any]) -> dict[str, float]:
    """Per CWE: |vector| / mean hidden norm at the (first) steered layer, i.e. the shift per unit of raw strength."""
    out: dict[str, float] = {}
    for info in results.get("vectors", {}).values():
        rel = info.get("relative_norm", {})
        if rel:
            out[info["cwe"]] = float(next(iter(rel.values())))
    return out


def render_markdown(results: Mapping[str, Any], plots: Sequence[str] = ()) -> str:
    cfg = results["config"]
    data = results["data"]
    splits = data["splits"]
    lines = [
        "# vulnsteer report",
        "",
        f"- model: `{results['model']['id']}` ({results['model']['num_layers']} layers, hidden "
        f"{results['model']['hidden_size']}); steered layer(s): {results['layers']}",
        f"- data: `{data['source']}`; CWEs: {', '.join(data['cwes'])}",
        f"- split by pair/group (seed {cfg['seed']}): train {splits['train']['n']}, val {splits['val']['n']}, "
        f"test {splits['test']['n']} samples; {duplicates_text(splits)}",
        f"- comments stripped: {data['notes'].get('comments_stripped')}; truncated to "
        f"{data['notes'].get('max_code_tokens')} tokens: {data['notes'].get('truncated', 0)} samples",
        f"- vectors: `{cfg['method']}` at position `{cfg['position']}` from the train split; steering positions "
        f"`{cfg['steer_positions']}`, strengths {cfg['strengths']} ({cfg['unit']})",
        f"- **sign convention**: {results['sign_convention']}",
        "- every steered setting has a random-direction control (same norm, same layers); strengths are chosen per "
        "CWE on the **validation** split (balanced accuracy, ties to the smaller strength) and reported once on "
        "**test**; CIs are 95% pair-bootstrap intervals; p-values are McNemar's exact test against the baseline "
        "on the same test samples. Always answering 'vulnerable' scores balanced accuracy 0.5 and pair accuracy 0.",
        "- `mean margin` = mean of logp(' vulnerable') - logp(' secure') at the answer position (logit mode): it "
        "shows which way a steered setting really pushes the answer, whatever its label says.",
        "",
    ]
    chosen_how = {
        "run": "strength chosen on the validation split",
        "evaluate": "settings given by the user",
        "transfer": "settings chosen on the source run's validation split",
    }.get(results.get("command", "run"), "")
    for mode, summary in results["summary"].items():
        picked: Mapping[str, Any] = next(iter(results.get("selection", {}).get(mode, {}).values()), {})
        how = f"strength chosen on the {picked['selected_by']}" if "selected_by" in picked else chosen_how
        lines += [f"## {mode} mode: {_split_of(summary)} split, {how}", ""]
        lines += lead_table(summary)
        lines.append("")
    for plot in plots:
        lines += [f"![{Path(plot).stem}]({plot})", ""]
    if results.get("probes"):
        lines += _probe_section(results["probes"])
    for mode, summary in results["summary"].items():
        split = _split_of(summary)
        lines += [f"## All conditions, {mode} mode, {split} split", ""]
        lines += _strength_table(results, mode, split)
        lines.append("")
    for mode, examples in results.get("examples", {}).items():
        lines += [f"## Example generations ({mode} mode, test split; baseline vs strongest steering)", ""]
        for ex in examples:
            lines.append(f"**{ex['cwe']}** `{ex['sample_id']}` (truth: {ex['truth']})")
            lines.append(f"- baseline ({ex['baseline_verdict']}): `{_one_line(ex['baseline'])}`")
            lines.append(f"- steered ({ex['steered_verdict']}): `{_one_line(ex['steered'])}`")
            lines.append("")
    if "timings_s" in results:
        lines += ["## Timings (s)", "", ", ".join(f"{k}: {v}" for k, v in results["timings_s"].items()), ""]
    return "\n".join(lines)


def _probe_section(probes: Sequence[Mapping[str, Any]]) -> list[str]:
    """The probe detectors: the vector (and a logistic probe) read as classifiers on activations."""
    rows = probe_table(probes)
    header = [c if c != "threshold" else "threshold (val)" for c in PROBE_TABLE_COLUMNS]
    return [
        "## Probe detectors (fit on train, threshold on val, scored once on test)",
        "",
        "`direction` scores each sample by its projection on the CWE's mean-difference vector (higher = "
        "more vulnerable); `logistic` is an L2 logistic-regression probe on the same activations; `length` is "
        "their control, a logistic regression on the code's length alone (characters, lines, non-blank "
        "characters): a probe that does not beat it may be reading length rather than vulnerability.",
        "",
        *markdown_table(header, [list(r.values()) for r in rows]),
        "",
    ]


def _split_of(summary: Mapping[str, Any]) -> str:
    return str(next(iter(summary.values()))["split"]) if summary else "test"


def _one_line(text: str | None) -> str:
    return (text or "").replace("\n", " ⏎ ").replace("`", "'")[:300]


def plot_strength_curves(results: Mapping[str, Any], out_dir: Path, mode: str, split: str = "test") -> str | None:
    """Balanced accuracy vs strength per CWE, with the baseline and the random control. Returns the PNG name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for entry in results["conditions"]:
        cond = entry["condition"]
        if cond["mode"] != mode or cond["split"] != split:
            continue
        for cwe, m in entry["metrics"].items():
            curves.setdefault(cwe, {}).setdefault(cond["kind"], []).append(
                (float(cond["strength"]), float(m["balanced_accuracy"]))
            )
    if not curves:
        return None
    names = sorted(curves, key=lambda c: (c == "overall", c))
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, cwe in zip(axes.flat, names):
        for kind, style in (("steered", "o-"), ("control", "x--")):
            pts = sorted(curves[cwe].get(kind, []))
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=kind)
        for _, value in curves[cwe].get("baseline", []):
            ax.axhline(value, color="grey", lw=1, label="baseline")
        ax.axhline(0.5, color="black", lw=0.5, ls=":")
        ax.set_title(cwe)
        ax.set_ylim(0, 1)
        ax.set_xlabel("strength")
        ax.set_ylabel("balanced accuracy")
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"{mode} mode, {split} split")
    fig.tight_layout()
    name = f"strength_{mode}_{split}.png"
    with atomic_open(out_dir / name, "wb") as handle:
        fig.savefig(handle, format="png", dpi=100)
    plt.close(fig)
    return name


def write_report(results: Mapping[str, Any], out_dir: str | Path) -> Path:
    out = Path(out_dir)
    plots = [
        p
        for mode, summary in results["summary"].items()
        if (p := plot_strength_curves(results, out, mode, _split_of(summary))) is not None
    ]
    path = out / "report.md"
    write_text(path, render_markdown(results, plots))
    return path
