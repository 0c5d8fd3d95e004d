"""Does conditional (probe-gated) steering add model work to generation? cProfile of the detection engine's
generation on the embedded model, plain vs gated, side by side in one run; prints the calls of the model's heavy
operations (linear, attention, KV-cache concatenation) and the total Python call count of each.

    .venv/bin/python benchmarks/profile_conditional.py [--batch 8] [--new-tokens 8]

Call counts do not depend on a busy machine (seconds do): equal counts mean the gate adds no pass and no layer
call, whatever the throughput ratio in bench_steering.py says on a noisy run.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats

import torch

from vulnsteer.data.builtin import load_builtin
from vulnsteer.detection.engine import detect_variants
from vulnsteer.lm.model import load_model
from vulnsteer.steering.gate import Gate, LinearProbe
from vulnsteer.steering.hooks import SteeringSpec
from vulnsteer.steering.vectors import Provenance, SteeringVector

HEAVY = ("linear", "scaled_dot_product_attention", "cat")


def _calls(stats: pstats.Stats, name: str) -> int:
    """Calls of every function whose name ends in *name* (``<built-in method torch._C._nn.linear>``: linear)."""
    table = stats.stats  # type: ignore[attr-defined]
    return sum(int(v[1]) for k, v in table.items() if k[2].rstrip(">").endswith(f".{name}") or k[2] == name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)
    lm = load_model(device="cpu")
    samples = load_builtin(["CWE-89", "CWE-787"])[: args.batch]
    gen = torch.Generator().manual_seed(0)
    layers = (10, 15)
    prov = Provenance(lm.model_id, lm.fingerprint, lm.hidden_size, layers, "last", "mean_diff", "bench", 1, 1, "-", "-")
    vector = SteeringVector({layer: torch.randn(lm.hidden_size, generator=gen) for layer in layers}, prov)
    probe = LinearProbe(10, "code_mean", torch.randn(lm.hidden_size, generator=gen), bias=0.0, threshold=0.0)
    gated = [SteeringSpec(vector, 1.0, layers=(15,), positions="answer", unit="raw", gate=Gate("sign", probe))]

    def run(specs: list[SteeringSpec]) -> None:
        detect_variants(
            lm,
            samples,
            {"x": specs},
            mode="generation",
            batch_size=len(samples),
            max_new_tokens=args.new_tokens,
            progress=False,
        )

    run([])  # warm-up
    print(f"{'variant':<8} {'python calls':>12} " + " ".join(f"{name:>30}" for name in HEAVY) + f" {'seconds':>8}")
    for name, specs in (("plain", []), ("gated", gated)):
        profile = cProfile.Profile()
        profile.enable()
        run(specs)
        profile.disable()
        stats = pstats.Stats(profile)
        calls = {heavy: _calls(stats, heavy) for heavy in HEAVY}
        total = stats.total_calls  # type: ignore[attr-defined]
        seconds = stats.total_tt  # type: ignore[attr-defined]
        print(f"{name:<8} {total:>12} " + " ".join(f"{calls[h]:>30}" for h in HEAVY) + f" {seconds:>8.1f}")


if __name__ == "__main__":
    main()
