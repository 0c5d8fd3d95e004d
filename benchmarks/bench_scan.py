"""``vulnsteer scan`` speed on the embedded model, measured side by side in one run (a benchmark, not a test).

    .venv/bin/python benchmarks/bench_scan.py [--threads 2] [--explain-functions 32] [--limit N]
    .venv/bin/python benchmarks/bench_scan.py --paths --detector DIR [--detector DIR2 ...] [--pairs 16] [--threads 2]
        [--dtypes fp32]

``--paths`` compares the ways to score functions side by side in one run, on the same functions (pairs of the
bundled corpus spread over its CWEs, each pair's vulnerable and fixed version): today's full-model scan (the
answer logits, float32), the detector's probe alone on the full model and stopping after the deepest layer it
reads (early exit; both read code poolings only, so each prompt ends at its last code token), each also with
the model in int8 (``model.quantize``) and in bfloat16 (``--dtypes`` picks which), and in float32 the answer and
the early-exit probe without length buckets (batches in the order given, not sorted by token count), with their
speed-up from buckets. For each: functions/s, tokens/s, the ratio to the full float32 scan (and a closing line:
the fastest path within 0.01 AUROC of the float32 probe, against the issue's goal of 3x; with several
``--detector``, each detector's probe paths side by side and a closing line for each), the rank agreement
(Spearman) of its scores with the same score in float32, and the AUROC of its scores against the corpus labels.
Then the plain forward pass's throughput as a fraction of the matrix-product peak measured in the same run
(float32 matmul, int8 dynamic Linear).

The tree scanned is the bundled corpus (``vulnsteer/corpus``: vulnerable and fixed versions of 14 functions per
CWE in C, C++, Python, JavaScript and Java), one file per version, in a temporary folder. Prints:

- the first scan of the tree by the bare model's answer (``scan --answer``: the score is P(vulnerable) from the
  answer logits; the shipped detector's faster paths are ``--paths``): model load and weights hashing, then every
  function scored; functions/s of the scoring;
- the rescan of the unchanged tree with a fresh scorer (the model identity is recalled, nothing is loaded or
  scored), in process and through the CLI (``scan --answer``, the same scorer), and the speed-up over the first
  scan (goal: >= 20x);
- the answer without and with generated explanations (``--explain``) on the same subset, cache off: functions/s.

The machine is shared and noisy: read the ratios, not the seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.ao.quantization import quantize_dynamic

from vulnsteer.config.sections import ModelSection
from vulnsteer.data.builtin import builtin_files, load_builtin
from vulnsteer.data.clean import canonical_language
from vulnsteer.data.sample import Sample
from vulnsteer.lm.activations import extract_activations, length_order
from vulnsteer.lm.model import LoadedModel, load_model
from vulnsteer.lm.prompts import build_prompt, tokenize_prompts
from vulnsteer.scan import ModelScorer, ScanOptions, ScorerSpec, scan
from vulnsteer.steering.probe import Probe

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


def _corpus_pairs(pairs: int) -> list[Sample]:
    """*pairs* pairs of the bundled corpus, spread over its CWEs (round robin), each vulnerable then fixed."""
    by_cwe: dict[str, list[Sample]] = {}
    for sample in load_builtin():
        by_cwe.setdefault(sample.cwe, []).append(sample)
    rounds = zip(*[sorted(group, key=lambda s: (s.pair_id, s.label)) for group in by_cwe.values()])
    flat = [s for row in rounds for s in row]
    by_pair: dict[str, list[Sample]] = {}
    for sample in flat:
        by_pair.setdefault(f"{sample.cwe}/{sample.pair_id}", []).append(sample)
    chosen = [group for group in by_pair.values() if len(group) == 2][:pairs]
    return [s for group in chosen for s in group]


def _auroc(labels: list[int], scores: list[float]) -> float:
    return float(roc_auc_score(labels, scores)) if len(set(labels)) == 2 else float("nan")


def _answer_path(lm: LoadedModel, samples: list[Sample], batch_size: int, buckets: bool = True) -> list[float]:
    """Today's full-model scan score: P(vulnerable) from the answer logits (the engine scan uses); *buckets*:
    batches of similar token counts (else in the order given)."""
    scorer = ModelScorer(ScorerSpec(batch_size=batch_size, length_buckets=buckets), lm=lm)
    return [s.score for s in scorer.score(samples, progress=False)]


def _probe_path(
    lm: LoadedModel, samples: list[Sample], probe: Probe, batch_size: int, early: bool, buckets: bool = True
) -> list[float]:
    """The probe's scores; *early*: the passes stop after the deepest layer it reads (else the whole model runs:
    the last layer is recorded too); *buckets*: batches of similar token counts (else in the order given)."""
    layers = sorted(set(probe.layers)) + ([] if early else [lm.num_layers - 1])
    acts = extract_activations(lm, samples, layers, sorted(set(probe.poolings)), batch_size=batch_size,
                               progress=False, buckets=buckets)  # fmt: skip
    return [float(x) for x in probe.scores_of(acts, acts.code_tokens, [s.code for s in samples]).tolist()]


def _padding_share(lm: LoadedModel, prompts: list[Any], batch_size: int, buckets: bool) -> float:
    """The share of the batches' cells (rows x longest prompt) that are padding, batched as the scorers batch."""
    order = length_order(lm, [p.text for p in prompts], buckets)
    cells = pads = 0
    for k in range(0, len(order), batch_size):
        batch = tokenize_prompts(lm.tokenizer, [prompts[i] for i in order[k : k + batch_size]])
        cells += batch.attention_mask.numel()
        pads += int((batch.attention_mask == 0).sum())
    return pads / cells


def _matmul_peak(kind: str, n: int = 2048, reps: int = 8) -> float:
    """GFLOP/s (GOP/s) of an n x n product: a float32 matmul, or an int8 dynamically quantised Linear."""
    x = torch.randn(n, n)
    if kind == "float32":
        w = torch.randn(n, n)

        def run() -> Any:
            return x @ w
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            linear = quantize_dynamic(nn.Sequential(nn.Linear(n, n, bias=False)), {nn.Linear}, dtype=torch.qint8)

        def run() -> Any:
            return linear(x)

    run()
    start = time.perf_counter()
    for _ in range(reps):
        run()
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e9


def _forward_rate(lm: LoadedModel, samples: list[Sample], batch_size: int) -> tuple[float, float]:
    """The plain forward pass (every layer, last-position logits) over *samples* in length-sorted batches:
    (tokens/s, GFLOP/s of its matrix products: 2 x the blocks' Linear weights per token, plus attention's
    4 x layers x hidden x sequence length per token)."""
    from vulnsteer.lm.forward import forward

    prompts = [build_prompt(lm.tokenizer, s.code, s.language) for s in samples]
    order = length_order(lm, [p.text for p in prompts])
    batches = [
        tokenize_prompts(lm.tokenizer, [prompts[i] for i in order[k : k + batch_size]])
        for k in range(0, len(order), batch_size)
    ]
    sizes = [(getattr(m, "in_features", 0), getattr(m, "out_features", 0)) for m in lm.layers.modules()]
    linear = sum(int(i) * int(o) for i, o in sizes)
    config = lm.model.config
    flops = 0.0
    with torch.no_grad():
        forward(lm, batches[0].input_ids, batches[0].attention_mask, None)  # warm-up
        start = time.perf_counter()
        for batch in batches:
            forward(lm, batch.input_ids, batch.attention_mask, None)
        seconds = time.perf_counter() - start
    for batch in batches:
        rows, length = batch.input_ids.shape
        flops += rows * length * (2 * linear + 4 * config.num_hidden_layers * config.hidden_size * length)
    tokens = sum(int(b.attention_mask.sum()) for b in batches)
    return tokens / seconds, flops / seconds / 1e9


def compare_paths(args: argparse.Namespace) -> int:
    """``--paths``: see the module docstring."""
    if not args.detector:
        print("--paths needs --detector DIR (a detector folder with probe.safetensors)", file=sys.stderr)
        return 2
    probes = {Path(d).name: Probe.load(Path(d) / "probe.safetensors") for d in args.detector}
    samples = _corpus_pairs(args.pairs)
    labels = [1 if s.label == "vulnerable" else 0 for s in samples]
    print(f"load: {os.getloadavg()}; torch threads {torch.get_num_threads()}; {len(samples)} functions "
          f"({args.pairs} pairs over the corpus's CWEs)")  # fmt: skip
    for folder, probe in probes.items():
        print(f"  detector {folder}: {probe.key} (layers {sorted(set(probe.layers))})")
    wanted = {"fp32", *(name.strip() for name in args.dtypes.split(","))}
    kinds: list[tuple[str, dict[str, str]]] = [
        ("fp32", {}),
        ("int8", {"quantize": "int8"}),
        ("bf16", {"dtype": "bfloat16"}),
    ]
    models = {name: load_model(device="cpu", **keys) for name, keys in kinds if name in wanted}
    lm32 = models["fp32"]
    prompts = [build_prompt(lm32.tokenizer, s.code, s.language) for s in samples]
    tokens = sum(len(lm32.tokenizer(p.text, add_special_tokens=False)["input_ids"]) for p in prompts)
    print(f"  {tokens} prompt tokens ({tokens / len(samples):.0f} per function) through {lm32.num_layers} layers")
    paths: list[tuple[str, str, str, Callable[[], list[float]]]] = []
    first = next(iter(probes))
    twins = [("answer, full model, fp32", "answer, full model, fp32, no buckets")]  # (with buckets, without)
    for name in models:
        lm = models[name]
        if name != "bf16":
            paths.append((f"answer, full model, {name}", "answer", name,
                          partial(_answer_path, lm, samples, args.batch_size)))  # fmt: skip
        for folder, probe in probes.items():  # (several detectors: each probe path is named by its detector)
            kind = "probe" if len(probes) == 1 else f"probe {folder}"
            deepest = f"layers 0..{max(probe.layers)}"
            if name != "bf16":
                paths.append((f"{kind}, full model, {name}", kind, name,
                              partial(_probe_path, lm, samples, probe, args.batch_size, False)))  # fmt: skip
            paths.append((f"{kind}, early exit ({deepest}), {name}", kind, name,
                          partial(_probe_path, lm, samples, probe, args.batch_size, True)))  # fmt: skip
            if name == "fp32" and folder == first:  # without length buckets, right after its twin
                twins.append((paths[-1][0], f"{kind}, early exit, fp32, no buckets"))
                paths.append((twins[-1][1], kind, name,
                              partial(_probe_path, lm, samples, probe, args.batch_size, True, False)))  # fmt: skip
        if name == "fp32":
            paths.insert(1, ("answer, full model, fp32, no buckets", "answer", name,
                             partial(_answer_path, lm, samples, args.batch_size, False)))  # fmt: skip
    for lm in models.values():  # warm-up (first-call allocations and kernel choices), untimed, on every model
        _probe_path(lm, samples[:4], next(iter(probes.values())), args.batch_size, True)
    _answer_path(lm32, samples[:4], args.batch_size)
    results: dict[str, tuple[float, list[float]]] = {}
    reference: dict[str, list[float]] = {}
    for label, kind, _dtype, run in paths:
        start = time.perf_counter()
        scores = run()
        results[label] = (time.perf_counter() - start, scores)
        reference.setdefault(kind, scores)  # the float32 path of each kind comes first
    base = results["answer, full model, fp32"][0]
    print("\n| path | functions/s | tokens/s | x full fp32 scan | Spearman vs fp32 | AUROC | AUROC - fp32 |")
    print("|---|---|---|---|---|---|---|")
    kept: dict[str, list[tuple[float, str]]] = {}
    for label, kind, _dtype, _ in paths:
        seconds, scores = results[label]
        rho = float(spearmanr(scores, reference[kind]).statistic)
        auroc, ref_auroc = _auroc(labels, scores), _auroc(labels, reference[kind])
        print(f"| {label} | {len(samples) / seconds:.2f} | {tokens / seconds:.0f} | {base / seconds:.2f} | "
              f"{rho:.4f} | {auroc:.3f} | {auroc - ref_auroc:+.3f} |")  # fmt: skip
        if kind.startswith("probe") and abs(auroc - ref_auroc) <= 0.01:
            kept.setdefault(kind, []).append((seconds, label))
    for candidates in kept.values():
        fastest_seconds, fastest = min(candidates)
        print(f"fastest path within 0.01 AUROC of its own fp32 full-model probe: {fastest}, "
              f"{base / fastest_seconds:.2f}x the full fp32 scan (goal: >= 3x)")  # fmt: skip
    for with_buckets, no_buckets in twins:
        without = results[no_buckets][0]
        print(f"length buckets, {with_buckets}: {without / results[with_buckets][0]:.2f}x the functions/s without")
    shares = {buckets: _padding_share(lm32, prompts, args.batch_size, buckets) for buckets in (True, False)}
    print(f"padding (pad cells of the batches of {args.batch_size}): {shares[True]:.1%} with length buckets, "
          f"{shares[False]:.1%} in the order given")  # fmt: skip
    peak32, peak8 = _matmul_peak("float32"), _matmul_peak("int8")
    print(f"\nmatmul peak (2048^3, same run): float32 {peak32:.0f} GFLOP/s, int8 dynamic Linear {peak8:.0f} GOP/s")
    for name, peak in (("fp32", peak32), ("int8", peak8)):
        if name not in models:
            continue
        rate, gflops = _forward_rate(models[name], samples, args.batch_size)
        print(f"plain forward, {name}: {rate:.0f} tokens/s, {gflops:.0f} GFLOP/s = {gflops / peak:.2f} of the "
              f"{'float32' if name == 'fp32' else 'int8'} peak")  # fmt: skip
    print(f"load after: {os.getloadavg()}")
    for lm in models.values():
        lm.close()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--explain-functions", type=int, default=32, help="subset scored with explanations")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--limit", type=int, default=None, help="scan only this many corpus functions")
    parser.add_argument("--paths", action="store_true", help="compare the scoring paths side by side (only)")
    parser.add_argument(
        "--detector",
        action="append",
        default=[],
        help="--paths: a detector whose probe is read (repeat it: several detectors side by side in one run)",
    )
    parser.add_argument("--pairs", type=int, default=16, help="--paths: corpus pairs scored (default 16)")
    parser.add_argument("--batch-size", type=int, default=8, help="--paths: functions per forward pass")
    parser.add_argument("--dtypes", default="fp32,int8,bf16", help="--paths: the models compared (fp32 always)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.paths:
        return compare_paths(args)

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
        print(f"  answer-logit scoring, no explanation: {functions / scanned:.2f} functions/s")

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
            "--answer",  # the scorer of the first scan (without it: the shipped detector, nothing cached)
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
        print(f"  answer logits, no explanation: {n_probe / probe_s:.2f} functions/s ({probe_s:.1f} s)")
        print(
            f"  with explanations (greedy, {args.max_new_tokens} new tokens): {n_explain / explain_s:.2f} "
            f"functions/s ({explain_s:.1f} s); {explain_s / probe_s:.1f}x the time without"
        )
        lm.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
