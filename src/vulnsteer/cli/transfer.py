"""``vulnsteer transfer CONFIG.toml``: the leave-one-dataset-out protocol (resumable)."""

from __future__ import annotations

import argparse

from .options import Subcommands, add_config_args, config_from_args

#: The sections whose flags ``transfer`` takes (the rest of its keys live in the config file).
SECTIONS = ("model", "data", "detection", "run")


def register(sub: Subcommands) -> None:
    p = sub.add_parser(
        "transfer",
        help="leave each dataset out in turn: fit and choose on the others, apply unchanged to the one left out",
        description="The transfer protocol over the datasets of [data] paths: for every dataset in turn, probe "
        "designs, gates and strengths are fitted on the others and chosen by their mean over inner folds "
        "(nested), then every detector is applied unchanged to all samples of the one left out. Rerun the same "
        "command to resume. See examples/transfer.toml.",
    )
    p.add_argument("config", help="transfer config (TOML with [data] paths and a [transfer] section)")
    add_config_args(p, SECTIONS, only=("--model", "--device", "--dtype", "--out", "--cache-dir", "--batch-size"))
    p.set_defaults(func=cmd_transfer)


def cmd_transfer(args: argparse.Namespace) -> int:
    config = config_from_args(args, args.config)  # (torch-free: a bad key is reported before torch is imported)
    from ..experiment.transfer import run_transfer

    out = run_transfer(config, progress=not args.no_progress)
    print(f"report: {out / 'report.md'}")
    print(f"results: {out / 'results.json'}")
    return 0
