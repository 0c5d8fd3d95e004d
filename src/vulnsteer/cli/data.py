"""``vulnsteer data stats|validate``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("data", help="dataset statistics and validation")
    dsub = p.add_subparsers(dest="data_command", required=True)
    q = dsub.add_parser("stats", help="per-CWE counts, languages, lengths")
    q.add_argument("path")
    q.add_argument("--format", default=None)
    q.add_argument("--merge-cwe", action="append", default=[])
    q.add_argument("--json", action="store_true")
    q.add_argument("--model", default=None, help="tokenizer for token-length percentiles (default: embedded model)")
    q.add_argument("--no-tokens", action="store_true", help="skip token-length percentiles")
    q.set_defaults(func=cmd_data_stats)
    q = dsub.add_parser("validate", help="list every problem; exit 1 if any")
    q.add_argument("path")
    q.add_argument("--format", default=None)
    q.set_defaults(func=cmd_data_validate)


def cmd_data_stats(args: argparse.Namespace) -> int:
    from ..cwe import parse_merge_map
    from ..data.loaders import LoadReport, dataset_stats, load_samples

    report = LoadReport()
    samples = load_samples(args.path, args.format, merge=parse_merge_map(args.merge_cwe), report=report)
    counter = None
    if not args.no_tokens:
        from .lm.model import ModelLoadError, load_tokenizer

        try:
            tokenizer = load_tokenizer(args.model)

            def counter(text: str) -> int:
                return len(tokenizer(text, add_special_tokens=False)["input_ids"])
        except ModelLoadError as exc:
            print(f"(no token-length percentiles: {exc})", file=sys.stderr)
    stats = dataset_stats(samples, counter)
    if args.json:
        print(json.dumps(stats, indent=2, default=str))
        return 0
    from ..report.markdown import fmt

    print(f"{args.path}: {len(samples)} samples")
    per_cwe = stats.get("per_cwe") or stats.get("by_cwe") or {}
    print(f"{'CWE':<10} {'vulnerable':>10} {'secure':>8} {'pairs':>7}  languages")
    for cwe, row in per_cwe.items():
        langs = row.get("languages", {})
        lang_text = ", ".join(f"{k}:{v}" for k, v in langs.items()) if isinstance(langs, dict) else str(langs)
        print(
            f"{cwe:<10} {row.get('vulnerable', 0):>10} {row.get('secure', 0):>8} {row.get('pairs', 0):>7}  {lang_text}"
        )
    for key, value in stats.items():
        if key not in ("per_cwe", "by_cwe"):
            print(f"{key}: {fmt(value) if not isinstance(value, (dict, list)) else json.dumps(value, default=str)}")
    if report.problems:
        print(f"{len(report.problems)} problem(s) while loading; run `vulnsteer data validate {args.path}`")
    return 0


def cmd_data_validate(args: argparse.Namespace) -> int:
    from ..data.loaders import validate

    problems = validate(args.path, args.format)
    for problem in problems:
        print(problem)
    if problems:
        print(f"{args.path}: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"{args.path}: valid")
    return 0
