"""``vulnsteer scan`` through ``vulnsteer.cli.main``: exit codes 0/1/2/130, atomic output, cache hits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conftest import EXAMPLES
from vulnsteer.cli import main
from vulnsteer.data.functions import tree_sitter_available
from vulnsteer.scan import model_scorer as model_scorer_module
from vulnsteer.stats.aggregate import aggregate

needs_grammars = pytest.mark.skipif(not tree_sitter_available(), reason="tree-sitter-language-pack not installed")
DEMO = EXAMPLES / "scan-demo"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: Any) -> Path:
    from conftest import make_tiny

    folder = tmp_path_factory.mktemp("cli-model") / "tiny"
    make_tiny(tiny_tokenizer, "qwen2", layers=2).model.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def run(model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("VULNSTEER_CACHE", str(tmp_path / "vcache"))

    def invoke(*args: str, model: bool = True) -> int:
        extra = ["--model", str(model_dir), "--device", "cpu", "--max-code-tokens", "64"] if model else []
        return main(["--no-progress", "scan", *args, *extra])

    return invoke


@needs_grammars
def test_exit_codes_follow_fail_on(run: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(str(DEMO / "vulnerable"), "--min-score", "0") == 1  # (--fail-on follows --min-score)
    out = capsys.readouterr()
    assert out.out.splitlines()[0].split()[:3] == ["SCORE", "LEVEL", "CWE"]
    assert run(str(DEMO / "vulnerable"), "--fail-on", "1", "--min-score", "1") == 0
    out = capsys.readouterr()
    assert out.out == "no findings at or above 1.00\n"
    assert "(10 cached, 0 scored)" in out.err  # the second scan hit the cache for every function (summary: stderr)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([""], "PATH is an empty string"),
        (["does-not-exist"], "does-not-exist: no such file or folder"),
        (["{demo}", "--detector", "some/dir"], "--detector: detector folder not found: some/dir"),
        (["{demo}", "--detector", "some/dir", "--strength", "1"], "--strength needs --vector"),
        (["{demo}", "--strength", "2"], "--strength needs --vector (it has no effect without it)"),
        (["{demo}", "--max-new-tokens", "9"], "--max-new-tokens needs --explain"),
        (["{demo}", "--vector", "nope.safetensors"], "--vector needs --strength"),
        (["{demo}", "--vector", "nope.safetensors", "--strength", "1"], "--vector: file not found: nope.safetensors"),
    ],
)
def test_usage_and_input_errors_exit_2(
    run: Any, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert run(*[a.replace("{demo}", str(DEMO)) for a in args]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == f"vulnsteer: error: {message}" or (err.startswith("vulnsteer: error: ") and message in err)


@pytest.mark.parametrize("args", [["--fail-on", "1.5"], ["--format", "xml"], ["--vector", "v", "--detector", "d"]])
def test_bad_options_are_usage_errors(args: list[str]) -> None:
    try:
        code = main(["scan", str(DEMO), *args])
    except SystemExit as info:  # argparse's own checks
        code = int(info.code or 0)
    assert code == 2


@needs_grammars
def test_sarif_output_file_is_schema_valid(run: Any, tmp_path: Path, model_dir: Path) -> None:
    from checks import sarif_validator

    validator = sarif_validator()
    out = tmp_path / "out.sarif"
    code = run(str(DEMO), "--format", "sarif", "-o", str(out), "--min-score", "0")
    sarif = json.loads(out.read_text(encoding="utf-8"))
    assert not list(validator.iter_errors(sarif))
    results = sarif["runs"][0]["results"]
    assert len(results) == sarif["runs"][0]["properties"]["summary"]["functions"] == 20  # --min-score 0: all
    assert code == (1 if max(r["properties"]["score"] for r in results) >= 0.5 else 0)  # --fail-on 0.5
    assert sarif["runs"][0]["properties"]["scorer"]["model"] == model_dir.name  # --model was used (no absolute path)


@needs_grammars
def test_json_lines_one_record_per_function(run: Any, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    run(str(DEMO / "fixed"), "--format", "json", "-o", str(out))
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    records = [r for r in lines if r["type"] == "function"]
    assert len(records) == 10 and lines[-1]["type"] == "summary" and lines[-1]["functions"] == 10
    assert {r["language"] for r in records} == {"c", "cpp", "java", "javascript", "typescript", "python", "go"}
    assert all(0.0 <= r["score"] <= 1.0 for r in records)


@needs_grammars
def test_ctrl_c_writes_nothing_and_exits_130(run: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out.sarif"
    out.write_text("previous\n", encoding="utf-8")

    def interrupted(self: Any, units: Any, progress: bool = True) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(model_scorer_module.ModelScorer, "score", interrupted)
    assert run(str(DEMO), "--format", "sarif", "-o", str(out)) == 130
    assert out.read_text(encoding="utf-8") == "previous\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.sarif")] == []
    fresh = tmp_path / "new.sarif"
    assert run(str(DEMO), "--format", "sarif", "-o", str(fresh)) == 130
    assert not fresh.exists()


@needs_grammars
def test_a_saved_detector_scores_and_reports_its_probe(run: Any, model_dir: Path, tmp_path: Path) -> None:
    from toys import save_detector
    from vulnsteer.lm.model import load_model

    with load_model(str(model_dir), device="cpu") as lm:
        folder = save_detector(lm, tmp_path / "detector")
    out = tmp_path / "out.sarif"
    run(str(DEMO / "vulnerable"), "--detector", str(folder), "--format", "sarif", "-o", str(out), "--min-score", "0")
    sarif = json.loads(out.read_text(encoding="utf-8"))
    run_props = sarif["runs"][0]["properties"]["scorer"]
    assert run_props["scorer"] == "detector" and run_props["detector"] == folder.name  # (no absolute path)
    results = sarif["runs"][0]["results"]
    assert len(results) == 10
    assert all(isinstance(r["properties"]["probe"], float) and r["properties"]["push"] in (-1.0, 1.0) for r in results)


def test_cwe_filter_without_anything_that_names_a_cwe_is_warned(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A plain scan names no CWE, so `--cwe` would silently filter every finding away (a false pass in CI)."""

    assert main(["scan", str(tmp_path / "missing"), "--cwe", "89"]) == 2  # warned before the path is checked
    err = capsys.readouterr().err
    assert "--cwe keeps only findings that name a CWE" in err and "expect no findings" in err


def test_a_scan_that_finds_no_source_file_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["scan", str(tmp_path / "empty"), "--no-cache"]) == 0  # nothing at or above --fail-on
    assert "no source file scanned under" in capsys.readouterr().err


@needs_grammars
def test_detect_and_scan_give_one_function_the_same_score(
    run: Any, model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``detect`` is a view of the scan engine: the same file, prepared the same way (its comments stripped),
    scored by the same scorer, gets the same number; a file of several functions gets its functions' aggregate
    (logsumexp by default, ``--aggregation max``: the highest), led by its highest one."""
    one = tmp_path / "copy.c"
    code = "// copies a name\nvoid copy(char *src) {\n    char buf[8]; /* small? */\n    strcpy(buf, src);\n}\n"
    one.write_text(code, encoding="utf-8")
    two = tmp_path / "two.py"
    two.write_text("def f(x):\n    return eval(x)  # run it\n\n\ndef g(y):\n    return y\n", encoding="utf-8")
    model = ["--model", str(model_dir), "--device", "cpu", "--max-code-tokens", "64"]
    for mode, explain in (("logit", []), ("generation", ["--explain", "--max-new-tokens", "4"])):
        out = tmp_path / f"scan-{mode}.jsonl"
        run(str(one), str(two), "--format", "json", "-o", str(out), "--no-cache", *explain)
        records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
        scanned = [r for r in records if r["type"] == "function"]
        capsys.readouterr()
        new_tokens = ["--max-new-tokens", "4"] if explain else []
        argv = ["--no-progress", "detect", str(one), str(two), "--mode", mode, "--json", *new_tokens, *model]
        assert main(argv) == 0
        detected = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [d["file"] for d in detected] == [str(one), str(two)]
        copy = next(r for r in scanned if r["path"].endswith("copy.c"))
        assert detected[0]["p_vulnerable"] == copy["score"] and detected[0]["function"] == "copy"
        assert detected[0]["verdict"] == copy["verdict"] and detected[0]["text"] == copy["explanation"]
        functions = [r for r in scanned if r["path"].endswith("two.py")]
        top = max(functions, key=lambda r: r["score"])
        assert (detected[1]["function_p_vulnerable"], detected[1]["function"]) == (top["score"], top["function"])
        assert detected[1]["aggregation"] == "logsumexp"
        assert detected[1]["p_vulnerable"] == pytest.approx(aggregate([r["score"] for r in functions], "logsumexp"))
        assert detected[1]["functions"] == len(functions) == 2
        assert main([*argv, "--aggregation", "max"]) == 0
        maxed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert (maxed[1]["p_vulnerable"], maxed[1]["aggregation"]) == (top["score"], "max")
        assert (detected[0]["text"] is not None) == bool(explain)


@needs_grammars
def test_detect_reads_two_versions_of_a_file_by_what_tells_them_apart(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two versions of one file given together: each file's score leaves out the function both have (it is still
    scored: ``--file-functions all`` reads it), the text says so, and a bad value is refused naming the flag."""
    common = "def load(name):\n    return open(name).read()\n\n\n"
    old, new = tmp_path / "old.py", tmp_path / "new.py"
    old.write_text(common + "def run(cmd):\n    return os.system(cmd)\n", encoding="utf-8")
    new.write_text(common + "def run(cmd):\n    return subprocess.run([cmd])\n", encoding="utf-8")
    argv = ["--no-progress", "detect", str(old), str(new), "--model", str(model_dir), "--device", "cpu",
            "--max-code-tokens", "64", "--mode", "logit"]  # fmt: skip
    assert main([*argv, "--json"]) == 0
    read = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(d["functions"], d["shared_functions"], d["function"]) for d in read] == [(1, 1, "run"), (1, 1, "run")]
    assert all(d["p_vulnerable"] == d["function_p_vulnerable"] for d in read)  # the one function read
    assert main([*argv, "--json", "--file-functions", "all"]) == 0
    every = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(d["functions"], d["shared_functions"]) for d in every] == [(2, 0), (2, 0)]
    assert main(argv) == 0
    assert "(run at line 5, the highest of 1 function(s); 1 shared with another file given, left out)" in (
        capsys.readouterr().out
    )
    assert main([*argv, "--file-functions", "some"]) == 2
    assert "--file-functions: unknown value 'some'; choose from differing, all" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["scan", "detect"])
def test_a_remote_host_needs_the_nnsight_backend(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``--remote`` is nnsight's: with the hook backend it is refused (exit 2), never accepted and ignored."""
    assert main([command, str(DEMO), "--remote", "https://ndif.example"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("vulnsteer: error: --remote") and "nnsight" in err


@pytest.fixture(scope="module")
def bf16_detector(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A probe detector (random weights) fitted, as the shipped one, on the model in bfloat16."""
    import torch

    from vulnsteer.config.design import ProbeDesign
    from vulnsteer.detection.probe_detector import ProbeDetector
    from vulnsteer.lm.model import load_model
    from vulnsteer.steering.probe import Probe

    with load_model(str(model_dir), device="cpu", dtype="bfloat16") as lm:
        identity, hidden = lm.identity, lm.hidden_size
    weight = torch.randn(hidden, generator=torch.Generator().manual_seed(0))
    probe = Probe(ProbeDesign((1,), ("code_mean",)), weight, bias=0.0, threshold=0.0)
    return ProbeDetector(probe, identity).save(tmp_path_factory.mktemp("bf16") / "detector")


@needs_grammars
def test_a_bf16_probe_detector_names_its_dtype_and_caches_apart_from_fp32(
    run: Any, bf16_detector: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --dtype the scan loads the model in the detector's bfloat16 where this CPU runs it natively (else
    float32) and says so; scores of one dtype are never read back for the other."""
    from vulnsteer.lm.cpu import cpu_runs_bf16

    def scanned(*dtype: str) -> tuple[dict[str, Any], str]:
        out = tmp_path / "out.jsonl"
        run(str(DEMO / "vulnerable"), "--detector", str(bf16_detector), "--min-score", "0", "-o", str(out), *dtype)
        summary = json.loads(out.read_text(encoding="utf-8").splitlines()[-1])
        return summary, capsys.readouterr().err

    fp32, _ = scanned("--dtype", "float32")
    assert fp32["scored"] == fp32["functions"] > 0 and fp32["scorer"]["dtype_choice"] == "--dtype"
    assert fp32["scorer"]["dtype"] == "float32"
    bf16, _ = scanned("--dtype", "bfloat16")
    assert (bf16["cached"], bf16["scored"], bf16["scorer"]["dtype"]) == (0, fp32["scored"], "bfloat16")
    assert bf16["scorer"]["digest"] != fp32["scorer"]["digest"]
    assert scanned("--dtype", "float32")[0]["cached"] == fp32["functions"]  # (each dtype's own scores)
    auto, err = scanned()
    expected = "bfloat16" if cpu_runs_bf16() else "float32"
    why = "the detector's dtype; this CPU has native bf16" if expected == "bfloat16" else "this CPU has no native bf16"
    assert auto["scorer"]["dtype"] == expected and why in auto["scorer"]["dtype_choice"]
    assert auto["cached"] == auto["functions"]  # the explicit run of the same dtype scored them
    header = next(line for line in err.splitlines() if line.startswith("vulnsteer: model: "))
    assert f", {expected} (" in header and why in header, header
