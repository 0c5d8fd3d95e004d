"""``vulnsteer extract`` and ``vectors fit|export|import|show``: hidden states and steering vectors of a dataset,
and llama.cpp control vectors (GGUF)."""

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

    group = sub.add_parser("vectors", help="steering vectors: fit, show, export to / import from llama.cpp (GGUF)")
    vsub = group.add_subparsers(dest="vectors_command", required=True)

    p = vsub.add_parser("fit", help="fit per-CWE steering vectors on the train split and save them")
    add_model_args(p)
    add_data_args(p)
    add_steer_args(p)
    p.add_argument("--pooled", action="store_true", help="also fit an 'any weakness' vector over all CWEs")
    p.add_argument("--out", required=True, help="output folder for <cwe>-<method>.safetensors")
    p.set_defaults(func=cmd_vectors)

    p = vsub.add_parser(
        "export",
        help="write a vector as a llama.cpp control vector (GGUF)",
        description="Write VECTOR at --strength as a llama.cpp control vector: direction.L is the shift vulnsteer "
        "adds at layer L (positive strength = toward 'vulnerable'), so load it at scale 1. llama.cpp steers every "
        "position (vulnsteer's --positions all) and cannot steer layer 0.",
    )
    p.add_argument("vector", help="a vector file (.safetensors, from `vulnsteer vectors fit` or a sweep)")
    p.add_argument("--gguf", required=True, metavar="OUT.gguf", help="output control-vector file")
    p.add_argument("--strength", type=float, default=1.0, help="baked into the file (default 1; + = vulnerable)")
    p.add_argument("--unit", default="raw", choices=["raw", "relative"], help="unit of --strength (default raw)")
    p.add_argument("--layers", type=ints, default=(), help="export only these layers (default: all of the vector's)")
    p.add_argument("--model-hint", default=None, help="Hugging Face model_type (default: the vector's provenance)")
    p.set_defaults(func=cmd_export)

    p = vsub.add_parser(
        "import",
        help="read a llama.cpp control vector (GGUF) into a vulnsteer vector file",
        description="A file written by `vectors export` gives back the original vector; any other control vector "
        "becomes the direction -direction.N, so steering it with strength 1 (raw, positions all) matches llama.cpp "
        "at scale 1.",
    )
    p.add_argument("gguf", metavar="IN.gguf", help="a control-vector GGUF file")
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.add_argument("--hidden-size", type=int, default=None, help="refuse a file of another hidden size")
    p.add_argument("--model-hint", default=None, help="model_type for a file that has no controlvector.model_hint")
    p.set_defaults(func=cmd_import)

    p = vsub.add_parser("show", help="print a vector's provenance, layers and norms (.safetensors or .gguf)")
    p.add_argument("vector", help="a vector file (.safetensors) or a control vector (.gguf)")
    p.set_defaults(func=cmd_show)


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


def cmd_export(args: argparse.Namespace) -> int:
    from ..steer.gguf import export_control_vector
    from ..steer.vectors import SteeringVector

    vector = SteeringVector.load(args.vector)
    info = export_control_vector(
        vector,
        args.gguf,
        strength=args.strength,
        unit=args.unit,
        layers=args.layers or None,
        model_hint=args.model_hint,
    )
    print(info.describe())
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from ..steer.gguf import import_control_vector

    vector = import_control_vector(args.gguf, hidden_size=args.hidden_size, model_hint=args.model_hint)
    vector.save(args.out)
    print(f"wrote {args.out}: layers {list(vector.layers)}, hidden size {vector.provenance.hidden_size}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from ..steer.gguf import read_control_vector
    from ..steer.vectors import SteeringVector

    if Path(args.vector).suffix == ".gguf":
        cv = read_control_vector(args.vector)
        print(f"{cv.path}: llama.cpp control vector, hidden size {cv.hidden_size}")
        for key, value in cv.metadata.items():
            print(f"  {key}: {value}")
        for layer, tensor in cv.tensors.items():
            print(f"  direction.{layer}: norm {float((tensor.astype('float64') ** 2).sum() ** 0.5):.4g}")
        return 0
    vector = SteeringVector.load(args.vector)
    prov = vector.provenance
    print(f"{args.vector}: steering vector for {prov.cwe} ({prov.method}, fitted at position {prov.position!r})")
    print(f"  model: {prov.model_id} (type {prov.model_type or 'unknown'}, fingerprint {prov.model_fingerprint})")
    print(f"  hidden size {prov.hidden_size}; samples: {prov.n_vulnerable} vulnerable, {prov.n_secure} secure")
    print(f"  data hash {prov.dataset_hash}; created {prov.created}")
    for key, value in sorted(prov.extra.items()):
        print(f"  {key}: {value}")
    for layer in vector.layers:
        ref = prov.layer_norms.get(layer)
        rel = f", {vector.relative_norm(layer):.3g} of the layer's mean hidden norm {ref:.4g}" if ref else ""
        print(f"  layer {layer}: norm {vector.norm(layer):.4g}{rel}")
    return 0
