"""Compare every number of two results.json files (any readable schema): did a change of code change a result?

    python benchmarks/compare_results.py BEFORE/results.json AFTER/results.json [--rel 1e-9] [--show 20]

Prints how many values were compared, which differ (with both values) and which only one side has; exit 1 when a
value differs. Timings, caches, memory and paths are left out (see vulnsteer.experiment.compare).
"""

from __future__ import annotations

import argparse
import sys

from vulnsteer.experiment.compare import compare
from vulnsteer.experiment.upgrade import load_results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--rel", type=float, default=0.0, help="relative tolerance for floats (default: exact)")
    parser.add_argument("--show", type=int, default=20, help="paths listed per kind")
    args = parser.parse_args(argv)
    found = compare(load_results(args.before), load_results(args.after), args.rel)
    print(found.summary())
    for path, (a, b) in list(found.differ.items())[: args.show]:
        print(f"  differs: {path}: {a!r} -> {b!r}")
    for path in found.only_before[: args.show]:
        print(f"  only before: {path}")
    for path in found.only_after[: args.show]:
        print(f"  only after: {path}")
    return 0 if found.same else 1


if __name__ == "__main__":
    sys.exit(main())
