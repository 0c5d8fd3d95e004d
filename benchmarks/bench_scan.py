"""``vulnsteer scan`` speed on the embedded model, measured side by side in one run (a benchmark, not a test).

    .venv/bin/python benchmarks/bench_scan.py [--threads 2] [--explain-functions 32] [--limit N]

The tree scanned is the bundled corpus (``vulnsteer/corpus``: vulnerable and fixed versions of 14 functions per
CWE in C, C++, Python, JavaScript and Java), one file per version, in a temporary folder. Prints:

- the first scan of the tree as a user sees it: model load and weights hashing, then every function scored in
  logit mode (probe-only: the score is P(vulnerable) from the answer logits); functions/s of the scoring;
- the rescan of the unchanged tree with a fresh scorer (the model identity is recalled, nothing is loaded or
  scored), in process and through the CLI, and the speed-up over the first scan (goal: >= 20x);
- probe-only vs with generated explanations (``--explain``) on the same subset, cache off: functions/s each.

The machine is shared and noisy: read the ratios, not the seconds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

import torch

from vulnsteer.config.sections import ModelSection
from vulnsteer.data.builtin import builtin_files
from vulnsteer.data.clean import canonical_language
from vulnsteer.lm.model import load_model
from vulnsteer.scan import ModelScorer, ScanOptions, ScorerSpec, scan

_EXTENSIONS = {"c": ".c", "cpp": ".cpp", "python": ".py", "javascript": ".js", "java": ".java"}


def write_corpus_tree(root: Path, limit: int | None) -> int:
    """One file per corpus function version; returns how many were written."""
    written = 0
    corpus = resources.files("vulnsteer") / "corpus"
    for name in builtin_files():
        data = json.loads((corpus / name).read_text(encoding="utf-8"))
        for pair in data["pairs"]:
            for label in ("vulnerable", "secure"):
                if limit is not None and written >= limit:
                    return written
                extension = _EXTENSIONS[canonical_language(pair["language"])]
                path = root / Path(name).stem / f"{pair['id']}-{label}{extension}"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(pair[label], encoding="utf-8")
                written += 1
    return written


def _timed_scan(root: Path, scorer: ModelScorer, cache: Path | None) -> tuple[float, int, int]:
    start = time.perf_counter()
    report = scan([root], scorer, ScanOptions(), cache_dir=cache, progress=False)
    return time.perf_counter() - start, report.stats.functions, report.stats.scored


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--explain-functions", type=int, default=32, help="subset scored with explanations")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--limit", type=int, default=None, help="scan only this many corpus functions")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="bench-scan-") as tmp:
        work = Path(tmp)
        tree, cache = work / "tree", work / "cache"
        files = write_corpus_tree(tree, args.limit)
        spec = ScorerSpec(ModelSection(device="cpu"))
        store = cache / "models"
        print(f"tree: {files} files from the bundled corpus; torch threads: {torch.get_num_threads()}")

        start = time.perf_counter()
        first = ModelScorer(spec, identity_store=store)
        assert first.digest  # no identity on record: loads the model and hashes it
        setup = time.perf_counter() - start
        scanned, functions, scored = _timed_scan(tree, first, cache)
        first_total = setup + scanned
        print(
            f"first scan: {functions} functions, {scored} scored; model load + hashing {setup:.1f} s, "
            f"scan {scanned:.1f} s, total {first_total:.1f} s"
        )
        print(f"  probe-only (logit) scoring: {functions / scanned:.2f} functions/s")

        start = time.perf_counter()
        fresh = ModelScorer(spec, identity_store=store)  # identity recalled: nothing loaded
        _, re_functions, re_scored = _timed_scan(tree, fresh, cache)
        rescan = time.perf_counter() - start
        assert re_scored == 0 and re_functions == functions, "the rescan scored something"
        print(
            f"rescan (in process, fresh scorer): {rescan:.3f} s -> {first_total / rescan:.0f}x faster than the "
            f"first scan ({scanned / rescan:.0f}x the scan alone, model load excluded)"
        )

        command = [
            sys.executable,
            "-m",
            "vulnsteer.cli",
            "--no-progress",
            "scan",
            str(tree),
            "--device",
            "cpu",
            "--cache-dir",
            str(cache),
            "--format",
            "sarif",
            "-o",
            str(work / "out.sarif"),
        ]
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        cli = time.perf_counter() - start
        if done.returncode not in (0, 1):
            print(done.stderr, file=sys.stderr)
            return 1
        print(
            f"rescan (CLI process, Python start-up included): {cli:.2f} s -> {first_total / cli:.0f}x; "
            f"{done.stderr.strip().splitlines()[-1]}"
        )
        first.close()

        subset = work / "subset"
        write_corpus_tree(subset, args.explain_functions)
        lm = load_model(device="cpu")
        probe = ModelScorer(lm=lm)
        explain = ModelScorer(ScorerSpec(explain=True, max_new_tokens=args.max_new_tokens), lm=lm)
        probe_s, n_probe, _ = _timed_scan(subset, probe, None)
        explain_s, n_explain, _ = _timed_scan(subset, explain, None)
        print(f"subset of {n_probe} functions, cache off, model loaded beforehand:")
        print(f"  probe-only: {n_probe / probe_s:.2f} functions/s ({probe_s:.1f} s)")
        print(
            f"  with explanations (greedy, {args.max_new_tokens} new tokens): {n_explain / explain_s:.2f} "
            f"functions/s ({explain_s:.1f} s); {explain_s / probe_s:.1f}x the probe-only time"
        )
        lm.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
