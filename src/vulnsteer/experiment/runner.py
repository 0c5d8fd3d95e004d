"""``vulnsteer run``: the default experiment, end to end.

Data (bundled corpus by default) -> train/val/test split by pair -> one mean-difference vector per CWE from the
train split at the middle layer -> baseline, steered and random-control conditions on val and test in logit mode
-> a strength chosen per CWE on val -> generation mode on test with the baseline and the chosen strengths (and
their controls) -> results.json + report.md (+ plots).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..detect.engine import DetectionRecord, PrefixStore
from ..detect.probe import evaluate_length_control, evaluate_probes
from ..io import write_json
from ..lm.activations import POSITIONS, ActivationSink, extract_activations
from ..lm.model import LoadedModel, load_model
from ..lm.prompts import DEFAULT_TEMPLATE
from ..stats.metrics import bootstrap_ci, bootstrap_diff_ci, compute_metrics, mcnemar_exact
from ..steer.hooks import __doc__ as _steering_doc
from ..steer.vectors import SteeringVector
from .engine import (
    SCHEMA_VERSION,
    Condition,
    PreparedData,
    ResultStore,
    RunConfig,
    environment_info,
    fit_cwe_vectors,
    json_ready,
    prepare_data,
    resolve_run_layers,
    run_conditions,
    select_per_cwe,
)

__all__ = [
    "SIGN_CONVENTION",
    "compare_to_baseline",
    "default_out_dir",
    "run_experiment",
    "save_vectors",
    "summarize_metrics",
    "summary_rows",
    "verdict_words",
]

SIGN_CONVENTION = (
    "Vectors point from vulnerable to secure (mean(secure) - mean(vulnerable)); a positive steering strength "
    "subtracts the vector and so pushes the model toward answering 'vulnerable'."
)
assert _steering_doc and "positive strength pushes the model toward reporting a vulnerability" in _steering_doc

N_BOOT = 1000


def default_out_dir(root: str | Path = "runs") -> Path:
    return Path(root) / time.strftime("%Y%m%d-%H%M%S")


def _metrics_block(records: Sequence[DetectionRecord], seed: int) -> dict[str, Any]:
    preds = [r.to_prediction() for r in records]
    metrics = compute_metrics(preds).to_dict()
    metrics["balanced_accuracy_ci"] = list(bootstrap_ci(preds, "balanced_accuracy", n_boot=N_BOOT, seed=seed))
    margins = [r.margin for r in records if r.margin is not None]
    # logp(" vulnerable") - logp(" secure"): shows which way a steered setting really pushes the answer
    metrics["mean_margin"] = sum(margins) / len(margins) if margins else None
    return metrics


def summarize_metrics(records: Sequence[DetectionRecord], cwes: Sequence[str], seed: int = 0) -> dict[str, Any]:
    """Metrics (with a pair-bootstrap CI of balanced accuracy) per CWE and overall."""
    out: dict[str, Any] = {}
    for cwe in cwes:
        subset = [r for r in records if r.cwe == cwe]
        if subset:
            out[cwe] = _metrics_block(subset, seed)
    if records:
        out["overall"] = _metrics_block(records, seed)
    return out


def compare_to_baseline(
    base: Sequence[DetectionRecord], other: Sequence[DetectionRecord], cwes: Sequence[str], seed: int = 0
) -> dict[str, Any]:
    """Per CWE and overall: the balanced-accuracy change with a paired bootstrap CI, and McNemar's exact p."""
    out: dict[str, Any] = {}
    for cwe in [*cwes, "overall"]:
        b = [r.to_prediction() for r in base if cwe == "overall" or r.cwe == cwe]
        o = [r.to_prediction() for r in other if cwe == "overall" or r.cwe == cwe]
        if not b or {p.sample_id for p in b} != {p.sample_id for p in o}:
            continue
        diff = compute_metrics(o).balanced_accuracy - compute_metrics(b).balanced_accuracy
        lo, hi = bootstrap_diff_ci(b, o, "balanced_accuracy", n_boot=N_BOOT, seed=seed)
        test = mcnemar_exact(b, o)
        out[cwe] = {
            "delta_balanced_accuracy": diff,
            "delta_ci": [lo, hi],
            "mcnemar_p": test.p_value,
            "mcnemar_b": test.b,
            "mcnemar_c": test.c,
        }
    return out


def verdict_words(delta: float, ci: Sequence[float], p: float, control_delta: float | None) -> str:
    """One plain sentence: is the steered gain real, and does it beat the random control?"""
    if any(math.isnan(x) for x in (delta, *ci)):
        return "not measurable"
    sig = p < 0.05 and (ci[0] > 0 or ci[1] < 0)
    direction = "gain" if delta > 0 else ("loss" if delta < 0 else "no change")
    if delta == 0:
        return "the chosen steering setting left balanced accuracy on test unchanged (Δ 0.000)"
    parts = [
        f"{direction} of {delta:+.3f} balanced accuracy is {'significant' if sig else 'not significant'} "
        f"(p={p:.3g}, 95% CI [{ci[0]:+.3f}, {ci[1]:+.3f}])"
    ]
    if control_delta is not None:
        beats = delta > control_delta
        parts.append(f"{'beats' if beats else 'does not beat'} the random-direction control ({control_delta:+.3f})")
    return "; ".join(parts)


def _selection_mode(config: RunConfig, mode: str) -> str:
    """The detector mode whose validation results choose *mode*'s strength.

    Generation is the expensive detector, so when logit mode runs too, the strength is chosen per CWE on the
    logit-mode validation results and generation runs on test only (the report says so).
    """
    return "logit" if mode == "generation" and "logit" in config.modes else mode


def _steered_pair(config: RunConfig, mode: str, split: str, strength: float, layers: Sequence[int]) -> list[Condition]:
    return [
        Condition(
            kind,
            mode,
            split,
            strength,
            tuple(layers),
            config.unit,
            config.steer_positions,
            config.method,
            None,
            config.control_seed,
        )
        for kind in ("steered", "control")
    ]


def _conditions(config: RunConfig, layers: Sequence[int]) -> list[Condition]:
    """The first phase: every strength in each selecting mode (val and test); only the baseline (test) in a mode
    whose strength another mode chooses (its steered settings come in :func:`_chosen_conditions`)."""
    conds: list[Condition] = []
    for mode in config.modes:
        delegated = _selection_mode(config, mode) != mode
        for split in ("test",) if delegated else ("val", "test"):
            conds.append(Condition("baseline", mode, split))
            if delegated:
                continue
            for strength in config.strengths:
                if strength != 0:
                    conds += _steered_pair(config, mode, split, strength, layers)
    return conds


def _chosen(
    config: RunConfig,
    mode: str,
    conds: Sequence[Condition],
    records: Mapping[str, Sequence[DetectionRecord]],
    cwes: Sequence[str],
) -> dict[str, Condition]:
    """Per CWE, the setting chosen on the val split of *mode*'s selecting mode (baseline when nothing beats it)."""
    by = _selection_mode(config, mode)
    candidates = [c for c in conds if c.mode == by and c.split == "val" and c.kind in ("baseline", "steered")]

    def val_score(cond: Condition, cwe: str) -> float | None:
        preds = [r.to_prediction() for r in records[cond.key] if r.cwe == cwe]
        return compute_metrics(preds).balanced_accuracy if preds else None

    return select_per_cwe(candidates, val_score, cwes)


def _chosen_conditions(
    config: RunConfig, conds: Sequence[Condition], records: Mapping[str, Sequence[DetectionRecord]], cwes: Sequence[str]
) -> list[Condition]:
    """The second phase: in each mode whose strength another mode chooses (generation, chosen on logit val), the
    test conditions (steered + random control) of the strengths some CWE chose; generation is the expensive
    detector, so the strengths no CWE chose are not generated."""
    extra: list[Condition] = []
    for mode in config.modes:
        if _selection_mode(config, mode) == mode:
            continue
        picked = {c.strength: c for c in _chosen(config, mode, conds, records, cwes).values() if c.kind != "baseline"}
        for strength in sorted(picked):
            extra += _steered_pair(config, mode, "test", strength, picked[strength].layers)
    return extra


def _examples(
    records_by_key: Mapping[str, Sequence[DetectionRecord]],
    base_key: str,
    steered_key: str,
    cwes: Sequence[str],
    n: int,
) -> list[dict[str, Any]]:
    base = {r.sample_id: r for r in records_by_key.get(base_key, [])}
    out = []
    for cwe in cwes:
        rows = [r for r in records_by_key.get(steered_key, []) if r.cwe == cwe][:n]
        for r in rows:
            b = base.get(r.sample_id)
            out.append(
                {
                    "cwe": cwe,
                    "sample_id": r.sample_id,
                    "truth": "vulnerable" if r.y_true else "secure",
                    "baseline": b.text if b else None,
                    "baseline_verdict": b.verdict if b else None,
                    "steered": r.text,
                    "steered_verdict": r.verdict,
                }
            )
    return out


def run_experiment(
    config: RunConfig, out_dir: str | Path | None = None, *, lm: LoadedModel | None = None, progress: bool = True
) -> Path:
    """Run the default experiment and write ``results.json`` and ``report.md`` into *out_dir*; returns it.

    Finished conditions are kept in ``records.jsonl``: rerunning with the same *out_dir* resumes.
    """
    from ..report.markdown import write_report

    out = Path(out_dir) if out_dir is not None else default_out_dir()
    started = time.perf_counter()
    own_model = lm is None
    if lm is None:
        lm = load_model(config.model, device=config.device, dtype=config.dtype)
    try:
        timings: dict[str, float] = {"load_model": time.perf_counter() - started}
        t = time.perf_counter()
        data = prepare_data(config, lm.tokenizer, progress=progress, require=("train", "val", "test"))
        layers = resolve_run_layers(config.layers, lm.num_layers)
        out.mkdir(parents=True, exist_ok=True)  # only once the data and layers are known to be usable
        timings["prepare_data"] = time.perf_counter() - t
        t = time.perf_counter()
        split_samples = {
            name: [s for group in data.by_cwe(name).values() for s in group] for name in ("train", "val", "test")
        }
        train_acts = extract_activations(
            lm, split_samples["train"], layers, positions=POSITIONS, batch_size=config.batch_size, progress=progress
        )
        timings["activations_train"] = time.perf_counter() - t
        t = time.perf_counter()
        vectors = fit_cwe_vectors(
            lm,
            data.by_cwe("train"),
            layers,
            position=config.position,
            methods=[config.method],
            activations=train_acts,
            progress=progress,
        )
        vector_info = save_vectors(vectors, out / "vectors")
        timings["fit_vectors"] = time.perf_counter() - t
        t = time.perf_counter()
        store = ResultStore(out / "records.jsonl")
        conds = _conditions(config, layers)
        sink = ActivationSink(layers)  # val/test activations for the probes, recorded by the baseline passes
        prefixes = PrefixStore()  # the second phase re-reads the test prompts: their prefixes are computed once
        records = run_conditions(
            lm,
            conds,
            store,
            data.by_cwe,
            vectors,
            batch_size=config.batch_size,
            max_new_tokens=config.max_new_tokens,
            progress=progress,
            sink=sink,
            prefix_store=prefixes,
        )
        extra = _chosen_conditions(config, conds, records, data.cwes)
        if extra:
            records.update(
                run_conditions(
                    lm,
                    extra,
                    store,
                    data.by_cwe,
                    vectors,
                    batch_size=config.batch_size,
                    max_new_tokens=config.max_new_tokens,
                    progress=progress,
                    prefix_store=prefixes,
                )
            )
            conds = [*conds, *extra]
        timings["evaluate"] = time.perf_counter() - t
        t = time.perf_counter()
        split_acts = {"train": train_acts}
        for name in ("val", "test"):
            ids = [s.id for s in split_samples[name]]
            split_acts[name] = (
                sink.activations(ids)
                if sink.complete(ids)
                # resumed runs re-extract
                else extract_activations(
                    lm,
                    split_samples[name],
                    layers,
                    positions=POSITIONS,
                    batch_size=config.batch_size,
                    progress=progress,
                )
            )
        probes = evaluate_probes(
            *((split_acts[n], split_samples[n]) for n in ("train", "val", "test")), layers=layers, seed=config.seed
        )
        probes += evaluate_length_control(*(split_samples[n] for n in ("train", "val", "test")), seed=config.seed)
        timings["probes"] = time.perf_counter() - t
        results = _assemble(config, lm, data, layers, vector_info, conds, records)
        results["probes"] = json_ready([p.to_dict() for p in probes])
        timings["total"] = time.perf_counter() - started
        results["timings_s"] = {k: round(v, 2) for k, v in timings.items()}
        write_json(out / "results.json", results)
        write_report(results, out)
    finally:
        if own_model:
            lm.close()
    return out


def save_vectors(vectors: Mapping[tuple[str, str], SteeringVector], folder: Path) -> dict[str, Any]:
    info: dict[str, Any] = {}
    for (cwe, method), vec in vectors.items():
        path = folder / f"{cwe.lower()}-{method}.safetensors"
        vec.save(path)
        info[f"{cwe}|{method}"] = {
            "file": str(path.relative_to(folder.parent)),
            "cwe": cwe,
            "method": method,
            "layers": list(vec.layers),
            "norm": {str(layer): vec.norm(layer) for layer in vec.layers},
            "relative_norm": {str(layer): vec.relative_norm(layer) for layer in vec.layers},
            "n_vulnerable": vec.provenance.n_vulnerable,
            "n_secure": vec.provenance.n_secure,
        }
    return info


def _assemble(
    config: RunConfig,
    lm: LoadedModel,
    data: PreparedData,
    layers: Sequence[int],
    vector_info: Mapping[str, Any],
    conds: Sequence[Condition],
    records: Mapping[str, Sequence[DetectionRecord]],
) -> dict[str, Any]:
    cwes = data.cwes
    evaluated = []
    metric_cache: dict[str, dict[str, Any]] = {}
    for cond in conds:
        metrics = summarize_metrics(records[cond.key], cwes, config.seed)
        metric_cache[cond.key] = metrics
        base_key = Condition("baseline", cond.mode, cond.split).key
        entry: dict[str, Any] = {"condition": cond.to_dict(), "label": cond.label(), "metrics": metrics}
        if cond.kind != "baseline":
            entry["vs_baseline"] = compare_to_baseline(records[base_key], records[cond.key], cwes, config.seed)
        evaluated.append(entry)

    selection: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    examples: dict[str, Any] = {}
    for mode in config.modes:
        by = _selection_mode(config, mode)

        def val_score(cond: Condition, cwe: str) -> float | None:
            block = metric_cache[cond.key].get(cwe)
            return None if block is None else float(block["balanced_accuracy"])

        chosen = {
            cwe: dataclasses.replace(c, mode=mode) for cwe, c in _chosen(config, mode, conds, records, cwes).items()
        }
        selection[mode] = {
            cwe: {
                "condition": c.to_dict(),
                "selected_by": f"{by} mode, val split",
                "val_balanced_accuracy": val_score(dataclasses.replace(c, mode=by), cwe),
            }
            for cwe, c in chosen.items()
        }
        summary[mode] = summary_rows(mode, cwes, chosen, conds, records, metric_cache, config.seed)
        if mode == "generation" and config.n_examples:
            strongest = max(
                (c for c in conds if c.mode == mode and c.split == "test" and c.kind == "steered"),
                key=lambda c: c.strength,
                default=None,
            )
            if strongest is not None:
                examples[mode] = _examples(
                    records, Condition("baseline", mode, "test").key, strongest.key, cwes, config.n_examples
                )
    return json_ready(
        {
            "schema_version": SCHEMA_VERSION,
            "command": "run",
            "config": config.to_dict(),
            "template": DEFAULT_TEMPLATE.to_dict(),
            "sign_convention": SIGN_CONVENTION,
            "environment": environment_info(),
            "model": {
                "id": lm.model_id,
                "fingerprint": lm.fingerprint,
                "num_layers": lm.num_layers,
                "hidden_size": lm.hidden_size,
                **lm.extra,
            },
            "layers": list(layers),
            "data": {"source": data.source, "cwes": cwes, "notes": data.notes, "splits": data.splits.summary()},
            "vectors": vector_info,
            "conditions": evaluated,
            "selection": selection,
            "summary": summary,
            "examples": examples,
            "records": {key: [r.to_dict() for r in recs] for key, recs in records.items()},
        }
    )


def summary_rows(
    mode: str,
    cwes: Sequence[str],
    chosen: Mapping[str, Condition],
    conds: Sequence[Condition],
    records: Mapping[str, Sequence[DetectionRecord]],
    metric_cache: Mapping[str, Mapping[str, Any]],
    seed: int,
    split: str = "test",
) -> dict[str, Any]:
    """Per CWE, on *split* (test): baseline, the chosen steered setting, its random control, CI and p-value."""
    base_key = Condition("baseline", mode, split).key
    rows: dict[str, Any] = {}
    for cwe in cwes:
        pick = chosen.get(cwe)
        base = metric_cache[base_key].get(cwe)
        if base is None:
            continue
        row: dict[str, Any] = {"n": base["n"], "n_pairs": base["n_pairs"], "split": split, "baseline": _brief(base)}
        if pick is None or pick.kind == "baseline":
            row["chosen"] = "baseline (no strength beat it on val)"
            row["steered"] = _brief(base)
            row["control"] = None
            row["delta"], row["delta_ci"], row["p_value"] = 0.0, [0.0, 0.0], 1.0
            row["words"] = "no steering strength beat the baseline on validation; test shows the baseline"
            rows[cwe] = row
            continue
        test_cond = _with_split(pick, split, conds, "steered")
        ctrl_cond = _with_split(pick, split, conds, "control")
        steered = metric_cache[test_cond.key][cwe]
        comp = compare_to_baseline(
            [r for r in records[base_key] if r.cwe == cwe],
            [r for r in records[test_cond.key] if r.cwe == cwe],
            [cwe],
            seed,
        )[cwe]
        control = metric_cache[ctrl_cond.key].get(cwe) if ctrl_cond else None
        control_delta = (control["balanced_accuracy"] - base["balanced_accuracy"]) if control else None
        row.update(
            {
                "chosen": pick.label(),
                "strength": pick.strength,
                "steered": _brief(steered),
                "control": _brief(control) if control else None,
                "delta": comp["delta_balanced_accuracy"],
                "delta_ci": comp["delta_ci"],
                "p_value": comp["mcnemar_p"],
                "words": verdict_words(
                    comp["delta_balanced_accuracy"], comp["delta_ci"], comp["mcnemar_p"], control_delta
                ),
            }
        )
        rows[cwe] = row
    return rows


def _with_split(cond: Condition, split: str, conds: Sequence[Condition], kind: str) -> Condition:
    for c in conds:
        if c.kind == kind and c.mode == cond.mode and c.split == split and c.setting == cond.setting:
            return c
    raise KeyError(f"no {kind} condition on {split} for {cond.setting}")


def _brief(metrics: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if metrics is None:
        return None
    keys = (
        "balanced_accuracy",
        "balanced_accuracy_ci",
        "accuracy",
        "tpr",
        "fpr",
        "pair_accuracy",
        "vulnerable_rate",
        "uncertain_rate",
        "auroc",
        "mcc",
        "f1",
    )
    return {k: metrics.get(k) for k in keys}
