"""Benchmark the Ray executor's overhead: one sweep with the local executor, with Ray and 1 worker, and with Ray
and 2 workers, measured side by side in one run (same model, same config, each run into its own folder with its
own empty activation cache).

    .venv/bin/python benchmarks/bench_ray.py                        # examples/quick.toml on the embedded model
    .venv/bin/python benchmarks/bench_ray.py --config my.toml --repeats 2 --workers 1,2,4

Each Ray run starts its own local Ray instance (as `vulnsteer sweep --executor ray` does) and its workers load
their own copy of the model, so the times include Ray's start, the workers' model loads, moving the inputs through
the object store, and extracting the val/test activations the probes read (a local run records them during its
baseline passes). On a machine with one or two CPU cores a speed-up cannot show: the ratios measure overhead
(goal: Ray with 1 worker <= 1.15x the local time). The script also checks that every run chose the same settings
and reports the same test numbers.

Not a test: it prints timings; the load average is printed too, since a busy machine slows every number down.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
#: What must be equal between executors: the choices and every number on val and test.
NUMBERS = ("selection", "summary", "pooled", "cross_cwe", "probes", "lead", "conditional", "records", "val")


def _cpu() -> float:
    """CPU seconds of this process and of its reaped children (Ray's own daemons; not its workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _run(config: Any, out: Path, lm: Any) -> tuple[float, float, dict[str, Any]]:
    """Wall seconds, CPU seconds (this process, Ray's daemons and every worker) and results.json of one sweep."""
    from vulnsteer.experiment.protocol import run_protocol

    start, cpu = time.perf_counter(), _cpu()
    run_protocol(config, out, lm=lm, progress=False, command="sweep")
    seconds = time.perf_counter() - start
    results: dict[str, Any] = json.loads((out / "results.json").read_text())
    workers = sum(w.get("cpu_s", 0.0) for w in results["executor"]["workers"] if w["id"] != "local")
    return seconds, _cpu() - cpu + workers, results


def _largest_difference(a: Any, b: Any) -> float:
    """0.0 where *a* and *b* are equal; the largest relative difference of their numbers where only numbers differ;
    inf where anything else differs."""
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return math.inf
        return max((_largest_difference(a[k], b[k]) for k in a), default=0.0)
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return math.inf
        return max((_largest_difference(x, y) for x, y in zip(a, b)), default=0.0)
    if isinstance(a, float) and isinstance(b, float) and a != b:
        return abs(a - b) / max(abs(a), abs(b))
    return 0.0 if a == b else math.inf


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "examples" / "quick.toml"))
    parser.add_argument("--workers", default="1,2", help="Ray worker counts to measure (comma-separated)")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of local + every Ray run (medians)")
    parser.add_argument("--keep", default=None, help="keep the run directories under this folder")
    args = parser.parse_args(argv)

    import torch

    from vulnsteer.config.experiment import load_config
    from vulnsteer.lm.model import load_model

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-ray-"))
    root.mkdir(parents=True, exist_ok=True)
    base = load_config(args.config)
    counts = [int(x) for x in args.workers.split(",") if x.strip()]
    variants: list[tuple[str, Any]] = [("local", base.replace(run__executor="local"))]
    variants += [
        (f"ray x{n}", base.replace(run__executor="ray", run__ray_workers=n, run__ray_gpus_per_worker=0)) for n in counts
    ]
    print(
        f"config {args.config}: CWEs {list(base.data.cwes) or 'all'}, layers {base.steering.layers}, modes "
        f"{base.detection.modes}, group_size {base.run.group_size}; torch threads {torch.get_num_threads()}, "
        f"cpus {os.cpu_count()}, load average at start {os.getloadavg()[0]:.2f}"
    )
    lm = load_model(base.model)  # the driver's copy (each Ray worker loads its own)
    times: dict[str, list[float]] = {name: [] for name, _ in variants}
    cpus: dict[str, list[float]] = {name: [] for name, _ in variants}
    last: dict[str, dict[str, Any]] = {}
    try:
        for round_ in range(args.repeats):  # interleaved: a change in the machine's load hits every executor
            for name, config in variants:
                slug = name.replace(" ", "")
                config = config.replace(run__cache_dir=str(root / f"cache-{slug}-{round_}"))
                seconds, cpu, results = _run(config, root / f"run-{slug}-{round_}", lm)
                times[name].append(seconds)
                cpus[name].append(cpu)
                last[name] = results
                load = os.getloadavg()[0]
                print(f"round {round_ + 1}, {name}: {seconds:.1f}s wall, {cpu:.1f} CPU s, load {load:.2f}", flush=True)
    finally:
        lm.close()

    local, local_cpu = statistics.median(times["local"]), statistics.median(cpus["local"])
    print(
        f"\n{'executor':<10}{'wall (s)':>10}{'vs local':>10}{'CPU (s)':>10}{'vs local':>10}{'scoring (s)':>13}"
        "  workers (conditions, conditions/s)"
    )
    for name, _ in variants:
        wall, cpu = statistics.median(times[name]), statistics.median(cpus[name])
        results = last[name]
        timing = results["timings_s"]
        scoring = timing.get("score_val", 0.0) + timing.get("score_test", 0.0)
        workers = ", ".join(
            f"{w['id']}: {w['conditions']}, {w['conditions_per_s']}" for w in results["executor"]["workers"]
        )
        print(
            f"{name:<10}{wall:>10.1f}{wall / local:>9.2f}x{cpu:>10.1f}{cpu / local_cpu:>9.2f}x{scoring:>13.1f}  "
            f"{workers}"
        )
        ready = results["executor"].get("ready_s")
        print(
            f"{'':<10}phases (last round) {timing}"
            + (f"; first worker ready {ready}s after Ray's start" if ready else "")
        )
    for a, b in itertools.pairwise(counts):
        ratio = statistics.median(times[f"ray x{a}"]) / statistics.median(times[f"ray x{b}"])
        print(f"wall, ray x{a} / ray x{b}: {ratio:.2f}x (a speed-up needs more cores or GPUs than this machine has)")
    if counts and counts[0] == 1:
        ratio = statistics.median(times["ray x1"]) / local
        print(f"overhead, ray x1 / local (wall): {ratio:.2f}x ({'within' if ratio <= 1.15 else 'OVER'} the 1.15x goal)")
    print("differences from the local run (0: equal; else the largest relative difference of a number):")
    exact = True
    for name, _ in variants[1:]:
        diffs = {k: _largest_difference(last[name].get(k), last["local"].get(k)) for k in NUMBERS}
        exact = exact and not any(diffs.values())
        print(f"  {name}: " + ", ".join(f"{k} {v:.1g}" for k, v in diffs.items()))
    print(f"load average now {os.getloadavg()[0]:.2f}; run directories: {root}")
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
