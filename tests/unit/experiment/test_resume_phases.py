"""A run killed (SIGKILL) in each phase -- activation extraction, scoring, the report -- resumes with nothing lost
and nothing duplicated, and ends with exactly the numbers of an uninterrupted run.

Each kill is placed deterministically: the child process wraps one library function so that it kills itself at
that point (no hook in the library)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import write_toy_jsonl
from runs import run_numbers as numbers_of
from runs import write_config
from vulnsteer.experiment.upgrade import load_results

#: Where to die: (module, attribute, how many calls to let through first).
KILL_POINTS = {
    "activations": ("vulnsteer.lm.activation_cache", "ActivationCache._write", 1),
    "scoring": ("vulnsteer.experiment.engine", "ResultStore.add", 5),
    "report": ("vulnsteer.report", "report_plots", 0),
}

CHILD = """
import importlib, os, signal, sys
module_name, attr, allowed = sys.argv[1], sys.argv[2], int(sys.argv[3])
module = importlib.import_module(module_name)
owner, name = (getattr(module, attr.split(".")[0]), attr.split(".")[1]) if "." in attr else (module, attr)
real = getattr(owner, name)
calls = [0]
def dying(*args, **kwargs):
    if calls[0] >= allowed:
        os.kill(os.getpid(), signal.SIGKILL)
    calls[0] += 1
    return real(*args, **kwargs)
setattr(owner, name, dying)
if module_name == "vulnsteer.report":  # write_report looks report_plots up in its own module namespace
    import vulnsteer.report as report
    report.report_plots = dying
from vulnsteer.cli import main
sys.exit(main(sys.argv[4:]))
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: Any) -> dict[str, Path]:
    from conftest import make_tiny

    root = tmp_path_factory.mktemp("phases")
    lm = make_tiny(tiny_tokenizer, "llama", layers=3)
    lm.model.save_pretrained(root / "model")
    tiny_tokenizer.save_pretrained(root / "model")
    data = write_toy_jsonl(root / "toy.jsonl", n_pairs=5)
    config = write_config(
        root / "c.toml", data, cache_dir=root / "unused", group_size=2, strengths="{ relative = [0.5] }", pooled="false"
    )
    return {"root": root, "model": root / "model", "config": config}


def _argv(setup: dict[str, Path], out: Path, cache: Path) -> list[str]:
    return [
        "--no-progress",
        "sweep",
        str(setup["config"]),
        "--model",
        str(setup["model"]),
        "--out",
        str(out),
        "--cache-dir",
        str(cache),
    ]


def _env(setup: dict[str, Path]) -> dict[str, str]:
    return {
        **os.environ,
        "VULNSTEER_CACHE": str(setup["root"] / "vcache"),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
    }


def run_numbers(out: Path) -> dict[str, Any]:
    """Every number of the run's results.json but its records (the val entries, choices, rows, lead, probes and the
    saved detector)."""
    return numbers_of(load_results(out / "results.json"))


def chunk_entries(out: Path) -> dict[str, Any]:
    lines = (out / "records.jsonl").read_text().splitlines()
    keys = [json.loads(line)["condition"]["key"] for line in lines]
    assert len(keys) == len(set(keys)), "a finished condition was scored twice"
    return {json.loads(line)["condition"]["key"]: json.loads(line)["records"] for line in lines}


@pytest.fixture(scope="module")
def uninterrupted(setup: dict[str, Path]) -> Path:
    out = setup["root"] / "plain"
    done = subprocess.run(
        [sys.executable, "-m", "vulnsteer", *_argv(setup, out, setup["root"] / "cache-plain")],
        env=_env(setup),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    return out


@pytest.mark.slow
@pytest.mark.parametrize("phase", list(KILL_POINTS))
def test_a_kill_in_each_phase_resumes_exactly(setup: dict[str, Path], uninterrupted: Path, phase: str) -> None:
    out, cache = setup["root"] / f"killed-{phase}", setup["root"] / f"cache-{phase}"
    module, attr, allowed = KILL_POINTS[phase]
    killed = subprocess.run(
        [sys.executable, "-c", CHILD, module, attr, str(allowed), *_argv(setup, out, cache)],
        env=_env(setup),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    before = (out / "records.jsonl").read_text().splitlines() if (out / "records.jsonl").exists() else []
    if phase == "activations":
        assert not before and len(list(cache.rglob("*.safetensors"))) == 1  # one entry written, then killed
    elif phase == "scoring":
        assert len(before) == allowed and not (out / "results.json").exists()
    else:
        assert not (out / "report.md").exists() and (out / "results.json").exists()
    resumed = subprocess.run(
        [sys.executable, "-m", "vulnsteer", *_argv(setup, out, cache)],
        env=_env(setup),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr
    after = (out / "records.jsonl").read_text().splitlines()
    assert after[: len(before)] == before, "finished work was rewritten"
    assert chunk_entries(out) == chunk_entries(uninterrupted)
    assert run_numbers(out) == run_numbers(uninterrupted)
    assert (out / "report.md").read_text().startswith("# vulnsteer report")
    assert not [p for p in out.rglob(".*.tmp")], "a half-written temporary file was left behind"
