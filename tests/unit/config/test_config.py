"""The experiment configuration: one object from TOML or flags, validated with messages naming the key or flag."""

from __future__ import annotations

import argparse
import dataclasses
import doctest
import sys
from pathlib import Path

import pytest

from conftest import EXAMPLES
from vulnsteer.cli import build_parser
from vulnsteer.cli.options import config_from_args
from vulnsteer.config import experiment as config_mod
from vulnsteer.config import values as values_mod
from vulnsteer.config.experiment import (
    ConfigError,
    ExperimentConfig,
    config_document,
    config_keys,
    identity_of,
    load_config,
    parse_config,
)
from vulnsteer.config.resolved import dump_config
from vulnsteer.config.vocabulary import METHOD_NAMES, MODES, POSITIONS, STRENGTH_UNITS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def test_type_checker_names_hold_the_vocabulary() -> None:
    """The ``Literal`` types mypy reads name exactly the values of the one tuple (no copy of a vocabulary)."""
    from typing import get_args

    from vulnsteer.steering.hooks import PositionMode, StrengthUnit
    from vulnsteer.steering.vectors import METHODS

    assert get_args(PositionMode) == POSITIONS and get_args(StrengthUnit) == STRENGTH_UNITS
    assert tuple(METHODS) == METHOD_NAMES and MODES == ("logit", "generation")


def test_examples_parse() -> None:
    for path in sorted(EXAMPLES.glob("*.toml")):
        config = load_config(path)
        assert config.detection.modes and config.steering.strengths, path
    default = load_config(EXAMPLES / "default.toml")
    assert default.steering.layers == ((10,), (15,), (20,), (10, 15, 20))
    assert all(unit == "relative" for unit, _ in default.steering.strengths)


def test_unknown_keys_are_rejected_with_name_and_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[steering]\nstrenghts = [1.0]\n")
    with pytest.raises(ConfigError, match=r"bad\.toml.*steering\.strenghts.*known in \[steering\]: layers, strengths"):
        load_config(bad)
    bad.write_text("[stearing]\nlayers = [1]\n")
    with pytest.raises(ConfigError, match=r"bad\.toml.*stearing"):
        load_config(bad)
    bad.write_text("model = 'x'\n")
    with pytest.raises(ConfigError, match="'model' must be a table"):
        load_config(bad)
    bad.write_text("[model\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(FileNotFoundError, match=r"missing\.toml"):
        load_config(tmp_path / "missing.toml")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[vectors]\nmethods = ['magic']", r"vectors\.methods.*magic"),
        ("[vectors]\npooling = ['first']", r"vectors\.pooling.*first"),
        ("[steering]\nlayers = [[]]", "empty"),
        ("[steering]\nlayers = [[3, 3]]", "repeats"),
        ("[steering]\nstrengths = [1.0]", "steering.unit"),
        ("[steering]\nstrengths = { furlongs = [1.0] }", "furlongs"),
        ("[steering]\nstrengths = [1.0, inf]\nunit = 'raw'", "finite"),
        ("[steering]\nstrengths = { raw = [1.0] }\nunit = 'raw'", "plain list"),
        ("[steering]\npositions = ['middle']", r"steering\.positions.*middle"),
        ("description = 3", "description"),
        ("[steering]\nstrengths = { raw = [0.0] }", "non-zero"),
        ("[data]\nfractions = [0.5, 0.5, 0.5]", "fractions"),
        ("[data]\ncwes = ['not-a-cwe']", r"data\.cwes"),
        ("[data]\nmax_code_tokens = 8", "at least 32"),
        ("[detection]\nmodes = ['vibes']", "vibes"),
        ("[detection]\nbatch_size = 0", r"detection\.batch_size: must be at least 1"),
        ("[detection]\nselect_generation_by = 'coin'", "coin"),
        ("[run]\ncache = 'yes'", "true or false"),
        ("[transfer]\ntokens = [-1.0]", r"transfer\.tokens: must not be negative"),
        ("[transfer]\ntokens_C = [0.0]", r"transfer\.tokens_C"),
        ("[conditional]\ndesigns = [{layers = [2], tokens = -1.0}]", r"conditional\.designs\[0\].*tokens"),
    ],
)
def test_invalid_values_name_the_key(tmp_path: Path, text: str, match: str) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(text + "\n")
    with pytest.raises(ConfigError, match=match):
        load_config(bad)


def test_resolved_config_round_trips() -> None:
    config = parse_config(
        {
            "data": {"cwes": [89, "cwe-78"], "merge": {"77": "78"}, "max_pairs_per_cwe": 5},
            "steering": {"layers": [10, [-1, 5]], "strengths": [0.1, -0.2], "unit": "relative"},
        }
    )
    assert config.data.cwes == ("CWE-89", "CWE-78")
    assert config.steering.layers == ((10,), (-1, 5))
    assert config.steering.strengths == (("relative", 0.1), ("relative", -0.2))
    config = dataclasses.replace(config, description='a "quoted" sweep')
    text = dump_config(config, "header")
    assert parse_config(tomllib.loads(text)) == config
    mixed = parse_config({"steering": {"strengths": {"raw": [2, 4], "relative": [0.1]}}})
    assert parse_config(tomllib.loads(dump_config(mixed))) == mixed
    assert parse_config(tomllib.loads(dump_config(ExperimentConfig()))) == ExperimentConfig()


def test_every_key_is_written_with_its_help() -> None:
    text = dump_config(ExperimentConfig())
    for key in config_keys():
        assert f"{key.name}" in text and key.help.split()[0] in text, key.dotted


def test_data_path_is_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    file = tmp_path / "sub" / "c.toml"
    file.write_text('[data]\npath = "../data/x.jsonl"\n')
    assert load_config(file).data.path == str((tmp_path / "data" / "x.jsonl").resolve())


def test_a_unit_alone_re_units_the_default_strengths() -> None:
    config = parse_config({"steering": {"unit": "raw"}})
    assert config.steering.strengths == tuple(("raw", s) for _, s in ExperimentConfig().steering.strengths)


def test_identity_ignores_where_and_how_fast() -> None:
    a = ExperimentConfig()
    b = a.replace(run__out="elsewhere", run__group_size=3, run__cache=False, run__prefix_cache_mib=0)
    # the device as written and the batch size do not change the numbers (the resolved device is in the model key)
    b = b.replace(model__device="cpu", detection__batch_size=4, model__backend="nnsight")
    assert identity_of(a) == identity_of(b)
    assert identity_of(a) != identity_of(a.replace(steering__layers=[[1]]))


def test_selection_modes() -> None:
    assert ExperimentConfig().selecting_modes() == ("logit",)
    own = ExperimentConfig().replace(detection__select_generation_by="generation")
    assert own.selecting_modes() == ("logit", "generation") and own.selection_mode("generation") == "generation"
    only_gen = ExperimentConfig().replace(detection__modes=["generation"])
    assert only_gen.selection_mode("generation") == "generation"


def _args(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def test_flags_build_the_same_config_as_toml() -> None:
    args = _args(
        [
            "run",
            "--layers",
            "10",
            "--layers",
            "10,15",
            "--strengths",
            "0.5,-1",
            "--unit",
            "raw",
            "--cwe",
            "89",
            "--cwe",
            "78",
            "--modes",
            "logit",
            "--pooling",
            "code_mean",
            "--no-probes",
            "--max-pairs-per-cwe",
            "0",
            "--out",
            "x",
        ]
    )
    from_flags = config_from_args(args)
    from_toml = parse_config(
        {
            "data": {"cwes": ["CWE-89", "CWE-78"], "max_pairs_per_cwe": 0},
            "vectors": {"pooling": ["code_mean"]},
            "steering": {"layers": [[10], [10, 15]], "strengths": {"raw": [0.5, -1.0]}},
            "detection": {"modes": ["logit"]},
            "report": {"probes": False},
            "run": {"out": "x"},
        }
    )
    assert from_flags == from_toml
    assert config_from_args(_args(["run"])) == ExperimentConfig()


def test_flag_errors_name_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match="--batch-size: must be at least 1"):
        config_from_args(_args(["run", "--batch-size", "0"]))
    with pytest.raises(ConfigError, match="--modes: unknown value 'vibes'"):
        config_from_args(_args(["run", "--modes", "vibes"]))
    with pytest.raises(ConfigError, match=r"--strengths: say the strengths' unit with --unit"):
        config_from_args(_args(["sweep", "x.toml", "--strengths", "1"]))  # no unit: the file does not say either
    with pytest.raises(ConfigError, match=r"--strengths: relative strength 1e\+30 .* far beyond the hidden-state"):
        config_from_args(_args(["run", "--strengths", "1e30", "--unit", "relative"]))


def test_flags_override_a_file(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text("[detection]\nmodes = ['logit']\nbatch_size = 4\n")
    config = config_from_args(_args(["sweep", str(file), "--batch-size", "2"]), str(file))
    assert config.detection.batch_size == 2 and config.detection.modes == ("logit",)


def test_every_flag_help_shows_its_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for key in config_keys():
        if key.flag:
            assert key.flag in text, key.flag
    assert "default: -1,-0.3,0.3,1 (relative)" in text and "default: the middle layer" in text


def test_config_doc_has_every_section() -> None:
    doc = config_document(ExperimentConfig())
    assert set(doc) == {
        "model",
        "data",
        "vectors",
        "steering",
        "detection",
        "conditional",
        "baselines",
        "report",
        "run",
        "transfer",
    }


def test_module_doctests() -> None:
    for module in (config_mod, values_mod):
        assert doctest.testmod(module, optionflags=doctest.ELLIPSIS).failed == 0


def test_paths_given_relative_are_absolute_so_a_resolved_config_works_from_anywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`run --data d/x.jsonl --out runs/r` from one folder: its resolved config names the same files (and the same
    run folder) when `sweep RUN/config.resolved.toml` runs from another folder."""
    from vulnsteer.config.resolved import dump_config

    monkeypatch.chdir(tmp_path)
    config = parse_config({}, "command line", {"data.path": ("d/x.jsonl", "--data"), "run.out": ("runs/r", "--out")})
    assert config.data.path == str(tmp_path / "d" / "x.jsonl") and config.run.out == str(tmp_path / "runs" / "r")
    resolved = tmp_path / "runs" / "r" / "config.resolved.toml"
    resolved.parent.mkdir(parents=True)
    resolved.write_text(dump_config(config))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    again = load_config(resolved)
    assert (again.data.path, again.run.out) == (config.data.path, config.run.out)
    assert parse_config({"data": {"paths": ["builtin", "a.jsonl"]}}).data.paths == (
        "builtin",
        str(elsewhere / "a.jsonl"),
    )
    with pytest.raises(ConfigError, match=r"data\.format: unknown value 'parquet'"):
        parse_config({"data": {"format": "parquet"}})
    with pytest.raises(ConfigError, match=r"conditional\.band: must not be negative"):
        parse_config({"conditional": {"band": -1.0}})


def test_value_errors_name_the_key_once() -> None:
    with pytest.raises(ConfigError) as cwes:
        parse_config({"data": {"cwes": "CWE-89"}}, "f.toml")
    assert str(cwes.value) == "f.toml: data.cwes: expected a list, got 'CWE-89'"
    with pytest.raises(ConfigError) as merge:
        parse_config({"data": {"merge": ["77"]}}, "f.toml")
    assert str(merge.value) == "f.toml: data.merge: expects FROM=TO (e.g. 77=78), got '77'"
    with pytest.raises(ConfigError, match=r"max_pairs_per_cwe: must be 0 \(no cap\) or a positive number of pairs"):
        parse_config({"data": {"max_pairs_per_cwe": -1}}, "f.toml")


def test_a_folder_given_as_a_config_file_is_said_so(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="is a folder, not a config file"):
        load_config(tmp_path)
