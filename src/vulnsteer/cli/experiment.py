"""``vulnsteer run``, ``sweep`` and ``evaluate``: the experiment commands."""

from __future__ import annotations

import argparse
from typing import Any

from .options import (
    RUN_STRENGTHS,
    RUN_UNIT,
    add_data_args,
    add_model_args,
    add_steer_args,
    floats,
    load,
    run_config,
)


def register(sub: Any) -> None:
    p = sub.add_parser("run", help="the default experiment: vectors, baseline vs steered vs control, report")
    add_model_args(p)
    add_data_args(p)
    add_steer_args(p)
    p.add_argument(
        "--strengths",
        type=floats,
        default=RUN_STRENGTHS,
        help="candidate strengths, chosen per CWE on val (default -1,-0.3,0.3,1 with --unit relative)",
    )
    p.add_argument("--modes", default="logit,generation", help="logit and/or generation (comma-separated)")
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.add_argument("--out", default=None, help="run directory (default runs/<timestamp>); rerun to resume")
    p.set_defaults(func=cmd_run, unit=RUN_UNIT)

    p = sub.add_parser("evaluate", help="evaluate saved vectors (baseline vs steered vs control) on a dataset")
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--vectors", default=None, help="folder of saved vectors (from `vulnsteer vectors`)")
    p.add_argument(
        "--from",
        dest="from_run",
        default=None,
        metavar="RUN_DIR",
        help="a sweep's run directory: apply its chosen vectors and settings per CWE unchanged to every "
        "sample of --data (no re-selection; --strength/--unit/--positions/--split are not used)",
    )
    p.add_argument("--strength", type=float, default=4.0)
    p.add_argument(
        "--positions", dest="steer_positions", default="last", choices=["last", "prompt", "generated", "all"]
    )
    p.add_argument("--unit", default="raw", choices=["raw", "relative"])
    p.add_argument("--split", default="test", choices=["all", "train", "val", "test"])
    p.add_argument("--modes", default="logit", help="logit and/or generation")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--allow-model-mismatch", action="store_true")
    p.add_argument("--out", default=None, help="output folder (default runs/<timestamp>-eval)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("sweep", help="many configurations; per-CWE choice on val, one test evaluation, report")
    p.add_argument("config", help="sweep config (TOML; see examples/default.toml)")
    p.add_argument(
        "--out",
        default=None,
        help="run directory (default: the config's run.out, else runs/sweep-<config>-<timestamp>); rerun to resume",
    )
    p.add_argument("--model", default=None, help="override the config's model (id, directory or .gguf)")
    p.add_argument("--device", default=None, help="override the config's device")
    p.add_argument("--cache-dir", default=None, help="activation cache folder (default <cache root>/activations)")
    p.set_defaults(func=cmd_sweep)


def cmd_run(args: argparse.Namespace) -> int:
    from ..experiment.runner import run_experiment

    config = run_config(args, strengths=args.strengths, max_new_tokens=args.max_new_tokens)
    lm = load(args)
    try:
        out = run_experiment(config, args.out, lm=lm, progress=not args.no_progress)
    finally:
        lm.close()
    print(f"report: {out / 'report.md'}")
    print(f"results: {out / 'results.json'}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..experiment.evaluate import evaluate_saved_vectors

    return evaluate_saved_vectors(args)


def cmd_sweep(args: argparse.Namespace) -> int:
    from ..experiment.sweep import load_config, run_sweep

    config = load_config(args.config, {"model": args.model, "device": args.device, "cache_dir": args.cache_dir})
    out = run_sweep(config, args.out, progress=not args.no_progress, config_path=args.config)
    print(f"report: {out / 'report.md'}")
    print(f"results: {out / 'results.json'}")
    print(f"chosen: {out / 'chosen' / 'chosen.json'}")
    return 0
