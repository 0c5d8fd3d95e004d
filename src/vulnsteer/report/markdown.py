"""``report.md``: one renderer over typed :class:`~vulnsteer.experiment.results.Results` (run, sweep and both
evaluate commands).

The report leads with one table per mode: every detector (each family's rows, in the order of the families) on the
same held-out samples, with CIs, the change against the baseline, McNemar's p-value, the answers that flipped
each way, the lever rate, and what beat what in words. Then, per family that chooses per CWE: per CWE, n, the
baseline, the setting chosen on validation (applied once to the held-out samples), its controls, the change with its
confidence interval, McNemar's p-value, the flips and a sentence saying whether the change is real; the pooled
vector and the cross-CWE matrix. Then probe detectors, plots, every validation candidate, vector cosines, example
generations, caches and timings. Every number says which split it comes from. A section without data is left out.

>>> fmt(0.12345), fmt(None), fmt(float("nan"))
('0.123', '–', 'nan')
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..cwe import cwe_name
from ..detection.probe_table import ProbeResult
from ..experiment.grid import POOLED
from ..experiment.header import SplitsInfo
from ..experiment.results import Example, FamilyResults, Results, ValEntry
from ..experiment.tables import HeldOutRow, HeldOutTable, LeadRow, LeadTable, MetricBlock
from .answer import answer_lines, title
from .probes import PROBE_TABLE_COLUMNS, probe_table

__all__ = ["ci_cell", "cwe_table", "duplicates_text", "fmt", "markdown_table", "render_markdown"]

SPLIT_NAMES = {"test": "TEST", "val": "VAL", "train": "TRAIN", "all": "ALL samples"}


def fmt(value: float | int | str | None, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.{digits}f}"
    return str(value)


def _split(split: str) -> str:
    return SPLIT_NAMES.get(split, split)


def duplicates_text(splits: SplitsInfo) -> str:
    """What the split's cross-split duplicate check found and what was done about it."""
    exact, normalised = splits.duplicates
    dropped = splits.dropped
    if dropped is None:
        merged = " (merged into one split group)" if splits.merged_duplicates else " (kept)"
        return f"cross-split duplicates{merged}: exact {exact}, normalised {normalised}"
    before_exact, before_normalised = splits.found_before_dedupe
    return (
        f"cross-split duplicates found: exact {before_exact}, normalised {before_normalised}; dropped "
        f"{dropped[0]} val and {dropped[1]} test samples (with their pair partners); left: exact {exact}, "
        f"normalised {normalised}"
    )


def ci_cell(block: MetricBlock | None) -> str:
    if block is None:
        return "–"
    lo, hi = block.balanced_accuracy_ci or (None, None)
    return f"{fmt(block.balanced_accuracy)} [{fmt(lo, 2)}, {fmt(hi, 2)}]"


def auroc_cell(block: MetricBlock | None) -> str:
    """``0.612 [0.58, 0.64]``: AUROC with its pair-bootstrap CI (– without scores)."""
    if block is None or block.auroc is None:
        return "–"
    ci = block.auroc_ci
    return fmt(block.auroc) if ci is None else f"{fmt(block.auroc)} [{fmt(ci[0], 2)}, {fmt(ci[1], 2)}]"


def _delta_cell(delta: float, ci: tuple[float, float]) -> str:
    lo, hi = ci
    return f"{delta:+.3f} [{lo:+.2f}, {hi:+.2f}]"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def cwe_table(table: HeldOutTable, controls: dict[str, str] | None = None) -> list[str]:
    """Per CWE: n, baseline, chosen setting, each control (columns by role: *controls*), Δ [CI], McNemar p,
    flips (and the lever rate where a gate pushed); then one sentence each."""
    split, rows = table.split, table.rows
    controls = {"control": "random control"} if controls is None else controls
    lever = any(r.lever_rate is not None for r in rows.values())
    body = []
    for cwe, row in rows.items():
        cells = [
            f"{cwe} ({cwe_name(cwe)})",
            f"{row.n} ({row.n_pairs} pairs)",
            ci_cell(row.baseline),
            f"{ci_cell(row.steered)}<br>{row.chosen}",
            *(ci_cell(c.metrics) if (c := row.controls.get(role)) else "–" for role in controls),
            _delta_cell(row.delta, row.delta_ci),
            fmt(row.p_value, 3),
            f"+{row.flips.wrong_to_right} / −{row.flips.right_to_wrong}",
        ]
        if lever:
            cells.append("–" if row.lever_rate is None or row.lever_rate.rate is None else f"{row.lever_rate.rate:.2f}")
        body.append(cells)
    header = [
        "CWE",
        f"n ({split})",
        "baseline bal.acc [95% CI]",
        f"chosen on val → {split}",
        *controls.values(),
        "Δ bal.acc [95% CI]",
        "McNemar p",
        "flips (→right / →wrong)",
        *(["lever rate"] if lever else []),
    ]
    lines = [*markdown_table(header, body), ""]
    for cwe, row in rows.items():
        other = row.best_not_chosen
        more = (
            ""
            if other is None
            else f"; the best steered setting on val (not chosen: the baseline scored at least as well) was "
            f"{other.chosen}, which on {_split(split)} gives {_delta_cell(other.delta, other.delta_ci)} (for "
            "information only)"
        )
        lines.append(f"- **{cwe}**: {row.words}{more}.")
    return lines


def pooled_table(rows: dict[str, HeldOutRow]) -> list[str]:
    body = [
        [
            cwe,
            str(r.n),
            ci_cell(r.baseline),
            ci_cell(r.steered),
            ci_cell(c.metrics) if (c := r.controls.get("control")) else "–",
            _delta_cell(r.delta, r.delta_ci),
            fmt(r.p_value),
        ]
        for cwe, r in rows.items()
    ]
    header = ["CWE", "n", "baseline", "pooled vector", "random control", "Δ bal.acc [95% CI]", "McNemar p"]
    return markdown_table(header, body)


def cross_table(table: HeldOutTable) -> list[str]:
    cross = table.cross_cwe
    if cross is None:
        return []
    header = ["vector ↓ / samples →", *cross.targets]
    rows = []
    for name, line in zip(cross.vectors, cross.delta_balanced_accuracy):
        mark = "" if cross.chosen.get(name) == "steered" else " (baseline won on val)"
        rows.append([f"{name}{mark}", *[("–" if v is None else f"{v:+.3f}") for v in line]])
    return markdown_table(header, rows)


def _header(results: Results) -> list[str]:
    data, model, command = results.data, results.model, results.command
    answer = title(results)
    lines = [f"# vulnsteer report ({command})" + (f": {answer}" if answer else ""), ""]
    first = answer_lines(results)
    lines += [*first, ""] if first else []
    if model is not None:
        lines.append(
            f"- model: `{model.id}` ({model.num_layers} layers, hidden {model.hidden_size}, "
            f"fingerprint {model.fingerprint})"
        )
    if data is not None and command.startswith("evaluate"):
        if results.run_dir is not None:
            lines.append(
                f"- settings chosen in `{results.run_dir}` (per CWE on that run's **validation** split"
                + ("; conditional steering: one for every CWE" if results.grid.conditional_select == "pooled" else "")
                + ") and applied here **unchanged**; nothing is re-selected"
            )
        else:
            lines.append(
                f"- vectors from `{results.vectors_from}` at the setting given on the command line (no selection)"
            )
        lines.append(f"- data: `{data.source}`: {data.n_samples} samples of {', '.join(data.cwes)}")
        lines.append(
            "- skipped (no vector or choice for them): "
            + (", ".join(f"{c} ({n} samples)" for c, n in data.skipped_cwes.items()) or "none")
        )
        if data.overlap_with_run_train is not None:
            lines.append(f"- samples whose code is also in the run's training split: {data.overlap_with_run_train}")
    elif data is not None and data.splits is not None:
        splits, grid, notes = data.splits, results.grid, data.notes
        sizes = ", ".join(f"{name} {splits.size(name)}" for name in ("train", "val", "test"))
        one_gated = (
            "; conditional steering: one setting for every CWE, chosen on every CWE's val samples together"
            if grid.conditional_select == "pooled"
            else ""
        )
        lines += [
            f"- data: `{data.source}`; CWEs: {', '.join(data.cwes)}; split by pair/group (seed {grid.seed}): "
            f"{sizes} samples; {duplicates_text(splits)}",
            f"- comments stripped: {notes.comments_stripped}; truncated to {notes.max_code_tokens} tokens: "
            f"{notes.truncated} samples",
            f"- grid: methods {list(grid.methods)} at pooling {list(grid.poolings)}; layer sets "
            f"{[list(s) for s in results.layer_sets]}; strengths {grid.strengths}; steered positions "
            f"{list(grid.positions)}; modes {list(grid.modes)}; pooled vector: {grid.pooled}",
            "- **splits**: vectors are fitted on **train**; every candidate (and the baseline) is scored on **val**, "
            f"and the setting per CWE is chosen there (balanced accuracy, ties to the smaller |strength|{one_gated}); "
            "the chosen setting is evaluated once on **test**. Test data never influences a choice.",
            "- a layer set is steered at all its layers at once; with `relative` strengths each layer's shift is the "
            "strength times that layer's mean hidden-state norm.",
        ]
        if results.files is not None:
            lines.append(
                f"- resolved config: `{results.files.resolved_config}` (`vulnsteer sweep` on it reproduces this "
                f"run); chosen vectors and settings: `{results.files.chosen}` (apply elsewhere with `vulnsteer "
                "evaluate --from RUN_DIR --data OTHER`)"
            )
    lines += [
        f"- **sign convention**: {results.sign_convention}",
        "- every steered row has a random-direction control (same norm, same layers); CIs are 95% pair-bootstrap "
        "intervals; p-values are McNemar's exact test against the baseline on the same samples. Always answering "
        "'vulnerable' scores balanced accuracy 0.5 and pair accuracy 0.",
        "",
    ]
    lines += [f"> warning: {w}" for w in results.warnings]
    return lines


def row_names(rows: Sequence[LeadRow], families: Mapping[str, str]) -> list[str]:
    """Each lead row's name as the table shows it: its own, or, where rows share a name (two families both
    naming a row ``probe``), qualified by its family's label (*families*: name -> label), then by its place.

    >>> rows = [LeadRow("probe", "", MetricBlock(), family="probe"), LeadRow("probe", "", MetricBlock(), family="x")]
    >>> row_names(rows, {"probe": "the gating probe alone"})
    ['probe (the gating probe alone)', 'probe (x)']
    """
    counts = Counter(r.name for r in rows)
    names = [
        r.name if counts[r.name] == 1 else f"{r.name} ({families.get(r.family or '') or r.family or 'baseline'})"
        for r in rows
    ]
    seen: Counter[str] = Counter()
    out = []
    for name in names:
        seen[name] += 1
        out.append(name if names.count(name) == 1 else f"{name} #{seen[name]}")
    return out


def _lead_block(mode: str, block: LeadTable, plots: Sequence[str], families: Mapping[str, str]) -> list[str]:
    where = "every sample" if block.split == "all" else f"the {_split(block.split)} samples"
    lines = [f"## {mode} mode: every detector on {where}", ""]
    body = []
    for row, name in zip(block.rows, row_names(block.rows, families), strict=True):
        m, flips, lever = row.metrics, row.flips, row.lever_rate
        body.append(
            [
                f"**{name}**",
                row.label,
                ci_cell(m),
                auroc_cell(m),
                fmt(m.pair_accuracy),
                fmt(m.pair_rank_accuracy),
                fmt(m.tpr_at_5_fpr),
                "–" if row.is_baseline else _delta_cell(row.delta, row.delta_ci),
                "–" if row.is_baseline else fmt(row.p_value, 3),
                "–" if flips is None else f"+{flips.wrong_to_right} / −{flips.right_to_wrong}",
                "–" if lever is None or lever.rate is None else f"{lever.rate:.2f} ({lever.followed}/{lever.pushed})",
            ]
        )
    header = [
        "detector",
        "what it is",
        "bal.acc [95% CI]",
        "AUROC [95% CI]",
        "pair acc",
        "pair-rank",
        "TPR @5% FPR",
        "Δ vs baseline [95% CI]",
        "McNemar p",
        "flips (→right / →wrong)",
        "lever rate",
    ]
    lines += [*markdown_table(header, body), "", block.words, ""]
    lines += [f"![{Path(p).stem}]({p})" for p in plots if Path(p).stem == f"margins_{mode}"]
    lines.append("")
    return lines


def _first_screen(results: Results, plots: Sequence[str]) -> list[str]:
    """Every detector on the same held-out samples, per mode: the answer first."""
    lines: list[str] = []
    for mode, block in results.lead.items():
        lines += _lead_block(mode, block, plots, {f.name: f.label for f in results.families.values()})
    if results.lead:
        lines += [
            "`AUROC`: of each detector's score (the answer's P(vulnerable) for the model, the probe's score for a "
            "probe; – where it has none, e.g. generated verdicts); `pair-rank`: the share of pairs whose vulnerable "
            "half scores above its fix (ties half); `lever rate`: among inputs a gate pushed, how often the verdict "
            "followed the push (toward 'vulnerable' where the probe said vulnerable, toward 'secure' where it said "
            "secure).",
            "",
        ]
    notes = [f"- {family.name}: {note}" for family in results.families.values() for note in family.notes]
    if notes:
        lines += [*notes, ""]
    return lines


def _family_sections(family: FamilyResults) -> list[str]:
    """A family's per-CWE rows per mode (with the pooled vector's rows and the cross-CWE matrix)."""
    lines: list[str] = []
    for mode, table in family.held_out.items():
        by_target = family.choices.get(mode, {})
        how = next((c.selected_by for c in by_target.values()), "val")
        split = _split(table.split)
        lines += [f"## {mode} mode: {split} split, setting chosen on the {how} ({family.label})", ""]
        lines += [*cwe_table(table, dict(family.controls)), ""]
        pooled = by_target.get(POOLED)
        if table.pooled and pooled is not None:
            label = None if pooled.best is None else pooled.best.label()
            lines += [
                f"### Pooled 'any weakness' vector (its setting chosen on val over all CWEs: {label}; val "
                f"choice: {pooled.chosen})",
                "",
                *pooled_table(dict(table.pooled)),
                "",
            ]
        cross = table.cross_cwe
        if cross is not None and cross.vectors and cross.targets:
            lines += [
                f"### Cross-CWE matrix ({mode}, {split}): Δ balanced accuracy vs baseline when the row's vector, "
                "at its best steered setting on val, is applied to the column's samples",
                "",
                *cross_table(table),
                "",
            ]
    return lines


def _probe_section(probes: Sequence[ProbeResult]) -> list[str]:
    rows = probe_table(probes)
    header = [c if c != "threshold" else "threshold (val)" for c in PROBE_TABLE_COLUMNS]
    return [
        "## Probe detectors (fit on train, threshold on val, scored once on test)",
        "",
        "`direction` scores each sample by its projection on the CWE's mean-difference direction (higher = "
        "more vulnerable); `logistic` is an L2 logistic-regression probe on the same activations; `length` is "
        "their control, a logistic regression on the code's length alone (characters, lines, non-blank "
        "characters): a probe that does not beat it may be reading length rather than vulnerability.",
        "",
        *markdown_table(header, [list(r.values()) for r in rows]),
        "",
    ]


def _picked(results: Results, mode: str, entry: ValEntry, cwe: str) -> bool:
    """Whether *entry* is what its family chose for *cwe* in *mode* (the baseline: what some family kept)."""
    cond = entry.condition
    if cond.setting is None and cond.template == "default":
        return any((c := f.choices.get(mode, {}).get(cwe)) is not None and c.chosen == "baseline"
                   for f in results.families.values())  # fmt: skip
    family = results.families.get(entry.family or "")
    if family is None:
        return False
    if cond.setting is None:
        return family.templates.get(mode, {}).get(cwe) == cond.template
    choice = family.choices.get(mode, {}).get(cwe)
    return choice is not None and choice.chosen == "steered" and choice.best == cond.setting


def _val_table(results: Results, mode: str, entries: Sequence[ValEntry]) -> list[str]:
    """Validation balanced accuracy (and mean margin) of every own-vector candidate; chosen cells in bold."""
    cwes = results.cwes
    header = ["setting (vector = each CWE's own)", *cwes, "overall margin"]
    rows = []
    for entry in entries:
        cond = entry.condition
        if cond.role in ("control", "gate_control") or cond.vector is not None:
            continue
        label = cond.label() if cond.setting is None else cond.setting.label()
        cells = []
        for cwe in cwes:
            metrics = entry.metrics.get(cwe)
            value = fmt(None if metrics is None else metrics.balanced_accuracy)
            cells.append(f"**{value}**" if _picked(results, mode, entry, cwe) else value)
        overall = entry.metrics.get("overall")
        rows.append([label, *cells, fmt(None if overall is None else overall.mean_margin, 2)])
    return markdown_table(header, rows)


def _examples(family: FamilyResults, mode: str, items: Sequence[Example]) -> list[str]:
    """A family's example generations in *mode*: the heading names their split, each example whether its setting
    was chosen on val or only the best steered one there (the baseline won)."""
    splits = sorted({ex.split for ex in items if ex.split is not None})
    where = " and ".join(f"{_split(s)} split" for s in splits) or "held-out samples (split not recorded)"
    lines = [
        f"## Example generations ({mode} mode, {where}, {family.label}; baseline vs the chosen, else best, steered "
        "setting)",
        "",
    ]
    for ex in items:
        how = (
            "chosen on val"
            if ex.chosen == "steered"
            else "the best steered setting on val, not chosen: the baseline scored at least as well there"
        )
        lines.append(f"**{ex.cwe}** `{ex.sample_id}` (truth: {ex.truth}; steered: {ex.setting}, {how})")
        lines.append(f"- baseline ({ex.baseline_verdict}): `{_one_line(ex.baseline)}`")
        lines.append(f"- steered ({ex.steered_verdict}): `{_one_line(ex.steered)}`")
        lines.append("")
    return lines


def _later_sections(results: Results, plots: Sequence[str]) -> list[str]:
    lines: list[str] = []
    if results.probes:
        lines += _probe_section(results.probes)
    for plot in plots:
        lines += [f"![{Path(plot).stem}]({plot})", ""]
    for mode, entries in results.val.items():
        lines += [
            f"## All candidates, {mode} mode, VAL split (balanced accuracy; chosen in bold; `overall margin` = "
            "mean logp(' vulnerable') - logp(' secure'), which shows which way a setting really pushes)",
            "",
        ]
        lines += [*_val_table(results, mode, entries), ""]
    for family in results.families.values():
        for key, block in family.cosine.items():
            layer = list(block.layers)[len(block.layers) // 2]
            lines += [f"### Cosine similarity of the vectors ({key}, layer {layer}, fitted on TRAIN)", ""]
            lines += markdown_table(
                ["", *block.cwes],
                [[a, *(f"{v:+.2f}" for v in line)] for a, line in zip(block.cwes, block.layers[layer])],
            )
            lines.append("")
    for family in results.families.values():
        for mode, items in family.examples.items():
            lines += _examples(family, mode, items)
    cache = results.activation_cache
    if cache is not None:
        lines += [
            f"activation cache `{cache.dir}`: {cache.hits} entries reused, {cache.misses} extracted (layers "
            f"{list(cache.extracted_layers)})",
            "",
        ]
    if results.timings_s:
        spent = ", ".join(f"{k}: {v}" for k, v in results.timings_s.items())
        lines += ["## Timings (s)", "", "Summed over every attempt at this run (a resume adds its own).", "", spent, ""]
    return lines


def render_markdown(results: Results, plots: Sequence[str] = ()) -> str:
    """The whole report (a partial one, listing what is finished, for an interrupted run)."""
    if results.interrupted:
        done = results.finished_conditions
        lines = [
            f"# vulnsteer report ({results.command})",
            "",
            f"**INTERRUPTED**: this report is partial. {len(done)} conditions are finished and kept in "
            "`records.jsonl`; rerun the same command to resume.",
            "",
        ]
        lines += [f"- {c.key}" for c in done[:200]]
        return "\n".join(lines) + "\n"
    first = [p for p in plots if Path(p).stem.startswith("margins_")]
    rest = [p for p in plots if p not in first]
    lines = [*_header(results), *_first_screen(results, first)]
    for family in results.families.values():
        lines += _family_sections(family)
    lines += _later_sections(results, rest)
    return "\n".join(lines) + "\n"


def _one_line(text: str | None) -> str:
    return (text or "").replace("\n", " ⏎ ").replace("`", "'")[:300]
