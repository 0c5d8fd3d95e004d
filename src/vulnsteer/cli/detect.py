"""``vulnsteer detect``: a verdict per source file, a view of the scan engine (:mod:`vulnsteer.scan`).

Each file is prepared and scored as ``vulnsteer scan`` does it (decoded, split into functions, comments stripped,
a function over the token budget read in windows or by its head, scored by the same
:class:`~vulnsteer.scan.spec.ScorerSpec` from the same flags), and reported by its functions' aggregate
score (``--aggregation``: what the detector's run chose, else a smooth maximum), the verdict that score gets, and its
highest-scoring function. The
options, the files, the steering vector or detector and the token budget are checked before the model loads.
Nothing is cached.
"""

from __future__ import annotations

import argparse
import json
import sys

from ..config.vocabulary import MODES
from .options import (
    Subcommands,
    UsageError,
    adaptation_options,
    add_scorer_args,
    check_steering_options,
    given,
    probe_detector,
    reading_options,
    scorer_spec,
)


def register(sub: Subcommands) -> None:
    p = sub.add_parser("detect", help="a verdict per source file (its functions' aggregate score), optionally steered")
    p.add_argument("files", nargs="+", help="source files to score")
    p.add_argument(
        "--language",
        default=None,
        help="language of every file, e.g. c, python (default: from each file's extension; an unknown extension "
        "is prompted as plain source code, with a warning)",
    )
    p.add_argument(
        "--mode",
        default=None,
        choices=list(reversed(MODES)),
        help="how the verdict is read: the generated answer text (kept as the explanation), or P(vulnerable) from "
        "the answer logits alone (the score is P(vulnerable) in both); with a probe detector (the shipped one is "
        "the default) the verdict is its probe's and generation only adds the model's text (default: logit with a "
        "probe detector, else generation)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object per file")
    add_scorer_args(p)
    p.set_defaults(func=cmd_detect)


def cmd_detect(args: argparse.Namespace) -> int:
    from ..detection.probe_detector import is_probe_detector
    from ..scan.sources import MAX_SOURCE_BYTES, check_language, check_source_files

    if args.mode is None:  # a probe detector (the shipped one by default) needs no generation
        shipped = args.detector is None and args.vector is None and not args.answer and not given(args, "model.name")
        probe_only = shipped or (args.detector is not None and is_probe_detector(args.detector))
        args.mode = "logit" if probe_only else "generation"
    generates = args.mode == "generation"
    check_steering_options(args, generates, f"--mode {args.mode} generates nothing")
    if not generates and given(args, "detection.max_new_tokens"):
        raise UsageError("--max-new-tokens needs --mode generation (logit mode generates nothing)")
    language, warnings = check_language(args.language) if args.language is not None else (None, [])
    spec = scorer_spec(args, explain=generates)
    files, found = check_source_files(args.files, language is not None)  # (torch is not imported yet)
    for message in warnings + found:
        print(f"vulnsteer: warning: {message}", file=sys.stderr)
    from ..scan import ModelScorer, ScanOptions, scan
    from ..scan.sources import file_scores

    options = ScanOptions(max_file_bytes=MAX_SOURCE_BYTES, min_score=0.0, fail_on=1.0, language=language,
                          score_unknown=True, **reading_options(args, spec),
                          **adaptation_options(args, spec, probe_detector(spec)))  # fmt: skip
    with ModelScorer(spec) as scorer:
        scorer.check()
        report = scan(files, scorer, options, progress=not args.no_progress)
    for message in report.stats.warnings:  # (too few functions to adapt, a prevalence not applied, ...)
        print(f"vulnsteer: warning: {message}", file=sys.stderr)
    scores = file_scores(report, files)
    for name in sorted(set(files) - {s.path for s in scores}):
        print(f"vulnsteer: warning: {name}: nothing left to score once comments are stripped", file=sys.stderr)
    for file in scores:
        top, result = file.top, file.top.score
        if args.json:
            print(json.dumps(file.to_detect_json()))
            continue
        weakness = f" {result.cwe}" if result.cwe and file.verdict == "vulnerable" else ""
        if file.aggregation == "max" or file.functions == 1:
            where = f"{top.name} at line {top.region.start_line}, the highest of {file.functions} function(s)"
        else:
            where = (f"{file.aggregation} of {file.functions} functions; the highest {top.name} at line "
                     f"{top.region.start_line}, {result.score:.4f}")  # fmt: skip
        if file.shared:
            where += f"; {file.shared} shared with another file given, left out"
        push = f" (push {result.push:+.2f})" if result.push is not None else ""
        probe = f" probe score {result.probe:+.3f}{push}" if result.probe is not None else ""
        print(f"{file.path}: {file.verdict}{weakness} p(vulnerable)={file.score:.4f} ({where}){probe}")
        for line in (result.explanation or "").splitlines():
            if line.strip():
                print(f"  {line.strip()}")
    return 0
