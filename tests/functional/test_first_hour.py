"""The first hour with vulnsteer, as a careless user spends it: a catalogue, each command run as its own process.

Each case: the command, its exit code, the one line that names the file, field or option, nothing half-written,
and nothing outside its place read or written (a user's own files are never replaced). A tiny random model saved
to a folder stands in for the real one; a copy without weights ("bare") proves that an error came before any
weights were loaded.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from cli_runner import ForkServer, Result, cli_env
from conftest import write_toy_jsonl
from runs import write_config
from vulnsteer.lm.model import LoadedModel, model_fingerprint
from vulnsteer.steering.vectors import Provenance, SteeringVector

SOURCE = "int main(void) {\n    char b[4];\n    gets(b);\n    return 0;\n}\n"


@dataclass
class World:
    root: Path
    tiny: Path
    bare: Path
    cache: Path
    fingerprint: str

    def tiny_args(self) -> list[str]:
        return ["--model", str(self.tiny), "--device", "cpu"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer) -> World:  # type: ignore[no-untyped-def]
    from conftest import make_tiny

    root = tmp_path_factory.mktemp("first-hour")
    lm = make_tiny(tiny_tokenizer, "llama", layers=3)
    tiny, bare = root / "tiny", root / "bare"
    lm.model.save_pretrained(tiny)
    tiny_tokenizer.save_pretrained(tiny)
    bare.mkdir()
    for file in tiny.iterdir():
        if not file.name.endswith(".safetensors"):
            shutil.copy(file, bare / file.name)
    (root / "ok.c").write_text(SOURCE, encoding="utf-8")
    write_toy_jsonl(root / "toy.jsonl", n_pairs=4)
    return World(root, tiny, bare, root / "cache", model_fingerprint(lm.model))


@pytest.fixture(scope="module")
def cli(world: World) -> Iterator[ForkServer]:
    server = ForkServer(world.root, cli_env(world.cache), warm=(world.tiny,))
    yield server
    server.close()


def _error(result: Result) -> str:
    """The one error line of a failed command (nothing after it; only warnings before it)."""
    context = f"\nstdout:\n{result.out}\nstderr:\n{result.err}"
    assert "Traceback" not in result.err, context
    errors = [line for line in result.err_lines if "error:" in line]
    assert len(errors) == 1 and result.err_lines[-1] == errors[0], context
    return errors[0]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _vector(world: World, name: str, direction: torch.Tensor) -> Path:
    prov = Provenance("tiny", world.fingerprint, 64, (1,), "last", "mean_diff", "CWE-89", 3, 3, "h", "t", {1: 5.0})
    path = world.root / name
    SteeringVector({1: direction}, prov).save(path)
    return path


# ---------------------------------------------------------------- item 1: a user's folder is not a run folder


def test_sweep_into_a_folder_of_the_users_own_files_is_refused(world: World, cli: ForkServer) -> None:
    mine = world.root / "my-notes"
    mine.mkdir()
    (mine / "report.md").write_text("my report\n", encoding="utf-8")
    (mine / "results.json").write_text('{"mine": true}\n', encoding="utf-8")
    before = _snapshot(mine)
    config = write_config(world.root / "c.toml", world.root / "toy.jsonl", cache_dir=world.root / "acts")
    result = cli.run(["--no-progress", "sweep", str(config), "--out", str(mine), "--model", str(world.bare)])
    assert result.rc == 2
    line = _error(result)
    assert f"--out {mine}" in line and "report.md" in line and "not a vulnsteer run" in line
    assert _snapshot(mine) == before  # nothing replaced, nothing added


# ---------------------------------------------------------------- item 3: a huge vector still steers


def test_a_vector_scaled_by_1e30_steers_like_the_same_direction_at_unit_scale(world: World, cli: ForkServer) -> None:
    direction = torch.randn(64, generator=torch.Generator().manual_seed(0))
    unit = _vector(world, "unit.safetensors", direction / direction.norm())
    huge = _vector(world, "huge1e30.safetensors", direction / direction.norm() * 1e30)

    def score(*extra: str) -> float:
        argv = ["--no-progress", "detect", str(world.root / "ok.c"), *world.tiny_args(), "--mode", "logit", "--json"]
        result = cli.run([*argv, *extra])
        assert result.rc == 0, result.err
        return float(json.loads(result.out.splitlines()[0])["p_vulnerable"])

    plain = score()
    steered = score("--vector", str(unit), "--strength", "2")
    assert score("--vector", str(huge), "--strength", "2") == pytest.approx(steered, abs=1e-6)
    assert steered != pytest.approx(plain, abs=1e-6)


def test_a_files_verdict_follows_its_aggregate_score_in_json_and_text(world: World, cli: ForkServer) -> None:
    """``detect``: a file of several functions gets the verdict of its aggregate score (the answer's P(vulnerable)
    against its 0.5 threshold), the same in ``--json`` and in the text line, whatever its highest function says."""
    many = world.root / "many.c"
    many.write_text("\n".join(SOURCE.replace("main", f"f{i}") for i in range(5)), encoding="utf-8")
    base = ["--no-progress", "detect", str(many), *world.tiny_args(), "--mode", "logit", "--aggregation", "mean"]
    shown = cli.run([*base, "--json"])
    assert shown.rc == 0, shown.err
    doc = json.loads(shown.out.splitlines()[0])
    assert doc["functions"] == 5
    assert doc["verdict"] == ("vulnerable" if doc["p_vulnerable"] >= 0.5 else "secure")
    text = cli.run(base)
    assert text.rc == 0, text.err
    assert text.out.splitlines()[0].startswith(f"{many}: {doc['verdict']} p(vulnerable)=")


def test_a_zero_vector_is_refused_not_applied_as_nothing(world: World, cli: ForkServer) -> None:
    zero = _vector(world, "zero.safetensors", torch.zeros(64))
    argv = ["detect", str(world.root / "ok.c"), "--model", str(world.bare), "--vector", str(zero), "--strength", "1"]
    result = cli.run(argv)
    assert result.rc == 2
    assert "direction at layer 1 is zero" in _error(result)


# ---------------------------------------------------------------- item 6: a detector that says what it rests on


def _fit(world: World, cli: ForkServer, out: Path) -> Result:
    argv = ["--no-progress", "detector", "fit", "--data", str(world.root / "toy.jsonl"), "--format", "jsonl"]
    argv += [*world.tiny_args(), "--max-code-tokens", "64", "--layers", "1", "--modes", "logit"]
    return cli.run([*argv, "--conditional-strengths", "2", "--conditional-unit", "sigma", "--out", str(out)])


def test_a_detector_chosen_on_a_few_val_samples_says_so(world: World, cli: ForkServer) -> None:
    out = world.root / "fit"
    result = _fit(world, cli, out)
    assert result.rc == 0, result.err
    assert (out / "detector" / "detector.json").is_file()
    warning = [line for line in result.err_lines if "val samples (fewer than 20)" in line]
    assert len(warning) == 1 and str(out / "detector") in warning[0]
    shown = cli.run(["detector", "show", str(out / "detector")])
    assert shown.rc == 0 and any("val samples (fewer than 20)" in line for line in shown.err_lines)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".detector")]  # no staging folder left
    # a vector file swapped for another's is noticed, naming it
    other = _vector(world, "other.safetensors", torch.ones(64))
    swapped = world.root / "swapped"
    shutil.copytree(out / "detector", swapped)
    shutil.copy(other, swapped / "vector.safetensors")
    refused = cli.run(["detector", "show", str(swapped)])
    assert refused.rc == 2
    assert f"{swapped / 'vector.safetensors'}: is not the file this detector was saved with" in _error(refused)


def test_a_run_folder_given_as_a_detector_points_to_its_detector(world: World, cli: ForkServer) -> None:
    """Found trying it: ``--detector runs/demo`` (the run, not ``runs/demo/detector``)."""
    out = world.root / "fit"
    if not (out / "detector").is_dir():
        assert _fit(world, cli, out).rc == 0
    result = cli.run(["detector", "show", str(out)])
    assert result.rc == 2
    assert _error(result).endswith(
        f"{out}: not a detector folder (no detector.json); did you mean {out / 'detector'} (a run's detector)?"
    )


def test_a_detector_of_a_run_that_never_finished_says_so(world: World, cli: ForkServer) -> None:
    out = world.root / "killed-fit"
    assert _fit(world, cli, out).rc == 0
    (out / "report.md").unlink()  # as a run killed after the detector was chosen on val leaves it
    shown = cli.run(["detector", "show", str(out / "detector")])
    assert shown.rc == 0
    assert any("has not finished: it was never tested" in line for line in shown.err_lines)


# ---------------------------------------------------------------- item 7: paths in a config


def test_every_path_in_a_config_is_relative_to_the_config_and_tilde_is_home(world: World, cli: ForkServer) -> None:
    home = world.root / "home"
    (home / "data").mkdir(parents=True)
    shutil.copy(world.root / "toy.jsonl", home / "data" / "toy.jsonl")
    configs = world.root / "configs"
    configs.mkdir()
    (configs / "c.toml").write_text(
        '[data]\npath = "~/data/toy.jsonl"\nformat = "jsonl"\n[run]\nout = "runs/here"\n', encoding="utf-8"
    )
    elsewhere = world.root / "elsewhere"
    elsewhere.mkdir()
    env = cli_env(world.cache, HOME=str(home))
    argv = ["--no-progress", "sweep", str(configs / "c.toml"), "--model", str(world.bare)]
    result = cli.run(argv, cwd=elsewhere, env=env)
    assert result.rc == 2  # the model has no weights: refused after the data loaded from ~, before any write
    assert "cannot load model" in _error(result) and "toy.jsonl" not in _error(result)
    assert not (elsewhere / "runs").exists() and not (configs / "runs").exists()
    from vulnsteer.config.experiment import load_config

    old_home = os.environ.get("HOME")
    os.environ["HOME"] = str(home)
    try:
        config = load_config(configs / "c.toml")
    finally:
        if old_home is not None:
            os.environ["HOME"] = old_home
    assert config.data.path == str(home / "data" / "toy.jsonl")
    assert config.run.out == str(configs / "runs" / "here")


# ---------------------------------------------------------------- item 10: a full disk names the file


_FULL_DISK = """
import errno, os, sys
real = os.fsync
def full(fd):
    name = os.readlink(f"/proc/self/fd/{fd}").rsplit("/", 1)[-1]
    if name.startswith(sys.argv[1]):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return real(fd)
os.fsync = full
from vulnsteer.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to see which file is written")
def test_a_full_disk_names_the_file_and_a_rerun_finishes_the_report(world: World) -> None:
    out = world.root / "full-disk"
    toy, acts = world.root / "toy.jsonl", world.root / "acts"
    config = write_config(world.root / "small.toml", toy, cache_dir=acts, strengths="{ relative = [0.5] }")
    argv = ["--no-progress", "sweep", str(config), *world.tiny_args(), "--out", str(out), "--no-conditional"]
    env = cli_env(world.cache)
    proc = subprocess.run(
        [sys.executable, "-c", _FULL_DISK, ".report.md.", *argv], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last == (
        f"vulnsteer: error: {out / 'report.md'}: {os.strerror(errno.ENOSPC)}; free some space and rerun the same "
        "command (finished work is kept)"
    )
    assert not (out / "report.md").exists() and not list(out.glob(".report.md.*"))
    again = subprocess.run([sys.executable, "-m", "vulnsteer.cli", *argv], capture_output=True, text=True, env=env)
    assert again.returncode == 0, again.stderr
    assert (out / "report.md").is_file()


# ---------------------------------------------------------------- item 11: messages that name the file


def test_a_provenance_header_that_is_not_json_is_said_so(world: World, cli: ForkServer) -> None:
    from safetensors.torch import save_file

    path = world.root / "badheader.safetensors"
    header = {"format": "vulnsteer.SteeringVector", "provenance": "{x"}
    save_file({"layer.1": torch.ones(64)}, str(path), metadata=header)
    result = cli.run(["vectors", "show", str(path)])
    assert result.rc == 2
    line = _error(result)
    assert f"{path}: header field 'provenance' is not valid JSON (line 1, column 2)" in line
    assert "Expecting property name" not in line


def test_gguf_problems_name_the_file_and_the_reason(world: World, cli: ForkServer) -> None:
    import gguf
    import numpy as np

    nan = world.root / "nan.gguf"
    writer = gguf.GGUFWriter(str(nan), arch="controlvector")
    writer.add_string("controlvector.model_hint", "llama")
    writer.add_tensor("direction.1", np.full(64, np.nan, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    result = cli.run(["vectors", "show", str(nan)])
    assert result.rc == 2 and f"{nan}: tensor direction.1 has non-finite values" in _error(result)

    foreign = world.root / "foreign.gguf"
    writer = gguf.GGUFWriter(str(foreign), arch="controlvector")
    writer.add_string("controlvector.model_hint", "llama")
    writer.add_tensor("direction.1", np.ones(64, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    imported = world.root / "foreign.safetensors"
    assert cli.run(["vectors", "import", str(foreign), "--out", str(imported)]).rc == 0
    argv = ["detect", str(world.root / "ok.c"), *world.tiny_args(), "--vector", str(imported), "--strength", "1"]
    argv += ["--unit", "raw"]
    refused = cli.run(argv)
    assert refused.rc == 2
    line = _error(refused)
    assert "records no model fingerprint (made by another tool for a llama model)" in line
    assert "fingerprint )" not in line and "--allow-model-mismatch" in line


def test_a_model_folder_with_a_broken_config_names_the_folder(world: World, cli: ForkServer) -> None:
    folder = world.root / "broken-model"
    folder.mkdir()
    (folder / "config.json").write_text("{not json", encoding="utf-8")
    result = cli.run(["detect", str(world.root / "ok.c"), "--model", "."], cwd=folder)
    assert result.rc == 2
    line = _error(result)
    assert f"cannot load the model's config from {folder}:" in line and "of from" not in line


# ---------------------------------------------------------------- item 15/16: the Python API and --version


def test_version_and_the_exit_code_table_once(world: World, cli: ForkServer) -> None:
    from vulnsteer import __version__

    version = cli.run(["--version"])
    assert version.rc == 0 and version.out.strip() == f"vulnsteer {__version__}"
    top = cli.run(["--help"]).out
    sub = cli.run(["scan", "--help"]).out + cli.run(["detect", "--help"]).out
    assert top.count("internal error (a bug)") == 1 and "internal error (a bug)" not in sub


def test_a_vector_prints_in_one_short_line(world: World) -> None:
    vector = SteeringVector.load(_vector(world, "repr.safetensors", torch.randn(64)))
    text = repr(vector)
    assert "\n" not in text and len(text) < 200 and "tensor(" not in text
    assert "CWE-89" in text and "layers=(1,)" in text


def test_export_gguf_from_python_writes_no_absolute_path(world: World) -> None:
    import vulnsteer as vs

    prov = Provenance(
        str(world.tiny), world.fingerprint, 64, (1,), "last", "mean_diff", "CWE-89", 3, 3, "h", "t", {1: 5.0},
        extra={"model_type": "llama", "source": str(world.root / "toy.jsonl")},
    )  # fmt: skip
    vector = SteeringVector({1: torch.ones(64)}, prov)
    path = world.root / "api.gguf"
    info = vs.export_gguf(vector, path, strength=0.5, unit="relative")
    assert info.path == path and path.is_file()
    blob = path.read_bytes()
    assert str(world.root).encode() not in blob and b"toy.jsonl" in blob and world.tiny.name.encode() in blob
    back = vs.import_gguf(path, hidden_size=64)
    assert torch.allclose(back.direction(1), vector.direction(1)) and back.provenance.model_id == world.tiny.name


def test_fit_vector_records_what_gguf_export_needs_and_says_why_when_it_is_missing(
    world: World, cli: ForkServer, tiny_lm: LoadedModel
) -> None:
    from conftest import toy_samples
    from vulnsteer.lm.activations import extract_activations
    from vulnsteer.steering.vectors import fit_vector

    samples = toy_samples(4)
    acts = extract_activations(tiny_lm, samples, [1], ["last"], progress=False)
    fitted = fit_vector(acts, samples, cwe="CWE-89")  # nothing about the model passed: the activations know it
    assert fitted.provenance.model_type == tiny_lm.model_type
    assert fitted.provenance.model_fingerprint == tiny_lm.fingerprint
    fitted.save(world.root / "fitted.safetensors")
    out = world.root / "fitted.gguf"
    assert (
        cli.run(["vectors", "export", str(world.root / "fitted.safetensors"), "--gguf", str(out), "--strength", "1"]).rc
        == 0
    )
    bare_acts = type(acts)(acts.layers, acts.sample_ids, acts.by_pooling)  # activations that do not name a model
    anonymous = fit_vector(bare_acts, samples, cwe="CWE-89")
    anonymous.save(world.root / "anonymous.safetensors")
    refused = cli.run(
        ["vectors", "export", str(world.root / "anonymous.safetensors"), "--gguf", str(out) + "2", "--strength", "1"]
    )
    assert refused.rc == 2
    line = _error(refused)
    assert "records no model type (it was fitted without its model's identity" in line and "--model-hint" in line
    assert "older" not in line and "before vulnsteer" not in line


@pytest.mark.parametrize("command", [["detect", "{ok}"], ["run", "--out", "{out}"], ["scan", "{ok}"]])
def test_an_empty_model_name_is_refused_not_read_as_the_embedded_model(
    command: list[str], world: World, cli: ForkServer
) -> None:
    """Found trying it: ``--model "$MODEL"`` with MODEL unset silently ran the embedded model."""
    argv = [a.format(ok=world.root / "ok.c", out=world.root / "empty-model-run") for a in command]
    result = cli.run([*argv, "--model", ""])
    assert result.rc == 2
    assert "--model" in _error(result) and "is empty" in _error(result)
    assert not (world.root / "empty-model-run").exists()
