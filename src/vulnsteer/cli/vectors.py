"""``vulnsteer extract`` and ``vectors``: hidden states and steering vectors of a dataset.

Before any weights load, both check that ``--out`` can be written, the options against the machine and the model's
config (device, layers, token budget), and the data (loaded, cleaned, truncated and split): a mistake costs
seconds, not a model load.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from ..defaults import DEFAULT_BATCH_SIZE
from .options import (
    UsageError,
    add_data_args,
    add_model_args,
    add_vector_args,
    check_model_options,
    code_token_budget,
    data_config,
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

    p = sub.add_parser("vectors", help="fit per-CWE steering vectors on the train split and save them")
    add_model_args(p)
    add_data_args(p)
    add_vector_args(p)
    p.add_argument("--pooled", action="store_true", help="also fit an 'any weakness' vector over all CWEs")
    p.add_argument("--out", required=True, help="output folder for <cwe>-<method>-<pooling>.safetensors")
    p.set_defaults(func=cmd_vectors)


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

    return resolve_layers(list(layers) or [num_layers // 2], num_layers)


def cmd_extract(args: argparse.Namespace) -> int:
    from ..io import atomic_open, check_writable

    check_writable(args.out, "--out")
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
