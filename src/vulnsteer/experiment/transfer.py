"""``vulnsteer evaluate --from RUN_DIR --data OTHER``: a sweep's chosen configurations, applied unchanged.

The sweep saved, per detector mode and CWE, the validation choice and the vector it used
(``chosen/chosen.json`` + ``chosen/*.safetensors``). Here nothing is selected again: each CWE's chosen setting
(or the baseline, where the baseline won on validation) is applied to **every** sample of that CWE in the other
dataset, with the same random-direction control, pair-bootstrap CIs and McNemar p-values as the sweep's test
evaluation, plus the cross-CWE matrix and the pooled vector. CWEs of the other dataset without a chosen
configuration are listed as skipped. A model whose fingerprint (architecture) or weights differ from the run's is
refused unless ``--allow-model-mismatch``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..data.sample import Sample
from ..io import write_json, write_text
from ..lm.activation_cache import model_key
from ..lm.model import LoadedModel, load_model
from ..lm.prompts import DEFAULT_TEMPLATE
from ..steer.vectors import SteeringVector, VectorMismatchError, dataset_hash
from .engine import (
    SCHEMA_VERSION,
    ResultStore,
    RunConfig,
    environment_info,
    json_ready,
    prepare_data,
    run_conditions,
)
from .runner import SIGN_CONVENTION
from .sweep import (
    CHOSEN_DIR,
    CHOSEN_NAME,
    POOLED,
    RECORDS_NAME,
    Choice,
    check_identity,
    cross_table,
    held_out_conditions,
    held_out_results,
    pooled_table,
    render_lead,
)

__all__ = ["SPLIT", "check_model", "evaluate_from_run", "load_chosen", "transfer"]

log = logging.getLogger(__name__)

#: The split name of transfer conditions: every sample of the other dataset.
SPLIT = "all"


def load_chosen(run_dir: str | Path) -> dict[str, Any]:
    """The sweep's ``chosen/chosen.json``, with a clear error when *run_dir* is not a finished sweep."""
    path = Path(run_dir) / CHOSEN_DIR / CHOSEN_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: --from needs the run directory of a finished `vulnsteer sweep`")
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    if data.get("schema_version") != SCHEMA_VERSION or "modes" not in data:
        raise ValueError(f"{path}: not a vulnsteer chosen-configuration file of schema {SCHEMA_VERSION}")
    return data


def check_model(chosen: Mapping[str, Any], lm: LoadedModel, allow_mismatch: bool) -> list[str]:
    """Refuse a model that is not the run's (architecture fingerprint, then weights); returns warnings."""
    run = chosen["model"]
    warnings: list[str] = []
    if run["fingerprint"] != lm.fingerprint:
        message = (
            f"the sweep's vectors were fitted on {run['id']} (fingerprint {run['fingerprint']}), which does "
            f"not match {lm.model_id} (fingerprint {lm.fingerprint}); pass --allow-model-mismatch to use "
            "them anyway"
        )
        if not allow_mismatch:
            raise VectorMismatchError(message)
        warnings.append(message)
    ours = model_key(lm).split("-")
    theirs = str(run.get("key", "")).split("-")
    if len(theirs) >= 3 and theirs[:2] != ours[:2]:
        message = (
            f"same architecture as the sweep's model but different weights (weights digest {theirs[1]} in the "
            f"run, {ours[1]} now; dtype {theirs[2]} in the run, {ours[2]} now)"
        )
        if theirs[2] == ours[2] and not allow_mismatch:
            raise VectorMismatchError(message + "; pass --allow-model-mismatch to use the vectors anyway")
        warnings.append(message)
    return warnings


def _load_vectors(
    run_dir: Path, chosen: Mapping[str, Any], lm: LoadedModel, allow_mismatch: bool, modes: Sequence[str]
) -> dict[tuple[str, str], SteeringVector]:
    vectors: dict[tuple[str, str], SteeringVector] = {}
    for mode in modes:
        for target, entry in chosen["modes"][mode].items():
            if not entry.get("vector"):
                continue
            vec = SteeringVector.load(
                run_dir / CHOSEN_DIR / entry["vector"],
                hidden_size=lm.hidden_size,
                fingerprint=None if allow_mismatch else lm.fingerprint,
            )
            choice = Choice.from_dict(entry)
            assert choice.best is not None
            vectors[(target, choice.best.method_key)] = vec
    return vectors


def _code_hash(sample: Sample) -> str:
    return hashlib.sha256(sample.code.encode()).hexdigest()[:16]


def transfer(
    run_dir: str | Path,
    data_config: RunConfig,
    out_dir: str | Path,
    *,
    lm: LoadedModel,
    modes: Sequence[str] | None = None,
    allow_model_mismatch: bool = False,
    batch_size: int = 8,
    max_new_tokens: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Apply the chosen configurations of the sweep in *run_dir* to the dataset of *data_config*; writes
    ``results.json``, ``report.md`` and the cross-CWE plot into *out_dir* and returns the results."""
    from ..report.plots import plot_cross_cwe

    started = time.perf_counter()
    run = Path(run_dir)
    chosen = load_chosen(run)
    out = Path(out_dir)
    available = list(chosen["modes"])
    modes = [m for m in (modes or available) if m in available]
    if not modes:
        raise ValueError(f"{run}: the sweep has chosen configurations for modes {available} only")
    warnings = check_model(chosen, lm, allow_model_mismatch)
    if chosen.get("template") != DEFAULT_TEMPLATE.to_dict():
        warnings.append("the prompt template differs from the one the sweep used")
    vectors = _load_vectors(run, chosen, lm, allow_model_mismatch, modes)
    data = prepare_data(data_config, lm.tokenizer, progress=progress)
    everything: dict[str, list[Sample]] = {}
    for split in ("train", "val", "test"):
        for cwe, items in data.by_cwe(split).items():
            everything.setdefault(cwe, []).extend(items)
    covered_cwes = sorted({t for m in modes for t in chosen["modes"][m] if t != POOLED})
    samples = {cwe: items for cwe, items in everything.items() if cwe in covered_cwes}
    skipped = {cwe: len(items) for cwe, items in everything.items() if cwe not in covered_cwes}
    if not samples:
        raise ValueError(
            f"none of the CWEs of {data.source} ({', '.join(everything) or 'none'}) has a chosen "
            f"configuration in {run} (it has {', '.join(covered_cwes)})"
        )
    cwes = list(samples)
    check_identity(
        out,
        {
            "run_dir": str(run.resolve()),
            "modes": modes,
            "model_key": model_key(lm),
            "data": dataset_hash([s for items in samples.values() for s in items]),
        },
        "transfer",
    )
    seen = set(chosen.get("train_code_hashes", []))
    overlap = sum(1 for items in samples.values() for s in items if _code_hash(s) in seen)
    control_seed = int(chosen["control_seed"])
    choices = {
        mode: {t: Choice.from_dict(e) for t, e in chosen["modes"][mode].items() if t in (*cwes, POOLED)}
        for mode in modes
    }
    conds = [c for mode in modes for c in held_out_conditions(choices[mode], mode, SPLIT, control_seed)]
    store = ResultStore(out / RECORDS_NAME)
    run_cfg = chosen["config"]
    t = time.perf_counter()
    records = run_conditions(
        lm,
        conds,
        store,
        lambda _split: samples,
        vectors,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens or int(run_cfg["detection"]["max_new_tokens"]),
        progress=progress,
    )
    scoring = time.perf_counter() - t
    results: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "command": "evaluate --from",
        "run_dir": str(run),
        "sweep_config": run_cfg,
        "data_config": data_config.to_dict(),
        "sign_convention": SIGN_CONVENTION,
        "environment": environment_info(),
        "warnings": warnings,
        "model": {
            "id": lm.model_id,
            "fingerprint": lm.fingerprint,
            "num_layers": lm.num_layers,
            "hidden_size": lm.hidden_size,
            "sweep_model": chosen["model"],
        },
        "data": {
            "source": data.source,
            "cwes": cwes,
            "skipped_cwes": skipped,
            "notes": data.notes,
            "n_samples": sum(len(v) for v in samples.values()),
            "overlap_with_sweep_train": overlap,
        },
        "selection": {mode: {t: c.to_dict() for t, c in choices[mode].items()} for mode in modes},
        "summary": {},
        "pooled": {},
        "cross_cwe": {},
    }
    for mode in modes:
        held = held_out_results(choices[mode], records, mode, SPLIT, cwes, control_seed, data_config.seed)
        results["summary"][mode] = held["rows"]
        results["pooled"][mode] = held["pooled"]
        results["cross_cwe"][mode] = held["cross_cwe"]
    plots = [
        p
        for mode in modes
        if (
            p := plot_cross_cwe(
                results["cross_cwe"][mode], out, f"cross_cwe_{mode}.png", f"{mode} mode, {data.source} (all samples)"
            )
        )
    ]
    results["timings_s"] = {"scoring": round(scoring, 2), "total": round(time.perf_counter() - started, 2)}
    results = json_ready(results)
    write_json(out / "results.json", results)
    write_text(out / "report.md", render_transfer_markdown(results, plots))
    return results


def render_transfer_markdown(results: Mapping[str, Any], plots: Sequence[str] = ()) -> str:
    data = results["data"]
    skipped = data["skipped_cwes"]
    lines = [
        "# vulnsteer transfer report (evaluate --from)",
        "",
        f"- chosen configurations from the sweep in `{results['run_dir']}` (selected there, per CWE, on that "
        "sweep's **validation** split); applied here **unchanged**, nothing is re-selected",
        f"- model: `{results['model']['id']}` (fingerprint {results['model']['fingerprint']}); sweep model: "
        f"`{results['model']['sweep_model']['id']}`",
        f"- data: `{data['source']}`: **all** {data['n_samples']} samples of {', '.join(data['cwes'])} "
        "(no split: every number below is on all of them)",
        "- skipped (no chosen configuration in the sweep): "
        + (", ".join(f"{cwe} ({n} samples)" for cwe, n in skipped.items()) or "none"),
        f"- samples whose code also appears in the sweep's training split: {data['overlap_with_sweep_train']}",
        f"- **sign convention**: {results['sign_convention']}",
        "- controls, CIs and p-values as in the sweep: a random direction of the same norm at the same setting, "
        "95% pair-bootstrap intervals, McNemar's exact test against the baseline on the same samples",
        "",
    ]
    lines += [f"> warning: {w}" for w in results.get("warnings", [])]
    for mode, rows in results["summary"].items():
        lines += ["", f"## {mode} mode: ALL samples of `{data['source']}`, configuration chosen on the sweep's VAL", ""]
        lines += render_lead(rows, SPLIT)
        if results["pooled"].get(mode):
            lines += ["", "### Pooled 'any weakness' vector at its chosen setting", ""]
            lines += pooled_table(results["pooled"][mode])
        cross = results["cross_cwe"].get(mode)
        if cross and cross["vectors"]:
            lines += [
                "",
                "### Cross-CWE matrix: Δ balanced accuracy vs baseline (row's vector on column's samples)",
                "",
            ]
            lines += cross_table(cross)
    lines.append("")
    for plot in plots:
        lines += [f"![{Path(plot).stem}]({plot})", ""]
    lines += ["## Timings (s)", "", ", ".join(f"{k}: {v}" for k, v in results.get("timings_s", {}).items()), ""]
    return "\n".join(lines)


def evaluate_from_run(args: argparse.Namespace) -> int:
    """The ``vulnsteer evaluate --from RUN_DIR`` command."""
    if not args.data:
        raise ValueError("evaluate --from RUN_DIR needs --data OTHER (the dataset to apply the chosen settings to)")
    chosen = load_chosen(args.from_run)
    sweep_model = chosen["config"].get("model", {}).get("name")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    config = RunConfig(
        model=args.model or sweep_model,
        data=args.data,
        format=args.format,
        cwes=tuple(args.cwe),
        merge_cwe=tuple(args.merge_cwe),
        seed=args.seed,
        respect_upstream=args.respect_upstream_split,
        keep_comments=args.keep_comments,
        max_code_tokens=args.max_code_tokens,
        max_pairs_per_cwe=args.max_pairs_per_cwe,
        modes=tuple(modes),
        device=args.device,
        dtype=args.dtype,
        duplicates="keep",
    )  # every sample is evaluated: no split to leak across
    lm = load_model(
        config.model,
        device=args.device,
        dtype=args.dtype,
        device_map=args.device_map,
        trust_remote_code=args.trust_remote_code,
    )
    out = Path(args.out) if args.out else Path("runs") / (time.strftime("%Y%m%d-%H%M%S") + "-transfer")
    try:
        results = transfer(
            args.from_run,
            config,
            out,
            lm=lm,
            modes=modes,
            allow_model_mismatch=args.allow_model_mismatch,
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            progress=not args.no_progress,
        )
    finally:
        lm.close()
    for warning in results["warnings"]:
        print(f"warning: {warning}")
    for mode, rows in results["summary"].items():
        for cwe, row in rows.items():
            print(f"{mode} {cwe}: n={row['n']} Δ bal.acc {row['delta']:+.3f} (p={row['p_value']:.3g}) {row['chosen']}")
    if results["data"]["skipped_cwes"]:
        print("skipped (no chosen configuration): " + ", ".join(results["data"]["skipped_cwes"]))
    print(f"report: {out / 'report.md'}")
    return 0
