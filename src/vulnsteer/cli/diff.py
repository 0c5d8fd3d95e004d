"""``vulnsteer diff``: score only the functions that changed between two versions, before and after.

``vulnsteer diff OLD NEW`` compares two files or two folders; ``vulnsteer diff --base REV [--head REV] [PATH...]``
compares a git revision with the work tree (or with ``--head``), for the tracked files under PATH. Functions are
matched by qualified name; each changed, added, removed or renamed function is reported with its score before and
after (:mod:`vulnsteer.scan.diff`), as a table, JSON lines or SARIF. Exit codes as ``scan``'s: 1 when a changed or
added function reaches ``--fail-on`` and scores higher than before (or a file could not be read), 2 usage or input
error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .options import Subcommands, UsageError, add_scorer_args, scorer_spec
from .scan import (
    add_file_args,
    add_output_args,
    add_scoring_args,
    cache_dir_of,
    check_scoring_options,
    output_format,
    scan_options,
    warn_on_stderr,
)

EPILOG = """\
exit codes (diff):
  0    no changed or added function reaches --fail-on with a higher score than before, and every file was read
  1    one does (the lines on stderr name the highest), or a file could not be read (--allow-unscanned to pass)
  2    bad usage or input (two paths that are not both files or both folders, a revision git does not know ...)
  130  interrupted (Ctrl-C): finished scores stay cached

examples:
  vulnsteer diff old/parser.c new/parser.c
  vulnsteer diff release-1.0/ release-1.1/ --format sarif -o diff.sarif
  vulnsteer diff --base origin/main src/          # the work tree against origin/main, under src/
  vulnsteer diff --base v1.0 --head v1.1          # two revisions
"""


def register(sub: Subcommands) -> None:
    p = sub.add_parser(
        "diff",
        help="score only the functions that changed between two versions (files, folders or git revisions)",
        description="Split both versions into functions (tree-sitter), match them by qualified name, and score "
        "only the changed, added, removed and renamed ones, before and after: a positive DELTA means the change "
        "made the function riskier.",
        epilog=EPILOG,
    )
    p.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help="OLD NEW (two files or two folders); with --base, the paths to compare in the repository (default: .)",
    )
    g = p.add_argument_group("git")
    g.add_argument("--base", default=None, metavar="REV", help="compare this git revision with the work tree")
    g.add_argument("--head", default=None, metavar="REV", help="with --base: compare with this revision instead")
    add_scorer_args(p)
    add_output_args(p, "exit 1 when a changed or added function reaches it with a higher score than before "
                    "(default: --min-score)")  # fmt: skip
    add_file_args(p)
    add_scoring_args(p)
    p.set_defaults(func=cmd_diff)


def cmd_diff(args: argparse.Namespace) -> int:
    from ..data.functions import tree_sitter_available
    from ..io import check_writable
    from ..scan import ModelScorer, write_output
    from ..scan.diff import diff, git_versions, path_versions
    from ..scan.output import render_diff

    if args.head is not None and args.base is None:
        raise UsageError("--head needs --base (the revision to compare it with)")
    if args.base is None and len(args.paths) != 2:
        raise UsageError(f"diff needs OLD NEW (two files or two folders) or --base REV; got {len(args.paths)} path(s)")
    check_scoring_options(args)
    spec = scorer_spec(args, explain=args.explain)
    if not tree_sitter_available():
        raise UsageError("diff splits files into functions with tree-sitter, which is not installed: "
                         "pip install 'vulnsteer[scan]' (or `make setup`)")  # fmt: skip
    options = scan_options(args, spec)
    paths = [Path(p) for p in args.paths]
    if args.base is not None:
        for path in paths:
            if not path.exists():
                raise FileNotFoundError(f"{path}: no such file or folder")
        versions, *labels = git_versions(args.base, args.head, paths, Path.cwd(), options)
    else:
        versions = path_versions(paths[0], paths[1], options)
        labels = [str(paths[0]), str(paths[1])]
    if args.output:
        check_writable(args.output, "-o/--output", inputs=args.paths)
    cache_dir = cache_dir_of(args)
    with ModelScorer(spec, identity_store=cache_dir / "models" if cache_dir is not None else None) as scorer:
        if spec.max_code_tokens is not None:
            scorer.check()
        report = diff(versions, scorer, options, (labels[0], labels[1]), cache_dir=cache_dir,
                      progress=not args.no_progress)  # fmt: skip
    write_output(render_diff(report, output_format(args)), Path(args.output) if args.output else None)
    warn_on_stderr(report.stats)
    print(report.summary_line(), file=sys.stderr)
    for line in report.failures():
        print(f"vulnsteer: fails: {line}", file=sys.stderr)
    return report.exit_code
