"""Sweeps on a real local Ray instance (2 CPU workers, a tiny model saved to a folder): the chosen settings and
every test number equal the local executor's; a worker killed mid-chunk is restarted and only its chunk is run
again; a chunk that keeps failing stops the sweep with its error and keeps the finished chunks; a driver killed
with SIGKILL resumes. Skipped without Ray (``pip install 'vulnsteer[ray]'``)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from conftest import make_tiny, write_toy_jsonl
from runs import chunk_entries, run, run_numbers, sweep_process, toy_grid, wait_for_lines, write_config
from vulnsteer.config.experiment import load_config
from vulnsteer.experiment.engine import ResultStore, ScoringOptions, run_conditions, score_chunk
from vulnsteer.experiment.evaluate import evaluate_from_run, transfer_config
from vulnsteer.lm.model import LoadedModel, load_model

ray = pytest.importorskip("ray")

from vulnsteer.experiment.ray_executor import RayExecutor, WorkerFailedError  # noqa: E402
from vulnsteer.experiment.upgrade import load_results  # noqa: E402

# the fault-injecting scorer below travels to the workers by value (they cannot import this test module)
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A local Ray instance with 2 CPUs for the whole module; its address (subprocess drivers join it)."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(
        num_cpus=2,
        num_gpus=0,
        include_dashboard=False,
        object_store_memory=100 * 1024**2,
        log_to_driver=False,
        logging_level="warning",
    )
    yield str(ray.get_runtime_context().gcs_address)
    ray.shutdown()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: Any) -> Path:
    folder = tmp_path_factory.mktemp("tiny-model")
    lm = make_tiny(tiny_tokenizer, "llama", layers=3)
    lm.model.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def model(model_dir: Path) -> LoadedModel:
    """The driver's copy of the model the workers load (the same folder, so the same model key)."""
    return load_model(str(model_dir), device="cpu")


def test_ray_sweep_equals_local(tmp_path: Path, cluster: str, model_dir: Path, model: LoadedModel) -> None:
    data = write_toy_jsonl(tmp_path / "toy.jsonl")
    config = load_config(write_config(tmp_path / "sweep.toml", data, cache_dir=tmp_path / "cache"))
    config = config.replace(model__name=str(model_dir), model__device="cpu")
    local = run(config, tmp_path / "local", model)
    cached = sorted((tmp_path / "cache").rglob("*"))
    distributed = run(config.replace(run__executor="ray", run__ray_workers=2), tmp_path / "ray", model)
    # the probes read the states the workers' sinks recorded: the driver extracted nothing for val and test
    assert sorted((tmp_path / "cache").rglob("*")) == cached

    for name in ("constant", "conditional", "prompt"):
        assert distributed.families[name].choices == local.families[name].choices, name
        assert distributed.families[name].templates == local.families[name].templates, name
    assert run_numbers(distributed) == run_numbers(local)
    assert distributed.records == local.records and distributed.lead == local.lead
    assert distributed.families["conditional"].held_out == local.families["conditional"].held_out
    assert chunk_entries(tmp_path / "ray" / "records.jsonl") == chunk_entries(tmp_path / "local" / "records.jsonl")

    stats = distributed.executor
    assert stats["kind"] == "ray" and len(stats["workers"]) == 2 and stats["retried_chunks"] == 0
    scored = sum(w["conditions"] for w in stats["workers"])
    assert scored == len((tmp_path / "ray" / "records.jsonl").read_text().splitlines())
    assert all(w["conditions"] > 0 and w["conditions_per_s"] > 0 for w in stats["workers"]), stats
    assert local.executor["kind"] == "local" and local.executor["workers"][0]["conditions"] == scored

    # `evaluate --from RUN` on other data: the same rows with one Ray worker as locally
    other = write_toy_jsonl(tmp_path / "other.jsonl", n_pairs=3, prefix="other")
    transfer = transfer_config(tmp_path / "local", {"data.path": (str(other), "--data")})
    found = {}
    for name, executor in (("local", "local"), ("ray", "ray")):
        settings = transfer.replace(run__executor=executor, run__ray_workers=1)
        out = evaluate_from_run(tmp_path / "local", settings, tmp_path / f"eval-{name}", lm=model, progress=False)
        found[name] = load_results(out / "results.json")
    assert found["ray"].executor["kind"] == "ray" and found["ray"].executor["workers"][0]["conditions"] > 0
    for family in ("constant", "conditional"):  # rows per CWE, the pooled vector's rows, the cross-CWE matrix
        assert found["ray"].families[family].held_out == found["local"].families[family].held_out, family
    assert found["ray"].records == found["local"].records


# ------------------------------------------------------------------------------------------ scan on Ray
# (before the fault tests: their module-scoped pool holds both of the cluster's CPUs until the module ends, and
# a pool started after it would wait for CPUs forever)


def _scan_tree(root: Path, files: int = 10) -> Path:
    """*files* Python files of 4 functions each, short and long (40 functions: two chunks of the scan's 32)."""
    for k in range(files):
        body = []
        for j in range(4):
            n = 4 * k + j
            lines = [f"    x = db.execute('SELECT * FROM t{i} WHERE id = ' + user)" for i in range(1 + (n * 7) % 5)]
            body.append(f"def f{n}(db, user):\n" + "\n".join(lines) + f"\n    return x + {n}\n")
        path = root / f"m{k}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n\n".join(body), encoding="utf-8")
    return root


def _functions(path: Path) -> list[dict[str, Any]]:
    return [r for r in map(json.loads, path.read_text().splitlines()) if r.get("type") == "function"]


def _cache_lines(folder: Path) -> list[str]:
    """The score cache's entries (not the model identities), in any order."""
    return sorted(
        line for f in folder.rglob("*.jsonl") if "models" not in f.parts for line in f.read_text().splitlines()
    )


def test_ray_scan_equals_local(
    tmp_path: Path, cluster: str, model_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`vulnsteer scan --executor ray --ray-workers 2`: the same functions and scores as a local scan, both
    workers scoring, and the same score cache (written by the driver)."""
    from vulnsteer.cli import main

    monkeypatch.setenv("VULNSTEER_CACHE", str(tmp_path / "vcache"))
    tree = _scan_tree(tmp_path / "src")
    common = ["--no-progress", "scan", str(tree), "--model", str(model_dir), "--device", "cpu",
              "--max-code-tokens", "64", "--min-score", "0", "--format", "json"]  # fmt: skip
    assert main([*common, "-o", str(tmp_path / "local.jsonl"), "--cache-dir", str(tmp_path / "c-local")]) == 1
    local_err = capsys.readouterr().err
    ray_args = ["--executor", "ray", "--ray-address", cluster, "--ray-workers", "2"]
    assert main([*common, "-o", str(tmp_path / "ray.jsonl"), "--cache-dir", str(tmp_path / "c-ray"), *ray_args]) == 1
    ray_err = capsys.readouterr().err
    assert "ray: 2 of 2 workers scored 2 chunks, 0 run again" in ray_err, ray_err
    assert "ray:" not in local_err
    local, distributed = _functions(tmp_path / "local.jsonl"), _functions(tmp_path / "ray.jsonl")
    assert len(local) == 40 and distributed == local
    assert len(_cache_lines(tmp_path / "c-ray")) == 40 and _cache_lines(tmp_path / "c-ray") == _cache_lines(
        tmp_path / "c-local"
    )
    # a rescan finds every score in the cache: no Ray worker is started
    assert main([*common, "-o", str(tmp_path / "again.jsonl"), "--cache-dir", str(tmp_path / "c-ray"), *ray_args]) == 1
    assert "ray:" not in capsys.readouterr().err
    again = _functions(tmp_path / "again.jsonl")
    assert all(r["cached"] for r in again) and [{**r, "cached": False} for r in again] == local


def _faulty_scan(plan_file: str, lm: LoadedModel, scorer: Any, shared: Any, chunk: Any) -> Any:
    """A scan worker's task under the test's plan: each attempt of a chunk is noted in the plan's ``marks``
    folder; the first attempt of the chunk holding the function named ``kill`` kills its worker's process."""
    plan = json.loads(Path(plan_file).read_text())
    ids = [s.id for s in chunk]
    mark = Path(plan["marks"]) / _tag(ids)
    with open(mark, "a", encoding="utf-8") as handle:
        handle.write(f"{os.getpid()}\n")
    if any(i.endswith(f":{plan['kill']}") for i in ids) and len(mark.read_text().splitlines()) == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return scorer.score(chunk, progress=False)


def test_a_killed_scan_worker_s_chunk_is_scored_again(
    tmp_path: Path, cluster: str, model_dir: Path, model: LoadedModel
) -> None:
    from vulnsteer.config import RunSection
    from vulnsteer.config.sections import ModelSection
    from vulnsteer.scan import ModelScorer, ScanOptions, ScorerSpec, scan
    from vulnsteer.scan.ray_scorer import RayScorer

    tree = _scan_tree(tmp_path / "src", files=4)
    spec = ScorerSpec(ModelSection(name=str(model_dir), device="cpu"), max_code_tokens=64)
    options = ScanOptions(min_score=0.0, chunk_size=4)
    local = scan([tree], ModelScorer(spec, lm=model), options, cache_dir=tmp_path / "local", progress=False)
    marks = tmp_path / "marks"
    marks.mkdir()
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"marks": str(marks), "kill": "f9"}))
    run_section = RunSection(executor="ray", ray_workers=2)
    with RayScorer(ModelScorer(spec, lm=model), run_section, task=partial(_faulty_scan, str(plan))) as scorer:
        found = scan([tree], scorer, options, cache_dir=tmp_path / "ray", progress=False)
        stats = scorer.stats()
    assert [r.to_record(0.0) for r in found.results] == [r.to_record(0.0) for r in local.results]
    attempts = sorted(len(m.read_text().splitlines()) for m in marks.iterdir())
    assert attempts == [1, 1, 1, 2], "the killed worker's chunk was not scored again, or another chunk was"
    assert stats["retried_chunks"] == 1 and sum(w["restarts"] for w in stats["workers"]) == 1
    assert sum(w["functions"] for w in stats["workers"]) == 16
    assert _cache_lines(tmp_path / "ray") == _cache_lines(tmp_path / "local")


# ------------------------------------------------------------------------------------------ a killed driver


@pytest.mark.slow
def test_a_killed_driver_resumes(tmp_path: Path, cluster: str, model_dir: Path, model: LoadedModel) -> None:
    """SIGKILL a `vulnsteer sweep --executor ray` that joined the cluster, mid-sweep; the rerun resumes."""
    data = write_toy_jsonl(tmp_path / "toy.jsonl")
    config = write_config(tmp_path / "sweep.toml", data, cache_dir=tmp_path / "acache", group_size=1)
    out = tmp_path / "killed"
    records = out / "records.jsonl"
    args = [str(config), "--model", str(model_dir), "--out", str(out), "--executor", "ray", "--ray-address", cluster]
    proc = sweep_process([*args, "--ray-workers", "2"], tmp_path)
    wait_for_lines(proc, records, 2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    before = records.read_bytes()
    done_before = before[: before.rfind(b"\n") + 1].decode().splitlines()
    assert done_before and not (out / "results.json").exists()

    resumed = sweep_process([*args, "--ray-workers", "1"], tmp_path)
    assert resumed.wait(timeout=600) == 0, resumed.stdout.read().decode() if resumed.stdout else ""
    after = records.read_text().splitlines()
    assert after[: len(done_before)] == done_before, "finished chunks were rewritten"
    keys = [json.loads(line)["condition"]["key"] for line in after]
    assert len(keys) == len(set(keys)), "finished conditions were redone"

    local = run(load_config(config).replace(run__cache_dir=str(tmp_path / "fresh")), tmp_path / "local", model)
    assert chunk_entries(records) == chunk_entries(tmp_path / "local" / "records.jsonl")
    assert run_numbers(load_results(out / "results.json")) == run_numbers(local)


# ------------------------------------------------------------------------------------------ executor faults


def _tag(keys: list[str]) -> str:
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]


def _faulty(plan_file: str, lm: LoadedModel, chunk: Any, *args: Any, **kw: Any) -> Any:
    """score_chunk under the test's current plan (a JSON file the test rewrites): each attempt of a chunk is
    noted in the plan's ``marks`` folder; the first attempt of the chunk holding condition ``kill`` kills its
    worker's process, and the chunk holding ``fail`` raises every time."""
    plan = json.loads(Path(plan_file).read_text())
    keys = [c.key for c in chunk]
    mark = Path(plan["marks"]) / _tag(keys)
    with open(mark, "a", encoding="utf-8") as handle:
        handle.write(f"{os.getpid()}\n")
    if plan["kill"] in keys and len(mark.read_text().splitlines()) == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    if plan["fail"] in keys:
        raise RuntimeError("injected failure in this chunk")
    return score_chunk(lm, chunk, *args, **kw)


def _attempts(marks: Path, chunk_keys: list[str]) -> int:
    path = marks / _tag(chunk_keys)
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory, model: LoadedModel) -> dict[str, Any]:
    """The toy validation grid, its vectors and samples, the local executor's records, and the chunks."""
    root = tmp_path_factory.mktemp("grid")
    grid = toy_grid(root, model, [(1,), (2,), (1, 2)])
    conds, vectors, samples = grid["conds"], grid["vectors"], grid["samples"]
    options = ScoringOptions(group_size=2, progress=False)
    local = run_conditions(model, conds, ResultStore(root / "local.jsonl"), samples, vectors, options)
    chunks = [[c.key for c in conds[i : i + 2]] for i in range(0, len(conds), 2)]  # one group: the engine's chunks
    return {**grid, "options": options, "local": local, "chunks": chunks}


@pytest.fixture(scope="module")
def faulty(
    tmp_path_factory: pytest.TempPathFactory, cluster: str, model_dir: Path, model: LoadedModel
) -> Iterator[tuple[RayExecutor, Path]]:
    """Two workers scoring with :func:`_faulty`, shared by the fault tests (workers take seconds to start)."""
    plan = tmp_path_factory.mktemp("plan") / "plan.json"
    load = partial(load_model, str(model_dir), device="cpu")
    with RayExecutor(
        load, workers=2, expect_model=model.identity, score=partial(_faulty, str(plan)), max_restarts=2
    ) as executor:
        yield executor, plan


def _plan(plan: Path, marks: Path, kill: str | None = None, fail: str | None = None) -> Path:
    marks.mkdir()
    plan.write_text(json.dumps({"marks": str(marks), "kill": kill, "fail": fail}))
    return marks


def _sweep(executor: RayExecutor, model: LoadedModel, grid: dict[str, Any], records: Path) -> Any:
    return run_conditions(
        model, grid["conds"], ResultStore(records), grid["samples"], grid["vectors"], grid["options"],
        executor=executor,
    )  # fmt: skip


def _stored_keys(path: Path) -> list[str]:
    return [json.loads(line)["condition"]["key"] for line in path.read_text().splitlines()]


def test_a_worker_that_cannot_load_the_model_is_a_clear_error(
    tmp_path: Path, cluster: str, model: LoadedModel, grid: dict[str, Any]
) -> None:
    load = partial(load_model, str(tmp_path / "no-such-model"), device="cpu")
    with (
        RayExecutor(load, workers=1, max_restarts=1) as executor,
        pytest.raises(WorkerFailedError, match=r"no Ray worker is left \(worker 0: .*no-such-model"),
    ):
        _sweep(executor, model, grid, tmp_path / "r.jsonl")
    assert not (tmp_path / "r.jsonl").exists()


def test_a_killed_worker_is_restarted_and_only_its_chunk_is_redone(
    tmp_path: Path, faulty: tuple[RayExecutor, Path], model: LoadedModel, grid: dict[str, Any]
) -> None:
    executor, plan = faulty
    victim = grid["chunks"][3]
    marks = _plan(plan, tmp_path / "marks", kill=victim[0])
    before = executor.stats()
    found = _sweep(executor, model, grid, tmp_path / "records.jsonl")
    assert found == grid["local"]
    assert _attempts(marks, victim) == 2, "the chunk in flight was not run again"
    assert all(_attempts(marks, keys) == 1 for keys in grid["chunks"] if keys != victim), "a chunk was redone"
    assert sorted(_stored_keys(tmp_path / "records.jsonl")) == sorted(c.key for c in grid["conds"])
    after = executor.stats()
    assert [w["restarts"] for w in after["workers"]] != [w["restarts"] for w in before["workers"]]
    assert sum(w["restarts"] for w in after["workers"]) == sum(w["restarts"] for w in before["workers"]) + 1
    assert after["retried_chunks"] == before["retried_chunks"] + 1


def test_a_chunk_that_keeps_failing_stops_the_sweep_and_keeps_finished_work(
    tmp_path: Path, faulty: tuple[RayExecutor, Path], model: LoadedModel, grid: dict[str, Any]
) -> None:
    executor, plan = faulty
    broken = grid["chunks"][2]
    marks = _plan(plan, tmp_path / "marks", fail=broken[0])
    records = tmp_path / "records.jsonl"
    with pytest.raises(WorkerFailedError, match="injected failure in this chunk") as failure:
        _sweep(executor, model, grid, records)
    assert "failed 3 times" in str(failure.value) and "rerun" in str(failure.value)
    assert _attempts(marks, broken) == 3
    stored = _stored_keys(records)
    assert stored and not set(broken) & set(stored), "finished chunks were lost, or the broken one was stored"
    assert len(stored) == len(set(stored))

    # the cause fixed, a rerun scores only what is missing, and the records equal the local executor's
    marks = _plan(plan, tmp_path / "marks-again")
    assert _sweep(executor, model, grid, records) == grid["local"]
    assert all(_attempts(marks, keys) == 0 for keys in grid["chunks"] if set(keys) <= set(stored))
    assert len(_stored_keys(records)) == len(grid["conds"])


def test_a_ray_scorer_adapts_as_its_driver_s_scorer_does() -> None:
    """Adaptation needs no model: the Ray scorer hands the scores and a stated prevalence to its driver's scorer
    (no pool is started)."""
    from vulnsteer.config.sections import RunSection
    from vulnsteer.scan.ray_scorer import RayScorer

    seen: list[tuple[list[float], float | None]] = []

    class Driver:
        def adapt(self, scores: list[float], prevalence: float | None = None) -> tuple[list[float], int]:
            seen.append((scores, prevalence))
            return scores, len(scores)

    scorer = RayScorer(Driver(), RunSection(executor="ray"))  # type: ignore[arg-type]
    assert scorer.adapt([0.1, 0.2], 0.05) == ([0.1, 0.2], 2) and scorer.pool is None  # type: ignore[arg-type]
    assert seen == [([0.1, 0.2], 0.05)]
