"""Argument groups and parsers shared by several commands."""

from __future__ import annotations

import argparse
from typing import Any


def floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        default=None,
        help="Hugging Face id, local directory or .gguf file (default: embedded SmolLM2-135M-Instruct)",
    )
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    g.add_argument("--dtype", default=None, help="auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16")
    g.add_argument("--device-map", default=None, help="passed to from_pretrained, e.g. 'auto' for multi-GPU models")
    g.add_argument("--trust-remote-code", action="store_true", help="allow model repositories to run their code")


def add_data_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    g = p.add_argument_group("data")
    g.add_argument(
        "--data", default=None, required=required, help="dataset file or folder (default: the bundled corpus)"
    )
    g.add_argument("--format", default=None, help="sven, juliet, paired-dir, castle, jsonl, csv (default: detect)")
    g.add_argument("--cwe", action="append", default=[], help="restrict to these CWEs (repeatable: --cwe 89 --cwe 79)")
    g.add_argument("--merge-cwe", action="append", default=[], help="treat CWE FROM as TO, e.g. 77=78 (repeatable)")
    g.add_argument("--keep-comments", action="store_true", help="do not strip comments (label leaks!)")
    g.add_argument("--max-code-tokens", type=int, default=512, help="token budget for code (default 512)")
    g.add_argument(
        "--max-pairs-per-cwe",
        type=int,
        default=None,
        help="cap pairs per CWE (seeded choice; with "
        "--respect-upstream-split only train/val pairs are capped, the upstream val split stays whole)",
    )
    g.add_argument(
        "--duplicates",
        default="merge",
        choices=["merge", "drop", "keep"],
        help="code occurring in several splits (after stripping comments/whitespace): merge = one split "
        "group, nothing dropped (default); drop = drop val/test copies with their pair partner; keep = "
        "report only",
    )
    g.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    g.add_argument(
        "--respect-upstream-split", action="store_true", help="use the dataset's own train/val split (val becomes test)"
    )


#: ``vulnsteer run``'s candidate strengths and unit (the same as :class:`~vulnsteer.experiment.RunConfig`'s;
#: literals here so that ``--help`` does not import torch).
RUN_STRENGTHS: tuple[float, ...] = (-1.0, -0.3, 0.3, 1.0)
RUN_UNIT = "relative"


def add_steer_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("steering")
    g.add_argument(
        "--layers", type=ints, default=(), help="comma-separated layers, negatives allowed (default: the middle layer)"
    )
    g.add_argument(
        "--position",
        default="last",
        choices=["last", "code_mean"],
        help="activation position the vectors are fitted at",
    )
    g.add_argument("--method", default="mean_diff", choices=["mean_diff", "pca", "logistic"])
    g.add_argument(
        "--positions",
        dest="steer_positions",
        default="last",
        choices=["last", "prompt", "generated", "all"],
        help="token positions to steer",
    )
    g.add_argument(
        "--unit",
        default="raw",
        choices=["raw", "relative"],
        help="raw: strength x vector; relative: strength x layer's mean hidden norm x unit vector",
    )
    g.add_argument("--batch-size", type=int, default=8)


def run_config(args: argparse.Namespace, **extra: Any) -> Any:
    from ..experiment.engine import RunConfig

    modes = tuple(m.strip() for m in getattr(args, "modes", "logit").split(",") if m.strip())
    return RunConfig(
        model=args.model,
        data=args.data,
        format=args.format,
        cwes=tuple(args.cwe),
        merge_cwe=tuple(args.merge_cwe),
        layers=tuple(getattr(args, "layers", ()) or ()),
        position=getattr(args, "position", "last"),
        method=getattr(args, "method", "mean_diff"),
        unit=getattr(args, "unit", "raw"),
        steer_positions=getattr(args, "steer_positions", "all"),
        modes=modes,
        batch_size=args.batch_size,
        seed=args.seed,
        respect_upstream=args.respect_upstream_split,
        keep_comments=args.keep_comments,
        max_code_tokens=args.max_code_tokens,
        max_pairs_per_cwe=args.max_pairs_per_cwe,
        duplicates=args.duplicates,
        device=args.device,
        dtype=args.dtype,
        **extra,
    )


def load(args: argparse.Namespace) -> Any:
    from ..lm.model import load_model

    return load_model(
        args.model,
        device=args.device,
        dtype=args.dtype,
        device_map=args.device_map,
        trust_remote_code=args.trust_remote_code,
    )
