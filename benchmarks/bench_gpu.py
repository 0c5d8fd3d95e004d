"""GPU check: steering, extraction, detection, memory and a sweep on random-weight models of real shapes.

No downloads: each model is built from a config of the real shape with random weights (bfloat16 on CUDA), and
uses the embedded SmolLM2 tokenizer (its vocabulary is smaller than Qwen's; the shapes of the decoder are exact):

- ``qwen2.5-1.5b``: hidden 1536, 28 layers, 12 heads / 2 KV heads, intermediate 8960 (tied embeddings);
- ``qwen2.5-14b``: hidden 5120, 48 layers, 40 heads / 8 KV heads, intermediate 13824.

Measured side by side in one run (medians over interleaved repeats), per shape:

- steered / plain generation throughput at batch 1, 8 and 64 (``steer(positions="all")``; goal >= 0.95);
- activation extraction tokens/s vs a plain forward over the same batches (goal >= 0.9);
- logit-mode detection samples/s;
- peak memory vs weight size at batch 1 (``torch.cuda.max_memory_allocated``; goal <= 1.3x);
- on the 1.5B shape, a full ``vulnsteer sweep`` of the bundled corpus (``examples/default.toml``) through the
  command line, in a subprocess (its model saved to a temporary folder): conditions/s. It runs last, with the time
  that is left (at most ``--sweep-timeout``).

    python benchmarks/bench_gpu.py                  # one GPU: both shapes, well under 8 minutes on an H200
    python benchmarks/bench_gpu.py --tiny           # CPU: tiny shapes and a tiny sweep, seconds (tests run it)
    python benchmarks/bench_gpu.py --shapes qwen2.5-1.5b --no-sweep --json numbers.json

A time budget (``--budget``, default 420 s) skips what would not fit; the sweep gets at most ``--sweep-timeout``
seconds and its conditions/s counts the conditions finished by then. Progress lines are flushed as they happen.
On a CPU, "peak memory" is the process's peak RSS, which includes Python and torch themselves.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Shape:
    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    tied: bool


SHAPES = {
    "qwen2.5-1.5b": Shape("qwen2.5-1.5b", 1536, 28, 12, 2, 8960, True),
    "qwen2.5-14b": Shape("qwen2.5-14b", 5120, 48, 40, 8, 13824, False),
    "tiny": Shape("tiny", 64, 4, 4, 2, 128, True),
}


@dataclass(frozen=True)
class Plan:
    """Sizes of one run: real ones on a GPU, tiny ones on a CPU."""

    batches: tuple[int, ...]
    new_tokens: int
    repeats: int
    n_extract: int
    n_logit: int
    batch_size: int


GPU_PLAN = Plan(batches=(1, 8, 64), new_tokens=32, repeats=3, n_extract=64, n_logit=64, batch_size=16)
TINY_PLAN = Plan(batches=(1, 2, 4), new_tokens=4, repeats=2, n_extract=8, n_logit=8, batch_size=4)

#: Shapes the sweep runs on (the issue's: the 1.5B one; tiny for the CPU test).
SWEEP_SHAPES = ("qwen2.5-1.5b", "tiny")

#: A sweep small enough for the tiny CPU model (the GPU run uses examples/default.toml unchanged).
TINY_SWEEP = """description = "bench_gpu tiny sweep"
[data]
cwes = ["CWE-89", "CWE-78"]
max_code_tokens = 64
[vectors]
methods = ["mean_diff"]
pooling = ["last"]
pooled = false
[steering]
layers = [[1], [2]]
strengths = { relative = [-1.0, 1.0] }
positions = ["last"]
[detection]
modes = ["logit"]
batch_size = 4
[conditional]
strengths = { sigma = [4.0] }
[baselines]
templates = []
[run]
group_size = 16
"""


def say(*parts: Any) -> None:
    print(*parts, flush=True)


class Clock:
    """Wall time left in the run's budget."""

    def __init__(self, budget: float) -> None:
        self.start = time.perf_counter()
        self.budget = budget

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.budget - self.elapsed()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _interleaved(fns: dict[str, Callable[[], Any]], repeats: int, device: torch.device) -> dict[str, float]:
    """Median seconds per function, runs interleaved (a/b/a/b...) so drifts hit both; one warm-up each."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(_timed(fn, device))
    return {name: statistics.median(values) for name, values in times.items()}


def build_model(shape: Shape, tokenizer: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """A randomly initialised Qwen2 causal LM of *shape*, built directly on *device* in *dtype*."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from vulnsteer.lm.model import LoadedModel, model_fingerprint

    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        max_position_embeddings=32768,
        rope_theta=1_000_000.0,
        tie_word_embeddings=shape.tied,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Qwen2ForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    model.eval()
    model.requires_grad_(False)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        model_id=f"random {shape.name}",
        fingerprint=model_fingerprint(model),
        source="random",
        extra={"dtype": str(dtype).replace("torch.", ""), "device": str(device)},
    )


def _random_vector(lm: Any, layers: list[int]) -> Any:
    from vulnsteer.steering.vectors import Provenance, SteeringVector

    gen = torch.Generator().manual_seed(1)
    dirs = {layer: torch.randn(lm.hidden_size, generator=gen) for layer in layers}
    prov = Provenance(
        lm.model_id, lm.fingerprint, lm.hidden_size, tuple(layers), "last", "random", "any", 0, 0, "-", "-"
    )
    return SteeringVector(dirs, prov)


def _generate(lm: Any, batch: Any, new_tokens: int) -> None:
    """Greedy generation of exactly *new_tokens* tokens (no early stop: every run does the same work)."""
    with torch.no_grad():
        lm.model.generate(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=lm.tokenizer.pad_token_id,
        )


def bench_generation(lm: Any, prompts: list[Any], plan: Plan, vector: Any) -> list[dict[str, Any]]:
    """Steered vs plain ``generate`` throughput at each batch size."""
    from vulnsteer.lm.prompts import tokenize_prompts
    from vulnsteer.steering.hooks import steer

    rows = []
    for batch_size in plan.batches:
        batch = tokenize_prompts(lm.tokenizer, [prompts[i % len(prompts)] for i in range(batch_size)]).to(lm.device)

        def plain(batch: Any = batch) -> None:
            _generate(lm, batch, plan.new_tokens)

        def steered(plain: Callable[[], None] = plain) -> None:
            with steer(lm.model, vector, 0.5, positions="all", unit="raw"):
                plain()

        times = _interleaved({"plain": plain, "steered": steered}, plan.repeats, lm.device)
        tokens = batch_size * plan.new_tokens
        row = {
            "batch": batch_size,
            "prompt_tokens": int(batch.input_ids.shape[1]),
            "plain_tok_s": tokens / times["plain"],
            "steered_tok_s": tokens / times["steered"],
            "ratio": times["plain"] / times["steered"],
        }
        say(
            f"  generation batch {batch_size:>3}: plain {row['plain_tok_s']:9.1f} tok/s, steered "
            f"{row['steered_tok_s']:9.1f} tok/s, steered/plain {row['ratio']:.3f} (goal >= 0.95)"
        )
        rows.append(row)
    return rows


def bench_extraction(lm: Any, samples: list[Any], plan: Plan) -> dict[str, Any]:
    """Activation extraction (the last layer: the whole network runs) vs a plain forward, same batches."""
    from vulnsteer.lm.activations import extract_activations, length_order
    from vulnsteer.lm.model import position_ids_for
    from vulnsteer.lm.prompts import build_prompt, tokenize_prompts

    prompts = [build_prompt(lm.tokenizer, s.code, s.language) for s in samples]
    order = length_order(lm, [p.text for p in prompts])
    batches = [order[i : i + plan.batch_size] for i in range(0, len(order), plan.batch_size)]
    tokens = sum(len(lm.tokenizer(p.text, add_special_tokens=False)["input_ids"]) for p in prompts)
    last = lm.num_layers - 1

    def plain() -> None:
        with torch.no_grad():
            for rows in batches:
                batch = tokenize_prompts(lm.tokenizer, [prompts[i] for i in rows]).to(lm.device)
                lm.model(
                    input_ids=batch.input_ids,
                    attention_mask=batch.attention_mask,
                    position_ids=position_ids_for(batch.attention_mask),
                    use_cache=False,
                    logits_to_keep=1,
                )

    def extract() -> None:
        extract_activations(lm, samples, [last], batch_size=plan.batch_size, progress=False)

    times = _interleaved({"plain": plain, "extract": extract}, plan.repeats, lm.device)
    row = {
        "samples": len(samples),
        "tokens": tokens,
        "plain_tok_s": tokens / times["plain"],
        "extract_tok_s": tokens / times["extract"],
        "ratio": times["plain"] / times["extract"],
    }
    say(
        f"  extraction ({len(samples)} samples, layer {last}, positions last+code_mean): {row['extract_tok_s']:9.0f} "
        f"tok/s vs plain forward {row['plain_tok_s']:9.0f} tok/s, ratio {row['ratio']:.3f} (goal >= 0.9)"
    )
    return row


def bench_logit(lm: Any, samples: list[Any], plan: Plan) -> dict[str, Any]:
    from vulnsteer.detection.engine import score_logits

    def run() -> None:
        score_logits(lm, samples, batch_size=plan.batch_size, progress=False)

    seconds = _interleaved({"logit": run}, plan.repeats, lm.device)["logit"]
    row = {"samples": len(samples), "samples_s": len(samples) / seconds}
    say(f"  logit-mode detection: {row['samples_s']:.1f} samples/s ({len(samples)} samples, batch {plan.batch_size})")
    return row


def bench_memory(lm: Any, prompt: Any, plan: Plan, vector: Any) -> dict[str, Any]:
    """Peak memory of a steered batch-1 generation vs the weights' size."""
    from vulnsteer.lm.memory import peak_memory, reset_peak_memory, weights_bytes
    from vulnsteer.lm.prompts import tokenize_prompts
    from vulnsteer.steering.hooks import steer

    batch = tokenize_prompts(lm.tokenizer, [prompt]).to(lm.device)
    reset_peak_memory(lm.device)
    with steer(lm.model, vector, 0.5, positions="all", unit="raw"):
        _generate(lm, batch, plan.new_tokens)
    _sync(lm.device)
    peak = peak_memory(lm.device)
    weights = weights_bytes(lm.model)
    ratio = peak["bytes"] / weights if peak["bytes"] else float("nan")
    say(
        f"  peak memory at batch 1 ({peak['kind']}): {peak['bytes'] / 1024**3:.2f} GiB vs weights "
        f"{weights / 1024**3:.2f} GiB, ratio {ratio:.3f} (goal <= 1.3 on GPU)"
    )
    return {"peak": peak, "weights_bytes": weights, "ratio": ratio}


def _save(lm: Any, folder: Path) -> None:
    lm.model.save_pretrained(folder, safe_serialization=True)
    lm.tokenizer.save_pretrained(folder)


def bench_sweep(model_dir: Path, config: Path, device: str, timeout: float, work: Path) -> dict[str, Any]:
    """``vulnsteer sweep CONFIG --model DIR`` in a subprocess; conditions/s from its ``records.jsonl``."""
    out = work / "sweep"
    cmd = [
        sys.executable,
        "-m",
        "vulnsteer",
        "--no-progress",
        "sweep",
        str(config),
        "--model",
        str(model_dir),
        "--device",
        device,
        "--out",
        str(out),
        "--cache-dir",
        str(work / "activation-cache"),
    ]
    say(f"  sweep: {' '.join(cmd[2:])} (timeout {timeout:.0f} s)")
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        status = "ok" if proc.returncode == 0 else f"exit {proc.returncode}: {proc.stderr.strip()[-400:]}"
    except subprocess.TimeoutExpired:
        status = f"timed out after {timeout:.0f} s (conditions/s counts the finished ones)"
    seconds = time.perf_counter() - start
    records = out / "records.jsonl"
    conditions = sum(1 for line in records.read_text().splitlines() if line.strip()) if records.exists() else 0
    timings = {}
    results = out / "results.json"
    if results.exists():
        timings = json.loads(results.read_text()).get("timings_s", {})
    row = {"status": status, "seconds": seconds, "conditions": conditions, "conditions_s": conditions / seconds}
    say(
        f"  sweep: {conditions} conditions in {seconds:.1f} s = {row['conditions_s']:.2f} conditions/s "
        f"(including the subprocess's start and model load); {status}"
    )
    if timings:
        say("  sweep phases (s): " + ", ".join(f"{k} {v}" for k, v in timings.items()))
    row["timings_s"] = timings
    return row


def _guarded(section: str, strict: bool, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, one measurement; unless *strict*, a failure is printed and the run goes on (a GPU run is one
    shot: the other numbers must survive)."""
    try:
        return fn(*args)
    except Exception as exc:
        if strict:
            raise
        say(f"  {section}: FAILED: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        return {"error": f"{type(exc).__name__}: {exc}"}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from vulnsteer.data.builtin import load_builtin
    from vulnsteer.lm.memory import weights_bytes
    from vulnsteer.lm.prompts import build_prompt
    from vulnsteer.lm.source import load_tokenizer

    clock = Clock(args.budget)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}[
        args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    ]
    plan = TINY_PLAN if args.tiny else GPU_PLAN
    shapes = ["tiny"] if args.tiny else [s.strip() for s in args.shapes.split(",") if s.strip()]
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    say(f"bench_gpu: device {device} ({gpu}), {dtype}, shapes {shapes}, budget {args.budget:.0f} s")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    tokenizer = load_tokenizer()
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    samples = load_builtin()
    prompts = [build_prompt(tokenizer, s.code, s.language) for s in samples]
    results: dict[str, Any] = {"device": str(device), "gpu": gpu, "dtype": str(dtype), "shapes": {}}
    for name in shapes:
        shape = SHAPES[name]
        if clock.left() < args.min_shape_s:
            say(f"{name}: skipped, {clock.left():.0f} s left of the budget")
            continue
        say(f"{name}: building random weights ({clock.elapsed():.0f} s elapsed)")
        lm = build_model(shape, tokenizer, device, dtype)
        row: dict[str, Any] = {"weights_gib": weights_bytes(lm.model) / 1024**3}
        say(f"  {row['weights_gib']:.2f} GiB of weights, {lm.num_layers} layers, hidden {lm.hidden_size}")
        vector = _random_vector(lm, [lm.num_layers // 2])
        strict = args.strict
        row["memory"] = _guarded("memory", strict, bench_memory, lm, prompts[0], plan, vector)
        row["generation"] = _guarded("generation", strict, bench_generation, lm, prompts, plan, vector)
        row["extraction"] = _guarded("extraction", strict, bench_extraction, lm, samples[: plan.n_extract], plan)
        row["logit"] = _guarded("logit", strict, bench_logit, lm, samples[: plan.n_logit], plan)
        row["batch_sizes"] = dict(lm.extra.get("batch_sizes", {}))
        sweep_here = name in SWEEP_SHAPES and not args.no_sweep
        with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
            work = Path(tmp)
            if sweep_here:
                _save(lm, work / "model")
            lm.close()
            del lm
            if device.type == "cuda":
                torch.cuda.empty_cache()
            if sweep_here:
                config = ROOT / "examples" / "default.toml"
                if args.tiny:
                    config = work / "tiny.toml"
                    config.write_text(TINY_SWEEP, encoding="utf-8")
                timeout = max(30.0, min(args.sweep_timeout, clock.left() - args.reserve_s))
                row["sweep"] = _guarded(
                    "sweep", strict, bench_sweep, work / "model", config, str(device), timeout, work
                )
        results["shapes"][name] = row
        say(f"{name}: done ({clock.elapsed():.0f} s elapsed)")
    results["elapsed_s"] = clock.elapsed()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny shapes and sizes (CPU; what the test runs)")
    parser.add_argument(
        "--shapes", default="qwen2.5-14b,qwen2.5-1.5b", help=f"comma-separated, in this order: {', '.join(SHAPES)}"
    )
    parser.add_argument("--device", default=None, help="default: cuda if available")
    parser.add_argument(
        "--dtype", default=None, choices=["bfloat16", "float32", "float16"], help="default: bf16 on CUDA"
    )
    parser.add_argument("--no-sweep", action="store_true", help="skip the sweep")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds for the whole run (default 420)")
    parser.add_argument("--sweep-timeout", type=float, default=210.0, help="seconds at most for the sweep")
    parser.add_argument("--reserve-s", type=float, default=15.0, help="seconds of the budget the sweep leaves")
    parser.add_argument("--min-shape-s", type=float, default=45.0, help="skip a shape with less time left than this")
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    parser.add_argument("--strict", action="store_true", help="stop at the first failure (default: report, go on)")
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    results = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
    say(f"bench_gpu: finished in {results['elapsed_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
