"""Helpers that run the protocol on toy data, shared by the test modules: a sweep's config file, a finished run's
results and numbers, a sweep as its own process, the executor's toy grid and a transfer config of four toy datasets."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from cli_runner import cli_env
from conftest import write_toy_jsonl
from vulnsteer.config.experiment import ExperimentConfig, parse_config
from vulnsteer.experiment.compare import numbers
from vulnsteer.experiment.fit import fit_cwe_vectors
from vulnsteer.experiment.grid import Condition, candidate_settings, val_conditions
from vulnsteer.experiment.prepare import prepare_data
from vulnsteer.experiment.protocol import run_protocol
from vulnsteer.experiment.results import Results
from vulnsteer.experiment.tables import HeldOutTable
from vulnsteer.experiment.upgrade import load_results
from vulnsteer.lm.activations import extract_activations
from vulnsteer.lm.model import LoadedModel


def write_config(
    path: Path,
    data: Path,
    *,
    cache_dir: Path,
    modes: str = '["logit"]',
    group_size: int = 4,
    strengths: str = "{ relative = [0.5, 2.0] }",
    pooled: str = "true",
    extra: str = "",
) -> Path:
    path.write_text(
        f"""
[data]
path = "{data}"
format = "jsonl"
max_code_tokens = 64

[vectors]
methods = ["mean_diff"]
pooling = ["last"]
pooled = {pooled}

[steering]
layers = [[1], [2], [1, 2]]
strengths = {strengths}

[detection]
modes = {modes}
max_new_tokens = 3

[run]
group_size = {group_size}
cache_dir = "{cache_dir}"
{extra}
""",
        encoding="utf-8",
    )
    return path


def run(config: ExperimentConfig, out: Path, lm: LoadedModel, command: str = "sweep") -> Results:
    run_protocol(config, out, lm=lm, progress=False, command=command)
    return load_results(out / "results.json")


def held_out(results: Results, mode: str = "logit", family: str = "constant") -> HeldOutTable:
    """A family's per-CWE rows in one mode (constant steering's by default)."""
    return results.families[family].held_out[mode]


def run_numbers(results: Results) -> dict[str, Any]:
    """Every number of *results* but the held-out records (the val entries, choices, rows, lead, probes, vectors)."""
    return {k: v for k, v in numbers(results).items() if not k.startswith("records/")}


def sweep_process(args: list[str], tmp_path: Path) -> subprocess.Popen[bytes]:
    """``vulnsteer sweep ARGS`` as its own process in *tmp_path*, in the environment of every test command
    (:func:`cli_runner.cli_env`), its output in one pipe."""
    # SIGINT back to its default: a test runner started in the background by a non-interactive shell ignores
    # SIGINT, its children inherit that, and Python then never raises KeyboardInterrupt
    return subprocess.Popen(
        [sys.executable, "-m", "vulnsteer", "--no-progress", "sweep", *args],
        env=cli_env(tmp_path / "vcache"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def wait_for_lines(proc: subprocess.Popen[bytes], path: Path, n: int, timeout: float = 600.0) -> None:
    """Wait until *path* holds *n* lines (a run's finished chunks). The deadline only guards against a hang: a
    loaded machine (CI beside other jobs) can take minutes to start a Ray driver and score the first chunk."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and path.read_bytes().count(b"\n") >= n:
            return
        if proc.poll() is not None:
            out = proc.stdout.read().decode() if proc.stdout else ""
            pytest.fail(f"sweep ended (rc {proc.returncode}) before {n} chunk(s) were on disk:\n{out}")
        time.sleep(0.005)
    proc.kill()
    pytest.fail("timed out waiting for the first chunk")


def chunk_entries(path: Path) -> dict[str, Any]:
    return {json.loads(line)["condition"]["key"]: json.loads(line)["records"] for line in path.read_text().splitlines()}


def toy_grid(root: Path, lm: LoadedModel, layer_sets: Sequence[tuple[int, ...]] = ((1,), (2,))) -> dict[str, Any]:
    """The toy data's validation grid in logit mode (baseline, steered and control per setting), its vectors."""
    config = ExperimentConfig().replace(
        data__path=str(write_toy_jsonl(root / "toy.jsonl", n_pairs=4)),
        data__format="jsonl",
        data__max_code_tokens=64,
        steering__strengths={"relative": [0.5, 2.0]},
    )
    data = prepare_data(config.data, lm.tokenizer, progress=False, require=("train", "val"))
    acts = extract_activations(lm, data.samples("train"), [1, 2], ["last"], progress=False)
    vectors = fit_cwe_vectors(lm, acts, data.by_cwe("train"), [1, 2])
    conds = [
        Condition("baseline", "logit", "val"),
        *val_conditions(config, candidate_settings(config, layer_sets), "logit"),
    ]
    return {"data": data, "vectors": vectors, "conds": conds, "samples": data.by_cwe}


NAMES = ("alpha", "beta", "gamma", "delta")


def transfer_config(tmp: Path, conditional: dict[str, Any] | None = None, **transfer: Any) -> ExperimentConfig:
    paths = []
    for k, name in enumerate(NAMES):
        path = tmp / f"{name}.jsonl"
        if not path.exists():
            write_toy_jsonl(path, cwes=("CWE-89", "CWE-78"), n_pairs=5 + k, prefix=name)
        paths.append(str(path))
    doc = {
        "data": {"paths": paths, "formats": ["jsonl"] * len(paths), "max_code_tokens": 64},
        "conditional": {
            "gates": ["sign", "calibrated"],
            "strengths": {"sigma": [2.0]},
            "min_adapt": 5,
            **(conditional or {}),
        },
        "transfer": {
            "layers": [[1], [0, 1]],
            "poolings": [["code_mean"], ["code_mean", "code_max"]],
            "C": [0.1],
            "combine": ["concat"],
            "length": ["none"],
            "peers": [],
            "n_boot": 50,
            **transfer,
        },
        "run": {"cache_dir": str(tmp / "cache")},
    }
    return parse_config(doc, "test.toml")
