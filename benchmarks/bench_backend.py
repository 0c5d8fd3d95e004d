"""The nnsight backend's overhead over the hook backend, measured side by side on the embedded model (CPU).

    .venv/bin/python benchmarks/bench_backend.py [--repeats 3] [--samples 8] [--new-tokens 16]

Two copies of the embedded SmolLM2-135M are loaded, one per backend, and each task runs on both, interleaved:

- steered generation: generation-mode detection of the samples with two variants per sample in one batch (plain
  and steered at every position, per-row steering), greedy decoding on the KV cache;
- steered logit mode: logit-mode detection with three variants (plain, +/- at the last prompt token, on the
  shared prompt prefix);
- extraction: hidden states of three layers, both poolings;
- one steered cached generation step for one row, 20 in a row: the fixed cost of a pass, where nnsight's own work
  (one trace per pass, every module's output handed through its interleaver) shows most.

Prints the seconds per task on each backend (medians) and the ratio nnsight / hooks (1.00 = no overhead), and
checks that both gave the same results. Requires nnsight (``pip install 'vulnsteer[nnsight]'``). The machine is
shared and noisy: read the ratios, not the seconds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from vulnsteer.config.vocabulary import POOLINGS
from vulnsteer.data.builtin import load_builtin
from vulnsteer.detection.engine import detect_variants_modes
from vulnsteer.lm.activations import extract_activations
from vulnsteer.lm.forward import forward
from vulnsteer.lm.model import LoadedModel, load_model
from vulnsteer.lm.prompts import build_prompt, tokenize_prompts
from vulnsteer.steering.hooks import SteeringSpec, steer_rows
from vulnsteer.steering.vectors import Provenance, SteeringVector


def _median_times(fns: dict[str, Callable[[], Any]], repeats: int) -> tuple[dict[str, float], dict[str, Any]]:
    """Median seconds per function over *repeats* interleaved rounds, and each function's last result."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    results: dict[str, Any] = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}, results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=16)
    args = parser.parse_args()
    torch.manual_seed(0)

    models: dict[str, LoadedModel] = {
        "hooks": load_model(device="cpu"),
        "nnsight": load_model(device="cpu", backend="nnsight"),
    }
    hooks = models["hooks"]
    samples = load_builtin(["CWE-89", "CWE-787"])[: args.samples]
    layers = (10, 15, 20)
    gen = torch.Generator().manual_seed(0)
    vector = SteeringVector(
        {layer: torch.randn(hooks.hidden_size, generator=gen) for layer in layers},
        Provenance(
            hooks.model_id, hooks.fingerprint, hooks.hidden_size, layers, "last", "mean_diff", "bench", 1, 1, "-", "-"
        ),
    )
    steered_all = {"plain": [], "steered": [SteeringSpec(vector, 0.5, positions="all", unit="raw")]}
    steered_last = {
        "plain": [],
        "up": [SteeringSpec(vector, 1.0, positions="last", unit="raw")],
        "down": [SteeringSpec(vector, -1.0, positions="last", unit="raw")],
    }

    def generation(lm: LoadedModel) -> Any:
        out = detect_variants_modes(
            lm,
            samples,
            steered_all,
            modes=("generation",),
            batch_size=8,
            max_new_tokens=args.new_tokens,
            progress=False,
        )["generation"]
        return {name: [r.text for r in recs] for name, recs in out.items()}

    def logit(lm: LoadedModel) -> Any:
        out = detect_variants_modes(lm, samples, steered_last, modes=("logit",), batch_size=8, progress=False)["logit"]
        return torch.tensor([[r.margin for r in recs] for recs in out.values()])

    def steps(lm: LoadedModel) -> Any:
        batch = tokenize_prompts(lm.tokenizer, [build_prompt(lm.tokenizer, samples[0].code, samples[0].language)])
        logits, cache = forward(lm, batch.input_ids, batch.attention_mask, None)
        mask, tokens = batch.attention_mask, []
        with steer_rows(lm, [steered_all["steered"]]):
            for _ in range(20):
                tokens.append(logits.argmax(-1))
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                logits, cache = forward(lm, tokens[-1][:, None], mask, cache)
        return torch.stack(tokens).float()

    def extraction(lm: LoadedModel) -> Any:
        acts = extract_activations(lm, samples, list(layers), POOLINGS, batch_size=8, progress=False)
        return torch.stack([acts.get(p) for p in POOLINGS])

    tasks: dict[str, Callable[[LoadedModel], Any]] = {
        f"steered generation ({args.samples} samples x 2 variants, {args.new_tokens} tokens)": generation,
        f"steered logit mode ({args.samples} samples x 3 variants)": logit,
        f"extraction ({args.samples} samples, 3 layers, 2 poolings)": extraction,
        "20 steered cached generation steps, 1 row": steps,
    }
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, repeats {args.repeats} (medians)")
    print(f"{'task':<62} {'hooks s':>8} {'nnsight s':>10} {'ratio':>6}")
    agree = True
    for label, task in tasks.items():
        fns = {name: (lambda lm=lm, task=task: task(lm)) for name, lm in models.items()}
        times, results = _median_times(fns, args.repeats)
        ratio = times["nnsight"] / times["hooks"]
        print(f"{label:<62} {times['hooks']:>8.2f} {times['nnsight']:>10.2f} {ratio:>6.2f}")
        if task is steps:
            print(f"{'  nnsight overhead per pass (ms)':<62} {(times['nnsight'] - times['hooks']) / 21 * 1000:>19.1f}")
        a, b = results["hooks"], results["nnsight"]
        same = torch.allclose(a, b, atol=1e-4) if isinstance(a, torch.Tensor) else a == b
        agree = agree and bool(same)
        if not same:
            print(f"  results differ between the backends on: {label}")
    print("results equal on both backends" if agree else "RESULTS DIFFER")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
