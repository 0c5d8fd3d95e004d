"""``vulnsteer extract`` and ``vectors``: hidden states and steering vectors of a dataset."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .options import (
    add_data_args,
    add_model_args,
    add_steer_args,
    ints,
    load,
    run_config,
)


def register(sub: Any) -> None:
    p = sub.add_parser("extract", help="record hidden states of a dataset's samples to a safetensors file")
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--layers", type=ints, default=(), help="layers (default: middle)")
    p.add_argument("--positions", default="last,code_mean", help="last and/or code_mean")
    p.add_argument("--split", default="all", choices=["all", "train", "val", "test"])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("vectors", help="fit per-CWE steering vectors on the train split and save them")
    add_model_args(p)
    add_data_args(p)
    add_steer_args(p)
    p.add_argument("--pooled", action="store_true", help="also fit an 'any weakness' vector over all CWEs")
    p.add_argument("--out", required=True, help="output folder for <cwe>-<method>.safetensors")
    p.set_defaults(func=cmd_vectors)


def cmd_extract(args: argparse.Namespace) -> int:
    from safetensors.torch import save

    from ..experiment.engine import prepare_data, resolve_run_layers
    from ..io import atomic_open
    from ..lm.activations import extract_activations

    config = run_config(args)
    lm = load(args)
    try:
        data = prepare_data(config, lm.tokenizer, progress=not args.no_progress)
        samples = (
            [s for _, part in data.splits.items() for s in part] if args.split == "all" else data.splits.get(args.split)
        )
        layers = resolve_run_layers(args.layers, lm.num_layers)
        positions = [p.strip() for p in args.positions.split(",") if p.strip()]
        acts = extract_activations(
            lm, samples, layers, positions, batch_size=args.batch_size, progress=not args.no_progress
        )
    finally:
        lm.close()
    meta = {
        "model_id": lm.model_id,
        "fingerprint": lm.fingerprint,
        "layers": json.dumps(acts.layers),
        "sample_ids": json.dumps(acts.sample_ids),
        "labels": json.dumps([s.label for s in samples]),
        "cwes": json.dumps([s.cwe for s in samples]),
    }
    blob = save({k: v.contiguous() for k, v in acts.by_position.items()}, metadata=meta)
    with atomic_open(args.out, "wb") as handle:
        handle.write(blob)
    shape = {k: list(v.shape) for k, v in acts.by_position.items()}
    print(f"wrote {args.out}: {shape} (samples x layers x hidden)")
    return 0


def cmd_vectors(args: argparse.Namespace) -> int:
    from ..experiment.engine import fit_cwe_vectors, prepare_data, resolve_run_layers
    from ..experiment.runner import save_vectors

    config = run_config(args)
    lm = load(args)
    try:
        data = prepare_data(config, lm.tokenizer, progress=not args.no_progress)
        layers = resolve_run_layers(args.layers, lm.num_layers)
        vectors = fit_cwe_vectors(
            lm,
            data.by_cwe("train"),
            layers,
            position=args.position,
            methods=[args.method],
            batch_size=args.batch_size,
            pooled=args.pooled,
            progress=not args.no_progress,
        )
    finally:
        lm.close()
    info = save_vectors(vectors, Path(args.out))
    for key, item in info.items():
        norms = ", ".join(f"L{k}: {v:.3g} ({item['relative_norm'][k]:.3g} rel)" for k, v in item["norm"].items())
        print(f"{key}: {Path(args.out).parent / item['file']}  n={item['n_vulnerable']}+{item['n_secure']}  {norms}")
    return 0
