"""The executor seam without Ray: chunks arriving in any order give the same records, the local executor's
statistics, the ``[run]`` executor keys, the error without Ray installed, vectors that pickle (they travel to
workers), and a sink that keeps the experiment's own prompt's states when prompting baselines run after it."""

from __future__ import annotations

import importlib.util
import pickle
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from runs import toy_grid
from vulnsteer.config.design import ProbeDesign
from vulnsteer.config.experiment import ConfigError, ExperimentConfig, parse_config
from vulnsteer.config.sections import RunSection
from vulnsteer.experiment.engine import (
    ChunkDone,
    ChunkInputs,
    LocalExecutor,
    ResultStore,
    ScoringOptions,
    run_conditions,
)
from vulnsteer.experiment.grid import Condition
from vulnsteer.experiment.ray_executor import RayUnavailableError, check_executor
from vulnsteer.lm.activations import ActivationSink, extract_activations
from vulnsteer.lm.model import LoadedModel
from vulnsteer.lm.prompts import DEFAULT_TEMPLATE
from vulnsteer.steering.probe import Probe
from vulnsteer.steering.vectors import SteeringVector


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory, tiny_lm: LoadedModel) -> dict[str, Any]:
    return toy_grid(tmp_path_factory.mktemp("toy"), tiny_lm)


class Backwards:
    """Yields the local executor's chunks last first, as workers finishing out of order would."""

    def __init__(self, lm: LoadedModel) -> None:
        self.local = LocalExecutor(lm)

    def map_chunks(self, chunks: Sequence[Sequence[Condition]], inputs: ChunkInputs) -> Iterator[ChunkDone]:
        yield from reversed(list(self.local.map_chunks(chunks, inputs)))

    def stats(self) -> dict[str, Any]:
        return self.local.stats()


def test_records_do_not_depend_on_the_order_chunks_arrive(
    tmp_path: Path, tiny_lm: LoadedModel, toy: dict[str, Any]
) -> None:
    options = ScoringOptions(group_size=3, progress=False)
    args = (toy["conds"],)
    local = LocalExecutor(tiny_lm)
    forward = run_conditions(
        tiny_lm, *args, ResultStore(tmp_path / "a.jsonl"), toy["data"].by_cwe, toy["vectors"], options, executor=local
    )
    backwards = run_conditions(
        tiny_lm, *args, ResultStore(tmp_path / "b.jsonl"), toy["data"].by_cwe, toy["vectors"], options,
        executor=Backwards(tiny_lm),
    )  # fmt: skip
    assert backwards == forward
    lines_a = (tmp_path / "a.jsonl").read_text().splitlines()
    lines_b = (tmp_path / "b.jsonl").read_text().splitlines()
    assert lines_a != lines_b and len(lines_a) == len(lines_b) == len(toy["conds"])  # another order, same keys
    assert ResultStore(tmp_path / "b.jsonl").entries() and all(
        ResultStore(tmp_path / "b.jsonl").get(c.key) == forward[c.key] for c in toy["conds"]
    )
    stats = local.stats()
    worker = stats["workers"][0]
    assert stats["kind"] == "local" and worker["conditions"] == len(toy["conds"])
    assert worker["chunks"] == -(-len(toy["conds"]) // 3) and worker["conditions_per_s"] > 0


def test_the_sink_keeps_the_experiments_own_prompt(tmp_path: Path, tiny_lm: LoadedModel, toy: dict[str, Any]) -> None:
    """A prompting baseline scored after the baseline must not overwrite the sink: the probes read the same states
    whether the baseline passes recorded them (a fresh run) or they are extracted (a resumed or Ray run)."""
    from vulnsteer.lm.prompts import TEMPLATES

    val = toy["data"].samples("val")
    conds = [Condition("baseline", "logit", "val"), Condition("baseline", "logit", "val", template="strict")]
    sink = ActivationSink([1, 2])
    options = ScoringOptions(progress=False, templates={"default": DEFAULT_TEMPLATE, "strict": TEMPLATES["strict"]})
    run_conditions(
        tiny_lm, conds, ResultStore(tmp_path / "r.jsonl"), toy["data"].by_cwe, toy["vectors"], options, sink=sink
    )
    recorded = sink.activations([s.id for s in val])
    extracted = extract_activations(tiny_lm, val, [1, 2], progress=False)
    for pooling in ("last", "code_mean"):
        torch.testing.assert_close(recorded.get(pooling), extracted.get(pooling))


def test_executor_keys() -> None:
    config = parse_config(
        {"run": {"executor": "ray", "ray_address": "auto", "ray_workers": 4, "ray_gpus_per_worker": 2}}
    )
    run = config.run
    assert (run.executor, run.ray_address, run.ray_workers, run.ray_gpus_per_worker) == ("ray", "auto", 4, 2.0)
    assert RunSection().executor == "local" and RunSection().ray_gpus_per_worker is None
    with pytest.raises(ConfigError, match=r"run\.executor: unknown value 'dask'"):
        parse_config({"run": {"executor": "dask"}})
    with pytest.raises(ConfigError, match=r"run\.ray_gpus_per_worker: must not be negative"):
        parse_config({"run": {"ray_gpus_per_worker": -1}})
    from vulnsteer.config.experiment import identity_of

    assert identity_of(config) == identity_of(ExperimentConfig())  # where, not what: a run resumes on either


def test_ray_executor_without_ray_names_the_install_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    check_executor(RunSection())  # local: fine
    with pytest.raises(RayUnavailableError, match=r"pip install 'vulnsteer\[ray\]'"):
        check_executor(RunSection(executor="ray"))

    from vulnsteer.cli import main

    out = tmp_path / "run"
    model = tmp_path / "no-model-needed"  # the error comes before any model loads
    assert main(["--no-progress", "run", "--executor", "ray", "--model", str(model), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "vulnsteer: error: run.executor = \"ray\" needs Ray, which is not installed: pip install 'vulnsteer[ray]'"
    ]
    assert not out.exists()


def test_a_failed_worker_is_one_error_line_and_a_non_zero_exit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from vulnsteer.cli import main
    from vulnsteer.experiment import protocol
    from vulnsteer.experiment.ray_executor import WorkerFailedError

    message = "a chunk (baseline|logit|val) failed 3 times, last on Ray worker 1 (vm): RuntimeError: boom"

    def fails(*args: Any, **kwargs: Any) -> Path:
        raise WorkerFailedError(message)

    monkeypatch.setattr(protocol, "run_protocol", fails)
    assert main(["--no-progress", "run", "--executor", "ray", "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"vulnsteer: error: {message}"]


def test_vectors_and_probes_pickle(toy: dict[str, Any]) -> None:
    """They travel to Ray workers through the object store."""
    vectors: Mapping[tuple[str, str], SteeringVector] = toy["vectors"]
    for key, vector in vectors.items():
        back = pickle.loads(pickle.dumps(vector))
        assert back.provenance == vector.provenance and back.layers == vector.layers, key
        assert all(torch.equal(back.directions[layer], vector.directions[layer]) for layer in vector.layers)
        with pytest.raises(TypeError):
            back.directions[1] = torch.zeros(1)  # type: ignore[index]  # still read-only
    probe = Probe(ProbeDesign((1,), ("last",)), torch.arange(4.0), 0.5, 0.25, 2.0, meta={"n": 3})
    back = pickle.loads(pickle.dumps(probe))
    assert torch.equal(back.weight, probe.weight) and (back.threshold, back.meta) == (0.25, {"n": 3})


def test_a_chunk_tells_its_progress_batch_by_batch(tiny_lm: LoadedModel, toy: dict[str, Any]) -> None:
    """Issue 19.12: a chunk of conditions can take minutes; counted in conditions, a log had no time left until
    the first chunk ended. A local chunk now reports every batch's scored (sample, setting) rows as it goes."""
    from vulnsteer.experiment.engine import _rows

    told: list[int] = []
    chunk = toy["conds"][:5]
    options = ScoringOptions(batch_size=2, progress=False)
    inputs = ChunkInputs(toy["data"].by_cwe, toy["vectors"], options, on_rows=told.append)
    [(done, found, _)] = list(LocalExecutor(tiny_lm).map_chunks([chunk], inputs))
    n_val = len(toy["data"].samples("val"))
    assert len(told) == -(-n_val // 2) > 1  # one report per batch of 2 samples, before the chunk ends
    assert sum(told) == _rows(chunk, toy["data"].by_cwe) == n_val * len({c.variant_key for c in chunk})
    assert list(done) == chunk and set(found) == {c.key for c in chunk}
