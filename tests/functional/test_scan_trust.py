"""``vulnsteer scan`` as a CI gate a careful user can trust: a catalogue, each command run as its own process.

Each case: the command, its exit code, the one stderr line that names the file or option, nothing read outside
the scanned folders, every source file not scanned named (and failing the gate unless ``--allow-unscanned``),
findings on stdout and the summary on stderr, suppression inline and by baseline, SARIF without absolute paths.
The model is a tiny random one, so the cases never depend on what it scores: ``--min-score 1`` makes a scan with
no finding, ``--min-score 0`` one where every function is a finding.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cli_runner import ForkServer, Result, cli_env
from conftest import REPO, write_file
from vulnsteer.data.functions import tree_sitter_available

pytestmark = pytest.mark.skipif(not tree_sitter_available(), reason="tree-sitter-language-pack not installed")

SECRET = "int topsecret_fn(void) { return 4242; }\n"
C_OK = "int add_one(int a) {\n    return a + 1;\n}\n"


@dataclass
class Tree:
    root: Path
    model: Path
    cache: Path

    def scan(self, cli: ForkServer, *args: str, cwd: Path | None = None) -> Result:
        argv = ["--no-progress", "scan", *args, "--model", str(self.model), "--device", "cpu", "--no-cache"]
        return cli.run(argv, cwd=cwd or self.root)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer) -> Tree:  # type: ignore[no-untyped-def]
    from conftest import make_tiny

    root = tmp_path_factory.mktemp("trust")
    model = root / "tiny"
    lm = make_tiny(tiny_tokenizer, "llama", layers=2)
    lm.model.save_pretrained(model)
    tiny_tokenizer.save_pretrained(model)
    # a scanned folder with links out of it, and the secret they point at
    write_file(root / "secret" / "secret.c", SECRET)
    write_file(root / "secret" / "more" / "deep.c", SECRET)
    write_file(root / "linked" / "ok.c", C_OK)
    (root / "linked" / "link.c").symlink_to(Path("..") / "secret" / "secret.c")
    (root / "linked" / "linkdir").symlink_to(Path("..") / "secret" / "more", target_is_directory=True)
    (root / "linked" / "inside.c").symlink_to("ok.c")  # a link inside the folder is read
    # a file over --max-file-bytes next to a small one
    write_file(root / "big" / "small.c", C_OK)
    write_file(root / "big" / "huge.c", C_OK + "/* padding */\n" * 200)
    # a file name that is not UTF-8
    write_file(root / "names" / "ok.c", C_OK)
    write_file(Path(os.fsdecode(bytes(root / "names") + b"/caf\xe9.c")), "int cafe(int b) {\n    return b * 2;\n}\n")
    # a folder that a .gitignore above it ignores
    write_file(root / "repo" / ".gitignore", "generated/\n")
    (root / "repo" / ".git").mkdir()
    write_file(root / "repo" / "generated" / "gen.c", C_OK)
    # 24 functions, one of them with a syntax error in its file, two with inline ignores
    many = "".join(f"int f{i}(int a) {{\n    return a + {i};\n}}\n\n" for i in range(22))
    write_file(root / "many" / "lib.c", many)
    write_file(
        root / "many" / "ignored.c",
        "// vulnsteer: ignore\nint quiet(int a) {\n    return a;\n}\n\n"
        "int typed(int a) { // vulnsteer: ignore[CWE-89]\n    return a;\n}\n",
    )
    write_file(root / "broken" / "bad.c", "int good(int a) {\n    return a;\n}\n\nint broken( {\n  @@@ ;;\n}\n")
    return Tree(root, model, root / "cache")


@pytest.fixture(scope="module")
def cli(tree: Tree) -> Iterator[ForkServer]:
    server = ForkServer(tree.root, cli_env(tree.cache), warm=(tree.model,))
    yield server
    server.close()


def _records(result: Result) -> tuple[list[dict], dict]:
    lines = [json.loads(line) for line in result.out.splitlines()]
    assert lines and lines[-1]["type"] == "summary", result.out
    return [r for r in lines if r["type"] == "function"], lines[-1]


def _one_line(result: Result, *needles: str) -> str:
    found = [line for line in result.err_lines if all(n in line for n in needles)]
    assert len(found) == 1, f"{needles} in one line of:\n{result.err}"
    return found[0]


# ---------------------------------------------------------------- item 2: nothing read outside the scanned folder


def test_links_out_of_the_folder_are_not_read_and_are_named(tree: Tree, cli: ForkServer) -> None:
    result = tree.scan(cli, "linked", "--format", "json", "--min-score", "1", "--explain", "--max-new-tokens", "4")
    assert result.rc == 0, result.err
    records, summary = _records(result)
    assert sorted(r["path"] for r in records) == ["linked/inside.c", "linked/ok.c"]
    assert "topsecret" not in result.out + result.err
    _one_line(result, "linked/link.c", "out of the scanned folder", "not read")
    _one_line(result, "linked/linkdir", "out of the scanned folder", "not followed")
    assert summary["skipped"] == {"symbolic link out of the scanned folder": 2}


# ---------------------------------------------------------------- item 4: a file not scanned fails the gate


def test_a_source_file_over_the_size_limit_fails_the_gate_by_name(tree: Tree, cli: ForkServer) -> None:
    result = tree.scan(cli, "big", "--max-file-bytes", "1000", "--min-score", "1")
    assert result.rc == 1, result.err
    assert result.out == "no findings at or above 1.00\n"
    _one_line(result, "not scanned: big/huge.c", "over --max-file-bytes 1000")
    _one_line(result, "fails:", "1 source file not scanned", "--allow-unscanned")
    assert "1 source file NOT scanned (1 too large)" in _one_line(result, "cached, ")
    allowed = tree.scan(cli, "big", "--max-file-bytes", "1000", "--min-score", "1", "--allow-unscanned")
    assert allowed.rc == 0, allowed.err
    _one_line(allowed, "not scanned: big/huge.c")  # still named
    assert not any("fails:" in line for line in allowed.err_lines)


# ---------------------------------------------------------------- item 5: a file name that is not UTF-8


def test_a_file_name_that_is_not_utf8_is_scanned_and_shown_escaped(tree: Tree, cli: ForkServer) -> None:
    result = tree.scan(cli, "names", "--format", "json", "--min-score", "1")
    assert result.rc == 0, result.err
    records, _ = _records(result)
    assert sorted(r["path"] for r in records) == ["names/caf\\xe9.c", "names/ok.c"]
    sarif = tree.scan(cli, "names", "--format", "sarif", "--min-score", "0")
    uris = {
        r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
        for r in json.loads(sarif.out)["runs"][0]["results"]
    }
    assert uris == {"names/caf%E9.c", "names/ok.c"}  # the URI of the bytes the name has


# ---------------------------------------------------------------- item 8: tree-sitter, and a .gitignore above


def test_a_folder_ignored_by_a_gitignore_above_names_that_gitignore(tree: Tree, cli: ForkServer) -> None:
    result = tree.scan(cli, "repo/generated", "--min-score", "1")
    assert result.rc == 0, result.err
    line = _one_line(result, "no source file scanned under repo/generated")
    assert str(tree.root / "repo" / ".gitignore") in line and "--no-gitignore" in line
    scanned = tree.scan(cli, "repo/generated", "--min-score", "1", "--no-gitignore")
    assert "1 file, 1 function" in scanned.err


def test_scan_without_tree_sitter_refuses_and_names_the_install(tree: Tree) -> None:
    probe = (
        "import sys\nimport vulnsteer.data.functions as f\nf.tree_sitter_available = lambda: False\n"
        "from vulnsteer.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe, "scan", "big", "--no-cache"],
        cwd=tree.root,
        capture_output=True,
        text=True,
        env=cli_env(tree.cache),
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "vulnsteer: error: scan splits files into functions with tree-sitter, which is not installed: "
        "pip install 'vulnsteer[scan]' (or `make setup`)"
    ]


def test_make_setup_installs_the_scan_extra() -> None:
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    setup = makefile.split("$(VENV)/.setup-done:", 1)[1].split("\n\n", 1)[0]
    assert '-e ".[scan]"' in setup, setup


# ---------------------------------------------------------------- item 9: the gate below the findings


def test_fail_on_below_min_score_is_refused(tree: Tree, cli: ForkServer) -> None:
    result = tree.scan(cli, "big", "--fail-on", "0.3", "--min-score", "0.5")
    assert result.rc == 2
    assert result.err_lines == [
        "vulnsteer: error: --fail-on 0.3 is below --min-score 0.5: a function could fail the scan without being "
        "reported; lower --min-score to 0.3 or raise --fail-on"
    ]


def test_the_gate_follows_min_score_and_names_the_function_that_trips_it(tree: Tree, cli: ForkServer) -> None:
    result = tree.scan(cli, "big/small.c", "--min-score", "0")
    assert result.rc == 1, result.err
    _one_line(result, "fails: 1 function at or above --fail-on 0.00", "big/small.c:1:1 add_one")
    assert "add_one" in result.out


# ---------------------------------------------------------------- item 14: scores that do not discriminate


def test_scores_that_flag_everything_are_warned_about(tree: Tree, cli: ForkServer) -> None:
    result = tree.scan(cli, "many/lib.c", "--min-score", "0", "--format", "sarif")
    assert result.rc == 1
    line = _one_line(result, "warning: the scores do not discriminate", "22 of 22 functions")
    assert "--detector" in line
    run = json.loads(result.out)["runs"][0]
    assert run["properties"]["summary"]["discriminates"] is False
    assert any("do not discriminate" in w for w in run["properties"]["summary"]["warnings"])
    small = tree.scan(cli, "big/small.c", "--min-score", "0")
    assert not any("discriminate" in line for line in small.err_lines)  # under 20 functions: no judgement


def test_flat_scores_with_nothing_flagged_are_warned_about_by_their_spread(tree: Tree, cli: ForkServer) -> None:
    """Found re-running item 14: with --min-score 0.99 nothing was flagged and the warning's evidence read
    '0 of 22 functions score at or above 0.99', as if flagging nothing were the problem; it is the spread."""
    result = tree.scan(cli, "many/lib.c", "--min-score", "0.999")
    line = _one_line(result, "warning: the scores do not discriminate", "every one of 22 functions scores between")
    assert " of 22 functions score at or above" not in line


# ---------------------------------------------------------------- item 16: output, suppression, baseline, SARIF


def test_findings_on_stdout_summary_and_parse_errors_on_stderr(tree: Tree, cli: ForkServer) -> None:
    result = tree.scan(cli, "broken", "--min-score", "0")
    assert result.out.splitlines()[0].split() == ["SCORE", "LEVEL", "CWE", "LOCATION", "FUNCTION"]
    assert "functions (" not in result.out
    _one_line(result, "(0 cached, ")
    _one_line(result, "broken/bad.c: parse errors")


def test_inline_ignore_comments_keep_findings_out(tree: Tree, cli: ForkServer) -> None:
    result = tree.scan(cli, "many/ignored.c", "--min-score", "0", "--format", "json")
    records, summary = _records(result)
    by_name = {r["function"]: r for r in records}
    assert by_name["quiet"]["triaged"] == "inline" and not by_name["quiet"]["finding"]
    assert by_name["typed"]["finding"] and by_name["typed"]["triaged"] is None  # ignore[CWE-89]: no CWE named
    assert summary["suppressed"] == 1 and summary["findings"] == 1
    assert "1 suppressed inline" in _one_line(result, "cached, ")


def test_a_baseline_keeps_known_findings_out(tree: Tree, cli: ForkServer) -> None:
    first = tree.scan(cli, "big/small.c", "--min-score", "0", "--format", "sarif", "-o", "base.sarif")
    assert first.rc == 1
    again = tree.scan(cli, "big/small.c", "--min-score", "0", "--baseline", "base.sarif")
    assert again.rc == 0, again.err
    assert again.out == "no findings at or above 0.00\n"
    assert "1 in the baseline" in _one_line(again, "cached, ")
    json_base = tree.scan(cli, "big/small.c", "--min-score", "0", "--format", "json", "-o", "base.jsonl")
    assert json_base.rc == 1
    assert tree.scan(cli, "big/small.c", "--min-score", "0", "--baseline", "base.jsonl").rc == 0
    bad = tree.scan(cli, "big/small.c", "--baseline", "big/small.c")
    assert bad.rc == 2 and "--baseline big/small.c" in bad.err_lines[-1]


def test_sarif_has_severity_and_no_absolute_path(tree: Tree, cli: ForkServer) -> None:
    result = tree.scan(cli, str(tree.root / "big" / "small.c"), "--min-score", "0", "--format", "sarif")
    run = json.loads(result.out)["runs"][0]
    assert all(float(rule["properties"]["security-severity"]) > 0 for rule in run["tool"]["driver"]["rules"])
    assert run["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"] == {
        "uri": "big/small.c",
        "uriBaseId": "%SRCROOT%",
    }
    assert str(tree.root) not in result.out and "file://" not in result.out
    outside = tree.scan(
        cli, "../" + tree.root.name + "/big/small.c", "--min-score", "0", "--format", "sarif", cwd=tree.root / "many"
    )
    assert str(tree.root) not in outside.out and "file://" not in outside.out


# ---------------------------------------------------------------- found trying it: -o out.sarif writes SARIF


def test_output_named_sarif_or_json_gets_that_format(tree: Tree, cli: ForkServer) -> None:
    result = tree.scan(cli, "big/small.c", "--min-score", "0", "-o", "guess.sarif")
    assert result.rc == 1 and result.out == ""
    assert json.loads((tree.root / "guess.sarif").read_text(encoding="utf-8"))["version"] == "2.1.0"
    tree.scan(cli, "big/small.c", "--min-score", "0", "-o", "guess.jsonl")
    lines = (tree.root / "guess.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["type"] for line in lines] == ["function", "file", "summary"]


def test_a_rescan_does_not_count_its_own_output_as_a_skipped_file(tree: Tree, cli: ForkServer) -> None:
    """Found re-running the issue-19 catalogue: scanning a folder with -o inside it twice, the second scan counted
    the first one's SARIF as a skipped file (unknown language)."""
    write_file(tree.root / "selfout" / "a.c", C_OK)
    args = ("selfout", "--min-score", "0", "--allow-unscanned", "-o", "selfout/report.sarif")
    first, second = tree.scan(cli, *args), tree.scan(cli, *args)
    assert (tree.root / "selfout" / "report.sarif").is_file()
    assert "skipped" not in second.err and first.err.splitlines()[-1] == second.err.splitlines()[-1]
