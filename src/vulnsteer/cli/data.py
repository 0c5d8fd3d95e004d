"""``vulnsteer data stats|validate``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from ..config.vocabulary import DATASET_FORMATS
from .options import Subcommands, UsageError, add_config_args, config_from_args, overrides_from_args

if TYPE_CHECKING:  # pragma: no cover
    from ..data.loaders import LoadReport


__all__ = ["register"]


def _add_dataset_args(q: argparse.ArgumentParser) -> None:
    q.add_argument("path", help="dataset file or folder")
    q.add_argument("--format", default=None, help=f"{', '.join(DATASET_FORMATS)} (default: detected)")
    q.add_argument(
        "--merge-cwe", action="append", default=[], help="treat CWE FROM as TO, e.g. 77=78 (repeatable; default: none)"
    )


def register(sub: Subcommands) -> None:
    p = sub.add_parser("data", help="dataset statistics and validation")
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    q = dsub.add_parser("stats", help="per-CWE counts, languages, lengths")
    _add_dataset_args(q)
    q.add_argument("--json", action="store_true", help="print the statistics as JSON")
    add_config_args(q, ["model"], only=("--model", "--trust-remote-code"))  # (whose tokenizer counts tokens)
    q.add_argument("--no-tokens", action="store_true", help="skip token-length percentiles")
    q.set_defaults(func=cmd_data_stats)
    q = dsub.add_parser(
        "validate",
        help="list every problem (malformed rows, missing fields, binary files, CWEs with one label only); exit 1 "
        "if any",
    )
    _add_dataset_args(q)
    q.set_defaults(func=cmd_data_validate)


def _merge_map(args: argparse.Namespace) -> dict[str, str]:
    from ..cwe import parse_merge_map

    return parse_merge_map(args.merge_cwe)


def _load_notes(report: LoadReport) -> list[str]:
    """What a load skipped or changed, one phrase each (empty when nothing)."""
    notes = []
    if report.dropped_identical:
        notes.append(f"{report.dropped_identical} pair(s) dropped: vulnerable and fixed code identical")
    if report.binary_files:
        notes.append(f"{report.binary_files} binary file(s) skipped")
    if report.reencoded_files:
        notes.append(f"{report.reencoded_files} file(s) read as UTF-16/32")
    if report.replaced_bytes_files:
        notes.append(f"{report.replaced_bytes_files} file(s) with undecodable bytes replaced")
    if report.one_sided_cwes:
        sided = ", ".join(f"{cwe} (no {missing})" for cwe, missing in report.one_sided_cwes.items())
        notes.append(f"CWEs with one label only: {sided}")
    return notes


def cmd_data_stats(args: argparse.Namespace) -> int:
    from ..data.loaders import LoadReport, dataset_stats, load_samples

    model = config_from_args(args).model
    if args.no_tokens:
        for _, flag in overrides_from_args(args).values():
            raise UsageError(f"{flag} needs token-length percentiles (drop --no-tokens): it has no effect without them")
    report = LoadReport()
    samples = load_samples(args.path, args.format, merge=_merge_map(args), report=report, progress=not args.no_progress)
    counter = None
    if not args.no_tokens:
        from ..lm.source import ModelLoadError, load_tokenizer

        try:
            tokenizer = load_tokenizer(model.name, trust_remote_code=model.trust_remote_code)

            def counter(text: str) -> int:
                return len(tokenizer(text, add_special_tokens=False)["input_ids"])
        except ModelLoadError as exc:
            print(f"vulnsteer: warning: no token-length percentiles: {exc}", file=sys.stderr)
    stats = dataset_stats(samples, counter)
    if args.json:
        print(json.dumps({**stats, "load": report.as_dict()}, indent=2, default=str))
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
    for note in _load_notes(report):
        print(f"note: {note}; run `vulnsteer data validate {args.path}` for details")
    return 0


def cmd_data_validate(args: argparse.Namespace) -> int:
    from ..data.loaders import LoadReport, validate

    report = LoadReport()
    problems = validate(args.path, args.format, merge=_merge_map(args), report=report, progress=not args.no_progress)
    for problem in problems:
        print(problem)
    notes = _load_notes(report)
    summary = f"{report.samples} samples" + "".join(f"; {n}" for n in notes)
    if not report.samples and not problems:
        problems = [f"{args.path}: no usable samples: nothing to fit or evaluate"]
        print(problems[0])
    if problems:
        print(f"{args.path}: {len(problems)} problem(s) ({summary})", file=sys.stderr)
        return 1
    print(f"{args.path}: valid ({summary})")
    return 0
