"""Dataset loaders: every format on tiny fixtures, every error message, and the real data in ../shared/data."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
from pygments.token import Name

from conftest import FIXTURES, SHARED_DATA
from vulnsteer.config.vocabulary import DATASET_FORMATS
from vulnsteer.data.clean import lex, strip_comments, token_kind
from vulnsteer.data.functions import tree_sitter_available
from vulnsteer.data.loaders import (
    DataError,
    LoadReport,
    dataset_stats,
    detect_format,
    load_samples,
    parse_label,
    validate,
)
from vulnsteer.data.sample import count_by_cwe

# --------------------------------------------------------------------------- helpers


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def sven_row(before: str = "def f(x):\n    os.system(x)\n", after: str = "def f(x):\n    run([x])\n", **kw: object):
    row: dict[str, object] = {
        "func_name": "f",
        "func_src_before": before,
        "func_src_after": after,
        "vul_type": "cwe-078",
        "file_name": "tool.py",
        "commit_link": "github.com/acme/tool/commit/abc",
        "line_changes": {
            "deleted": [{"line_no": 2, "char_start": 10, "char_end": 30, "line": "    os.system(x)\n"}],
            "added": [{"line_no": 2, "char_start": 10, "char_end": 25, "line": "    run([x])\n"}],
        },
    }
    row.update(kw)
    return row


def names_in(code: str, language: str) -> set[str]:
    return {text for _, ttype, text in lex(code, language) if ttype in Name}


def assert_delabelled(code: str, language: str) -> None:
    labelled = {n for n in names_in(code, language) if re.search(r"(?i)bad|good|^CWE\d", n)}
    assert not labelled, f"label-carrying identifiers left: {sorted(labelled)}\n{code}"
    comments = [text for _, ttype, text in lex(code, language) if token_kind(ttype) == "comment"]
    assert not comments, f"comments left: {comments}\n{code}"


# --------------------------------------------------------------------------- strip_comments


@pytest.mark.parametrize(
    ("language", "code", "expected"),
    [
        (
            "c",
            '/* header */\n#include <stdio.h> /* inc */\nint x = 1; // one\nchar *s = "/* kept */ // kept";\n',
            '#include <stdio.h>\nint x = 1;\nchar *s = "/* kept */ // kept";\n',
        ),
        ("cpp", "int/*gap*/y = 2;\n    // alone\n    f(y);\n", "int y = 2;\n    f(y);\n"),
        (
            "java",
            '/** doc */\npublic void f() { String s = "// x"; } // end\n',
            'public void f() { String s = "// x"; }\n',
        ),
        ("python", '# c\nx = "# not"  # yes\n\n\n# gone\n\ny = 2\n', 'x = "# not"\n\n\ny = 2\n'),
        ("javascript", 'let u = "http://x"; // c\n/* b */ let v = 1;\n', 'let u = "http://x";\nlet v = 1;\n'),
        ("go", 'x := "// no" // yes\n/* block\n   comment */\ny := 2\n', 'x := "// no"\ny := 2\n'),
        ("ruby", 'x = "# no" # yes\n=begin\nblock\n=end\ny = 2\n', 'x = "# no"\ny = 2\n'),
    ],
)
def test_strip_comments(language: str, code: str, expected: str) -> None:
    assert strip_comments(code, language) == expected


@pytest.mark.parametrize("language", ["c", "cpp", "java", "javascript", "go"])
def test_strip_comments_without_final_newline(language: str) -> None:
    assert strip_comments("x = 1; // tail", language) == "x = 1;"
    assert strip_comments("x = 1;\n", language) == "x = 1;\n"


def test_strip_comments_keeps_preprocessor_and_unknown_language_fails() -> None:
    code = "#ifdef _WIN32\n#define SEP '\\\\'\n#endif /* _WIN32 */\n"
    assert strip_comments(code, "c") == "#ifdef _WIN32\n#define SEP '\\\\'\n#endif\n"
    with pytest.raises(ValueError, match="no lexer"):
        strip_comments("x", "no-such-language")


# --------------------------------------------------------------------------- sven / safecoder


def test_sven_pairs_meta_and_identical_rows(tmp_path: Path) -> None:
    root = tmp_path / "sven" / "data_train_val"
    write_jsonl(root / "train" / "cwe-078.jsonl", [sven_row(), sven_row(before="same\n", after="same\n")])
    write_jsonl(root / "val" / "cwe-078.jsonl", [sven_row(file_name="x.cc", vul_type="CWE-78")])
    report = LoadReport()
    samples = load_samples(tmp_path / "sven", report=report)
    assert report.dropped_identical == 1
    assert report.files_read == 2
    assert count_by_cwe(samples) == {"CWE-78": {"vulnerable": 2, "secure": 2, "pairs": 2}}
    train = [s for s in samples if s.meta["upstream_split"] == "train"]
    vuln, fixed = sorted(train, key=lambda s: s.label, reverse=True)
    assert (vuln.label, fixed.label) == ("vulnerable", "secure")
    assert vuln.pair_id == fixed.pair_id == "sven:train:cwe-078:1"
    assert vuln.group == "commit:github.com/acme/tool/commit/abc"
    assert vuln.language == "python" and vuln.source == "sven"
    assert "os.system" in vuln.code and "commit" not in vuln.code
    assert vuln.meta["changed_lines"] == [2] and fixed.meta["changed_lines"] == [2]
    assert vuln.meta["file_name"] == "tool.py"
    assert {s.language for s in samples if s.meta["upstream_split"] == "val"} == {"cpp"}
    assert len({s.id for s in samples}) == len(samples)
    # the loader's upstream split is what respect_upstream splitting reads: upstream val becomes test
    from vulnsteer.data.splits import split_samples

    sp = split_samples(samples, (0.7, 0.3, 0.0), seed=0, respect_upstream=True)
    assert {s.id for s in sp.test} == {s.id for s in samples}  # one commit in train and val: all of it to test
    assert sp.notes["upstream_straddling_groups"] == ["commit:github.com/acme/tool/commit/abc"]
    other_commit = sven_row(file_name="x.cc", commit_link="github.com/acme/tool/commit/d")
    write_jsonl(root / "val" / "cwe-078.jsonl", [other_commit])
    samples = load_samples(tmp_path / "sven")
    sp = split_samples(samples, (0.7, 0.3, 0.0), seed=0, respect_upstream=True)
    assert {s.id for s in sp.test} == {s.id for s in samples if s.meta["upstream_split"] == "val"} != set()
    assert sp.notes["without_upstream_split"] == 0 and not sp.notes["upstream_straddling_groups"]


def test_safecoder_source_from_path(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "safecoder" / "train" / "sec-new-desc.jsonl", [sven_row(commit_msg="fix")])
    assert detect_format(path) == "sven"
    samples = load_samples(path)
    assert {s.source for s in samples} == {"safecoder"}
    assert samples[0].meta["commit_msg"] == "fix"


def test_malformed_json_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "cwe-078.jsonl"
    path.write_text(json.dumps(sven_row()) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}:2: malformed JSON"):
        load_samples(path, "sven")


def test_missing_field_names_file_line_and_field(tmp_path: Path) -> None:
    row = sven_row()
    del row["func_src_after"]
    path = write_jsonl(tmp_path / "cwe-078.jsonl", [sven_row(), row])
    with pytest.raises(DataError) as err:
        load_samples(path, "sven")
    assert f"{path}:2" in str(err.value) and "'func_src_after'" in str(err.value)


def test_unknown_cwe_names_file_line_and_value(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "x.jsonl", [sven_row(vul_type="sql-injection")])
    with pytest.raises(DataError) as err:
        load_samples(path, "sven")
    assert f"{path}:1" in str(err.value) and "'sql-injection'" in str(err.value)


def test_empty_file_names_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}: empty file"):
        load_samples(path, "sven")
    path.write_text("", encoding="utf-8")
    with pytest.raises(DataError, match="empty file"):
        load_samples(path)


def test_non_utf8_bytes_are_replaced_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "cwe-078.jsonl"
    line = json.dumps(sven_row(before="def f(x):\n    os.system('caf\u00e9 ' + x)\n"), ensure_ascii=False)
    path.write_bytes(line.encode("latin-1") + b"\n")  # \xe9 alone is not valid UTF-8
    report = LoadReport()
    samples = load_samples(path, "sven", report=report)
    assert report.replaced_bytes_files == 1
    assert "\ufffd" in samples[0].code
    assert any(str(path) in note for note in report.notes)


def test_requested_cwe_with_an_empty_class(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"code": "a", "label": "vulnerable", "cwe": "CWE-79"},
            {"code": "b", "label": "vulnerable", "cwe": "CWE-79"},
            {"code": "c", "label": "secure", "cwe": "CWE-89"},
            {"code": "d", "label": "vulnerable", "cwe": "89"},
        ],
    )
    with pytest.raises(DataError) as err:
        load_samples(path, cwes=["cwe-79"])
    assert "CWE-79" in str(err.value) and "no secure samples" in str(err.value)
    with pytest.raises(DataError, match="CWE-22 has no samples at all"):
        load_samples(path, cwes=["CWE-22"])
    assert len(load_samples(path, cwes=["CWE-89"])) == 2


def test_merge_then_filter(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"code": "a", "label": 1, "cwe": "CWE-77", "pair_id": "p"},
            {"code": "b", "label": 0, "cwe": "CWE-78", "pair_id": "p"},
            {"code": "c", "label": "bad", "cwe": "CWE-89"},
        ],
    )
    report = LoadReport()
    samples = load_samples(path, merge={"77": "CWE-78"}, cwes=["CWE-78"], report=report)
    assert [s.cwe for s in samples] == ["CWE-78", "CWE-78"]
    assert samples[0].meta["original_cwe"] == "CWE-77"
    assert report.merged == 1 and report.filtered_out == 1
    assert count_by_cwe(samples)["CWE-78"]["pairs"] == 1


def test_validate_collects_every_problem(tmp_path: Path) -> None:
    bad_cwe = sven_row(vul_type="nonsense")
    no_field = sven_row()
    del no_field["vul_type"]
    path = tmp_path / "cwe-078.jsonl"
    path.write_text(
        "\n".join([json.dumps(sven_row()), "{oops", json.dumps(bad_cwe), json.dumps(no_field), "[1, 2]"]) + "\n",
        encoding="utf-8",
    )
    problems = validate(path)
    assert len(problems) == 4, problems
    assert all(str(path) in p for p in problems)
    assert [p.split(":")[1] for p in problems] == ["2", "3", "4", "5"]
    assert validate(tmp_path / "missing") == [f"{tmp_path / 'missing'}: no such file or directory"]
    good = write_jsonl(tmp_path / "ok" / "cwe-078.jsonl", [sven_row()])
    assert validate(good) == []


# --------------------------------------------------------------------------- generic jsonl / csv / castle


def test_generic_jsonl_labels_and_defaults(tmp_path: Path) -> None:
    rows = [
        {"code": "x", "label": label, "cwe": "CWE-79", "id": f"s{i}", "language": "JS"}
        for i, label in enumerate(["vulnerable", "secure", 1, 0, True, False, "vuln", "safe", "bad", "good"])
    ]
    samples = load_samples(write_jsonl(tmp_path / "g.jsonl", rows))
    assert [s.label for s in samples] == ["vulnerable", "secure"] * 5
    assert samples[0].id == "s0" and samples[0].language == "javascript" and samples[0].pair_id is None


def test_generic_bad_label(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "g.jsonl", [{"code": "x", "label": "maybe", "cwe": "CWE-79"}])
    with pytest.raises(DataError) as err:
        load_samples(path, "jsonl")
    assert f"{path}:1" in str(err.value) and "'label'" in str(err.value) and "'maybe'" in str(err.value)


def test_csv(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text(
        'id,code,label,cwe,pair_id,language\na,"int f() {\n  return 0;\n}",1,CWE-476,p1,c\nb,"int g();",0,476,p1,c\n',
        encoding="utf-8",
    )
    assert detect_format(path) == "csv"
    samples = load_samples(path)
    assert [(s.id, s.label, s.cwe, s.pair_id) for s in samples] == [
        ("a", "vulnerable", "CWE-476", "p1"),
        ("b", "secure", "CWE-476", "p1"),
    ]
    assert samples[0].code == "int f() {\n  return 0;\n}"
    path.write_text('id,code,label,cwe\na,"x",1,CWE-476\nb,"y",0,not-a-cwe\n', encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_samples(path)
    assert f"{path}:3" in str(err.value) and "'not-a-cwe'" in str(err.value)
    path.write_text("id,code,cwe\na,x,CWE-1\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"d\.csv:1: missing column 'label'"):
        load_samples(path)


def test_castle_list_and_tests_object(tmp_path: Path) -> None:
    items = [
        {"name": "castle-787-1.c", "cwe": 787, "vulnerable": True, "code": "/* vulnerable: true */\nint a[2];\n"},
        {"name": "castle-787-2.c", "cwe": "CWE-787", "vulnerable": False, "code": "int b[2]; // safe\n"},
    ]
    (tmp_path / "list.json").write_text(json.dumps(items), encoding="utf-8")
    (tmp_path / "obj.json").write_text(json.dumps({"dataset": "x", "tests": items}), encoding="utf-8")
    for name in ("list.json", "obj.json"):
        samples = load_samples(tmp_path / name)
        assert [(s.label, s.cwe, s.pair_id, s.code) for s in samples] == [
            ("vulnerable", "CWE-787", None, "int a[2];\n"),
            ("secure", "CWE-787", None, "int b[2];\n"),
        ]
    del items[1]["code"]
    (tmp_path / "list.json").write_text(json.dumps(items), encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_samples(tmp_path / "list.json")
    assert "list.json" in str(err.value) and "#1" in str(err.value) and "'code'" in str(err.value)
    (tmp_path / "broken.json").write_text('[{"name": "x",\n "cwe": }]', encoding="utf-8")
    with pytest.raises(DataError, match=r"broken\.json:2: malformed JSON"):
        load_samples(tmp_path / "broken.json", "castle")


def _owasp_checkout(root: Path) -> Path:
    """A two-language OWASP Benchmark layout: the expected results beside test cases in nested folders."""
    (root / "testcode").mkdir(parents=True)
    (root / "src" / "testcode").mkdir(parents=True)
    header = "'''\nOWASP Benchmark for Python v0.1 (the licence header every file shares)\n'''\n\n"
    (root / "testcode" / "BenchmarkTest00001.py").write_text(
        header + "def init(app):\n    os.system(request.args['c'])  # the sink\n", encoding="utf-8"
    )
    (root / "testcode" / "BenchmarkTest00001.xml").write_text("<vulnerability>true</vulnerability>\n", "utf-8")
    (root / "testcode" / "BenchmarkTest00002.py").write_text(header + "def init(app):\n    os.system('ls')\n", "utf-8")
    (root / "src" / "testcode" / "BenchmarkTest00003.java").write_text(
        "/* header */\nclass BenchmarkTest00003 { void doPost() { run(param); } }\n", encoding="utf-8"
    )
    results = root / "expectedresults-0.1.csv"
    results.write_text(
        "# test name, category, real vulnerability, cwe, Benchmark version: 0.1\n"
        "BenchmarkTest00001,cmdi,true,78\nBenchmarkTest00002,cmdi,false,78\nBenchmarkTest00003,sqli,true,89\n",
        encoding="utf-8",
    )
    return results


def test_owasp_benchmark_checkout(tmp_path: Path) -> None:
    results = _owasp_checkout(tmp_path)
    assert detect_format(tmp_path) == "owasp" and detect_format(results) == "owasp"
    for path in (tmp_path, results):
        samples = load_samples(path)
        assert [(s.id, s.label, s.cwe, s.language, s.pair_id, s.is_file) for s in samples] == [
            ("owasp:BenchmarkTest00001", "vulnerable", "CWE-78", "python", None, True),
            ("owasp:BenchmarkTest00002", "secure", "CWE-78", "python", None, True),
            ("owasp:BenchmarkTest00003", "vulnerable", "CWE-89", "java", None, True),
        ]
    # the shared licence docstring and the comments are gone, the code is not
    assert samples[0].code.strip() == "def init(app):\n    os.system(request.args['c'])"
    assert samples[2].code.strip() == "class BenchmarkTest00003 { void doPost() { run(param); } }"
    assert samples[0].meta["category"] == "cmdi" and samples[0].meta["file"].endswith("BenchmarkTest00001.py")


def test_owasp_problems_name_the_line_and_field(tmp_path: Path) -> None:
    results = _owasp_checkout(tmp_path)
    text = results.read_text(encoding="utf-8")
    results.write_text(text + "BenchmarkTest00009,cmdi,true,78\nBenchmarkTest00002,cmdi,maybe,78\n", "utf-8")
    with pytest.raises(DataError, match=r"expectedresults-0\.1\.csv:5: field 'test name': no source file"):
        load_samples(tmp_path)
    problems = validate(tmp_path, "owasp")
    assert any(":6:" in p and "'real vulnerability'" in p and "'maybe'" in p for p in problems)
    (tmp_path / "expectedresults-0.2.csv").write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=r"2 \(expectedresults-0\.1\.csv, expectedresults-0\.2\.csv; pass one"):
        load_samples(tmp_path, "owasp")


def _itc_checkout(root: Path) -> Path:
    """The Toyota ITC layout: a defect file and its look-alike (renamed, as the real benchmark renames one), plus a
    code-quality defect type that has no security CWE."""
    (root / "01.w_Defects").mkdir(parents=True)
    (root / "02.wo_Defects").mkdir(parents=True)
    defect = (
        "/* File Name: null_pointer.c */\nstatic int sink;\n"
        "void null_pointer_001 ()\n{\n\tint *p = NULL;\n\t*p = 1; /*Tool should detect this line as error*/\n}\n\n"
        "void null_pointer_002 ()\n{\n\tint x = 2;\n\tsink = x;\n}\n\n"
        "void null_pointer_main ()\n{\n\tnull_pointer_001();\n\tnull_pointer_002();\n}\n"
    )
    lookalike = (
        "/* File Name: null_pointer.c */\nstatic int sink;\n"
        "void null_pointer_001 ()\n{\n\tint a = 0;\n\tint *p = &a;\n"
        "\t*p = 1; /*Tool should not detect this line as error*/\n}\n\n"
        "void null_pointer_002 ()\n{\n\tint x = 2; /* no defect here either */\n\tsink = x;\n}\n\n"
        "void null_pointer_main ()\n{\n\tnull_pointer_001();\n\tnull_pointer_002();\n}\n"
    )
    (root / "01.w_Defects" / "null_pointer.c").write_text(defect, encoding="utf-8")
    (root / "02.wo_Defects" / "null_pointer.c").write_text(lookalike, encoding="utf-8")
    free = "void f_001 ()\n{\n\tint a;\n\tfree(&a);\n}\n"
    (root / "01.w_Defects" / "free_nondynamic_allocated_memory.c").write_text(free, encoding="utf-8")
    (root / "02.wo_Defects" / "free_nondynamically_allocated_memory.c").write_text(
        free.replace("int a;\n\tfree(&a);", "int *a = malloc(4);\n\tfree(a);"), encoding="utf-8"
    )
    (root / "01.w_Defects" / "dead_code.c").write_text("void d_001 ()\n{\n\treturn;\n\tx = 1;\n}\n", "utf-8")
    (root / "02.wo_Defects" / "dead_code.c").write_text("void d_001 ()\n{\n\tx = 1;\n}\n", "utf-8")
    return root


@pytest.mark.skipif(not tree_sitter_available(), reason="tree-sitter-language-pack not installed")
def test_itc_benchmark_pairs_the_functions_that_differ(tmp_path: Path) -> None:
    root = _itc_checkout(tmp_path)
    assert detect_format(root) == "itc"
    report = LoadReport()
    samples = load_samples(root, report=report)
    assert [(s.id, s.label, s.cwe, s.language, s.pair_id, s.is_file) for s in samples] == [
        (
            "itc:free_nondynamic_allocated_memory:f_001:vulnerable",
            "vulnerable",
            "CWE-590",
            "c",
            *["itc:free_nondynamic_allocated_memory:f_001", False],
        ),
        (
            "itc:free_nondynamic_allocated_memory:f_001:secure",
            "secure",
            "CWE-590",
            "c",
            *["itc:free_nondynamic_allocated_memory:f_001", False],
        ),
        (
            "itc:null_pointer:null_pointer_001:vulnerable",
            "vulnerable",
            "CWE-476",
            "c",
            "itc:null_pointer:null_pointer_001",
            False,
        ),
        (
            "itc:null_pointer:null_pointer_001:secure",
            "secure",
            "CWE-476",
            "c",
            "itc:null_pointer:null_pointer_001",
            False,
        ),
    ]
    # the label in the comments is gone; a function the versions share (the driver, or one that differs only in a
    # comment) is dropped; a code-quality defect type is skipped and said
    assert all("detect" not in s.code and "/*" not in s.code for s in samples)
    assert samples[2].code.startswith("void null_pointer_001 ()") and "NULL" in samples[2].code
    assert report.dropped_identical == 2
    assert any("1 files without a security CWE (code-quality defect types, drivers) skipped" in n for n in report.notes)


@pytest.mark.skipif(not tree_sitter_available(), reason="tree-sitter-language-pack not installed")
def test_itc_problems_name_the_file(tmp_path: Path) -> None:
    root = _itc_checkout(tmp_path)
    (root / "01.w_Defects" / "double_free.c").write_text("void g ()\n{\n}\n", encoding="utf-8")
    with pytest.raises(
        DataError, match=r"01\.w_Defects/double_free\.c: no look-alike without defects at .*02\.wo_Defects"
    ):
        load_samples(root, "itc")
    with pytest.raises(DataError, match=r"itc format needs a folder holding 01\.w_Defects/ and 02\.wo_Defects/"):
        load_samples(root / "01.w_Defects", "itc")


# --------------------------------------------------------------------------- paired-dir


def test_paired_dir_fixture() -> None:
    root = FIXTURES / "paired_dir"
    assert detect_format(root) == "paired-dir"
    samples = load_samples(root)
    assert validate(root) == []
    counts = count_by_cwe(samples)
    assert counts == {
        cwe: {"vulnerable": 1, "secure": 1, "pairs": 1} for cwe in ("CWE-22", "CWE-79", "CWE-89", "CWE-787")
    }
    langs = {s.cwe: s.language for s in samples}
    assert langs == {"CWE-22": "go", "CWE-79": "python", "CWE-89": "javascript", "CWE-787": "c"}
    xss = {s.label: s for s in samples if s.cwe == "CWE-79"}
    assert "html.escape" in xss["secure"].code and "html.escape" not in xss["vulnerable"].code
    assert xss["secure"].pair_id == xss["vulnerable"].pair_id == "paired_dir:CWE-79/greet"


def test_paired_dir_problems(tmp_path: Path) -> None:
    (tmp_path / "CWE-78").mkdir()
    (tmp_path / "CWE-78" / "run.py").write_text("os.system(x)\n", encoding="utf-8")
    (tmp_path / "misc" / "case").mkdir(parents=True)
    (tmp_path / "misc" / "case" / "vuln.c").write_text("gets(b);\n", encoding="utf-8")
    (tmp_path / "misc" / "case" / "patch.c").write_text("fgets(b, n, stdin);\n", encoding="utf-8")
    problems = validate(tmp_path, "paired-dir")
    assert any("run.py" in p and "p_run.py" in p for p in problems), problems
    assert any("vuln.c" in p and "cannot tell the CWE" in p for p in problems), problems
    (tmp_path / "cwe_map.json").write_text('{"case": "CWE-242"}', encoding="utf-8")
    (tmp_path / "CWE-78" / "p_run.py").write_text("subprocess.run([x])\n", encoding="utf-8")
    samples = load_samples(tmp_path)
    assert sorted(count_by_cwe(samples)) == ["CWE-242", "CWE-78"]


def test_paired_dir_mirrored_trees(tmp_path: Path) -> None:
    """``vulnerable/<path>`` pairs with ``fixed/<path>`` (or ``patched/``); the CWE from cwe_map.json by the path
    inside the trees (with or without its extension) or a CWE folder; a file without its twin is a problem."""
    for tree, body in (("vulnerable", "os.system(x)\n"), ("fixed", "subprocess.run([x])\n")):
        (tmp_path / tree / "sub").mkdir(parents=True)
        (tmp_path / tree / "run.py").write_text(body, encoding="utf-8")
        (tmp_path / tree / "sub" / "copy.c").write_text(body.replace("x", "y"), encoding="utf-8")
    (tmp_path / "cwe_map.json").write_text('{"run.py": "CWE-78", "sub/copy": "CWE-787"}', encoding="utf-8")
    (tmp_path / "NOTES.md").write_text("not code\n", encoding="utf-8")
    assert detect_format(tmp_path) == "paired-dir"
    samples = load_samples(tmp_path)
    assert [(s.cwe, s.label, s.pair_id, s.language, s.is_file) for s in samples] == [
        ("CWE-78", "vulnerable", f"{tmp_path.name}:run.py", "python", True),
        ("CWE-78", "secure", f"{tmp_path.name}:run.py", "python", True),
        ("CWE-787", "vulnerable", f"{tmp_path.name}:sub/copy.c", "c", True),
        ("CWE-787", "secure", f"{tmp_path.name}:sub/copy.c", "c", True),
    ]
    assert samples[1].code == "subprocess.run([x])\n" and validate(tmp_path) == []
    (tmp_path / "fixed").rename(tmp_path / "patched")
    assert len(load_samples(tmp_path)) == 4
    (tmp_path / "patched" / "sub" / "copy.c").unlink()
    (tmp_path / "patched" / "extra.py").write_text("pass\n", encoding="utf-8")
    (tmp_path / "cwe_map.json").unlink()
    problems = validate(tmp_path, "paired-dir")
    assert any("copy.c" in p and "no fixed partner" in p for p in problems), problems
    assert any("extra.py" in p and "without its vulnerable partner" in p for p in problems), problems
    assert any("run.py" in p and "cannot tell the CWE" in p for p in problems), problems


# --------------------------------------------------------------------------- juliet (synthetic)

JULIET_C = r"""/* TEMPLATE GENERATED TESTCASE FILE
Filename: CWE476_NULL_Pointer_Dereference__char_41.c
 * @description
 * CWE: 476 NULL Pointer Dereference
 * */

#include "std_testcase.h"

#ifndef OMITBAD

static void badSink(char * data)
{
    /* POTENTIAL FLAW: Attempt to use data, which may be NULL */
    printHexCharLine(data[0]);
}

void CWE476_NULL_Pointer_Dereference__char_41_bad()
{
    char * data;
    /* POTENTIAL FLAW: Set data to NULL */
    data = NULL;
    badSink(data);
}

#endif /* OMITBAD */

#ifndef OMITGOOD

static void goodG2BSink(char * data)
{
    /* POTENTIAL FLAW: Attempt to use data, which may be NULL */
    printHexCharLine(data[0]);
}

/* goodG2B uses the GoodSource with the BadSink */
static void goodG2B()
{
    char * data;
    /* FIX: Set data to point to a char */
    data = "Good /* not a comment */";
    goodG2BSink(data);
}

void CWE476_NULL_Pointer_Dereference__char_41_good()
{
    goodG2B();
}

#endif /* OMITGOOD */

#ifdef INCLUDEMAIN
int main(int argc, char * argv[])
{
    CWE476_NULL_Pointer_Dereference__char_41_good();
    CWE476_NULL_Pointer_Dereference__char_41_bad();
    return 0;
}
#endif
"""

JULIET_63A = r"""#include "std_testcase.h"
#ifndef OMITBAD
void CWE416_Use_After_Free__malloc_free_int_63b_badSink(int * * dataPtr);

void CWE416_Use_After_Free__malloc_free_int_63_bad()
{
    int * data = (int *)malloc(100*sizeof(int));
    free(data); /* POTENTIAL FLAW */
    CWE416_Use_After_Free__malloc_free_int_63b_badSink(&data);
}
#endif
#ifndef OMITGOOD
void CWE416_Use_After_Free__malloc_free_int_63b_goodB2GSink(int * * data);

static void goodB2G()
{
    int * data = (int *)malloc(100*sizeof(int));
    free(data);
    CWE416_Use_After_Free__malloc_free_int_63b_goodB2GSink(&data);
}

void CWE416_Use_After_Free__malloc_free_int_63_good()
{
    goodB2G();
}
#endif
"""

JULIET_63B = r"""#include "std_testcase.h"
#ifndef OMITBAD
void CWE416_Use_After_Free__malloc_free_int_63b_badSink(int * * dataPtr)
{
    int * data = *dataPtr;
    printIntLine(data[0]); // POTENTIAL FLAW: use after free
}
#endif
#ifndef OMITGOOD
void CWE416_Use_After_Free__malloc_free_int_63b_goodB2GSink(int * * dataPtr)
{
    int * data = *dataPtr;
    /* FIX: do not use data */
    ;
}
#endif
"""

JULIET_JAVA = r"""/* @description CWE: 89 SQL Injection */
package testcases.CWE89_SQL_Injection.s01;
import testcasesupport.*;

public class CWE89_SQL_Injection__Environment_execute_01 extends AbstractTestCase
{
    public void bad() throws Throwable
    {
        String data = System.getenv("ADD"); /* POTENTIAL FLAW */
        IO.writeLine("<br>bad(): " + data);
        stmt.execute("select * from users where name='" + data + "'");
    }

    public void good() throws Throwable
    {
        goodG2B();
        goodB2G();
    }

    /* goodG2B() - use goodsource and badsink */
    private void goodG2B() throws Throwable
    {
        String data = "foo";
        IO.writeLine("<br>bad(): " + data);
        stmt.execute("select * from users where name='" + data + "'");
    }

    private void goodB2G() throws Throwable
    {
        String data = System.getenv("ADD");
        IO.writeLine("<br>bad(): " + data);
        PreparedStatement ps = conn.prepareStatement("select * from users where name=?");
    }

    public static void main(String[] args) throws Throwable
    {
        mainFromParent(args);
    }
}
"""


@pytest.fixture
def juliet_root(tmp_path: Path) -> Path:
    root = tmp_path / "juliet" / "testcases"
    c_dir = root / "CWE476_NULL_Pointer_Dereference"
    uaf = root / "CWE416_Use_After_Free"
    java = root / "CWE89_SQL_Injection" / "s01"
    for folder in (c_dir, uaf, java):
        folder.mkdir(parents=True)
    (c_dir / "CWE476_NULL_Pointer_Dereference__char_41.c").write_text(JULIET_C, encoding="utf-8")
    (c_dir / "CWE476_NULL_Pointer_Dereference__char_42.c").write_text(JULIET_C.replace("_41", "_42"), encoding="utf-8")
    (uaf / "CWE416_Use_After_Free__malloc_free_int_63a.c").write_text(JULIET_63A, encoding="utf-8")
    (uaf / "CWE416_Use_After_Free__malloc_free_int_63b.c").write_text(JULIET_63B, encoding="utf-8")
    (java / "CWE89_SQL_Injection__Environment_execute_01.java").write_text(JULIET_JAVA, encoding="utf-8")
    (root / "README.txt").write_text("not a test case\n", encoding="utf-8")
    return tmp_path / "juliet"


def test_juliet_synthetic(juliet_root: Path) -> None:
    assert detect_format(juliet_root) == "juliet"
    report = LoadReport()
    samples = load_samples(juliet_root, report=report)
    assert report.juliet_cases == 4 and report.juliet_multi_file_cases == 1 and report.skipped_juliet_cases == 0
    by_id = {s.id: s for s in samples}
    assert set(by_id) == {
        "juliet-c:CWE476_NULL_Pointer_Dereference__char_41:bad",
        "juliet-c:CWE476_NULL_Pointer_Dereference__char_41:goodG2B",
        "juliet-c:CWE476_NULL_Pointer_Dereference__char_42:bad",
        "juliet-c:CWE476_NULL_Pointer_Dereference__char_42:goodG2B",
        "juliet-c:CWE416_Use_After_Free__malloc_free_int_63:bad",
        "juliet-c:CWE416_Use_After_Free__malloc_free_int_63:goodB2G",
        "juliet-java:CWE89_SQL_Injection__Environment_execute_01:bad",
        "juliet-java:CWE89_SQL_Injection__Environment_execute_01:goodG2B",
        "juliet-java:CWE89_SQL_Injection__Environment_execute_01:goodB2G",
    }
    for sample in samples:
        assert_delabelled(sample.code, sample.language)
        assert "POTENTIAL" not in sample.code and "FIX" not in sample.code and "main" not in sample.code
    bad = by_id["juliet-c:CWE476_NULL_Pointer_Dereference__char_41:bad"]
    good = by_id["juliet-c:CWE476_NULL_Pointer_Dereference__char_41:goodG2B"]
    assert bad.code == (
        "void sink(char * data)\n{\n    printHexCharLine(data[0]);\n}\n\n"
        "void process()\n{\n    char * data;\n    data = NULL;\n    sink(data);\n}\n"
    )
    assert 'data = "Text /* not a comment */";' in good.code
    assert good.code.startswith("void sink(char * data)\n")  # "static" dropped on both sides alike
    assert (bad.label, good.label, bad.cwe, bad.language) == ("vulnerable", "secure", "CWE-476", "c")
    assert bad.pair_id == good.pair_id == "juliet-c:CWE476_NULL_Pointer_Dereference__char_41"
    # flow variants 41 and 42 share the functional-variant split group
    assert bad.group == by_id["juliet-c:CWE476_NULL_Pointer_Dereference__char_42:bad"].group
    # the multi-file case bundles the sink of the b file
    uaf = by_id["juliet-c:CWE416_Use_After_Free__malloc_free_int_63:bad"]
    assert "printIntLine(data[0]);" in uaf.code and "sink(&data);" in uaf.code and uaf.meta["multi_file"]
    uaf_good = by_id["juliet-c:CWE416_Use_After_Free__malloc_free_int_63:goodB2G"]
    assert "printIntLine" not in uaf_good.code
    java = by_id["juliet-java:CWE89_SQL_Injection__Environment_execute_01:bad"]
    assert java.code.startswith("void process() throws Throwable\n{\n")
    assert '"<br>process(): "' in java.code and java.cwe == "CWE-89" and java.language == "java"
    java_goods = [s for s in samples if s.source == "juliet-java" and s.label == "secure"]
    assert all(s.code.startswith("void process() throws Throwable") for s in java_goods)
    assert count_by_cwe(samples)["CWE-89"] == {"vulnerable": 1, "secure": 2, "pairs": 1}


JULIET_121 = r"""
void CWE121_Stack_Based_Buffer_Overflow__CWE805_char_alloca_loop_01_bad()
{
    char * data;
    char * dataBadBuffer = (char *)ALLOCA(50*sizeof(char));
    char * dataGoodBuffer = (char *)ALLOCA(100*sizeof(char));
    data = dataBadBuffer;
    memset(data, 'C', 100-1);
}

static void goodG2B()
{
    char * data;
    char * dataBadBuffer = (char *)ALLOCA(50*sizeof(char));
    char * dataGoodBuffer = (char *)ALLOCA(100*sizeof(char));
    data = dataGoodBuffer;
    memset(data, 'C', 100-1);
}
"""


def test_juliet_renaming_never_merges_two_identifiers(tmp_path: Path) -> None:
    path = tmp_path / "CWE121_Stack_Based_Buffer_Overflow__CWE805_char_alloca_loop_01.c"
    path.write_text(JULIET_121, encoding="utf-8")
    bad, good = load_samples(path)
    assert bad.code != good.code
    small = re.search(r"char \* (dataBuffer[12]) = \(char \*\)ALLOCA\(50", bad.code)
    large = re.search(r"char \* (dataBuffer[12]) = \(char \*\)ALLOCA\(100", bad.code)
    assert small and large and small.group(1) != large.group(1)
    assert f"data = {small.group(1)};" in bad.code and f"data = {large.group(1)};" in good.code
    assert_delabelled(bad.code, "c")


def test_juliet_case_without_good_is_skipped(tmp_path: Path) -> None:
    folder = tmp_path / "CWE78_OS_Command_Injection"
    folder.mkdir()
    only_bad = JULIET_C.split("#ifndef OMITGOOD")[0]
    (folder / "CWE78_OS_Command_Injection__char_console_system_01.c").write_text(only_bad, encoding="utf-8")
    report = LoadReport()
    assert load_samples(tmp_path, "juliet", report=report) == []
    assert report.skipped_juliet_cases == 1 and "no good" in report.notes[0]


# --------------------------------------------------------------------------- detection, stats, misc


def test_detect_format_unknown_names_path(tmp_path: Path) -> None:
    (tmp_path / "notes.md").write_text("hello\n", encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(str(tmp_path))):
        detect_format(tmp_path)
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "notes.md"))):
        detect_format(tmp_path / "notes.md")
    with pytest.raises(DataError, match="unknown format"):
        load_samples(tmp_path, "parquet")
    assert set(DATASET_FORMATS) == {"sven", "juliet", "paired-dir", "castle", "owasp", "itc", "jsonl", "csv"}


def test_every_format_name_has_its_plug_in() -> None:
    """``--format``'s names and the registered readers are one list: a format added to either is in both."""
    from vulnsteer.data.formats import FORMATS

    assert tuple(FORMATS) == DATASET_FORMATS
    assert all(reader.__module__.startswith("vulnsteer.data.formats.") for reader in FORMATS.values())


def test_parse_label() -> None:
    assert parse_label("VULN") == "vulnerable" and parse_label("Safe") == "secure"
    assert parse_label(2) is None and parse_label(None) is None


def test_dataset_stats(tmp_path: Path) -> None:
    samples = load_samples(FIXTURES / "paired_dir")
    stats = dataset_stats(samples, tokenizer=lambda code: len(code.split()))
    assert stats["samples"] == 8 and stats["pairs"] == 4 and stats["vulnerable"] == stats["secure"] == 4
    assert stats["by_cwe"]["CWE-79"] == {"vulnerable": 1, "secure": 1, "pairs": 1, "languages": {"python": 2}}
    assert list(stats["by_cwe"]) == ["CWE-22", "CWE-79", "CWE-89", "CWE-787"]
    assert stats["chars"]["max"] == max(len(s.code) for s in samples)
    assert stats["chars"]["p50"] <= stats["chars"]["p90"] <= stats["chars"]["max"]
    assert stats["tokens"]["max"] == max(len(s.code.split()) for s in samples)
    assert set(stats["languages"]) == {"go", "python", "javascript", "c"}
    assert dataset_stats([])["chars"]["max"] == 0


# --------------------------------------------------------------------------- real data (../shared/data)

needs_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"{SHARED_DATA} not present")

# README tables: (train pairs, val pairs) per CWE, before dropping identical rows
SVEN_README = {
    "CWE-22": (51, 6),
    "CWE-78": (95, 11),
    "CWE-79": (45, 5),
    "CWE-89": (184, 20),
    "CWE-125": (130, 15),
    "CWE-190": (38, 5),
    "CWE-416": (57, 7),
    "CWE-476": (70, 8),
    "CWE-787": (50, 6),
}
SAFECODER_README = {
    "CWE-22": (32, 4),
    "CWE-78": (37, 5),
    "CWE-79": (69, 7),
    "CWE-89": (60, 7),
    "CWE-116": (3, 0),
    "CWE-119": (12, 1),
    "CWE-190": (10, 1),
    "CWE-200": (9, 1),
    "CWE-295": (3, 0),
    "CWE-326": (7, 0),
    "CWE-327": (24, 2),
    "CWE-338": (2, 0),
    "CWE-352": (8, 1),
    "CWE-377": (31, 4),
    "CWE-476": (9, 1),
    "CWE-502": (60, 6),
    "CWE-611": (5, 0),
    "CWE-676": (2, 0),
    "CWE-681": (11, 1),
    "CWE-732": (1, 0),
    "CWE-787": (12, 1),
    "CWE-915": (9, 1),
    "CWE-916": (5, 1),
}


@needs_data
@pytest.mark.data
@pytest.mark.parametrize(("name", "table", "identical"), [("sven", SVEN_README, 4), ("safecoder", SAFECODER_README, 1)])
def test_real_sven_and_safecoder_match_readme(name: str, table: dict[str, tuple[int, int]], identical: int) -> None:
    report = LoadReport()
    samples = load_samples(SHARED_DATA / name, report=report)
    assert report.dropped_identical == identical
    assert report.problems == [] and report.replaced_bytes_files == 0
    counts = count_by_cwe(samples)
    assert set(counts) == set(table)
    shortfall = 0
    for cwe, (train, val) in table.items():
        row = counts[cwe]
        assert row["vulnerable"] == row["secure"] == row["pairs"]
        assert 0 <= train + val - row["pairs"] <= identical, cwe
        shortfall += train + val - row["pairs"]
        for split, expected in (("train", train), ("val", val)):
            got = sum(1 for s in samples if s.cwe == cwe and s.is_vulnerable and s.meta["upstream_split"] == split)
            assert expected - identical <= got <= expected, (cwe, split)
    assert shortfall == identical
    assert {s.source for s in samples} == {name}
    assert all(s.group.startswith("commit:") for s in samples)
    assert len({s.id for s in samples}) == len(samples)


# README juliet tables: directory CWE -> (test cases, bad() defs, good*() defs)
JULIET_C_README = {
    "CWE-121": (118, 118, 127),
    "CWE-122": (126, 126, 140),
    "CWE-124": (46, 46, 52),
    "CWE-126": (36, 36, 42),
    "CWE-127": (46, 46, 52),
    "CWE-190": (90, 90, 180),
    "CWE-23": (50, 50, 50),
    "CWE-36": (50, 50, 50),
    "CWE-416": (460, 459, 1432),
    "CWE-476": (390, 348, 891),
    "CWE-78": (100, 100, 100),
}
JULIET_JAVA_README = {
    "CWE-190": (69, 69, 138),
    "CWE-23": (12, 12, 12),
    "CWE-36": (12, 12, 12),
    "CWE-476": (7, 7, 11),
    "CWE-78": (12, 12, 12),
    "CWE-80": (18, 18, 18),
    "CWE-81": (9, 9, 9),
    "CWE-83": (9, 9, 9),
    "CWE-89": (60, 60, 120),
}


@pytest.fixture(scope="module")
def juliet_real() -> dict[str, tuple[list, LoadReport]]:
    out = {}
    for name in ("juliet-java", "juliet-c"):
        report = LoadReport()
        out[name] = (load_samples(SHARED_DATA / name, "juliet", report=report), report)
    return out


@needs_data
@pytest.mark.data
@pytest.mark.slow
@pytest.mark.parametrize(("name", "table"), [("juliet-java", JULIET_JAVA_README), ("juliet-c", JULIET_C_README)])
def test_real_juliet_counts_and_delabelling(
    juliet_real: dict[str, tuple[list, LoadReport]], name: str, table: dict[str, tuple[int, int, int]]
) -> None:
    samples, report = juliet_real[name]
    assert report.problems == [] and report.skipped_juliet_cases == 0
    per_dir: Counter[tuple[str, str]] = Counter((s.meta["juliet_cwe"], s.label) for s in samples)
    for juliet_cwe, (cases, bad_defs, good_defs) in table.items():
        vulnerable, secure = per_dir[(juliet_cwe, "vulnerable")], per_dir[(juliet_cwe, "secure")]
        # one vulnerable sample per bad() (class-based C++ cases count as one case, not one per file)
        assert vulnerable == bad_defs, juliet_cwe
        assert vulnerable <= cases
        # every good*() entry function, never the good() dispatcher; the README's regex count is within 2 %
        assert abs(secure - good_defs) <= 0.02 * good_defs, (juliet_cwe, secure, good_defs)
    counts = count_by_cwe(samples)
    assert all(row["pairs"] == row["vulnerable"] for row in counts.values())
    # de-labelling must never make the vulnerable and a fixed version of a case identical
    bad_code = {s.pair_id: s.code for s in samples if s.is_vulnerable}
    assert not [s.id for s in samples if not s.is_vulnerable and s.code == bad_code[s.pair_id]]
    expected_cwes = {"juliet-c": {"CWE-22", "CWE-78", "CWE-125", "CWE-190", "CWE-416", "CWE-476", "CWE-787"}}
    assert set(counts) == expected_cwes.get(name, {"CWE-22", "CWE-78", "CWE-79", "CWE-89", "CWE-190", "CWE-476"})
    # flow variants of one functional variant never straddle groups, and a group is one functional variant
    for sample in samples:
        assert sample.group.endswith(sample.meta["functional_variant"])
    leaks = [s.id for s in samples if re.search(r"(?i)\b\w*(bad|good)\w*\b|Benign|POTENTIAL FLAW|\bFIX\b", s.code)]
    assert not leaks, leaks[:5]
    step = 25  # lexing every sample again would add seconds: check a spread-out slice
    for sample in samples[::step]:
        assert_delabelled(sample.code, sample.language)
