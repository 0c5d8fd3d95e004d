"""``vulnsteer extract`` and ``vectors fit|export|import|show``: hidden states and steering vectors of a dataset,
and llama.cpp control vectors (GGUF).

Before any weights load, ``extract`` and ``vectors fit`` check that ``--out`` can be written, the options against
the machine and the model's config (device, layers, token budget), and the data (loaded, cleaned, truncated and
split): a mistake costs seconds, not a model load.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from ..config.defaults import DEFAULT_BATCH_SIZE, DEFAULT_UNIT
from .options import (
    UsageError,
    add_data_args,
    add_model_args,
    add_vector_args,
    check_model_options,
    code_token_budget,
    data_config,
    finite_float,
    ints,
    load,
    positive_int,
    require,
)

__all__ = ["RECORDABLE", "register"]

#: Positions ``extract`` can record.
RECORDABLE = ("last", "code_mean")


def _positions(text: str) -> tuple[str, ...]:
    values = tuple(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
    bad = [p for p in values if p not in RECORDABLE]
    if bad or not values:
        raise argparse.ArgumentTypeError(f"expected last and/or code_mean (comma-separated), got {text!r}")
    return values


def register(sub: Any) -> None:
    p = sub.add_parser("extract", help="record hidden states of a dataset's samples to a safetensors file")
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--layers", type=ints, default=(), help="comma-separated layers (default: the middle layer)")
    p.add_argument(
        "--record",
        dest="record",
        type=_positions,
        default=RECORDABLE,
        help="positions to record: last (the answer position) and/or code_mean (mean over the code's tokens)",
    )
    p.add_argument("--positions", dest="record", type=_positions, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p.add_argument("--split", default="all", choices=["all", "train", "val", "test"], help="which samples to record")
    p.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE, help="prompts per forward pass")
    p.add_argument("--out", required=True, help="output .safetensors file (written atomically)")
    p.set_defaults(func=cmd_extract)

    group = sub.add_parser("vectors", help="steering vectors: fit, show, export to / import from llama.cpp (GGUF)")
    vsub = group.add_subparsers(dest="vectors_command", required=True)

    p = vsub.add_parser("fit", help="fit per-CWE steering vectors on the train split and save them")
    add_model_args(p)
    add_data_args(p)
    add_vector_args(p)
    p.add_argument("--pooled", action="store_true", help="also fit an 'any weakness' vector over all CWEs")
    p.add_argument("--out", required=True, help="output folder for <cwe>-<method>-<pooling>.safetensors")
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
    p.add_argument("--strength", type=finite_float, required=True, help="baked into the file (+ = toward 'vulnerable')")
    p.add_argument("--unit", default=DEFAULT_UNIT, choices=["raw", "relative", "sigma"], help="unit of --strength")
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
    p.add_argument("--hidden-size", type=positive_int, default=None, help="refuse a file of another hidden size")
    p.add_argument("--model-hint", default=None, help="model_type for a file that has no controlvector.model_hint")
    p.set_defaults(func=cmd_import)

    p = vsub.add_parser("show", help="print a vector's provenance, layers and norms (.safetensors or .gguf)")
    p.add_argument("vector", help="a vector file (.safetensors) or a control vector (.gguf)")
    p.set_defaults(func=cmd_show)


def _prepare(args: argparse.Namespace, splits: tuple[str, ...]) -> tuple[Any, Any, list[int] | None]:
    """The run config and the prepared data, and the layers checked against the model's config; all before
    the model's weights load."""
    from ..experiment.prepare import prepare_data

    if args.data is None:
        require(args, "--data", [("--format", "format"), ("--respect-upstream-split", "respect_upstream_split")])
    check_model_options(args)
    config = data_config(args)
    model_config, tokenizer, budget = code_token_budget(args)
    config = dataclasses.replace(config, max_code_tokens=budget)
    data = prepare_data(config, tokenizer, progress=not args.no_progress, require=splits)
    num_layers = getattr(model_config, "num_hidden_layers", None)
    layers = _layers(args.layers, num_layers) if isinstance(num_layers, int) else None
    return config, data, layers


def _layers(layers: tuple[int, ...], num_layers: int) -> list[int]:
    """The given layers (negatives count from the end), or the middle layer."""
    from ..lm.model import resolve_layers

    return resolve_layers(list(layers) or [num_layers // 2], num_layers, "--layers")


def cmd_extract(args: argparse.Namespace) -> int:
    from ..io import atomic_open, check_writable

    check_writable(args.out, "--out", inputs=[args.data] if args.data else [])
    _config, data, layers = _prepare(args, () if args.split == "all" else (args.split,))

    from safetensors.torch import save

    from ..lm.activations import extract_activations

    samples = (
        [s for _, part in data.splits.items() for s in part] if args.split == "all" else data.splits.get(args.split)
    )
    if not samples:
        raise ValueError(f"{data.source}: no samples to record")
    lm = load(args)
    try:
        layers = layers if layers is not None else _layers(args.layers, lm.num_layers)
        acts = extract_activations(
            lm, samples, layers, list(args.record), batch_size=args.batch_size, progress=not args.no_progress
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


def _check_fittable(data: Any) -> None:
    """Every CWE's train split needs vulnerable and secure samples: say which does not, before the model loads."""
    train = data.by_cwe("train")
    if not train:
        raise ValueError(f"{data.source}: the train split is empty; no vector can be fitted")
    for cwe, samples in train.items():
        vulnerable = sum(1 for s in samples if s.is_vulnerable)
        secure = len(samples) - vulnerable
        if not vulnerable or not secure:
            missing = "vulnerable" if not vulnerable else "secure"
            raise UsageError(
                f"{data.source}: {cwe} has no {missing} samples in the train split ({vulnerable} vulnerable, "
                f"{secure} secure), so no vector can be fitted for it; leave it out with --cwe"
            )


def cmd_vectors(args: argparse.Namespace) -> int:
    from ..io import check_writable

    out = check_writable(args.out, "--out", folder=True)
    _config, data, layers = _prepare(args, ("train",))

    from ..experiment.fit import fit_cwe_vectors, save_vectors
    from ..lm.activations import extract_activations

    _check_fittable(data)
    lm = load(args)
    try:
        layers = layers if layers is not None else _layers(args.layers, lm.num_layers)
        train = data.samples("train")
        acts = extract_activations(
            lm, train, layers, [args.pooling], batch_size=args.batch_size, progress=not args.no_progress
        )
        vectors = fit_cwe_vectors(
            lm, acts, data.by_cwe("train"), layers, methods=[args.method], poolings=[args.pooling], pooled=args.pooled
        )
    finally:
        lm.close()
    info = save_vectors(vectors, out)
    for key, item in info.items():
        norms = ", ".join(f"L{k}: {v:.3g} ({item['relative_norm'][k]:.3g} rel)" for k, v in item["norm"].items())
        print(f"{key}: {out.parent / item['file']}  n={item['n_vulnerable']}+{item['n_secure']}  {norms}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ..io import check_writable
    from ..steering.gguf import export_gguf
    from ..steering.vectors import SteeringVector

    check_writable(args.gguf, "--gguf", inputs=[args.vector])
    vector = SteeringVector.load(args.vector)
    info = export_gguf(
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
    from ..io import check_writable
    from ..steering.gguf import import_gguf

    check_writable(args.out, "--out", inputs=[args.gguf])
    vector = import_gguf(args.gguf, hidden_size=args.hidden_size, model_hint=args.model_hint)
    vector.save(args.out)
    print(f"wrote {args.out}: layers {list(vector.layers)}, hidden size {vector.provenance.hidden_size}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from ..steering.gguf import read_control_vector
    from ..steering.vectors import SteeringVector

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
    print(f"{args.vector}: steering vector for {prov.cwe} ({prov.method}, fitted at pooling {prov.pooling!r})")
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
