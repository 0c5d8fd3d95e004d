"""``report.md``: one renderer over the sections of a ``results.json`` (run, sweep and both evaluate commands).

The report leads with one table per detector mode: per CWE, n, the baseline, the setting chosen on validation
(applied once to the held-out samples), its random-direction control, the change with its confidence interval,
McNemar's p-value, the answers that flipped each way, and a sentence saying whether the change is real. Every
number says which split it comes from. Then: the pooled vector, the cross-CWE matrix, probe detectors, plots, every
validation candidate, vector cosines, example generations, caches and timings. A section without data is left out.

>>> fmt(0.12345), fmt(None), fmt(float("nan"))
('0.123', '–', 'nan')
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..cwe import cwe_name
from .probes import PROBE_TABLE_COLUMNS, probe_table

__all__ = ["ci_cell", "duplicates_text", "fmt", "lead_table", "markdown_table", "render_markdown"]

SPLIT_NAMES = {"test": "TEST", "val": "VAL", "train": "TRAIN", "all": "ALL samples"}


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
        merged = " (merged into one split group)" if notes.get("merge_duplicates") else " (kept)"
        return f"cross-split duplicates{merged}: exact {dup.get('exact', 0)}, normalised {dup.get('normalised', 0)}"
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


def _delta_cell(row: Mapping[str, Any]) -> str:
    lo, hi = row["delta_ci"]
    return f"{row['delta']:+.3f} [{lo:+.2f}, {hi:+.2f}]"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def lead_table(rows: Mapping[str, Any], split: str = "test") -> list[str]:
    """Per CWE: n, baseline, chosen setting, random control, Δ [CI], McNemar p, flips; then one sentence each."""
    body = []
    for cwe, row in rows.items():
        flips = row.get("flips") or {}
        body.append(
            [
                f"{cwe} ({cwe_name(cwe)})",
                f"{row['n']} ({row['n_pairs']} pairs)",
                ci_cell(row["baseline"]),
                f"{ci_cell(row['steered'])}<br>{row['chosen']}",
                ci_cell(row.get("control")),
                _delta_cell(row),
                fmt(row["p_value"], 3),
                f"+{flips.get('wrong_to_right', 0)} / −{flips.get('right_to_wrong', 0)}",
            ]
        )
    header = [
        "CWE",
        f"n ({split})",
        "baseline bal.acc [95% CI]",
        f"chosen on val → {split}",
        "random control",
        "Δ bal.acc [95% CI]",
        "McNemar p",
        "flips (→right / →wrong)",
    ]
    lines = [*markdown_table(header, body), ""]
    lines += [f"- **{cwe}**: {row['words']}." for cwe, row in rows.items()]
    for cwe, row in rows.items():
        if "best_steered_not_chosen" in row:
            other = row["best_steered_not_chosen"]
            lines.append(
                f"- {cwe}: the best steered setting on val (not chosen: the baseline scored at least as "
                f"well) was {other['chosen']}; on {SPLIT_NAMES.get(split, split)} it gives "
                f"{_delta_cell(other)} (for information only)"
            )
    return lines


def pooled_table(rows: Mapping[str, Any]) -> list[str]:
    body = [
        [
            cwe,
            str(r["n"]),
            ci_cell(r["baseline"]),
            ci_cell(r["steered"]),
            ci_cell(r.get("control")),
            _delta_cell(r),
            fmt(r["p_value"]),
        ]
        for cwe, r in rows.items()
    ]
    header = ["CWE", "n", "baseline", "pooled vector", "random control", "Δ bal.acc [95% CI]", "McNemar p"]
    return markdown_table(header, body)


def cross_table(cross: Mapping[str, Any]) -> list[str]:
    header = ["vector ↓ / samples →", *cross["targets"]]
    rows = []
    for name, line in zip(cross["vectors"], cross["delta_balanced_accuracy"]):
        mark = "" if cross["chosen"].get(name) == "steered" else " (baseline won on val)"
        rows.append([f"{name}{mark}", *[("–" if v is None else f"{v:+.3f}") for v in line]])
    return markdown_table(header, rows)


def _header(results: Mapping[str, Any]) -> list[str]:
    cfg, data, model = results["config"], results["data"], results["model"]
    command = results.get("command", "run")
    lines = [f"# vulnsteer report ({command})", ""]
    lines.append(
        f"- model: `{model['id']}` ({model['num_layers']} layers, hidden {model['hidden_size']}, "
        f"fingerprint {model['fingerprint']})"
    )
    if command.startswith("evaluate"):
        if "run_dir" in results:
            lines.append(
                f"- settings chosen in `{results['run_dir']}` (per CWE on that run's **validation** split) "
                "and applied here **unchanged**; nothing is re-selected"
            )
        else:
            lines.append(
                f"- vectors from `{results.get('vectors_from')}` at the setting given on the command line "
                "(no selection)"
            )
        lines.append(f"- data: `{data['source']}`: {data['n_samples']} samples of {', '.join(data['cwes'])}")
        skipped = data.get("skipped_cwes") or {}
        lines.append(
            "- skipped (no vector or choice for them): "
            + (", ".join(f"{c} ({n} samples)" for c, n in skipped.items()) or "none")
        )
        if "overlap_with_run_train" in data:
            lines.append(f"- samples whose code is also in the run's training split: {data['overlap_with_run_train']}")
    else:
        splits = data["splits"]
        d, v, s = cfg["data"], cfg["vectors"], cfg["steering"]
        lines += [
            f"- data: `{data['source']}`; CWEs: {', '.join(data['cwes'])}; split by pair/group (seed {d['seed']}): "
            f"train {splits['train']['n']}, val {splits['val']['n']}, test {splits['test']['n']} samples; "
            f"{duplicates_text(splits)}",
            f"- comments stripped: {data['notes'].get('comments_stripped')}; truncated to "
            f"{data['notes'].get('max_code_tokens')} tokens: {data['notes'].get('truncated', 0)} samples",
            f"- grid: methods {v['methods']} at pooling {v['pooling']}; layer sets {results.get('layer_sets')}; "
            f"strengths {s['strengths']}; steered positions {s['positions']}; modes {cfg['detection']['modes']}; "
            f"pooled vector: {v['pooled']}",
            "- **splits**: vectors are fitted on **train**; every candidate (and the baseline) is scored on **val**, "
            "and the setting per CWE is chosen there (balanced accuracy, ties to the smaller |strength|); the "
            "chosen setting is evaluated once on **test**. Test data never influences a choice.",
            "- a layer set is steered at all its layers at once; with `relative` strengths each layer's shift is the "
            "strength times that layer's mean hidden-state norm.",
        ]
        files = results.get("files") or {}
        if files:
            lines.append(
                f"- resolved config: `{files['resolved_config']}` (`vulnsteer sweep` on it reproduces this "
                f"run); chosen vectors and settings: `{files['chosen']}` (apply elsewhere with `vulnsteer "
                "evaluate --from RUN_DIR --data OTHER`)"
            )
    lines += [
        f"- **sign convention**: {results['sign_convention']}",
        "- every steered row has a random-direction control (same norm, same layers); CIs are 95% pair-bootstrap "
        "intervals; p-values are McNemar's exact test against the baseline on the same samples. Always answering "
        "'vulnerable' scores balanced accuracy 0.5 and pair accuracy 0.",
        "",
    ]
    lines += [f"> warning: {w}" for w in results.get("warnings", [])]
    return lines


def _first_screen(results: Mapping[str, Any], plots: Sequence[str]) -> list[str]:
    """Every detector on the same held-out samples, per mode: the answer first."""
    lines: list[str] = []
    for mode, block in results.get("lead", {}).items():
        split = SPLIT_NAMES.get(block["split"], block["split"])
        lines += [f"## {mode} mode: every detector on the {split} samples", ""]
        body = []
        for row in block["rows"]:
            m = row["metrics"]
            flips = row.get("flips")
            lever = row.get("lever_rate") or {}
            body.append(
                [
                    f"**{row['name']}**",
                    row["label"],
                    ci_cell(m),
                    fmt(m.get("pair_accuracy")),
                    "–" if row["name"] == "baseline" else _delta_cell(row),
                    "–" if row["name"] == "baseline" else fmt(row["p_value"], 3),
                    "–" if not flips else f"+{flips['wrong_to_right']} / −{flips['right_to_wrong']}",
                    "–"
                    if lever.get("rate") is None
                    else f"{lever['rate']:.2f} ({lever['followed']}/{lever['pushed']})",
                ]
            )
        header = [
            "detector",
            "what it is",
            "bal.acc [95% CI]",
            "pair acc",
            "Δ vs baseline [95% CI]",
            "McNemar p",
            "flips (→right / →wrong)",
            "lever rate",
        ]
        lines += [*markdown_table(header, body), "", block.get("words", ""), ""]
        lines += [f"![{Path(p).stem}]({p})" for p in plots if Path(p).stem == f"margins_{mode}"]
        lines.append("")
    if results.get("lead"):
        lines += [
            "`lever rate`: among inputs a gate pushed, how often the verdict followed the push (toward "
            "'vulnerable' where the probe said vulnerable, toward 'secure' where it said secure).",
            "",
        ]
    return lines


def _conditional_sections(results: Mapping[str, Any]) -> list[str]:
    lines: list[str] = []
    for mode, rows in results.get("conditional", {}).items():
        split = next((r["split"] for r in rows.values()), "test")
        lines += [f"### Conditional steering per CWE ({mode}, {SPLIT_NAMES.get(split, split)})", ""]
        body = []
        for cwe, row in rows.items():
            shown = row.get("best_steered_not_chosen", row)
            lever = shown.get("lever_rate") or {}
            body.append(
                [
                    cwe,
                    ci_cell(row["baseline"]),
                    f"{ci_cell(row['steered'])}<br>{row['chosen']}",
                    ci_cell(shown.get("gate_control")),
                    ci_cell(shown.get("control")),
                    _delta_cell(row),
                    fmt(row["p_value"], 3),
                    f"+{row['flips']['wrong_to_right']} / −{row['flips']['right_to_wrong']}",
                    "–" if lever.get("rate") is None else f"{lever['rate']:.2f}",
                ]
            )
        header = [
            "CWE",
            "baseline",
            "conditional (chosen on val)",
            "random gate",
            "random vector",
            "Δ [95% CI]",
            "McNemar p",
            "flips",
            "lever rate",
        ]
        lines += [*markdown_table(header, body), ""]
    return lines


def _lead_sections(results: Mapping[str, Any]) -> list[str]:
    lines: list[str] = []
    for mode, rows in results.get("summary", {}).items():
        split = next((r["split"] for r in rows.values()), "test")
        picked: Mapping[str, Any] = next(iter(results.get("selection", {}).get(mode, {}).values()), {})
        how = picked.get("selected_by", "val")
        lines += [f"## {mode} mode: {SPLIT_NAMES.get(split, split)} split, setting chosen on the {how}", ""]
        lines += [*lead_table(rows, split), ""]
        if results.get("pooled", {}).get(mode):
            pooled = results["selection"][mode].get("any", {})
            label = (pooled.get("best_steered") or {}).get("label")
            lines += [
                f"### Pooled 'any weakness' vector (its setting chosen on val over all CWEs: {label}; val "
                f"choice: {pooled.get('chosen')})",
                "",
                *pooled_table(results["pooled"][mode]),
                "",
            ]
        cross = results.get("cross_cwe", {}).get(mode)
        if cross and cross.get("vectors") and cross.get("targets"):
            lines += [
                f"### Cross-CWE matrix ({mode}, {SPLIT_NAMES.get(split, split)}): Δ balanced accuracy vs "
                "baseline when the row's vector, at its best steered setting on val, is applied to the "
                "column's samples",
                "",
                *cross_table(cross),
                "",
            ]
    return lines


def _probe_section(probes: Sequence[Mapping[str, Any]]) -> list[str]:
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


def _val_table(
    entries: Sequence[Mapping[str, Any]], cwes: Sequence[str], selection: Mapping[str, Mapping[str, Any]]
) -> list[str]:
    """Validation balanced accuracy (and mean margin) of every own-vector candidate; chosen cells in bold."""
    chosen = {cwe: (c["best_steered"] or {}).get("label") for cwe, c in selection.items() if c["chosen"] == "steered"}
    header = ["setting (vector = each CWE's own)", *cwes, "overall margin"]
    rows = []
    for entry in entries:
        cond = entry["condition"]
        if cond["kind"] == "control" or cond["vector"] is not None:
            continue
        label = "baseline" if cond["kind"] == "baseline" else entry["setting"]["label"]
        cells = []
        for cwe in cwes:
            value = fmt((entry["metrics"].get(cwe) or {}).get("balanced_accuracy"))
            is_pick = chosen.get(cwe) == label or (label == "baseline" and cwe in selection and cwe not in chosen)
            cells.append(f"**{value}**" if is_pick else value)
        rows.append([label, *cells, fmt((entry["metrics"].get("overall") or {}).get("mean_margin"), 2)])
    return markdown_table(header, rows)


def _later_sections(results: Mapping[str, Any], plots: Sequence[str]) -> list[str]:
    lines: list[str] = []
    if results.get("probes"):
        lines += _probe_section(results["probes"])
    for plot in plots:
        lines += [f"![{Path(plot).stem}]({plot})", ""]
    for mode, entries in results.get("val", {}).items():
        lines += [
            f"## All candidates, {mode} mode, VAL split (balanced accuracy; chosen in bold; `overall margin` = "
            "mean logp(' vulnerable') - logp(' secure'), which shows which way a setting really pushes)",
            "",
        ]
        lines += [*_val_table(entries, results["data"]["cwes"], results["selection"][mode]), ""]
    for key, block in results.get("cosine", {}).items():
        layer = list(block["layers"])[len(block["layers"]) // 2]
        lines += [f"### Cosine similarity of the vectors ({key}, layer {layer}, fitted on TRAIN)", ""]
        lines += markdown_table(
            ["", *block["cwes"]],
            [[a, *(f"{v:+.2f}" for v in line)] for a, line in zip(block["cwes"], block["layers"][layer])],
        )
        lines.append("")
    for mode, items in results.get("examples", {}).items():
        lines += [f"## Example generations ({mode} mode; baseline vs the chosen, else best, steered setting)", ""]
        for ex in items:
            lines.append(
                f"**{ex['cwe']}** `{ex['sample_id']}` (truth: {ex['truth']}; {ex['setting']}, {ex['chosen']} on val)"
            )
            lines.append(f"- baseline ({ex['baseline_verdict']}): `{_one_line(ex['baseline'])}`")
            lines.append(f"- steered ({ex['steered_verdict']}): `{_one_line(ex['steered'])}`")
            lines.append("")
    cache = results.get("activation_cache")
    if cache:
        lines += [
            f"activation cache `{cache.get('dir')}`: {cache.get('hits', 0)} entries reused, "
            f"{cache.get('misses', 0)} extracted (layers {cache.get('extracted_layers', [])})",
            "",
        ]
    if results.get("timings_s"):
        lines += ["## Timings (s)", "", ", ".join(f"{k}: {v}" for k, v in results["timings_s"].items()), ""]
    return lines


def render_markdown(results: Mapping[str, Any], plots: Sequence[str] = ()) -> str:
    """The whole report (a partial one, listing what is finished, for an interrupted run)."""
    if results.get("status") == "interrupted":
        done = results.get("finished_conditions", [])
        lines = [
            f"# vulnsteer report ({results.get('command', 'run')})",
            "",
            f"**INTERRUPTED**: this report is partial. {len(done)} conditions are finished and kept in "
            "`records.jsonl`; rerun the same command to resume.",
            "",
        ]
        lines += [f"- {c['key']}" for c in done[:200]]
        return "\n".join(lines) + "\n"
    first = [p for p in plots if Path(p).stem.startswith("margins_")]
    rest = [p for p in plots if p not in first]
    lines = [
        *_header(results),
        *_first_screen(results, first),
        *_conditional_sections(results),
        *_lead_sections(results),
        *_later_sections(results, rest),
    ]
    return "\n".join(lines) + "\n"


def _one_line(text: str | None) -> str:
    return (text or "").replace("\n", " ⏎ ").replace("`", "'")[:300]
