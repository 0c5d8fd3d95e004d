"""``vulnsteer run``, ``sweep`` and ``evaluate``: one protocol, one apply engine, one set of flags."""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import DefaultStr, Subcommands, add_config_args, config_from_args, finite_float, overrides_from_args

SECTIONS = ("model", "data", "vectors", "steering", "detection", "conditional", "baselines", "report", "run")


def register(sub: Subcommands) -> None:
    p = sub.add_parser(
        "run",
        help="the default experiment: vectors, baseline vs steered vs control, chosen on val, reported on test",
        description="The protocol with the default configuration (every flag below is a config key): fit per-CWE "
        "vectors on train, score every candidate and its random control on val, choose per CWE on val, apply once "
        "on test. Writes config.resolved.toml; `vulnsteer sweep RUN/config.resolved.toml` reproduces the run.",
    )
    add_config_args(p, SECTIONS)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("sweep", help="the same protocol from a TOML config (flags override its keys)")
    p.add_argument(
        "config", help="experiment config (TOML; see examples/default.toml, or a run's config.resolved.toml)"
    )
    add_config_args(p, SECTIONS)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser(
        "evaluate",
        help="apply chosen settings (--from RUN_DIR) or saved vectors (--vectors DIR) to a dataset",
        description="No selection happens here. --from applies a run's choices unchanged to every sample of --data; "
        "--vectors applies saved vectors at --strength to one split. Both report baseline vs steered vs random "
        "control with CIs and McNemar p-values, in the same rows as run and sweep.",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--from",
        dest="from_run",
        metavar="RUN_DIR",
        help="a run's or sweep's directory: apply its chosen settings per CWE unchanged to every sample of --data "
        "(default: none; give --from or --vectors)",
    )
    source.add_argument(
        "--vectors",
        metavar="DIR",
        help="folder of saved vectors (from `vulnsteer vectors` or a run's vectors/); needs --strength (default: none)",
    )
    p.add_argument(
        "--strength",
        type=finite_float,
        default=None,
        help="with --vectors: the strength applied to every CWE (positive = toward 'vulnerable'; unit from --unit; "
        "default: none, required with --vectors)",
    )
    p.add_argument(
        "--split",
        default=DefaultStr("test"),
        choices=["all", "train", "val", "test"],
        help="with --vectors: which split of --data (default: test)",
    )
    p.add_argument(
        "--allow-model-mismatch", action="store_true", help="use vectors fitted on another model (default: refuse them)"
    )
    add_config_args(p, SECTIONS)
    p.set_defaults(func=cmd_evaluate)


def _print_done(out: Path) -> None:
    print(f"report: {out / 'report.md'}")
    print(f"results: {out / 'results.json'}")


def cmd_run(args: argparse.Namespace) -> int:
    config = config_from_args(args)  # (torch-free: a bad flag is reported before torch is imported)
    from ..experiment.protocol import run_protocol

    out = run_protocol(config, command="run", progress=not args.no_progress)
    _print_done(out)
    print(f"resolved config: {out / 'config.resolved.toml'}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    config = config_from_args(args, args.config)
    from ..experiment.protocol import run_protocol

    out = run_protocol(config, command="sweep", progress=not args.no_progress, name=f"sweep-{Path(args.config).stem}")
    _print_done(out)
    print(f"chosen: {out / 'chosen' / 'chosen.json'}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:

    from ..config import check_overrides

    progress = not args.no_progress
    overrides = overrides_from_args(args)
    strength: float | None = args.strength
    if args.from_run:
        if strength is not None:
            raise ValueError("--strength is for --vectors; --from applies the run's own chosen settings")
        if not isinstance(args.split, DefaultStr):
            raise ValueError("--split is for --vectors; --from applies the run's choices to every sample of --data")
        check_overrides("evaluate --from", overrides)
        if "data.path" not in overrides:
            raise ValueError("evaluate --from RUN_DIR needs --data OTHER (the dataset to apply the choices to)")
    else:
        if strength is None:
            raise ValueError("evaluate --vectors DIR needs --strength S")
        check_overrides("evaluate --vectors", overrides)
    # (the checks above are torch-free: a misused flag is reported before torch is imported)
    from ..experiment.evaluate import evaluate_from_run, evaluate_vectors, transfer_config

    if args.from_run:
        config = transfer_config(args.from_run, overrides)
        modes = overrides["detection.modes"][0] if "detection.modes" in overrides else None
        out = evaluate_from_run(
            args.from_run, config, modes=modes, progress=progress, allow_model_mismatch=args.allow_model_mismatch
        )
    else:
        assert strength is not None  # (checked above)
        out = evaluate_vectors(
            args.vectors,
            config_from_args(args),
            strength,
            split=args.split,
            progress=progress,
            allow_model_mismatch=args.allow_model_mismatch,
        )
    from ..experiment.upgrade import load_results

    results = load_results(out / "results.json")
    for warning in results.warnings:
        print(f"warning: {warning}")
    for family in results.families.values():
        for mode, table in family.held_out.items():
            for cwe, row in table.rows.items():
                print(f"{mode} {cwe}: n={row.n} Δ bal.acc {row.delta:+.3f} (p={row.p_value:.3g}) {row.chosen}")
    if results.data is not None and results.data.skipped_cwes:
        print("skipped (no vector or choice): " + ", ".join(results.data.skipped_cwes))
    _print_done(out)
    return 0
