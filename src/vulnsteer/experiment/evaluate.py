"""``vulnsteer evaluate --vectors DIR``: saved vectors at a given strength vs baseline vs random control.

No selection happens here: the strength and settings are the user's, applied to every CWE that has a vector.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..io import write_json
from ..lm.model import load_model
from ..report.markdown import write_report
from ..steer.vectors import SteeringVector
from .engine import (
    SCHEMA_VERSION,
    Condition,
    ResultStore,
    environment_info,
    json_ready,
    prepare_data,
    run_conditions,
)
from .runner import SIGN_CONVENTION, summarize_metrics, summary_rows

__all__ = ["evaluate_saved_vectors", "load_vector_dir"]


def load_vector_dir(
    folder: str | Path, hidden_size: int, fingerprint: str | None, weights: Mapping[str, str] | None = None
) -> dict[tuple[str, str], SteeringVector]:
    """Every ``*.safetensors`` vector in *folder*, keyed by (CWE, method); refuses a model mismatch
    (architecture *fingerprint*, and with *weights* a model's ``weights_identity``)."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"vector folder not found: {root}")
    vectors: dict[tuple[str, str], SteeringVector] = {}
    for path in sorted(root.glob("*.safetensors")):
        vec = SteeringVector.load(path, hidden_size=hidden_size, fingerprint=fingerprint, weights=weights)
        vectors[(vec.cwe, vec.provenance.method)] = vec
    if not vectors:
        raise FileNotFoundError(f"{root}: no .safetensors steering vectors in this folder")
    return vectors


def evaluate_saved_vectors(args: argparse.Namespace) -> int:
    from ..cli.options import run_config as _run_config

    if getattr(args, "from_run", None):
        from .transfer import evaluate_from_run

        result: int = evaluate_from_run(args)
        return result
    if not args.vectors:
        raise ValueError("evaluate needs --vectors DIR (saved vectors) or --from RUN_DIR (a sweep's chosen settings)")
    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    config = _run_config(args, strengths=(args.strength,), max_new_tokens=args.max_new_tokens)
    lm = load_model(
        args.model,
        device=args.device,
        dtype=args.dtype,
        device_map=args.device_map,
        trust_remote_code=args.trust_remote_code,
    )
    out = Path(args.out) if args.out else Path("runs") / (time.strftime("%Y%m%d-%H%M%S") + "-eval")
    try:
        strict = not args.allow_model_mismatch
        vectors = load_vector_dir(
            args.vectors, lm.hidden_size, lm.fingerprint if strict else None, lm.weights_identity if strict else None
        )
        data = prepare_data(config, lm.tokenizer, progress=not args.no_progress)
        split = args.split
        cwes = [c for c in data.cwes if any(key[0] == c for key in vectors)]
        if not cwes:
            raise ValueError(f"none of the data's CWEs {data.cwes} has a vector in {args.vectors}")

        def samples_for(_split: str) -> dict[str, list[Any]]:
            """The split's samples of the CWEs that have a vector (the baseline runs on exactly these too)."""
            names = ("train", "val", "test") if split == "all" else (split,)
            merged: dict[str, list[Any]] = {}
            for name in names:
                for cwe, items in data.by_cwe(name).items():
                    if cwe in cwes:
                        merged.setdefault(cwe, []).extend(items)
            return merged

        method = next(iter(vectors))[1]
        layers = next(iter(vectors.values())).layers
        for cwe in cwes:  # one setting for every CWE: each needs a vector of that method at those layers
            vec = vectors.get((cwe, method))
            if vec is None or not set(layers) <= set(vec.layers):
                found = ", ".join(f"{m} at layers {list(v.layers)}" for (c, m), v in vectors.items() if c == cwe)
                raise ValueError(
                    f"{args.vectors}: evaluate applies one setting to every CWE ({method} at layers "
                    f"{list(layers)}), but the {cwe} vector is {found}"
                )
        conds = []
        for mode in modes:
            conds.append(Condition("baseline", mode, split))
            for kind in ("steered", "control"):
                conds.append(
                    Condition(
                        kind,
                        mode,
                        split,
                        args.strength,
                        tuple(layers),
                        args.unit,
                        args.steer_positions,
                        method,
                        None,
                        config.control_seed,
                    )
                )
        store = ResultStore(out / "records.jsonl")
        records = run_conditions(
            lm,
            conds,
            store,
            samples_for,
            vectors,
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            progress=not args.no_progress,
        )
        metric_cache = {c.key: summarize_metrics(records[c.key], cwes, config.seed) for c in conds}
        summary = {}
        for mode in modes:
            steered = next(c for c in conds if c.mode == mode and c.kind == "steered")
            summary[mode] = summary_rows(
                mode, cwes, {cwe: steered for cwe in cwes}, conds, records, metric_cache, config.seed, split=split
            )
        results = json_ready(
            {
                "schema_version": SCHEMA_VERSION,
                "command": "evaluate",
                "config": config.to_dict(),
                "vectors_from": str(args.vectors),
                "sign_convention": SIGN_CONVENTION,
                "environment": environment_info(),
                "model": {
                    "id": lm.model_id,
                    "fingerprint": lm.fingerprint,
                    "num_layers": lm.num_layers,
                    "hidden_size": lm.hidden_size,
                },
                "layers": list(layers),
                "data": {"source": data.source, "cwes": cwes, "notes": data.notes, "splits": data.splits.summary()},
                "vectors": {
                    f"{k[0]}|{k[1]}": {
                        "cwe": k[0],
                        "method": k[1],
                        "layers": list(v.layers),
                        "relative_norm": {str(layer): v.relative_norm(layer) for layer in v.layers},
                    }
                    for k, v in vectors.items()
                },
                "conditions": [
                    {"condition": c.to_dict(), "label": c.label(), "metrics": metric_cache[c.key]} for c in conds
                ],
                "selection": {},
                "summary": summary,
                "examples": {},
                "records": {key: [r.to_dict() for r in recs] for key, recs in records.items()},
            }
        )
        write_json(out / "results.json", results)
        write_report(results, out)
    finally:
        lm.close()
    print(f"report: {out / 'report.md'}")
    return 0
