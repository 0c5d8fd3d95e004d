"""Benchmark `vulnsteer sweep`: where the time goes, and what the activation cache saves on a second run.

Default: the issue's size, 8 CWEs x 3 layers x 5 strengths in logit mode on the embedded model and the bundled
corpus (examples/default.toml with its layers replaced by three single layers). The first run starts from an
empty activation cache; the second runs the same sweep into a fresh run directory with the cache now warm
(``--second-run extraction`` only repeats the cached extraction, for a quicker check). ``--second-run
no-prefix-store`` runs the second sweep with the prompt-prefix store off (``prefix_cache_mib = 0``), so the
scoring phases of the two runs compare the store against recomputing each prefix per chunk.

    python benchmarks/bench_sweep.py                      # the issue's benchmark (target: <= 15 min on 2 cores)
    python benchmarks/bench_sweep.py --config examples/quick.toml --as-configured

Not a test: it prints timings. The machine's load average is printed too, since a busy machine slows every
number down.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PHASES = (
    ("load_model", "model load"),
    ("prepare_data", "data (load, clean, truncate, split)"),
    ("activations", "activation extraction"),
    ("fit_vectors", "vector fitting"),
    ("score_val", "scoring: validation grid"),
    ("score_test", "scoring: test (chosen + controls)"),
    ("plots", "plots"),
)


def _run(config: Any, out: Path, lm: Any) -> dict[str, Any]:
    from vulnsteer.experiment.protocol import run_protocol

    start = time.perf_counter()
    run_protocol(config, out, lm=lm, progress=True, command="sweep")
    results: dict[str, Any] = json.loads((out / "results.json").read_text())
    results["timings_s"]["wall"] = round(time.perf_counter() - start, 2)
    return results


def _table(runs: list[tuple[str, dict[str, float]]]) -> None:
    names = [name for name, _ in runs]
    print(f"\n{'phase':<38}" + "".join(f"{n:>20}" for n in names))
    for key, label in PHASES:
        print(f"{label:<38}" + "".join(f"{t.get(key, 0.0):>19.1f}s" for _, t in runs))
    print(f"{'total (sweep wall time)':<38}" + "".join(f"{t['wall']:>19.1f}s" for _, t in runs))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "examples" / "default.toml"))
    parser.add_argument(
        "--as-configured",
        action="store_true",
        help="keep the config's layers (default: three single layers, 10, 15 and 20)",
    )
    parser.add_argument("--second-run", choices=["full", "extraction", "no-prefix-store", "none"], default="full")
    parser.add_argument("--keep", default=None, help="keep the run directories under this folder")
    parser.add_argument(
        "--group-size",
        type=int,
        default=None,
        help="override the config's run.group_size "
        "(conditions per saved chunk; the prompt-prefix store matters when there are several)",
    )
    args = parser.parse_args(argv)

    import torch

    from vulnsteer.config.experiment import load_config
    from vulnsteer.lm.model import load_model

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    root.mkdir(parents=True, exist_ok=True)
    config = load_config(args.config).replace(run__cache_dir=str(root / "activation-cache"))
    if not args.as_configured:
        config = config.replace(steering__layers=[[10], [15], [20]])
    if args.group_size:
        config = config.replace(run__group_size=args.group_size)
    v, s = config.vectors, config.steering
    settings = len(v.methods) * len(v.pooling) * len(s.positions) * len(s.layers) * sum(1 for _, x in s.strengths if x)
    print(
        f"config {args.config}: layers {s.layers}, strengths {s.strengths}, modes {config.detection.modes}, "
        f"{settings} steered settings per CWE, group_size {config.run.group_size}"
    )
    print(
        f"torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}, load average at start "
        f"{os.getloadavg()[0]:.2f}"
    )
    start = time.perf_counter()
    lm = load_model(config.model)
    load = time.perf_counter() - start
    try:
        first = _run(config, root / "run-1-cold", lm)
        first["timings_s"]["load_model"] = load
        runs = [("1st (cold cache)", first["timings_s"])]
        n_conditions = len(Path(root / "run-1-cold" / "records.jsonl").read_text().splitlines())
        if args.second_run in ("full", "no-prefix-store"):
            store_off = args.second_run == "no-prefix-store"
            second_config = config.replace(run__prefix_cache_mib=0) if store_off else config
            second = _run(second_config, root / "run-2-warm", lm)
            second["timings_s"]["load_model"] = 0.0
            runs.append(("2nd (no prefix store)" if store_off else "2nd (warm cache)", second["timings_s"]))
            print(f"prefix store, 1st run: {first.get('prefix_cache')}")
        elif args.second_run == "extraction":
            from vulnsteer.experiment.grid import resolve_layer_sets
            from vulnsteer.experiment.prepare import prepare_data
            from vulnsteer.lm.activation_cache import ActivationCache

            data = prepare_data(config.data, lm.tokenizer, progress=False)
            train = data.samples("train")
            union = sorted({layer for g in resolve_layer_sets(config.steering.layers, lm.num_layers) for layer in g})
            t = time.perf_counter()
            ActivationCache(config.run.cache_dir).load_or_extract(
                lm, train, union, config.vectors.pooling, progress=False
            )
            cached = time.perf_counter() - t
            estimate = dict(first["timings_s"], activations=cached, load_model=0.0)
            estimate["wall"] = first["timings_s"]["wall"] - first["timings_s"]["activations"] + cached
            runs.append(("2nd (estimated)", estimate))
    finally:
        lm.close()
    _table(runs)
    cold = runs[0][1]
    print(
        f"\nconditions scored: {n_conditions}; CWEs: {len(first['data']['cwes'])}; samples train/val/test "
        f"{first['data']['splits']['train']['n']}/{first['data']['splits']['val']['n']}/"
        f"{first['data']['splits']['test']['n']}"
    )
    scoring = cold.get("score_val", 0.0) + cold.get("score_test", 0.0)
    print(
        f"first run: extraction {cold['activations']:.1f}s ({100 * cold['activations'] / cold['wall']:.0f}%), "
        f"fitting {cold['fit_vectors']:.1f}s, scoring {scoring:.1f}s ({100 * scoring / cold['wall']:.0f}%); "
        f"{scoring / max(1, n_conditions):.2f}s per condition"
    )
    if args.second_run == "no-prefix-store":
        warm = runs[1][1]
        scoring_off = warm.get("score_val", 0.0) + warm.get("score_test", 0.0)
        print(
            f"prompt-prefix store: scoring {scoring_off:.1f}s without -> {scoring:.1f}s with "
            f"({scoring_off / max(scoring, 1e-3):.2f}x)"
        )
    elif len(runs) > 1:
        warm = runs[1][1]
        print(
            f"activation cache: extraction {cold['activations']:.1f}s -> {warm['activations']:.2f}s "
            f"({cold['activations'] / max(warm['activations'], 1e-3):.0f}x); whole sweep {cold['wall']:.1f}s -> "
            f"{warm['wall']:.1f}s ({cold['wall'] / warm['wall']:.2f}x)"
        )
    limit = 15 * 60
    verdict = "within" if cold["wall"] <= limit else "OVER"
    print(
        f"first run {cold['wall'] / 60:.1f} min: {verdict} the 15-minute target; load average now "
        f"{os.getloadavg()[0]:.2f}"
    )
    print(f"run directories: {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
