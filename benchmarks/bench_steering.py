"""Speed ratios of the core pipeline on the embedded model, measured side by side in one run.

    .venv/bin/python benchmarks/bench_steering.py [--skip-cold-load] [--repeats 3]

Prints:
- steered vs plain generation tokens/s at batch 1 and 8 (goal >= 0.98): ``model.generate`` with and without a
  ``steer()`` context (positions ``all``: every prompt and generated token is shifted), runs interleaved;
- batch 8 vs batch 1 generation throughput;
- conditional (probe-gated) vs plain generation tokens/s at batch 1 and 8 through the detection engine (goal >=
  0.95): the gate's probe reads each prompt's code-mean state at layer 10 (from the shared prompt pass), the push
  goes to the answer position and every generated token (positions ``answer``); tokens are counted from the texts,
  since a steered row may stop at a different length;
- logit mode vs generation mode, time per sample (goal >= 10x);
- cold GGUF load (conversion into an empty cache) vs cached load.
Numbers are medians over interleaved repeats: this machine is shared and noisy, so read ratios, not seconds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch

from vulnsteer.data.builtin import load_builtin
from vulnsteer.detection.engine import detect_variants, generate_verdicts, score_logits
from vulnsteer.lm.model import load_model
from vulnsteer.lm.prompts import build_prompt, tokenize_prompts
from vulnsteer.steering.gate import Gate, LinearProbe
from vulnsteer.steering.hooks import SteeringSpec, steer
from vulnsteer.steering.vectors import Provenance, SteeringVector


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _interleaved(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(_timed(fn))
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--skip-cold-load", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)

    lm = load_model(device="cpu")
    samples = load_builtin(["CWE-89", "CWE-787"])[:8]
    tok = lm.tokenizer
    layers = (10, 15, 20)
    gen = torch.Generator().manual_seed(0)
    vector = SteeringVector(
        {layer: torch.randn(lm.hidden_size, generator=gen) for layer in layers},
        Provenance(lm.model_id, lm.fingerprint, lm.hidden_size, layers, "last", "mean_diff", "bench", 1, 1, "-", "-"),
    )
    rows: list[tuple[str, str]] = []

    for batch in (1, 8):
        enc = tokenize_prompts(tok, [build_prompt(tok, s.code, s.language) for s in samples[:batch]])

        def plain(enc: Any = enc) -> None:
            lm.model.generate(
                input_ids=enc.input_ids,
                attention_mask=enc.attention_mask,
                do_sample=False,
                max_new_tokens=args.new_tokens,
                min_new_tokens=args.new_tokens,
                pad_token_id=tok.pad_token_id,
            )

        def steered(enc: Any = enc) -> None:
            with steer(lm.model, vector, 1.0, positions="all", unit="raw"):
                plain(enc)

        plain()  # warm-up
        t = _interleaved({"plain": plain, "steered": steered}, args.repeats)
        tps_plain = batch * args.new_tokens / t["plain"]
        tps_steered = batch * args.new_tokens / t["steered"]
        rows.append((f"generation batch {batch}: plain tokens/s", f"{tps_plain:.1f}"))
        rows.append((f"generation batch {batch}: steered tokens/s", f"{tps_steered:.1f}"))
        rows.append((f"steered / plain throughput, batch {batch} (goal >= 0.98)", f"{tps_steered / tps_plain:.3f}"))
        if batch == 1:
            tps_b1 = tps_plain
        else:
            rows.append(("batch 8 / batch 1 generation throughput", f"{tps_plain / tps_b1:.2f}"))

    probe = LinearProbe(10, "code_mean", torch.randn(lm.hidden_size, generator=gen), bias=0.0, threshold=0.0)
    gated = [SteeringSpec(vector, 1.0, layers=(15,), positions="answer", unit="raw", gate=Gate("sign", probe))]
    for batch in (1, 8):
        chosen = samples[:batch]
        texts: dict[str, list[str]] = {}

        def run(name: str, specs: list[SteeringSpec], chosen: Any = chosen, texts: Any = texts) -> None:
            found = detect_variants(
                lm,
                chosen,
                {name: specs},
                mode="generation",
                batch_size=len(chosen),
                max_new_tokens=args.new_tokens,
                progress=False,
            )
            texts[name] = [r.text or "" for r in found[name]]

        run("plain", [])  # warm-up
        t = _interleaved(
            {"plain": lambda: run("plain", []), "conditional": lambda: run("conditional", gated)}, args.repeats
        )
        tokens = {name: sum(len(tok(x, add_special_tokens=False).input_ids) for x in texts[name]) for name in t}
        tps = {name: tokens[name] / t[name] for name in t}
        rows.append((f"engine generation batch {batch}: plain tokens/s", f"{tps['plain']:.1f}"))
        rows.append((f"engine generation batch {batch}: conditional tokens/s", f"{tps['conditional']:.1f}"))
        rows.append(
            (
                f"conditional / plain throughput, batch {batch} (goal >= 0.95)",
                f"{tps['conditional'] / tps['plain']:.3f}",
            )
        )

    eight = samples[:8]
    t = _interleaved(
        {
            "logit": lambda: score_logits(lm, eight, batch_size=8, progress=False),
            "generation": lambda: generate_verdicts(lm, eight, batch_size=8, max_new_tokens=24, progress=False),
        },
        args.repeats,
    )
    rows.append(("logit mode s/sample", f"{t['logit'] / len(eight):.3f}"))
    rows.append(("generation mode s/sample (24 new tokens)", f"{t['generation'] / len(eight):.3f}"))
    rows.append(("generation / logit time per sample (goal >= 10)", f"{t['generation'] / t['logit']:.2f}"))
    lm.close()

    if not args.skip_cold_load:
        with tempfile.TemporaryDirectory() as tmp:
            old = os.environ.get("VULNSTEER_CACHE")
            os.environ["VULNSTEER_CACHE"] = tmp
            try:
                cold = _timed(lambda: load_model(device="cpu").close())
                cached = statistics.median(_timed(lambda: load_model(device="cpu").close()) for _ in range(3))
            finally:
                if old is None:
                    del os.environ["VULNSTEER_CACHE"]
                else:
                    os.environ["VULNSTEER_CACHE"] = old
        rows.append(("cold GGUF load + conversion s", f"{cold:.2f}"))
        rows.append(("cached safetensors load s", f"{cached:.2f}"))
        rows.append(("cold / cached load time", f"{cold / cached:.1f}"))

    width = max(len(r[0]) for r in rows)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, python {sys.version.split()[0]}")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
