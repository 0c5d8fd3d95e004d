"""``vulnsteer extract`` and ``vectors``: hidden states and steering vectors of a dataset."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .options import add_config_args, config_from_args, ints, load_model_from_args


def register(sub: Any) -> None:
    p = sub.add_parser("extract", help="record hidden states of a dataset's samples to a safetensors file")
    add_config_args(p, ["model", "data"])
    p.add_argument(
        "--layers",
        type=ints,
        default=(),
        help="layers to record, negatives count from the end (default: the middle layer)",
    )
    p.add_argument("--pooling", default="last,code_mean", help="last and/or code_mean (default: last,code_mean)")
    p.add_argument("--split", default="all", choices=["all", "train", "val", "test"], help="default: all")
    add_config_args(p, ["detection"], only=["--batch-size"])
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("vectors", help="fit per-CWE steering vectors on the train split and save them")
    add_config_args(p, ["model", "data", "vectors"])
    p.add_argument(
        "--layers",
        type=ints,
        default=(),
        help="layers to fit, negatives count from the end (default: the middle layer)",
    )
    add_config_args(p, ["detection"], only=["--batch-size"])
    p.add_argument("--out", required=True, help="output folder for <cwe>-<method@pooling>.safetensors")
    p.set_defaults(func=cmd_vectors)


def _prepared(args: argparse.Namespace, lm: Any) -> Any:
    from ..experiment.prepare import prepare_data

    config = config_from_args(args)
    return config, prepare_data(config.data, lm.tokenizer, progress=not args.no_progress)


def cmd_extract(args: argparse.Namespace) -> int:
    from safetensors.torch import save

    from ..experiment.grid import resolve_layer_sets
    from ..io import atomic_open
    from ..lm.activations import extract_activations

    lm = load_model_from_args(args)
    try:
        config, data = _prepared(args, lm)
        samples = data.samples(args.split)
        layers = list(resolve_layer_sets([args.layers] if args.layers else [], lm.num_layers)[0])
        poolings = [p.strip() for p in args.pooling.split(",") if p.strip()]
        acts = extract_activations(
            lm, samples, layers, poolings, batch_size=config.detection.batch_size, progress=not args.no_progress
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
    blob = save({k: v.contiguous() for k, v in acts.by_pooling.items()}, metadata=meta)
    with atomic_open(args.out, "wb") as handle:
        handle.write(blob)
    shape = {k: list(v.shape) for k, v in acts.by_pooling.items()}
    print(f"wrote {args.out}: {shape} (samples x layers x hidden)")
    return 0


def cmd_vectors(args: argparse.Namespace) -> int:
    from ..experiment.fit import fit_cwe_vectors, save_vectors
    from ..experiment.grid import resolve_layer_sets
    from ..lm.activations import extract_activations

    lm = load_model_from_args(args)
    try:
        config, data = _prepared(args, lm)
        layers = list(resolve_layer_sets([args.layers] if args.layers else [], lm.num_layers)[0])
        train = data.samples("train")
        acts = extract_activations(
            lm,
            train,
            layers,
            config.vectors.pooling,
            batch_size=config.detection.batch_size,
            progress=not args.no_progress,
        )
        vectors = fit_cwe_vectors(
            lm,
            acts,
            data.by_cwe("train"),
            layers,
            methods=config.vectors.methods,
            poolings=config.vectors.pooling,
            pooled=config.vectors.pooled,
        )
    finally:
        lm.close()
    info = save_vectors(vectors, Path(args.out))
    for key, item in info.items():
        norms = ", ".join(f"L{k}: {v:.3g} ({item['relative_norm'][k]:.3g} rel)" for k, v in item["norm"].items())
        print(f"{key}: {Path(args.out).parent / item['file']}  n={item['n_vulnerable']}+{item['n_secure']}  {norms}")
    return 0
