"""The command line: every --help works, data commands, and one-line errors with exit 2."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from conftest import FIXTURES
from vulnsteer.cli import build_parser, main
from vulnsteer.lm.model import LoadedModel
from vulnsteer.steering.vectors import Provenance, SteeringVector

PAIRED_DIR = FIXTURES / "paired_dir"


def _subcommands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every (nested) subcommand path, e.g. ("run",), ("data", "stats")."""
    out: list[tuple[str, ...]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out.append((*prefix, name))
                out.extend(_subcommands(sub, (*prefix, name)))
    return out


SUBCOMMANDS = _subcommands(build_parser())


def test_the_expected_subcommands_exist() -> None:
    assert {
        ("run",),
        ("extract",),
        ("vectors",),
        ("vectors", "fit"),
        ("vectors", "export"),
        ("vectors", "import"),
        ("vectors", "show"),
        ("detect",),
        ("evaluate",),
        ("data",),
        ("data", "stats"),
        ("data", "validate"),
    } <= set(SUBCOMMANDS)


@pytest.mark.parametrize("path", [(), *SUBCOMMANDS], ids=lambda p: " ".join(p) or "top")
def test_every_help_exits_zero(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([*path, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: vulnsteer" + "".join(f" {p}" for p in path))


def test_no_subcommand_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert "required" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--strengths", "x"], "expected comma-separated numbers, got 'x'"),
        (["run", "--strengths", "1,two"], "expected comma-separated numbers"),
        (["run", "--layers", "1.5"], "expected comma-separated integers"),
        (["run", "--duplicates", "x"], "--duplicates: unknown value 'x'"),
        (["detect", "a.c", "--strength", "lots"], "invalid float value"),
        (["detect"], "the following arguments are required: files"),
        # a flag that would change nothing is refused, never accepted and ignored
        (["run", "--no-conditional", "--probe", "direction"], "--probe needs conditional steering"),
        (["run", "--ray-workers", "2"], "--ray-workers needs --executor ray"),
        (["run", "--format", "csv"], "--format needs --data"),
        (["evaluate", "--from", "r", "--data", "d", "--split", "val"], "--split is for --vectors"),
        (["scan", "x.c", "--remote", "https://ndif.example"], "--remote needs backend nnsight"),
        (["detect", "x.c", "--remote", "on"], "--remote needs backend nnsight"),
        (["vectors", "fit", "--out", "v", "--respect-upstream-split"], "--respect-upstream-split needs --data"),
    ],
)
def test_bad_arguments_are_usage_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = main(argv)
    except SystemExit as info:  # argparse's own checks
        code = int(info.code or 0)
    assert code == 2
    assert message in capsys.readouterr().err


def test_data_stats_on_the_paired_dir_fixture(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "stats", str(PAIRED_DIR), "--no-tokens"]) == 0
    out = capsys.readouterr().out
    assert f"{PAIRED_DIR}: 8 samples" in out
    for cwe in ("CWE-22", "CWE-79", "CWE-89", "CWE-787"):
        assert cwe in out


def test_data_stats_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "stats", str(PAIRED_DIR), "--json", "--no-tokens"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["samples"] == 8
    assert stats["vulnerable"] == stats["secure"] == stats["pairs"] == 4
    assert set(stats["by_cwe"]) == {"CWE-22", "CWE-79", "CWE-89", "CWE-787"}


def test_data_validate_on_a_valid_dataset(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "validate", str(PAIRED_DIR)]) == 0
    assert "valid" in capsys.readouterr().out


def _bad_jsonl(tmp_path: Path) -> Path:
    path = tmp_path / "bad.jsonl"
    rows = [
        '{"code": "x = 1", "label": "secure", "cwe": "CWE-89", "language": "python"}',
        '{"code": "y = 2", "label": "vulnerable", "cwe": "CWE-89"',
        '{"code": "z = 3", "label": "maybe", "cwe": "CWE-89"}',
        '{"label": "secure", "cwe": "CWE-89"}',
        '{"code": "w = 4", "label": "vulnerable", "cwe": "CWE-89"}',
    ]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_data_validate_lists_every_problem_with_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _bad_jsonl(tmp_path)
    assert main(["data", "validate", str(path)]) == 1
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert any(line.startswith(f"{path}:2:") and "malformed JSON" in line for line in lines)
    assert any(line.startswith(f"{path}:3:") and "'label'" in line for line in lines)
    assert any(line.startswith(f"{path}:4:") and "'code'" in line for line in lines)
    assert not any(line.startswith((f"{path}:1:", f"{path}:5:")) for line in lines)
    assert "3 problem(s)" in captured.err


def test_data_stats_on_malformed_data_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _bad_jsonl(tmp_path)
    assert main(["data", "stats", str(path), "--no-tokens"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vulnsteer: error: ")
    assert f"{path}:2" in err
    assert "Traceback" not in err


def test_detect_missing_file_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no_such_file.c"
    assert main(["--no-progress", "detect", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vulnsteer: error: ")
    assert "no_such_file.c" in err
    assert "Traceback" not in err


def test_detect_empty_file_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.py"
    empty.write_text("  \n", encoding="utf-8")
    assert main(["detect", str(empty)]) == 2
    err = capsys.readouterr().err
    assert "empty.py" in err and "empty" in err


def test_data_validate_missing_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere"
    code = main(["data", "validate", str(missing)])
    captured = capsys.readouterr()
    assert code in (1, 2)
    assert "nowhere" in captured.out + captured.err


# ---------------------------------------------------------------- with the embedded model


@pytest.mark.model
def test_detect_one_file_in_logit_mode(
    embedded: LoadedModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "copy.c"
    src.write_text("void copy(char *src) {\n    char buf[8];\n    strcpy(buf, src);\n}\n", encoding="utf-8")
    assert main(["--no-progress", "detect", str(src), "--mode", "logit", "--device", "cpu", "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["file"] == str(src)
    assert record["language"] == "c"
    assert record["verdict"] in ("vulnerable", "secure")
    assert 0.0 <= record["p_vulnerable"] <= 1.0
    assert record["truncated"] is False
    # a stated prevalence needs the detector's minimum of functions to adapt from: one function is scored as fitted
    assert main(["--no-progress", "detect", str(src), "--device", "cpu", "--prevalence", "0.2"]) == 0
    captured = capsys.readouterr()
    assert "--prevalence not applied: 1 distinct functions, fewer than the 20" in captured.err
    assert captured.out.startswith(f"{src}: ")


@pytest.mark.model
def test_detect_refuses_a_vector_for_another_model(
    embedded: LoadedModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "a.py"
    src.write_text("import os\nos.system(input())\n", encoding="utf-8")
    vec_path = tmp_path / "tiny.safetensors"
    prov = Provenance("tiny", "f" * 16, 64, (1,), "last", "mean_diff", "CWE-78", 1, 1, "h", "t")
    SteeringVector({1: torch.ones(64)}, prov).save(vec_path)
    argv = [
        "--no-progress",
        "detect",
        str(src),
        "--mode",
        "logit",
        "--device",
        "cpu",
        "--vector",
        str(vec_path),
        "--strength",
        "4",
    ]
    assert main(argv) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # (transformers may draw a loading bar first)
    assert last.startswith("vulnsteer: error: ")
    assert "tiny.safetensors" in last and "hidden size 64" in last and "576" in last


def test_run_flags_default_to_the_config_defaults() -> None:
    from vulnsteer.cli.options import config_from_args
    from vulnsteer.config.experiment import ExperimentConfig

    for argv in (["run"], ["evaluate", "--vectors", "v", "--strength", "1"]):
        assert config_from_args(build_parser().parse_args(argv)) == ExperimentConfig()
    drop = config_from_args(build_parser().parse_args(["run", "--duplicates", "drop"]))
    assert drop.data.duplicates == "drop"
