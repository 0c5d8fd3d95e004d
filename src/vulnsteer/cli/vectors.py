"""``vulnsteer extract`` and ``vectors fit|export|import|show``: hidden states and steering vectors of a dataset,
and llama.cpp control vectors (GGUF).

Before any weights load, ``extract`` and ``vectors fit`` check that ``--out`` can be written, the options against
the machine and the model's config (device, layers, token budget), and the data (loaded, cleaned, truncated and
split): a mistake costs seconds, not a model load.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config.defaults import DEFAULT_UNIT
from ..config.vocabulary import POOLINGS, STRENGTH_UNITS
from .options import (
    Subcommands,
    UsageError,
    add_config_args,
    config_from_args,
    finite_float,
    given,
    ints,
    positive_int,
)

if TYPE_CHECKING:  # pragma: no cover
    from ..config.experiment import ExperimentConfig
    from ..experiment.prepare import PreparedData


__all__ = ["register"]


def _poolings(text: str) -> tuple[str, ...]:
    values = tuple(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
    bad = [p for p in values if p not in POOLINGS]
    if bad or not values:
        raise argparse.ArgumentTypeError(f"expected {' and/or '.join(POOLINGS)} (comma-separated), got {text!r}")
    return values


def _add_fitting_args(p: argparse.ArgumentParser) -> None:
    """The configuration keys ``extract`` and ``vectors fit`` take: ``[model]``, ``[data]``, ``steering.layers``
    (the layers read: every layer the layer sets name) and ``detection.batch_size``."""
    add_config_args(p, ["model", "data"])
    add_config_args(p, ["steering"], only=("--layers",))
    add_config_args(p, ["detection"], only=("--batch-size",))


def register(sub: Subcommands) -> None:
    p = sub.add_parser("extract", help="record hidden states of a dataset's samples to a safetensors file")
    p.add_argument(
        "--record",
        dest="record",
        type=_poolings,
        default=POOLINGS,
        help="poolings to record: last (the answer position) and/or code_mean (mean over the code's tokens)",
    )
    p.add_argument("--positions", dest="record", type=_poolings, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p.add_argument("--split", default="all", choices=["all", "train", "val", "test"], help="which samples to record")
    p.add_argument("--out", required=True, help="output .safetensors file (written atomically)")
    _add_fitting_args(p)
    p.set_defaults(func=cmd_extract)

    group = sub.add_parser("vectors", help="steering vectors: fit, show, export to / import from llama.cpp (GGUF)")
    vsub = group.add_subparsers(dest="vectors_command", required=True)

    p = vsub.add_parser("fit", help="fit per-CWE steering vectors on the train split and save them")
    p.add_argument("--out", required=True, help="output folder for <cwe>-<method>-<pooling>.safetensors")
    _add_fitting_args(p)
    add_config_args(p, ["vectors"])
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
    p.add_argument("--unit", default=DEFAULT_UNIT, choices=list(STRENGTH_UNITS), help="unit of --strength")
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
    """The configuration and the prepared data, and the layers checked against the model's config; all before
    the model's weights load."""
    from ..experiment.prepare import prepare_data
    from ..lm.budget import model_budget
    from ..lm.model import resolve_device

    config = config_from_args(args)
    resolve_device(config.model.device)
    budget = config.data.max_code_tokens if given(args, "data.max_code_tokens") else None
    model_config, tokenizer, fitted = model_budget(config.model, budget)
    config = config.replace(data__max_code_tokens=fitted)
    data = prepare_data(config.data, tokenizer, progress=not args.no_progress, require=splits)
    num_layers = getattr(model_config, "num_hidden_layers", None)
    layers = _layers(config, num_layers) if isinstance(num_layers, int) else None
    return config, data, layers


def _layers(config: ExperimentConfig, num_layers: int) -> list[int]:
    """Every layer the ``--layers`` sets name (negatives count from the end), or the middle layer."""
    from ..lm.model import resolve_layers

    named = [layer for layers in config.steering.layers for layer in layers]
    return resolve_layers(named or [num_layers // 2], num_layers, "--layers")


def cmd_extract(args: argparse.Namespace) -> int:
    from ..io import atomic_open, check_writable

    data = config_from_args(args).data
    check_writable(args.out, "--out", inputs=[p for p in (data.path, *data.paths) if p and p != "builtin"])
    config, data, layers = _prepare(args, () if args.split == "all" else (args.split,))

    from safetensors.torch import save

    from ..lm.activations import extract_activations
    from ..lm.model import load_model

    samples = (
        [s for _, part in data.splits.items() for s in part] if args.split == "all" else data.splits.get(args.split)
    )
    if not samples:
        raise ValueError(f"{data.source}: no samples to record")
    with load_model(config.model) as lm:
        layers = layers if layers is not None else _layers(config, lm.num_layers)
        batch_size = config.detection.batch_size
        acts = extract_activations(
            lm, samples, layers, list(args.record), batch_size=batch_size, progress=not args.no_progress
        )
        identity = lm.identity
    meta = {
        "model": json.dumps(identity.to_dict()),
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


def _check_fittable(data: PreparedData) -> None:
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
    config, data, layers = _prepare(args, ("train",))

    from ..experiment.fit import fit_cwe_vectors, save_vectors
    from ..lm.activations import extract_activations
    from ..lm.model import load_model

    _check_fittable(data)
    fitting = config.vectors
    with load_model(config.model) as lm:
        layers = layers if layers is not None else _layers(config, lm.num_layers)
        train = data.samples("train")
        acts = extract_activations(
            lm, train, layers, list(fitting.pooling), batch_size=config.detection.batch_size,
            progress=not args.no_progress,
        )  # fmt: skip
        vectors = fit_cwe_vectors(
            lm, acts, data.by_cwe("train"), layers, methods=fitting.methods, poolings=fitting.pooling,
            pooled=fitting.pooled,
        )  # fmt: skip
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
