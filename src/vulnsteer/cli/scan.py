"""``vulnsteer scan``: functions of real code scored, findings as SARIF, JSON lines or a table.

Exit codes: 0 the scan passes, 1 it fails as a gate (a finding at or above ``--fail-on``, or a source file not
scanned without ``--allow-unscanned``), 2 usage or input error, 130 interrupted. Findings go to standard output
(or ``-o``); the summary line, the warnings and why the scan fails go to standard error.
The options and paths are checked before anything loads; a rescan whose functions are all cached loads no model
(and imports no torch).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config.vocabulary import OUTPUT_FORMATS
from .options import (
    Subcommands,
    UsageError,
    adaptation_options,
    add_config_args,
    add_scorer_args,
    check_steering_options,
    config_from_args,
    given,
    positive_int,
    probe_detector,
    reading_options,
    scorer_spec,
)

if TYPE_CHECKING:  # pragma: no cover
    from ..config.sections import RunSection
    from ..detection.probe_detector import ProbeDetector
    from ..scan.model_scorer import ModelScorer
    from ..scan.options import ScanOptions
    from ..scan.ray_scorer import RayScorer
    from ..scan.results import ScanReport, ScanStats
    from ..scan.spec import ScorerSpec


EPILOG = """\
exit codes (scan):
  0    no finding reaches --fail-on, and every source file was scanned
  1    a finding reaches --fail-on, or a source file was not scanned (too large, unreadable; --allow-unscanned
       to pass anyway): the lines on stderr say which
  2    bad usage or input: one line names the file or option
  130  interrupted (Ctrl-C): nothing is written half-way; finished scores stay cached

suppressing findings:
  a `vulnsteer: ignore` comment on a function's first line or the line above it keeps its findings out;
  `vulnsteer: ignore[CWE-89]` only those naming CWE-89; --baseline FILE (an earlier --format sarif or json
  output) keeps out the findings it already has
"""


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a probability in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a probability in [0, 1], got {text!r}")
    return value


def register(sub: Subcommands) -> None:
    p = sub.add_parser(
        "scan",
        help="score every function of files and folders; SARIF, JSON lines or a table",
        description="Split source files into functions (tree-sitter), score each with the model (plain or steered), "
        "cache the scores, and report the functions at or above --min-score.",
        epilog=EPILOG,
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="files and folders to scan")
    add_scorer_args(p)
    o = add_output_args(p, "exit 1 when a finding reaches it; at least --min-score (default: --min-score)")
    o.add_argument(
        "--baseline",
        default=None,
        metavar="FILE",
        help="an earlier scan's --format sarif or json output: its findings are not reported again (default: none)",
    )
    o.add_argument(
        "--cwe",
        action="append",
        default=[],
        help="report only findings naming these CWEs (repeatable; a finding names a CWE only with --explain, "
        "--vector or --detector)",
    )
    add_file_args(p)
    add_scoring_args(p)
    add_config_args(p, ["run"], only=("--executor", "--ray-address", "--ray-workers", "--ray-gpus-per-worker"))
    p.set_defaults(func=cmd_scan)


def add_output_args(p: argparse.ArgumentParser, fail_on: str) -> argparse._ArgumentGroup:
    """``--format``, ``-o``, ``--min-score``, ``--fail-on`` (its help: *fail_on*) and ``--allow-unscanned``, for
    ``scan`` and ``diff``; returns the group (for more options)."""
    o = p.add_argument_group("output")
    o.add_argument(
        "--format",
        default=None,
        choices=list(OUTPUT_FORMATS),
        help="output format (default: from -o's name: .sarif SARIF, .json/.jsonl JSON lines; else text)",
    )
    o.add_argument("-o", "--output", default=None, metavar="FILE", help="write here, atomically (default: stdout)")
    o.add_argument(
        "--min-score",
        type=_probability,
        default=None,
        help="findings from this score (default: a probe detector's threshold, e.g. the shipped detector's; else 0.5)",
    )
    o.add_argument("--fail-on", type=_probability, default=None, help=fail_on)
    o.add_argument(
        "--allow-unscanned",
        action="store_true",
        help="pass even when source files could not be scanned (too large, unreadable); they are still named",
    )
    return o


def add_file_args(p: argparse.ArgumentParser) -> None:
    """Which files a walk reads (``scan`` and ``diff``)."""
    f = p.add_argument_group("files")
    f.add_argument("--include", action="append", default=[], metavar="GLOB", help="scan only matching files")
    f.add_argument("--exclude", action="append", default=[], metavar="GLOB", help="leave matching paths out")
    f.add_argument("--no-default-excludes", action="store_true", help="also scan .git, node_modules, build ...")
    f.add_argument("--no-gitignore", action="store_true", help="also scan files that .gitignore ignores")
    f.add_argument("--max-file-bytes", type=positive_int, default=2_000_000, help="skip larger files (default: 2 MB)")


def add_scoring_args(p: argparse.ArgumentParser) -> None:
    """``--explain`` and the score cache (``scan`` and ``diff``)."""
    s = p.add_argument_group("scoring")
    s.add_argument(
        "--explain", action="store_true", help="also generate the model's answer text: verdict, CWE, explanation"
    )
    s.add_argument("--cache-dir", default=None, help="score cache (default: $VULNSTEER_CACHE/scan)")
    s.add_argument("--no-cache", action="store_true", help="neither read nor write the score cache")


def _check_options(args: argparse.Namespace) -> None:
    check_scoring_options(args)
    if args.cwe and not args.explain and args.vector is None and args.detector is None:
        print(
            "vulnsteer: warning: --cwe keeps only findings that name a CWE, and without --explain, --vector or "
            "--detector no finding names one: expect no findings",
            file=sys.stderr,
        )


def check_scoring_options(args: argparse.Namespace) -> None:
    """The scoring and cache flags of ``scan`` and ``diff`` agree (before anything loads)."""
    # (argparse refuses --detector with --vector)
    check_steering_options(
        args, args.explain, f"a {getattr(args, 'command', 'scan')} without --explain generates nothing"
    )
    if not args.explain and given(args, "detection.max_new_tokens"):
        raise UsageError("--max-new-tokens needs --explain (the score alone generates nothing)")
    if args.no_cache and args.cache_dir is not None:
        raise UsageError("--cache-dir and --no-cache contradict each other")


def cmd_scan(args: argparse.Namespace) -> int:
    from ..data.functions import tree_sitter_available
    from ..io import check_writable
    from ..lm.ray_pool import check_ray
    from ..scan import ModelScorer, render, scan, write_output
    from ..scan.engine import check_paths
    from ..scan.suppression import read_baseline

    _check_options(args)
    spec = scorer_spec(args, explain=args.explain)
    run = config_from_args(args).run
    check_ray(run.executor)  # before anything loads
    check_paths(args.paths)  # before anything loads
    if not tree_sitter_available():
        raise UsageError(
            "scan splits files into functions with tree-sitter, which is not installed: "
            "pip install 'vulnsteer[scan]' (or `make setup`)"
        )
    if args.output:
        check_writable(args.output, "-o/--output", inputs=args.paths)
    baseline = read_baseline(args.baseline) if args.baseline else frozenset()
    options = scan_options(args, spec, cwes=tuple(args.cwe), baseline=baseline)
    cache_dir = cache_dir_of(args)
    local = ModelScorer(spec, identity_store=cache_dir / "models" if cache_dir is not None else None)
    with _spread(local, run) as scorer:
        if spec.max_code_tokens is not None:  # (the default budget is fitted when scoring: a rescan loads nothing)
            local.check()
        report = scan(args.paths, scorer, options, cache_dir=cache_dir, progress=not args.no_progress)
        workers = {} if isinstance(scorer, ModelScorer) else scorer.stats()  # a RayScorer with --executor ray
    write_output(render(report, output_format(args)), Path(args.output) if args.output else None)
    if workers:
        busy = [w for w in workers["workers"] if w["chunks"]]
        chunks = sum(w["chunks"] for w in busy)
        line = f"{len(busy)} of {len(workers['workers'])} workers scored {chunks} chunks"
        print(f"vulnsteer: ray: {line}, {workers['retried_chunks']} run again", file=sys.stderr)
    _report_on_stderr(report, args)
    return report.exit_code


def _spread(scorer: ModelScorer, run: RunSection) -> ModelScorer | RayScorer:
    """*scorer*, or with ``--executor ray`` a :class:`~vulnsteer.scan.ray_scorer.RayScorer` around it (its chunks
    scored on Ray workers; see the run section's ``ray_*`` keys)."""
    if run.executor != "ray":
        return scorer
    from ..scan.ray_scorer import RayScorer

    return RayScorer(scorer, run)


def scan_options(args: argparse.Namespace, spec: ScorerSpec, **more: Any) -> ScanOptions:
    """The :class:`~vulnsteer.scan.options.ScanOptions` of ``scan``'s and ``diff``'s shared flags (*more*: the
    others)."""
    from ..scan import FileFilter, ScanOptions

    detector = probe_detector(spec)
    return ScanOptions(
        files=FileFilter(
            include=tuple(args.include),
            exclude=tuple(args.exclude),
            default_excludes=not args.no_default_excludes,
            gitignore=not args.no_gitignore,
            outputs=frozenset({Path(args.output).resolve()}) if getattr(args, "output", None) else frozenset(),
        ),
        max_file_bytes=args.max_file_bytes,
        min_score=args.min_score if args.min_score is not None else default_min_score(detector),
        findings_at_threshold=spec.detector is not None and args.min_score is None,
        fail_on=args.fail_on,
        allow_unscanned=args.allow_unscanned,
        **reading_options(args, spec),
        **adaptation_options(args, spec, detector),
        **more,
    )


def default_min_score(detector: ProbeDetector | None) -> float:
    """Where findings start without ``--min-score``: a probe *detector*'s threshold as a probability (when the scan
    adapts, its adapted threshold instead: ``ScanOptions.findings_at_threshold``), else 0.5."""
    return 0.5 if detector is None else float(detector.threshold_probability())


def cache_dir_of(args: argparse.Namespace) -> Path | None:
    """The score cache's folder (``--cache-dir``, or the default), None with ``--no-cache``."""
    from ..scan import default_cache_dir

    return None if args.no_cache else Path(args.cache_dir) if args.cache_dir else default_cache_dir()


def output_format(args: argparse.Namespace) -> str:
    """``--format``, or without it the format ``-o``'s name asks for (``.sarif`` SARIF, ``.json``/``.jsonl`` JSON
    lines), else text: ``-o out.sarif`` alone writes SARIF, not a table named .sarif.

    >>> [output_format(argparse.Namespace(format=None, output=name)) for name in ("scan.sarif", "all.jsonl", None)]
    ['sarif', 'json', 'text']
    """
    if args.format:
        return str(args.format)
    name = str(args.output or "").lower()
    if name.endswith(".sarif") or name.endswith(".sarif.json"):
        return "sarif"
    if name.endswith((".json", ".jsonl", ".ndjson")):
        return "json"
    return "text"


def _report_on_stderr(report: ScanReport, args: argparse.Namespace) -> None:
    """What a user must hear besides the findings, on stderr: files not scanned or skipped by name, parse errors,
    warnings, why nothing was found, the model with its dtype and why, the score, the summary line and why the scan
    fails."""
    stats = report.stats

    def say(line: str) -> None:
        print(f"vulnsteer: {line}", file=sys.stderr)

    warn_on_stderr(stats)
    if not stats.files:
        say(f"warning: no source file scanned under {', '.join(args.paths)}{_nothing_found_hint(stats, args)}")
    provenance = report.provenance
    if "dtype_choice" in provenance:  # (a model scorer's: which dtype it loads in, and why)
        say(f"model: {provenance['model']}, {provenance['dtype']} ({provenance['dtype_choice']})")
    if "score" in provenance:
        say(f"score: {provenance['score']}")
    if "adapted_to" in provenance:
        from ..detection.probe_detector import is_probe_detector

        what = "the probe's centre"
        if "detector" in provenance and not is_probe_detector(Path(provenance["detector"])):
            what = (
                "the steering detector's verdict threshold (a quantile of the steered scores, which stay as they are)"
            )
        line = f"adapted: {what} re-estimated from the {provenance['adapted_to']} distinct functions"
        if "prevalence" not in provenance:
            share = report.file_share or 0.0  # (the share of the distinct functions flagged)
            line += (f" scanned, no label read; it flags the highest {round(share * provenance['adapted_to'])} of "
                     f"them ({share:.0%}: its calibration data's vulnerable share, to the nearest function; assumed: "
                     "--prevalence states yours")  # fmt: skip
        else:
            line += " scanned, no label read (the stated prevalence below"
        say(
            line + "; file verdicts flag the same share of the files; --no-adapt scores each function as the "
            "detector was fitted)"
        )
    from ..scan.sources import file_scores

    shared = [f for f in file_scores(report) if f.shared]
    if shared:
        say(f"{len(shared)} file(s) share functions with exactly one other scanned file (two versions of one file "
            f"do): their scores leave those {sum(f.shared for f in shared)} function(s) out and read the others, "
            "which tell the two apart (still scored and reported; --file-functions all reads every one)")  # fmt: skip
    if "prevalence" in provenance:
        share = provenance["prevalence"]
        say(f"prevalence: {share:g} stated: the highest {share:.0%} of the distinct functions are flagged (from "
            f"P(vulnerable) {report.options.min_score:.3f}), the probabilities take it as their prior")  # fmt: skip
    print(stats.summary_line(), file=sys.stderr)
    for line in report.failures():
        say(f"fails: {line}")


def warn_on_stderr(stats: ScanStats) -> None:
    """The files not scanned or skipped by name, the parse errors and the warnings of a scan's (or a diff's)
    :class:`~vulnsteer.scan.results.ScanStats`, one line each on stderr."""
    lines = [
        *(f"not scanned: {line}" for line in stats.unscanned),
        *(f"skipped: {line}" for line in stats.skipped_named),
        *(
            f"{path}: parse errors (tree-sitter could not read part of it; functions scored as found)"
            for path in stats.parse_error_files
        ),
        *stats.warnings,
    ]
    for line in lines:
        print(f"vulnsteer: warning: {line}", file=sys.stderr)


def _nothing_found_hint(stats: ScanStats, args: argparse.Namespace) -> str:
    """Why a scan found no source file, from what it left out (the hint names the ``.gitignore`` that did)."""
    reasons = []
    for ignore_file, count in stats.ignored_by.most_common():
        reasons.append(f"{count} ignored by {ignore_file} (--no-gitignore to scan them)")
    if stats.unscanned:
        reasons.append(f"{len(stats.unscanned)} not scanned (see above)")
    if stats.skipped:
        reasons.append(", ".join(f"{n} {reason}" for reason, n in sorted(stats.skipped.items())))
    others = stats.ignored - sum(stats.ignored_by.values())
    if others:
        reasons.append(f"{others} left out by --include/--exclude or the default excludes")
    return f": {'; '.join(reasons)}" if reasons else " (no files there)"
